//! `docker cp`: a container's files as tar, both ways.
//!
//! A path in the container is resolved as the container would resolve it:
//! with `openat2(RESOLVE_IN_ROOT)` from the root of its filesystem (or of
//! the bind or volume mounted there), so no symbolic link in the
//! container can point the copy at the host's files. The rootfs of a
//! container that is not running is mounted for the length of the call.

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::Serialize;

use super::{Container, Engine, EngineError};
use crate::image::manifest::Compression;
use crate::runtime::overlay::{self, Overlay};

/// What `HEAD/GET …/archive` tell about the path, in the
/// `X-Docker-Container-Path-Stat` header (base64 JSON).
#[derive(Debug, Clone, Serialize)]
pub struct PathStat {
    /// The last component of the path.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// A Go `os.FileMode`: permission bits and Go's type bits.
    pub mode: u32,
    /// RFC 3339.
    pub mtime: String,
    /// Where a symbolic link points (resolved in the container), else empty.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// Go's `os.FileMode` type bits, which the docker CLI reads.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
}

fn go_file_mode(unix: u32) -> u32 {
    let mut mode = unix & 0o777;
    mode |= match unix & libc::S_IFMT {
        libc::S_IFDIR => go_mode::DIR,
        libc::S_IFLNK => go_mode::SYMLINK,
        libc::S_IFIFO => go_mode::NAMED_PIPE,
        libc::S_IFSOCK => go_mode::SOCKET,
        libc::S_IFBLK => go_mode::DEVICE,
        libc::S_IFCHR => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        _ => 0,
    };
    if unix & libc::S_ISUID != 0 {
        mode |= go_mode::SETUID;
    }
    if unix & libc::S_ISGID != 0 {
        mode |= go_mode::SETGID;
    }
    if unix & libc::S_ISVTX != 0 {
        mode |= go_mode::STICKY;
    }
    mode
}

/// The container's filesystem, held for one copy.
struct View {
    /// The rootfs, and whether this view mounted it.
    rootfs: PathBuf,
    mounted_here: bool,
    /// (destination in the container, source here), longest first.
    binds: Vec<(PathBuf, PathBuf)>,
}

impl Drop for View {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = overlay::unmount(&self.rootfs);
        }
    }
}

/// The path, made absolute and free of `.` and `..` as text (the kernel
/// resolves links later, inside the root).
fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn fstat(fd: &OwnedFd, path: &Path) -> Result<nix::sys::stat::FileStat, EngineError> {
    nix::sys::stat::fstat(fd)
        .map_err(|e| EngineError::Internal(format!("stat {}: {e}", path.display())))
}

/// Where the symbolic link opened as `fd` (O_PATH | O_NOFOLLOW) points.
fn link_of(fd: &OwnedFd) -> PathBuf {
    nix::fcntl::readlinkat(fd, "")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A descriptor's path, usable by calls that take paths.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl View {
    /// The root that holds `path` (a bind's source, or the rootfs) and
    /// the path below it.
    fn locate(&self, path: &Path) -> (PathBuf, PathBuf) {
        for (dest, source) in &self.binds {
            if let Ok(rest) = path.strip_prefix(dest) {
                return (source.clone(), rest.to_owned());
            }
        }
        let rest = path.strip_prefix("/").unwrap_or(path).to_owned();
        (self.rootfs.clone(), rest)
    }

    /// Opens `path` (O_PATH), the last component followed or not.
    fn open(&self, path: &Path, follow: bool) -> Result<OwnedFd, EngineError> {
        let (root, rest) = self.locate(path);
        let root_fd = nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| EngineError::Internal(format!("open {}: {e}", root.display())))?;
        if rest.as_os_str().is_empty() {
            return Ok(root_fd);
        }
        let mut flags = OFlag::O_PATH;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        openat2(&root_fd, &rest, how(flags)).map_err(|e| match e {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => EngineError::NotFound(
                format!("Could not find the file {} in container", path.display()),
            ),
            e => EngineError::Internal(format!("open {}: {e}", path.display())),
        })
    }

    fn stat(&self, path: &Path) -> Result<PathStat, EngineError> {
        let fd = self.open(path, false)?;
        let meta = fstat(&fd, path)?;
        let link_target = if meta.st_mode & libc::S_IFMT == libc::S_IFLNK {
            let target = link_of(&fd);
            let parent = path.parent().unwrap_or(Path::new("/"));
            clean(&parent.join(target).to_string_lossy())
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        Ok(PathStat {
            name,
            size: meta.st_size,
            mode: go_file_mode(meta.st_mode),
            mtime: humantime::format_rfc3339_seconds(
                std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(meta.st_mtime.max(0) as u64),
            )
            .to_string(),
            link_target,
        })
    }
}

impl Engine {
    async fn view(&self, container: &Arc<Container>) -> Result<View, EngineError> {
        let rootfs = container.dir().join("bundle/rootfs");
        let record = container.record();
        let mut mounted_here = false;
        if !super::is_mounted(&rootfs) {
            let lowers = self.store.lowers(&record.image)?;
            Overlay {
                lowers,
                upper: container.dir().join("upper"),
                work: container.dir().join("work"),
            }
            .mount(&rootfs)?;
            mounted_here = true;
        }
        let mut binds = Vec::new();
        if let Ok(text) = std::fs::read(container.dir().join("bundle/config.json")) {
            if let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(&text) {
                for m in spec.mounts().iter().flatten() {
                    let is_bind = m.typ().as_deref() == Some("bind")
                        || m.options()
                            .iter()
                            .flatten()
                            .any(|o| o == "bind" || o == "rbind");
                    if let (true, Some(source)) = (is_bind, m.source()) {
                        binds.push((m.destination().clone(), source.clone()));
                    }
                }
            }
        }
        binds.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        Ok(View {
            rootfs,
            mounted_here,
            binds,
        })
    }

    /// What is at `path` in the container.
    pub async fn archive_stat(&self, key: &str, path: &str) -> Result<PathStat, EngineError> {
        let container = self.container(key)?;
        let _guard = container.lifecycle.lock().await;
        let view = self.view(&container).await?;
        view.stat(&clean(path))
    }

    /// Writes `path` in the container as a tar to `out`, its top entry
    /// named as the path's last component; its stat first.
    pub async fn archive_get(
        &self,
        key: &str,
        path: &str,
        out: impl Write + Send + 'static,
    ) -> Result<(PathStat, tokio::task::JoinHandle<Result<(), EngineError>>), EngineError> {
        let container = self.container(key)?;
        let guard = container.lifecycle.clone().lock_owned().await;
        let view = self.view(&container).await?;
        let cleaned = clean(path);
        let stat = view.stat(&cleaned)?;
        // `dir/.`: the directory's contents, as docker copies them.
        let name = if path.ends_with("/.") {
            ".".to_owned()
        } else {
            stat.name.clone()
        };
        let fd = view.open(&cleaned, false)?;
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _view = view;
            let mut tar = tar::Builder::new(out);
            tar.follow_symlinks(false);
            let meta = fstat(&fd, Path::new(&name))?;
            // The descriptor's /proc path is itself a link: the source is
            // reached through it, never archived as it.
            let result = match meta.st_mode & libc::S_IFMT {
                libc::S_IFDIR => tar.append_dir_all(&name, fd_path(&fd).join(".")),
                libc::S_IFLNK => {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(meta.st_mode & 0o7777);
                    header.set_uid(meta.st_uid.into());
                    header.set_gid(meta.st_gid.into());
                    header.set_mtime(meta.st_mtime.max(0) as u64);
                    header.set_size(0);
                    tar.append_link(&mut header, &name, link_of(&fd))
                }
                libc::S_IFREG => std::fs::File::open(fd_path(&fd))
                    .and_then(|mut f| tar.append_file(&name, &mut f)),
                _ => Err(std::io::Error::other(
                    "only files, directories and links can be copied",
                )),
            };
            result
                .and_then(|()| tar.finish())
                .map_err(EngineError::io("write the archive"))
        });
        Ok((stat, task))
    }

    /// Extracts the tar `input` into directory `path` in the container.
    pub async fn archive_put(
        &self,
        key: &str,
        path: &str,
        input: impl BufRead + Send + 'static,
    ) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let guard = container.lifecycle.clone().lock_owned().await;
        if container.record().host_config.readonly_rootfs {
            return Err(EngineError::Conflict(
                "container rootfs is marked read-only".into(),
            ));
        }
        let view = self.view(&container).await?;
        let cleaned = clean(path);
        let fd = view.open(&cleaned, true)?;
        let meta = std::fs::metadata(fd_path(&fd))
            .map_err(EngineError::io(format!("stat {}", cleaned.display())))?;
        if !meta.is_dir() {
            return Err(EngineError::Invalid(format!(
                "extraction point is not a directory: {}",
                cleaned.display()
            )));
        }
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _view = view;
            let mut input = input;
            let head = input
                .fill_buf()
                .map_err(EngineError::io("read the archive"))?;
            let compression = Compression::sniff(head);
            crate::image::unpack::unpack(input, compression, &fd_path(&fd))
                .map(|_| ())
                .map_err(|e| EngineError::Invalid(format!("extract the archive: {e}")))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_text() {
        assert_eq!(clean("a/b/../c"), PathBuf::from("/a/c"));
        assert_eq!(clean("/../../etc"), PathBuf::from("/etc"));
        assert_eq!(clean("/tmp/."), PathBuf::from("/tmp"));
    }

    #[test]
    fn modes_carry_go_type_bits() {
        assert_eq!(go_file_mode(libc::S_IFDIR | 0o755), go_mode::DIR | 0o755);
        assert_eq!(go_file_mode(libc::S_IFREG | 0o644), 0o644);
        assert_eq!(
            go_file_mode(libc::S_IFLNK | 0o777),
            go_mode::SYMLINK | 0o777
        );
    }
}
