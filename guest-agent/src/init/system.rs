//! The guest's basic system: kernel file systems, modules, cgroup2, the
//! hostname, the clock.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use tracing::{info, warn};

/// The files, beside the kernel's modules, that list the modules to load in
/// order (dependencies first), one path relative to them per line: those
/// the agent needs to start, and the rest. The image builder writes them.
pub const BOOT_MODULES: &str = "berth.load";
/// See [`BOOT_MODULES`]: vsock's, loaded after the boot modules when the
/// VM has a vsock device.
pub const VSOCK_MODULES: &str = "berth.vsock";
/// See [`BOOT_MODULES`].
pub const LATER_MODULES: &str = "berth.later";

/// virtio's PCI vendor, and the device id of a (modern: there is no
/// transitional one) virtio vsock device.
const VIRTIO_PCI_VENDOR: &str = "0x1af4";
const VIRTIO_VSOCK_PCI_DEVICE: &str = "0x1053";

/// There while init does the boot's later part (see [`later_setup`]);
/// what needs its modules (container networking) waits for it to go: see
/// [`later_setup_done`].
pub const LATER_SETUP: &str = "/run/berth/later-setup";

/// There until busybox's applets are linked, the first thing of the later
/// part: all `berth ssh` waits for (see [`applets_linked`]).
const APPLETS_PENDING: &str = "/run/berth/applets-pending";

/// How long the later part waits for the agent to serve; then it is done
/// whatever the agent does.
const LATER_SETUP_WAIT: Duration = Duration::from_secs(10);

/// How long [`later_setup_done`] waits at most.
const LATER_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The niceness of the thread that does the later part: the agent
/// serving comes first.
const LATER_SETUP_NICE: i32 = 19;

/// A clock before this (2025-01-01) is surely unset: certificates would
/// not verify.
const SANE_CLOCK_SECS: u64 = 1_735_689_600;

/// Mounts /proc, /sys, /dev and the tmpfs the system needs.
pub fn mount_basics() -> io::Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mounts: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
        (
            "proc",
            "/proc",
            "proc",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666,gid=5"),
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid_nodev, Some("mode=1777")),
        (
            "mqueue",
            "/dev/mqueue",
            "mqueue",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        ("run", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        ("tmp", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
    ];
    for (source, target, fstype, flags, data) in mounts {
        fs::create_dir_all(target)?;
        mount(Some(*source), *target, Some(*fstype), *flags, *data)
            .map_err(|e| io::Error::other(format!("cannot mount {fstype} on {target}: {e}")))?;
    }
    // What a Linux system is expected to have under /dev.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        let _ = fs::remove_file(link);
        let _ = std::os::unix::fs::symlink(target, link);
    }
    fs::create_dir_all("/run/berth")?;
    Ok(())
}

/// Links busybox's applets into the usual directories (`berth ssh` gets a
/// shell with `ls`, `ps`, `uname`, …). The image ships only the binary:
/// busybox knows its own applets, whatever the architecture.
fn install_busybox() {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return;
    }
    match super::children::run(std::process::Command::new(busybox).args(["--install", "-s"])) {
        Ok(status) if super::children::succeeded(&status) => {}
        Ok(status) => warn!("busybox --install failed ({status:?})"),
        Err(e) => warn!("cannot run busybox: {e}"),
    }
}

/// Loads the modules the image lists in `list` (one of [`BOOT_MODULES`],
/// [`LATER_MODULES`]), in order, and returns the files of those that are
/// now loaded. A module that is built in or loaded already is fine (with
/// `/sys` mounted, its file is not even needed); one that fails is logged
/// and skipped (the step that needs it reports what is missing).
pub fn load_modules(list: &str) -> Vec<std::path::PathBuf> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(&release);
    let names = match fs::read_to_string(dir.join(list)) {
        Ok(names) => names,
        Err(e) => {
            warn!("no module list for kernel {release}: {e}");
            return Vec::new();
        }
    };
    let mut loaded = Vec::new();
    for line in names.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(line);
        if is_loaded(&path) {
            loaded.push(path);
            continue;
        }
        match load_module(&path) {
            Ok(()) => loaded.push(path),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => loaded.push(path),
            Err(e) => warn!("cannot load module {line}: {e}"),
        }
    }
    info!(list, loaded = loaded.len(), "kernel modules loaded");
    loaded
}

/// Deletes `files`, logging those that cannot be.
pub fn delete_files(files: &[std::path::PathBuf]) {
    for file in files {
        if let Err(e) = fs::remove_file(file) {
            warn!("cannot delete {}: {e}", file.display());
        }
    }
}

/// Whether the module in file `path` is loaded, as `/sys/module` (when
/// mounted) tells.
fn is_loaded(path: &Path) -> bool {
    let Some(stem) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = stem.split(".ko").next().unwrap_or(stem).replace('-', "_");
    Path::new("/sys/module").join(name).exists()
}

/// The part of the boot the agent does not need to start, done on a
/// thread of its own at the lowest priority once `serving` (the agent's
/// last socket) exists, so that the agent starts on a machine not busy
/// with it: busybox's applets linked (for `berth ssh`), the
/// [`LATER_MODULES`] loaded, then the power button (whose driver is among
/// them) watched. [`LATER_SETUP`] is there until it is done; call this
/// before the agent starts.
pub fn later_setup(serving: &'static Path) {
    for marker in [LATER_SETUP, APPLETS_PENDING] {
        if let Err(e) = fs::write(marker, b"") {
            warn!("cannot write {marker}: {e}");
        }
    }
    let work = || {
        install_busybox();
        let _ = fs::remove_file(APPLETS_PENDING);
        let _ = load_modules(LATER_MODULES);
        super::power::watch_button();
        let _ = fs::remove_file(LATER_SETUP);
    };
    let spawned = std::thread::Builder::new()
        .name("later-setup".into())
        .spawn(move || {
            // SAFETY: setpriority(2) with PRIO_PROCESS and a thread id sets
            // that thread's niceness (Linux); it only reads its arguments.
            unsafe {
                libc::setpriority(
                    libc::PRIO_PROCESS,
                    libc::gettid() as libc::id_t,
                    LATER_SETUP_NICE,
                );
            }
            let deadline = Instant::now() + LATER_SETUP_WAIT;
            while !serving.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            work();
        });
    if let Err(e) = spawned {
        warn!("cannot start the later part of the boot: {e}; doing it now");
        work();
    }
}

/// Waits while init still does the later part of the boot (never, where
/// the agent does not run under our init).
pub async fn later_setup_done() {
    gone(Path::new(LATER_SETUP)).await;
}

/// Waits while busybox's applets are not linked yet (never, where the
/// agent does not run under our init).
pub async fn applets_linked() {
    gone(Path::new(APPLETS_PENDING)).await;
}

/// Waits, at most [`LATER_SETUP_TIMEOUT`], while `marker` exists.
async fn gone(marker: &Path) {
    let deadline = Instant::now() + LATER_SETUP_TIMEOUT;
    while marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load_module(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let params = c"";
    nix::kmod::finit_module(file.as_fd(), params, nix::kmod::ModuleInitFlags::empty())
        .map_err(io::Error::from)
}

/// Mounts the unified cgroup hierarchy and hands its controllers down.
pub fn mount_cgroup2() -> io::Result<()> {
    let target = "/sys/fs/cgroup";
    mount(
        Some("cgroup2"),
        target,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("nsdelegate"),
    )
    .map_err(|e| io::Error::other(format!("cannot mount cgroup2: {e}")))?;
    let controllers = fs::read_to_string(Path::new(target).join("cgroup.controllers"))?;
    let enable: String = controllers
        .split_whitespace()
        .map(|c| format!("+{c} "))
        .collect();
    fs::write(
        Path::new(target).join("cgroup.subtree_control"),
        enable.trim(),
    )
    .map_err(|e| io::Error::other(format!("cannot enable cgroup controllers: {e}")))
}

/// Sets the kernel's hostname and `/etc/hostname`, `/etc/hosts`.
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        warn!("cannot set the hostname: {e}");
    }
    let _ = fs::create_dir_all("/etc");
    let _ = fs::write("/etc/hostname", format!("{name}\n"));
    let _ = fs::write(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n"),
    );
}

/// Warns when the clock (read from the VM's RTC at boot) is surely wrong.
pub fn check_clock() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now < SANE_CLOCK_SECS {
        warn!(
            now,
            "the clock is not set; TLS certificates will not verify"
        );
    }
}

/// Whether the VM has a virtio vsock device (bound to a driver or not).
pub fn vsock_device_present() -> bool {
    let read = |dir: &Path, name: &str| {
        fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    fs::read_dir("/sys/bus/pci/devices")
        .map(|devices| {
            devices.flatten().any(|d| {
                read(&d.path(), "vendor") == VIRTIO_PCI_VENDOR
                    && read(&d.path(), "device") == VIRTIO_VSOCK_PCI_DEVICE
            })
        })
        .unwrap_or(false)
}

/// Whether a virtio vsock device is bound, so that vsock can be served.
pub fn has_vsock() -> bool {
    Path::new("/dev/vsock").exists()
        && fs::read_dir("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport")
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
            })
            .unwrap_or(false)
}
