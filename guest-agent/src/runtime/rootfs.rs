//! The container's file system view: the spec's mounts, default devices
//! and `/dev` links, then `pivot_root` into the rootfs; masked and
//! read-only paths after it.
//!
//! Every destination is resolved inside the rootfs with [`secure_join`],
//! which follows symlinks as the container would see them, so a link in
//! the image (`/proc -> /`, `/dev -> ../../host`) can never send a mount
//! outside it. Runs in the init process only, before exec.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::{cgroupfs, RuntimeError};

/// Symlinks followed while resolving one path before giving up, as the
/// kernel's own limit (MAXSYMLINKS is 40).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` as if `root` were `/`: `..` stops at the root and
/// symlinks are followed relative to it. Missing components are kept as
/// they are, so the result can be created.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, RuntimeError> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(PathBuf::from(p)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(RuntimeError::Io {
                        action: format!("resolve {} in the rootfs", path.display()),
                        source: std::io::Error::other("too many levels of symbolic links"),
                    });
                }
                let target = fs::read_link(root.join(&candidate)).map_err(RuntimeError::io(
                    format!("read link {}", candidate.display()),
                ))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(PathBuf::from(p)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Mount flags and the data string for a list of mount options.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear, prop) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            _ => {
                data.push(option.clone());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
        propagation.insert(prop);
    }
    (flags, propagation, data)
}

/// Creates the mount point for `source` at `dest`: a directory, or an
/// empty file when a file is bind-mounted.
fn make_mount_point(dest: &Path, file: bool) -> Result<(), RuntimeError> {
    let create = || -> std::io::Result<()> {
        if file {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            if !dest.exists() {
                fs::File::create(dest)?;
            }
            Ok(())
        } else {
            fs::create_dir_all(dest)
        }
    };
    create().map_err(RuntimeError::io(format!(
        "create mount point {}",
        dest.display()
    )))
}

/// Mounts one spec mount under `rootfs`; a relative bind source is taken
/// relative to the bundle.
fn mount_one(bundle: &Path, rootfs: &Path, m: &Mount, cgroup_ns: bool) -> Result<(), RuntimeError> {
    let dest = secure_join(rootfs, m.destination())?;
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&options);
    let typ = m.typ().as_deref().unwrap_or("");
    let what = format!("mount {} on {}", typ, m.destination().display());
    if typ == "cgroup" || typ == "cgroup2" {
        make_mount_point(&dest, false)?;
        return cgroupfs::mount(rootfs, &dest, flags, cgroup_ns).map_err(|e| match e {
            RuntimeError::Sys { action, source } => RuntimeError::Sys {
                action: format!("{what}: {action}"),
                source,
            },
            other => other,
        });
    }
    let is_bind = typ == "bind" || flags.contains(MsFlags::MS_BIND);
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if is_bind {
        let source = m.source().clone().unwrap_or_default();
        let source = if source.is_absolute() {
            source
        } else {
            bundle.join(source)
        };
        let file = source.metadata().map(|md| !md.is_dir()).unwrap_or(false);
        make_mount_point(&dest, file)?;
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(Some(&source), &dest, None::<&str>, bind, None::<&str>).map_err(
            RuntimeError::sys(format!(
                "bind {} on {}",
                source.display(),
                m.destination().display()
            )),
        )?;
        // Bind mounts take their flags only on a remount.
        let remount = flags - MsFlags::MS_REC - MsFlags::MS_BIND;
        if !remount.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount,
                None::<&str>,
            )
            .map_err(RuntimeError::sys(format!(
                "remount {}",
                m.destination().display()
            )))?;
        }
    } else {
        make_mount_point(&dest, false)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        mount(Some(&source), &dest, Some(typ), flags, data).map_err(RuntimeError::sys(what))?;
    }
    if !propagation.is_empty() {
        mount(None::<&str>, &dest, None::<&str>, propagation, None::<&str>).map_err(
            RuntimeError::sys(format!("set propagation of {}", m.destination().display())),
        )?;
    }
    Ok(())
}

/// The devices every container gets, as in the runtime spec.
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

/// How a device node gets into the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    /// mknod(2), as root of the host's user namespace may.
    Create,
    /// A bind mount of the host's node, as a user namespace allows no
    /// mknod; such a device needs to exist on the host.
    Bind,
}

fn make_device(
    rootfs: &Path,
    path: &Path,
    kind: SFlag,
    (major, minor): (u64, u64),
    mode: u32,
    how: Devices,
) -> Result<(), RuntimeError> {
    let dest = secure_join(rootfs, path)?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(RuntimeError::io(format!("create {}", parent.display())))?;
    }
    let _ = fs::remove_file(&dest);
    if how == Devices::Bind {
        make_mount_point(&dest, true)?;
        return mount(
            Some(path),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(RuntimeError::sys(format!(
            "bind the host's device {}",
            path.display()
        )));
    }
    mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .map_err(RuntimeError::sys(format!(
        "create device {}",
        path.display()
    )))
}

/// Creates the default devices, the spec's devices and the `/dev` links.
fn create_devices(rootfs: &Path, spec: &Spec, how: Devices) -> Result<(), RuntimeError> {
    for (path, major, minor) in default_devices() {
        make_device(
            rootfs,
            Path::new(path),
            SFlag::S_IFCHR,
            (major, minor),
            0o666,
            how,
        )?;
    }
    let devices: Vec<LinuxDevice> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for d in &devices {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        make_device(
            rootfs,
            d.path(),
            kind,
            (d.major() as u64, d.minor() as u64),
            d.file_mode().unwrap_or(0o666),
            how,
        )?;
    }
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(link);
        if fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(RuntimeError::io(format!("link /dev/{link}")))?;
        }
    }
    Ok(())
}

/// Builds the container's view of the file system under the rootfs: the
/// spec's mounts and the devices. Runs in the init process, inside its new
/// mount namespace; [`enter`] then moves into it.
pub fn mount_all(
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    in_user_ns: bool,
) -> Result<(), RuntimeError> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .cloned()
        .unwrap_or_default();
    let cgroup_ns = namespaces
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup);
    // Nothing mounted below may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(RuntimeError::sys("make / a slave mount"))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(RuntimeError::sys(format!(
        "bind the rootfs {}",
        rootfs.display()
    )))?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(bundle, rootfs, m, cgroup_ns)?;
    }
    let how = if in_user_ns {
        Devices::Bind
    } else {
        Devices::Create
    };
    create_devices(rootfs, spec, how)
}

/// Moves into the rootfs built by [`mount_all`] with `pivot_root`, then
/// masks and write-protects what the spec asks.
pub fn enter(rootfs: &Path, spec: &Spec) -> Result<(), RuntimeError> {
    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") => MsFlags::MS_SHARED,
        Some("slave") => MsFlags::MS_SLAVE,
        Some("unbindable") => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_PRIVATE,
    };
    pivot(rootfs)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(RuntimeError::sys("set the rootfs propagation"))?;
    if let Some(linux) = linux {
        // While /proc/sys is still writable: it is among the read-only
        // paths.
        for (key, value) in linux.sysctl().iter().flatten() {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(RuntimeError::io(format!("set sysctl {key}")))?;
        }
        for path in linux.masked_paths().as_deref().unwrap_or_default() {
            mask(Path::new(path))?;
        }
        for path in linux.readonly_paths().as_deref().unwrap_or_default() {
            read_only(Path::new(path))?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(RuntimeError::sys("make the rootfs read-only"))?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then detaching the old root: no directory for
/// the old root is needed, and nothing of the host stays reachable.
fn pivot(rootfs: &Path) -> Result<(), RuntimeError> {
    nix::unistd::chdir(rootfs).map_err(RuntimeError::sys("enter the rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(RuntimeError::sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(RuntimeError::sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(RuntimeError::sys("enter /"))
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a
/// directory. A path that does not exist needs no hiding.
fn mask(path: &Path) -> Result<(), RuntimeError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(RuntimeError::sys(format!("mask {}", path.display())))
}

/// Makes `path` read-only by a bind mount onto itself, remounted.
fn read_only(path: &Path) -> Result<(), RuntimeError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|()| {
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    })
    .map_err(RuntimeError::sys(format!(
        "make {} read-only",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("proc")).unwrap();
        symlink("../../../../outside", root.join("etc/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/proc/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/etc/up/y")).unwrap(),
            root.join("outside/y")
        );
        assert!(secure_join(root, Path::new("/loop")).is_err());
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, prop, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY));
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, ["mode=755", "size=65536k"]);
    }
}
