//! `start`: releases a created container's init to exec the user's program.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use super::hooks;
use super::spec::Bundle;
use super::state::{alive, ContainerDir, Status};
use super::RuntimeError;

/// How long the init may take to answer on the FIFO once `start` opened
/// it: it is already blocked in open(2), so this is scheduling slack.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts container `id`.
pub fn start(root: &Path, id: &str) -> Result<(), RuntimeError> {
    let dir = ContainerDir::new(root, id);
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status != Status::Created {
        return Err(RuntimeError::WrongState {
            action: "start",
            id: id.to_owned(),
            status,
        });
    }
    // Non-blocking: an init that died must not hang us in open(2).
    let fifo = nix::fcntl::open(
        &dir.fifo(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RuntimeError::sys("open the exec FIFO"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut byte = [0u8; 1];
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16))
            .map_err(RuntimeError::sys("wait on the exec FIFO"))?;
        match nix::unistd::read(&fifo, &mut byte) {
            Ok(1) => break,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(RuntimeError::sys("read the exec FIFO")(e)),
        }
        if !alive(saved.pid, saved.pid_start_time) || Instant::now() >= deadline {
            return Err(RuntimeError::Init {
                id: id.to_owned(),
                reason: "its init did not answer start".into(),
            });
        }
    }
    std::fs::remove_file(dir.fifo()).map_err(RuntimeError::io("remove the exec FIFO"))?;
    if let Ok(bundle) = Bundle::load(&saved.bundle) {
        if let Some(hooks) = bundle.spec.hooks() {
            let poststart = hooks.poststart().clone().unwrap_or_default();
            hooks::run_warn("poststart", &poststart, &dir.report(&saved));
        }
    }
    Ok(())
}
