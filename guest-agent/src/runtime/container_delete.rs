//! `delete`: removes a stopped container's state (`--force` kills it first).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroups::Cgroup;
use super::hooks;
use super::spec::Bundle;
use super::state::{alive, ContainerDir, Status};
use super::RuntimeError;

/// How long `delete --force` waits for a SIGKILLed init to die.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Deletes container `id`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), RuntimeError> {
    let dir = ContainerDir::new(root, id);
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status != Status::Stopped {
        if !force {
            return Err(RuntimeError::WrongState {
                action: "delete",
                id: id.to_owned(),
                status,
            });
        }
        let _ = kill(Pid::from_raw(saved.pid), Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while alive(saved.pid, saved.pid_start_time) {
            if Instant::now() >= deadline {
                return Err(RuntimeError::Init {
                    id: id.to_owned(),
                    reason: "its init survived SIGKILL".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    match Bundle::load(&saved.bundle) {
        Ok(bundle) => {
            if let Some(hooks) = bundle.spec.hooks() {
                let poststop = hooks.poststop().clone().unwrap_or_default();
                hooks::run_warn("poststop", &poststop, &dir.report(&saved));
            }
        }
        Err(e) => tracing::warn!("poststop hooks not run: {e}"),
    }
    // Whatever the init left running in its cgroup goes with it.
    let cgroup = Cgroup::new(&saved.cgroup_path)?;
    for pid in cgroup.pids() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    cgroup.remove()?;
    std::fs::remove_dir_all(&dir.path)
        .map_err(RuntimeError::io(format!("remove {}", dir.path.display())))
}
