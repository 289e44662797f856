//! User namespaces: the spec's uid/gid maps, written by the runtime (root
//! in its own namespace) for the intermediate process once it has made
//! its new user namespace.

use std::fs;

use nix::unistd::Pid;
use oci_spec::runtime::{Linux, LinuxIdMapping};

use super::RuntimeError;

/// The map file's lines: "inside outside count" per range.
fn map_text(mappings: &[LinuxIdMapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// The host id that `id` inside the namespace maps to.
pub(crate) fn host_id(mappings: &[LinuxIdMapping], id: u32) -> Option<u32> {
    mappings.iter().find_map(|m| {
        (id >= m.container_id() && id - m.container_id() < m.size())
            .then(|| m.host_id() + (id - m.container_id()))
    })
}

/// Writes `linux`'s uid and gid maps for process `pid`.
pub(crate) fn write_maps(pid: Pid, linux: &Linux) -> Result<(), RuntimeError> {
    for (file, mappings) in [
        ("uid_map", linux.uid_mappings()),
        ("gid_map", linux.gid_mappings()),
    ] {
        let text = map_text(mappings.as_deref().unwrap_or_default());
        let path = format!("/proc/{pid}/{file}");
        fs::write(&path, text).map_err(|e| RuntimeError::Io {
            action: format!("write the container's {file} ({path})"),
            source: e,
        })?;
    }
    Ok(())
}

/// Checks the maps against the namespaces, as runc does: a new user
/// namespace needs both maps, and maps need a user namespace.
pub(crate) fn check(linux: Option<&Linux>, new_user_ns: bool) -> Result<(), String> {
    let uid = linux.and_then(|l| l.uid_mappings().as_ref());
    let gid = linux.and_then(|l| l.gid_mappings().as_ref());
    let has = |m: Option<&Vec<LinuxIdMapping>>| m.is_some_and(|m| !m.is_empty());
    match (new_user_ns, has(uid), has(gid)) {
        (true, true, true) | (false, false, false) => {}
        (true, _, _) => {
            return Err("a new user namespace needs both uidMappings and gidMappings".into())
        }
        (false, _, _) => {
            return Err("uidMappings/gidMappings are set but no new user namespace is".into())
        }
    }
    for m in uid.into_iter().chain(gid).flatten() {
        if m.size() == 0 {
            return Err(format!(
                "the id mapping {}→{} has size 0",
                m.container_id(),
                m.host_id()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxIdMappingBuilder};

    fn mapping(inside: u32, outside: u32, size: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(inside)
            .host_id(outside)
            .size(size)
            .build()
            .unwrap()
    }

    #[test]
    fn map_lines_and_lookup() {
        let m = [mapping(0, 100000, 65536), mapping(70000, 5, 1)];
        assert_eq!(map_text(&m), "0 100000 65536\n70000 5 1\n");
        assert_eq!(host_id(&m, 65535), Some(165535));
        assert_eq!(host_id(&m, 70001), None);
        assert_eq!(host_id(&m, 0), Some(100000));
        assert_eq!(host_id(&m, 70000), Some(5));
        assert_eq!(host_id(&m, 65536), None);
    }

    #[test]
    fn maps_and_namespaces_must_agree() {
        let both = LinuxBuilder::default()
            .uid_mappings(vec![mapping(0, 1000, 1)])
            .gid_mappings(vec![mapping(0, 1000, 1)])
            .build()
            .unwrap();
        let uid_only = LinuxBuilder::default()
            .uid_mappings(vec![mapping(0, 1000, 1)])
            .build()
            .unwrap();
        check(Some(&both), true).unwrap();
        check(None, false).unwrap();
        assert!(check(Some(&uid_only), true).is_err());
        assert!(check(Some(&both), false).is_err());
        let zero = LinuxBuilder::default()
            .uid_mappings(vec![mapping(0, 1000, 0)])
            .gid_mappings(vec![mapping(0, 1000, 1)])
            .build()
            .unwrap();
        assert!(check(Some(&zero), true).is_err());
    }
}
