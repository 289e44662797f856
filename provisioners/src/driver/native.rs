//! The `native` driver: the container host is this Linux machine.
//!
//! The agent runs as a detached daemon (its own session, no terminal) with
//! its storage root, socket and log in the machine's directory:
//!
//! ```text
//! <machine dir>/agent/        storage root (agent.lock, agent.pid, state)
//! <machine dir>/agent.sock    gRPC for berth
//! <machine dir>/docker.sock   Docker Engine API for docker
//! <machine dir>/agent.log     the agent's log (the previous run's in agent.log.1)
//! ```
//!
//! Whether an agent runs is read from its root lock, which the agent holds
//! while it lives: no pid file can go stale and mislead us. The pid is used
//! only to signal, and only after checking that it belongs to an agent
//! serving this root.

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::link::Address;
use serde::{Deserialize, Serialize};

use super::{
    DockerEndpoint, Driver, DriverError, Endpoint, EngineOptions, MachineContext, MachineState,
};

/// The driver's name.
pub const NAME: &str = "native";

/// The environment variable naming the agent program to run, overriding
/// the search next to `berth` and on `PATH`.
pub const AGENT_ENV: &str = "BERTH_AGENT";

/// How long a starting agent may take to answer. It binds its socket in
/// milliseconds; the rest is headroom for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `stop` waits for the agent to stop its containers (each has
/// 10 s unless it says otherwise) and itself, and then again after SIGTERM
/// before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to wait for the kernel to reap an agent after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long removing a machine's containers and networks may take (each
/// container is given 30 s to die of SIGKILL).
const PURGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the native driver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NativeConfig {
    /// How the engine is set up.
    #[serde(default)]
    pub engine: EngineOptions,
}

/// Drives an agent on this machine.
#[derive(Debug)]
pub struct NativeDriver {
    config: NativeConfig,
    context: MachineContext,
}

impl NativeDriver {
    /// The driver for the machine in `context`.
    pub fn new(config: NativeConfig, context: MachineContext) -> Self {
        NativeDriver { config, context }
    }

    fn root(&self) -> PathBuf {
        self.context.dir.join("agent")
    }

    fn agent_socket(&self) -> PathBuf {
        self.context.dir.join("agent.sock")
    }

    fn docker_socket(&self) -> PathBuf {
        self.context.dir.join("docker.sock")
    }

    fn log(&self) -> PathBuf {
        self.context.dir.join("agent.log")
    }
}

#[async_trait::async_trait]
impl Driver for NativeDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_create_check(&self) -> Result<(), DriverError> {
        platform::supported()?;
        super::check_socket_paths(&[self.agent_socket(), self.docker_socket()])?;
        find_agent().map(|_| ())
    }

    async fn create(&self) -> Result<(), DriverError> {
        self.start().await
    }

    async fn start(&self) -> Result<(), DriverError> {
        let agent = find_agent()?;
        let address = Address::Unix(self.agent_socket());
        let (mut args, env) = self.config.engine.serve_args();
        args.push("--docker-socket".into());
        args.push(self.docker_socket().display().to_string());
        let mut child =
            platform::spawn_agent(&agent, &self.root(), &address, &self.log(), &args, &env)?;
        platform::wait_ready(&mut child, &address, &self.log(), READY_TIMEOUT).await
    }

    async fn stop(&self) -> Result<(), DriverError> {
        platform::stop(
            &self.root(),
            &self.agent_socket(),
            STOP_TIMEOUT,
            KILL_TIMEOUT,
        )
        .await
    }

    async fn kill(&self) -> Result<(), DriverError> {
        platform::kill(&self.root(), KILL_TIMEOUT).await
    }

    async fn remove(&self) -> Result<(), DriverError> {
        let root = self.root();
        if platform::running(&root)? {
            platform::kill(&root, KILL_TIMEOUT).await?;
        }
        if !root.exists() {
            return Ok(());
        }
        // Containers outlive their agent (it reconnects to them when it
        // starts again); their processes, mounts, bridges and NAT rules
        // are this host's, and go with the machine.
        platform::purge(&find_agent()?, &root, PURGE_TIMEOUT).await
    }

    async fn state(&self) -> Result<MachineState, DriverError> {
        Ok(if platform::running(&self.root())? {
            MachineState::Running
        } else {
            MachineState::Stopped
        })
    }

    async fn ip(&self) -> Result<String, DriverError> {
        // The host is this machine; what it publishes, it publishes here.
        Ok("127.0.0.1".to_owned())
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            agent: Address::Unix(self.agent_socket()),
            docker: DockerEndpoint {
                url: format!("unix://{}", self.docker_socket().display()),
                tls: false,
            },
            ssh: None,
        }
    }
}

/// Finds the agent program: `$BERTH_AGENT`, then next to the running
/// program, then on `PATH`.
pub(crate) fn find_agent() -> Result<PathBuf, DriverError> {
    if let Some(path) = std::env::var_os(AGENT_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(DriverError::AgentNotFound(format!(
                "{AGENT_ENV}={} is not a file",
                path.display()
            )))
        };
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("berth-agent")))
        .filter(|p| p.is_file());
    if let Some(path) = sibling {
        return Ok(path);
    }
    super::find_on_path("berth-agent").ok_or_else(|| {
        DriverError::AgentNotFound(format!(
            "it is neither next to berth nor on PATH; install it or set {AGENT_ENV}"
        ))
    })
}

#[cfg(target_os = "linux")]
mod platform {
    //! Process control on Linux: spawning the daemon, reading its lock,
    //! signalling it.

    use std::fs::{self, File, OpenOptions};
    use std::path::Path;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use berth_proto::layout;
    use berth_proto::link::{self, Address};
    use berth_proto::pb::agent_client::AgentClient;
    use berth_proto::pb::PingRequest;
    use nix::sys::signal::{kill as send_signal, Signal};
    use nix::unistd::Pid;
    use tokio::process::{Child, Command};

    use super::DriverError;

    /// How often to look again while waiting for an agent to come or go.
    const POLL_INTERVAL: Duration = Duration::from_millis(20);

    /// How many lines of the agent's log an error quotes.
    const LOG_TAIL_LINES: usize = 5;

    /// How long a running agent may take to write its pid file.
    const PID_WAIT: Duration = Duration::from_secs(1);

    /// How long the agent may take to answer `Shutdown` (it answers before
    /// it stops anything).
    const ASK_TIMEOUT: Duration = Duration::from_secs(3);

    /// The last `lines` lines of a log file, joined with " | ".
    pub(super) fn log_tail(log: &Path, lines: usize) -> String {
        match std::fs::read_to_string(log) {
            Ok(text) => {
                let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let start = tail.len().saturating_sub(lines);
                let tail = tail[start..].join(" | ");
                if tail.is_empty() {
                    "(its log is empty)".to_owned()
                } else {
                    tail
                }
            }
            Err(e) => format!("(cannot read {}: {e})", log.display()),
        }
    }

    pub(super) fn supported() -> Result<(), DriverError> {
        Ok(())
    }

    /// Whether an agent holds the root's lock. The probe holds the lock for
    /// an instant at most; the agent's own lock retry absorbs that.
    pub(super) fn running(root: &Path) -> Result<bool, DriverError> {
        let path = root.join(layout::LOCK_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(DriverError::io(format!("open {}", path.display()), e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(fs::TryLockError::WouldBlock) => Ok(true),
            Err(fs::TryLockError::Error(e)) => Err(DriverError::io(
                format!("probe the lock {}", path.display()),
                e,
            )),
        }
    }

    /// Starts the agent detached: a new session, stdin from /dev/null,
    /// stdout and stderr to `log` (the previous log kept as `log.1`).
    pub(super) fn spawn_agent(
        agent: &Path,
        root: &Path,
        address: &Address,
        log: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Child, DriverError> {
        if log.exists() {
            let previous = log.with_extension("log.1");
            fs::rename(log, &previous)
                .map_err(|e| DriverError::io(format!("rotate {}", log.display()), e))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| DriverError::io(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| DriverError::io(format!("open {}", log.display()), e))?;
        let mut command = Command::new(agent);
        command
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(address.to_string())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls setsid(2), which is async-signal-safe and touches no
        // memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        command
            .spawn()
            .map_err(|e| DriverError::io(format!("run {}", agent.display()), e))
    }

    /// Waits until the agent answers a Ping, or fails with its log's tail
    /// once it has exited or the deadline has passed. A detached agent that
    /// outlives us is adopted by init.
    pub(super) async fn wait_ready(
        child: &mut Child,
        address: &Address,
        log: &Path,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        let channel = link::connect(address).map_err(|e| DriverError::PreCreate(e.to_string()))?;
        let mut client = AgentClient::new(channel);
        loop {
            if client.ping(PingRequest {}).await.is_ok() {
                return Ok(());
            }
            let exited = child
                .try_wait()
                .map_err(|e| DriverError::io("wait for berth-agent", e))?;
            if let Some(status) = exited {
                return Err(DriverError::AgentExited {
                    status: status.to_string(),
                    log_tail: log_tail(log, LOG_TAIL_LINES),
                });
            }
            if Instant::now() >= deadline {
                return Err(DriverError::AgentTimeout {
                    seconds: timeout.as_secs(),
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The pid of the agent serving `root`, or `None` if none runs. The pid
    /// file is trusted only while the lock is held and only if that process
    /// is an agent serving this root, so a recycled pid is never signalled.
    async fn agent_pid(root: &Path) -> Result<Option<Pid>, DriverError> {
        // An agent writes its pid file right after taking its lock.
        let deadline = Instant::now() + PID_WAIT;
        loop {
            if !running(root)? {
                return Ok(None);
            }
            if let Some(pid) = verified_pid(root) {
                return Ok(Some(pid));
            }
            if Instant::now() >= deadline {
                return Err(DriverError::AgentProcessUnknown {
                    root: root.display().to_string(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The pid in the root's pid file, if that process serves this root.
    fn verified_pid(root: &Path) -> Option<Pid> {
        let pid: i32 = fs::read_to_string(root.join(layout::PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let root_arg = root.as_os_str().as_encoded_bytes();
        args.windows(2)
            .any(|w| w[0] == b"--root" && w[1] == root_arg)
            .then(|| Pid::from_raw(pid))
    }

    async fn wait_gone(root: &Path, timeout: Duration) -> Result<bool, DriverError> {
        let deadline = Instant::now() + timeout;
        while running(root)? {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(true)
    }

    fn signal(pid: Pid, signal: Signal) -> Result<(), DriverError> {
        match send_signal(pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(DriverError::io(
                format!("send {signal} to berth-agent (pid {pid})"),
                e.into(),
            )),
        }
    }

    /// Sends `sig` and waits up to `wait` for the agent to release its root.
    async fn signal_and_wait(
        root: &Path,
        pid: Pid,
        sig: Signal,
        wait: Duration,
    ) -> Result<bool, DriverError> {
        signal(pid, sig)?;
        wait_gone(root, wait).await
    }

    /// SIGKILLs the agent and waits for the kernel to reap it.
    async fn kill_pid(root: &Path, pid: Pid, wait: Duration) -> Result<(), DriverError> {
        if signal_and_wait(root, pid, Signal::SIGKILL, wait).await? {
            Ok(())
        } else {
            Err(DriverError::StopTimeout {
                pid: pid.as_raw().unsigned_abs(),
                signal: "SIGKILL",
                seconds: wait.as_secs(),
            })
        }
    }

    /// Stops the agent as a machine stops: asked over `socket`, it stops
    /// its containers and then itself. One that cannot be asked, or does
    /// not go within `grace`, gets SIGTERM (it goes, its containers run on)
    /// and then SIGKILL.
    pub(super) async fn stop(
        root: &Path,
        socket: &Path,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<(), DriverError> {
        let Some(pid) = agent_pid(root).await? else {
            return Ok(());
        };
        if crate::driver::ask_shutdown(socket, ASK_TIMEOUT).await && wait_gone(root, grace).await? {
            return Ok(());
        }
        tracing::warn!(%pid, "berth-agent did not stop when asked; sending SIGTERM");
        if signal_and_wait(root, pid, Signal::SIGTERM, grace).await? {
            return Ok(());
        }
        tracing::warn!(%pid, "berth-agent ignored SIGTERM; killing it");
        kill_pid(root, pid, kill_wait).await
    }

    pub(super) async fn kill(root: &Path, wait: Duration) -> Result<(), DriverError> {
        match agent_pid(root).await? {
            Some(pid) => kill_pid(root, pid, wait).await,
            None => Ok(()),
        }
    }

    /// Runs `berth-agent purge` on the stopped agent's root.
    pub(super) async fn purge(
        agent: &Path,
        root: &Path,
        wait: Duration,
    ) -> Result<(), DriverError> {
        let run = Command::new(agent)
            .arg("purge")
            .arg("--root")
            .arg(root)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(wait, run)
            .await
            .map_err(|_| {
                DriverError::Cleanup(format!(
                    "berth-agent purge of {} did not finish within {}s",
                    root.display(),
                    wait.as_secs()
                ))
            })?
            .map_err(|e| DriverError::io(format!("run {} purge", agent.display()), e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(DriverError::Cleanup(format!(
            "berth-agent purge of {} failed ({}): {}",
            root.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    //! The native driver needs Linux; elsewhere every operation says so.

    use std::path::Path;
    use std::time::Duration;

    use berth_proto::link::Address;

    use super::{DriverError, NAME};

    /// Never built: spawning fails first on this platform.
    pub(super) enum Child {}

    fn unsupported() -> DriverError {
        DriverError::Unsupported {
            driver: NAME,
            platform: std::env::consts::OS,
        }
    }

    pub(super) fn supported() -> Result<(), DriverError> {
        Err(unsupported())
    }

    pub(super) fn running(_: &Path) -> Result<bool, DriverError> {
        Ok(false)
    }

    pub(super) fn spawn_agent(
        _: &Path,
        _: &Path,
        _: &Address,
        _: &Path,
        _: &[String],
        _: &[(String, String)],
    ) -> Result<Child, DriverError> {
        Err(unsupported())
    }

    pub(super) async fn wait_ready(
        _: &mut Child,
        _: &Address,
        _: &Path,
        _: Duration,
    ) -> Result<(), DriverError> {
        supported()
    }

    pub(super) async fn stop(
        _: &Path,
        _: &Path,
        _: Duration,
        _: Duration,
    ) -> Result<(), DriverError> {
        supported()
    }

    pub(super) async fn kill(_: &Path, _: Duration) -> Result<(), DriverError> {
        supported()
    }

    pub(super) async fn purge(_: &Path, _: &Path, _: Duration) -> Result<(), DriverError> {
        supported()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_in_the_machine_dir() {
        let driver = NativeDriver::new(
            NativeConfig::default(),
            MachineContext {
                name: "dev".into(),
                dir: "/m/dev".into(),
            },
        );
        let endpoint = driver.endpoint();
        assert_eq!(endpoint.agent, Address::Unix("/m/dev/agent.sock".into()));
        assert_eq!(endpoint.docker.url, "unix:///m/dev/docker.sock");
        assert!(!endpoint.docker.tls);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn log_tail_keeps_the_last_lines() {
        use super::platform::log_tail;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, "one\n\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(&log, 2), "two | three");
        assert!(log_tail(&dir.path().join("none"), 2).contains("cannot read"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_root_without_an_agent_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let driver = NativeDriver::new(
            NativeConfig::default(),
            MachineContext {
                name: "dev".into(),
                dir: dir.path().to_owned(),
            },
        );
        assert_eq!(driver.state().await.unwrap(), MachineState::Stopped);
        // Stopping or killing what does not run is not an error.
        driver.stop().await.unwrap();
        driver.kill().await.unwrap();
    }
}
