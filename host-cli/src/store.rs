//! The machine store: one directory per machine under Berth's home.
//!
//! ```text
//! <home>/machines/<name>/machine.json   the machine's record (see `record`)
//! <home>/machines/<name>/…              whatever its driver keeps there
//! <home>/locks/<name>.lock              the machine's lock
//! ```
//!
//! `<home>` is `$BERTH_HOME`, else the platform's data directory for
//! "berth" (`~/.local/share/berth` on Linux). Every write is atomic (a
//! temporary file, fsync, rename), a machine directory appears only once
//! complete and disappears in one rename, and commands that change a
//! machine hold its lock. Nothing here touches another machine's files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::record::{MachineRecord, RecordError, RECORD_FILE};

/// The environment variable that overrides Berth's home directory.
pub const HOME_ENV: &str = "BERTH_HOME";

/// How long a command waits for another `berth` working on the same
/// machine (e.g. a `create` still booting it) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// How often a waiting command tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No home directory could be determined.
    #[error("cannot find a data directory for berth: set {HOME_ENV}")]
    NoHome,
    /// The name breaks docker-machine's naming rule.
    #[error("invalid machine name {0:?}: a name starts with a letter or digit and has only letters, digits, '.' and '-'")]
    InvalidName(String),
    /// No machine has this name.
    #[error("Machine {0:?} does not exist. Use \"berth ls\" to list machines, \"berth create {0}\" to add it.")]
    NotFound(String),
    /// A machine has this name already.
    #[error("Machine {0:?} already exists")]
    AlreadyExists(String),
    /// The machine's record cannot be read.
    #[error("machine {name:?} has an unreadable record {path}: {source}; fix it, or remove the machine with \"berth rm -f {name}\"")]
    Corrupt {
        /// The machine.
        name: String,
        /// The record file.
        path: PathBuf,
        /// Why it cannot be read.
        source: RecordError,
    },
    /// Another berth process holds the machine's lock.
    #[error(
        "machine {0:?} is busy: another berth command is working on it; try again when it is done"
    )]
    Busy(String),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Checks a machine name against docker-machine's rule
/// `^[a-zA-Z0-9][a-zA-Z0-9.-]*$`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

/// The machine store rooted at one home directory.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
}

impl Store {
    /// The store at `$BERTH_HOME` or the platform's data directory.
    pub fn open() -> Result<Self, StoreError> {
        if let Some(home) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
            return Ok(Store::at(home));
        }
        directories::ProjectDirs::from("", "", "berth")
            .map(|dirs| Store::at(dirs.data_dir()))
            .ok_or(StoreError::NoHome)
    }

    /// The store rooted at `home`.
    pub fn at(home: impl Into<PathBuf>) -> Self {
        Store { home: home.into() }
    }

    /// The store's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn machines(&self) -> PathBuf {
        self.home.join("machines")
    }

    /// The directory of the machine called `name` (which may not exist).
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.machines().join(name)
    }

    /// Whether a machine called `name` exists, complete or not.
    pub fn exists(&self, name: &str) -> bool {
        self.machine_dir(name).is_dir()
    }

    /// Names of all machines, in natural order ("dev2" before "dev10").
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.machines();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Staging and trash directories start with '.', which no valid
            // name does.
            if validate_name(&name).is_ok() && entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort_by(|a, b| natural_cmp(a, b));
        Ok(names)
    }

    /// Loads the record of machine `name`.
    pub fn load(&self, name: &str) -> Result<MachineRecord, StoreError> {
        validate_name(name)?;
        let dir = self.machine_dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        let path = dir.join(RECORD_FILE);
        MachineRecord::read(&path, name).map_err(|source| StoreError::Corrupt {
            name: name.to_owned(),
            path,
            source,
        })
    }

    /// Saves `record` over the existing one, atomically.
    pub fn save(&self, record: &MachineRecord) -> Result<(), StoreError> {
        let path = self.machine_dir(&record.name).join(RECORD_FILE);
        write_atomic(&path, &record.to_json()).map_err(io_err("write", &path))
    }

    /// Makes the directory of a new machine with its record in it. The
    /// directory is built under a staging name and renamed into place, so
    /// it is never seen without its record.
    pub fn create(
        &self,
        record: &MachineRecord,
        _lock: &MachineLock,
    ) -> Result<PathBuf, StoreError> {
        let dir = self.machine_dir(&record.name);
        if dir.exists() {
            return Err(StoreError::AlreadyExists(record.name.clone()));
        }
        let machines = self.machines();
        fs::create_dir_all(&machines).map_err(io_err("create", &machines))?;
        let staging = machines.join(format!(".new-{}-{}", record.name, std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).map_err(io_err("create", &staging))?;
        set_private(&staging);
        let built = write_atomic(&staging.join(RECORD_FILE), &record.to_json())
            .map_err(io_err("write", &staging))
            .and_then(|()| fs::rename(&staging, &dir).map_err(io_err("create", &dir)));
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        sync_dir(&machines);
        Ok(dir)
    }

    /// Removes machine `name`'s directory: renamed away first, so the
    /// machine vanishes at once even if deleting its files is interrupted.
    pub fn remove(&self, name: &str, _lock: &MachineLock) -> Result<(), StoreError> {
        let dir = self.machine_dir(name);
        let trash = self
            .machines()
            .join(format!(".trash-{name}-{}", std::process::id()));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", &dir)(e)),
        }
        sync_dir(&self.machines());
        fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))
    }

    /// Takes machine `name`'s lock, waiting for another berth command
    /// holding it; `on_wait` runs once if there is a wait.
    pub fn lock(&self, name: &str, on_wait: impl FnOnce()) -> Result<MachineLock, StoreError> {
        validate_name(name)?;
        let path = self.home.join("locks").join(format!("{name}.lock"));
        MachineLock::acquire(path, LOCK_WAIT, on_wait).map_err(|e| match e {
            LockError::Busy => StoreError::Busy(name.to_owned()),
            LockError::Io(path, source) => StoreError::Io {
                action: "lock",
                path,
                source,
            },
        })
    }
}

#[derive(Debug)]
enum LockError {
    Busy,
    Io(PathBuf, io::Error),
}

/// An exclusive lock on one machine, released when dropped.
#[derive(Debug)]
pub struct MachineLock {
    path: PathBuf,
    file: File,
}

impl MachineLock {
    fn acquire(path: PathBuf, wait: Duration, on_wait: impl FnOnce()) -> Result<Self, LockError> {
        let io = |e| LockError::Io(path.clone(), e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let deadline = Instant::now() + wait;
        let mut on_wait = Some(on_wait);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                // The holder may have removed the file (`rm`) between our open
                // and our lock; then this lock guards nothing: start again.
                Ok(()) if platform::same_file(&file, &path) => {
                    return Ok(MachineLock { path, file });
                }
                Ok(()) => continue,
                Err(fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(LockError::Busy);
                    }
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }

    /// Releases the lock and deletes its file (for a machine that is gone).
    pub fn remove(self) {
        // Unlink while still holding it: a waiter that then gets the old
        // file notices that it is no longer at the path and retries.
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Writes `bytes` to `path` so that readers see either the old content or
/// all of the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename in `dir` durable (best effort; a no-op off unix).
fn sync_dir(dir: &Path) {
    if cfg!(unix) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Compares names so that runs of digits order by value.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(unix)]
fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn set_private(_: &Path) {}

#[cfg(unix)]
mod platform {
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// Whether the open `file` is still the one at `path`.
    pub(super) fn same_file(file: &File, path: &Path) -> bool {
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

#[cfg(not(unix))]
mod platform {
    use std::fs::File;
    use std::path::Path;

    /// Windows cannot delete a file another handle has open, so a lock
    /// file is never swapped under a holder.
    pub(super) fn same_file(_: &File, path: &Path) -> bool {
        path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker_machines_rule() {
        for ok in ["dev", "a", "0", "dev-1.example", "A.b-C"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-dev", ".dev", "dev_1", "dév", "a/b", "a b", ".."] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["dev10", "dev2", "a", "dev1", "b0"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "b0", "dev1", "dev2", "dev10"]);
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn lock_is_exclusive_and_survives_removal_race() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/x.lock");
        let first = MachineLock::acquire(path.clone(), Duration::ZERO, || {}).unwrap();
        assert!(matches!(
            MachineLock::acquire(path.clone(), Duration::ZERO, || {}),
            Err(LockError::Busy)
        ));
        first.remove();
        assert!(!path.exists());
        let again = MachineLock::acquire(path.clone(), Duration::ZERO, || {}).unwrap();
        assert!(path.exists());
        drop(again);
    }
}
