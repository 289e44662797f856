//! How Berth obtains and controls a container host.
//!
//! Everything above this crate (`ls`, `env`, `ssh`, the supervisor) is
//! driver-blind: it holds a [`Driver`] and asks it to create, start, stop,
//! kill or remove the host, for its state and IP, and for the
//! [`Endpoint`] at which the host's agent and Docker API are reached.
//!
//! - [`driver`] — the trait, the shared types and [`DriverConfig`], the
//!   persisted choice of driver and its settings.
//! - [`driver::native`] — the host is this Linux machine: the agent runs as
//!   a detached daemon whose state lives in the machine's directory.
//!
//! - [`driver::qemu`] — the host is a QEMU VM booted from Berth's guest
//!   image, reached through [`supervisor`].
//! - [`supervisor`] — the detached process that holds a VM's link and
//!   serves its sockets on this machine.
//!
//! - [`driver::generic`] — any Linux host reachable over SSH.
//! - [`driver::ec2`] — an Amazon EC2 instance, through [`ec2`], the API client.
//! - [`ssh`] — the SSH client: host keys, commands, uploads, sockets.
//! - [`provision`] — a remote host made a Berth host: agent, service,
//!   certificates, a checked TLS endpoint.
//! - [`certs`] — a machine's CA, server and client certificates.

#![deny(missing_docs)]

pub mod certs;
pub mod driver;
pub mod ec2;
pub mod provision;
pub mod ssh;
pub mod supervisor;

pub use driver::{
    DockerEndpoint, Driver, DriverConfig, DriverError, Endpoint, MachineContext, MachineState,
};

/// An error with its causes, one line: `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = cause.source();
    }
    out
}

/// Writes `bytes` to `path` so that no reader ever sees it half-written
/// (a temporary file beside it, synced, then renamed), owner-only when
/// `private` (keys, credentials).
pub(crate) fn write_atomic(
    path: &std::path::Path,
    bytes: &[u8],
    private: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        use std::io::Write;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
