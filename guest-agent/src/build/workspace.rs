//! A build step's view of an image: the image's layers mounted under a
//! writable upper directory of the step's own, so `COPY`, `ADD` and
//! `WORKDIR` change files the way a container would, and the upper
//! directory becomes the step's layer. Paths are resolved inside the
//! mounted root (`openat2(RESOLVE_IN_ROOT)`), so a link in the image can
//! never point a step at the host's files.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::BuildError;
use crate::image::store::{ImageRecord, Store};
use crate::runtime::overlay::{self, Overlay};

/// An image mounted with a fresh upper directory; unmounted and removed
/// when dropped.
pub struct Workspace {
    dir: PathBuf,
    rootfs: PathBuf,
    root: OwnedFd,
}

impl Workspace {
    /// Mounts `image` (or nothing, for `scratch`) at a new directory under
    /// `parent`.
    pub fn mount(
        store: &Store,
        image: Option<&ImageRecord>,
        parent: &Path,
    ) -> Result<Self, BuildError> {
        let dir = tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(parent)
            .map_err(|e| BuildError::io("make a step directory", e))?
            .keep();
        let rootfs = dir.join("rootfs");
        let mounted = (|| {
            for sub in ["rootfs", "upper", "work"] {
                std::fs::create_dir_all(dir.join(sub))
                    .map_err(|e| BuildError::io("make a step directory", e))?;
            }
            let lowers = match image {
                Some(record) => store.lowers(record)?,
                None => store.empty_lowers(),
            };
            Overlay {
                lowers,
                upper: dir.join("upper"),
                work: dir.join("work"),
            }
            .mount(&rootfs)?;
            nix::fcntl::open(
                &rootfs,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| BuildError::io("open the step's root", e.into()))
        })();
        match mounted {
            Ok(root) => Ok(Workspace { dir, rootfs, root }),
            Err(e) => {
                let _ = overlay::unmount(&rootfs);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Where the image is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.rootfs.clone()
    }

    /// The step's upper directory: what it changed.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Opens `path` (absolute in the image) as `O_PATH`, resolved inside
    /// the root, the last component followed or not. `None` if it is not
    /// there.
    pub fn open(&self, path: &Path, follow: bool) -> Result<Option<OwnedFd>, BuildError> {
        open_in(&self.root, path, follow)
    }

    /// Unmounts, leaving the upper directory readable until drop.
    pub fn unmount(&self) {
        let _ = overlay::unmount(&self.rootfs);
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = overlay::unmount(&self.rootfs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `path` below `root` (an `O_PATH` directory), resolved as if
/// `root` were `/`. `None` if a component is missing.
pub fn open_in(root: &OwnedFd, path: &Path, follow: bool) -> Result<Option<OwnedFd>, BuildError> {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if rel.as_os_str().is_empty() {
        return nix::unistd::dup(root)
            .map(Some)
            .map_err(|e| BuildError::io("open /", e.into()));
    }
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root, &rel, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(BuildError::io(format!("open {}", path.display()), e.into())),
    }
}

/// A descriptor's path, for calls that take paths.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Reads a small file at `path` in the root, if it is there.
pub fn read_in(root: &OwnedFd, path: &Path) -> Option<String> {
    let fd = open_in(root, path, true).ok()??;
    std::fs::read_to_string(fd_path(&fd)).ok()
}
