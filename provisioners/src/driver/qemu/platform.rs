//! Process and file work of the qemu driver on unix hosts: QEMU itself,
//! QMP, the data disk, the supervisor, and the boot watchdog's polling.

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_guest_image as image;
use berth_proto::link::{self, Address};
use berth_proto::pb::agent_client::AgentClient;
use berth_proto::pb::PingRequest;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

use super::{Files, MachineState};
use crate::driver::DriverError;

/// How often the watchdog and the stop path look again: often enough that
/// a start returns within a few tens of milliseconds of the agent's first
/// answer.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one ping of the agent may take while it boots.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a starting supervisor may take to take its lock.
const SUPERVISOR_START: Duration = Duration::from_secs(5);

pub(super) fn supported() -> Result<(), DriverError> {
    Ok(())
}

pub(super) fn verify_image(dir: &Path) -> Result<(), DriverError> {
    image::Manifest::load_verified(dir)
        .map(|_| ())
        .map_err(|e| DriverError::PreCreate(format!("guest image {}: {e}", dir.display())))
}

/// Copies the image into the machine (a temporary directory renamed into
/// place), so that a later build of the image never changes this machine.
pub(super) fn copy_image(from: &Path, to: &Path) -> Result<(), DriverError> {
    let tmp = to.with_extension("tmp");
    let copy = || -> io::Result<()> {
        let manifest = image::Manifest::load(from).map_err(|e| io::Error::other(e.to_string()))?;
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        for name in [
            &manifest.kernel.file,
            &manifest.initramfs.file,
            image::MANIFEST,
        ] {
            fs::copy(from.join(name), tmp.join(name))?;
        }
        manifest
            .expand_kernel(&tmp)
            .map_err(|e| io::Error::other(e.to_string()))?;
        fs::rename(&tmp, to)
    };
    copy().map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        DriverError::io(format!("copy the guest image into {}", to.display()), e)
    })?;
    // What was copied is what was verified.
    image::Manifest::load_verified(to).map(|_| ()).map_err(|e| {
        DriverError::io(
            "verify the copied guest image",
            io::Error::other(e.to_string()),
        )
    })
}

pub(super) async fn make_disk(path: &Path, size_gb: u32) -> Result<(), DriverError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{size_gb}G"))
        .output()
        .await
        .map_err(|e| DriverError::io("run qemu-img", e))?;
    if !out.status.success() {
        return Err(DriverError::io(
            format!("create the data disk {}", path.display()),
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ));
    }
    Ok(())
}

/// QEMU's pid, when the pid file names a live QEMU of this machine.
fn qemu_pid(files: &Files) -> Option<Pid> {
    let text = fs::read_to_string(files.pid()).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // A pid can be reused: it must be a QEMU started with this pid file.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"));
    let ours = match cmdline {
        Ok(cmdline) => {
            let wanted = files.pid().display().to_string();
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == wanted.as_bytes())
        }
        // No /proc (macOS): the signal probe below is all there is.
        Err(_) => !Path::new("/proc/self").exists(),
    };
    (ours && send_signal(Pid::from_raw(pid), None).is_ok()).then(|| Pid::from_raw(pid))
}

pub(super) fn qemu_running(files: &Files) -> Result<bool, DriverError> {
    Ok(qemu_pid(files).is_some())
}

/// Starts QEMU daemonized; returns once it runs in the background (or
/// with its complaint when it would not start).
pub(super) async fn launch(qemu: &Path, args: &[String], files: &Files) -> Result<(), DriverError> {
    for stale in [files.pid(), files.qmp(), files.link()] {
        let _ = fs::remove_file(stale);
    }
    let out = tokio::process::Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| DriverError::io(format!("run {}", qemu.display()), e))?;
    if !out.status.success() {
        return Err(DriverError::QemuFailed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Whether a supervisor holds this machine's lock.
fn supervisor_running(files: &Files) -> bool {
    let Ok(file) = File::open(files.supervisor_lock()) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
}

/// The supervisor's pid, from its lock file.
fn supervisor_pid(files: &Files) -> Option<Pid> {
    let text = fs::read_to_string(files.supervisor_lock()).ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

/// Starts the supervisor (`berth` itself, detached) unless one runs.
pub(super) async fn ensure_supervisor(files: &Files) -> Result<(), DriverError> {
    if supervisor_running(files) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| DriverError::io("find the berth program", e))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.supervisor_log())
        .map_err(|e| DriverError::io(format!("open {}", files.supervisor_log().display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| DriverError::io("open the supervisor's log", e))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg(crate::supervisor::COMMAND)
        .arg(&files.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| DriverError::io("start the machine's supervisor", e))?;
    let deadline = Instant::now() + SUPERVISOR_START;
    while Instant::now() < deadline {
        if supervisor_running(files) {
            // Reaped by init once it exits; nothing waits for it here.
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DriverError::io(
                "start the machine's supervisor",
                io::Error::other(format!(
                    "it exited ({status}); see {}",
                    files.supervisor_log().display()
                )),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(DriverError::io(
        "start the machine's supervisor",
        io::Error::other("it did not take its lock in time"),
    ))
}

async fn ping(socket: &Path) -> Result<(), String> {
    let channel = link::connect(&Address::Unix(socket.to_owned())).map_err(|e| e.to_string())?;
    let mut client = AgentClient::new(channel);
    match tokio::time::timeout(PING_TIMEOUT, client.ping(PingRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// Waits until the agent answers through the supervisor, QEMU exits, or
/// `timeout` passes.
pub(super) async fn wait_ready(files: &Files, timeout: Duration) -> Result<(), DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ping(&files.agent_socket()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if qemu_pid(files).is_none() {
            return Err(DriverError::QemuFailed(
                "QEMU exited while the guest booted".into(),
            ));
        }
        if !supervisor_running(files) {
            return Err(DriverError::io(
                "reach the agent",
                io::Error::other(format!(
                    "the machine's supervisor exited; see {}",
                    files.supervisor_log().display()
                )),
            ));
        }
        if Instant::now() >= deadline {
            return Err(DriverError::AgentTimeout {
                seconds: timeout.as_secs(),
                log: format!("last try: {last}"),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs one QMP command on a blocking thread.
async fn qmp<C>(files: &Files, command: C) -> Result<C::Ok, DriverError>
where
    C: qapi::qmp::QmpCommand + Send + 'static,
    C::Ok: Send + 'static,
{
    let socket = files.qmp();
    tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(QMP_TIMEOUT))?;
        stream.set_write_timeout(Some(QMP_TIMEOUT))?;
        let mut qmp = qapi::Qmp::from_stream(&stream);
        qmp.handshake().map_err(io::Error::from)?;
        qmp.execute(&command).map_err(io::Error::from)
    })
    .await
    .map_err(|e| DriverError::io("talk to QEMU", io::Error::other(e.to_string())))?
    .map_err(|e| DriverError::io("talk to QEMU over QMP", e))
}

async fn wait_exit(files: &Files, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if qemu_pid(files).is_none() {
            return true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    qemu_pid(files).is_none()
}

fn stop_supervisor(files: &Files) {
    if supervisor_running(files) {
        if let Some(pid) = supervisor_pid(files) {
            let _ = send_signal(pid, Signal::SIGTERM);
        }
    }
}

/// Stops the VM gracefully: the agent's `Shutdown` (it stops the engine,
/// syncs and powers off), then ACPI powerdown, then `kill`.
pub(super) async fn stop(
    files: &Files,
    timeout: Duration,
    kill_wait: Duration,
) -> Result<(), DriverError> {
    if qemu_pid(files).is_none() {
        stop_supervisor(files);
        return Ok(());
    }
    if crate::driver::ask_shutdown(&files.agent_socket(), PING_TIMEOUT).await
        && wait_exit(files, timeout).await
    {
        stop_supervisor(files);
        return Ok(());
    }
    tracing::debug!("the agent did not power off; trying ACPI powerdown");
    if qmp(files, qapi::qmp::system_powerdown {}).await.is_ok()
        && wait_exit(files, timeout / 2).await
    {
        stop_supervisor(files);
        return Ok(());
    }
    tracing::warn!("the VM did not power off; ending it");
    kill(files, kill_wait).await
}

/// Ends QEMU at once (QMP `quit`, else SIGKILL) and the supervisor.
pub(super) async fn kill(files: &Files, wait: Duration) -> Result<(), DriverError> {
    if let Some(pid) = qemu_pid(files) {
        if qmp(files, qapi::qmp::quit {}).await.is_err() || !wait_exit(files, wait / 2).await {
            let _ = send_signal(pid, Signal::SIGKILL);
        }
        if !wait_exit(files, wait).await {
            return Err(DriverError::StopTimeout {
                pid: pid.as_raw() as u32,
                signal: "SIGKILL",
                seconds: wait.as_secs(),
            });
        }
    }
    stop_supervisor(files);
    let _ = fs::remove_file(files.pid());
    Ok(())
}

pub(super) async fn state(files: &Files) -> Result<MachineState, DriverError> {
    if qemu_pid(files).is_none() {
        return Ok(MachineState::Stopped);
    }
    if !supervisor_running(files) {
        // The VM runs but nothing on this side holds its link: `start`
        // re-attaches.
        return Ok(MachineState::Error);
    }
    match qmp(files, qapi::qmp::query_status {}).await {
        Ok(status) if status.running => Ok(MachineState::Running),
        Ok(status) => match status.status {
            qapi::qmp::RunState::shutdown => Ok(MachineState::Stopping),
            qapi::qmp::RunState::inmigrate | qapi::qmp::RunState::prelaunch => {
                Ok(MachineState::Starting)
            }
            _ => Ok(MachineState::Stopped),
        },
        Err(_) => Ok(MachineState::Error),
    }
}
