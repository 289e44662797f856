//! Reading a bundle's `config.json` and checking what this runtime supports.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::RuntimeError;

/// A bundle's spec with its rootfs resolved to an absolute path.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The rootfs, absolute.
    pub rootfs: PathBuf,
    /// The parsed `config.json`.
    pub spec: Spec,
}

impl Bundle {
    /// Loads `dir/config.json` and resolves its root path against `dir`.
    pub fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let dir = std::path::absolute(dir).map_err(RuntimeError::io(format!(
            "resolve bundle path {}",
            dir.display()
        )))?;
        let invalid = |reason: String| RuntimeError::Spec {
            bundle: dir.clone(),
            reason,
        };
        let config = dir.join("config.json");
        let spec = Spec::load(&config).map_err(|e| invalid(format!("config.json: {e}")))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("config.json has no root".into()))?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root path {} is not a directory",
                rootfs.display()
            )));
        }
        if spec.process().is_none() {
            return Err(invalid("config.json has no process".into()));
        }
        if spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .is_none_or(|a| a.is_empty())
        {
            return Err(invalid("process.args is empty".into()));
        }
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let new_user_ns = namespaces
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_none());
        super::userns::check(spec.linux().as_ref(), new_user_ns).map_err(invalid)?;
        Ok(Bundle { dir, rootfs, spec })
    }
}

impl Bundle {
    /// Whether anything of the container's can see a runtime process
    /// before it execs: hooks inside the container, or a PID namespace
    /// that is not the container's own. The runtime then runs from a sealed
    /// copy of itself (see [`super::sealed`]).
    pub fn exposes_runtime(&self) -> bool {
        let own_pid_ns = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|list| {
                list.iter()
                    .any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_none())
            });
        !own_pid_ns || super::hooks::any_inside(&self.spec)
    }
}

/// Checks a container id as runc does: non-empty, no path separators.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "my-ctr_1.2+x"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
