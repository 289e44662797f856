//! What the agent reports about the host it runs on.
//!
//! Read from the kernel (`uname`, `sysinfo`, `statvfs`) and from
//! `/etc/os-release`; nothing here changes the host.

use std::fs;
use std::path::Path;

/// A failure to read one fact about the host.
#[derive(Debug, thiserror::Error)]
pub enum HostInfoError {
    /// A system call failed.
    #[error("cannot read {what}: {source}")]
    Sys {
        /// Which fact was being read.
        what: &'static str,
        /// The kernel's answer.
        source: nix::Error,
    },
}

/// Facts about the host, as reported by `Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// PRETTY_NAME from os-release, or the kernel's system name.
    pub os: String,
    /// Machine architecture (`uname -m`).
    pub arch: String,
    /// CPUs this process may run on.
    pub cpus: u32,
    /// Total RAM in bytes.
    pub memory_bytes: u64,
    /// Size of the file system holding the storage root, in bytes.
    pub storage_total_bytes: u64,
    /// Space available to the agent there, in bytes.
    pub storage_free_bytes: u64,
    /// Seconds since boot.
    pub uptime_seconds: u64,
    /// The host's name.
    pub hostname: String,
}

impl HostInfo {
    /// Reads the facts; `storage_root` must exist.
    pub fn gather(storage_root: &Path) -> Result<Self, HostInfoError> {
        let uts = nix::sys::utsname::uname().map_err(|source| HostInfoError::Sys {
            what: "the kernel's name (uname)",
            source,
        })?;
        let sys = nix::sys::sysinfo::sysinfo().map_err(|source| HostInfoError::Sys {
            what: "memory and uptime (sysinfo)",
            source,
        })?;
        let fs = nix::sys::statvfs::statvfs(storage_root).map_err(|source| HostInfoError::Sys {
            what: "the storage root's file system (statvfs)",
            source,
        })?;
        let hostname = nix::unistd::gethostname()
            .map_err(|source| HostInfoError::Sys {
                what: "the host name",
                source,
            })?
            .to_string_lossy()
            .into_owned();
        let system = uts.sysname().to_string_lossy().into_owned();
        let os = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| os_release_pretty_name(&text))
            .unwrap_or(system);
        let fragment = fs.fragment_size() as u64;
        Ok(HostInfo {
            kernel: uts.release().to_string_lossy().into_owned(),
            os,
            arch: uts.machine().to_string_lossy().into_owned(),
            cpus: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
            memory_bytes: sys.ram_total(),
            storage_total_bytes: (fs.blocks() as u64).saturating_mul(fragment),
            storage_free_bytes: (fs.blocks_available() as u64).saturating_mul(fragment),
            uptime_seconds: sys.uptime().as_secs(),
            hostname,
        })
    }
}

/// The `PRETTY_NAME` of an os-release file, unquoted.
fn os_release_pretty_name(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))?;
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some(unquoted.replace("\\\"", "\"")).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_forms() {
        let debian = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_pretty_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            os_release_pretty_name("PRETTY_NAME=Alpine").as_deref(),
            Some("Alpine")
        );
        assert_eq!(os_release_pretty_name("NAME=x\n"), None);
        assert_eq!(os_release_pretty_name("PRETTY_NAME=\"\""), None);
    }

    #[test]
    fn gathers_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let info = HostInfo::gather(dir.path()).unwrap();
        assert!(!info.kernel.is_empty());
        assert!(info.cpus >= 1);
        assert!(info.memory_bytes > 0);
        assert!(info.storage_total_bytes >= info.storage_free_bytes);
    }
}
