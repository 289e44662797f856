//! An overlayfs rootfs: read-only image layers below, a container's own
//! upper directory on top.
//!
//! The kernel takes mount(2)'s options in one page, which a few dozen
//! layers with long store paths fill. When the absolute paths do not fit:
//! 1. the new mount API (`fsopen`/`fsconfig`), giving the layers one at a
//!    time with `lowerdir+` (Linux 6.8 and later): no limit but overlayfs's
//!    own stack depth;
//! 2. on older kernels, mount(2) from a thread that has its own working
//!    directory (`unshare(CLONE_FS)`) set to the layers' common parent, the
//!    layers named relative to it — what Docker's and containerd's
//!    snapshotters do — so the process's cwd never changes under others.

use std::path::{Path, PathBuf};

use nix::mount::{mount as mount2, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::RuntimeError;

/// The most options mount(2) reads: one page, less the terminating NUL.
const MAX_OPTIONS: usize = 4096 - 1;

/// The most lower layers overlayfs stacks (the kernel's OVL_MAX_STACK).
pub const MAX_LAYERS: usize = 500;

/// An overlay mount's directories.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// The read-only layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer (empty for a new container).
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same file system as `upper`.
    pub work: PathBuf,
}

fn invalid(what: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Io {
        action: format!("mount the overlay {what}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.into()),
    }
}

impl Overlay {
    /// The mount options, with every path made relative to `base` when
    /// one is given.
    fn options(&self, base: Option<&Path>) -> Result<String, RuntimeError> {
        let name = |p: &Path| -> Result<String, RuntimeError> {
            let p = match base {
                Some(base) => p.strip_prefix(base).map_err(|_| {
                    invalid(
                        "layers",
                        format!("{} is not under {}", p.display(), base.display()),
                    )
                })?,
                None => p,
            };
            let text = p
                .to_str()
                .ok_or_else(|| invalid("layers", format!("{} is not UTF-8", p.display())))?;
            // ':' separates layers and ',' options: refused rather than
            // escaped, so the store never names a layer so.
            if text.contains([':', ',', '\\']) {
                return Err(invalid(
                    "layers",
                    format!("{text:?} contains ':', ',' or '\\'"),
                ));
            }
            Ok(text.to_owned())
        };
        let lowers = self
            .lowers
            .iter()
            .map(|p| name(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            name(&self.upper)?,
            name(&self.work)?
        ))
    }

    /// Mounts the overlay on `target`, by whichever way this kernel takes
    /// this many layers.
    pub fn mount(&self, target: &Path) -> Result<(), RuntimeError> {
        let absolute = self.check()?;
        if absolute.len() <= MAX_OPTIONS {
            return mount_overlay(target, &absolute);
        }
        match new_api::mount(self, target) {
            Err(new_api::Error::Unsupported) => self.mount_relative(target),
            Err(new_api::Error::Failed(e)) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// Mounts the overlay with mount(2) alone, as on kernels before 6.8:
    /// paths relative to the layers' common parent when the absolute ones
    /// do not fit.
    pub fn mount_legacy(&self, target: &Path) -> Result<(), RuntimeError> {
        let absolute = self.check()?;
        if absolute.len() <= MAX_OPTIONS {
            return mount_overlay(target, &absolute);
        }
        self.mount_relative(target)
    }

    /// Checks the layer list; returns the options with absolute paths.
    fn check(&self) -> Result<String, RuntimeError> {
        if self.lowers.is_empty() {
            return Err(invalid("layers", "no lower layer was given"));
        }
        if self.lowers.len() > MAX_LAYERS {
            return Err(invalid(
                "layers",
                format!(
                    "{} layers, more than overlayfs stacks ({MAX_LAYERS})",
                    self.lowers.len()
                ),
            ));
        }
        if let Some(p) = self.all().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "layers",
                format!("{} is not absolute", p.display()),
            ));
        }
        self.options(None)
    }

    fn all(&self) -> impl Iterator<Item = &Path> {
        self.lowers
            .iter()
            .chain([&self.upper, &self.work])
            .map(PathBuf::as_path)
    }

    fn mount_relative(&self, target: &Path) -> Result<(), RuntimeError> {
        let all: Vec<&Path> = self.all().collect();
        let base = common_parent(&all);
        let relative = self.options(Some(&base))?;
        if relative.len() > MAX_OPTIONS {
            return Err(invalid(
                "layers",
                format!(
                    "{} layers: the mount options take {} bytes even relative to {}, more than a page",
                    self.lowers.len(),
                    relative.len(),
                    base.display()
                ),
            ));
        }
        let target = std::path::absolute(target)
            .map_err(RuntimeError::io(format!("resolve {}", target.display())))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // This thread's own cwd: the process's stays as it is.
                    nix::sched::unshare(CloneFlags::CLONE_FS)
                        .map_err(RuntimeError::sys("give the mount thread its own cwd"))?;
                    nix::unistd::chdir(&base)
                        .map_err(RuntimeError::sys(format!("enter {}", base.display())))?;
                    mount_overlay(&target, &relative)
                })
                .join()
                .unwrap_or_else(|_| Err(invalid("layers", "the mount thread panicked")))
        })
    }
}

fn mount_overlay(target: &Path, options: &str) -> Result<(), RuntimeError> {
    mount2(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options),
    )
    .map_err(RuntimeError::sys(format!(
        "mount the overlay on {}",
        target.display()
    )))
}

/// The new mount API, by raw system calls (the libc wrappers are recent).
mod new_api {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    use nix::errno::Errno;
    use nix::libc;

    use super::{invalid, Overlay};
    use crate::runtime::RuntimeError;

    /// Why the new API did not mount.
    pub(super) enum Error {
        /// The kernel lacks the API or `lowerdir+`: use the old way.
        Unsupported,
        /// It is there and refused the mount.
        Failed(RuntimeError),
    }

    fn c(text: &str) -> Result<CString, Error> {
        CString::new(text).map_err(|_| Error::Failed(invalid("layers", "a path contains NUL")))
    }

    fn path_str(p: &Path) -> Result<&str, Error> {
        p.to_str().ok_or_else(|| {
            Error::Failed(invalid("layers", format!("{} is not UTF-8", p.display())))
        })
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
    fn set(fs: &OwnedFd, key: &str, value: &str) -> Result<(), Errno> {
        let (key, value) = (
            CString::new(key).map_err(|_| Errno::EINVAL)?,
            CString::new(value).map_err(|_| Errno::EINVAL)?,
        );
        // SAFETY: fsconfig reads two NUL-terminated strings that live for
        // the call and a descriptor we own; it writes no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    pub(super) fn mount(overlay: &Overlay, target: &Path) -> Result<(), Error> {
        let fstype = c("overlay")?;
        // SAFETY: fsopen reads one NUL-terminated string that lives for
        // the call; a non-negative result is a new descriptor we own.
        let rc = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
        if rc < 0 {
            return Err(Error::Unsupported);
        }
        // SAFETY: `rc` is a fresh descriptor owned by nobody else.
        let fs = unsafe { OwnedFd::from_raw_fd(rc as i32) };
        let failed = |what: String| move |e: Errno| Error::Failed(RuntimeError::sys(what)(e));
        let mut lowers = overlay.lowers.iter();
        if let Some(first) = lowers.next() {
            // A kernel without `lowerdir+` says EINVAL on the first one.
            set(&fs, "lowerdir+", path_str(first)?).map_err(|_| Error::Unsupported)?;
        }
        for lower in lowers {
            set(&fs, "lowerdir+", path_str(lower)?)
                .map_err(failed(format!("add the overlay layer {}", lower.display())))?;
        }
        set(&fs, "upperdir", path_str(&overlay.upper)?)
            .map_err(failed("set the overlay upperdir".into()))?;
        set(&fs, "workdir", path_str(&overlay.work)?)
            .map_err(failed("set the overlay workdir".into()))?;
        // SAFETY: no pointers are passed; the descriptor is ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if rc < 0 {
            return Err(failed("create the overlay".into())(Errno::last()));
        }
        // SAFETY: as above; a non-negative result is a new descriptor.
        let rc =
            unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) };
        if rc < 0 {
            return Err(failed("make the overlay mount".into())(Errno::last()));
        }
        // SAFETY: `rc` is a fresh descriptor owned by nobody else.
        let mnt = unsafe { OwnedFd::from_raw_fd(rc as i32) };
        let to = c(path_str(target)?)?;
        let empty = c("")?;
        // SAFETY: move_mount reads two NUL-terminated strings that live for
        // the call and descriptors we own (or AT_FDCWD).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(failed(format!(
                "attach the overlay on {}",
                target.display()
            ))(Errno::last()));
        }
        Ok(())
    }
}

/// The deepest directory that holds all of `paths`.
fn common_parent(paths: &[&Path]) -> PathBuf {
    let mut common: PathBuf = paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    while !paths.iter().all(|p| p.starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    common
}

/// Unmounts an overlay mounted by [`Overlay::mount`]; lazily, so a
/// process still inside does not keep the container from going.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    umount2(target, MntFlags::MNT_DETACH).map_err(RuntimeError::sys(format!(
        "unmount the overlay on {}",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(lowers: &[&str]) -> Overlay {
        Overlay {
            lowers: lowers.iter().map(PathBuf::from).collect(),
            upper: PathBuf::from("/store/c1/upper"),
            work: PathBuf::from("/store/c1/work"),
        }
    }

    #[test]
    fn options_absolute_and_relative() {
        let o = overlay(&["/store/l/2", "/store/l/1"]);
        assert_eq!(
            o.options(None).unwrap(),
            "lowerdir=/store/l/2:/store/l/1,upperdir=/store/c1/upper,workdir=/store/c1/work"
        );
        assert_eq!(
            o.options(Some(Path::new("/store"))).unwrap(),
            "lowerdir=l/2:l/1,upperdir=c1/upper,workdir=c1/work"
        );
    }

    #[test]
    fn separators_in_paths_are_refused() {
        for bad in ["/store/a:b", "/store/a,b", "/store/a\\b"] {
            assert!(overlay(&[bad]).options(None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_common_parent_holds_everything() {
        let a = Path::new("/store/l/1/fs");
        let b = Path::new("/store/l/2/fs");
        let c = Path::new("/store/c/upper");
        assert_eq!(common_parent(&[a, b]), PathBuf::from("/store/l"));
        assert_eq!(common_parent(&[a, b, c]), PathBuf::from("/store"));
        assert_eq!(common_parent(&[Path::new("/x"), c]), PathBuf::from("/"));
    }

    #[test]
    fn bad_layer_lists_are_refused_before_mounting() {
        let target = Path::new("/nonexistent-target");
        assert!(overlay(&[]).mount(target).is_err());
        assert!(overlay(&["relative/layer"]).mount(target).is_err());
        let many: Vec<String> = (0..=MAX_LAYERS).map(|i| format!("/l/{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = overlay(&many).mount(target).unwrap_err().to_string();
        assert!(err.contains("more than overlayfs stacks"), "{err}");
    }
}
