//! Children that one of init's threads waits for itself.
//!
//! PID 1 reaps every process that exits ([`reap`], from its signal loop),
//! so a thread of init that runs a program and waits for it would find
//! its child already gone (`ECHILD`) and its exit status lost. Such a
//! thread uses [`run`] instead: the child is registered before the reaper
//! can see it, and the reaper hands its status over.

use std::collections::BTreeMap;
use std::io;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The children waited for, by pid, and where their status goes. Held
/// while a child is spawned and while the reaper reaps, so that no child
/// is reaped before it is registered.
static AWAITED: Mutex<BTreeMap<i32, mpsc::Sender<WaitStatus>>> = Mutex::new(BTreeMap::new());

/// How often [`run`] looks for its child itself, in case no reaper runs.
const SELF_REAP_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `command` and waits for it, whether or not init's reaper runs.
pub fn run(command: &mut Command) -> io::Result<WaitStatus> {
    let (tx, rx) = mpsc::channel();
    let pid = {
        let mut awaited = AWAITED.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn()?;
        awaited.insert(child.id() as i32, tx);
        // Dropping `child` neither waits for it nor kills it.
        Pid::from_raw(child.id() as i32)
    };
    loop {
        match rx.recv_timeout(SELF_REAP_INTERVAL) {
            Ok(status) => return Ok(status),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the child's status was lost"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // No reaper may be running (init before its signal loop):
                // reap the child here. Under the lock, the reaper has
                // either sent its status already or will never see it.
                let mut awaited = AWAITED.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(status) = rx.try_recv() {
                    return Ok(status);
                }
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => {
                        awaited.remove(&pid.as_raw());
                        return Ok(status);
                    }
                    Err(e) => {
                        awaited.remove(&pid.as_raw());
                        return Err(io::Error::from(e));
                    }
                }
            }
        }
    }
}

/// Reaps every child that has exited: the status of one that [`run`]
/// waits for goes to it; the others are returned.
pub fn reap() -> Vec<WaitStatus> {
    reap_from(Pid::from_raw(-1))
}

/// As [`reap`], for the children `which` selects (as waitpid(2) takes it).
fn reap_from(which: Pid) -> Vec<WaitStatus> {
    let mut others = Vec::new();
    reap_into(which, &mut others);
    others
}

/// Reaps every child that has exited, as [`reap`] does, and drops the
/// others' statuses; true while any child is left (shutdown waits for
/// everyone this way without taking a status [`run`] waits for).
pub fn reap_while_any() -> bool {
    reap_into(Pid::from_raw(-1), &mut Vec::new())
}

/// Reaps what `which` selects into `others` (or to [`run`]); true if some
/// child is still running.
fn reap_into(which: Pid, others: &mut Vec<WaitStatus>) -> bool {
    let mut awaited = AWAITED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match waitpid(which, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Err(_) => return false,
            Ok(status) => match status.pid().and_then(|p| awaited.remove(&p.as_raw())) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => others.push(status),
            },
        }
    }
}

/// Whether `status` is a clean exit.
pub fn succeeded(status: &WaitStatus) -> bool {
    matches!(status, WaitStatus::Exited(_, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reaper as init's signal loop runs it, racing with [`run`]. It
    /// reaps only a process group of the test's own, so that it takes no
    /// other test's children.
    #[test]
    fn a_child_reaped_by_the_reaper_still_reports_its_status() {
        use std::os::unix::process::CommandExt;
        let mut leader = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = leader.id() as i32;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reaper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reaped = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    reaped += reap_from(Pid::from_raw(-group)).len();
                    std::thread::yield_now();
                }
                reaped
            })
        };
        for _ in 0..20 {
            let ok = run(Command::new("true").process_group(group)).unwrap();
            assert!(succeeded(&ok), "{ok:?}");
            let failed = run(Command::new("sh")
                .args(["-c", "exit 3"])
                .process_group(group))
            .unwrap();
            assert!(matches!(failed, WaitStatus::Exited(_, 3)), "{failed:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Every child went to the thread that ran it, none to the reaper.
        assert_eq!(reaper.join().unwrap(), 0);
        leader.kill().unwrap();
        leader.wait().unwrap();
    }

    #[test]
    fn without_a_reaper_the_child_is_reaped_by_run() {
        let failed = run(Command::new("sh").args(["-c", "exit 4"])).unwrap();
        assert!(matches!(failed, WaitStatus::Exited(_, 4)), "{failed:?}");
    }
}
