//! Reading gzip streams (RFC 1952): one member after another, each a raw
//! deflate stream between a header and a trailer whose CRC-32 and length
//! are checked. flate2 does the inflating; the framing is here so the
//! check runs on a carry-less-multiply CRC and the inflater gets large
//! buffers to fill.

use std::io::{self, BufRead, Read};

use flate2::{Decompress, FlushDecompress, Status};

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;

/// Decompresses a gzip stream read from `R`.
pub struct GzipReader<R> {
    inner: R,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    /// Bytes of the current member out so far.
    size: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a member's header (the first, or a later one if any bytes follow).
    Header {
        first: bool,
    },
    Body,
    Done,
}

impl<R: BufRead> GzipReader<R> {
    /// A reader of the gzip stream in `inner`.
    pub fn new(inner: R) -> Self {
        GzipReader {
            inner,
            inflate: Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            size: 0,
            state: State::Header { first: true },
        }
    }

    /// Reads a member's header; false at the end of the stream (allowed
    /// only after the first member).
    fn header(&mut self, first: bool) -> io::Result<bool> {
        if !first && self.inner.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let mut fixed = [0; 10];
        self.inner.read_exact(&mut fixed).map_err(truncated)?;
        if fixed[..2] != [0x1f, 0x8b] {
            return Err(invalid("not a gzip stream (bad magic bytes)"));
        }
        if fixed[2] != 8 {
            return Err(invalid("gzip compression method is not deflate"));
        }
        let flags = fixed[3];
        if flags & FEXTRA != 0 {
            let mut len = [0; 2];
            self.inner.read_exact(&mut len).map_err(truncated)?;
            let len = u16::from_le_bytes(len) as u64;
            let skipped = io::copy(&mut (&mut self.inner).take(len), &mut io::sink())?;
            if skipped != len {
                return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                let mut text = Vec::new();
                self.inner.read_until(0, &mut text)?;
                if text.last() != Some(&0) {
                    return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
        if flags & FHCRC != 0 {
            self.inner.read_exact(&mut [0; 2]).map_err(truncated)?;
        }
        self.inflate.reset(false);
        self.crc = crc32fast::Hasher::new();
        self.size = 0;
        Ok(true)
    }

    /// Reads and checks a member's trailer.
    fn trailer(&mut self) -> io::Result<()> {
        let mut trailer = [0; 8];
        self.inner.read_exact(&mut trailer).map_err(truncated)?;
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        if crc != std::mem::take(&mut self.crc).finalize() {
            return Err(invalid("gzip CRC-32 mismatch: the data is corrupt"));
        }
        if size != self.size as u32 {
            return Err(invalid("gzip length mismatch: the data is corrupt"));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Header { first } => {
                    self.state = if self.header(first)? {
                        State::Body
                    } else {
                        State::Done
                    };
                }
                State::Body => {
                    let input = self.inner.fill_buf()?;
                    let eof = input.is_empty();
                    let (in_before, out_before) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let status = self
                        .inflate
                        .decompress(input, buf, FlushDecompress::None)
                        .map_err(|e| invalid(&format!("corrupt deflate data: {e}")))?;
                    let used = (self.inflate.total_in() - in_before) as usize;
                    let out = (self.inflate.total_out() - out_before) as usize;
                    self.inner.consume(used);
                    self.crc.update(&buf[..out]);
                    self.size += out as u64;
                    if status == Status::StreamEnd {
                        self.trailer()?;
                        self.state = State::Header { first: false };
                    } else if out == 0 && used == 0 && eof {
                        return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
                    }
                    if out > 0 {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the gzip stream is truncated")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(io::BufReader::with_capacity(7, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_follow_one_another() {
        let a: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut both = gzip(&a);
        both.extend(gzip(b"and more"));
        let mut expected = a.clone();
        expected.extend(b"and more");
        assert_eq!(gunzip(&both).unwrap(), expected);
    }

    #[test]
    fn optional_header_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("a comment")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), Compression::default());
        e.write_all(b"content").unwrap();
        assert_eq!(gunzip(&e.finish().unwrap()).unwrap(), b"content");
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let good = gzip(b"some bytes that will be damaged");
        let mut crc = good.clone();
        let n = crc.len();
        crc[n - 8] ^= 1;
        assert!(gunzip(&crc).unwrap_err().to_string().contains("CRC"));
        let short = &good[..good.len() - 3];
        assert!(gunzip(short).unwrap_err().to_string().contains("truncated"));
        assert!(gunzip(&good[..5])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(gunzip(b"not gzip at all")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(gunzip(b"").is_err());
    }
}
