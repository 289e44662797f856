//! `create`: sets a container up and leaves its init waiting for `start`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::LinuxNamespaceType;

use super::cgroups::{self, Cgroup, Limits};
use super::container_init::{self, send, InitContext};
use super::hooks;
use super::spec::{validate_id, Bundle};
use super::state::{proc_stat, ContainerDir, Saved};
use super::RuntimeError;

/// What `create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The runtime's state root.
    pub root: PathBuf,
    /// Where to write the init's pid, if anywhere.
    pub pid_file: Option<PathBuf>,
    /// How many descriptors above 2 to pass to the container.
    pub preserve_fds: i32,
    /// Where to send the pty master when the process wants a terminal.
    pub console_socket: Option<PathBuf>,
}

/// The namespace flags to unshare and the paths to join, from the spec.
fn namespaces(bundle: &Bundle) -> (CloneFlags, Vec<(PathBuf, CloneFlags)>) {
    let mut new = CloneFlags::empty();
    let mut join = Vec::new();
    let list = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let flag = match ns.typ() {
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Time => continue,
        };
        match ns.path() {
            Some(path) => join.push((path.clone(), flag)),
            None => new |= flag,
        }
    }
    // The rootfs is always set up in a mount namespace of the container's
    // own. A new cgroup namespace is made by the init itself, once it is in
    // its cgroup, so that the cgroup is the namespace's root.
    (
        (new | CloneFlags::CLONE_NEWNS) - CloneFlags::CLONE_NEWCGROUP,
        join,
    )
}

/// The intermediate child: enters the namespaces, forks the init (PID 1
/// of a new PID namespace), reports its pid and exits.
fn intermediate(
    bundle: &Bundle,
    fifo: &OwnedFd,
    sync: &OwnedFd,
    console: Option<&std::os::unix::net::UnixStream>,
    preserve_fds: i32,
) -> ! {
    let result = (|| -> Result<Pid, RuntimeError> {
        let (new, join) = namespaces(bundle);
        for (path, flag) in join {
            let fd = fs::File::open(&path).map_err(RuntimeError::io(format!(
                "open namespace {}",
                path.display()
            )))?;
            nix::sched::setns(fd, flag).map_err(RuntimeError::sys(format!(
                "join namespace {}",
                path.display()
            )))?;
        }
        nix::sched::unshare(new).map_err(RuntimeError::sys("create namespaces"))?;
        // SAFETY: this process has a single thread (the runtime never starts
        // others on this path), so the child may run arbitrary code.
        match unsafe { fork() }.map_err(RuntimeError::sys("fork the container init"))? {
            ForkResult::Child => container_init::run(InitContext {
                bundle,
                fifo: fifo.as_raw_fd(),
                sync: sync.as_raw_fd(),
                console: console.map(AsRawFd::as_raw_fd),
                preserve_fds,
            }),
            ForkResult::Parent { child } => Ok(child),
        }
    })();
    let code = match result {
        Ok(pid) => {
            send(sync.as_raw_fd(), &format!("pid:{pid}"));
            0
        }
        Err(e) => {
            send(sync.as_raw_fd(), &format!("error:{e}"));
            1
        }
    };
    // SAFETY: ends the forked intermediate without running the parent's
    // exit handlers.
    unsafe { nix::libc::_exit(code) }
}

/// Creates the container; on success its init waits on the exec FIFO.
pub fn create(opts: &CreateOptions) -> Result<Saved, RuntimeError> {
    validate_id(&opts.id)?;
    let bundle = Bundle::load(&opts.bundle)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.root)
        .map_err(RuntimeError::io(format!("create {}", opts.root.display())))?;
    let dir = ContainerDir::new(&opts.root, &opts.id);
    match fs::DirBuilder::new().mode(0o700).create(&dir.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Exists(opts.id.clone()))
        }
        Err(e) => {
            return Err(RuntimeError::io(format!("create {}", dir.path.display()))(
                e,
            ))
        }
    }
    let linux = bundle.spec.linux().as_ref();
    let cgroup_path = linux
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_else(|| cgroups::default_path(&opts.id));
    let result = Cgroup::new(&cgroup_path).and_then(|cgroup| {
        if !cgroup.pids().is_empty() {
            // Another container's: never take it over, never remove it.
            return Err(RuntimeError::Io {
                action: format!("use cgroup {}", cgroup_path.display()),
                source: std::io::Error::other("it already has processes in it"),
            });
        }
        let limits = Limits::from_spec(linux.and_then(|l| l.resources().as_ref()));
        let made = cgroup
            .create(&limits)
            .and_then(|()| spawn(opts, &bundle, &dir, &cgroup, &cgroup_path));
        if made.is_err() {
            let _ = cgroup.remove();
        }
        made
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir.path);
    }
    result
}

fn spawn(
    opts: &CreateOptions,
    bundle: &Bundle,
    dir: &ContainerDir,
    cgroup: &Cgroup,
    cgroup_path: &std::path::Path,
) -> Result<Saved, RuntimeError> {
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(path), true) => Some(std::os::unix::net::UnixStream::connect(path).map_err(
            RuntimeError::io(format!("connect to the console socket {}", path.display())),
        )?),
        (None, true) => {
            return Err(RuntimeError::Spec {
                bundle: bundle.dir.clone(),
                reason: "process.terminal is true: pass --console-socket to receive the pty".into(),
            })
        }
        (Some(_), false) => {
            return Err(RuntimeError::Spec {
                bundle: bundle.dir.clone(),
                reason: "--console-socket was given but process.terminal is false".into(),
            })
        }
        (None, false) => None,
    };
    let fifo_path = dir.fifo();
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .map_err(RuntimeError::sys("create the exec FIFO"))?;
    let fifo = nix::fcntl::open(&fifo_path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(RuntimeError::sys("open the exec FIFO"))?;
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RuntimeError::sys("create the sync pipe"))?;

    // SAFETY: the runtime path is single-threaded (see the module docs of
    // `runtime`), so the child may run arbitrary code before it execs.
    let intermediate_pid = match unsafe { fork() }.map_err(RuntimeError::sys("fork"))? {
        ForkResult::Child => {
            drop(read);
            intermediate(bundle, &fifo, &write, console.as_ref(), opts.preserve_fds)
        }
        ForkResult::Parent { child } => child,
    };
    drop(write);
    drop(fifo);
    drop(console);

    // The intermediate reports the init's pid and the init reports how its
    // set-up ended, on one pipe, in either order: read until both are in,
    // or until every writer is gone.
    let mut init: Option<Pid> = None;
    let mut ready = false;
    let mut error: Option<String> = None;
    for line in BufReader::new(fs::File::from(read)).lines() {
        let Ok(line) = line else { break };
        if let Some(pid) = line.strip_prefix("pid:") {
            init = pid.parse().ok().map(Pid::from_raw);
            // Into the cgroup before the init can run anything of the user's.
            if let Some(pid) = init {
                if let Err(e) = cgroup.add(pid.as_raw()) {
                    error.get_or_insert(e.to_string());
                }
            }
        } else if line == "ready" {
            ready = true;
        } else if let Some(reason) = line.strip_prefix("error:") {
            error.get_or_insert(reason.to_owned());
        }
        if init.is_some() && (ready || error.is_some()) {
            break;
        }
    }
    let outcome = match (error, ready) {
        (Some(reason), _) => Err(reason),
        (None, true) => Ok(()),
        (None, false) => Err("the container init exited during set-up".to_owned()),
    };
    let _ = waitpid(intermediate_pid, None);
    let fail = |reason: String| {
        if let Some(pid) = init {
            let _ = kill(pid, Signal::SIGKILL);
            wait_gone(pid);
        }
        RuntimeError::Init {
            id: opts.id.clone(),
            reason,
        }
    };
    outcome.map_err(fail)?;
    let pid = init.ok_or_else(|| fail("the init's pid was never reported".into()))?;
    let (start, _) = proc_stat(pid.as_raw()).ok_or_else(|| fail("the init vanished".into()))?;
    let saved = Saved {
        id: opts.id.clone(),
        pid: pid.as_raw(),
        pid_start_time: start,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        cgroup_path: cgroup_path.to_owned(),
    };
    dir.save(&saved).inspect_err(|_| {
        let _ = kill(pid, Signal::SIGKILL);
    })?;
    if let Some(hooks) = bundle.spec.hooks() {
        let report = dir.report(&saved);
        #[allow(deprecated)]
        let prestart = hooks.prestart().clone().unwrap_or_default();
        let create_runtime = hooks.create_runtime().clone().unwrap_or_default();
        let ran = hooks::run("prestart", &prestart, &report)
            .and_then(|()| hooks::run("createRuntime", &create_runtime, &report));
        if let Err(e) = ran {
            let _ = kill(pid, Signal::SIGKILL);
            wait_gone(pid);
            return Err(e);
        }
    }
    if let Some(pid_file) = &opts.pid_file {
        let tmp = pid_file.with_extension("tmp");
        fs::write(&tmp, pid.to_string())
            .and_then(|()| fs::rename(&tmp, pid_file))
            .map_err(RuntimeError::io(format!("write {}", pid_file.display())))?;
    }
    Ok(saved)
}

/// Waits briefly for a killed init to be gone, so its cgroup can go too.
fn wait_gone(pid: Pid) {
    for _ in 0..100 {
        if proc_stat(pid.as_raw()).is_none_or(|(_, state)| state == 'Z') {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
