//! A container's durable state: `<root>/<id>/state.json`, written
//! atomically, and its status derived from the live process.
//!
//! The status is never trusted from the file alone: a container is
//! `created` while its init waits on `exec.fifo`, `running` once it has
//! exec'd, and `stopped` when its init is gone — checked by pid *and* the
//! process start time, so a recycled pid never passes for the container.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// The file in the container directory that `start` opens to release init.
pub const EXEC_FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";

/// A container's status, as the OCI runtime spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being set up by `create` (seen only by hooks).
    Creating,
    /// Set up, waiting for `start`.
    Created,
    /// The user's process runs.
    Running,
    /// The init process has exited.
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What is saved for a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The container's id.
    pub id: String,
    /// The init process, in the runtime's pid namespace.
    pub pid: i32,
    /// The init's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), to tell it from a later process with the same pid.
    pub pid_start_time: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The rootfs.
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The container's cgroup, relative to the hierarchy roots.
    pub cgroup_path: PathBuf,
}

/// The `state` output, the same JSON as runc's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// The OCI runtime spec version.
    pub oci_version: String,
    /// The container's id.
    pub id: String,
    /// The init's pid, 0 once stopped.
    pub pid: i32,
    /// Its status.
    pub status: Status,
    /// The bundle.
    pub bundle: PathBuf,
    /// The rootfs.
    pub rootfs: PathBuf,
    /// When it was created.
    pub created: String,
    /// Who created it (empty: the runtime's user).
    pub owner: String,
    /// The spec's annotations.
    pub annotations: HashMap<String, String>,
}

/// A container's directory under the runtime root.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    /// `<root>/<id>`.
    pub path: PathBuf,
    /// The container id.
    pub id: String,
}

impl ContainerDir {
    /// The directory of container `id` under `root`.
    pub fn new(root: &Path, id: &str) -> Self {
        ContainerDir {
            path: root.join(id),
            id: id.to_owned(),
        }
    }

    /// The exec FIFO's path.
    pub fn fifo(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }

    /// Loads the saved state; `NotFound` if there is no such container.
    pub fn load(&self) -> Result<Saved, RuntimeError> {
        let path = self.path.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(self.id.clone()))
            }
            Err(e) => return Err(RuntimeError::io(format!("read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Io {
            action: format!("read {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Saves `state` atomically. Not synced to disk: the state describes
    /// live processes, which a power failure ends anyway (runc keeps it on
    /// a tmpfs).
    pub fn save(&self, state: &Saved) -> Result<(), RuntimeError> {
        let path = self.path.join(STATE_FILE);
        let tmp = self.path.join(".state.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            serde_json::to_writer(&mut f, state)?;
            f.flush()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(RuntimeError::io(format!("write {}", path.display())))
    }

    /// The container's status now.
    pub fn status(&self, saved: &Saved) -> Status {
        if !alive(saved.pid, saved.pid_start_time) {
            Status::Stopped
        } else if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The runc-compatible report of the container's state.
    pub fn report(&self, saved: &Saved) -> StateReport {
        let status = self.status(saved);
        StateReport {
            oci_version: oci_spec::runtime::Spec::default().version().clone(),
            id: saved.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                saved.pid
            },
            status,
            bundle: saved.bundle.clone(),
            rootfs: saved.rootfs.clone(),
            created: saved.created.clone(),
            owner: String::new(),
            annotations: saved.annotations.clone(),
        }
    }
}

/// Writes `pid` to `path` (`--pid-file`) atomically: a reader never sees
/// it empty or half-written.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(RuntimeError::io(format!("write {}", path.display())))
}

/// The start time (clock ticks since boot) and state letter of `pid`.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is the 20th after the name and state.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// Whether `pid` is the live (not zombie) process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_stat(pid).is_some_and(|(s, state)| s == start && state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let (start, state) = proc_stat(pid).unwrap();
        assert_ne!(state, 'Z');
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
        assert!(!alive(0, start));
    }
}
