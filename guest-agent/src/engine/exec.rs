//! `docker exec`: another process in a running container.
//!
//! Each exec runs under a small process of its own, `berth-agent
//! exec-shim`, which is the runtime's `exec` verb with the agent's
//! bookkeeping around it: it must fork from a single-threaded process, and
//! it waits for the process and exits with its status.
//!
//! ```text
//! engine ──spawn──▶ exec-shim ──runtime exec──▶ process (in the container)
//!   ▲ pipes: stdin, stdout, stderr ─────────────────┘  (or a pty master,
//!   │                                                    sent over a socket)
//!   └── exit status; or the runtime's error in `<id>.error` ──┘
//! ```

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{random_id, spec, Container, Engine, EngineError};
use crate::runtime::container_exec::ExecOptions;

/// What `POST /containers/{id}/exec` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecConfig {
    /// Connect the client's stdin.
    pub attach_stdin: bool,
    /// Send the process's stdout.
    pub attach_stdout: bool,
    /// Send the process's stderr.
    pub attach_stderr: bool,
    /// Give the process a terminal.
    pub tty: bool,
    /// More environment, `NAME=VALUE`.
    pub env: Option<Vec<String>>,
    /// The command.
    pub cmd: Option<Vec<String>>,
    /// `user[:group]`; the container's user when empty.
    pub user: String,
    /// The working directory; the container's when empty.
    pub working_dir: String,
    /// Every capability (refused: not supported).
    pub privileged: bool,
    /// Terminal size, `[rows, cols]`.
    pub console_size: Option<[u16; 2]>,
}

/// Where an exec stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecState {
    /// Start was called.
    pub started: bool,
    /// The process runs.
    pub running: bool,
    /// Its exit code, once it has ended.
    pub exit_code: Option<i32>,
    /// Its pid (in the agent's namespace).
    pub pid: i32,
}

/// One exec instance.
pub struct Exec {
    /// Its id.
    pub id: String,
    /// The container it runs in.
    pub container: Arc<Container>,
    /// What was asked for.
    pub config: ExecConfig,
    state: watch::Sender<ExecState>,
    /// Why the process could not be started, if it could not.
    error: Mutex<Option<String>>,
    /// The pty master, while the process has a terminal.
    master: Mutex<Option<Arc<std::fs::File>>>,
}

impl Exec {
    /// A copy of its state.
    pub fn state(&self) -> ExecState {
        *self.state.borrow()
    }

    /// Why the process could not be started, once that is known.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its state from now on.
    pub fn watch(&self) -> watch::Receiver<ExecState> {
        self.state.subscribe()
    }

    /// Kills its process, and what that started, at once (a health check
    /// past its timeout). The pid is the exec shim's, which cannot pass
    /// SIGKILL on: the whole tree below it is killed.
    pub fn kill(&self) {
        let pid = self.state().pid;
        if pid <= 0 {
            return;
        }
        for p in process_tree(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Sets the terminal size, if it has one.
    pub fn resize(&self, rows: u16, cols: u16) {
        if let Some(master) = self
            .master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            super::shim::resize(master.as_ref(), rows, cols);
        }
    }
}

/// The exec instances of an engine.
#[derive(Default)]
pub struct Execs {
    all: Mutex<HashMap<String, Arc<Exec>>>,
}

impl Execs {
    /// Forgets instance `id` (the engine's own, once done with).
    pub(super) fn forget(&self, id: &str) {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Forgets the instances of containers that are gone.
    fn prune(&self, alive: impl Fn(&str) -> bool) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, e| alive(&e.container.id));
    }
}

/// The process's streams, for the API to wire to the client.
pub struct ExecIo {
    /// Where the client's input goes.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// stdout, or the terminal's output.
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// stderr (none with a terminal).
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
}

impl Engine {
    /// Registers an exec in a running container; its id.
    pub fn exec_create(&self, key: &str, config: ExecConfig) -> Result<String, EngineError> {
        let container = self.container(key)?;
        if !container.record().state.status.is_running() {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                container.id
            )));
        }
        if container.record().state.status == super::Status::Paused {
            return Err(EngineError::Conflict(format!(
                "container {} is paused, unpause the container before exec",
                container.id
            )));
        }
        if config.cmd.as_ref().is_none_or(Vec::is_empty) {
            return Err(EngineError::Invalid("No exec command specified".into()));
        }
        if config.privileged {
            // Containers themselves are never privileged here yet.
            return Err(EngineError::Invalid(
                "privileged exec is not supported by this engine".into(),
            ));
        }
        let id = random_id();
        let exec = Arc::new(Exec {
            id: id.clone(),
            container,
            config,
            state: watch::channel(ExecState::default()).0,
            error: Mutex::new(None),
            master: Mutex::new(None),
        });
        let live: std::collections::HashSet<String> =
            self.containers().iter().map(|c| c.id.clone()).collect();
        self.execs.prune(|c| live.contains(c));
        self.execs
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), exec);
        Ok(id)
    }

    /// An exec instance by id.
    pub fn exec(&self, id: &str) -> Result<Arc<Exec>, EngineError> {
        self.execs
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such exec instance: {id}")))
    }

    /// Starts an exec: the process runs, and its streams are handed back.
    pub async fn exec_start(self: &Arc<Self>, id: &str) -> Result<ExecIo, EngineError> {
        let exec = self.exec(id)?;
        let mut first = false;
        exec.state.send_if_modified(|s| {
            first = !s.started;
            s.started = true;
            first
        });
        if !first {
            return Err(EngineError::Conflict(format!(
                "Exec command {id} has already run"
            )));
        }
        let started = self.spawn_exec(&exec).await;
        if started.is_err() {
            exec.state.send_modify(|s| s.exit_code = Some(126));
        }
        started
    }

    async fn spawn_exec(self: &Arc<Self>, exec: &Arc<Exec>) -> Result<ExecIo, EngineError> {
        let container = &exec.container;
        if !container.record().state.status.is_running() {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                container.id
            )));
        }
        let process = self.exec_process(exec)?;
        let dir = container.dir().join("execs");
        std::fs::create_dir_all(&dir).map_err(EngineError::io("create the exec directory"))?;
        let process_file = dir.join(format!("{}.json", exec.id));
        super::write_json(&process_file, &process)?;
        let error_file = dir.join(format!("{}.error", exec.id));
        let console_name = format!("{}.sock", &exec.id[..12]);
        let console_path = dir.join(&console_name);
        let _ = std::fs::remove_file(&console_path);
        let console = if exec.config.tty {
            Some(
                bind_unix(&console_path)
                    .map_err(EngineError::io("bind the exec's console socket"))?,
            )
        } else {
            None
        };

        let mut command = tokio::process::Command::new("/proc/self/exe");
        command
            .arg("exec-shim")
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--id")
            .arg(&container.id)
            .arg("--process")
            .arg(&process_file)
            .arg("--error-file")
            .arg(&error_file);
        // Relative to the shim's directory: a unix socket's path is short.
        command.current_dir(&dir);
        if console.is_some() {
            command.arg("--console-socket").arg(&console_name);
        }
        let piped = |on: bool| {
            if on {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let tty = exec.config.tty;
        command
            .stdin(piped(!tty && exec.config.attach_stdin))
            .stdout(piped(!tty))
            .stderr(piped(!tty));
        let mut child = command
            .spawn()
            .map_err(EngineError::io("start the exec's shim"))?;
        let mut io = ExecIo {
            stdin: child
                .stdin
                .take()
                .map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>),
            stdout: child
                .stdout
                .take()
                .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>),
            stderr: child
                .stderr
                .take()
                .map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>),
        };
        if let Some(console) = console {
            // The pty master arrives once the runtime has made the
            // terminal; if the shim fails first, the wait ends the accept.
            let master = tokio::select! {
                m = tokio::task::spawn_blocking(move || receive_fd(&console)) => m
                    .map_err(|e| EngineError::Internal(e.to_string()))?,
                status = child.wait() => {
                    let _ = std::fs::remove_file(&console_path);
                    let _ = status;
                    let message = std::fs::read_to_string(&error_file)
                        .unwrap_or_else(|_| "the exec's shim ended early".into());
                    return Err(EngineError::Internal(message));
                }
            };
            let _ = std::fs::remove_file(&console_path);
            let master = master.map_err(EngineError::io("receive the exec's terminal"))?;
            if let Some([rows, cols]) = exec.config.console_size {
                super::shim::resize(&master, rows, cols);
            }
            let reader = master
                .try_clone()
                .map_err(EngineError::io("duplicate the pty master"))?;
            let writer = master
                .try_clone()
                .map_err(EngineError::io("duplicate the pty master"))?;
            *exec.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(master));
            io.stdout = Some(Box::pin(tokio::fs::File::from_std(reader)));
            if exec.config.attach_stdin {
                io.stdin = Some(Box::pin(tokio::fs::File::from_std(writer)));
            }
        }
        exec.state.send_modify(|s| {
            s.running = true;
            s.pid = child.id().map_or(0, |p| p as i32);
        });
        let record = container.record();
        self.emit_container("exec_start", &record, &[("execID", exec.id.clone())]);
        let engine = self.clone();
        let exec = exec.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let error = std::fs::read_to_string(&error_file).ok();
            let code = match (&error, status) {
                (Some(message), _) => exec_failure_code(message),
                (None, Ok(s)) => s
                    .code()
                    .or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|n| 128 + n))
                    .unwrap_or(255),
                (None, Err(_)) => 255,
            };
            *exec.master.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Some(message) = error {
                *exec.error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("OCI runtime exec failed: {}", message.trim()));
            }
            let _ = std::fs::remove_file(&process_file);
            let _ = std::fs::remove_file(&error_file);
            exec.state.send_modify(|s| {
                s.running = false;
                s.exit_code = Some(code);
            });
            engine.emit_container(
                "exec_die",
                &exec.container.record(),
                &[("execID", exec.id.clone()), ("exitCode", code.to_string())],
            );
        });
        Ok(io)
    }

    /// The OCI process for an exec: the container's, with the exec's
    /// command, environment, user and directory.
    fn exec_process(&self, exec: &Exec) -> Result<Process, EngineError> {
        let container = &exec.container;
        let config_path = container.dir().join("bundle/config.json");
        let text = std::fs::read(&config_path)
            .map_err(EngineError::io(format!("read {}", config_path.display())))?;
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&text)
            .map_err(|e| EngineError::Internal(format!("the container's spec: {e}")))?;
        let mut process = spec.process().clone().unwrap_or_default();
        let config = &exec.config;
        process.set_args(config.cmd.clone());
        process.set_terminal(Some(config.tty));
        process.set_console_size(None);
        let mut env = process.env().clone().unwrap_or_default();
        for var in config.env.iter().flatten() {
            let key = var.split('=').next().unwrap_or(var);
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(var.clone());
        }
        process.set_env(Some(env));
        if !config.working_dir.is_empty() {
            process.set_cwd(PathBuf::from(&config.working_dir));
        }
        if !config.user.is_empty() {
            let rootfs = container.dir().join("bundle/rootfs");
            let group_add = container.record().host_config.group_add.unwrap_or_default();
            let (uid, gid, additional) = spec::resolve_user(&rootfs, &config.user, &group_add)?;
            let user = process.user_mut();
            user.set_uid(uid);
            user.set_gid(gid);
            user.set_additional_gids((!additional.is_empty()).then_some(additional));
        }
        Ok(process)
    }
}

/// The exit code of an exec whose process could not be started.
fn exec_failure_code(message: &str) -> i32 {
    match super::start_failure_code(message) {
        128 => 126,
        code => code,
    }
}

/// Binds a unix socket at `path`, however long (through the directory's
/// descriptor when the path would not fit in an address).
fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if path.as_os_str().len() < 100 {
        return std::os::unix::net::UnixListener::bind(path);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = std::fs::File::open(parent)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .join(path.file_name().unwrap_or_default());
    std::os::unix::net::UnixListener::bind(short)
}

/// Takes the descriptor the runtime sends over the console socket.
fn receive_fd(console: &std::os::unix::net::UnixListener) -> std::io::Result<std::fs::File> {
    let (stream, _) = console.accept()?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our
                // table for us; nothing else owns it.
                return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other(
        "no descriptor came over the console socket",
    ))
}

/// What the engine starts an exec's shim with.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecShimArgs {
    /// The runtime's state root.
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// The container id.
    #[arg(long)]
    pub id: String,
    /// The OCI process, as JSON.
    #[arg(long)]
    pub process: PathBuf,
    /// Where a failure to start the process is written.
    #[arg(long)]
    pub error_file: PathBuf,
    /// Where to send the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
}

/// `pid` and every process below it (as `/proc/PID/task/*/children` tell),
/// all gathered before any is signalled.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut next = 0;
    while let Some(&p) = all.get(next) {
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    all
}

/// Runs the exec and exits with its status; a runtime failure goes to
/// the error file and exits 255.
pub fn shim_main(args: ExecShimArgs) -> i32 {
    let fail = |message: String| {
        let _ = std::fs::write(&args.error_file, message);
        255
    };
    if let Err(e) = crate::runtime::sealed::ensure() {
        return fail(e.to_string());
    }
    let process = match read_process(&args.process) {
        Ok(p) => p,
        Err(message) => return fail(message),
    };
    match crate::runtime::container_exec::exec(&ExecOptions {
        root: args.runtime_root.clone(),
        id: args.id.clone(),
        process,
        console_socket: args.console_socket.clone(),
        pid_file: None,
        detach: false,
        preserve_fds: 0,
    }) {
        Ok(code) => code,
        Err(e) => fail(e.to_string()),
    }
}

fn read_process(path: &Path) -> Result<Process, String> {
    let text = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}
