//! The `qemu` driver: the container host is a lightweight VM booted from
//! Berth's guest image (a kernel and an initramfs whose `/init` is
//! `berth-agent`), with a persistent qcow2 data disk.
//!
//! ```text
//! <machine dir>/image/         the guest image, copied at create (image.json, the kernel,
//!                              initramfs.cpio; an x86 kernel also expanded, as vmlinux)
//! <machine dir>/disk.qcow2     the data disk (ext4, formatted by the guest on first boot)
//! <machine dir>/qemu.pid       QEMU's pid while it runs
//! <machine dir>/qmp.sock       QMP: state, powerdown, quit
//! <machine dir>/link.sock      the virtio-serial port to the agent (QEMU listens)
//! <machine dir>/console.log    the guest's serial console, since its last start
//! <machine dir>/agent.sock     the agent's gRPC, served by the supervisor
//! <machine dir>/docker.sock    the Docker API, served by the supervisor
//! ```
//!
//! QEMU runs daemonized and outlives `berth`; the supervisor (see
//! [`crate::supervisor`]) holds the link and serves the sockets. A boot
//! watchdog bounds every start: an agent that does not answer in time ends
//! the VM and the error quotes the console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_guest_image as berth_image;
use berth_proto::link::Address;
use serde::{Deserialize, Serialize};

use super::{
    DockerEndpoint, Driver, DriverError, Endpoint, EngineOptions, MachineContext, MachineState,
};

/// The driver's name.
pub const NAME: &str = "qemu";

/// The environment variable naming the guest image directory, overriding
/// the search next to `berth`.
pub const IMAGE_ENV: &str = "BERTH_GUEST_IMAGE";

/// The environment variable naming the QEMU program to run.
pub const QEMU_ENV: &str = "BERTH_QEMU";

/// The name of the virtio-serial port the agent listens on (the guest
/// looks for it by this name).
pub const LINK_PORT_NAME: &str = "org.berth.agent.0";

/// The data disk's serial, by which the guest finds it.
const DISK_SERIAL: &str = "berth-data";

/// The kernel's own parameters, for every machine: a quiet console (the
/// agent's log is what is read there), a panic that ends QEMU at once (the
/// boot watchdog reports it) rather than a hang, and no self-tests of the
/// kernel's crypto algorithms as each registers. Those tests check the
/// kernel's implementations against known answers (no key or input of the
/// machine's is involved), and took a quarter to half a second of every
/// boot under TCG; a kernel in FIPS mode runs them regardless.
const KERNEL_PARAMETERS: &str = "quiet loglevel=3 panic=-1 cryptomgr.notests";

/// How long a graceful stop may take: the agent stops its containers,
/// syncs and powers off.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long QEMU may take to exit after `quit` or SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many console lines a failed start quotes.
const CONSOLE_TAIL_LINES: usize = 12;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// The platform's own where it is usable (KVM on Linux, HVF on macOS,
    /// WHPX on Windows), TCG otherwise.
    #[default]
    Auto,
    /// Linux KVM.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// Windows Hypervisor Platform.
    Whpx,
    /// QEMU's emulation: slow, works everywhere.
    Tcg,
}

impl Accel {
    /// Parses `--qemu-accel`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "hvf" => Some(Accel::Hvf),
            "whpx" => Some(Accel::Whpx),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// The name QEMU's `-accel` takes.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerator `Auto` means on this machine.
    pub fn resolve(self) -> Accel {
        if self != Accel::Auto {
            return self;
        }
        if cfg!(target_os = "linux") {
            let usable = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            if usable {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        } else if cfg!(target_os = "macos") {
            Accel::Hvf
        } else if cfg!(windows) {
            Accel::Whpx
        } else {
            Accel::Tcg
        }
    }
}

/// Settings of a qemu machine, as saved in `machine.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QemuConfig {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// The data disk's size in GiB.
    pub disk_size_gb: u32,
    /// The accelerator asked for.
    pub accel: Accel,
    /// How long a start may take until the agent answers, in seconds.
    pub boot_timeout_secs: u64,
    /// How the engine in the guest is set up.
    #[serde(default)]
    pub engine: EngineOptions,
    /// The guest image's digest, recorded at create.
    #[serde(default)]
    pub image_digest: String,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            cpus: 2,
            memory_mb: 2048,
            disk_size_gb: 20,
            accel: Accel::Auto,
            boot_timeout_secs: 120,
            engine: EngineOptions::default(),
            image_digest: String::new(),
        }
    }
}

/// Drives a QEMU VM.
#[derive(Debug)]
pub struct QemuDriver {
    config: QemuConfig,
    context: MachineContext,
}

/// Paths of a machine's files.
#[derive(Debug, Clone)]
pub struct Files {
    /// The machine's directory.
    pub dir: PathBuf,
}

impl Files {
    /// The guest image copy.
    pub fn image(&self) -> PathBuf {
        self.dir.join("image")
    }
    /// The data disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    /// QEMU's pid file.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// QMP's socket.
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// The virtio-serial link's socket.
    pub fn link(&self) -> PathBuf {
        self.dir.join("link.sock")
    }
    /// The serial console's log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The agent's gRPC, as the supervisor serves it.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    /// The Docker API, as the supervisor serves it.
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
    /// The supervisor's lock (held while it runs) and pid.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.dir.join("supervisor.lock")
    }
    /// The supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
}

impl QemuDriver {
    /// The driver for the machine in `context`.
    pub fn new(config: QemuConfig, context: MachineContext) -> Self {
        QemuDriver { config, context }
    }

    fn files(&self) -> Files {
        Files {
            dir: self.context.dir.clone(),
        }
    }

    /// The kernel command line for this machine.
    fn kernel_cmdline(&self) -> String {
        let mut line = format!(
            "console={} {KERNEL_PARAMETERS} berth.hostname={} berth.disk={DISK_SERIAL}",
            guest_platform().console,
            self.context.name
        );
        for word in self.config.engine.kernel_words() {
            line.push(' ');
            line.push_str(&word);
        }
        line
    }

    /// QEMU's command line for this machine, booting the files `image`
    /// names in the machine's image directory.
    fn qemu_args(&self, accel: Accel, image: &berth_image::Manifest) -> Vec<String> {
        let f = self.files();
        let p = |path: PathBuf| path.display().to_string();
        vec![
            "-name".into(),
            format!("berth-{}", self.context.name),
            "-machine".into(),
            guest_platform().machine.into(),
            "-accel".into(),
            match accel {
                // One host thread per vCPU where the guest allows it.
                Accel::Tcg => "tcg,thread=multi".into(),
                other => other.name().into(),
            },
            "-cpu".into(),
            if accel == Accel::Tcg {
                guest_platform().tcg_cpu
            } else {
                "host"
            }
            .into(),
            "-smp".into(),
            self.config.cpus.to_string(),
            "-m".into(),
            format!("{}M", self.config.memory_mb),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-daemonize".into(),
            "-pidfile".into(),
            p(f.pid()),
            "-kernel".into(),
            p(f.image().join(&image.boot_kernel().file)),
            "-initrd".into(),
            p(f.image().join(&image.initramfs.file)),
            "-append".into(),
            self.kernel_cmdline(),
            "-chardev".into(),
            format!("file,id=console,path={}", p(f.console())),
            "-serial".into(),
            "chardev:console".into(),
            "-device".into(),
            // Room for the one port the link needs (number 0 is kept for a
            // console): the default of 31 has the guest's driver set up 64
            // queues, each with its interrupt, at every boot.
            "virtio-serial-pci,max_ports=2".into(),
            "-chardev".into(),
            format!("socket,id=link,path={},server=on,wait=off", p(f.link())),
            "-device".into(),
            format!("virtserialport,chardev=link,name={LINK_PORT_NAME}"),
            "-drive".into(),
            format!(
                "file={},if=none,id=data,format=qcow2,discard=unmap",
                p(f.disk())
            ),
            "-device".into(),
            format!("virtio-blk-pci,drive=data,serial={DISK_SERIAL}"),
            "-netdev".into(),
            "user,id=net0".into(),
            "-device".into(),
            // No option ROM: the kernel is booted directly, never from
            // the network, and the firmware would run iPXE's at each boot.
            "virtio-net-pci,netdev=net0,romfile=".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(f.qmp())),
        ]
    }

    fn console_tail(&self) -> String {
        tail(&self.files().console(), CONSOLE_TAIL_LINES)
    }
}

/// The guest architecture matching this host.
fn guest_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// What differs between the guest architectures' virtual machines.
struct GuestPlatform {
    /// QEMU's machine type.
    machine: &'static str,
    /// The kernel's name for the first serial port.
    console: &'static str,
    /// QEMU's CPU model under TCG: everything TCG emulates, less what
    /// makes the guest slower there. On x86 that is ERMS: with it the
    /// kernel copies and clears memory with `rep movsb`/`rep stosb`, which
    /// TCG runs a byte at a time; without it, eight (`rep movsq`). That
    /// took a quarter of a second off each boot (the initramfs's unpacking
    /// is such copies) and speeds every copy the guest kernel makes.
    tcg_cpu: &'static str,
}

fn guest_platform() -> GuestPlatform {
    if cfg!(target_arch = "aarch64") {
        GuestPlatform {
            machine: "virt",
            console: "ttyAMA0",
            tcg_cpu: "max",
        }
    } else {
        GuestPlatform {
            machine: "q35",
            console: "ttyS0",
            tcg_cpu: "max,erms=off",
        }
    }
}

/// The QEMU program for the guest architecture: `$BERTH_QEMU`, else
/// `qemu-system-ARCH` on `PATH`.
fn find_qemu() -> Result<PathBuf, DriverError> {
    if let Some(path) = std::env::var_os(QEMU_ENV) {
        return Ok(PathBuf::from(path));
    }
    let name = format!(
        "qemu-system-{}{}",
        guest_arch(),
        std::env::consts::EXE_SUFFIX
    );
    super::find_on_path(&name).ok_or_else(|| {
        DriverError::PreCreate(format!(
            "{name} was not found on PATH: install QEMU (Debian: apt-get install qemu-system-x86; \
             macOS: brew install qemu) or set {QEMU_ENV}"
        ))
    })
}

/// The guest image directory: `$BERTH_GUEST_IMAGE`, else `guest-image/ARCH`
/// beside `berth` or one level up (a cargo target directory), else
/// `share/berth/guest-image/ARCH` of the installation.
pub fn find_image() -> Result<PathBuf, DriverError> {
    if let Some(dir) = std::env::var_os(IMAGE_ENV) {
        let dir = PathBuf::from(dir);
        return if dir.join(berth_image::MANIFEST).is_file() {
            Ok(dir)
        } else {
            Err(DriverError::PreCreate(format!(
                "{IMAGE_ENV}={} holds no guest image ({} is missing)",
                dir.display(),
                berth_image::MANIFEST
            )))
        };
    }
    let arch = guest_arch();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned));
    let candidates = exe_dir.iter().flat_map(|d| {
        [
            d.join("guest-image").join(arch),
            d.join("../guest-image").join(arch),
            d.join("../share/berth/guest-image").join(arch),
        ]
    });
    for dir in candidates {
        if dir.join(berth_image::MANIFEST).is_file() {
            return Ok(dir);
        }
    }
    Err(DriverError::PreCreate(format!(
        "no guest image for {arch}: build it with scripts/build-guest-image, or set {IMAGE_ENV}"
    )))
}

/// The last `lines` non-empty lines of a file, joined with newlines.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n  ");
            if tail.is_empty() {
                "(the console is empty: the kernel printed nothing)".to_owned()
            } else {
                format!("  {tail}")
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// What to suggest when a VM does not come up with `accel`.
fn boot_hint(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "TCG is slow: a loaded machine may need a longer --qemu-boot-timeout",
        _ => "the accelerator may not work here (e.g. nested virtualization): try --qemu-accel tcg",
    }
}

#[async_trait::async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_create_check(&self) -> Result<(), DriverError> {
        platform::supported()?;
        let files = self.files();
        super::check_socket_paths(&[
            files.link(),
            files.qmp(),
            files.agent_socket(),
            files.docker_socket(),
        ])?;
        if self.config.cpus == 0 || self.config.memory_mb < 256 || self.config.disk_size_gb == 0 {
            return Err(DriverError::PreCreate(
                "a qemu machine needs at least 1 CPU, 256 MB of memory and a 1 GB disk".into(),
            ));
        }
        find_qemu()?;
        super::find_on_path(&format!("qemu-img{}", std::env::consts::EXE_SUFFIX)).ok_or_else(
            || {
                DriverError::PreCreate(
                    "qemu-img was not found on PATH: install QEMU's tools (Debian: qemu-utils)"
                        .into(),
                )
            },
        )?;
        let image = find_image()?;
        platform::verify_image(&image)?;
        let accel = self.config.accel.resolve();
        if accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
            return Err(DriverError::PreCreate(
                "--qemu-accel kvm needs /dev/kvm, which this machine lacks: use --qemu-accel tcg"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn create(&self) -> Result<(), DriverError> {
        let files = self.files();
        let image = find_image()?;
        platform::copy_image(&image, &files.image())?;
        platform::make_disk(&files.disk(), self.config.disk_size_gb).await?;
        self.start().await
    }

    async fn start(&self) -> Result<(), DriverError> {
        let files = self.files();
        let accel = self.config.accel.resolve();
        if !platform::qemu_running(&files)? {
            let qemu = find_qemu()?;
            let image = berth_image::Manifest::load(&files.image()).map_err(|e| {
                DriverError::io(
                    "read the machine's guest image",
                    std::io::Error::other(e.to_string()),
                )
            })?;
            platform::launch(&qemu, &self.qemu_args(accel, &image), &files).await?;
        }
        platform::ensure_supervisor(&files).await?;
        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        if let Err(e) = platform::wait_ready(&files, timeout).await {
            // The watchdog: a VM that does not come up is ended, never
            // left spinning.
            let console = self.console_tail();
            let _ = platform::kill(&files, KILL_TIMEOUT).await;
            return Err(DriverError::BootFailed {
                reason: e.to_string(),
                console,
                hint: boot_hint(accel).to_owned(),
            });
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), DriverError> {
        platform::stop(&self.files(), STOP_TIMEOUT, KILL_TIMEOUT).await
    }

    async fn kill(&self) -> Result<(), DriverError> {
        platform::kill(&self.files(), KILL_TIMEOUT).await
    }

    async fn remove(&self) -> Result<(), DriverError> {
        platform::kill(&self.files(), KILL_TIMEOUT).await
    }

    async fn state(&self) -> Result<MachineState, DriverError> {
        platform::state(&self.files()).await
    }

    async fn ip(&self) -> Result<String, DriverError> {
        // QEMU's user network is private to the VM; what it publishes, the
        // supervisor forwards to this machine's loopback.
        Ok("127.0.0.1".to_owned())
    }

    fn endpoint(&self) -> Endpoint {
        let files = self.files();
        Endpoint {
            agent: Address::Unix(files.agent_socket()),
            docker: DockerEndpoint {
                url: format!("unix://{}", files.docker_socket().display()),
                tls: false,
            },
            ssh: None,
        }
    }
}

/// Whether QEMU runs for the machine whose files are `files` (the
/// supervisor ends when it does not).
#[cfg(unix)]
pub(crate) fn qemu_running(files: &Files) -> bool {
    platform::qemu_running(files).unwrap_or(false)
}

#[cfg(unix)]
mod platform;

#[cfg(not(unix))]
#[path = "qemu/unsupported.rs"]
mod platform;

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(config: QemuConfig) -> QemuDriver {
        QemuDriver::new(
            config,
            MachineContext {
                name: "dev".into(),
                dir: "/m/dev".into(),
            },
        )
    }

    fn image() -> berth_image::Manifest {
        let file = |name: &str| berth_image::ImageFile {
            file: name.into(),
            digest: "sha256:00".into(),
            size: 1,
        };
        berth_image::Manifest {
            arch: berth_image::Arch::X86_64,
            kernel_release: "6.1.0".into(),
            kernel: file("vmlinuz"),
            initramfs: file("initramfs.cpio"),
            digest: "sha256:00".into(),
            kernel_expanded: None,
        }
    }

    #[test]
    fn an_expanded_kernel_is_the_one_booted() {
        let mut image = image();
        image.kernel.file = "vmlinux.gz".into();
        image.kernel_expanded = Some(berth_image::ImageFile {
            file: "vmlinux".into(),
            digest: "sha256:01".into(),
            size: 2,
        });
        let args = driver(QemuConfig::default()).qemu_args(Accel::Tcg, &image);
        let kernel = args.iter().position(|a| a == "-kernel").unwrap();
        assert_eq!(args[kernel + 1], "/m/dev/image/vmlinux");
    }

    #[test]
    fn command_line_names_every_part() {
        let d = driver(QemuConfig {
            engine: EngineOptions {
                insecure_registries: vec!["10.0.2.2:5000".into()],
                registry_mirrors: vec![],
                labels: vec!["tier=dev".into()],
                env: vec!["HTTP_PROXY=http://p:3128".into()],
            },
            ..QemuConfig::default()
        });
        let args = d.qemu_args(Accel::Tcg, &image()).join(" ");
        for part in [
            "-accel tcg,thread=multi",
            "-cpu max",
            "-m 2048M",
            "-smp 2",
            "-kernel /m/dev/image/vmlinuz",
            "-initrd /m/dev/image/initramfs.cpio",
            "socket,id=link,path=/m/dev/link.sock,server=on,wait=off",
            "virtserialport,chardev=link,name=org.berth.agent.0",
            "file=/m/dev/disk.qcow2,if=none",
            "serial=berth-data",
            "-qmp unix:/m/dev/qmp.sock,server=on,wait=off",
            "-daemonize -pidfile /m/dev/qemu.pid",
        ] {
            assert!(args.contains(part), "{part} missing from {args}");
        }
        // Under TCG, x86 guests are told of no ERMS (see tcg_cpu).
        let cpu = format!("-cpu {} ", guest_platform().tcg_cpu);
        assert!(args.contains(&cpu), "{cpu} missing from {args}");
        assert_eq!(
            cfg!(target_arch = "x86_64"),
            guest_platform().tcg_cpu == "max,erms=off"
        );
        assert!(d
            .kernel_cmdline()
            .contains("quiet loglevel=3 panic=-1 cryptomgr.notests "));
        assert!(d.kernel_cmdline().contains(
            "berth.hostname=dev berth.disk=berth-data berth.insecure_registry=10.0.2.2:5000 \
             berth.label=tier=dev berth.env=HTTP_PROXY=http://p:3128"
        ));
        assert!(driver(QemuConfig::default())
            .qemu_args(Accel::Kvm, &image())
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }

    #[test]
    fn accel_names_round_trip() {
        for a in [Accel::Auto, Accel::Kvm, Accel::Hvf, Accel::Whpx, Accel::Tcg] {
            assert_eq!(Accel::parse(a.name()), Some(a));
        }
        assert_eq!(Accel::parse("xen"), None);
        assert_eq!(Accel::Tcg.resolve(), Accel::Tcg);
        assert_ne!(Accel::Auto.resolve(), Accel::Auto);
    }

    #[test]
    fn the_hint_depends_on_the_accelerator() {
        assert!(boot_hint(Accel::Kvm).contains("--qemu-accel tcg"));
        assert!(boot_hint(Accel::Tcg).contains("--qemu-boot-timeout"));
    }
}
