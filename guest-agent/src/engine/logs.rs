//! Container logs in Docker's json-file format: one JSON object per line
//! of output, `{"log":"…\n","stream":"stdout","time":"…"}`. The shim writes
//! them; the engine reads them for `docker logs`.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::path::Path;

/// The longest line kept whole; longer ones are split, as dockerd does.
const MAX_LINE: usize = 16 << 10;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The bytes (lossily UTF-8, as json-file stores them).
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds.
    pub time: String,
}

/// Turns output into entries line by line, keeping partial lines until
/// they end.
pub struct Writer {
    file: File,
    partial: [Vec<u8>; 2],
}

impl Writer {
    /// Appends to `path`, creating it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Writer {
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Adds output of `stream` (0 stdout, 1 stderr).
    pub fn write(&mut self, stream: usize, mut bytes: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let partial = &mut self.partial[stream];
            partial.extend_from_slice(&bytes[..=end]);
            out.push(std::mem::take(partial));
            bytes = &bytes[end + 1..];
        }
        let partial = &mut self.partial[stream];
        partial.extend_from_slice(bytes);
        while partial.len() >= MAX_LINE {
            let rest = partial.split_off(MAX_LINE);
            out.push(std::mem::replace(partial, rest));
        }
        self.emit(stream, out)
    }

    /// Writes what is left of unfinished lines.
    pub fn flush(&mut self) -> io::Result<()> {
        for stream in 0..2 {
            let rest = std::mem::take(&mut self.partial[stream]);
            if !rest.is_empty() {
                self.emit(stream, vec![rest])?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, stream: usize, lines: Vec<Vec<u8>>) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let mut text = Vec::new();
        for line in lines {
            let entry = Entry {
                log: String::from_utf8_lossy(&line).into_owned(),
                stream: if stream == 0 { "stdout" } else { "stderr" }.into(),
                time: time.clone(),
            };
            serde_json::to_writer(&mut text, &entry)?;
            text.push(b'\n');
        }
        self.file.write_all(&text)
    }
}

/// Reads the entries of a log file; a torn last line (the shim was
/// writing) is skipped.
pub fn read(path: &Path) -> io::Result<Vec<Entry>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for line in io::BufReader::new(file).split(b'\n') {
        if let Ok(entry) = serde_json::from_slice::<Entry>(&line?) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_entries_and_partials_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut w = Writer::open(&path).unwrap();
        w.write(0, b"one\ntw").unwrap();
        w.write(1, b"err\n").unwrap();
        w.write(0, b"o\nthree").unwrap();
        w.flush().unwrap();
        let logs: Vec<(String, String)> = read(&path)
            .unwrap()
            .into_iter()
            .map(|e| (e.stream, e.log))
            .collect();
        assert_eq!(
            logs,
            [
                ("stdout".into(), "one\n".into()),
                ("stderr".into(), "err\n".into()),
                ("stdout".into(), "two\n".into()),
                ("stdout".into(), "three".into()),
            ]
        );
    }
}
