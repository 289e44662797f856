//! Named volumes (`<root>/volumes/<name>/_data`, the `local` driver), and
//! what a container asks to have mounted: `-v`, `--mount` and `--tmpfs`.

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
    /// A missing source path is made at start (`-v`); for `--mount
    /// type=bind` it must exist.
    pub make_source: bool,
}

/// A `--mount` or `--tmpfs`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A bind or a named volume, as `-v` makes them.
    Bind(Bind),
    /// A volume of its own for the container (`type=volume` without a
    /// source).
    Anonymous {
        /// Where, in the container.
        destination: String,
        /// `readonly`.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Where, in the container.
        destination: String,
        /// Its mount options.
        options: Vec<String>,
    },
}

impl Requested {
    /// Where it goes in the container.
    pub fn destination(&self) -> &str {
        match self {
            Requested::Bind(b) => &b.destination,
            Requested::Anonymous { destination, .. } | Requested::Tmpfs { destination, .. } => {
                destination
            }
        }
    }
}

/// Checks a `--mount`'s form as dockerd does. Whether a bind's source
/// exists is [`check_sources`]'s question: it is asked at create and start,
/// not when the container is only looked at.
pub fn parse_mount(m: &super::config::MountRequest) -> Result<Requested, EngineError> {
    let invalid = |why: String| {
        EngineError::Invalid(format!(
            "invalid mount config for type \"{}\": {why}",
            m.kind
        ))
    };
    if !m.target.starts_with('/') {
        return Err(invalid(format!(
            "invalid mount path: '{}' mount path must be absolute",
            m.target
        )));
    }
    let destination = m.target.clone();
    match m.kind.as_str() {
        "bind" => {
            if !m.source.starts_with('/') {
                return Err(invalid(format!(
                    "invalid mount path: '{}' mount path must be absolute",
                    m.source
                )));
            }
            Ok(Requested::Bind(Bind {
                source: Source::Path(PathBuf::from(&m.source)),
                destination,
                read_only: m.read_only,
                make_source: false,
            }))
        }
        "volume" if m.source.is_empty() => Ok(Requested::Anonymous {
            destination,
            read_only: m.read_only,
        }),
        "volume" => {
            validate(&m.source)?;
            Ok(Requested::Bind(Bind {
                source: Source::Volume(m.source.clone()),
                destination,
                read_only: m.read_only,
                make_source: false,
            }))
        }
        "tmpfs" => {
            if !m.source.is_empty() {
                return Err(invalid("source must not be specified".into()));
            }
            let mut options = vec!["nosuid".to_owned(), "nodev".to_owned()];
            if m.read_only {
                options.push("ro".into());
            }
            if let Some(t) = &m.tmpfs_options {
                if t.size_bytes > 0 {
                    options.push(format!("size={}", t.size_bytes));
                }
                if t.mode != 0 {
                    options.push(format!("mode={:o}", t.mode & 0o7777));
                }
            }
            Ok(Requested::Tmpfs {
                destination,
                options,
            })
        }
        other => Err(EngineError::Invalid(format!(
            "mount type {other:?} is not supported here: use bind, volume or tmpfs"
        ))),
    }
}

/// Checks a `--tmpfs PATH[:OPTIONS]` (options as `mount -t tmpfs` takes
/// them); without options it is `noexec,nosuid,nodev`, as with dockerd.
pub fn parse_tmpfs(destination: &str, options: &str) -> Result<Requested, EngineError> {
    if !destination.starts_with('/') {
        return Err(EngineError::Invalid(format!(
            "invalid tmpfs mount path: '{destination}' must be absolute"
        )));
    }
    let mut out = vec!["noexec".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let key = option.split_once('=').map_or(option, |(k, _)| k);
        let opposite = match key {
            "exec" => "noexec",
            "noexec" => "exec",
            "suid" => "nosuid",
            "nosuid" => "suid",
            "dev" => "nodev",
            "nodev" => "dev",
            "ro" => "rw",
            "rw" => "ro",
            "size" | "mode" | "uid" | "gid" | "nr_inodes" | "nr_blocks" | "atime" | "noatime"
            | "relatime" | "strictatime" | "nodiratime" => "",
            _ => {
                return Err(EngineError::Invalid(format!(
                    "invalid tmpfs option {option:?} for {destination}"
                )))
            }
        };
        out.retain(|o| o != opposite && o.split_once('=').map_or(o.as_str(), |(k, _)| k) != key);
        out.push(option.to_owned());
    }
    Ok(Requested::Tmpfs {
        destination: destination.to_owned(),
        options: out,
    })
}

/// Everything a container asks to have mounted (`-v`, then `--mount`,
/// then `--tmpfs`), checked; no two at one place.
pub fn requested(host: &super::config::HostConfig) -> Result<Vec<Requested>, EngineError> {
    let mut out = Vec::new();
    for text in host.binds.iter().flatten() {
        out.push(Requested::Bind(parse_bind(text)?));
    }
    for m in host.mounts.iter().flatten() {
        out.push(parse_mount(m)?);
    }
    for (destination, options) in host.tmpfs.iter().flatten() {
        out.push(parse_tmpfs(destination, options)?);
    }
    let mut seen = std::collections::HashSet::new();
    for r in &out {
        let place = r.destination().trim_end_matches('/');
        if !seen.insert(if place.is_empty() { "/" } else { place }.to_owned()) {
            return Err(EngineError::Invalid(format!(
                "Duplicate mount point: {}",
                r.destination()
            )));
        }
    }
    Ok(out)
}

/// A mount the container gets besides the defaults, as start makes it and
/// inspect shows it: [`Requested`] with its anonymous volumes named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// A host path or a named volume.
    Bind(Bind),
    /// A volume of the container's own (`--mount type=volume` without a
    /// source, or a `VOLUME` nothing else covers).
    Anonymous {
        /// The volume's name.
        name: String,
        /// Where, in the container.
        destination: String,
        /// `readonly`.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Where, in the container.
        destination: String,
        /// Its mount options.
        options: Vec<String>,
    },
}

/// What container `id` mounts: what it asked for, and an anonymous volume
/// for each of `declared` (the image's and the container's `VOLUME`s) and
/// each sourceless volume mount, unless a bind or tmpfs is already there.
/// An anonymous volume is named after the container and its place in the
/// sorted list of those paths, so it is the same one at every start.
pub fn plan(
    id: &str,
    requested: Vec<Requested>,
    declared: impl IntoIterator<Item = String>,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut covered = std::collections::HashSet::new();
    let mut wanted: Vec<String> = declared.into_iter().collect();
    let mut read_only = std::collections::HashSet::new();
    for r in requested {
        match r {
            Requested::Bind(bind) => {
                covered.insert(bind.destination.clone());
                out.push(Planned::Bind(bind));
            }
            Requested::Tmpfs {
                destination,
                options,
            } => {
                covered.insert(destination.clone());
                out.push(Planned::Tmpfs {
                    destination,
                    options,
                });
            }
            Requested::Anonymous {
                destination,
                read_only: ro,
            } => {
                if ro {
                    read_only.insert(destination.clone());
                }
                wanted.push(destination);
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    let stem = &id[..id.len().min(48)];
    for (i, destination) in wanted.into_iter().enumerate() {
        if covered.contains(&destination) {
            continue;
        }
        out.push(Planned::Anonymous {
            name: format!("{stem}{i:04}"),
            read_only: read_only.contains(&destination),
            destination,
        });
    }
    out
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
        make_source: true,
    })
}

impl Bind {
    /// Refuses a `--mount type=bind` whose source does not exist, in
    /// dockerd's words (a `-v` source is made instead).
    pub fn check_source(&self) -> Result<(), EngineError> {
        match &self.source {
            Source::Path(path) if !self.make_source && !path.exists() => {
                Err(EngineError::Invalid(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    path.display()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// [`Bind::check_source`] for each bind of `requested`.
pub fn check_sources(requested: &[Requested]) -> Result<(), EngineError> {
    requested.iter().try_for_each(|r| match r {
        Requested::Bind(bind) => bind.check_source(),
        _ => Ok(()),
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
    fn tmpfs_options_override_the_defaults() {
        let options = |text: &str| match parse_tmpfs("/t", text).unwrap() {
            Requested::Tmpfs { options, .. } => options,
            other => panic!("{other:?}"),
        };
        assert_eq!(options(""), ["noexec", "nosuid", "nodev"]);
        assert_eq!(
            options("exec,size=1m,size=2m"),
            ["nosuid", "nodev", "exec", "size=2m"]
        );
        assert!(parse_tmpfs("t", "").is_err());
        assert!(parse_tmpfs("/t", "uid=0,bogus").is_err());
    }

    #[test]
    fn binds_parse_as_docker_reads_them() {
        assert_eq!(
            parse_bind("/srv/data:/data:ro").unwrap(),
            Bind {
                source: Source::Path("/srv/data".into()),
                destination: "/data".into(),
                read_only: true,
                make_source: true,
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

    #[test]
    fn a_missing_bind_source_is_refused_only_for_mount() {
        let mount = |kind: &str, source: &str, read_only| super::super::config::MountRequest {
            kind: kind.into(),
            source: source.into(),
            target: "/d".into(),
            read_only,
            ..Default::default()
        };
        let gone = "/nonexistent/berth-test-source";
        // Its form is fine; that it is missing is a separate question.
        let requested = vec![parse_mount(&mount("bind", gone, false)).unwrap()];
        let err = check_sources(&requested).unwrap_err().to_string();
        assert!(
            err.contains("bind source path does not exist: /nonexistent/berth-test-source"),
            "{err}"
        );
        let made = vec![Requested::Bind(parse_bind(&format!("{gone}:/d")).unwrap())];
        check_sources(&made).unwrap();
        assert_eq!(
            parse_mount(&mount("volume", "", true)).unwrap(),
            Requested::Anonymous {
                destination: "/d".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn anonymous_volumes_are_named_by_place_and_keep_readonly() {
        let id = "c".repeat(64);
        let requested = vec![
            Requested::Bind(parse_bind("/srv:/covered").unwrap()),
            Requested::Anonymous {
                destination: "/ro".into(),
                read_only: true,
            },
        ];
        let planned = plan(&id, requested, ["/covered".into(), "/data".into()]);
        let stem = "c".repeat(48);
        assert_eq!(
            planned[1..],
            [
                Planned::Anonymous {
                    name: format!("{stem}0001"),
                    destination: "/data".into(),
                    read_only: false,
                },
                Planned::Anonymous {
                    name: format!("{stem}0002"),
                    destination: "/ro".into(),
                    read_only: true,
                },
            ]
        );
        assert!(matches!(&planned[0], Planned::Bind(b) if b.destination == "/covered"));
    }
}
