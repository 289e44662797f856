//! Builds Berth's guest image: a Linux kernel plus an initramfs whose
//! `/init` is `berth-agent`, for the `qemu` driver.
//!
//! Inputs are files, never the network: the kernel package's tree (with
//! `modules.dep` from `depmod`), a sysroot holding busybox, `mke2fs` and `nft`
//! with its libraries and the CA certificates (unpacked Debian packages),
//! and a static
//! `berth-agent`. `scripts/build-guest-image` fetches and unpacks them. The
//! same inputs give the same bytes: entries are written in path order with
//! fixed owners and times, and the arm64 kernel's gzip header carries no
//! time.
//!
//! - [`cpio`] — the `newc` archive the kernel unpacks.
//! - [`modules`] — which module files to ship, in load order, and what
//!   of each the guest does without.
//! - [`elf`] — the libraries a dynamically linked tool needs.

#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod cpio;
pub mod elf;
pub mod modules;

use cpio::{Archive, Node};

/// The manifest's file name in an image directory.
pub const MANIFEST: &str = "image.json";
/// The kernel's file name in an image directory: the kernel package's
/// compressed image (arm64's gzipped).
pub const KERNEL: &str = "vmlinuz";
/// An x86 kernel's file name instead, when it can boot uncompressed: its
/// ELF `vmlinux`, gzipped; a machine's copy of the image holds it expanded
/// as [`KERNEL_EXPANDED`] (see [`Manifest::kernel_expanded`]).
pub const KERNEL_GZ: &str = "vmlinux.gz";
/// See [`KERNEL_GZ`].
pub const KERNEL_EXPANDED: &str = "vmlinux";

/// The ELF note (owner "Xen") that holds an x86 kernel's 32-bit PVH entry
/// point, through which QEMU boots an uncompressed kernel.
const XEN_ELFNOTE_PHYS32_ENTRY: object::elf::NoteType = object::elf::NoteType(18);
/// The initramfs's file name in an image directory: a plain `newc` cpio.
/// Left uncompressed on purpose: under TCG the kernel takes about half a
/// second to inflate a gzipped one, while QEMU loads the plain bytes at
/// once.
pub const INITRAMFS: &str = "initramfs.cpio";

/// The modules a guest needs before its agent can serve: the virtio
/// devices, the data disk's file system and overlay. Init loads them
/// first (`berth.load`), each once those it needs are loaded, side by side
/// where the guest has CPUs for it, taking the first ready in this order:
/// ext4's chain is by far the longest (ext4 alone is most of the time), so
/// it goes first. A kernel that builds some of them in (Debian's cloud
/// flavour: ext4 and crc32c) ships only the others.
const BOOT_MODULES: &[&str] = &[
    "crc32c_generic",
    "ext4",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "overlay",
];

/// vsock's: init loads them after the boot modules when the VM has a vsock
/// device (`berth.vsock`).
const VSOCK_MODULES: &[&str] = &["vmw_vsock_virtio_transport"];

/// The rest: container networking, shared folders (virtiofs), input (the
/// power button). Init loads them once the agent serves (`berth.later`).
const LATER_MODULES: &[&str] = &[
    "bridge",
    "br_netfilter",
    "veth",
    // What the agent's nftables table uses: NAT chains, masquerade, and
    // the filter chain that keeps networks apart.
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "virtiofs",
    "evdev",
];

/// Dynamically linked tools from the sysroot (path there, path in the
/// image): `mke2fs` formats the data disk, `nft` writes the agent's
/// NAT table.
const TOOLS: &[(&str, &str)] = &[
    ("sbin/mke2fs", "usr/sbin/mke2fs"),
    ("usr/sbin/nft", "usr/sbin/nft"),
];

/// Where Debian's `ca-certificates` keeps the certificates it trusts, in
/// the sysroot.
const CA_CERTIFICATES: &str = "usr/share/ca-certificates/mozilla";

/// The bundle of them in the image, where TLS clients look.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The module lists init reads beside the kernel's modules.
pub const BOOT_MODULES_LIST: &str = "berth.load";
/// See [`BOOT_MODULES_LIST`].
pub const VSOCK_MODULES_LIST: &str = "berth.vsock";
/// See [`BOOT_MODULES_LIST`].
pub const LATER_MODULES_LIST: &str = "berth.later";

/// Modules that some architectures' kernels lack or build in, at boot and
/// later.
const OPTIONAL_BOOT_MODULES: &[&str] = &["crc32c_intel"];
const OPTIONAL_LATER_MODULES: &[&str] = &["button", "gpio_keys"];

/// Errors while building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel's modules are not as expected.
    #[error("kernel modules: {0}")]
    Modules(String),
    /// A program could not be read as ELF or its libraries not found.
    #[error("{0}")]
    Elf(String),
    /// The inputs are not what an image needs.
    #[error("{0}")]
    Input(String),
}

impl ImageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(action: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            action: action.into(),
            source,
        }
    }
}

/// The guest architectures Berth builds images for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit x86.
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

impl Arch {
    /// Parses `x86_64`/`amd64` or `aarch64`/`arm64`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The name as `uname -m` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's multiarch triplet.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }
}

/// One file of an image, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Its name in the image directory.
    pub file: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `image.json`: what an image directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The guest architecture.
    pub arch: Arch,
    /// The kernel's release, as `uname -r` prints it.
    pub kernel_release: String,
    /// The kernel.
    pub kernel: ImageFile,
    /// The initramfs.
    pub initramfs: ImageFile,
    /// The image's identity: sha256 over the two files' digests.
    pub digest: String,
    /// When `kernel` is a gzipped ELF kernel ([`KERNEL_GZ`]): the kernel
    /// expanded, as QEMU boots it. A kernel package's x86 `vmlinuz` inflates
    /// itself in the guest, which takes seconds under TCG; the uncompressed
    /// kernel is entered directly (PVH), at the cost of the kernel's own
    /// address randomization (done by that inflating stub). Expanded by
    /// [`Manifest::expand_kernel`] into a machine's copy of the image; the
    /// image ships it compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_expanded: Option<ImageFile>,
}

impl Manifest {
    /// Reads the manifest of the image in `dir`, without checking the files.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path)
            .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| {
            ImageError::Input(format!("{} is not an image manifest: {e}", path.display()))
        })
    }

    /// Reads and checks the manifest of the image in `dir`: both files must
    /// be there with the digests it records.
    pub fn load_verified(dir: &Path) -> Result<Self, ImageError> {
        let manifest = Self::load(dir)?;
        let path = dir.join(MANIFEST);
        for file in [&manifest.kernel, &manifest.initramfs] {
            let data = fs::read(dir.join(&file.file)).map_err(|e| {
                ImageError::io(format!("read {}", dir.join(&file.file).display()), e)
            })?;
            if sha256(&data) != file.digest {
                return Err(ImageError::Input(format!(
                    "{} does not match its digest in {}: the image is damaged; build it again",
                    dir.join(&file.file).display(),
                    path.display()
                )));
            }
        }
        Ok(manifest)
    }

    /// The kernel file QEMU boots: [`Manifest::kernel_expanded`] if there is
    /// one, else the kernel.
    pub fn boot_kernel(&self) -> &ImageFile {
        self.kernel_expanded.as_ref().unwrap_or(&self.kernel)
    }

    /// Writes [`Manifest::kernel_expanded`] (if the image has one) into the
    /// image directory `dir`, checked against its digest, from the
    /// compressed kernel there.
    pub fn expand_kernel(&self, dir: &Path) -> Result<(), ImageError> {
        let Some(expanded) = &self.kernel_expanded else {
            return Ok(());
        };
        let path = dir.join(&self.kernel.file);
        let file = fs::File::open(&path)
            .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        let mut data = Vec::with_capacity(usize::try_from(expanded.size).unwrap_or(0));
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut data)
            .map_err(|e| ImageError::io(format!("expand {}", path.display()), e))?;
        if sha256(&data) != expanded.digest {
            return Err(ImageError::Input(format!(
                "{} does not expand to the kernel {} records: the image is damaged; build it again",
                path.display(),
                dir.join(MANIFEST).display()
            )));
        }
        write_atomic(&dir.join(&expanded.file), &data)
    }
}

/// What [`build`] reads and where it writes.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The guest architecture.
    pub arch: Arch,
    /// The unpacked kernel package: `boot/vmlinuz-*`, `lib/modules/*/`.
    pub kernel_root: PathBuf,
    /// Unpacked packages with `bin/busybox`, `sbin/mke2fs` and
    /// `usr/sbin/nft`, the libraries they need, and
    /// `usr/share/ca-certificates/mozilla/*.crt`.
    pub sysroot: PathBuf,
    /// A static `berth-agent` for `arch`.
    pub agent: PathBuf,
    /// The image directory to write.
    pub out: PathBuf,
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))
}

/// The kernel release in `kernel_root/lib/modules/`: there must be one.
fn kernel_release(kernel_root: &Path) -> Result<String, ImageError> {
    let dir = kernel_root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| ImageError::io(format!("list {}", dir.display()), e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        0 => Err(ImageError::Input(format!(
            "{} holds no kernel modules",
            dir.display()
        ))),
        _ => Err(ImageError::Input(format!(
            "{} holds modules of several kernels ({}); unpack one kernel package",
            dir.display(),
            releases.join(", ")
        ))),
    }
}

/// Checks that `data` is a static ELF program (the guest has no libc for
/// anything else but the tools that bring theirs).
fn require_static(data: &[u8], what: &Path) -> Result<(), ImageError> {
    let needs = elf::needs(data, what)?;
    if needs.interpreter.is_some() || !needs.libraries.is_empty() {
        return Err(ImageError::Input(format!(
            "{} is dynamically linked ({:?}); the guest needs a static build (e.g. --target x86_64-unknown-linux-musl)",
            what.display(),
            needs.libraries
        )));
    }
    Ok(())
}

/// Builds the initramfs tree.
fn assemble(inputs: &Inputs, release: &str) -> Result<Archive, ImageError> {
    let mut archive = Archive::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "etc",
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "var/lib/berth-agent",
    ] {
        archive.add(dir, Node::Dir, 0o755);
    }
    archive.add("tmp", Node::Dir, 0o1777);
    archive.add("root", Node::Dir, 0o700);
    // The kernel opens the console for init before devtmpfs exists.
    archive.add("dev/console", Node::CharDevice(5, 1), 0o600);
    archive.add("dev/null", Node::CharDevice(1, 3), 0o666);

    let agent = read(&inputs.agent)?;
    require_static(&agent, &inputs.agent)?;
    archive.add("init", Node::File(agent), 0o755);

    let busybox_path = inputs.sysroot.join("bin/busybox");
    let busybox = read(&busybox_path)?;
    require_static(&busybox, &busybox_path)?;
    archive.add("bin/busybox", Node::File(busybox), 0o755);
    // Init installs the applet links at boot (`busybox --install -s`);
    // the shell is needed before that.
    archive.add("bin/sh", Node::Symlink("busybox".into()), 0o777);

    // The dynamically linked tools and what they need, at the paths their
    // loader looks in.
    for (tool, at) in TOOLS {
        for file in elf::closure(&inputs.sysroot, tool, inputs.arch.triplet())? {
            let data = elf::read_in_root(&inputs.sysroot, &file)?;
            let path = if file == *tool {
                (*at).to_owned()
            } else {
                file
            };
            archive.add(&path, Node::File(data), 0o755);
        }
    }
    if inputs.sysroot.join("etc/mke2fs.conf").is_file() {
        archive.add(
            "etc/mke2fs.conf",
            Node::File(read(&inputs.sysroot.join("etc/mke2fs.conf"))?),
            0o644,
        );
    }

    // The CA certificates, bundled where TLS clients look for them (as
    // Debian's update-ca-certificates would).
    let certs = ca_bundle(&inputs.sysroot.join(CA_CERTIFICATES))?;
    for dir in ["etc/ssl", "etc/ssl/certs"] {
        archive.add(dir, Node::Dir, 0o755);
    }
    archive.add(CA_BUNDLE, Node::File(certs), 0o644);

    // Kernel modules, and the list init loads in order.
    let modules_dir = inputs.kernel_root.join("lib/modules").join(release);
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_path).map_err(|e| {
        ImageError::io(
            format!(
                "read {} (run depmod on the unpacked kernel first)",
                dep_path.display()
            ),
            e,
        )
    })?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
        .map(|t| modules::builtin_names(&t))
        .unwrap_or_else(|_| BTreeSet::new());
    let deps = modules::ModuleDeps::parse(&dep_text)?;
    let boot = deps.resolve(BOOT_MODULES, OPTIONAL_BOOT_MODULES, &builtin)?;
    let vsock: Vec<String> = deps
        .resolve(VSOCK_MODULES, &[], &builtin)?
        .into_iter()
        .filter(|m| !boot.contains(m))
        .collect();
    let later: Vec<String> = deps
        .resolve(LATER_MODULES, OPTIONAL_LATER_MODULES, &builtin)?
        .into_iter()
        .filter(|m| !boot.contains(m) && !vsock.contains(m))
        .collect();
    for module in boot.iter().chain(&vsock).chain(&later) {
        if !module.ends_with(".ko") {
            return Err(ImageError::Modules(format!(
                "{module} is compressed; init loads plain .ko files only"
            )));
        }
        let data = read(&modules_dir.join(module))?;
        let data = modules::drop_load_time_sections(module, modules::strip_signature(&data))?;
        archive.add(
            &format!("lib/modules/{release}/{module}"),
            Node::File(data),
            0o644,
        );
    }
    for (name, list) in [
        (BOOT_MODULES_LIST, &boot),
        (VSOCK_MODULES_LIST, &vsock),
        (LATER_MODULES_LIST, &later),
    ] {
        let text = deps.list(list);
        archive.add(
            &format!("lib/modules/{release}/{name}"),
            Node::File(text.into_bytes()),
            0o644,
        );
    }

    archive.add(
        "etc/os-release",
        Node::File(
            format!(
                "NAME=\"Berth\"\nID=berth\nPRETTY_NAME=\"Berth guest (kernel {release})\"\nVERSION_ID=\"{}\"\n",
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes(),
        ),
        0o644,
    );
    archive.add(
        "etc/passwd",
        Node::File(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        0o644,
    );
    archive.add(
        "etc/group",
        Node::File(b"root:x:0:\ntty:x:5:\n".to_vec()),
        0o644,
    );
    archive.add(
        "etc/profile",
        Node::File(b"export PS1='\\h:\\w\\$ '\n".to_vec()),
        0o644,
    );
    Ok(archive)
}

/// Writes `data` to `path` through a temporary file and a rename, so that
/// a reader never sees half a file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ImageError::io(format!("write {}", path.display()), e)
    })
}

/// The `.crt` files in `dir` (PEM), concatenated in name order.
fn ca_bundle(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| ImageError::io(format!("read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(ImageError::io(
            format!("bundle the CA certificates in {}", dir.display()),
            io::Error::new(io::ErrorKind::NotFound, "there are none"),
        ));
    }
    let mut bundle = Vec::new();
    for name in names {
        let mut pem = read(&name)?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend(pem);
    }
    Ok(bundle)
}

/// gzip with no file name and no time in the header: the same bytes in,
/// the same bytes out.
fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    gz.finish()
}

/// The ELF kernel inside an x86 `bzImage`, if it has a PVH entry point
/// (and so can be booted uncompressed). The boot protocol's header says
/// where the compressed payload is; an xz one is inflated by `xz`, a gzip
/// or LZ4 one here, another kind is left alone.
fn x86_elf_kernel(bz_image: &[u8]) -> Result<Option<Vec<u8>>, ImageError> {
    let field = |at: usize, len: usize| bz_image.get(at..at + len);
    // "HdrS" at 0x202; protocol 2.08 (payload fields) or later.
    if field(0x202, 4) != Some(b"HdrS") {
        return Ok(None);
    }
    let u32_at = |at| field(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let version = field(0x206, 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    if version < 0x208 {
        return Ok(None);
    }
    let setup_sectors = match field(0x1f1, 1).map_or(0, |b| b[0]) {
        0 => 4,
        n => usize::from(n),
    };
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Ok(None);
    };
    let start = (setup_sectors + 1) * 512 + offset as usize;
    let Some(payload) = bz_image.get(start..start + length as usize) else {
        return Err(ImageError::Input(
            "the kernel's header points past its end".into(),
        ));
    };
    let elf = if payload.starts_with(b"\xfd7zXZ\x00") {
        inflate_xz(payload)?
    } else if payload.starts_with(&LZ4_LEGACY_MAGIC) {
        inflate_lz4_legacy(payload)?
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        let mut data = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(payload), &mut data)
            .map_err(|e| ImageError::io("inflate the kernel", e))?;
        data
    } else {
        return Ok(None);
    };
    Ok(has_pvh_entry(&elf)?.then_some(elf))
}

/// The magic number of LZ4's legacy frame, the form the kernel's build
/// writes (`lz4 -l`).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// What one block of a legacy frame holds at most, inflated.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// More than any kernel inflates to: a size beyond it is damage, and is
/// not allocated.
const KERNEL_MAX_BYTES: usize = 1 << 30;

/// A kernel payload in LZ4's legacy frame, inflated: after the magic, each
/// block is its compressed length (32 bits, little-endian) and that many
/// bytes; the kernel's build appends the inflated size (32 bits), which is
/// checked.
fn inflate_lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    let bad = |why: &str| ImageError::Input(format!("the kernel's LZ4 payload: {why}"));
    let u32_at = |data: &[u8], at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(body_end) = payload.len().checked_sub(4) else {
        return Err(bad("it is shorter than its header"));
    };
    let size = u32_at(payload, body_end).ok_or_else(|| bad("no size at its end"))?;
    if size > KERNEL_MAX_BYTES {
        return Err(bad(&format!(
            "its end says {size} bytes, more than a kernel can be; the package is damaged"
        )));
    }
    let body = &payload[..body_end];
    let mut out = vec![0u8; size];
    let (mut at, mut written) = (LZ4_LEGACY_MAGIC.len(), 0);
    while at < body.len() {
        let length = u32_at(body, at).ok_or_else(|| bad("a block's length is cut off"))?;
        let block = body
            .get(at + 4..at + 4 + length)
            .ok_or_else(|| bad("a block runs past its end"))?;
        let room = (out.len() - written).min(LZ4_LEGACY_BLOCK);
        written += lz4_flex::block::decompress_into(block, &mut out[written..written + room])
            .map_err(|e| bad(&e.to_string()))?;
        at += 4 + length;
    }
    if written != size {
        return Err(bad(&format!(
            "it inflates to {written} bytes where its end says {size}"
        )));
    }
    Ok(out)
}

/// `data` (xz) inflated by `xz -dc` (which knows the x86 branch filter the
/// kernel's build uses).
fn inflate_xz(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::io("run xz (Debian: apt-get install xz-utils)", e))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let out = std::thread::scope(|scope| {
        scope.spawn(move || {
            // xz's verdict (below) says what went wrong, if anything.
            let _ = stdin.write_all(data);
        });
        child.wait_with_output()
    })
    .map_err(|e| ImageError::io("run xz", e))?;
    if !out.status.success() {
        return Err(ImageError::Input(format!(
            "xz cannot inflate the kernel: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Whether the ELF `elf` has a PVH entry point note.
fn has_pvh_entry(elf: &[u8]) -> Result<bool, ImageError> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let bad = |e: object::Error| ImageError::Input(format!("the kernel's ELF: {e}"));
    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    for segment in header.program_headers(endian, elf).map_err(bad)? {
        let Some(mut notes) = segment.notes(endian, elf).map_err(bad)? else {
            continue;
        };
        while let Some(note) = notes.next().map_err(bad)? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether `kernel` is an uncompressed arm64 `Image` (its header's magic
/// `ARM\x64` at offset 0x38).
fn is_plain_arm64_image(kernel: &[u8]) -> bool {
    kernel.get(0x38..0x3c) == Some(b"ARM\x64")
}

/// Builds the image described by `inputs` and returns its manifest.
pub fn build(inputs: &Inputs) -> Result<Manifest, ImageError> {
    let release = kernel_release(&inputs.kernel_root)?;
    let kernel_path = inputs
        .kernel_root
        .join("boot")
        .join(format!("vmlinuz-{release}"));
    let mut kernel = read(&kernel_path)?;
    let mut kernel_name = KERNEL;
    let mut expanded = None;
    if is_plain_arm64_image(&kernel) {
        // Debian ships arm64's Image uncompressed (33 MB); QEMU loads a
        // gzipped one as well.
        kernel = gzip(&kernel).map_err(|e| ImageError::io("compress the kernel", e))?;
    } else if inputs.arch == Arch::X86_64 {
        if let Some(elf) = x86_elf_kernel(&kernel)? {
            expanded = Some(ImageFile {
                file: KERNEL_EXPANDED.to_owned(),
                digest: sha256(&elf),
                size: elf.len() as u64,
            });
            kernel = gzip(&elf).map_err(|e| ImageError::io("compress the kernel", e))?;
            kernel_name = KERNEL_GZ;
        }
    }
    let archive = assemble(inputs, &release)?;
    let mut cpio = Vec::new();
    archive
        .write_to(&mut cpio)
        .map_err(|e| ImageError::io("assemble the initramfs", e))?;

    fs::create_dir_all(&inputs.out)
        .map_err(|e| ImageError::io(format!("create {}", inputs.out.display()), e))?;
    let file = |name: &str, data: &[u8]| ImageFile {
        file: name.to_owned(),
        digest: sha256(data),
        size: data.len() as u64,
    };
    let kernel_file = file(kernel_name, &kernel);
    let initramfs_file = file(INITRAMFS, &cpio);
    let manifest = Manifest {
        arch: inputs.arch,
        kernel_release: release,
        digest: sha256(format!("{}\n{}\n", kernel_file.digest, initramfs_file.digest).as_bytes()),
        kernel: kernel_file,
        initramfs: initramfs_file,
        kernel_expanded: expanded,
    };
    // A kernel of another name from an earlier build would only confuse.
    for stale in [KERNEL, KERNEL_GZ, KERNEL_EXPANDED] {
        if stale != kernel_name {
            let _ = fs::remove_file(inputs.out.join(stale));
        }
    }
    write_atomic(&inputs.out.join(kernel_name), &kernel)?;
    write_atomic(&inputs.out.join(INITRAMFS), &cpio)?;
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Input(e.to_string()))?;
    // The manifest goes last: an image directory with one is complete.
    write_atomic(&inputs.out.join(MANIFEST), &json)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(dir: &Path, elf: &[u8]) -> Manifest {
        let gz = gzip(elf).unwrap();
        fs::write(dir.join(KERNEL_GZ), &gz).unwrap();
        let file = |name: &str, data: &[u8]| ImageFile {
            file: name.into(),
            digest: sha256(data),
            size: data.len() as u64,
        };
        Manifest {
            arch: Arch::X86_64,
            kernel_release: "test".into(),
            kernel: file(KERNEL_GZ, &gz),
            initramfs: file(INITRAMFS, b""),
            digest: "sha256:00".into(),
            kernel_expanded: Some(file(KERNEL_EXPANDED, elf)),
        }
    }

    #[test]
    fn the_kernel_expands_to_what_the_manifest_records() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_for(dir.path(), b"\x7fELF and the rest");
        manifest.expand_kernel(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join(KERNEL_EXPANDED)).unwrap(),
            b"\x7fELF and the rest"
        );
        assert_eq!(manifest.boot_kernel().file, KERNEL_EXPANDED);
    }

    #[test]
    fn a_kernel_that_expands_to_other_bytes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = manifest_for(dir.path(), b"\x7fELF one");
        manifest.kernel_expanded.as_mut().unwrap().digest = sha256(b"\x7fELF another");
        let err = manifest.expand_kernel(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!dir.path().join(KERNEL_EXPANDED).exists());
    }

    /// `blocks`, each compressed, in LZ4's legacy frame with the kernel
    /// build's size after it.
    fn lz4_legacy(blocks: &[&[u8]], size: u32) -> Vec<u8> {
        let mut frame = LZ4_LEGACY_MAGIC.to_vec();
        for block in blocks {
            let packed = lz4_flex::block::compress(block);
            frame.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            frame.extend_from_slice(&packed);
        }
        frame.extend_from_slice(&size.to_le_bytes());
        frame
    }

    #[test]
    fn an_lz4_payload_inflates_block_by_block() {
        let whole = b"\x7fELF, the first block; and the second";
        let frame = lz4_legacy(&[&whole[..24], &whole[24..]], whole.len() as u32);
        assert_eq!(inflate_lz4_legacy(&frame).unwrap(), whole);
    }

    #[test]
    fn a_damaged_lz4_payload_is_refused() {
        let whole = lz4_legacy(&[b"some kernel bytes, some kernel bytes"], 36);
        let wrong_size = lz4_legacy(&[b"some kernel bytes, some kernel bytes"], 40);
        let err = inflate_lz4_legacy(&wrong_size).unwrap_err().to_string();
        assert!(err.contains("inflates to 36 bytes"), "{err}");
        // Cut inside its block: the block's length runs past the end.
        let mut cut = whole[..whole.len() - 10].to_vec();
        cut.extend_from_slice(&36u32.to_le_bytes());
        let err = inflate_lz4_legacy(&cut).unwrap_err().to_string();
        assert!(err.contains("past its end"), "{err}");
        assert!(inflate_lz4_legacy(&LZ4_LEGACY_MAGIC).is_err());
        let huge = lz4_legacy(&[b"some kernel bytes"], u32::MAX);
        let err = inflate_lz4_legacy(&huge).unwrap_err().to_string();
        assert!(err.contains("more than a kernel can be"), "{err}");
    }

    #[test]
    fn a_kernel_without_a_setup_header_is_left_compressed() {
        assert_eq!(x86_elf_kernel(&[0; 4096]).unwrap(), None);
    }
}
