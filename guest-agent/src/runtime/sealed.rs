//! Running from a sealed copy of the agent binary, so that nothing a
//! container does can write the binary on disk (runc's CVE-2019-5736).
//!
//! While a runtime process that a container can see (an `exec` joining a
//! live container, an init that runs hooks in the container) is still the
//! agent binary, the container could open `/proc/PID/exe` and write
//! through it once the agent has exec'd. Re-executing first from a
//! `memfd` copy sealed against writes leaves the container only a copy
//! that cannot be changed. The copy costs a few milliseconds, so it is
//! made only where a container can see the runtime before it execs.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::sendfile::sendfile;

use super::RuntimeError;

/// The seals that make the copy immutable, the last one included.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// Whether this process runs from a sealed copy already.
pub fn is_sealed() -> bool {
    File::open("/proc/self/exe")
        .ok()
        .and_then(|exe| fcntl(&exe, FcntlArg::F_GET_SEALS).ok())
        .is_some_and(|s| SealFlag::from_bits_truncate(s).contains(seals()))
}

/// Re-executes this process from a sealed in-memory copy of its binary,
/// with the same arguments and environment; returns at once if it runs
/// from one already. Returns only on error.
pub fn ensure() -> Result<(), RuntimeError> {
    if is_sealed() {
        return Ok(());
    }
    let exe = File::open("/proc/self/exe").map_err(RuntimeError::io("open the agent binary"))?;
    let size = exe
        .metadata()
        .map_err(RuntimeError::io("stat the agent binary"))?
        .len();
    let copy = memfd_create(
        "berth-agent",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(RuntimeError::sys("create the sealed copy of the agent"))?;
    let mut copied = 0u64;
    while copied < size {
        let left = usize::try_from(size - copied).unwrap_or(usize::MAX);
        match sendfile(copy.as_fd(), exe.as_fd(), None, left) {
            Ok(0) => break,
            Ok(n) => copied += n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(RuntimeError::sys("copy the agent binary")(e)),
        }
    }
    if copied != size {
        return Err(RuntimeError::Io {
            action: "copy the agent binary".into(),
            source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        });
    }
    fcntl(&copy, FcntlArg::F_ADD_SEALS(seals()))
        .map_err(RuntimeError::sys("seal the copy of the agent"))?;
    let to_c = |s: OsString| CString::new(s.into_vec()).ok();
    let args: Vec<CString> = std::env::args_os().filter_map(to_c).collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut pair = k;
            pair.push("=");
            pair.push(v);
            to_c(pair)
        })
        .collect();
    let Err(e) = nix::unistd::fexecve(copy.as_fd(), &args, &env);
    Err(RuntimeError::sys(
        "re-execute from the sealed copy of the agent",
    )(e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_binary_is_not_sealed() {
        assert!(!super::is_sealed());
    }
}
