//! The frames the engine and a container's shim exchange over the shim's
//! socket: a kind byte, a big-endian `u32` length, then the payload.

use std::io::{self, Read, Write};

/// The most payload one frame carries.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Engine → shim: start the created container (exec its process).
    Start = 1,
    /// Engine → shim: bytes for the process's stdin.
    Stdin = 2,
    /// Engine → shim: close the process's stdin.
    CloseStdin = 3,
    /// Engine → shim: the terminal's size, rows then columns (`u16` each).
    Resize = 4,
    /// Engine → shim: a signal number (`i32`) for the process.
    Signal = 5,
    /// Shim → engine: the process's stdout (or terminal output).
    Stdout = 10,
    /// Shim → engine: the process's stderr.
    Stderr = 11,
    /// Shim → engine: the process runs.
    Started = 12,
    /// Shim → engine: the process exited; an [`Exit`] in JSON.
    Exited = 13,
    /// Shim → engine: an operation failed; the message.
    Error = 14,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Start,
            2 => Kind::Stdin,
            3 => Kind::CloseStdin,
            4 => Kind::Resize,
            5 => Kind::Signal,
            10 => Kind::Stdout,
            11 => Kind::Stderr,
            12 => Kind::Started,
            13 => Kind::Exited,
            14 => Kind::Error,
            _ => return None,
        })
    }
}

/// How a container's process ended, as the shim records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// The exit code; 128 + N when killed by signal N.
    pub code: i32,
    /// When, RFC 3339 with nanoseconds.
    pub at: String,
}

/// Encodes one frame.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes one frame.
pub fn write(to: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    to.write_all(&encode(kind, payload))
}

/// Splits whole frames off the front of `buffer`.
#[derive(Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is there.
    pub fn next_frame(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let kind = Kind::from_byte(self.buffer[0])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown shim frame kind"))?;
        let len = u32::from_be_bytes(self.buffer[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shim frame too large",
            ));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buffer[5..5 + len].to_vec();
        self.buffer.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

/// Reads one frame, blocking; `None` at a clean end of stream.
pub fn read(from: &mut impl Read) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match from.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut decoder = Decoder::default();
    decoder.extend(&head);
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shim frame too large",
        ));
    }
    let mut payload = vec![0; len];
    from.read_exact(&mut payload)?;
    decoder.extend(&payload);
    decoder.next_frame()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut bytes = encode(Kind::Stdout, b"hello");
        bytes.extend(encode(Kind::Exited, b"{}"));
        let mut d = Decoder::default();
        d.extend(&bytes[..3]);
        assert!(d.next_frame().unwrap().is_none());
        d.extend(&bytes[3..]);
        assert_eq!(
            d.next_frame().unwrap(),
            Some((Kind::Stdout, b"hello".to_vec()))
        );
        assert_eq!(
            d.next_frame().unwrap(),
            Some((Kind::Exited, b"{}".to_vec()))
        );
        assert!(d.next_frame().unwrap().is_none());
        let mut junk = Decoder::default();
        junk.extend(&[99, 0, 0, 0, 0]);
        assert!(junk.next_frame().is_err());
    }
}
