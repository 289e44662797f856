//! The unified hierarchy (cgroup v2).

use std::path::{Path, PathBuf};

use super::{make_dir, remove_dir, write, Limits};
use crate::runtime::RuntimeError;

/// A cgroup in the unified hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupV2 {
    dir: PathBuf,
}

impl CgroupV2 {
    pub(super) fn new(dir: PathBuf) -> Self {
        CgroupV2 { dir }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Enables the controllers the limits need in every ancestor, creates
    /// the directory and writes the limits.
    pub(super) fn create(&self, limits: &Limits) -> Result<(), RuntimeError> {
        let root = Path::new(super::CGROUP_ROOT);
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = ["cpu", "cpuset", "io", "memory", "pids"]
            .into_iter()
            .filter(|c| controllers.split_whitespace().any(|have| have == *c))
            .collect();
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        // Enable in each ancestor from the root down to the parent.
        let mut dir = root.to_owned();
        let relative = self.dir.strip_prefix(root).unwrap_or(&self.dir);
        for part in relative.components() {
            make_dir(&dir)?;
            if !enable.is_empty() {
                write(&dir, "cgroup.subtree_control", enable.trim_end())?;
            }
            dir.push(part);
        }
        make_dir(&self.dir)?;
        let d = &self.dir;
        if let Some(memory) = limits.memory {
            write(d, "memory.max", &max(memory))?;
        }
        if let Some(swap) = limits.memory_swap {
            // The spec's swap counts memory too; v2's counts swap alone.
            let only_swap = match (swap, limits.memory) {
                (-1, _) => "max".to_owned(),
                (s, Some(m)) if m > 0 => (s - m).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            write(d, "memory.swap.max", &only_swap)?;
        }
        if let Some(pids) = limits.pids {
            write(d, "pids.max", &max(pids))?;
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            let quota = limits.cpu_quota.map_or("max".to_owned(), max);
            let period = limits.cpu_period.unwrap_or(100_000);
            write(d, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(shares) = limits.cpu_shares {
            write(d, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            write(d, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = &limits.cpuset_mems {
            write(d, "cpuset.mems", mems)?;
        }
        if let Some(weight) = limits.blkio_weight {
            write(d, "io.weight", &format!("default {weight}"))?;
        }
        Ok(())
    }

    pub(super) fn add(&self, pid: i32) -> Result<(), RuntimeError> {
        write(&self.dir, "cgroup.procs", &pid.to_string())
    }

    pub(super) fn remove(&self) -> Result<(), RuntimeError> {
        remove_dir(&self.dir)
    }
}

/// A limit as v2 writes it: "max" for unlimited (-1).
fn max(value: i64) -> String {
    if value < 0 {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

/// Converts v1 CPU shares (2–262144) to a v2 weight (1–10000), as runc does.
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_to_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(max(-1), "max");
        assert_eq!(max(5), "5");
    }
}
