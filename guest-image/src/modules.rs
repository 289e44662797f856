//! Kernel modules: which files a set of module names needs, in load order,
//! read from the kernel's `modules.dep` (as `depmod` writes it), and the
//! lists of them init reads.

use std::collections::{BTreeMap, BTreeSet};

use crate::ImageError;

/// `modules.dep`, parsed: module name → (its file, the files it needs).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    by_name: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// A module's name as the kernel spells it: the file's stem with `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parses the text of `modules.dep`.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let mut parsed = ModuleDeps::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or_else(|| {
                ImageError::Modules(format!("modules.dep line {}: no ':' in {line:?}", n + 1))
            })?;
            let module = module.trim().to_owned();
            parsed.by_name.insert(module_name(&module), module.clone());
            parsed
                .deps
                .insert(module, deps.split_whitespace().map(str::to_owned).collect());
        }
        Ok(parsed)
    }

    /// The files to load for `wanted` (names; those in `optional` may be
    /// missing), dependencies before the modules that need them. Names in
    /// `builtin` are part of the kernel and need no file.
    pub fn resolve(
        &self,
        wanted: &[&str],
        optional: &[&str],
        builtin: &BTreeSet<String>,
    ) -> Result<Vec<String>, ImageError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted.iter().chain(optional) {
            let name = name.replace('-', "_");
            let Some(file) = self.by_name.get(&name) else {
                if builtin.contains(&name) || optional.iter().any(|o| o.replace('-', "_") == name) {
                    continue;
                }
                return Err(ImageError::Modules(format!(
                    "the kernel has no module {name} (neither in modules.dep nor built in)"
                )));
            };
            self.visit(file, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    /// The lines init reads for the files `order` lists (as [`resolve`]
    /// returns them): each file with the files it needs, in `modules.dep`'s
    /// form, so that init may load modules whose dependencies are loaded
    /// side by side.
    ///
    /// [`resolve`]: Self::resolve
    pub fn list(&self, order: &[String]) -> String {
        order
            .iter()
            .map(|file| {
                let deps = self.deps.get(file).map(Vec::as_slice).unwrap_or_default();
                if deps.is_empty() {
                    format!("{file}:\n")
                } else {
                    format!("{file}: {}\n", deps.join(" "))
                }
            })
            .collect()
    }

    fn visit(
        &self,
        file: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if done.contains(file) {
            return Ok(());
        }
        if path.iter().any(|p| p == file) {
            return Err(ImageError::Modules(format!(
                "modules.dep has a cycle: {} -> {file}",
                path.join(" -> ")
            )));
        }
        path.push(file.to_owned());
        let deps = self.deps.get(file).ok_or_else(|| {
            ImageError::Modules(format!(
                "modules.dep names {file} as a dependency but has no line for it"
            ))
        })?;
        for dep in deps {
            self.visit(dep, done, path, order)?;
        }
        path.pop();
        done.insert(file.to_owned());
        order.push(file.to_owned());
        Ok(())
    }
}

/// What ends a signed module: the kernel's `MODULE_SIG_STRING`.
const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";
/// The `struct module_signature` before the magic: algorithm, hash, id
/// type, signer and key id lengths, three bytes of padding, then the
/// signature's length (big-endian).
const SIGNATURE_INFO: usize = 12;

/// `module` without its appended signature, if it has one well formed.
///
/// The kernel checks a module's signature at each load, hashing the whole
/// file: a large part of loading ext4 under TCG. The image's own digest
/// already vouches for every file in it, and the guest kernel (booted by
/// QEMU, without Secure Boot's lockdown) loads unsigned modules.
pub fn strip_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(SIGNATURE_MAGIC) else {
        return module;
    };
    let Some(info_at) = body.len().checked_sub(SIGNATURE_INFO) else {
        return module;
    };
    let info = &body[info_at..];
    let signed = usize::from(info[3])
        + usize::from(info[4])
        + u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match info_at.checked_sub(signed) {
        Some(end) => &module[..end],
        None => module,
    }
}

/// The names in `modules.builtin` (one path per line).
pub fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/overlayfs/overlay.ko:\n\
        kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
        kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
        kernel/drivers/virtio/virtio_ring.ko:\n\
        kernel/drivers/virtio/virtio.ko:\n\
        kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
        kernel/arch/x86/crypto/crc32c-intel.ko:\n";

    #[test]
    fn appended_signatures_are_stripped_and_nothing_else() {
        let body = b"\x7fELF module code".to_vec();
        let signature = [0xAB; 7];
        let mut info = [0u8; SIGNATURE_INFO];
        info[2] = 2; // PKEY_ID_PKCS7
        info[8..].copy_from_slice(&(signature.len() as u32).to_be_bytes());
        let signed = [&body[..], &signature, &info, SIGNATURE_MAGIC].concat();
        assert_eq!(strip_signature(&signed), &body[..]);
        assert_eq!(strip_signature(&body), &body[..]);
        // A length past the start: left alone rather than cut wrong.
        let mut bad = info;
        bad[8..].copy_from_slice(&1000u32.to_be_bytes());
        let damaged = [&body[..], &bad, SIGNATURE_MAGIC].concat();
        assert_eq!(strip_signature(&damaged), &damaged[..]);
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let order = deps
            .resolve(
                &["virtio_pci", "virtio_blk", "overlay"],
                &[],
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
    }

    #[test]
    fn lists_name_each_file_with_the_files_it_needs() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let order = deps
            .resolve(&["virtio_blk", "overlay"], &[], &BTreeSet::new())
            .unwrap();
        assert_eq!(
            deps.list(&order),
            "kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/fs/overlayfs/overlay.ko:\n"
        );
    }

    #[test]
    fn names_match_across_dash_and_underscore_and_builtins_are_skipped() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let builtin = builtin_names("kernel/fs/ext4/ext4.ko\n");
        let order = deps
            .resolve(&["crc32c_intel", "ext4"], &["nope"], &builtin)
            .unwrap();
        assert_eq!(order, ["kernel/arch/x86/crypto/crc32c-intel.ko"]);
        let err = deps.resolve(&["nope"], &[], &builtin).unwrap_err();
        assert!(err.to_string().contains("no module nope"), "{err}");
    }

    #[test]
    fn cycles_and_dangling_deps_are_refused() {
        let cyclic = ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(cyclic.resolve(&["a"], &[], &BTreeSet::new()).is_err());
        let dangling = ModuleDeps::parse("a.ko: b.ko\n").unwrap();
        assert!(dangling.resolve(&["a"], &[], &BTreeSet::new()).is_err());
        assert!(ModuleDeps::parse("no colon").is_err());
    }
}
