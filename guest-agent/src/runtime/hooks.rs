//! OCI hooks: programs the runtime runs at points of a container's life,
//! each given the container's state as JSON on stdin.
//!
//! Where each phase runs:
//! - `prestart` (older specs) and `createRuntime`: by `create`, in the
//!   runtime's namespaces, while the init waits with its mounts made and
//!   before its `pivot_root`;
//! - `createContainer`: by the init, in the container's namespaces, right
//!   after those, still before `pivot_root`;
//! - `startContainer`: by the init once `start` released it, after
//!   `pivot_root` (the path resolves in the container), before the exec;
//! - `poststart` (after `start`) and `poststop` (on `delete`): in the
//!   runtime's namespaces.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

use super::state::StateReport;
use super::RuntimeError;

/// How long a hook without its own timeout may run: generous, but a hook
/// that hangs must not hang the runtime with it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the spec has hooks of the create and start phases, for which
/// the init stops before `pivot_root`.
pub fn any(spec: &Spec) -> bool {
    let Some(hooks) = spec.hooks() else {
        return false;
    };
    #[allow(deprecated)]
    let phases = [
        hooks.prestart(),
        hooks.create_runtime(),
        hooks.create_container(),
        hooks.start_container(),
    ];
    phases
        .iter()
        .any(|h| h.as_ref().is_some_and(|h| !h.is_empty()))
}

/// Whether hooks run inside the container's namespaces, where the
/// container can see the init before it execs.
pub fn any_inside(spec: &Spec) -> bool {
    spec.hooks().as_ref().is_some_and(|hooks| {
        [hooks.create_container(), hooks.start_container()]
            .iter()
            .any(|h| h.as_ref().is_some_and(|h| !h.is_empty()))
    })
}

/// Runs `hooks` of `phase` in order; the first failure stops them.
pub fn run(phase: &str, hooks: &[Hook], state: &StateReport) -> Result<(), RuntimeError> {
    let input = serde_json::to_vec(state)
        .map_err(|e| RuntimeError::io("encode the state for hooks")(e.into()))?;
    for hook in hooks {
        run_one(phase, hook, &input)?;
    }
    Ok(())
}

/// Runs `hooks`, logging failures instead of returning them, for phases
/// where the lifecycle goes on regardless (poststart, poststop).
pub fn run_warn(phase: &str, hooks: &[Hook], state: &StateReport) {
    if let Err(e) = run(phase, hooks, state) {
        tracing::warn!("{e}");
    }
}

fn run_one(phase: &str, hook: &Hook, input: &[u8]) -> Result<(), RuntimeError> {
    let path = hook.path();
    let fail = |reason: String| RuntimeError::Io {
        action: format!("run the {phase} hook {}", path.display()),
        source: std::io::Error::other(reason),
    };
    let args = hook.args().clone().unwrap_or_default();
    let mut command = Command::new(path);
    if let Some((argv0, rest)) = args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut command, argv0);
        command.args(rest);
    }
    command.env_clear();
    for pair in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = pair.split_once('=') {
            command.env(k, v);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not an error.
        let _ = stdin.write_all(input);
    }
    let timeout = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(fail(format!("it exited with {status}"))),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "it ran longer than its {}s timeout",
                    timeout.as_secs()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
