//! The container's terminal: a pty made inside the container (from its own
//! devpts instance), the slave end as the process's stdio and controlling
//! terminal, the master end handed over `--console-socket` with SCM_RIGHTS,
//! as runc does, so that whoever listens there (the engine, a test) drives
//! the terminal.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;

use super::RuntimeError;

/// Makes the pty, sends its master over `socket`, and makes the slave
/// this process's controlling terminal and stdio. Runs in the init after
/// `pivot_root`, so `/dev/ptmx` is the container's.
pub fn setup(socket: RawFd, size: Option<(u16, u16)>) -> Result<(), RuntimeError> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(RuntimeError::sys("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(RuntimeError::sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(RuntimeError::sys("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(RuntimeError::sys("name the pty"))?;
    let slave: OwnedFd = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(RuntimeError::sys(format!("open {name}")))?;
    if let Some((rows, cols)) = size {
        let ws = nix::libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is
        // valid for the duration of the call.
        let rc = unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(RuntimeError::sys("set the terminal size")(
                nix::errno::Errno::last(),
            ));
        }
    }
    let master_fd = master.as_raw_fd();
    // SAFETY: `socket` is the console socket's descriptor, open in this
    // process for as long as this function runs.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&[master_fd])],
        MsgFlags::empty(),
        None,
    )
    .map_err(RuntimeError::sys("send the pty over the console socket"))?;
    drop(master);
    nix::unistd::setsid().map_err(RuntimeError::sys("start a session"))?;
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
    if unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::TIOCSCTTY, 0) } != 0 {
        return Err(RuntimeError::sys("take the pty as controlling terminal")(
            nix::errno::Errno::last(),
        ));
    }
    for target in 0..=2 {
        // SAFETY: dup2 onto 0, 1 and 2 replaces this process's stdio, which
        // nothing else in it holds a reference to.
        if unsafe { nix::libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(RuntimeError::sys("use the pty as stdio")(
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}
