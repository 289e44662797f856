//! The persistent data disk: found by its serial, formatted ext4 on first
//! boot (only when it is blank: a disk holding anything else is never
//! formatted), mounted at the agent's root so that images and containers
//! survive a restart of the VM.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, MsFlags};

use super::cmdline::Settings;

/// Where ext4's superblock magic sits on the device, and its value.
const EXT4_MAGIC_OFFSET: usize = 1024 + 56;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];

/// How much of the start of a disk must be zero for it to count as blank.
const BLANK_PROBE: usize = 64 << 10;

/// The data disk's mount options, besides `noatime`.
const MOUNT_OPTIONS: &str = "no_prefetch_block_bitmaps";

/// mke2fs in the image (with the libraries it needs).
const MKE2FS: &str = "/usr/sbin/mke2fs";

/// Mounts the data disk at `target`, formatting a blank one first. Returns
/// false when the VM has no data disk.
pub fn mount_data(settings: &Settings, target: &Path) -> io::Result<bool> {
    let Some(device) = find_disk(&settings.disk_serial)? else {
        return Ok(false);
    };
    let mut head = vec![0u8; BLANK_PROBE];
    fs::File::open(&device)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| io::Error::other(format!("cannot read {}: {e}", device.display())))?;
    if head[EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2] != EXT4_MAGIC {
        if head.iter().any(|b| *b != 0) {
            return Err(io::Error::other(format!(
                "{} holds something that is not an ext4 file system; refusing to format it",
                device.display()
            )));
        }
        format(&device)?;
    }
    fs::create_dir_all(target)?;
    mount(
        Some(device.as_path()),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        // Not every block bitmap read in the background of each boot (what
        // ext4 does by default): each is read when its group is first
        // allocated from, which on a disk this size is a handful.
        Some(MOUNT_OPTIONS),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "cannot mount {} on {}: {e}",
            device.display(),
            target.display()
        ))
    })?;
    tracing::info!(device = %device.display(), target = %target.display(), "data disk mounted");
    Ok(true)
}

/// The block device whose serial is `serial`.
fn find_disk(serial: &str) -> io::Result<Option<PathBuf>> {
    let Ok(blocks) = fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    for block in blocks.flatten() {
        let found = fs::read_to_string(block.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Ok(Some(Path::new("/dev").join(block.file_name())));
        }
    }
    Ok(None)
}

fn format(device: &Path) -> io::Result<()> {
    tracing::info!(device = %device.display(), "formatting the data disk (first boot)");
    let out = Command::new(MKE2FS)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "berth-data",
            // The inode tables are zeroed now (the disk is thin: that only
            // marks its clusters zero), not by the kernel's lazy-init thread
            // in the background of the next boots, where it competes with
            // the boot for the CPU and the disk. The journal needs no
            // zeroing on a blank disk.
            "-E",
            "lazy_itable_init=0,lazy_journal_init=1",
        ])
        .arg(device)
        .output()
        .map_err(|e| io::Error::other(format!("cannot run {MKE2FS}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mke2fs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
