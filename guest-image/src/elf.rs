//! What a dynamically linked program needs to run: its interpreter and the
//! shared libraries it names (`DT_NEEDED`), found in a sysroot the way the
//! dynamic loader would find them, recursively.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use object::elf::{DT_NEEDED, PT_INTERP};
use object::read::elf::{ElfFile64, ProgramHeader};

use crate::ImageError;

/// A program's needs: its interpreter (if dynamic) and library sonames.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The `PT_INTERP` path, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// The `DT_NEEDED` sonames.
    pub libraries: Vec<String>,
}

/// Reads the interpreter and needed libraries of a 64-bit ELF file.
pub fn needs(data: &[u8], what: &Path) -> Result<Needs, ImageError> {
    let bad = |e: object::Error| ImageError::Elf(format!("{}: {e}", what.display()));
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(bad)?;
    let endian = file.endian();
    let mut needs = Needs::default();
    for header in file.elf_program_headers() {
        if header.p_type(endian) == PT_INTERP {
            let bytes = header
                .interpreter(endian, data)
                .map_err(bad)?
                .unwrap_or_default();
            needs.interpreter = Some(String::from_utf8_lossy(bytes).into_owned());
        }
    }
    let table = file.elf_dynamic_table().map_err(bad)?;
    for entry in table.iter() {
        if entry.tag == DT_NEEDED {
            let name = table.string(entry).map_err(bad)?;
            needs
                .libraries
                .push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(needs)
}

/// The directories a library is looked for in, under the sysroot, for a
/// Debian multiarch `triplet` (e.g. `x86_64-linux-gnu`).
fn library_dirs(triplet: &str) -> Vec<String> {
    vec![
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".into(),
        "usr/lib".into(),
        "lib64".into(),
    ]
}

/// Every file (as paths inside the sysroot) that `program` needs to run:
/// the program, its interpreter, and its libraries and theirs.
pub fn closure(sysroot: &Path, program: &str, triplet: &str) -> Result<Vec<String>, ImageError> {
    let mut files = BTreeSet::new();
    let mut queue = vec![program.trim_start_matches('/').to_owned()];
    while let Some(file) = queue.pop() {
        if !files.insert(file.clone()) {
            continue;
        }
        let path = sysroot.join(&file);
        let data = std::fs::read(&path)
            .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        let needs = needs(&data, &path)?;
        if let Some(interp) = needs.interpreter {
            queue.push(interp.trim_start_matches('/').to_owned());
        }
        for library in needs.libraries {
            let found = library_dirs(triplet)
                .into_iter()
                .map(|dir| format!("{dir}/{library}"))
                .find(|p| sysroot.join(p).exists())
                .ok_or_else(|| {
                    ImageError::Elf(format!(
                        "{} needs {library}, which is not in {}",
                        file,
                        sysroot.display()
                    ))
                })?;
            queue.push(found);
        }
    }
    Ok(files.into_iter().collect())
}

/// Reads a file of the sysroot, following symbolic links inside it (a
/// library's soname is usually a link to the versioned file).
pub fn read_in_root(sysroot: &Path, path: &str) -> Result<Vec<u8>, ImageError> {
    let mut current = PathBuf::from(path.trim_start_matches('/'));
    for _ in 0..16 {
        let full = sysroot.join(&current);
        let meta = std::fs::symlink_metadata(&full)
            .map_err(|e| ImageError::io(format!("read {}", full.display()), e))?;
        if !meta.file_type().is_symlink() {
            return std::fs::read(&full)
                .map_err(|e| ImageError::io(format!("read {}", full.display()), e));
        }
        let target = std::fs::read_link(&full)
            .map_err(|e| ImageError::io(format!("read {}", full.display()), e))?;
        current = if target.is_absolute() {
            target.strip_prefix("/").unwrap_or(&target).to_owned()
        } else {
            current.parent().unwrap_or(Path::new("")).join(target)
        };
    }
    Err(ImageError::Elf(format!(
        "{path}: too many levels of symbolic links in {}",
        sysroot.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_needs_of_a_real_program() {
        // The test binary itself is a dynamic 64-bit ELF on glibc hosts.
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let needs = needs(&data, &exe).unwrap();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(needs
                .interpreter
                .as_ref()
                .is_some_and(|i| i.contains("ld-")));
            assert!(
                needs.libraries.iter().any(|l| l.starts_with("libc.so")),
                "{needs:?}"
            );
        }
    }

    #[test]
    fn not_elf_is_an_error() {
        assert!(needs(b"#!/bin/sh\n", Path::new("script")).is_err());
    }
}
