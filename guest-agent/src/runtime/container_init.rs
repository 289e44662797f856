//! The container's init process between fork and exec: it builds the
//! container's world, reports "ready" to `create`, waits for `start` on the
//! exec FIFO, and execs the user's program.
//!
//! It runs in a child of a single-threaded process, so ordinary Rust code
//! (allocation included) is safe here. It never returns: it execs, or
//! reports an error on the sync pipe and exits.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::spec::Bundle;
use super::state::{StateReport, Status};
use super::RuntimeError;
use super::{console, hooks, rootfs, seccomp, sync};

/// The PATH used to find the program when the spec's env has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the init process is handed by `create`.
pub(crate) struct InitContext<'a> {
    pub bundle: &'a Bundle,
    /// The exec FIFO, opened with O_PATH before the rootfs hides it.
    pub fifo: RawFd,
    /// The children's end of the sync socket (see [`sync`]).
    pub sync: RawFd,
    /// The console socket, when the process wants a terminal.
    pub console: Option<RawFd>,
    /// Descriptors above 2 to pass to the program (`--preserve-fds`).
    pub preserve_fds: i32,
}

/// Runs the init process; exits the process on error.
pub(crate) fn run(ctx: InitContext<'_>) -> ! {
    let sync = ctx.sync;
    let err = match setup(ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    sync::send(sync, &format!("error:{err}"));
    // After "ready", `create` has gone and only the container's stderr can
    // still tell anyone.
    let _ = writeln!(std::io::stderr(), "berth-agent: container init: {err}");
    // SAFETY: _exit ends this forked child without running the parent's
    // atexit handlers or flushing its copied stdio buffers.
    unsafe { nix::libc::_exit(1) }
}

fn setup(ctx: InitContext<'_>) -> Result<Infallible, RuntimeError> {
    let spec = &ctx.bundle.spec;
    let process = spec.process().as_ref().ok_or_else(|| RuntimeError::Init {
        id: String::new(),
        reason: "no process in spec".into(),
    })?;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let in_user_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    rootfs::mount_all(&ctx.bundle.dir, &ctx.bundle.rootfs, spec, in_user_ns)?;
    // The runtime's hooks run now, with the mounts made and before
    // pivot_root; then the container's own, in its namespaces.
    let state = if hooks::any(spec) {
        sync::send(ctx.sync, "hooks");
        let json = sync::expect(ctx.sync, "state:")?;
        let state: StateReport = serde_json::from_str(&json).map_err(|e| RuntimeError::Io {
            action: "read the state for hooks".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let create_container = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.create_container().clone())
            .unwrap_or_default();
        hooks::run("createContainer", &create_container, &state)?;
        Some(state)
    } else {
        None
    };
    rootfs::enter(&ctx.bundle.rootfs, spec)?;
    if let Some(socket) = ctx.console {
        let size = process
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        console::setup(socket, size)?;
    }

    if let Some(hostname) = spec.hostname() {
        if namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Uts)
        {
            nix::unistd::sethostname(hostname).map_err(RuntimeError::sys("set the hostname"))?;
        }
    }
    let exec = Prepared::new(process, spec)?;
    sync::send(ctx.sync, "ready");
    // Blocks until `start` opens the FIFO for reading.
    let fifo_path = format!("/proc/self/fd/{}", ctx.fifo);
    let fifo = nix::fcntl::open(
        fifo_path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RuntimeError::sys(
        "wait for start on the exec FIFO (is /proc mounted?)",
    ))?;
    nix::unistd::write(&fifo, b"0").map_err(RuntimeError::sys("answer start"))?;
    drop(fifo);
    if let Some(mut state) = state {
        state.status = Status::Created;
        let start_container = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
            .unwrap_or_default();
        hooks::run("startContainer", &start_container, &state)?;
    }
    exec.exec(process, ctx.preserve_fds)
}

/// What a process does before it enters a container's namespaces
/// (create's and exec's intermediates): the OOM score, inherited by its
/// children and written while still root on the host, as a user namespace
/// would not allow it later; and non-dumpable until exec, so nothing of the
/// container's can open its /proc files.
pub(crate) fn before_entering(oom_score_adj: Option<i32>) -> Result<(), RuntimeError> {
    if let Some(adj) = oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(RuntimeError::io("set oom_score_adj"))?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(RuntimeError::sys("set non-dumpable"))
}

/// The program and its arguments, environment and seccomp filters, made
/// ready before the process reports "ready", so that a bad one fails the
/// verb rather than the container.
pub(crate) struct Prepared {
    program: PathBuf,
    args: Vec<CString>,
    env: Vec<CString>,
    filters: Vec<seccompiler::BpfProgram>,
}

impl Prepared {
    /// Applies the process's rlimits, no_new_privs and cwd, finds the
    /// program and compiles the spec's seccomp profile.
    pub(crate) fn new(
        process: &Process,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<Self, RuntimeError> {
        set_rlimits(process)?;
        if process.no_new_privileges().unwrap_or(false) {
            nix::sys::prctl::set_no_new_privs().map_err(RuntimeError::sys("set no_new_privs"))?;
        }
        let cwd = process.cwd();
        nix::unistd::chdir(cwd)
            .map_err(RuntimeError::sys(format!("enter cwd {}", cwd.display())))?;
        let env: Vec<String> = process.env().clone().unwrap_or_default();
        let args: Vec<String> = process.args().clone().unwrap_or_default();
        let first = args.first().ok_or_else(|| RuntimeError::Io {
            action: "start the process".into(),
            source: std::io::Error::other("process.args is empty"),
        })?;
        let program = find_program(first, &env)?;
        let to_c = |s: &str| {
            CString::new(s).map_err(|_| RuntimeError::Io {
                action: format!("use {s:?} as an argument"),
                source: std::io::Error::other("it contains a NUL byte"),
            })
        };
        let args = args
            .iter()
            .map(|a| to_c(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>, _>>()?;
        let filters = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(profile) => seccomp::compile(profile)?,
            None => Vec::new(),
        };
        Ok(Prepared {
            program,
            args,
            env,
            filters,
        })
    }

    /// Takes on the process's identity and execs the program.
    pub(crate) fn exec(
        self,
        process: &Process,
        preserve_fds: i32,
    ) -> Result<Infallible, RuntimeError> {
        let no_new_privs = process.no_new_privileges().unwrap_or(false);
        // Last, as it takes away the power to do all of the above. A spec
        // without capabilities leaves them as they are, as runc does.
        let with_caps = process.capabilities().is_some();
        // Without no_new_privs, installing a filter takes CAP_SYS_ADMIN, which
        // the capabilities below may drop: install it first then, as runc does.
        if !no_new_privs {
            self.filters.iter().try_for_each(seccomp::install)?;
        }
        if with_caps {
            drop_bounding_set(process)?;
        }
        set_user(process)?;
        if with_caps {
            set_capabilities(process)?;
        }
        // With no_new_privs, as late as possible: the filter then needs to
        // allow nothing of the runtime's but execve.
        if no_new_privs {
            self.filters.iter().try_for_each(seccomp::install)?;
        }
        close_fds_on_exec(3 + preserve_fds)?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(RuntimeError::sys("unblock signals"))?;
        let c_program =
            CString::new(self.program.as_os_str().as_encoded_bytes()).map_err(|_| {
                RuntimeError::Io {
                    action: "use the program path".into(),
                    source: std::io::Error::other("it contains a NUL byte"),
                }
            })?;
        let Err(err) = nix::unistd::execve(&c_program, &self.args, &self.env);
        Err(RuntimeError::sys(format!(
            "exec {}",
            self.program.display()
        ))(err))
    }
}

/// Finds `name` on the PATH of the container's environment.
fn find_program(name: &str, env: &[String]) -> Result<PathBuf, RuntimeError> {
    // Worded as runc words them: Docker clients map these phrases to the
    // exit codes 127 and 126.
    let failed = |why: &str| RuntimeError::Io {
        action: format!("exec {name:?}"),
        source: std::io::Error::other(why.to_owned()),
    };
    let executable = |p: &Path| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
            && p.metadata().is_ok_and(|m| m.is_file())
    };
    if name.contains('/') {
        let path = Path::new(name);
        return match path.metadata() {
            Err(_) => Err(failed("stat: no such file or directory")),
            Ok(_) if !executable(path) => Err(failed("permission denied")),
            Ok(_) => Ok(path.to_owned()),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
        .ok_or_else(|| failed("executable file not found in $PATH"))
}

fn set_rlimits(process: &Process) -> Result<(), RuntimeError> {
    for limit in process.rlimits().as_deref().unwrap_or_default() {
        // The spec's own spelling, e.g. "RLIMIT_NOFILE".
        let name = serde_json::to_value(limit.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let Some(resource) = resource_of(&name) else {
            return Err(RuntimeError::Io {
                action: format!("set rlimit {name}"),
                source: std::io::Error::other("unknown resource"),
            });
        };
        nix::sys::resource::setrlimit(resource, limit.soft(), limit.hard()).map_err(|e| {
            let hint = if e == nix::errno::Errno::EPERM {
                " (raising a hard limit needs CAP_SYS_RESOURCE, which the runtime does not have here)"
            } else {
                ""
            };
            RuntimeError::Sys {
                action: format!(
                    "set rlimit {name} to {}/{}{hint}",
                    limit.soft(),
                    limit.hard()
                ),
                source: e,
            }
        })?;
    }
    Ok(())
}

fn resource_of(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name.trim_start_matches("RLIMIT_") {
        "AS" => R::RLIMIT_AS,
        "CORE" => R::RLIMIT_CORE,
        "CPU" => R::RLIMIT_CPU,
        "DATA" => R::RLIMIT_DATA,
        "FSIZE" => R::RLIMIT_FSIZE,
        "LOCKS" => R::RLIMIT_LOCKS,
        "MEMLOCK" => R::RLIMIT_MEMLOCK,
        "MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "NICE" => R::RLIMIT_NICE,
        "NOFILE" => R::RLIMIT_NOFILE,
        "NPROC" => R::RLIMIT_NPROC,
        "RSS" => R::RLIMIT_RSS,
        "RTPRIO" => R::RLIMIT_RTPRIO,
        "RTTIME" => R::RLIMIT_RTTIME,
        "SIGPENDING" => R::RLIMIT_SIGPENDING,
        "STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// The spec's capabilities in one set, as the `caps` crate names them.
fn capability_set(
    process: &Process,
    pick: impl Fn(&oci_spec::runtime::LinuxCapabilities) -> Option<&oci_spec::runtime::Capabilities>,
) -> Result<caps::CapsHashSet, RuntimeError> {
    let mut set = caps::CapsHashSet::new();
    let Some(wanted) = process.capabilities().as_ref().and_then(pick) else {
        return Ok(set);
    };
    for cap in wanted {
        // The spec's spelling, e.g. "CAP_NET_RAW".
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match name.parse::<caps::Capability>() {
            Ok(c) => {
                set.insert(c);
            }
            // A capability this kernel build of `caps` does not know is
            // one the process cannot hold anyway.
            Err(_) => tracing::debug!(capability = %name, "unknown capability ignored"),
        }
    }
    Ok(set)
}

fn caps_error(set: &str) -> impl FnOnce(caps::errors::CapsError) -> RuntimeError + '_ {
    move |e| RuntimeError::Io {
        action: format!("set the {set} capabilities"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Drops what is not in the bounding set, while still root and able to;
/// keeps the permitted set across the switch to the container's user.
fn drop_bounding_set(process: &Process) -> Result<(), RuntimeError> {
    let bounding = capability_set(process, |c| c.bounding().as_ref())?;
    for cap in caps::all() {
        if !bounding.contains(&cap)
            && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(caps_error("bounding"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true)
        .map_err(RuntimeError::sys("keep capabilities across setuid"))
}

/// Sets the effective, permitted, inheritable and ambient sets.
fn set_capabilities(process: &Process) -> Result<(), RuntimeError> {
    let effective = capability_set(process, |c| c.effective().as_ref())?;
    let permitted = capability_set(process, |c| c.permitted().as_ref())?;
    let inheritable = capability_set(process, |c| c.inheritable().as_ref())?;
    let ambient = capability_set(process, |c| c.ambient().as_ref())?;
    // Each capset(2) must keep effective within permitted: lower effective
    // first, then permitted, then inheritable.
    caps::set(None, caps::CapSet::Effective, &effective).map_err(caps_error("effective"))?;
    caps::set(None, caps::CapSet::Permitted, &permitted).map_err(caps_error("permitted"))?;
    caps::set(None, caps::CapSet::Inheritable, &inheritable).map_err(caps_error("inheritable"))?;
    // The kernel raises an ambient capability only if it is both permitted
    // and inheritable; like runc, leave out those that are not.
    let raisable: caps::CapsHashSet = ambient
        .iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
        .copied()
        .collect();
    if raisable.len() < ambient.len() {
        tracing::debug!("ambient capabilities outside permitted ∩ inheritable left out");
    }
    caps::set(None, caps::CapSet::Ambient, &raisable).map_err(caps_error("ambient"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(RuntimeError::sys("reset keepcaps"))
}

fn set_user(process: &Process) -> Result<(), RuntimeError> {
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(RuntimeError::sys("set additional groups"))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(RuntimeError::sys(format!("set gid {gid}")))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(RuntimeError::sys(format!("set uid {uid}")))
}

/// Marks every descriptor from `first` up close-on-exec, so nothing of
/// the runtime leaks into the container.
fn close_fds_on_exec(first: i32) -> Result<(), RuntimeError> {
    let fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")
        .map_err(RuntimeError::io("list open descriptors"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: borrowing for the fcntl call only; the descriptor stays
        // owned by whoever opened it (it is closed by exec, as intended).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // The descriptor used to list /proc/self/fd is already closed: EBADF.
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Ok(())
}
