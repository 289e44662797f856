//! cgroups: a container's resource limits, behind one interface for the
//! unified hierarchy (v2, as in our guest) and the per-controller v1
//! hierarchies of hybrid hosts (as on our CI machines).
//!
//! A container's cgroup is `linux.cgroupsPath` from its spec, or
//! `/berth/<id>`, below the root of each hierarchy. It is made and limited
//! before the container's program runs, and removed on delete.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::RuntimeError;

mod v1;
mod v2;

/// Where the cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The limits Berth applies, in runtime-spec units, whichever version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory plus swap limit in bytes (the spec's `memory.swap`).
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
    /// CPU quota per period, in microseconds.
    pub cpu_quota: Option<i64>,
    /// CPU period, in microseconds.
    pub cpu_period: Option<u64>,
    /// Relative CPU weight as v1 shares (2–262144).
    pub cpu_shares: Option<u64>,
    /// CPUs the container may run on ("0-3,5").
    pub cpuset_cpus: Option<String>,
    /// Memory nodes it may use.
    pub cpuset_mems: Option<String>,
    /// Relative block I/O weight (10–1000).
    pub blkio_weight: Option<u16>,
}

impl Limits {
    /// The limits in a spec's `linux.resources`.
    pub fn from_spec(resources: Option<&LinuxResources>) -> Self {
        let Some(r) = resources else {
            return Limits::default();
        };
        let memory = r.memory().as_ref();
        let cpu = r.cpu().as_ref();
        Limits {
            memory: memory.and_then(|m| m.limit()),
            memory_swap: memory.and_then(|m| m.swap()),
            pids: r.pids().as_ref().map(|p| p.limit()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
            cpuset_mems: cpu.and_then(|c| c.mems().clone()),
            blkio_weight: r.block_io().as_ref().and_then(|b| b.weight()),
        }
    }
}

/// One container's cgroup, in whichever hierarchy the host has.
#[derive(Debug, Clone)]
pub enum Cgroup {
    /// The unified hierarchy: one directory.
    V2(v2::CgroupV2),
    /// One directory per v1 controller.
    V1(v1::CgroupV1),
}

impl Cgroup {
    /// The cgroup at `path` (relative to the hierarchy roots) on this host.
    pub fn new(path: &Path) -> Result<Self, RuntimeError> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        if relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(RuntimeError::Io {
                action: format!("use cgroup path {}", path.display()),
                source: std::io::Error::other("it must not contain '..'"),
            });
        }
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            Ok(Cgroup::V2(v2::CgroupV2::new(root.join(relative))))
        } else {
            Ok(Cgroup::V1(v1::CgroupV1::new(root, relative)?))
        }
    }

    /// Creates the cgroup and applies `limits`.
    pub fn create(&self, limits: &Limits) -> Result<(), RuntimeError> {
        match self {
            Cgroup::V2(c) => c.create(limits),
            Cgroup::V1(c) => c.create(limits),
        }
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), RuntimeError> {
        match self {
            Cgroup::V2(c) => c.add(pid),
            Cgroup::V1(c) => c.add(pid),
        }
    }

    /// Removes the cgroup; its processes must have exited.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        match self {
            Cgroup::V2(c) => c.remove(),
            Cgroup::V1(c) => c.remove(),
        }
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let procs = match self {
            Cgroup::V2(c) => c.dir().join("cgroup.procs"),
            Cgroup::V1(c) => c.any_dir().join("cgroup.procs"),
        };
        fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// Writes `value` to the control file `dir/file`.
fn write(dir: &Path, file: &str, value: &str) -> Result<(), RuntimeError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(RuntimeError::io(format!(
        "write {value:?} to {}",
        path.display()
    )))
}

/// Creates `dir` and its parents.
fn make_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::create_dir_all(dir).map_err(RuntimeError::io(format!("create cgroup {}", dir.display())))
}

/// Removes `dir`, retrying briefly: the kernel releases a cgroup a moment
/// after its last process is reaped.
fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 50 && e.raw_os_error() == Some(nix::libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(RuntimeError::io(format!("remove cgroup {}", dir.display()))(e)),
        }
    }
}

/// The default cgroup path of container `id`.
pub fn default_path(id: &str) -> PathBuf {
    PathBuf::from("/berth").join(id)
}

/// A cgroup's usage, as `docker stats` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// CPU time per CPU, nanoseconds (v1 only).
    pub per_cpu_ns: Vec<u64>,
    /// Memory in use, bytes.
    pub memory: u64,
    /// The memory limit, bytes; `None` for no limit.
    pub memory_limit: Option<u64>,
    /// Page cache that can be reclaimed (`inactive_file`), bytes.
    pub inactive_file: u64,
    /// Processes and threads.
    pub pids: u64,
    /// The pids limit; `None` for no limit.
    pub pids_limit: Option<u64>,
}

/// Reads a control file holding one number ("max" is `None`).
fn read_number(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

/// A `key value` line's value from a flat-keyed file like memory.stat.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    /// Freezes (or thaws) every process in the cgroup and waits until the
    /// kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), RuntimeError> {
        // (directory, file to write, value, file that reports, line it shows when done)
        let (dir, file, value, report, want) = match self {
            Cgroup::V2(c) => (
                c.dir(),
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
                if frozen { "frozen 1" } else { "frozen 0" },
            ),
            Cgroup::V1(c) => (
                c.controller_dir("freezer")
                    .ok_or_else(|| RuntimeError::Io {
                        action: "freeze the container".into(),
                        source: std::io::Error::other(
                            "the freezer cgroup controller is not mounted",
                        ),
                    })?,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        let done = |d: &Path| {
            fs::read_to_string(d.join(report)).is_ok_and(|t| t.lines().any(|l| l.trim() == want))
        };
        write(dir, file, value)?;
        for _ in 0..500 {
            if done(dir) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(RuntimeError::Io {
            action: format!("{} the container", if frozen { "freeze" } else { "thaw" }),
            source: std::io::Error::other("the cgroup did not settle within a second"),
        })
    }

    /// What the cgroup uses now.
    pub fn usage(&self) -> Usage {
        match self {
            Cgroup::V2(c) => {
                let d = c.dir();
                Usage {
                    cpu_ns: read_key(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                    per_cpu_ns: Vec::new(),
                    memory: read_number(&d.join("memory.current")).unwrap_or(0),
                    memory_limit: read_number(&d.join("memory.max")),
                    inactive_file: read_key(&d.join("memory.stat"), "inactive_file").unwrap_or(0),
                    pids: read_number(&d.join("pids.current")).unwrap_or(0),
                    pids_limit: read_number(&d.join("pids.max")),
                }
            }
            Cgroup::V1(c) => {
                let file = |controller: &str, name: &str| {
                    c.controller_dir(controller).map(|d| d.join(name))
                };
                let number = |controller: &str, name: &str| {
                    file(controller, name).and_then(|p| read_number(&p))
                };
                // v1 reports "no limit" as a huge page-aligned number.
                let limit = number("memory", "memory.limit_in_bytes").filter(|l| *l < 1 << 62);
                Usage {
                    cpu_ns: number("cpuacct", "cpuacct.usage").unwrap_or(0),
                    per_cpu_ns: file("cpuacct", "cpuacct.usage_percpu")
                        .and_then(|p| fs::read_to_string(p).ok())
                        .map(|t| {
                            t.split_whitespace()
                                .filter_map(|v| v.parse().ok())
                                .collect()
                        })
                        .unwrap_or_default(),
                    memory: number("memory", "memory.usage_in_bytes").unwrap_or(0),
                    memory_limit: limit,
                    inactive_file: file("memory", "memory.stat")
                        .and_then(|p| read_key(&p, "total_inactive_file"))
                        .unwrap_or(0),
                    pids: number("pids", "pids.current").unwrap_or(0),
                    pids_limit: number("pids", "pids.max"),
                }
            }
        }
    }
}
