//! Leaving the initramfs. The kernel unpacks the initramfs into `rootfs`,
//! the mount at the bottom of the tree, which has no parent: `pivot_root`
//! — which every container start needs — refuses a root on it. Copying the
//! tree into a tmpfs (as `switch_root` does) costs a good part of a second
//! under TCG, so init keeps the files where they are and changes only the
//! mount: it binds `/` onto a directory of its own, moves that bind mount
//! onto `/` and chroots into it. The root is then a mount with a parent,
//! which `pivot_root` accepts, on the same files.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Where the bind mount of `/` is made before it moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";

/// Makes the root a bind mount of the initramfs (see [`root_is_initramfs`]).
/// Call it before anything is mounted: the bind does not take submounts.
pub fn leave_initramfs() -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(NEW_ROOT)?;
    mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("cannot bind / on {NEW_ROOT}: {e}")))?;
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| io::Error::other(format!("cannot move {NEW_ROOT} onto /: {e}")))?;
    nix::unistd::chroot(".").map_err(io::Error::from)?;
    std::env::set_current_dir("/")?;
    // The directory the bind mount was made on, seen from the new root.
    fs::remove_dir(Path::new(NEW_ROOT))
}

/// Whether `/` is the kernel's initramfs (`rootfs`). `/proc` is mounted
/// for the look and unmounted again, so the tree holds no mounts.
pub fn root_is_initramfs() -> io::Result<bool> {
    fs::create_dir_all("/proc")?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    let mounts = fs::read_to_string("/proc/self/mounts");
    nix::mount::umount("/proc").map_err(io::Error::from)?;
    Ok(mounts?
        .lines()
        .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["rootfs", "/", "rootfs"]))
}
