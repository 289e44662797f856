//! A `cgroup` mount in the container: its own cgroups under
//! `/sys/fs/cgroup`, and nothing above them.
//!
//! With a cgroup namespace, fresh cgroup file systems are mounted: the
//! kernel roots them at the namespace's root, the container's cgroup.
//! Without one, the container's cgroup directories are bind-mounted from
//! the host's hierarchies. On a v2 host that is one mount; on a v1 or
//! hybrid host it is a tmpfs holding one directory per hierarchy (named as
//! on the host, e.g. `cpu,cpuacct`, with `cpu` and `cpuacct` links), as
//! runc lays it out.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount as mount2, MsFlags};

use super::RuntimeError;

/// Flags every cgroup mount gets, whatever the spec says.
const SAFE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// Where the host mounted it.
    mount_point: PathBuf,
    /// The part of the hierarchy the mount shows (usually `/`).
    mount_root: PathBuf,
    /// `cgroup2` or `cgroup`.
    fstype: String,
    /// The super-block options (controllers, `name=`, `xattr`), without
    /// `rw`/`ro`.
    options: Vec<String>,
}

impl Hierarchy {
    /// The directory name in the container's `/sys/fs/cgroup`.
    fn name(&self) -> String {
        self.mount_point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok());
        if let (b'\\', Some(digits)) = (bytes[i], digits) {
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in `mountinfo`, outside `rootfs`, first of each name.
fn hierarchies(mountinfo: &str, rootfs: &Path) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype), Some(superopts)) =
            (left.get(3), left.get(4), right.first(), right.get(2))
        else {
            continue;
        };
        if *fstype != "cgroup" && *fstype != "cgroup2" {
            continue;
        }
        let mount_point = PathBuf::from(unescape(point));
        if mount_point.starts_with(rootfs) {
            continue;
        }
        let hierarchy = Hierarchy {
            mount_point,
            mount_root: PathBuf::from(unescape(root)),
            fstype: (*fstype).to_owned(),
            options: superopts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .map(str::to_owned)
                .collect(),
        };
        if !found.iter().any(|h| h.name() == hierarchy.name()) {
            found.push(hierarchy);
        }
    }
    found
}

/// This process's cgroup in `hierarchy`, from `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str, hierarchy: &Hierarchy) -> Option<PathBuf> {
    let options: BTreeSet<&str> = hierarchy.options.iter().map(String::as_str).collect();
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if hierarchy.fstype == "cgroup2" {
            controllers.is_empty()
        } else {
            !controllers.is_empty() && controllers.split(',').all(|c| options.contains(c))
        };
        matches.then(|| PathBuf::from(path))
    })
}

/// Shows the host directory of this process's cgroup in `hierarchy` at
/// `dest`.
fn bind_own(hierarchy: &Hierarchy, proc_cgroup: &str, dest: &Path) -> Result<(), RuntimeError> {
    let own = own_path(proc_cgroup, hierarchy).ok_or_else(|| RuntimeError::Io {
        action: format!(
            "find this process's cgroup in {}",
            hierarchy.mount_point.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    // Our path is from the hierarchy's root; the mount shows it from
    // `mount_root` down.
    let relative = own
        .strip_prefix(&hierarchy.mount_root)
        .map_err(|_| RuntimeError::Io {
            action: format!(
                "find this process's cgroup in {}",
                hierarchy.mount_point.display()
            ),
            source: std::io::Error::other(format!(
                "{} is outside the mounted part {}",
                own.display(),
                hierarchy.mount_root.display()
            )),
        })?;
    let source = hierarchy.mount_point.join(relative);
    mount2(
        Some(&source),
        dest,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(RuntimeError::sys(format!("bind {}", source.display())))
}

/// Mounts `hierarchy` afresh at `dest`, rooted at our cgroup namespace.
fn mount_fresh(hierarchy: &Hierarchy, dest: &Path, flags: MsFlags) -> Result<(), RuntimeError> {
    let data = if hierarchy.fstype == "cgroup2" {
        String::new()
    } else {
        hierarchy.options.join(",")
    };
    mount2(
        Some(hierarchy.fstype.as_str()),
        dest,
        Some(hierarchy.fstype.as_str()),
        flags | SAFE,
        Some(data.as_str()),
    )
    .map_err(RuntimeError::sys(format!(
        "mount {} {}",
        hierarchy.fstype,
        hierarchy.name()
    )))
}

/// Read-only and the safe flags on a bind mount, which takes them only on
/// a remount.
fn restrict(dest: &Path, flags: MsFlags) -> Result<(), RuntimeError> {
    mount2(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | SAFE | (flags & MsFlags::MS_RDONLY),
        None::<&str>,
    )
    .map_err(RuntimeError::sys(format!("remount {}", dest.display())))
}

/// Mounts the container's cgroups at `dest` (inside `rootfs`, created).
/// `cgroup_ns`: the init is in a cgroup namespace of its own.
pub fn mount(
    rootfs: &Path,
    dest: &Path,
    flags: MsFlags,
    cgroup_ns: bool,
) -> Result<(), RuntimeError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(RuntimeError::io("read /proc/self/mountinfo"))?;
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(RuntimeError::io("read /proc/self/cgroup"))?;
    let found = hierarchies(&mountinfo, rootfs);
    let place = |h: &Hierarchy, at: &Path| {
        if cgroup_ns {
            mount_fresh(h, at, flags)
        } else {
            bind_own(h, &proc_cgroup, at).and_then(|()| restrict(at, flags))
        }
    };
    // A v2-only host: the one hierarchy is the whole of /sys/fs/cgroup.
    if let [only] = found.as_slice() {
        if only.fstype == "cgroup2" {
            return place(only, dest);
        }
    }
    if found.is_empty() {
        return Err(RuntimeError::Io {
            action: "mount cgroups in the container".into(),
            source: std::io::Error::other("the host has no cgroup file system mounted"),
        });
    }
    mount2(Some("tmpfs"), dest, Some("tmpfs"), SAFE, Some("mode=755"))
        .map_err(RuntimeError::sys("mount the tmpfs for cgroups"))?;
    for h in &found {
        let name = h.name();
        let at = dest.join(&name);
        fs::create_dir_all(&at).map_err(RuntimeError::io(format!("create {}", at.display())))?;
        place(h, &at)?;
        // `cpu,cpuacct` is also reachable as `cpu` and `cpuacct`.
        if name.contains(',') {
            for part in name.split(',') {
                let link = dest.join(part);
                if fs::symlink_metadata(&link).is_err() {
                    symlink(&name, &link)
                        .map_err(RuntimeError::io(format!("link {}", link.display())))?;
                }
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount2(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | SAFE,
            Some("mode=755"),
        )
        .map_err(RuntimeError::sys("make the cgroup tmpfs read-only"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 25 0:27 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:33 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
90 80 0:33 / /bundle/rootfs/sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    const PROC_CGROUP: &str = "\
12:pids:/berth/c1
4:cpu,cpuacct:/berth/c1
1:name=systemd:/user.slice
0::/user.slice
";

    #[test]
    fn hybrid_hierarchies_and_own_paths() {
        let found = hierarchies(HYBRID, Path::new("/bundle/rootfs"));
        let names: Vec<String> = found.iter().map(Hierarchy::name).collect();
        assert_eq!(names, ["unified", "systemd", "cpu,cpuacct", "pids"]);
        assert_eq!(found[1].options, ["xattr", "name=systemd"]);
        let own: Vec<Option<PathBuf>> = found.iter().map(|h| own_path(PROC_CGROUP, h)).collect();
        assert_eq!(
            own,
            [
                Some(PathBuf::from("/user.slice")),
                Some(PathBuf::from("/user.slice")),
                Some(PathBuf::from("/berth/c1")),
                Some(PathBuf::from("/berth/c1")),
            ]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/tail\\04"), "/tail\\04");
    }
}
