//! `exec`: runs another process in a live container — its namespaces, its
//! cgroup, its seccomp profile — as runc's `exec` does.
//!
//! ```text
//! berth-agent runtime exec ──fork──▶ intermediate: setns ──fork──▶ process: cwd, rlimits,
//!   (from a sealed copy)               │ "hello" ◀▶ "go"            │ user, caps, seccomp
//!                                      │ (joined to the cgroup)     ▼ execve
//!      waits (subreaper) ◀── "pid:N" ──┘ exits       the sync socket closes on exec
//! ```
//!
//! The container's processes can see the exec'd process while it is still
//! the agent, so the verb always runs from a sealed copy of the binary
//! (see [`super::sealed`]), and the process is not dumpable until it execs.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{Process, Spec};

use super::cgroups::Cgroup;
use super::container_create::console_for;
use super::container_init::{self, Prepared};
use super::container_run::{forwarded_signals, wait};
use super::spec::Bundle;
use super::state::{write_pid_file, ContainerDir, Status};
use super::{console, sync, RuntimeError};

/// What `exec` is asked to do.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The runtime's state root.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// The process to run, complete.
    pub process: Process,
    /// Where to send the pty master when the process wants a terminal.
    pub console_socket: Option<PathBuf>,
    /// Where to write the process's pid.
    pub pid_file: Option<PathBuf>,
    /// Return once the process runs instead of waiting for it.
    pub detach: bool,
    /// How many descriptors above 2 to pass to the process.
    pub preserve_fds: i32,
}

/// The namespaces, in the order to join them, where the container's
/// differ from ours: the user namespace first, as the others belong to it.
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Opens the container's namespaces that are not ours.
fn container_namespaces(pid: i32) -> Result<Vec<(OwnedFd, CloneFlags)>, RuntimeError> {
    let mut open = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let (Ok(t), Ok(o)) = (
            fs::metadata(&theirs),
            fs::metadata(format!("/proc/self/ns/{name}")),
        ) else {
            continue;
        };
        if (t.dev(), t.ino()) == (o.dev(), o.ino()) {
            continue;
        }
        let file = fs::File::open(&theirs).map_err(RuntimeError::io(format!("open {theirs}")))?;
        open.push((OwnedFd::from(file), flag));
    }
    Ok(open)
}

/// Runs `process` in container `opts.id`; returns its exit code (128+N
/// when killed by signal N), or 0 once it runs when detached.
pub fn exec(opts: &ExecOptions) -> Result<i32, RuntimeError> {
    let dir = ContainerDir::new(&opts.root, &opts.id);
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status == Status::Stopped {
        return Err(RuntimeError::WrongState {
            action: "exec in",
            id: opts.id.clone(),
            status,
        });
    }
    let bundle = Bundle::load(&saved.bundle)?;
    if opts.process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::Spec {
            bundle: bundle.dir.clone(),
            reason: "exec needs a command (process.args is empty)".into(),
        });
    }
    let terminal = opts.process.terminal().unwrap_or(false);
    let console = console_for(&bundle.dir, terminal, opts.console_socket.as_deref())?;
    let cgroup = Cgroup::new(&saved.cgroup_path)?;
    let namespaces = container_namespaces(saved.pid)?;

    let signals = forwarded_signals();
    if !opts.detach {
        // The process becomes our child when the intermediate exits.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(RuntimeError::sys("become a subreaper"))?;
        // Blocked before the fork, so none is lost; the process unblocks
        // all signals before it execs.
        signals
            .thread_block()
            .map_err(RuntimeError::sys("block signals"))?;
    }
    let (mut channel, child_end) = sync::pair()?;
    // SAFETY: the runtime path is single-threaded, so the child may run
    // arbitrary code before it execs.
    let intermediate_pid = match unsafe { fork() }.map_err(RuntimeError::sys("fork"))? {
        ForkResult::Child => intermediate(Intermediate {
            spec: &bundle.spec,
            process: &opts.process,
            namespaces,
            sync: child_end.as_raw_fd(),
            console: console.as_ref().map(AsRawFd::as_raw_fd),
            preserve_fds: opts.preserve_fds,
        }),
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    drop(console);

    let mut pid: Option<Pid> = None;
    let mut error: Option<String> = None;
    // Ends when the process has exec'd (its end closes on exec) or failed.
    while let Some(line) = channel.recv() {
        if line == "hello" {
            channel.answer_hello(cgroup.add(intermediate_pid.as_raw()), &mut error);
        } else if let Some(n) = line.strip_prefix("pid:") {
            pid = n.parse().ok().map(Pid::from_raw);
        } else if let Some(reason) = line.strip_prefix("error:") {
            error.get_or_insert(reason.to_owned());
        }
    }
    let _ = waitpid(intermediate_pid, None);
    let unblock = || {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None);
    };
    let fail = |reason: String| {
        if let Some(pid) = pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        unblock();
        RuntimeError::Init {
            id: opts.id.clone(),
            reason,
        }
    };
    if let Some(reason) = error {
        return Err(fail(reason));
    }
    let pid = pid.ok_or_else(|| fail("the process's pid was never reported".into()))?;
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, pid.as_raw())?;
    }
    if opts.detach {
        return Ok(0);
    }
    let code = wait(pid, &signals);
    unblock();
    code
}

/// What the intermediate child is handed.
struct Intermediate<'a> {
    spec: &'a Spec,
    process: &'a Process,
    namespaces: Vec<(OwnedFd, CloneFlags)>,
    sync: RawFd,
    console: Option<RawFd>,
    preserve_fds: i32,
}

/// Joins the container's cgroup (through the runtime) and namespaces,
/// then forks the process into its PID namespace.
fn intermediate(ctx: Intermediate<'_>) -> ! {
    let sync_fd = ctx.sync;
    let result = (|| -> Result<Pid, RuntimeError> {
        container_init::before_entering(ctx.process.oom_score_adj())?;
        sync::send(ctx.sync, "hello");
        sync::expect(ctx.sync, "go")?;
        for (fd, flag) in ctx.namespaces {
            nix::sched::setns(fd, flag).map_err(RuntimeError::sys(format!(
                "join the container's {flag:?} namespace"
            )))?;
        }
        // SAFETY: single-threaded, as above.
        match unsafe { fork() }.map_err(RuntimeError::sys("fork the process"))? {
            ForkResult::Child => process(
                ctx.spec,
                ctx.process,
                ctx.sync,
                ctx.console,
                ctx.preserve_fds,
            ),
            ForkResult::Parent { child } => Ok(child),
        }
    })();
    let code = match result {
        Ok(pid) => {
            sync::send(sync_fd, &format!("pid:{pid}"));
            0
        }
        Err(e) => {
            sync::send(sync_fd, &format!("error:{e}"));
            1
        }
    };
    // SAFETY: ends the forked intermediate without running the parent's
    // exit handlers.
    unsafe { nix::libc::_exit(code) }
}

/// The process in the container: sets itself up and execs.
fn process(
    spec: &Spec,
    process: &Process,
    sync_fd: RawFd,
    console_fd: Option<RawFd>,
    preserve_fds: i32,
) -> ! {
    let result = (|| -> Result<std::convert::Infallible, RuntimeError> {
        if let Some(socket) = console_fd {
            let size = process
                .console_size()
                .as_ref()
                .map(|b| (b.height() as u16, b.width() as u16));
            console::setup(socket, size)?;
        }
        Prepared::new(process, spec)?.exec(process, preserve_fds)
    })();
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    sync::send(sync_fd, &format!("error:{err}"));
    // SAFETY: ends this forked child without running the parent's exit
    // handlers.
    unsafe { nix::libc::_exit(127) }
}
