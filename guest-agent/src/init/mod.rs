//! `berth-agent init`: PID 1 in Berth's guest VM.
//!
//! In order: put the root on a mount that containers can `pivot_root`
//! from, mount the kernel's file systems, load the kernel modules
//! the image lists, mount cgroup2, set the hostname, bring the network up on
//! QEMU's user network, mount the persistent data disk (formatting it on
//! first boot) at the agent's root, then let `berth-agent serve` (started
//! first, waiting for that) serve, and keep it running. It reaps every
//! orphan, and on SIGTERM, SIGUSR2 (the agent's `Shutdown`), SIGPWR or the
//! ACPI power button it stops everything, syncs, unmounts and powers off.
//!
//! Settings come from the kernel command line (`berth.*=`, see
//! [`cmdline::Settings`]). Everything is logged to the console, which the
//! host keeps as the machine's console log: a boot that goes wrong says why
//! there. Init never returns; a step that fails is logged and, where the
//! agent cannot work without it, ends in a power-off.
//!
//! - [`children`] — programs a thread of init runs and waits for.
//! - [`cmdline`] — the settings on the kernel command line.
//! - [`rootfs`] — the root's move off the initramfs's mount.
//! - [`system`] — mounts, modules, cgroups, hostname, clock.
//! - [`net`] — loopback and the first Ethernet link.
//! - [`disk`] — the data disk.
//! - [`power`] — the power button, stopping everything, powering off.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::daemon::BootStage;

pub mod children;
pub mod cmdline;
pub mod disk;
pub mod net;
pub mod power;
pub mod rootfs;
pub mod system;

/// The signal the agent's `Shutdown` sends PID 1 to power the VM off
/// (busybox's init uses the same one for `poweroff`).
pub const POWEROFF_SIGNAL: Signal = Signal::SIGUSR2;

/// Where the data disk is mounted: the agent's storage root.
pub const AGENT_ROOT: &str = "/var/lib/berth-agent";

/// The agent's gRPC socket in the guest.
pub const AGENT_SOCKET: &str = "/run/berth/agent.sock";

/// The Docker API's socket in the guest.
pub const DOCKER_SOCKET: &str = "/run/berth/docker.sock";

/// The shortest time between two starts of the agent: one that dies at
/// once must not be restarted in a tight loop.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Runs PID 1. Never returns: the machine powers off at the end.
pub fn main() -> ! {
    let initramfs = match rootfs::root_is_initramfs() {
        Ok(true) => {
            if let Err(e) = rootfs::leave_initramfs() {
                error!("cannot leave the initramfs's mount (containers will not start): {e}");
            }
            true
        }
        Ok(false) => false,
        Err(e) => {
            error!("cannot tell whether / is the initramfs: {e}");
            false
        }
    };
    if let Err(e) = system::mount_basics() {
        error!("{e}");
        power::off();
    }
    info!("init started");
    // Blocked from the start, in every thread init makes, so that they
    // queue for `sigwait`: the agent's end is noticed even before init
    // waits for it.
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        error!("cannot block signals: {e}");
    }
    let settings = cmdline::Settings::from_proc();
    let workers = system::module_workers();
    // The agent starts first, and is told on a pipe when the boot has got
    // far enough for it to serve its link, and then to take its root: its
    // own start (the binary's load, parsing its arguments, the async
    // runtime) overlaps the modules' loading and the data disk's mount, and
    // the host's connecting overlaps the mount. Spawning waits for the
    // agent's exec, so it has a thread of its own.
    let (wait, go_ahead) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((wait, go_ahead)) => (Some(wait), Some(go_ahead)),
        Err(e) => {
            warn!("cannot make a pipe for the agent's go-ahead ({e}): it starts later");
            (None, None)
        }
    };
    let tell = |stage: BootStage| {
        if let Some(pipe) = &go_ahead {
            // An agent that has died meanwhile is restarted by supervise.
            let _ = nix::unistd::write(pipe, &[stage as u8]);
        }
    };
    let vsock_device = system::vsock_device_present();
    let (agent, loaded) = std::thread::scope(|scope| {
        let starting = wait.map(|wait| {
            let settings = &settings;
            std::thread::Builder::new()
                .name("agent".into())
                .spawn_scoped(scope, move || {
                    start_agent(settings, Some(wait), vsock_device)
                })
        });
        let mut loaded = system::load_modules(system::BOOT_MODULES, workers);
        if vsock_device {
            loaded.extend(system::load_modules(system::VSOCK_MODULES, workers));
        }
        if workers > 1 {
            // Where there is a CPU to spare for it, the host connects while
            // the disk mounts; on one, that only slows the mount.
            tell(BootStage::Link);
        }
        // The rest of the system and the network do not wait for the data
        // disk, nor it for them, where there are CPUs to do both at once
        // (on one, a second thread only costs): the disk's mount mostly
        // waits for the disk.
        let network = || {
            if let Err(e) = system::mount_cgroup2() {
                warn!("{e}");
            }
            system::set_hostname(&settings.hostname);
            system::check_clock();
            if let Err(e) = net::configure(&settings) {
                warn!("network: {e}");
            }
        };
        let network = if workers > 1 {
            std::thread::Builder::new()
                .name("network".into())
                .spawn_scoped(scope, network)
                .map_err(|_| network)
        } else {
            Err(network)
        };
        match disk::mount_data(&settings, Path::new(AGENT_ROOT)) {
            Ok(true) => {}
            Ok(false) => warn!("no data disk: images and containers last until power-off"),
            Err(e) => {
                // Running on without it would lose the user's data silently.
                error!("data disk: {e}");
                power::off();
            }
        }
        match network {
            Ok(thread) => {
                let _ = thread.join();
            }
            Err(network) => network(),
        }
        tell(BootStage::Root);
        let agent = match starting {
            Some(Ok(thread)) => thread.join().unwrap_or(None),
            Some(Err(_)) | None => None,
        };
        (agent, loaded)
    });
    drop(go_ahead);
    let agent = agent.or_else(|| start_agent(&settings, None, system::has_vsock()));
    // The boot modules' files are memory in the initramfs, and not needed
    // again; deleting them is not worth the agent's wait.
    let spent = if initramfs { loaded } else { Vec::new() };
    supervise(&settings, &signals, agent, spent)
}

/// Blocks the signals init handles, so that they queue for `sigwait`.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        POWEROFF_SIGNAL,
    ] {
        set.add(s);
    }
    set
}

/// Keeps `agent` running (restarting it when it dies), reaps orphans, and
/// powers off when told to. `signals` are blocked in every thread. The
/// `spent` files are deleted once the agent serves.
fn supervise(
    settings: &cmdline::Settings,
    signals: &SigSet,
    mut agent: Option<Child>,
    spent: Vec<PathBuf>,
) -> ! {
    // Once the agent serves: what it does not need to start.
    system::later_setup(Path::new(DOCKER_SOCKET), spent);
    let mut started = Instant::now();
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(e) => {
                warn!("sigwait: {e}");
                continue;
            }
        };
        if signal != Signal::SIGCHLD {
            info!(%signal, "powering off");
            power::shutdown(agent.as_mut());
        }
        let agent_pid = agent.as_ref().map(|c| Pid::from_raw(c.id() as i32));
        for status in children::reap() {
            if status.pid().is_some() && status.pid() == agent_pid {
                warn!("berth-agent serve ended ({status:?}); starting it again");
                agent = None;
            }
        }
        if agent.is_none() {
            let since = started.elapsed();
            if since < RESTART_BACKOFF {
                std::thread::sleep(RESTART_BACKOFF - since);
            }
            agent = start_agent(settings, None, system::has_vsock());
            started = Instant::now();
        }
    }
}

/// Starts `berth-agent serve` with the guest's sockets and link; with
/// `wait`, the read end of a pipe, it goes by the [`BootStage`]s that come
/// on it. With `vsock`, it also serves the link on vsock.
fn start_agent(settings: &cmdline::Settings, wait: Option<OwnedFd>, vsock: bool) -> Option<Child> {
    let mut command = Command::new("/proc/self/exe");
    command.args([
        "serve",
        "--root",
        AGENT_ROOT,
        "--listen",
        &format!("unix:{AGENT_SOCKET}"),
        "--docker-socket",
        DOCKER_SOCKET,
        "--power-off-on-shutdown",
    ]);
    // Looked up by the agent once the boot modules are in: on its first
    // start the port's driver may still be loading.
    command.arg("--link-port-name").arg(crate::link::PORT_NAME);
    // Started early, the agent is told of a vsock device whose modules
    // are loaded before the link's go-ahead; should they fail, it ends,
    // and its restart goes by what is bound.
    if vsock {
        command
            .arg("--vsock-port")
            .arg(crate::link::VSOCK_PORT.to_string());
    }
    for registry in &settings.insecure_registries {
        command.arg("--insecure-registry").arg(registry);
    }
    for mirror in &settings.registry_mirrors {
        command.arg("--registry-mirror").arg(mirror);
    }
    for label in &settings.labels {
        command.arg("--label").arg(label);
    }
    command.envs(settings.env.iter().map(|(k, v)| (k, v)));
    command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // Its log goes to the console, which error messages on the host quote.
    command.env("NO_COLOR", "1");
    let wait_fd = wait.as_ref().map(|fd| fd.as_raw_fd());
    if let Some(fd) = wait_fd {
        command.arg("--wait-for-root").arg(fd.to_string());
    }
    // Init blocks the signals it waits for; the agent, and every container
    // it starts, must not inherit that. The pipe is made close-on-exec, so
    // that no other child holds it; the agent's copy is kept open.
    // SAFETY: between fork and exec the closure only calls
    // pthread_sigmask(3) on a set built on the stack and fcntl(2) on a
    // descriptor number: both async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            if let Some(fd) = wait_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    // The agent has its own copy of the pipe's read end.
    drop(wait);
    match spawned {
        Ok(child) => {
            info!(pid = child.id(), "berth-agent serve started");
            Some(child)
        }
        Err(e) => {
            error!("cannot start berth-agent serve: {e}");
            None
        }
    }
}
