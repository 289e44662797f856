//! `kill`: sends a signal to a container's init.

use std::path::Path;
use std::str::FromStr;

use nix::sys::signal::{kill as send, Signal};
use nix::unistd::Pid;

use super::state::{ContainerDir, Status};
use super::RuntimeError;

/// Parses "TERM", "SIGTERM", "term" or "15".
pub fn parse_signal(text: &str) -> Result<Signal, RuntimeError> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Signal(text.to_owned()));
    }
    let upper = text.to_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| RuntimeError::Signal(text.to_owned()))
}

/// Sends `signal` to container `id`'s init.
pub fn kill(root: &Path, id: &str, signal: Signal) -> Result<(), RuntimeError> {
    let dir = ContainerDir::new(root, id);
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status == Status::Stopped {
        return Err(RuntimeError::WrongState {
            action: "kill",
            id: id.to_owned(),
            status,
        });
    }
    send(Pid::from_raw(saved.pid), signal)
        .map_err(RuntimeError::sys(format!("send {signal} to {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_forms() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
