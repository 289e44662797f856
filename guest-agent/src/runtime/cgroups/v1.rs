//! The per-controller hierarchies of cgroup v1 (hybrid hosts).

use std::path::{Path, PathBuf};

use super::{make_dir, remove_dir, write, Limits};
use crate::runtime::RuntimeError;

/// The v1 controllers a container joins.
const CONTROLLERS: [&str; 8] = [
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
];

/// A cgroup in each mounted v1 controller hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupV1 {
    /// (controller, directory) for each controller mounted on this host.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl CgroupV1 {
    pub(super) fn new(root: &Path, relative: &Path) -> Result<Self, RuntimeError> {
        let dirs: Vec<_> = CONTROLLERS
            .into_iter()
            .filter(|c| root.join(c).join("cgroup.procs").exists())
            .map(|c| (c, root.join(c).join(relative)))
            .collect();
        if dirs.is_empty() {
            return Err(RuntimeError::Io {
                action: format!("find cgroup controllers under {}", root.display()),
                source: std::io::Error::other(
                    "no cgroup v1 controller and no cgroup v2 is mounted",
                ),
            });
        }
        Ok(CgroupV1 { dirs })
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// The directory of `controller`, if it is mounted.
    pub(super) fn controller_dir(&self, controller: &str) -> Option<&Path> {
        self.dir(controller)
    }

    pub(super) fn any_dir(&self) -> &Path {
        // `new` refuses to build one without any controller.
        self.dirs
            .first()
            .map(|(_, d)| d.as_path())
            .unwrap_or(Path::new(super::CGROUP_ROOT))
    }

    fn need(&self, controller: &str) -> Result<&Path, RuntimeError> {
        self.dir(controller).ok_or_else(|| RuntimeError::Io {
            action: format!("apply a {controller} limit"),
            source: std::io::Error::other(format!(
                "the {controller} cgroup controller is not mounted"
            )),
        })
    }

    pub(super) fn create(&self, limits: &Limits) -> Result<(), RuntimeError> {
        for (controller, dir) in &self.dirs {
            make_dir(dir)?;
            if *controller == "cpuset" {
                inherit_cpuset(dir)?;
            }
        }
        if let Some(memory) = limits.memory {
            write(
                self.need("memory")?,
                "memory.limit_in_bytes",
                &memory.to_string(),
            )?;
        }
        if let Some(swap) = limits.memory_swap {
            let dir = self.need("memory")?;
            // Absent when the kernel runs without swap accounting.
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write(dir, "memory.memsw.limit_in_bytes", &swap.to_string())?;
            }
        }
        if let Some(pids) = limits.pids {
            let value = if pids < 0 {
                "max".to_owned()
            } else {
                pids.to_string()
            };
            write(self.need("pids")?, "pids.max", &value)?;
        }
        if let Some(period) = limits.cpu_period {
            write(self.need("cpu")?, "cpu.cfs_period_us", &period.to_string())?;
        }
        if let Some(quota) = limits.cpu_quota {
            write(self.need("cpu")?, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        if let Some(shares) = limits.cpu_shares {
            write(self.need("cpu")?, "cpu.shares", &shares.to_string())?;
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            write(self.need("cpuset")?, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = &limits.cpuset_mems {
            write(self.need("cpuset")?, "cpuset.mems", mems)?;
        }
        if let Some(weight) = limits.blkio_weight {
            let dir = self.need("blkio")?;
            // Only with the BFQ/CFQ schedulers.
            if dir.join("blkio.weight").exists() {
                write(dir, "blkio.weight", &weight.to_string())?;
            }
        }
        Ok(())
    }

    pub(super) fn add(&self, pid: i32) -> Result<(), RuntimeError> {
        for (_, dir) in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    pub(super) fn remove(&self) -> Result<(), RuntimeError> {
        for (_, dir) in &self.dirs {
            remove_dir(dir)?;
        }
        Ok(())
    }
}

/// A new v1 cpuset starts empty and refuses tasks: copy the parent's CPUs
/// and memory nodes down every level that has none yet.
fn inherit_cpuset(dir: &Path) -> Result<(), RuntimeError> {
    let root = Path::new(super::CGROUP_ROOT).join("cpuset");
    let mut levels: Vec<&Path> = dir.ancestors().take_while(|a| *a != root).collect();
    levels.reverse();
    for level in levels {
        let Some(parent) = level.parent() else {
            continue;
        };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = std::fs::read_to_string(level.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let inherited = std::fs::read_to_string(parent.join(file)).map_err(
                    RuntimeError::io(format!("read {}", parent.join(file).display())),
                )?;
                write(level, file, inherited.trim())?;
            }
        }
    }
    Ok(())
}
