//! The line protocol between a runtime verb and the processes it forks,
//! over one `socketpair(2)` so that both sides can speak.
//!
//! Messages are single lines. From the children:
//!
//! | line | from | meaning |
//! | --- | --- | --- |
//! | `hello` | intermediate | namespaces joined, user namespace (if any) made; wants `go` |
//! | `pid:N` | intermediate | the container process is pid N in the runtime's namespace |
//! | `hooks` | init | mounts done, before `pivot_root`; wants `state:JSON` |
//! | `ready` | init / exec child | set up; waits for start (init) |
//! | `error:TEXT` | any | set-up failed; the sender exits |
//!
//! From the runtime: `go` (after writing the id maps and joining the cgroup)
//! and `state:JSON` (after the runtime-side hooks ran), or `abort:TEXT`.
//!
//! The children's end is a raw descriptor read a byte at a time, so no
//! buffered reader can swallow a message meant for a later reader (the
//! intermediate and the init share the end).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::RuntimeError;

/// The longest line a child accepts: a state report with annotations.
const MAX_LINE: usize = 1 << 20;

/// The runtime's end.
pub(crate) struct Parent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Makes the pair: the runtime's end and the children's descriptor. Both
/// are close-on-exec, so no program the children exec inherits them.
pub(crate) fn pair() -> Result<(Parent, OwnedFd), RuntimeError> {
    let (parent, child) = UnixStream::pair().map_err(RuntimeError::io("create the sync socket"))?;
    let writer = parent
        .try_clone()
        .map_err(RuntimeError::io("clone the sync socket"))?;
    Ok((
        Parent {
            reader: BufReader::new(parent),
            writer,
        },
        OwnedFd::from(child),
    ))
}

impl Parent {
    /// The next line, or `None` once every child has closed its end.
    pub fn recv(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_owned()),
        }
    }

    /// Sends one line; a child that has gone is not an error here (its
    /// absence shows in the next `recv`).
    pub fn send(&mut self, message: &str) {
        let line = format!("{}\n", message.replace('\n', " "));
        let _ = self.writer.write_all(line.as_bytes());
    }

    /// Answers an intermediate's `hello` with the outcome of the set-up
    /// done for it: `go`, or `abort:` with the reason, which is also kept
    /// in `error` (the first error wins).
    pub fn answer_hello(&mut self, setup: Result<(), RuntimeError>, error: &mut Option<String>) {
        match setup {
            Ok(()) => self.send("go"),
            Err(e) => {
                self.send(&format!("abort:{e}"));
                error.get_or_insert(e.to_string());
            }
        }
    }

    /// Closes the runtime's side for writing, so a child waiting in
    /// [`recv`] sees the end instead of hanging.
    pub fn shutdown(&self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

/// Writes one line on the children's end.
pub(crate) fn send(fd: RawFd, message: &str) {
    // SAFETY: `fd` is the children's end, open in this process; ManuallyDrop
    // keeps this temporary File from closing it.
    let mut socket = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let line = format!("{}\n", message.replace('\n', " "));
    let _ = socket.write_all(line.as_bytes());
}

/// Reads one line on the children's end, a byte at a time.
pub(crate) fn recv(fd: RawFd) -> Result<String, RuntimeError> {
    // SAFETY: as in `send`.
    let socket = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match std::io::Read::read(&mut &*socket, &mut byte) {
            Ok(0) => {
                return Err(RuntimeError::Io {
                    action: "wait for the runtime".into(),
                    source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                })
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_LINE => line.push(byte[0]),
            Ok(_) => {
                return Err(RuntimeError::Io {
                    action: "read from the runtime".into(),
                    source: std::io::Error::other("message too long"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RuntimeError::io("read from the runtime")(e)),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Waits for `expected` (a prefix) and returns the rest of its line; an
/// `abort:` from the runtime becomes the error.
pub(crate) fn expect(fd: RawFd, expected: &str) -> Result<String, RuntimeError> {
    let line = recv(fd)?;
    if let Some(rest) = line.strip_prefix(expected) {
        return Ok(rest.to_owned());
    }
    let reason = line.strip_prefix("abort:").map_or_else(
        || format!("expected {expected:?}, got {line:?}"),
        str::to_owned,
    );
    Err(RuntimeError::Io {
        action: "wait for the runtime".into(),
        source: std::io::Error::other(reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn lines_go_both_ways_and_an_abort_is_an_error() {
        let (mut parent, child) = pair().unwrap();
        let fd = child.as_raw_fd();
        send(fd, "hello");
        send(fd, "pid:42");
        assert_eq!(parent.recv().as_deref(), Some("hello"));
        assert_eq!(parent.recv().as_deref(), Some("pid:42"));
        parent.send("state:{\"a\":\n1}");
        assert_eq!(expect(fd, "state:").unwrap(), "{\"a\": 1}");
        parent.send("abort:no cgroup");
        let err = expect(fd, "go").unwrap_err().to_string();
        assert!(err.contains("no cgroup"), "{err}");
        parent.shutdown();
        assert!(recv(fd).is_err());
        drop(child);
        assert_eq!(parent.recv(), None);
    }
}
