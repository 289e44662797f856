//! File copies between `berth` and an agent (`berth scp`): what travels is
//! a tar stream whose entries all sit under one top entry, the source's
//! own name. Both ends use this module, so they agree on the form.
//!
//! Placing follows `scp`: into an existing directory the source keeps its
//! name; anywhere else it takes the destination's name (whose parent must
//! exist). A directory needs `recursive`. Unpacking never writes outside
//! the destination: entries must be plain relative paths under the top
//! entry, and no entry is written through a symbolic link.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Bytes of a copy carried in one message.
pub const CHUNK_BYTES: usize = 64 << 10;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Writes `source` (a file, or with `recursive` a directory and all it
/// holds) to `out` as a tar stream under its own name.
pub fn pack(source: &Path, recursive: bool, out: impl Write) -> io::Result<()> {
    let meta = fs::metadata(source)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
    if meta.is_dir() && !recursive {
        return Err(invalid(format!(
            "{} is a directory (copy it with -r)",
            source.display()
        )));
    }
    // `.` or `dir/..` name no file: the directory's real name does.
    let name = match source.file_name() {
        Some(name) => name.to_owned(),
        None => source
            .canonicalize()?
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| invalid(format!("{} names no file", source.display())))?,
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder.append_dir_all(&name, source)?;
    } else {
        builder.append_path_with_name(source, &name)?;
    }
    builder.into_inner()?.flush()
}

/// Where a copy whose top entry is named `top` lands under `destination`.
fn landing(destination: &Path, top: &str) -> PathBuf {
    if destination.is_dir() {
        destination.join(top)
    } else {
        destination.to_owned()
    }
}

/// Refuses to write through a symbolic link between `root` and `path`.
fn check_no_links(root: &Path, path: &Path) -> io::Result<()> {
    let relative = path.strip_prefix(root).unwrap_or(Path::new(""));
    let mut at = root.to_owned();
    let parts: Vec<_> = relative.components().collect();
    // The last component is what the entry itself replaces.
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(part);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(invalid(format!(
                "refusing to write through the symbolic link {}",
                at.display()
            )));
        }
    }
    Ok(())
}

/// Reads a tar stream made by [`pack`] and places it at `destination`.
/// Returns the path of what was written.
pub fn unpack(input: impl Read, destination: &Path) -> io::Result<PathBuf> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let mut top: Option<(String, PathBuf)> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_owned()),
                Component::CurDir => {}
                _ => return Err(invalid(format!("refusing the entry {}", path.display()))),
            }
        }
        let Some((first, rest)) = parts.split_first() else {
            continue;
        };
        let first = first.to_string_lossy().into_owned();
        let base = match &top {
            Some((name, base)) if *name == first => base.clone(),
            Some((name, _)) => {
                return Err(invalid(format!(
                    "entry {} is not under {name}",
                    path.display()
                )))
            }
            None => {
                let base = landing(destination, &first);
                let parent = base.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(parent) = parent {
                    if !parent.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{} is not a directory", parent.display()),
                        ));
                    }
                }
                top = Some((first.clone(), base.clone()));
                base
            }
        };
        let target = rest.iter().fold(base.clone(), |p, part| p.join(part));
        check_no_links(&base, &target)?;
        if fs::symlink_metadata(&base).is_ok_and(|m| m.file_type().is_symlink()) && target != base {
            return Err(invalid(format!(
                "refusing to write through the symbolic link {}",
                base.display()
            )));
        }
        entry.unpack(&target)?;
    }
    top.map(|(_, base)| base)
        .ok_or_else(|| invalid("the copy holds nothing".to_owned()))
}

/// A [`Read`] over chunks that an async task sends on a channel (from a
/// stream of messages), for [`unpack`] on a blocking thread. An error in
/// the channel is the reader's error: the unpacker says why it stopped.
pub struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    /// Reads what `chunks` yields, until its senders are gone.
    pub fn new(chunks: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChunkReader {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk?;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A [`Write`] that hands chunks of [`CHUNK_BYTES`] to a callback (which
/// sends them on), for [`pack`] on a blocking thread.
pub struct ChunkWriter<F: FnMut(Vec<u8>) -> io::Result<()>> {
    send: F,
    buffer: Vec<u8>,
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> ChunkWriter<F> {
    /// Chunks go to `send`.
    pub fn new(send: F) -> Self {
        ChunkWriter {
            send,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        }
    }
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
            (self.send)(chunk)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(source: &Path, recursive: bool, destination: &Path) -> io::Result<PathBuf> {
        let mut tar = Vec::new();
        pack(source, recursive, &mut tar)?;
        unpack(&tar[..], destination)
    }

    #[test]
    fn files_and_directories_land_as_scp_puts_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        fs::write(src.join("sub/b.txt"), "b").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();

        // A file into an existing directory keeps its name.
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        assert_eq!(
            round_trip(&src.join("a.txt"), false, &out).unwrap(),
            out.join("a.txt")
        );
        assert_eq!(fs::read_to_string(out.join("a.txt")).unwrap(), "a");
        // A file to a new name takes it.
        round_trip(&src.join("a.txt"), false, &out.join("renamed")).unwrap();
        assert_eq!(fs::read_to_string(out.join("renamed")).unwrap(), "a");
        // A directory needs -r, then comes whole.
        let err = round_trip(&src, false, &out).unwrap_err();
        assert!(err.to_string().contains("copy it with -r"), "{err}");
        round_trip(&src, true, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("src/sub/b.txt")).unwrap(), "b");
        #[cfg(unix)]
        assert_eq!(
            fs::read_link(out.join("src/link")).unwrap(),
            Path::new("a.txt")
        );
        round_trip(&src, true, &out.join("copy")).unwrap();
        assert_eq!(fs::read_to_string(out.join("copy/a.txt")).unwrap(), "a");
        // A missing parent is an error, not a mkdir -p.
        assert!(round_trip(&src.join("a.txt"), false, &out.join("no/such")).is_err());
    }

    #[test]
    fn hostile_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let tar_of = |entries: &[(&str, Option<&str>)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, link) in entries {
                let mut h = tar::Header::new_gnu();
                match link {
                    Some(target) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        b.append_link(&mut h, path, target).unwrap();
                    }
                    None => {
                        h.set_size(1);
                        h.set_mode(0o644);
                        h.set_cksum();
                        b.append_data(&mut h, path, &b"x"[..]).unwrap();
                    }
                }
            }
            b.into_inner().unwrap()
        };
        let escape = dir.path().join("escaped");
        let two_tops = tar_of(&[("a/x", None), ("b/x", None)]);
        assert!(unpack(&two_tops[..], &out).is_err());
        let through_link = tar_of(&[
            ("t/l", Some(escape.parent().unwrap().to_str().unwrap())),
            ("t/l/escaped", None),
        ]);
        assert!(unpack(&through_link[..], &out).is_err());
        assert!(!escape.exists());
        // `..` cannot even be written by the tar crate; a raw header can.
        let mut raw = tar_of(&[("t/x", None)]);
        raw[..7].copy_from_slice(b"../evil");
        raw[7] = 0;
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(unpack(&raw[..], &out).is_err());
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn chunk_reader_and_writer_carry_bytes_whole() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut writer = ChunkWriter::new(|chunk| {
            tx.blocking_send(Ok(chunk))
                .map_err(|_| io::Error::other("gone"))
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        writer.write_all(&data).unwrap();
        writer.flush().unwrap();
        drop(writer);
        drop(tx);
        let mut back = Vec::new();
        ChunkReader::new(rx).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
