//! The initramfs as the kernel reads it: a `newc` cpio archive.
//!
//! Entries are kept in a map by path and written in path order with fixed
//! inode numbers, owners and times, so the same tree always gives the same
//! bytes. Parents are added before children by construction: a path sorts
//! after its parent.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device (major, minor).
    CharDevice(u32, u32),
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    mode: u32,
}

/// An initramfs being assembled.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// The file-type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (relative, `/`-separated) with permission bits `mode`,
    /// and every missing parent as a 0755 directory. A later add of the
    /// same path replaces the earlier one.
    pub fn add(&mut self, path: &str, node: Node, mode: u32) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry {
                node: Node::Dir,
                mode: 0o755,
            });
        }
        self.entries.insert(
            path.to_owned(),
            Entry {
                node,
                mode: mode & 0o7777,
            },
        );
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    /// Writes the archive, ending with the `TRAILER!!!` entry.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0u64;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.node {
                Node::Dir => (S_IFDIR, &[], (0, 0)),
                Node::File(bytes) => (S_IFREG, bytes, (0, 0)),
                Node::Symlink(target) => (S_IFLNK, target.as_bytes(), (0, 0)),
                Node::CharDevice(major, minor) => (S_IFCHR, &[], (*major, *minor)),
            };
            let nlink = if kind == S_IFDIR { 2 } else { 1 };
            written += write_entry(
                out,
                (ino + 1) as u32,
                kind | entry.mode,
                nlink,
                rdev,
                path,
                data,
            )?;
        }
        written += write_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(written)
    }
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<u64> {
    let name_len = name.len() + 1;
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
    })?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let mut n = header.len() + name_len;
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0; 3][..pad])?;
    n += pad;
    out.write_all(data)?;
    n += data.len();
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0; 3][..pad])?;
    Ok((n + pad) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_newc_entries_in_path_order_with_parents() {
        let mut a = Archive::new();
        a.add("bin/sh", Node::Symlink("busybox".into()), 0o777);
        a.add("init", Node::File(b"#!".to_vec()), 0o755);
        a.add("dev/console", Node::CharDevice(5, 1), 0o600);
        let mut out = Vec::new();
        let n = a.write_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let names: Vec<&str> = [
            "bin\0",
            "bin/sh\0",
            "dev\0",
            "dev/console\0",
            "init\0",
            "TRAILER!!!\0",
        ]
        .into_iter()
        .collect();
        let mut at = 0;
        for name in names {
            at += text[at..]
                .find(name)
                .unwrap_or_else(|| panic!("{name} missing or out of order"));
        }
        // The device's rdev major/minor are in the console's header.
        let console = text.find("dev/console").unwrap();
        let header = &text[console - 110..console];
        assert_eq!(&header[78..94], "0000000500000001");
        assert_eq!(&header[14..22], "00002180"); // S_IFCHR | 0600
    }

    #[test]
    fn same_tree_same_bytes() {
        let build = |order: &[&str]| {
            let mut a = Archive::new();
            for p in order {
                a.add(p, Node::File(p.as_bytes().to_vec()), 0o644);
            }
            let mut out = Vec::new();
            a.write_to(&mut out).unwrap();
            out
        };
        assert_eq!(build(&["a/b", "c", "a/d"]), build(&["c", "a/d", "a/b"]));
    }
}
