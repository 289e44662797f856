//! An overlayfs rootfs: read-only image layers below, a container's own
//! upper directory on top.
//!
//! The kernel takes mount options in one page, which a few dozen layers
//! with long store paths fill. When the absolute paths do not fit, the
//! mount is made from a thread that has its own working directory
//! (`unshare(CLONE_FS)`) set to the layers' common parent, with the layers
//! named relative to it — what Docker's and containerd's snapshotters do —
//! so the process's working directory never changes under other threads.

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

    /// Mounts the overlay on `target`.
    pub fn mount(&self, target: &Path) -> Result<(), RuntimeError> {
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
        let all: Vec<&Path> = self
            .lowers
            .iter()
            .chain([&self.upper, &self.work])
            .map(PathBuf::as_path)
            .collect();
        if let Some(p) = all.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "layers",
                format!("{} is not absolute", p.display()),
            ));
        }
        let absolute = self.options(None)?;
        if absolute.len() <= MAX_OPTIONS {
            return mount_overlay(target, &absolute);
        }
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
