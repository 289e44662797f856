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

/// The sections of a module that the kernel works through at each load and
/// the guest does without, with what each costs and what dropping it gives up.
/// Measured on Debian's 6.1 ext4 under TCG (ftrace's function graph of
/// `load_module`), its load went from about 150 ms to 45 ms without them:
///
/// - `.orc_unwind`, `.orc_unwind_ip`: the ORC unwinder's tables, which the
///   kernel sorts at load (`unwind_module_init`; half of ext4's load).
///   Without them a stack trace through the module is printed from a scan
///   of the stack, its frames marked `?` as unreliable.
/// - `.static_call_sites`: the calls that load patches to jump straight to
///   their static call's target, one text poke each. Unpatched, each goes
///   through its trampoline, which the kernel keeps pointing at the target:
///   the same call, one jump longer.
/// - `_ftrace_events`: the module's trace events, each made a directory of
///   files in tracefs at load. Its tracepoints stay; tracefs lists no
///   events for it.
/// - `.BTF`: the module's types for BPF, parsed and checked at load.
const DROPPED_SECTIONS: &[&str] = &[
    ".orc_unwind",
    ".orc_unwind_ip",
    ".static_call_sites",
    "_ftrace_events",
    ".BTF",
];

/// `module` (a relocatable ELF file) without [`DROPPED_SECTIONS`] and the
/// relocations that fill them in; every other section, symbol and
/// relocation as it was. A module with none of them is returned as is.
/// `path` names it in errors.
pub fn drop_load_time_sections(path: &str, module: &[u8]) -> Result<Vec<u8>, ImageError> {
    use object::build::elf::{Builder, SectionData};

    let invalid = |e: object::build::Error| ImageError::Modules(format!("{path}: {e}"));
    let mut builder = Builder::read(module).map_err(invalid)?;
    if builder.header.e_type != object::elf::ET_REL {
        return Err(ImageError::Modules(format!(
            "{path}: not a relocatable ELF file"
        )));
    }
    let mut dropped = Vec::new();
    for section in &mut builder.sections {
        if DROPPED_SECTIONS
            .iter()
            .any(|d| *section.name == *d.as_bytes())
        {
            section.delete = true;
            dropped.push(section.id());
        }
    }
    if dropped.is_empty() {
        return Ok(module.to_vec());
    }
    for section in &mut builder.sections {
        if matches!(section.data, SectionData::Relocation(_))
            && section
                .sh_info_section
                .is_some_and(|s| dropped.contains(&s))
        {
            section.delete = true;
        }
    }
    // Symbols in the dropped sections (their section symbols) go too; a
    // relocation elsewhere that named one would be left pointing nowhere,
    // so the module is refused rather than changed.
    builder.delete_orphan_symbols();
    for section in builder.sections.iter().filter(|s| !s.delete) {
        if let SectionData::Relocation(relocations) = &section.data {
            if relocations
                .iter()
                .any(|r| r.symbol.is_some_and(|s| builder.symbols.get(s).delete))
            {
                return Err(ImageError::Modules(format!(
                    "{path}: {} refers to a section dropped from it",
                    section.name
                )));
            }
        }
    }
    let mut out = Vec::with_capacity(module.len());
    builder.write(&mut out).map_err(invalid)?;
    Ok(out)
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

    /// A relocatable x86-64 object like a module: `.text` with function
    /// `f`, `.data` pointing at `f`, and the sections the kernel fills in
    /// at load (ORC's, static call sites), each relocated against `f`;
    /// `extra` may add more.
    fn module_with(extra: impl FnOnce(&mut object::write::Object<'static>)) -> Vec<u8> {
        use object::write::{Object, Relocation, StandardSection, Symbol, SymbolSection};
        use object::{
            Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
            SymbolKind, SymbolScope,
        };

        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        obj.append_section_data(text, &[0xc3; 16], 16);
        let f = obj.add_symbol(Symbol {
            name: b"f".to_vec(),
            value: 0,
            size: 16,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let pc32 = RelocationFlags::Elf {
            r_type: object::elf::R_X86_64_PC32,
        };
        let data = obj.section_id(StandardSection::Data);
        obj.append_section_data(data, &[0; 8], 8);
        for (name, kind) in [
            (".data", None),
            (".orc_unwind_ip", Some(SectionKind::ReadOnlyData)),
            (".static_call_sites", Some(SectionKind::Data)),
        ] {
            let section = match kind {
                None => data,
                Some(kind) => {
                    let s = obj.add_section(Vec::new(), name.as_bytes().to_vec(), kind);
                    obj.append_section_data(s, &[0; 8], 4);
                    s
                }
            };
            obj.add_relocation(
                section,
                Relocation {
                    offset: 0,
                    symbol: f,
                    addend: 0,
                    flags: pc32,
                },
            )
            .unwrap();
        }
        let orc = obj.add_section(
            Vec::new(),
            b".orc_unwind".to_vec(),
            SectionKind::ReadOnlyData,
        );
        obj.append_section_data(orc, &[7; 6], 2);
        extra(&mut obj);
        obj.write().unwrap()
    }

    #[test]
    fn the_sections_filled_in_at_load_are_dropped_and_the_rest_kept() {
        use object::{Object, ObjectSection, ObjectSymbol};

        let module = module_with(|_| {});
        let slim = drop_load_time_sections("m.ko", &module).unwrap();
        let before = object::File::parse(&*module).unwrap();
        let after = object::File::parse(&*slim).unwrap();
        let names = |file: &object::File| -> Vec<String> {
            file.sections()
                .map(|s| s.name().unwrap().to_string())
                .collect()
        };
        assert!(names(&before).contains(&".orc_unwind_ip".to_string()));
        let kept = names(&after);
        for gone in [".orc_unwind", ".orc_unwind_ip", ".rela.orc_unwind_ip"] {
            assert!(!kept.iter().any(|n| n == gone), "{gone} in {kept:?}");
        }
        assert!(!kept.iter().any(|n| n.contains("static_call")), "{kept:?}");
        let expected: Vec<String> = names(&before)
            .into_iter()
            .filter(|n| !n.contains("orc_unwind") && !n.contains("static_call"))
            .collect();
        assert_eq!(kept, expected);
        // What stays is byte for byte what it was (the tables of names,
        // written anew, aside), relocations too.
        for section in after.sections() {
            let name = section.name().unwrap();
            if [".shstrtab", ".strtab", ".symtab"].contains(&name) {
                continue;
            }
            let old = before.section_by_name(name).unwrap();
            assert_eq!(section.data().unwrap(), old.data().unwrap(), "{name}");
            assert_eq!(section.align(), old.align(), "{name}");
        }
        let data = after.section_by_name(".data").unwrap();
        let relocations: Vec<_> = data.relocations().collect();
        assert_eq!(relocations.len(), 1);
        let object::RelocationTarget::Symbol(target) = relocations[0].1.target() else {
            panic!("{relocations:?}");
        };
        assert_eq!(after.symbol_by_index(target).unwrap().name(), Ok("f"));
        assert!(after.symbol_by_name("f").is_some());
        // The same module gives the same bytes.
        assert_eq!(drop_load_time_sections("m.ko", &module).unwrap(), slim);
    }

    #[test]
    fn a_module_without_them_is_left_as_it_is() {
        let slim = drop_load_time_sections("m.ko", &module_with(|_| {})).unwrap();
        assert_eq!(drop_load_time_sections("m.ko", &slim).unwrap(), slim);
    }

    #[test]
    fn a_module_that_points_into_a_dropped_section_is_refused() {
        use object::write::Relocation;
        use object::{RelocationFlags, SectionKind};

        let module = module_with(|obj| {
            let orc = obj.section_id(object::write::StandardSection::ReadOnlyData);
            obj.append_section_data(orc, &[0; 8], 8);
            let btf = obj.add_section(Vec::new(), b".BTF".to_vec(), SectionKind::ReadOnlyData);
            obj.append_section_data(btf, &[0; 8], 4);
            let btf_symbol = obj.section_symbol(btf);
            obj.add_relocation(
                orc,
                Relocation {
                    offset: 0,
                    symbol: btf_symbol,
                    addend: 0,
                    flags: RelocationFlags::Elf {
                        r_type: object::elf::R_X86_64_64,
                    },
                },
            )
            .unwrap();
        });
        let err = drop_load_time_sections("m.ko", &module).unwrap_err();
        assert!(
            err.to_string()
                .contains("m.ko: .rela.rodata refers to a section dropped from it"),
            "{err}"
        );
        let err = drop_load_time_sections("m.ko", b"not elf").unwrap_err();
        assert!(err.to_string().contains("m.ko: "), "{err}");
    }
}
