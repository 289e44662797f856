//! The image store on disk:
//!
//! ```text
//! <root>/blobs/sha256/<hex>          content, checked against its digest while written
//! <root>/ingest/<random>             blobs being written (cleared on open)
//! <root>/snapshots/<chain id hex>/   one unpacked layer each: fs/ and info.json
//! <root>/snapshots/.tmp-<random>/    a snapshot being unpacked (cleared on open)
//! <root>/images.json                 names → the image they point at, and
//!                                    the images kept by id (what builds made)
//! ```
//!
//! Nothing half-written is ever visible under a final name: blobs and
//! snapshots are made under a temporary name and renamed into place, and
//! `images.json` is replaced atomically. Two writers of the same blob or
//! snapshot (two pulls sharing a layer) both succeed; the first rename wins
//! and the other's copy is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::digest::{Digest, Hasher};
use super::manifest::{self, Compression, Document, Platform};
use super::unpack::unpack;
use super::ImageError;

/// What a name in the store points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// What the name was resolved to at the registry (an index or a
    /// manifest): the digest `docker images --digests` shows.
    pub target: Digest,
    /// The platform's manifest.
    pub manifest: Digest,
    /// The image config; its digest is the image id.
    pub config: Digest,
    /// The platform pulled.
    pub platform: Platform,
    /// When the name was set (RFC 3339).
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Names {
    images: BTreeMap<String, ImageRecord>,
    /// Images kept by id whether or not a name points at them, keyed by
    /// the id's hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    local: BTreeMap<String, LocalImage>,
}

/// An image made on this host (by a build or a commit), kept by its id:
/// it stays when its last name goes (`<none>` in `docker images`), and a
/// build's intermediate images stay as its cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalImage {
    /// What it is.
    pub record: ImageRecord,
    /// The image it was made on, if that was one of ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    /// A build step's image that is not the build's result: listed only
    /// by `docker images -a`.
    #[serde(default)]
    pub intermediate: bool,
}

/// A snapshot's description, in its `info.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The layer's diff id (uncompressed digest).
    pub diff_id: Digest,
    /// The chain id of the layers below, if any.
    pub parent: Option<Digest>,
    /// The uncompressed size.
    pub size: u64,
}

/// An empty directory: the lower layer of an image that has none.
const EMPTY_DIR: &str = "empty";

/// The store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    names: Mutex<()>,
    /// Keeps gc and those adding content apart; see [`Store::adding`].
    gate: Gate,
}

/// Who is adding content, and whether a gc is collecting.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct GateState {
    adding: usize,
    collecting: bool,
    /// A gc was asked for while content was being added or collected: it
    /// runs when the last adder, or the collection, is done.
    pending: bool,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds of the state, then applies `take` to it.
    async fn enter(&self, ready: impl Fn(&GateState) -> bool, take: impl FnOnce(&mut GateState)) {
        loop {
            // Registered before the state is looked at: no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if ready(&state) {
                    take(&mut state);
                    return;
                }
            }
            changed.await;
        }
    }

    fn leave(&self, give: impl FnOnce(&mut GateState)) {
        give(&mut self.lock());
        self.changed.notify_waiters();
    }
}

/// Keeps [`Store::gc`] from collecting while it lives: see
/// [`Store::adding`].
#[derive(Debug)]
pub struct Adding {
    store: std::sync::Arc<Store>,
}

impl Drop for Adding {
    fn drop(&mut self) {
        let mut collect = false;
        self.store.gate.leave(|s| {
            s.adding -= 1;
            if s.adding == 0 && s.pending && !s.collecting {
                s.pending = false;
                s.collecting = true;
                collect = true;
            }
        });
        if collect {
            // The deferred gc, off whatever thread let go last.
            let store = self.store.clone();
            std::thread::spawn(move || {
                if let Err(e) = store.collect_while_asked() {
                    tracing::warn!("image gc: {e}");
                }
            });
        }
    }
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let action = action.into();
    move |source| ImageError::Io { action, source }
}

/// A unique name for temporary files: pid, time and a counter.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The chain id of `diff_ids` (base first), as the image spec defines it.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut chain: Option<Digest> = None;
    for d in diff_ids {
        chain = Some(match chain {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        });
    }
    chain
}

/// One layer of an image, placed: its blob, the snapshot it unpacks into,
/// what it must unpack to, and the snapshot below it.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// The layer blob.
    pub blob: manifest::Descriptor,
    /// The snapshot's chain id.
    pub chain: Digest,
    /// The uncompressed digest the config promises.
    pub diff_id: Digest,
    /// The chain id of the layers below.
    pub parent: Option<Digest>,
}

/// Pairs a manifest's layers with its config's diff ids, base first.
pub fn plan(
    manifest: &manifest::Manifest,
    config: &ImageConfigBlob,
) -> Result<Vec<LayerPlan>, ImageError> {
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::InvalidManifest(format!(
            "{} layers in the manifest but {} diff ids in the config",
            manifest.layers.len(),
            config.diff_ids.len()
        )));
    }
    let mut parent = None;
    let mut out = Vec::new();
    for (i, blob) in manifest.layers.iter().enumerate() {
        let chain = chain_id(&config.diff_ids[..=i])
            .ok_or_else(|| ImageError::InvalidManifest("no layers".into()))?;
        out.push(LayerPlan {
            blob: blob.clone(),
            chain: chain.clone(),
            diff_id: config.diff_ids[i].clone(),
            parent: parent.replace(chain),
        });
    }
    Ok(out)
}

impl Store {
    /// Unpacks layer `layer`'s blob (already in the store) into its
    /// snapshot unless that is there, checking it against its diff id.
    /// Blocking: run it off the async threads.
    pub fn unpack_layer(&self, layer: &LayerPlan) -> Result<(), ImageError> {
        let digest = &layer.blob.digest;
        let file = File::open(self.blob_path(digest)).map_err(|e| ImageError::Io {
            action: format!("open layer {digest}"),
            source: e,
        })?;
        self.unpack_layer_from(
            layer,
            std::io::BufReader::with_capacity(1 << 20, file),
            || true,
        )
    }

    /// Unpacks layer `layer` from `blob` (its bytes as they arrive) into its
    /// snapshot unless that is there, checking it against its diff id; the
    /// snapshot is put in place only if `verified` then says the blob's
    /// digest was right. Blocking.
    pub fn unpack_layer_from(
        &self,
        layer: &LayerPlan,
        blob: impl std::io::BufRead,
        verified: impl FnOnce() -> bool,
    ) -> Result<(), ImageError> {
        let digest = &layer.blob.digest;
        let compression = Compression::of_media_type(&layer.blob.media_type).ok_or_else(|| {
            ImageError::InvalidManifest(format!(
                "layer {digest} has media type {:?}, which is not a layer",
                layer.blob.media_type
            ))
        })?;
        self.make_snapshot(&layer.chain, |dir| {
            let unpacked = unpack(blob, compression, dir).map_err(|e| match e {
                ImageError::Layer(why) => ImageError::Layer(format!("{digest}: {why}")),
                other => other,
            })?;
            if unpacked.diff_id != layer.diff_id {
                return Err(ImageError::Verify(format!(
                    "layer {digest} unpacks to {}, but the config says {}",
                    unpacked.diff_id, layer.diff_id
                )));
            }
            if !verified() {
                return Err(ImageError::Verify(format!(
                    "layer {digest} did not download whole"
                )));
            }
            Ok(SnapshotInfo {
                diff_id: layer.diff_id.clone(),
                parent: layer.parent.clone(),
                size: unpacked.size,
            })
        })
        .map(|_| ())
    }

    /// Opens (creating) the store at `root`, clearing work left by an
    /// interrupted writer.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for dir in ["blobs/sha256", "ingest", "snapshots", EMPTY_DIR] {
            fs::create_dir_all(root.join(dir))
                .map_err(io(format!("create {}", root.join(dir).display())))?;
        }
        let leftovers = |dir: PathBuf, prefix: &str| -> Vec<PathBuf> {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        };
        for stale in leftovers(root.join("ingest"), "") {
            let _ = fs::remove_file(stale);
        }
        for stale in leftovers(root.join("snapshots"), ".tmp-") {
            let _ = fs::remove_dir_all(stale);
        }
        Ok(Store {
            root: root.to_owned(),
            names: Mutex::new(()),
            gate: Gate::default(),
        })
    }

    /// Holds gc off while content is added: whatever writes blobs or
    /// snapshots that no image names yet holds one until an image names or
    /// keeps them. Waits only for a gc that is collecting (briefly); holds
    /// may nest.
    pub async fn adding(self: &std::sync::Arc<Self>) -> Adding {
        self.gate.enter(|s| !s.collecting, |s| s.adding += 1).await;
        Adding {
            store: self.clone(),
        }
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether blob `digest` is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole (small) blob.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        fs::read(self.blob_path(digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NotFound(format!("blob {digest}")),
            _ => ImageError::Io {
                action: format!("read blob {digest}"),
                source: e,
            },
        })
    }

    /// Writes a whole (small) blob, checked against `expected` if given.
    pub fn write_blob(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, ImageError> {
        let mut ingest = self.ingest(expected.cloned(), Some(bytes.len() as u64))?;
        ingest.write(bytes)?;
        ingest.commit()
    }

    /// Starts writing a blob; [`Ingest::commit`] checks it and puts it in
    /// place.
    pub fn ingest(
        &self,
        expected: Option<Digest>,
        size: Option<u64>,
    ) -> Result<Ingest, ImageError> {
        let path = self.root.join("ingest").join(unique());
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("create {}", path.display())))?;
        Ok(Ingest {
            file: Some(file),
            pending: Vec::new(),
            pending_len: 0,
            path,
            hasher: Hasher::new(),
            expected,
            size,
            blobs: self.root.join("blobs/sha256"),
            committed: false,
            written_back: 0,
        })
    }

    /// Where snapshot `chain` lives: the layer's files are in its `fs/`.
    pub fn snapshot_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain.hex())
    }

    /// A snapshot's info, if it is complete.
    pub fn snapshot(&self, chain: &Digest) -> Option<SnapshotInfo> {
        let bytes = fs::read(self.snapshot_path(chain).join("info.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Makes snapshot `chain` by running `fill` on an empty directory and
    /// renaming it into place; `fill` returns the snapshot's info. If the
    /// snapshot appeared meanwhile, the new copy is dropped.
    pub fn make_snapshot(
        &self,
        chain: &Digest,
        fill: impl FnOnce(&Path) -> Result<SnapshotInfo, ImageError>,
    ) -> Result<SnapshotInfo, ImageError> {
        if let Some(info) = self.snapshot(chain) {
            return Ok(info);
        }
        let tmp = self
            .root
            .join("snapshots")
            .join(format!(".tmp-{}", unique()));
        let fs_dir = tmp.join("fs");
        fs::create_dir_all(&fs_dir).map_err(io(format!("create {}", fs_dir.display())))?;
        let result = fill(&fs_dir).and_then(|info| {
            let json = serde_json::to_vec(&info).map_err(|e| ImageError::Io {
                action: "encode snapshot info".into(),
                source: e.into(),
            })?;
            fs::write(tmp.join("info.json"), json).map_err(io("write snapshot info"))?;
            Ok(info)
        });
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        match fs::rename(&tmp, self.snapshot_path(chain)) {
            Ok(()) => Ok(info),
            Err(_) if self.snapshot(chain).is_some() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(info)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(io(format!("put snapshot {chain} in place"))(e))
            }
        }
    }

    fn names_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn load_names(&self) -> Result<Names, ImageError> {
        match fs::read(self.names_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                action: format!("read {}", self.names_path().display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(io(format!("read {}", self.names_path().display()))(e)),
        }
    }

    fn save_names(&self, names: &Names) -> Result<(), ImageError> {
        let path = self.names_path();
        let tmp = self.root.join(format!(".images.json.{}", unique()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, names)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(format!("write {}", path.display()))(e)
        })
    }

    fn with_names<T>(
        &self,
        change: impl FnOnce(&mut Names) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut names = self.load_names()?;
        let out = change(&mut names)?;
        self.save_names(&names)?;
        Ok(out)
    }

    /// Points `name` (a full reference) at `record`.
    pub fn set_name(&self, name: &str, record: ImageRecord) -> Result<(), ImageError> {
        self.with_names(|n| {
            n.images.insert(name.to_owned(), record);
            Ok(())
        })
    }

    /// Removes `name`; returns what it pointed at.
    pub fn remove_name(&self, name: &str) -> Result<ImageRecord, ImageError> {
        self.with_names(|n| {
            n.images
                .remove(name)
                .ok_or_else(|| ImageError::NotFound(format!("image {name}")))
        })
    }

    /// Every name and what it points at.
    pub fn names(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        let _guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.load_names()?.images)
    }

    /// What `name` points at.
    pub fn lookup(&self, name: &str) -> Result<ImageRecord, ImageError> {
        self.names()?
            .remove(name)
            .ok_or_else(|| ImageError::NotFound(format!("image {name}")))
    }

    /// Keeps `image` by its id (replacing what was kept under that id).
    pub fn keep(&self, image: LocalImage) -> Result<(), ImageError> {
        self.with_names(|n| {
            n.local.insert(image.record.config.hex().to_owned(), image);
            Ok(())
        })
    }

    /// Stops keeping image `id` by its id; its names stay.
    pub fn forget(&self, id: &Digest) -> Result<Option<LocalImage>, ImageError> {
        self.with_names(|n| Ok(n.local.remove(id.hex())))
    }

    /// Every image kept by id.
    pub fn local_images(&self) -> Result<BTreeMap<Digest, LocalImage>, ImageError> {
        let _guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .load_names()?
            .local
            .into_values()
            .map(|l| (l.record.config.clone(), l))
            .collect())
    }

    /// An image's manifest and config, read from the store.
    pub fn image(
        &self,
        record: &ImageRecord,
    ) -> Result<(manifest::Manifest, ImageConfigBlob), ImageError> {
        let bytes = self.read_blob(&record.manifest)?;
        let Document::Manifest(m) = manifest::parse(&bytes, None)? else {
            return Err(ImageError::InvalidManifest(format!(
                "{} is an index, not a manifest",
                record.manifest
            )));
        };
        let config = ImageConfigBlob::parse(&self.read_blob(&record.config)?)?;
        Ok((m, config))
    }

    /// The snapshot directories an image's rootfs stacks, topmost first,
    /// for [`crate::runtime::overlay::Overlay`]. An image without layers
    /// (built `FROM scratch`) stacks one empty directory, as overlayfs
    /// needs a lower layer.
    pub fn lowers(&self, record: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        let (_, config) = self.image(record)?;
        let mut out = Vec::new();
        for n in 1..=config.diff_ids.len() {
            let chain = chain_id(&config.diff_ids[..n])
                .ok_or_else(|| ImageError::NotFound("layers".into()))?;
            if self.snapshot(&chain).is_none() {
                return Err(ImageError::NotFound(format!(
                    "snapshot {chain} of image {}",
                    record.config
                )));
            }
            out.push(self.snapshot_path(&chain).join("fs"));
        }
        if out.is_empty() {
            return Ok(self.empty_lowers());
        }
        out.reverse();
        Ok(out)
    }

    /// What an image without layers stacks: one empty directory.
    pub fn empty_lowers(&self) -> Vec<PathBuf> {
        vec![self.root.join(EMPTY_DIR)]
    }

    /// Removes every blob and snapshot no name needs; what went. While
    /// content is being added (see [`Store::adding`]) or another gc
    /// collects, nothing is removed now: the gc is deferred until that is
    /// done.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        let now = {
            let mut s = self.gate.lock();
            if s.adding > 0 || s.collecting {
                s.pending = true;
                false
            } else {
                s.collecting = true;
                true
            }
        };
        if !now {
            return Ok(GcReport {
                deferred: true,
                ..GcReport::default()
            });
        }
        self.collect_while_asked()
    }

    /// Collects, again while a gc was asked for meanwhile and nobody is
    /// adding; then lets adders in. The report of the first round.
    fn collect_while_asked(&self) -> Result<GcReport, ImageError> {
        let first = self.collect();
        loop {
            let mut again = false;
            self.gate.leave(|s| {
                again = s.pending && s.adding == 0;
                s.pending &= !again;
                s.collecting = again;
            });
            if !again {
                return first;
            }
            if let Err(e) = self.collect() {
                tracing::warn!("image gc: {e}");
            }
        }
    }

    fn collect(&self) -> Result<GcReport, ImageError> {
        let _guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let names = self.load_names()?;
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut snapshots: BTreeSet<Digest> = BTreeSet::new();
        let kept = names.local.values().map(|l| &l.record);
        for record in names.images.values().chain(kept) {
            blobs.insert(record.target.clone());
            blobs.insert(record.manifest.clone());
            blobs.insert(record.config.clone());
            // An index may list other platforms' manifests; only ours is kept.
            if let Ok((m, config)) = self.image(record) {
                blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
                for n in 1..=config.diff_ids.len() {
                    snapshots.extend(chain_id(&config.diff_ids[..n]));
                }
            }
        }
        let mut report = GcReport::default();
        for entry in self.unreferenced("blobs/sha256", &blobs)? {
            report.blob_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            report.blobs += 1;
            fs::remove_file(entry.path())
                .map_err(io(format!("remove {}", entry.path().display())))?;
        }
        for entry in self.unreferenced("snapshots", &snapshots)? {
            report.snapshots += 1;
            fs::remove_dir_all(entry.path())
                .map_err(io(format!("remove {}", entry.path().display())))?;
        }
        Ok(report)
    }
}

impl Store {
    /// The entries of `dir` (named by digest hex) not in `keep`; anything
    /// not named by a digest counts as unreferenced.
    fn unreferenced(
        &self,
        dir: &str,
        keep: &BTreeSet<Digest>,
    ) -> Result<Vec<fs::DirEntry>, ImageError> {
        let entries = fs::read_dir(self.root.join(dir)).map_err(io(format!("list {dir}")))?;
        Ok(entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                !format!("sha256:{name}")
                    .parse::<Digest>()
                    .is_ok_and(|d| keep.contains(&d))
            })
            .collect())
    }
}

/// What [`Store::gc`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Snapshots removed.
    pub snapshots: u64,
    /// Nothing was removed: content was being added, and the gc runs once
    /// that is done.
    pub deferred: bool,
}

/// The parts of an image config the store needs; the whole config stays
/// in its blob.
#[derive(Debug, Clone)]
pub struct ImageConfigBlob {
    /// The layers' diff ids, base first.
    pub diff_ids: Vec<Digest>,
    /// The parsed config.
    pub config: oci_spec::image::ImageConfiguration,
}

impl ImageConfigBlob {
    /// Reads a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::InvalidManifest(format!("image config: {e}")))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageConfigBlob { diff_ids, config })
    }
}

/// A blob being written: hashed as it goes, checked and renamed into
/// place by [`Ingest::commit`], deleted if dropped uncommitted.
pub struct Ingest {
    file: Option<File>,
    /// Chunks not yet written: gathered, then written with one `writev`,
    /// so downloaded bytes are never copied into a buffer of ours.
    pending: Vec<bytes::Bytes>,
    pending_len: usize,
    path: PathBuf,
    hasher: Hasher,
    expected: Option<Digest>,
    size: Option<u64>,
    blobs: PathBuf,
    committed: bool,
    /// How far the kernel was last asked to start writing back.
    written_back: u64,
}

/// How many bytes an ingest lets pile up in the page cache before it asks
/// the kernel to start writing them out, so that the sync at commit finds
/// little left to do.
const WRITE_BACK_STEP: u64 = 8 << 20;
/// How many bytes an ingest gathers before writing them.
const GATHER: usize = 1 << 20;

impl Ingest {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.write_bytes(bytes::Bytes::copy_from_slice(bytes))
    }

    /// Appends a chunk, without copying it.
    pub fn write_bytes(&mut self, bytes: bytes::Bytes) -> Result<(), ImageError> {
        if let Some(size) = self.size {
            if self.hasher.len() + bytes.len() as u64 > size {
                return Err(ImageError::Verify(format!(
                    "more than the {size} bytes announced{}",
                    self.expected
                        .as_ref()
                        .map(|d| format!(" for {d}"))
                        .unwrap_or_default()
                )));
            }
        }
        if self.file.is_none() {
            return Err(ImageError::Verify("write after commit".into()));
        }
        self.hasher.update(&bytes);
        self.pending_len += bytes.len();
        self.pending.push(bytes);
        if self.pending_len >= GATHER {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is gathered, and starts write-back of what the kernel
    /// has had for a while.
    fn flush(&mut self) -> Result<(), ImageError> {
        let Some(file) = &mut self.file else {
            return Err(ImageError::Verify("write after commit".into()));
        };
        let mut slices: Vec<std::io::IoSlice<'_>> = self
            .pending
            .iter()
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => {
                    return Err(io("write a blob")(std::io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("write a blob")(e)),
            }
        }
        self.pending.clear();
        self.pending_len = 0;
        let in_kernel = self.hasher.len();
        if in_kernel - self.written_back >= WRITE_BACK_STEP {
            start_write_back(file, self.written_back, in_kernel - self.written_back);
            self.written_back = in_kernel;
        }
        Ok(())
    }

    /// How many bytes so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Starts over (a download that restarts from zero).
    pub fn reset(&mut self) -> Result<(), ImageError> {
        self.hasher = Hasher::new();
        self.written_back = 0;
        self.pending.clear();
        self.pending_len = 0;
        self.file = Some(File::create(&self.path).map_err(io("restart a blob"))?);
        Ok(())
    }

    /// Checks size and digest, syncs, and renames into place.
    pub fn commit(mut self) -> Result<Digest, ImageError> {
        self.flush()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| ImageError::Verify("committed twice".into()))?;
        let len = self.hasher.len();
        let digest = std::mem::take(&mut self.hasher).finish();
        if let Some(size) = self.size {
            if len != size {
                return Err(ImageError::Verify(format!(
                    "{} bytes where {size} were announced{}: the content is truncated",
                    len,
                    self.expected
                        .as_ref()
                        .map(|d| format!(" for {d}"))
                        .unwrap_or_default()
                )));
            }
        }
        if let Some(expected) = &self.expected {
            if *expected != digest {
                return Err(ImageError::Verify(format!(
                    "the content's digest is {digest}, not {expected}"
                )));
            }
        }
        file.sync_all().map_err(io("sync a blob"))?;
        fs::rename(&self.path, self.blobs.join(digest.hex()))
            .map_err(io(format!("put blob {digest} in place")))?;
        self.committed = true;
        Ok(digest)
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset`
/// to disk, without waiting. Only a hint: failure changes nothing.
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gc_leaves_content_being_added_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let stale = store.write_blob(b"nobody's", None).unwrap();
        assert_eq!(store.gc().unwrap().blobs, 1);
        assert!(!store.has_blob(&stale));

        // A pull's blobs, not yet named: the gc asked for meanwhile (an
        // rmi's) does not wait, and removes nothing.
        let adding = store.adding().await;
        let nested = store.adding().await;
        let pulled = store.write_blob(b"being pulled", None).unwrap();
        let dropped = store.write_blob(b"left unnamed", None).unwrap();
        let report = store.gc().unwrap();
        assert!(report.deferred);
        assert_eq!(report.blobs, 0);
        assert!(store.has_blob(&pulled) && store.has_blob(&dropped));
        let record = ImageRecord {
            target: pulled.clone(),
            manifest: pulled.clone(),
            config: pulled.clone(),
            platform: Platform::host(),
            created: String::new(),
        };
        store.set_name("example.com/pulled:1", record).unwrap();
        drop(nested);
        assert!(store.has_blob(&dropped), "gc ran with an adder left");
        // The last adder done: the deferred gc runs.
        drop(adding);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.has_blob(&dropped) {
            assert!(
                std::time::Instant::now() < deadline,
                "the deferred gc never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(store.has_blob(&pulled));
    }

    #[test]
    fn blobs_are_checked_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        assert_eq!(store.write_blob(b"hello", Some(&good)).unwrap(), good);
        assert_eq!(store.read_blob(&good).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        let err = store
            .write_blob(b"hello!", Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest"), "{err}");
        assert!(!store.has_blob(&wrong));
        // Truncated: fewer bytes than announced.
        let mut ingest = store.ingest(Some(Digest::of(b"abcdef")), Some(6)).unwrap();
        ingest.write(b"abc").unwrap();
        assert!(ingest
            .commit()
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // Nothing is left in ingest/.
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        // An abandoned ingest is cleared when the store opens again.
        let abandoned = store.ingest(None, None).unwrap();
        std::mem::forget(abandoned);
        drop(store);
        Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            Some(Digest::of(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn names_are_saved_atomically_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"x");
        let record = ImageRecord {
            target: d.clone(),
            manifest: d.clone(),
            config: d,
            platform: Platform::host(),
            created: "now".into(),
        };
        store
            .set_name("docker.io/library/a:latest", record.clone())
            .unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.lookup("docker.io/library/a:latest").unwrap(), record);
        assert!(again.remove_name("docker.io/library/b:latest").is_err());
        again.remove_name("docker.io/library/a:latest").unwrap();
        assert!(again.names().unwrap().is_empty());
    }
}
