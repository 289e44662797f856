//! Leaving the initramfs. The kernel unpacks the initramfs into `rootfs`,
//! which can never be unmounted, so `pivot_root` — which every container
//! start needs — fails on it. As `switch_root` does, init copies the tree
//! into a tmpfs, frees the initramfs copy, moves the tmpfs onto `/`,
//! chroots into it and executes itself again. Itself, the largest file by
//! far, is not copied: it is executed from an open descriptor of the
//! initramfs's file, which stays alive (unlinked) while it runs, and the
//! agent reaches it as `/proc/self/exe` ever after.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Init's path in the initramfs.
const INIT: &str = "/init";

/// Where the new root is assembled before it moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";

/// Moves from the initramfs (see [`root_is_initramfs`]) to a tmpfs root,
/// leaving the files in `left_behind` out, and re-executes `/init` there.
/// Returns only on failure.
pub fn leave_initramfs(left_behind: &[PathBuf]) -> io::Result<()> {
    let left_behind: BTreeSet<&Path> = left_behind.iter().map(PathBuf::as_path).collect();
    let myself = fs::File::open(INIT)?;
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
        if from != Path::new(INIT) {
            copy_tree(&from, &new_root.join(&name), &left_behind)?;
        }
        // Free the initramfs's copy as we go: it is memory, not disk.
        remove_tree(&from)?;
    }
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(io::Error::from)?;
    nix::unistd::chroot(".").map_err(io::Error::from)?;
    std::env::set_current_dir("/")?;
    let init = CString::new(INIT).expect("no NUL in a literal");
    // The environment the kernel gave init, as execv(3) would pass it.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut pair = k.into_vec();
            pair.push(b'=');
            pair.extend(v.into_vec());
            CString::new(pair).ok()
        })
        .collect();
    let err = nix::unistd::fexecve(&myself, std::slice::from_ref(&init), &env).unwrap_err();
    Err(io::Error::other(format!(
        "cannot execute {INIT} again in the new root: {err}"
    )))
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

/// Copies `from` to `to`: directories, files, symbolic links and device
/// nodes, with modes and owners; but not the files in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &BTreeSet<&Path>) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let path = entry.path();
            if !skip.contains(path.as_path()) {
                copy_tree(&path, &to.join(entry.file_name()), skip)?;
            }
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode()))?;
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
        return Ok(());
    } else if kind.is_file() {
        // One read and one write: the kernel's page-by-page copy
        // (copy_file_range between two tmpfs) is several times slower
        // under TCG.
        fs::write(to, fs::read(from)?)?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode()))?;
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
