//! The guest's basic system: kernel file systems, modules, cgroup2, the
//! hostname, the clock.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use tracing::{debug, info, warn};

/// The files, beside the kernel's modules, that list the modules to load,
/// dependencies first, one path relative to them per line with the paths
/// it needs (see [`parse_list`]): those the agent needs to start, and the
/// rest. The image builder writes them.
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
/// [`LATER_MODULES`]) on up to `workers` threads, each once the modules it
/// needs are loaded, and returns the files of those that are now loaded. A
/// module that is built in or loaded already is fine (with `/sys` mounted,
/// its file is not even needed); one that fails is logged and skipped (the
/// step that needs it reports what is missing).
pub fn load_modules(list: &str, workers: usize) -> Vec<PathBuf> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(&release);
    let text = match fs::read_to_string(dir.join(list)) {
        Ok(text) => text,
        Err(e) => {
            warn!("no module list for kernel {release}: {e}");
            return Vec::new();
        }
    };
    let entries = parse_list(&text, &dir);
    let outcomes = load_all(&entries, workers, |path| {
        if is_loaded(path) {
            return true;
        }
        let started = Instant::now();
        match load_module(path) {
            Ok(()) => {
                debug!(module = %path.display(), took = ?started.elapsed(), "module loaded");
                true
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => true,
            Err(e) => {
                warn!("cannot load module {}: {e}", path.display());
                false
            }
        }
    });
    let loaded: Vec<PathBuf> = entries
        .into_iter()
        .zip(outcomes)
        .filter_map(|(entry, loaded)| loaded.then_some(entry.path))
        .collect();
    info!(list, loaded = loaded.len(), "kernel modules loaded");
    loaded
}

/// How many threads load the boot modules: one per CPU, as many as the
/// module lists can keep busy.
pub fn module_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A module of a list: its file, and the entries before it that it needs.
#[derive(Debug)]
struct Entry {
    path: PathBuf,
    needs: Vec<usize>,
}

/// A module list as the image writes it: `file: files it needs` per line
/// (`modules.dep`'s form), dependencies first. What a line needs from
/// outside the list was loaded before it. A line without `:` (a bare file)
/// needs every line before it.
fn parse_list(text: &str, dir: &Path) -> Vec<Entry> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (file, needs) = match line.split_once(':') {
            Some((file, deps)) => (
                file.trim(),
                deps.split_whitespace()
                    .filter_map(|dep| index.get(dep).copied())
                    .collect(),
            ),
            None => (line, (0..entries.len()).collect()),
        };
        index.insert(file, entries.len());
        entries.push(Entry {
            path: dir.join(file),
            needs,
        });
    }
    entries
}

/// Runs `load` for every entry on up to `workers` threads (this one among
/// them), each entry once all it needs are done, whether they loaded or
/// not (what needs a module that failed fails on its own, and says so).
/// Returns what `load` said for each.
fn load_all(entries: &[Entry], workers: usize, load: impl Fn(&Path) -> bool + Sync) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Waiting,
        Loading,
        Done(bool),
    }
    let states = Mutex::new(vec![State::Waiting; entries.len()]);
    let changed = Condvar::new();
    let lock = || states.lock().unwrap_or_else(PoisonError::into_inner);
    let work = || loop {
        let mut state = lock();
        let next = loop {
            // Entries need only entries before them: the first one waiting
            // has nothing waiting before it, so this never waits forever.
            let ready = (0..entries.len()).find(|&i| {
                state[i] == State::Waiting
                    && entries[i]
                        .needs
                        .iter()
                        .all(|&d| matches!(state[d], State::Done(_)))
            });
            if ready.is_some() || !state.contains(&State::Waiting) {
                break ready;
            }
            state = changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        };
        let Some(i) = next else { return };
        state[i] = State::Loading;
        drop(state);
        let loaded = load(&entries[i].path);
        lock()[i] = State::Done(loaded);
        changed.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 1..workers.max(1) {
            // One that cannot start leaves its share to the others.
            let _ = std::thread::Builder::new()
                .name("modules".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
    states
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .map(|s| s == State::Done(true))
        .collect()
}

/// Deletes `files`, logging those that cannot be.
pub fn delete_files(files: &[PathBuf]) {
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
/// with it: the `spent` files deleted (the boot modules'), busybox's
/// applets linked (for `berth ssh`), the [`LATER_MODULES`] loaded, then the
/// power button (whose driver is among them) watched. [`LATER_SETUP`] is
/// there until it is done; call this before the agent starts.
pub fn later_setup(serving: &'static Path, spent: Vec<PathBuf>) {
    for marker in [LATER_SETUP, APPLETS_PENDING] {
        if let Err(e) = fs::write(marker, b"") {
            warn!("cannot write {marker}: {e}");
        }
    }
    let work = |spent: &[PathBuf]| {
        delete_files(spent);
        install_busybox();
        let _ = fs::remove_file(APPLETS_PENDING);
        // One at a time: the agent comes first.
        let _ = load_modules(LATER_MODULES, 1);
        super::power::watch_button();
        let _ = fs::remove_file(LATER_SETUP);
    };
    let spent = std::sync::Arc::new(spent);
    let spawned = std::thread::Builder::new()
        .name("later-setup".into())
        .spawn({
            let spent = spent.clone();
            move || {
                // SAFETY: setpriority(2) with PRIO_PROCESS and a thread id
                // sets that thread's niceness (Linux); it only reads its
                // arguments.
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
                work(&spent);
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the later part of the boot: {e}; doing it now");
        work(&spent);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LIST: &str = "kernel/virtio_ring.ko:\n\
        kernel/virtio.ko:\n\
        kernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko\n\
        kernel/crc16.ko:\n\
        kernel/jbd2.ko: kernel/crc16.ko kernel/from_an_earlier_list.ko\n\
        kernel/ext4.ko: kernel/jbd2.ko kernel/crc16.ko\n\
        kernel/overlay.ko:\n";

    #[test]
    fn lists_say_what_each_module_needs_from_the_list() {
        let entries = parse_list(LIST, Path::new("/lib/modules/6.1"));
        let needs: Vec<(&str, &[usize])> = entries
            .iter()
            .map(|e| (e.path.to_str().unwrap(), e.needs.as_slice()))
            .collect();
        assert_eq!(
            needs[2],
            ("/lib/modules/6.1/kernel/virtio_blk.ko", &[0, 1][..])
        );
        // What comes from outside the list is not waited for.
        assert_eq!(needs[4], ("/lib/modules/6.1/kernel/jbd2.ko", &[3][..]));
        assert_eq!(needs[6], ("/lib/modules/6.1/kernel/overlay.ko", &[][..]));
        // A bare line needs all before it.
        let bare = parse_list("a.ko:\nb.ko:\nc.ko\n", Path::new("/m"));
        assert_eq!(bare[2].needs, vec![0, 1]);
    }

    #[test]
    fn modules_load_side_by_side_only_after_what_they_need() {
        let entries = parse_list(LIST, Path::new("/m"));
        for workers in [1, 2, 4] {
            let done = Mutex::new(Vec::<PathBuf>::new());
            let at_once = AtomicUsize::new(0);
            let most_at_once = AtomicUsize::new(0);
            let outcomes = load_all(&entries, workers, |path| {
                let entry = entries.iter().find(|e| e.path == path).unwrap();
                for &need in &entry.needs {
                    assert!(
                        done.lock().unwrap().contains(&entries[need].path),
                        "{} started before {}",
                        path.display(),
                        entries[need].path.display()
                    );
                }
                let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                if workers > 1 && (path.ends_with("virtio.ko") || path.ends_with("virtio_ring.ko"))
                {
                    // Needing nothing, the first two meet while both load.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while most_at_once.load(Ordering::SeqCst) < 2 {
                        assert!(Instant::now() < deadline, "{} loaded alone", path.display());
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                at_once.fetch_sub(1, Ordering::SeqCst);
                done.lock().unwrap().push(path.to_owned());
                !path.ends_with("crc16.ko")
            });
            assert_eq!(done.lock().unwrap().len(), entries.len());
            // A failure is reported; what needs it is still tried.
            assert_eq!(outcomes, vec![true, true, true, false, true, true, true]);
            let most = most_at_once.load(Ordering::SeqCst);
            assert!(most <= workers, "{most} at once with {workers} workers");
        }
    }
}
