//! `COPY`, `ADD` and `WORKDIR`: files put into a step's workspace.
//!
//! A copy is planned first, from its sources alone: every file, link
//! and directory it will write, relative to the destination, with the
//! mode it gets and a digest of its content. The plan's digest is the
//! step's cache key, so a build whose copied files did not change uses
//! its cache without writing anything. Applied, the plan becomes a tar
//! extracted at the deepest directory of the destination that exists in
//! the image (resolved inside the image's root), with the missing
//! directories in front, by the same unpacker a pull uses: nothing can
//! land outside the image's root, links included.
//!
//! Docker's rules: sources are relative to the context (never outside
//! it) and may be globs; a directory's contents are copied, not the
//! directory; with several sources, or a destination ending in `/`, the
//! destination is a directory; files are owned by 0:0 unless `--chown`
//! says otherwise; `ADD` extracts local tar archives (plain, gzip, zstd).

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::pattern;
use super::workspace::{fd_path, open_in, read_in, Workspace};
use super::BuildError;
use crate::image::digest::{Digest, Hasher};
use crate::image::manifest::Compression;

/// How deep a copied tree may go.
const MAX_DEPTH: usize = 256;

/// Something to copy, found.
#[derive(Debug)]
pub enum Source {
    /// A path on this host, opened inside the root it was found in (the
    /// context, or another stage's image); `name` is the name it has there.
    Path {
        /// The `/proc/self/fd/N` path of its descriptor.
        fd: OwnedFd,
        /// Its last component.
        name: String,
    },
    /// A downloaded file (`ADD https://…`), unlinked and open: copied as
    /// it is, never extracted, with mode 0600 (as dockerd writes it).
    Download {
        /// The open file.
        fd: OwnedFd,
        /// The name it gets.
        name: String,
    },
    /// Bytes to become a file (a heredoc).
    Bytes {
        /// The file's name.
        name: String,
        /// Its content.
        data: Vec<u8>,
        /// Its permission bits.
        mode: u32,
    },
}

/// The mode of a file `ADD` downloaded.
const DOWNLOAD_MODE: u32 = 0o600;

/// What one copy step does.
#[derive(Debug)]
pub struct CopySpec {
    /// What to copy.
    pub sources: Vec<Source>,
    /// Where, absolute in the image.
    pub dest: PathBuf,
    /// The destination is a directory (ends in `/`, several sources).
    pub dest_is_dir: bool,
    /// `--chown`, as written.
    pub chown: Option<String>,
    /// `--chmod`, parsed.
    pub chmod: Option<u32>,
    /// `ADD`: local archives are extracted.
    pub extract: bool,
}

#[derive(Debug)]
enum Item {
    Dir,
    File {
        path: PathBuf,
        size: u64,
    },
    Symlink(PathBuf),
    Bytes(Vec<u8>),
    /// An archive to extract into the destination directory.
    Archive(PathBuf, Compression),
}

/// One thing the copy writes, relative to the destination.
#[derive(Debug)]
struct Planned {
    rel: PathBuf,
    item: Item,
    mode: u32,
    mtime: i64,
}

/// A copy planned: what it writes and its digest.
#[derive(Debug)]
pub struct Plan {
    items: Vec<Planned>,
    /// The destination is a directory.
    dest_is_dir: bool,
    /// Covers every path, mode and byte the copy writes.
    pub digest: Digest,
}

/// What an archive is, by its first bytes: a tar, maybe compressed.
fn archive_kind(path: &Path) -> Option<Compression> {
    let mut head = [0u8; 512];
    let mut file = File::open(path).ok()?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    match Compression::sniff(&head[..n]) {
        Compression::None if n >= 262 && &head[257..262] == b"ustar" => Some(Compression::None),
        Compression::None => None,
        // Compressed: a tar inside is what ADD extracts; the name is not
        // enough to tell, so the stream is looked into.
        c => {
            let reader = BufReader::new(File::open(path).ok()?);
            let mut inner: Box<dyn Read> = match c {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
                Compression::Zstd => {
                    Box::new(ruzstd::decoding::StreamingDecoder::new(reader).ok()?)
                }
                Compression::None => return None,
            };
            let mut block = [0u8; 512];
            inner.read_exact(&mut block).ok()?;
            (&block[257..262] == b"ustar").then_some(c)
        }
    }
}

fn hash_str(h: &mut Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn file_digest(path: &Path) -> Result<Digest, BuildError> {
    let mut file =
        File::open(path).map_err(|e| BuildError::io(format!("read {}", path.display()), e))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| BuildError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

fn mtime_of(meta: &fs::Metadata) -> i64 {
    meta.mtime()
}

/// Adds the tree below `dir` (host path) to the plan under `rel`.
fn plan_tree(
    dir: &Path,
    rel: &Path,
    depth: usize,
    out: &mut Vec<Planned>,
) -> Result<(), BuildError> {
    if depth > MAX_DEPTH {
        return Err(BuildError::Step(format!(
            "{}: deeper than {MAX_DEPTH} directories",
            rel.display()
        )));
    }
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| BuildError::io(format!("list {}", rel.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| BuildError::io(format!("stat {}", rel.display()), e))?;
        let kind = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mtime = mtime_of(&meta);
        if kind.is_dir() {
            out.push(Planned {
                rel: rel.clone(),
                item: Item::Dir,
                mode,
                mtime,
            });
            plan_tree(&path, &rel, depth + 1, out)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| BuildError::io(format!("read link {}", rel.display()), e))?;
            out.push(Planned {
                rel,
                item: Item::Symlink(target),
                mode,
                mtime,
            });
        } else if kind.is_file() {
            out.push(Planned {
                rel,
                item: Item::File {
                    path,
                    size: meta.len(),
                },
                mode,
                mtime,
            });
        } else if kind.is_fifo()
            || kind.is_socket()
            || kind.is_char_device()
            || kind.is_block_device()
        {
            // Not content: left out, as docker's copier leaves them.
        }
    }
    Ok(())
}

impl CopySpec {
    /// Plans the copy and digests it.
    pub fn plan(&self) -> Result<Plan, BuildError> {
        // A directory source, or an archive to extract, makes the
        // destination a directory for every source.
        let mut dest_is_dir = self.dest_is_dir;
        let mut kinds = Vec::new();
        for source in &self.sources {
            let kind = match source {
                Source::Bytes { .. } | Source::Download { .. } => None,
                Source::Path { fd, name } => {
                    let path = fd_path(fd);
                    let meta = fs::metadata(&path)
                        .map_err(|e| BuildError::io(format!("stat {name}"), e))?;
                    let archive = if self.extract && !meta.is_dir() {
                        archive_kind(&path)
                    } else {
                        None
                    };
                    dest_is_dir |= meta.is_dir() || archive.is_some();
                    Some((path, meta, archive))
                }
            };
            kinds.push(kind);
        }
        let mut items = Vec::new();
        for (source, kind) in self.sources.iter().zip(kinds) {
            let named = |name: &str| {
                if dest_is_dir {
                    PathBuf::from(name)
                } else {
                    PathBuf::new()
                }
            };
            match (source, kind) {
                (Source::Bytes { name, data, mode }, _) => items.push(Planned {
                    rel: named(name),
                    item: Item::Bytes(data.clone()),
                    mode: *mode,
                    mtime: now_secs(),
                }),
                (Source::Path { name, .. }, Some((path, meta, archive))) => {
                    let mode = meta.mode() & 0o7777;
                    if meta.is_dir() {
                        // Its contents go into the destination directory.
                        plan_tree(&path, Path::new(""), 0, &mut items)?;
                    } else if let Some(c) = archive {
                        items.push(Planned {
                            rel: PathBuf::new(),
                            item: Item::Archive(path, c),
                            mode,
                            mtime: mtime_of(&meta),
                        });
                    } else {
                        items.push(Planned {
                            rel: named(name),
                            item: Item::File {
                                path,
                                size: meta.len(),
                            },
                            mode,
                            mtime: mtime_of(&meta),
                        });
                    }
                }
                (Source::Download { fd, name }, _) => {
                    let path = fd_path(fd);
                    let size = fs::metadata(&path)
                        .map_err(|e| BuildError::io(format!("stat the download {name}"), e))?
                        .len();
                    items.push(Planned {
                        rel: named(name),
                        item: Item::File { path, size },
                        mode: DOWNLOAD_MODE,
                        mtime: now_secs(),
                    });
                }
                (Source::Path { .. }, None) => {}
            }
        }
        let mut h = Hasher::new();
        hash_str(&mut h, &self.dest.to_string_lossy());
        hash_str(&mut h, if dest_is_dir { "dir" } else { "file" });
        hash_str(&mut h, self.chown.as_deref().unwrap_or(""));
        hash_str(&mut h, &format!("{:?}", self.chmod));
        for p in &items {
            hash_str(&mut h, &p.rel.to_string_lossy());
            h.update(&p.mode.to_le_bytes());
            match &p.item {
                Item::Dir => hash_str(&mut h, "d"),
                Item::Symlink(t) => {
                    hash_str(&mut h, "l");
                    hash_str(&mut h, &t.to_string_lossy());
                }
                Item::File { path, size } => {
                    hash_str(&mut h, "f");
                    h.update(&size.to_le_bytes());
                    hash_str(&mut h, &file_digest(path)?.to_string());
                }
                Item::Bytes(data) => {
                    hash_str(&mut h, "b");
                    hash_str(&mut h, &Digest::of(data).to_string());
                }
                Item::Archive(path, _) => {
                    hash_str(&mut h, "a");
                    hash_str(&mut h, &file_digest(path)?.to_string());
                }
            }
        }
        Ok(Plan {
            items,
            dest_is_dir,
            digest: h.finish(),
        })
    }
}

/// Owner ids from `--chown` (`user[:group]`, names or numbers), names
/// looked up in the image's `/etc/passwd` and `/etc/group`.
pub fn resolve_owner(root: &OwnedFd, chown: &str) -> Result<(u32, u32), BuildError> {
    let (user, group) = match chown.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (chown, None),
    };
    let passwd = read_in(root, Path::new("/etc/passwd")).unwrap_or_default();
    let lookup_user = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup_user(user).ok_or_else(|| {
            BuildError::Step(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        })?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_in(root, Path::new("/etc/group")).unwrap_or_default();
                groups
                    .lines()
                    .find_map(|line| {
                        let f: Vec<&str> = line.split(':').collect();
                        (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                    })
                    .ok_or_else(|| {
                        BuildError::Step(format!(
                            "unable to find group {g}: no matching entries in group file"
                        ))
                    })?
            }
        },
    };
    Ok((uid, gid))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where a copy lands in the image: the deepest existing directory on
/// the way to the destination, and the components below it to create.
struct Landing {
    at: OwnedFd,
    missing: Vec<PathBuf>,
    /// The destination itself is a directory (after looking at the image).
    dest_is_dir: bool,
}

fn land(ws: &Workspace, dest: &Path, dest_is_dir: bool) -> Result<Landing, BuildError> {
    let parts: Vec<PathBuf> = dest
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(PathBuf::from(p)),
            _ => None,
        })
        .collect();
    let mut dest_is_dir = dest_is_dir;
    let mut at = ws
        .open(Path::new("/"), true)?
        .ok_or_else(|| BuildError::Step("the image has no root".into()))?;
    let mut depth = 0;
    let mut prefix = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        let last = i + 1 == parts.len();
        match ws.open(&prefix, true)? {
            Some(fd) => {
                let is_dir = fs::metadata(fd_path(&fd))
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if is_dir {
                    at = fd;
                    depth = i + 1;
                    if last {
                        // An existing directory takes a single file by its name.
                        dest_is_dir = true;
                    }
                } else if !last || dest_is_dir {
                    return Err(BuildError::Step(format!(
                        "cannot copy to {}: {} is not a directory",
                        dest.display(),
                        prefix.display()
                    )));
                } else {
                    break;
                }
            }
            None => break,
        }
    }
    Ok(Landing {
        at,
        missing: parts[depth..].to_vec(),
        dest_is_dir,
    })
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

impl Plan {
    /// Writes the plan into the workspace's image at `dest`.
    pub fn apply(&self, ws: &Workspace, spec: &CopySpec, scratch: &Path) -> Result<(), BuildError> {
        let (uid, gid) = match &spec.chown {
            Some(c) => {
                let root = ws
                    .open(Path::new("/"), true)?
                    .ok_or_else(|| BuildError::Step("the image has no root".into()))?;
                resolve_owner(&root, c)?
            }
            None => (0, 0),
        };
        let landing = land(ws, &spec.dest, self.dest_is_dir)?;
        let dest_is_dir = landing.dest_is_dir;
        // The directories to make, then the destination's own place.
        let (dirs, base): (Vec<PathBuf>, PathBuf) = if dest_is_dir {
            let all: PathBuf = landing.missing.iter().collect();
            let mut dirs = Vec::new();
            let mut p = PathBuf::new();
            for m in &landing.missing {
                p.push(m);
                dirs.push(p.clone());
            }
            (dirs, all)
        } else {
            let n = landing.missing.len().saturating_sub(1);
            let mut dirs = Vec::new();
            let mut p = PathBuf::new();
            for m in &landing.missing[..n] {
                p.push(m);
                dirs.push(p.clone());
            }
            let file: PathBuf = landing.missing.iter().collect();
            let file = if file.as_os_str().is_empty() {
                // The destination exists as a file: replaced.
                PathBuf::from(spec.dest.file_name().unwrap_or_default())
            } else {
                file
            };
            (dirs, file)
        };
        // A file going to an existing file's place lands in its directory.
        let at = if !dest_is_dir && landing.missing.is_empty() {
            let parent = spec.dest.parent().unwrap_or(Path::new("/"));
            ws.open(parent, true)?
                .ok_or_else(|| BuildError::Step(format!("{} vanished", parent.display())))?
        } else {
            landing.at
        };
        let spool =
            tempfile::tempfile_in(scratch).map_err(|e| BuildError::io("spool the copy", e))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(spool));
        let fail = |e: std::io::Error| BuildError::io("write the copy", e);
        let now = now_secs();
        for d in &dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, uid, gid, now);
            tar.append_data(&mut h, d, std::io::empty()).map_err(fail)?;
        }
        let mut archives = Vec::new();
        for p in &self.items {
            let rel = if p.rel.as_os_str().is_empty() {
                base.clone()
            } else {
                base.join(&p.rel)
            };
            let mode = spec.chmod.unwrap_or(p.mode);
            match &p.item {
                Item::Dir => {
                    let mut h = header(tar::EntryType::Directory, mode, uid, gid, p.mtime);
                    tar.append_data(&mut h, &rel, std::io::empty())
                        .map_err(fail)?;
                }
                Item::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, p.mtime);
                    tar.append_link(&mut h, &rel, target).map_err(fail)?;
                }
                Item::File { path, size } => {
                    let file = File::open(path).map_err(fail)?;
                    let mut h = header(tar::EntryType::Regular, mode, uid, gid, p.mtime);
                    h.set_size(*size);
                    tar.append_data(&mut h, &rel, file.take(*size))
                        .map_err(fail)?;
                }
                Item::Bytes(data) => {
                    let mut h = header(tar::EntryType::Regular, mode, uid, gid, p.mtime);
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, &rel, data.as_slice())
                        .map_err(fail)?;
                }
                Item::Archive(path, c) => archives.push((path.clone(), *c, rel)),
            }
        }
        let mut spool = tar
            .into_inner()
            .map_err(fail)?
            .into_inner()
            .map_err(|e| fail(e.into_error()))?;
        spool.flush().map_err(fail)?;
        use std::io::Seek;
        spool.seek(std::io::SeekFrom::Start(0)).map_err(fail)?;
        crate::image::unpack::unpack(BufReader::new(spool), Compression::None, &fd_path(&at))
            .map_err(|e| BuildError::Step(format!("copy into {}: {e}", spec.dest.display())))?;
        for (path, compression, rel) in archives {
            let into = open_in(&at, &rel, false)?
                .ok_or_else(|| BuildError::Step(format!("{} was not made", rel.display())))?;
            let file = File::open(&path).map_err(fail)?;
            crate::image::unpack::unpack(BufReader::new(file), compression, &fd_path(&into))
                .map_err(|e| {
                    BuildError::Step(format!("extract into {}: {e}", spec.dest.display()))
                })?;
        }
        Ok(())
    }
}

/// Finds the sources a `COPY`/`ADD` names in `root` (the context, or
/// another stage's image): paths cleaned and kept inside it, globs
/// matched against everything there.
pub fn find_sources(
    root: &OwnedFd,
    root_path: &Path,
    names: &[String],
    in_context: bool,
) -> Result<Vec<Source>, BuildError> {
    let mut out = Vec::new();
    for name in names {
        if in_context && escapes(name) {
            return Err(BuildError::Step(format!(
                "forbidden path outside the build context: {name}"
            )));
        }
        let cleaned = pattern::clean(name);
        if pattern::has_glob(&cleaned) {
            let mut matched = Vec::new();
            glob_walk(root_path, Path::new(""), &cleaned, 0, &mut matched)?;
            if matched.is_empty() {
                return Err(BuildError::Step(format!(
                    "no source files were specified: {name} matches nothing"
                )));
            }
            for rel in matched {
                out.push(open_source(root, &rel, name)?);
            }
        } else {
            out.push(open_source(root, Path::new(&cleaned), name)?);
        }
    }
    Ok(out)
}

fn escapes(name: &str) -> bool {
    let mut depth: i64 = 0;
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn open_source(root: &OwnedFd, rel: &Path, shown: &str) -> Result<Source, BuildError> {
    let fd = open_in(root, rel, true)?.ok_or_else(|| {
        BuildError::Step(format!(
            "file not found in build context or excluded by .dockerignore: {shown}"
        ))
    })?;
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Source::Path { fd, name })
}

/// Paths below `root_path` that match `pattern`, in name order.
fn glob_walk(
    root_path: &Path,
    rel: &Path,
    pattern: &str,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), BuildError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let dir = root_path.join(rel);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let text = rel.to_string_lossy();
        if pattern::matches(pattern, &text) {
            out.push(rel.clone());
            continue;
        }
        let is_dir = fs::symlink_metadata(root_path.join(&rel)).is_ok_and(|m| m.is_dir());
        if is_dir {
            glob_walk(root_path, &rel, pattern, depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_may_not_leave_the_context() {
        assert!(escapes("../x"));
        assert!(escapes("a/../../x"));
        assert!(!escapes("a/../b"));
        assert!(!escapes("./a"));
    }

    #[test]
    fn plans_digest_content_not_times() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("src")).unwrap();
        fs::write(dir.path().join("src/a.txt"), b"one").unwrap();
        let root = nix::fcntl::open(
            dir.path(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let spec = |names: &[&str]| CopySpec {
            sources: find_sources(
                &root,
                dir.path(),
                &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                true,
            )
            .unwrap(),
            dest: PathBuf::from("/dst/"),
            dest_is_dir: true,
            chown: None,
            chmod: None,
            extract: false,
        };
        let first = spec(&["src"]).plan().unwrap();
        let touched = std::time::SystemTime::now() + std::time::Duration::from_secs(100);
        File::options()
            .write(true)
            .open(dir.path().join("src/a.txt"))
            .unwrap()
            .set_modified(touched)
            .unwrap();
        assert_eq!(spec(&["src"]).plan().unwrap().digest, first.digest);
        fs::write(dir.path().join("src/a.txt"), b"two").unwrap();
        assert_ne!(spec(&["src"]).plan().unwrap().digest, first.digest);
        // Globs match below the root, and match nothing with an error.
        assert_eq!(spec(&["src/*.txt"]).sources.len(), 1);
        assert!(find_sources(&root, dir.path(), &["*.none".into()], true).is_err());
        assert!(find_sources(&root, dir.path(), &["../etc/passwd".into()], true).is_err());
        assert!(find_sources(&root, dir.path(), &["missing".into()], true).is_err());
    }
}
