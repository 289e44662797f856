//! Powering off: the ACPI power button (QMP `system_powerdown`), stopping
//! every process, syncing and unmounting, then the power-off itself.

use std::fs;
use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

/// How long the agent may take to stop its containers after SIGTERM.
const AGENT_STOP: Duration = Duration::from_secs(10);

/// How long other processes may take to exit after SIGTERM.
const OTHERS_STOP: Duration = Duration::from_secs(3);

/// The input event for a key (`struct input_event` on 64-bit Linux: a
/// 16-byte time, then type, code, value).
const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Watches the input devices that are power buttons and signals init on a
/// press. Runs on a thread of its own; a guest without such a device just
/// relies on the agent's `Shutdown`.
pub fn watch_button() {
    let Ok(devices) = fs::read_dir("/sys/class/input") else {
        return;
    };
    for device in devices.flatten() {
        let name = device.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = fs::read_to_string(device.path().join("device/name")).unwrap_or_default();
        if !label.to_lowercase().contains("power button") {
            continue;
        }
        let path = format!("/dev/input/{name}");
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || {
                let Ok(mut file) = fs::File::open(&path) else {
                    return;
                };
                let mut event = [0u8; EVENT_SIZE];
                while file.read_exact(&mut event).is_ok() {
                    let kind = u16::from_ne_bytes([event[16], event[17]]);
                    let code = u16::from_ne_bytes([event[18], event[19]]);
                    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
                    if kind == EV_KEY && code == KEY_POWER && value == 1 {
                        info!("power button pressed");
                        let _ = kill(Pid::this(), Signal::SIGPWR);
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("cannot watch the power button: {e}");
        }
    }
}

/// Stops the agent (which stops its containers), then every other
/// process, syncs, unmounts and powers off.
pub fn shutdown(agent: Option<&mut Child>) -> ! {
    if let Some(agent) = agent {
        let pid = Pid::from_raw(agent.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + AGENT_STOP;
        while Instant::now() < deadline {
            if matches!(agent.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Everyone else: -1 reaches every process but init itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + OTHERS_STOP;
    while Instant::now() < deadline && super::children::reap_while_any() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    super::children::reap_while_any();
    off()
}

/// Syncs, unmounts the data disk and powers the machine off.
pub fn off() -> ! {
    nix::unistd::sync();
    if let Err(e) = nix::mount::umount(super::AGENT_ROOT) {
        if e != nix::errno::Errno::EINVAL {
            warn!("cannot unmount {}: {e}; syncing instead", super::AGENT_ROOT);
        }
    }
    nix::unistd::sync();
    info!("power off");
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).unwrap_err();
    // Only reachable without CAP_SYS_BOOT; PID 1 must never exit.
    warn!("cannot power off: {err}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
