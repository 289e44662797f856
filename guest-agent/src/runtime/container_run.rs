//! `run`: create, start, and (in the foreground) wait for the container,
//! forwarding signals to it and exiting with its status.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::container_create::{create, CreateOptions};
use super::container_delete::delete;
use super::container_start::start;
use super::RuntimeError;

/// Signals a foreground `run` passes on to the container.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs a container; returns its exit code when not detached (128+N when
/// killed by signal N), 0 once started when detached.
pub fn run(opts: &CreateOptions, detach: bool) -> Result<i32, RuntimeError> {
    if !detach {
        // Become the init's parent when the intermediate exits, to wait for it.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(RuntimeError::sys("become a subreaper"))?;
    }
    let saved = create(opts)?;
    if detach {
        start(&opts.root, &opts.id)?;
        return Ok(0);
    }
    let set = forwarded_signals();
    set.thread_block()
        .map_err(RuntimeError::sys("block signals"))?;
    let started = start(&opts.root, &opts.id);
    let code = match started {
        Ok(()) => wait(Pid::from_raw(saved.pid), &set),
        Err(e) => {
            let _ = delete(&opts.root, &opts.id, true);
            return Err(e);
        }
    };
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    delete(&opts.root, &opts.id, true)?;
    code
}

/// SIGCHLD and the signals a foreground verb passes on, to block and
/// then take with `sigwait`.
pub(crate) fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// Waits for `init` to exit, reaping everything reparented to us and
/// forwarding signals; `set` ([`forwarded_signals`]) must be blocked.
pub(crate) fn wait(init: Pid, set: &SigSet) -> Result<i32, RuntimeError> {
    loop {
        // Reap first: the init may have exited before we blocked SIGCHLD.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == init => return Ok(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == init => {
                    return Ok(128 + signal as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(e) => return Err(RuntimeError::sys("wait for the container")(e)),
            }
        }
        let signal = set.wait().map_err(RuntimeError::sys("wait for signals"))?;
        if signal != Signal::SIGCHLD {
            let _ = kill(init, signal);
        }
    }
}
