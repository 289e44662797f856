//! Applying one layer (a tar, plain, gzip or zstd) into an empty snapshot
//! directory, in the form overlayfs stacks: whiteouts become 0/0 character
//! devices, opaque directories get `trusted.overlay.opaque=y`.
//!
//! Nothing in a layer can write outside the snapshot. Every entry's parent
//! is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` from the
//! snapshot's root, and the entry itself is made with the `*at` calls on
//! that directory, never following a link at the last component. Entries
//! that try anyway are refused with the reason, and the snapshot is thrown
//! away by the caller: a path with `..` or a leading `/`, a parent that is
//! a symbolic link (a link planted by an earlier entry), a hard link to
//! anything not already in this layer, and device nodes (a container gets
//! its devices from the runtime, never from an image). Each layer gets its
//! own directory, so a link planted by an earlier layer is not even there.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::digest::{Digest, HashingReader};
use super::manifest::Compression;
use super::ImageError;

/// The overlayfs whiteout prefix, and the name that makes a directory opaque.
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads for an opaque directory.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The digest of the uncompressed tar: the image config's diff id.
    pub diff_id: Digest,
    /// The uncompressed size.
    pub size: u64,
}

/// An entry refused or failed.
fn entry_error(path: &Path, why: impl std::fmt::Display) -> ImageError {
    ImageError::Layer(format!("entry {}: {why}", path.display()))
}

/// The entry's path as components below the root: `.` and a trailing `/`
/// dropped; `..` and absolute paths refused.
fn relative(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(entry_error(path, "'..' would leave the layer; refused"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(entry_error(path, "an absolute path is refused"))
            }
        }
    }
    Ok(out)
}

/// Bytes read from the decompressor, and written to a file, at a time.
const COPY_BUFFER: usize = 1 << 20;
/// The buffer tar headers are read through; reads of file contents at
/// least this large skip it and go straight to the decompressor.
const HEADER_BUFFER: usize = 64 << 10;

/// Copies `from` to its end into `to` through `buffer`.
fn copy(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> std::io::Result<u64> {
    let mut copied = 0;
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        copied += n as u64;
    }
}

/// The decompressing reader for `compression`.
pub(crate) fn decompress<'a>(
    blob: impl BufRead + 'a,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(super::gzip::GzipReader::new(blob)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(blob)
                .map_err(|e| ImageError::Layer(format!("not a zstd stream: {e}")))?,
        ),
    })
}

/// Directory metadata, applied once every entry is in (adding entries
/// changes a directory's mtime).
struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// The snapshot being filled.
struct Target {
    root: OwnedFd,
    root_path: PathBuf,
}

impl Target {
    fn how(flags: OFlag) -> OpenHow {
        OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
    }

    /// Opens directory `rel` (creating what is missing), refusing links.
    fn dir(&self, rel: &Path, entry: &Path) -> Result<OwnedFd, ImageError> {
        let mut current = self.open_dir(Path::new("."), entry)?;
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            match nix::sys::stat::mkdirat(&current, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(entry_error(entry, format!("create its parent: {e}"))),
            }
            current = openat2(
                &current,
                name,
                Self::how(OFlag::O_PATH | OFlag::O_DIRECTORY),
            )
            .map_err(|e| match e {
                Errno::ELOOP => entry_error(
                    entry,
                    format!(
                        "its parent {} is a symbolic link; writing through it is refused",
                        rel.display()
                    ),
                ),
                Errno::ENOTDIR => entry_error(entry, "its parent is not a directory"),
                e => entry_error(entry, format!("open its parent: {e}")),
            })?;
        }
        Ok(current)
    }

    fn open_dir(&self, rel: &Path, entry: &Path) -> Result<OwnedFd, ImageError> {
        openat2(
            &self.root,
            rel,
            Self::how(OFlag::O_PATH | OFlag::O_DIRECTORY),
        )
        .map_err(|e| entry_error(entry, format!("open {}: {e}", rel.display())))
    }

    /// Removes whatever is at `name` in `parent`, a directory included
    /// when `keep_dir` is false.
    fn clear(
        &self,
        parent: &OwnedFd,
        rel: &Path,
        name: &Path,
        keep_dir: bool,
    ) -> Result<(), ImageError> {
        let st = match nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(entry_error(rel, format!("look at what is there: {e}"))),
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir {
            if keep_dir {
                return Ok(());
            }
            // Its parent has no links (it was opened without following any),
            // and remove_dir_all follows none below.
            return std::fs::remove_dir_all(self.root_path.join(rel))
                .map_err(|e| entry_error(rel, format!("replace a directory: {e}")));
        }
        nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|e| entry_error(rel, format!("replace what is there: {e}")))
    }
}

/// The PAX records of interest.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(String, Vec<u8>)>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
}

fn pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Pax, ImageError> {
    let mut out = Pax::default();
    let Some(records) = entry
        .pax_extensions()
        .map_err(|e| ImageError::Layer(format!("PAX header: {e}")))?
    else {
        return Ok(out);
    };
    for record in records {
        let record = record.map_err(|e| ImageError::Layer(format!("PAX record: {e}")))?;
        let Ok(key) = record.key() else { continue };
        let text = || record.value().ok().map(str::to_owned);
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            out.xattrs
                .push((name.to_owned(), record.value_bytes().to_vec()));
        } else if key == "uid" {
            out.uid = text().and_then(|v| v.parse().ok());
        } else if key == "gid" {
            out.gid = text().and_then(|v| v.parse().ok());
        } else if key == "mtime" {
            out.mtime = text().and_then(|v| v.split('.').next()?.parse().ok());
        }
    }
    Ok(out)
}

/// Whether a layer may set this xattr: never overlayfs's own (a layer
/// must not forge whiteouts or redirects) nor other `trusted.` ones.
fn allowed_xattr(name: &str) -> bool {
    !name.starts_with("trusted.")
}

/// Unpacks `blob` into `root`, an empty directory.
pub fn unpack(
    blob: impl BufRead,
    compression: Compression,
    root: &Path,
) -> Result<Unpacked, ImageError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::Layer(format!("open the snapshot {}: {e}", root.display())))?;
    let target = Target {
        root: root_fd,
        root_path: root.to_owned(),
    };
    // The decompressor fills a large buffer at a time, and files are
    // written in large pieces: small reads and writes cost more than the
    // inflating itself.
    let mut hashed = std::io::BufReader::with_capacity(
        HEADER_BUFFER,
        HashingReader::new(decompress(blob, compression)?),
    );
    let mut copy_buffer = vec![0; COPY_BUFFER];
    let mut dirs: Vec<DirMeta> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let entries = archive
            .entries()
            .map_err(|e| ImageError::Layer(format!("not a tar: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| ImageError::Layer(format!("reading the tar: {e}")))?;
            apply(&target, &mut entry, &mut dirs, &mut copy_buffer)?;
        }
        // The tar's end: the rest (zero blocks, padding) counts in the
        // diff id, and a truncated stream fails here.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
            .map_err(|e| ImageError::Layer(format!("reading the end of the layer: {e}")))?;
    }
    // Deepest first, so a read-only parent is set after its children.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
    for d in &dirs {
        let fd = openat2(
            &target.root,
            if d.path.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &d.path
            },
            Target::how(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW),
        )
        .map_err(|e| entry_error(&d.path, format!("open to set its metadata: {e}")))?;
        set_owner_mode_time(&fd, &d.path, d.uid, d.gid, d.mode, d.mtime)?;
    }
    let (diff_id, size) = hashed.into_inner().finish();
    Ok(Unpacked { diff_id, size })
}

fn set_owner_mode_time(
    fd: &OwnedFd,
    rel: &Path,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
) -> Result<(), ImageError> {
    let id = |v: u64| {
        u32::try_from(v).map_err(|_| entry_error(rel, format!("owner {v} is out of range")))
    };
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(id(uid)?)),
        Some(Gid::from_raw(id(gid)?)),
    )
    .map_err(|e| entry_error(rel, format!("set its owner: {e}")))?;
    // After chown, which clears set-id bits.
    fchmod(fd, Mode::from_bits_truncate(mode & 0o7777))
        .map_err(|e| entry_error(rel, format!("set its mode: {e}")))?;
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::futimens(fd, &t, &t)
        .map_err(|e| entry_error(rel, format!("set its times: {e}")))
}

fn set_xattrs(file: &File, rel: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<(), ImageError> {
    use xattr::FileExt;
    for (name, value) in xattrs.iter().filter(|(n, _)| allowed_xattr(n)) {
        file.set_xattr(name, value)
            .map_err(|e| entry_error(rel, format!("set xattr {name}: {e}")))?;
    }
    Ok(())
}

fn apply<R: Read>(
    target: &Target,
    entry: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<DirMeta>,
    copy_buffer: &mut [u8],
) -> Result<(), ImageError> {
    let raw_path = entry
        .path()
        .map_err(|e| ImageError::Layer(format!("an entry's path: {e}")))?
        .into_owned();
    let rel = relative(&raw_path)?;
    let kind = entry.header().entry_type();
    let extra = pax(entry)?;
    let header = entry.header();
    let mode = header.mode().map_err(|e| entry_error(&rel, e))?;
    let uid = extra
        .uid
        .map_or_else(|| header.uid(), Ok)
        .map_err(|e| entry_error(&rel, e))?;
    let gid = extra
        .gid
        .map_or_else(|| header.gid(), Ok)
        .map_err(|e| entry_error(&rel, e))?;
    let mtime = extra
        .mtime
        .map_or_else(|| header.mtime().map(|m| m as i64), Ok)
        .map_err(|e| entry_error(&rel, e))?;

    let Some(name) = rel.file_name().map(PathBuf::from) else {
        // The layer's root itself ("./").
        if kind.is_dir() {
            dirs.push(DirMeta {
                path: PathBuf::new(),
                mode,
                uid,
                gid,
                mtime,
            });
            return Ok(());
        }
        return Err(entry_error(
            &raw_path,
            "only a directory can be the layer's root",
        ));
    };
    let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
    let parent = target.dir(&parent_rel, &rel)?;
    let name_str = name.to_string_lossy();

    // Whiteouts, in overlay form.
    if name_str == OPAQUE {
        let dir = openat2(
            &target.root,
            if parent_rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &parent_rel
            },
            Target::how(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW),
        )
        .map_err(|e| entry_error(&rel, format!("open the opaque directory: {e}")))?;
        let dir = File::from(dir);
        use xattr::FileExt;
        return dir
            .set_xattr(OPAQUE_XATTR, b"y")
            .map_err(|e| entry_error(&rel, format!("mark the directory opaque: {e}")));
    }
    if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
        if hidden.starts_with(WHITEOUT) {
            // aufs's own metadata (.wh..wh.plnk and the like): not content.
            return Ok(());
        }
        target.clear(&parent, &parent_rel.join(hidden), Path::new(hidden), false)?;
        mknodat(&parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| entry_error(&rel, format!("make the whiteout: {e}")))?;
        return Ok(());
    }

    use tar::EntryType as T;
    match kind {
        T::Directory => {
            target.clear(&parent, &rel, &name, true)?;
            match nix::sys::stat::mkdirat(&parent, &name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(entry_error(&rel, format!("create: {e}"))),
            }
            if !extra.xattrs.is_empty() {
                let fd = openat2(
                    &parent,
                    &name,
                    Target::how(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW),
                )
                .map_err(|e| entry_error(&rel, e))?;
                set_xattrs(&File::from(fd), &rel, &extra.xattrs)?;
            }
            dirs.push(DirMeta {
                path: rel,
                mode,
                uid,
                gid,
                mtime,
            });
        }
        T::Regular | T::Continuous => {
            target.clear(&parent, &rel, &name, false)?;
            let fd = openat2(
                &parent,
                &name,
                Target::how(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW)
                    .mode(Mode::from_bits_truncate(0o600)),
            )
            .map_err(|e| entry_error(&rel, format!("create: {e}")))?;
            let mut file = File::from(fd);
            copy(entry, &mut file, copy_buffer)
                .map_err(|e| entry_error(&rel, format!("write: {e}")))?;
            set_xattrs(&file, &rel, &extra.xattrs)?;
            set_owner_mode_time(&OwnedFd::from(file), &rel, uid, gid, mode, mtime)?;
        }
        T::Symlink => {
            let link = entry
                .link_name()
                .map_err(|e| entry_error(&rel, e))?
                .ok_or_else(|| entry_error(&rel, "a symbolic link without a target"))?
                .into_owned();
            target.clear(&parent, &rel, &name, false)?;
            nix::unistd::symlinkat(&link, &parent, &name)
                .map_err(|e| entry_error(&rel, format!("create the link: {e}")))?;
            let id = |v: u64| u32::try_from(v).map_err(|_| entry_error(&rel, "owner out of range"));
            nix::unistd::fchownat(
                &parent,
                &name,
                Some(Uid::from_raw(id(uid)?)),
                Some(Gid::from_raw(id(gid)?)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| entry_error(&rel, format!("set the link's owner: {e}")))?;
            let t = TimeSpec::new(mtime, 0);
            nix::sys::stat::utimensat(
                &parent,
                &name,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| entry_error(&rel, format!("set the link's times: {e}")))?;
        }
        T::Link => {
            let link = entry
                .link_name()
                .map_err(|e| entry_error(&rel, e))?
                .ok_or_else(|| entry_error(&rel, "a hard link without a target"))?
                .into_owned();
            let link_rel = relative(&link).map_err(|_| {
                entry_error(
                    &rel,
                    format!("hard link to {} leaves the layer; refused", link.display()),
                )
            })?;
            let existing = openat2(
                &target.root,
                &link_rel,
                Target::how(OFlag::O_PATH | OFlag::O_NOFOLLOW),
            )
            .map_err(|e| match e {
                Errno::ENOENT => entry_error(
                    &rel,
                    format!(
                        "hard link to {}, which is not in this layer",
                        link.display()
                    ),
                ),
                Errno::ELOOP | Errno::EXDEV => entry_error(
                    &rel,
                    format!(
                        "hard link to {} through a symbolic link; refused",
                        link.display()
                    ),
                ),
                e => entry_error(&rel, format!("hard link to {}: {e}", link.display())),
            })?;
            target.clear(&parent, &rel, &name, false)?;
            nix::unistd::linkat(&existing, "", &parent, &name, AtFlags::AT_EMPTY_PATH)
                .map_err(|e| entry_error(&rel, format!("create the hard link: {e}")))?;
        }
        T::Fifo => {
            target.clear(&parent, &rel, &name, false)?;
            mknodat(
                &parent,
                &name,
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(mode & 0o777),
                0,
            )
            .map_err(|e| entry_error(&rel, format!("create the fifo: {e}")))?;
        }
        T::Char | T::Block => {
            return Err(entry_error(
                &rel,
                "device nodes are refused: a container gets its devices from the runtime",
            ));
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
        other => {
            return Err(entry_error(
                &rel,
                format!("unsupported entry type {other:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_relative() {
        assert_eq!(relative(Path::new("./a/b/")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative(Path::new(".")).unwrap(), PathBuf::new());
        assert!(relative(Path::new("a/../../etc")).is_err());
        assert!(relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn overlay_xattrs_cannot_be_forged() {
        assert!(!allowed_xattr("trusted.overlay.opaque"));
        assert!(!allowed_xattr("trusted.overlay.redirect"));
        assert!(allowed_xattr("security.capability"));
        assert!(allowed_xattr("user.comment"));
    }
}
