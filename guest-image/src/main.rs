//! `berth-guest-image`: builds a guest image directory from unpacked
//! packages and a static agent. See the library docs for the inputs.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_guest_image::{build, Arch, Inputs};
use clap::Parser;

/// Build Berth's guest image (kernel + initramfs with berth-agent as /init).
#[derive(Debug, Parser)]
#[command(name = "berth-guest-image", version, about)]
struct Cli {
    /// Guest architecture: x86_64 or aarch64.
    #[arg(long, value_parser = parse_arch)]
    arch: Arch,
    /// The unpacked kernel package (boot/vmlinuz-*, lib/modules/*/modules.dep).
    #[arg(long, value_name = "DIR")]
    kernel_root: PathBuf,
    /// Unpacked packages holding bin/busybox, sbin/mke2fs and usr/sbin/nft with their libraries.
    #[arg(long, value_name = "DIR")]
    sysroot: PathBuf,
    /// A static berth-agent built for the guest architecture.
    #[arg(long, value_name = "FILE")]
    agent: PathBuf,
    /// The image directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::parse(s).ok_or_else(|| format!("unknown architecture {s:?}; use x86_64 or aarch64"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let inputs = Inputs {
        arch: cli.arch,
        kernel_root: cli.kernel_root,
        sysroot: cli.sysroot,
        agent: cli.agent,
        out: cli.out,
    };
    match build(&inputs) {
        Ok(manifest) => {
            println!(
                "{} image for kernel {} in {}",
                manifest.arch.name(),
                manifest.kernel_release,
                inputs.out.display()
            );
            println!(
                "  {:<14} {:>10} bytes  {}",
                manifest.kernel.file, manifest.kernel.size, manifest.kernel.digest
            );
            if let Some(expanded) = &manifest.kernel_expanded {
                println!(
                    "  {:<14} {:>10} bytes  {}  (expanded in each machine, booted as is)",
                    expanded.file, expanded.size, expanded.digest
                );
            }
            println!(
                "  {:<14} {:>10} bytes  {}",
                manifest.initramfs.file, manifest.initramfs.size, manifest.initramfs.digest
            );
            println!("  image digest {}", manifest.digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth-guest-image: {e}");
            ExitCode::FAILURE
        }
    }
}
