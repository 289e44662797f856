//! `create`: sets a container up and leaves its init waiting for `start`.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
use super::container_init::{self, InitContext};
use super::spec::{validate_id, Bundle};
use super::state::{proc_stat, write_pid_file, ContainerDir, Saved, StateReport, Status};
use super::{hooks, sync, userns, RuntimeError};

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
pub(crate) fn namespaces(bundle: &Bundle) -> (CloneFlags, Vec<(PathBuf, CloneFlags)>) {
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
    // A user namespace is joined first: the others may belong to it.
    join.sort_by_key(|(_, flag)| *flag != CloneFlags::CLONE_NEWUSER);
    // The rootfs is always set up in a mount namespace of the container's
    // own. A new cgroup namespace is made once the runtime has put the
    // intermediate in the container's cgroup, which becomes its root.
    (new | CloneFlags::CLONE_NEWNS, join)
}

/// What the intermediate child is handed.
struct Intermediate<'a> {
    bundle: &'a Bundle,
    fifo: &'a OwnedFd,
    sync: RawFd,
    console: Option<&'a std::os::unix::net::UnixStream>,
    preserve_fds: i32,
}

/// The intermediate child: joins and makes the namespaces, forks the
/// init (PID 1 of a new PID namespace), reports its pid and exits.
fn intermediate(ctx: Intermediate<'_>) -> ! {
    let result = (|| -> Result<Pid, RuntimeError> {
        let spec = &ctx.bundle.spec;
        let process = spec.process().as_ref();
        container_init::before_entering(process.and_then(|p| p.oom_score_adj()))?;
        let (new, join) = namespaces(ctx.bundle);
        // Existing namespaces first, the user namespace before the others
        // (they may belong to it), then a new user namespace, mapped by
        // the runtime, and the new namespaces it will own.
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
        if new.contains(CloneFlags::CLONE_NEWUSER) {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(RuntimeError::sys("create the user namespace"))?;
        }
        // The runtime writes our id maps and puts us in the cgroup, which
        // the init inherits before it runs anything.
        sync::send(ctx.sync, "hello");
        sync::expect(ctx.sync, "go")?;
        if new.contains(CloneFlags::CLONE_NEWUSER) {
            become_namespace_root(spec.linux().as_ref())?;
        }
        nix::sched::unshare(new - CloneFlags::CLONE_NEWUSER)
            .map_err(RuntimeError::sys("create namespaces"))?;
        // SAFETY: this process has a single thread (the runtime never starts
        // others on this path), so the child may run arbitrary code.
        match unsafe { fork() }.map_err(RuntimeError::sys("fork the container init"))? {
            ForkResult::Child => container_init::run(InitContext {
                bundle: ctx.bundle,
                fifo: ctx.fifo.as_raw_fd(),
                sync: ctx.sync,
                console: ctx.console.map(AsRawFd::as_raw_fd),
                preserve_fds: ctx.preserve_fds,
            }),
            ForkResult::Parent { child } => Ok(child),
        }
    })();
    let code = match result {
        Ok(pid) => {
            sync::send(ctx.sync, &format!("pid:{pid}"));
            0
        }
        Err(e) => {
            sync::send(ctx.sync, &format!("error:{e}"));
            1
        }
    };
    // SAFETY: ends the forked intermediate without running the parent's
    // exit handlers.
    unsafe { nix::libc::_exit(code) }
}

/// Switches to uid and gid 0 of the new user namespace where they are
/// mapped, so that what the init creates belongs to the container's root.
fn become_namespace_root(linux: Option<&oci_spec::runtime::Linux>) -> Result<(), RuntimeError> {
    let mapped = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.is_some_and(|m| userns::host_id(m, 0).is_some())
    };
    if mapped(linux.and_then(|l| l.gid_mappings().as_ref())) {
        let root = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root, root, root)
            .map_err(RuntimeError::sys("become gid 0 in the user namespace"))?;
    }
    if mapped(linux.and_then(|l| l.uid_mappings().as_ref())) {
        let root = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresuid(root, root, root)
            .map_err(RuntimeError::sys("become uid 0 in the user namespace"))?;
    }
    Ok(())
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

/// Opens the console socket when the process wants a terminal, and
/// refuses a mismatch between the two either way.
pub(crate) fn console_for(
    bundle_dir: &std::path::Path,
    terminal: bool,
    socket: Option<&std::path::Path>,
) -> Result<Option<std::os::unix::net::UnixStream>, RuntimeError> {
    match (socket, terminal) {
        (Some(path), true) => std::os::unix::net::UnixStream::connect(path)
            .map(Some)
            .map_err(RuntimeError::io(format!(
                "connect to the console socket {}",
                path.display()
            ))),
        (None, true) => Err(RuntimeError::Spec {
            bundle: bundle_dir.to_owned(),
            reason: "process.terminal is true: pass --console-socket to receive the pty".into(),
        }),
        (Some(_), false) => Err(RuntimeError::Spec {
            bundle: bundle_dir.to_owned(),
            reason: "--console-socket was given but process.terminal is false".into(),
        }),
        (None, false) => Ok(None),
    }
}

/// The state the hooks are given, before `state.json` exists.
fn hook_state(opts: &CreateOptions, bundle: &Bundle, pid: Pid) -> StateReport {
    StateReport {
        oci_version: bundle.spec.version().clone(),
        id: opts.id.clone(),
        pid: pid.as_raw(),
        status: Status::Creating,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: String::new(),
        owner: String::new(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
    }
}

/// Runs the runtime-side hooks of the create phase: `prestart` (older
/// specs) then `createRuntime`.
fn runtime_hooks(bundle: &Bundle, state: &StateReport) -> Result<(), RuntimeError> {
    let Some(hooks) = bundle.spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let prestart = hooks.prestart().clone().unwrap_or_default();
    let create_runtime = hooks.create_runtime().clone().unwrap_or_default();
    hooks::run("prestart", &prestart, state)
        .and_then(|()| hooks::run("createRuntime", &create_runtime, state))
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
    let console = console_for(&bundle.dir, terminal, opts.console_socket.as_deref())?;
    let fifo_path = dir.fifo();
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .map_err(RuntimeError::sys("create the exec FIFO"))?;
    // The init opens it as the container's root, which a user namespace
    // maps to another host uid: make the FIFO that uid's.
    if let Some(linux) = bundle.spec.linux().as_ref() {
        let host = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.as_deref().and_then(|m| userns::host_id(m, 0))
        };
        let (uid, gid) = (host(linux.uid_mappings()), host(linux.gid_mappings()));
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(
                &fifo_path,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(RuntimeError::sys(
                "hand the exec FIFO to the container's root",
            ))?;
        }
    }
    let fifo = nix::fcntl::open(&fifo_path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(RuntimeError::sys("open the exec FIFO"))?;
    let (mut channel, child_end) = sync::pair()?;
    let linux = bundle.spec.linux().as_ref();
    let new_user_ns = namespaces(bundle).0.contains(CloneFlags::CLONE_NEWUSER);

    // SAFETY: the runtime path is single-threaded (see the module docs of
    // `runtime`), so the child may run arbitrary code before it execs.
    let intermediate_pid = match unsafe { fork() }.map_err(RuntimeError::sys("fork"))? {
        ForkResult::Child => intermediate(Intermediate {
            bundle,
            fifo: &fifo,
            sync: child_end.as_raw_fd(),
            console: console.as_ref(),
            preserve_fds: opts.preserve_fds,
        }),
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    drop(fifo);
    drop(console);

    // Until the init is ready or has failed: answer the intermediate's
    // hello (id maps, cgroup), take the init's pid, and run the
    // runtime-side hooks when the init stops for them.
    let mut init: Option<Pid> = None;
    let mut hooks_wanted = false;
    let mut ready = false;
    let mut error: Option<String> = None;
    while let Some(line) = channel.recv() {
        if line == "hello" {
            let setup = match linux {
                Some(linux) if new_user_ns => userns::write_maps(intermediate_pid, linux),
                _ => Ok(()),
            }
            .and_then(|()| cgroup.add(intermediate_pid.as_raw()));
            channel.answer_hello(setup, &mut error);
        } else if let Some(pid) = line.strip_prefix("pid:") {
            init = pid.parse().ok().map(Pid::from_raw);
        } else if line == "hooks" {
            hooks_wanted = true;
        } else if line == "ready" {
            ready = true;
        } else if let Some(reason) = line.strip_prefix("error:") {
            error.get_or_insert(reason.to_owned());
        }
        if let (true, Some(pid), None) = (hooks_wanted, init, &error) {
            hooks_wanted = false;
            let state = hook_state(opts, bundle, pid);
            let reply = runtime_hooks(bundle, &state).and_then(|()| {
                serde_json::to_string(&state)
                    .map_err(|e| RuntimeError::io("encode the state for hooks")(e.into()))
            });
            match reply {
                Ok(json) => channel.send(&format!("state:{json}")),
                Err(e) => {
                    channel.send(&format!("abort:{e}"));
                    error.get_or_insert(e.to_string());
                }
            }
        }
        if init.is_some() && (ready || error.is_some()) {
            break;
        }
    }
    channel.shutdown();
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
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, pid.as_raw())?;
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
