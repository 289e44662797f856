//! Named volumes (`<root>/volumes/<name>/_data`, the `local` driver) and
//! the `-v` syntax that refers to them or to host paths.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{write_json_durable, EngineError};

/// What `docker volume inspect` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Made for a container's VOLUME, not by name.
    pub anonymous: bool,
}

/// The volumes under one directory.
pub struct Volumes {
    dir: PathBuf,
}

/// Where a `-v` mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An absolute host path.
    Path(PathBuf),
    /// A named volume.
    Volume(String),
}

/// One `-v SOURCE:DEST[:OPTIONS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// From.
    pub source: Source,
    /// To, in the container.
    pub destination: String,
    /// `ro`.
    pub read_only: bool,
}

/// Parses `-v` text as Docker reads it.
pub fn parse_bind(text: &str) -> Result<Bind, EngineError> {
    let invalid = || EngineError::Invalid(format!("invalid volume specification: '{text}'"));
    let parts: Vec<&str> = text.split(':').collect();
    let (source, destination, options) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(invalid()),
    };
    if source.is_empty() || !destination.starts_with('/') {
        return Err(invalid());
    }
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" | "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave"
            | "rslave" | "nocopy" | "consistent" | "cached" | "delegated" => {}
            _ => return Err(invalid()),
        }
    }
    let source = if source.starts_with('/') {
        Source::Path(PathBuf::from(source))
    } else {
        validate(source)?;
        Source::Volume(source.to_owned())
    };
    Ok(Bind {
        source,
        destination: destination.to_owned(),
        read_only,
    })
}

fn validate(name: &str) -> Result<(), EngineError> {
    let bytes = name.as_bytes();
    let ok = bytes.len() >= 2
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )))
    }
}

impl Volumes {
    /// The volumes in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Volumes { dir }
    }

    /// A volume's data directory.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// The volume `name`, made if missing.
    pub fn ensure(
        &self,
        name: &str,
        anonymous: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, EngineError> {
        validate(name)?;
        if let Ok(v) = self.get(name) {
            return Ok(v);
        }
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join("_data"))
            .map_err(EngineError::io(format!("create volume {name}")))?;
        let volume = Volume {
            name: name.to_owned(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            labels,
            anonymous,
        };
        write_json_durable(&dir.join("volume.json"), &volume)?;
        Ok(volume)
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, EngineError> {
        let bytes = std::fs::read(self.dir.join(name).join("volume.json"))
            .map_err(|_| EngineError::NotFound(format!("get {name}: no such volume")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Internal(format!("volume {name}: {e}")))
    }

    /// Every volume.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes a volume; `in_use` refuses with the containers' ids.
    pub fn remove(&self, name: &str, in_use: bool) -> Result<(), EngineError> {
        self.get(name)?;
        if in_use {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use"
            )));
        }
        std::fs::remove_dir_all(self.dir.join(name))
            .map_err(EngineError::io(format!("remove volume {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_as_docker_reads_them() {
        assert_eq!(
            parse_bind("/srv/data:/data:ro").unwrap(),
            Bind {
                source: Source::Path("/srv/data".into()),
                destination: "/data".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_bind("cache:/var/cache").unwrap().source,
            Source::Volume("cache".into())
        );
        for bad in [
            "",
            "/a",
            "a:relative",
            "/a:/b:bogus",
            "x y:/b",
            "/a:/b:ro:z",
        ] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
    }
}
