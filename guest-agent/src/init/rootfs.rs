//! Leaving the initramfs. The kernel unpacks the initramfs into `rootfs`,
//! which can never be unmounted, so `pivot_root` — which every container
//! start needs — fails on it. As `switch_root` does, init copies the tree
//! into a tmpfs, frees the initramfs copy, moves the tmpfs onto `/`,
//! chroots into it and executes itself again.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Where the new root is assembled before it moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";

/// Moves to a tmpfs root and re-executes `/init` there; returns at once
/// when `/` is already not the initramfs.
pub fn leave_initramfs() -> io::Result<()> {
    if !root_is_initramfs()? {
        return Ok(());
    }
    fs::DirBuilder::new().mode(0o755).create(NEW_ROOT)?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(io::Error::from)?;
    let new_root = Path::new(NEW_ROOT);
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        let name = entry.file_name();
        let from = Path::new("/").join(&name);
        if from == new_root {
            continue;
        }
        copy_tree(&from, &new_root.join(&name))?;
        // Free the initramfs's copy as we go: it is memory, not disk.
        remove_tree(&from)?;
    }
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(io::Error::from)?;
    nix::unistd::chroot(".").map_err(io::Error::from)?;
    std::env::set_current_dir("/")?;
    let init = CString::new("/init").expect("no NUL in a literal");
    let err = nix::unistd::execv(&init, std::slice::from_ref(&init)).unwrap_err();
    Err(io::Error::other(format!(
        "cannot execute /init in the new root: {err}"
    )))
}

/// Whether `/` is the kernel's initramfs (`rootfs`). `/proc` is mounted
/// for the look and unmounted again, so the tree holds no mounts.
fn root_is_initramfs() -> io::Result<bool> {
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

/// Copies `from` to `to`: directories, files, symbolic links and device
/// nodes, with modes and owners.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode()))?;
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
        return Ok(());
    } else if kind.is_file() {
        fs::copy(from, to)?;
    } else if kind.is_char_device() || kind.is_block_device() {
        let sflag = if kind.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else {
            nix::sys::stat::SFlag::S_IFBLK
        };
        nix::sys::stat::mknod(
            to,
            sflag,
            nix::sys::stat::Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )
        .map_err(io::Error::from)?;
    } else {
        // Sockets and FIFOs do not belong in an image.
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
}

fn remove_tree(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
