//! The build cache: which image a step made, by a key that covers the
//! image it ran on, the instruction as it was expanded, and its inputs
//! (for `COPY` and `ADD`, the digest of every file copied). Kept in
//! `<agent root>/build/cache.json`, replaced atomically (the engine's
//! [`crate::engine::write_json`]); an entry whose
//! image is gone is a miss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::image::digest::{Digest, Hasher};

/// One writer of the cache file at a time in this process.
static WRITER: Mutex<()> = Mutex::new(());

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// Key (hex) → image id (hex).
    entries: BTreeMap<String, String>,
}

/// The cache of one agent.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
}

/// The key of a step: its parent image, what it does, and its inputs.
pub fn key(parent: Option<&Digest>, created_by: &str, inputs: Option<&Digest>) -> Digest {
    let mut h = Hasher::new();
    for part in [
        parent.map(ToString::to_string).unwrap_or_default(),
        created_by.to_owned(),
        inputs.map(ToString::to_string).unwrap_or_default(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finish()
}

impl Cache {
    /// The cache under `dir`.
    pub fn new(dir: &Path) -> Self {
        Cache {
            path: dir.join("cache.json"),
        }
    }

    fn load(&self) -> File {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The image a step with `key` made, if recorded.
    pub fn get(&self, key: &Digest) -> Option<Digest> {
        let hex = self.load().entries.remove(key.hex())?;
        format!("sha256:{hex}").parse().ok()
    }

    /// Records that the step `key` made image `id`.
    pub fn put(&self, key: &Digest, id: &Digest) -> Result<(), crate::engine::EngineError> {
        let _guard = WRITER.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.load();
        file.entries
            .insert(key.hex().to_owned(), id.hex().to_owned());
        self.save(&file)
    }

    /// Forgets every entry; how many there were.
    pub fn clear(&self) -> std::io::Result<usize> {
        let _guard = WRITER.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.load().entries.len();
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(n),
        }
    }

    fn save(&self, file: &File) -> Result<(), crate::engine::EngineError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                crate::engine::EngineError::Internal(format!("create {}: {e}", dir.display()))
            })?;
        }
        crate::engine::write_json(&self.path, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let parent = Digest::of(b"parent");
        let k = key(Some(&parent), "RUN echo hi", None);
        assert_ne!(k, key(Some(&parent), "RUN echo ho", None));
        assert_ne!(k, key(None, "RUN echo hi", None));
        assert_ne!(k, key(Some(&parent), "RUN echo hi", Some(&parent)));
        assert_eq!(cache.get(&k), None);
        let id = Digest::of(b"image");
        cache.put(&k, &id).unwrap();
        assert_eq!(Cache::new(dir.path()).get(&k), Some(id));
        assert_eq!(cache.clear().unwrap(), 1);
        assert_eq!(cache.get(&k), None);
    }
}
