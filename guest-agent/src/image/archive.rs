//! Images in and out of the store as files.
//!
//! `save` writes one tar that is at once an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) and a `docker save` archive (its
//! `manifest.json` names the same blobs), as Docker 25 and later write
//! them. `load` reads either kind, as a tar (plain, gzip or zstd) or as an
//! OCI layout directory; the older `docker save` form, with
//! `<id>/layer.tar` files and symbolic links between them, loads too.
//!
//! `import` makes an image of a single layer from a file system tar, as
//! `docker import` does.
//!
//! Every file of the input is streamed into the store as a blob, checked
//! against its name where the name is a digest; small metadata files are
//! kept in memory. Nothing in the input is ever written by its own path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::digest::Digest;
use super::manifest::{self, media, Compression, Descriptor, Document, Index, Platform};
use super::reference::Reference;
use super::store::{plan, ImageConfigBlob, ImageRecord, Store};
use super::ImageError;

/// Makes an image whose one layer is the tar (plain, gzip or zstd) in
/// `input`, as `docker import` does: the tar is kept as it came as the
/// layer's blob, `config` is the image's runtime config (Docker's `config`
/// object) and `comment` its one history entry's comment. The image's
/// record; it has no name yet.
pub fn import(
    store: &Store,
    mut input: impl Read,
    config: serde_json::Value,
    comment: String,
) -> Result<ImageRecord, ImageError> {
    let mut ingest = store.ingest(None, None)?;
    let mut buffer = vec![0; 1 << 20];
    let mut head = Vec::new();
    loop {
        let n = input.read(&mut buffer).map_err(io("read the archive"))?;
        if n == 0 {
            break;
        }
        if head.len() < 6 {
            head.extend_from_slice(&buffer[..n.min(6 - head.len())]);
        }
        ingest.write(&buffer[..n])?;
    }
    if head.is_empty() {
        return Err(ImageError::Layer("the archive is empty".into()));
    }
    let compression = Compression::sniff(&head);
    if compression == Compression::None {
        for (magic, name) in [(&b"BZh"[..], "bzip2"), (&b"\xfd7zXZ\x00"[..], "xz")] {
            if head.starts_with(magic) {
                return Err(ImageError::Layer(format!(
                    "the archive is {name}-compressed, which is not supported: give it plain, or gzip- or zstd-compressed"
                )));
            }
        }
    }
    let size = ingest.len();
    let digest = ingest.commit()?;
    let diff_id = match compression {
        Compression::None => digest.clone(),
        _ => {
            let blob = std::fs::File::open(store.blob_path(&digest))
                .map_err(io(format!("open blob {digest}")))?;
            let mut hashed = super::digest::HashingReader::new(super::unpack::decompress(
                std::io::BufReader::with_capacity(1 << 20, blob),
                compression,
            )?);
            std::io::copy(&mut hashed, &mut std::io::sink())
                .map_err(|e| ImageError::Layer(format!("cannot decompress the archive: {e}")))?;
            hashed.finish().0
        }
    };
    super::commit::commit(
        store,
        super::commit::NewImage {
            parent: None,
            layer: Some(super::commit::NewLayer {
                descriptor: Descriptor::new(compression.layer_media_type(), digest, size),
                diff_id,
            }),
            config,
            history: super::commit::HistoryEntry {
                created_by: String::new(),
                comment: Some(comment),
            },
            author: None,
        },
    )
}

/// Files up to this size that are not blobs are read into memory.
const METADATA_LIMIT: u64 = 4 << 20;
/// How many symbolic links one path may go through.
const MAX_LINKS: usize = 16;

/// The annotation containerd and Docker put the full image name in.
const NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation for an image's name (often just its tag).
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let action = action.into();
    move |source| ImageError::Io { action, source }
}

fn bad(why: impl Into<String>) -> ImageError {
    ImageError::InvalidManifest(why.into())
}

/// Writes the images `names` name as one tar to `out`.
pub fn save(store: &Store, names: &[Reference], out: impl Write) -> Result<(), ImageError> {
    let mut blobs = BTreeSet::new();
    let mut index = Vec::new();
    // docker's manifest.json: one entry per image, with all its names.
    let mut docker: BTreeMap<Digest, serde_json::Value> = BTreeMap::new();
    for name in names {
        let record = store.lookup(&name.to_string())?;
        let (manifest, _) = store.image(&record)?;
        let size = std::fs::metadata(store.blob_path(&record.manifest))
            .map_err(io(format!("read blob {}", record.manifest)))?
            .len();
        let mut annotations = serde_json::json!({ NAME_ANNOTATION: name.to_string() });
        if let Some(tag) = name.tag() {
            annotations[REF_ANNOTATION] = tag.into();
        }
        index.push(serde_json::json!({
            "mediaType": manifest.media_type.as_deref().unwrap_or(media::OCI_MANIFEST),
            "digest": record.manifest,
            "size": size,
            "annotations": annotations,
        }));
        let path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let entry = docker.entry(record.manifest.clone()).or_insert_with(|| {
            serde_json::json!({
                "Config": path(&manifest.config.digest),
                "RepoTags": [],
                "Layers": manifest.layers.iter().map(|l| path(&l.digest)).collect::<Vec<_>>(),
            })
        });
        if let (Some(tags), Some(tag)) = (entry["RepoTags"].as_array_mut(), name.tag()) {
            tags.push(format!("{}:{tag}", name.familiar_name()).into());
        }
        blobs.insert(record.manifest.clone());
        blobs.insert(manifest.config.digest.clone());
        blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": index,
    });
    let docker: Vec<_> = docker.into_values().collect();

    let mut tar = tar::Builder::new(out);
    let write = |e: std::io::Error| io("write the archive")(e);
    let header = |size: u64, kind: tar::EntryType| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(0);
        h
    };
    let small = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| {
        let mut h = header(bytes.len() as u64, tar::EntryType::Regular);
        tar.append_data(&mut h, path, bytes).map_err(write)
    };
    small(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(0, tar::EntryType::Directory);
        tar.append_data(&mut h, dir, std::io::empty())
            .map_err(write)?;
    }
    for digest in &blobs {
        let file = std::fs::File::open(store.blob_path(digest))
            .map_err(io(format!("read blob {digest}")))?;
        let size = file
            .metadata()
            .map_err(io(format!("read blob {digest}")))?
            .len();
        let mut h = header(size, tar::EntryType::Regular);
        tar.append_data(&mut h, format!("blobs/sha256/{}", digest.hex()), file)
            .map_err(write)?;
    }
    small(&mut tar, "index.json", index.to_string().as_bytes())?;
    small(
        &mut tar,
        "manifest.json",
        serde_json::Value::from(docker).to_string().as_bytes(),
    )?;
    tar.into_inner().and_then(|mut w| w.flush()).map_err(write)
}

/// A file of the input: small metadata in memory, the rest a blob.
#[derive(Debug, Clone)]
enum Content {
    Memory(Vec<u8>),
    Blob(Digest, u64),
}

/// The input's files by normalized path, and its symbolic links.
#[derive(Default)]
struct Input {
    files: HashMap<String, Content>,
    links: HashMap<String, String>,
}

/// `path` relative to the input's root without `.`; `None` if it leaves
/// the root.
fn normalize(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl Input {
    /// Takes in a file of `size` bytes at `path`.
    fn add_file(
        &mut self,
        store: &Store,
        path: &str,
        size: u64,
        mut reader: impl Read,
    ) -> Result<(), ImageError> {
        let claimed = path
            .strip_prefix("blobs/sha256/")
            .map(|hex| format!("sha256:{hex}").parse::<Digest>())
            .transpose()
            .map_err(|_| bad(format!("{path}: a blob whose name is not a sha256 digest")))?;
        let content = if let Some(known) = claimed.as_ref().filter(|d| store.has_blob(d)) {
            // Already in the store: the input's copy need not be read.
            Content::Blob(known.clone(), size)
        } else if claimed.is_none() && size <= METADATA_LIMIT {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(io(format!("read {path}")))?;
            Content::Memory(bytes)
        } else {
            let mut ingest = store.ingest(claimed.clone(), Some(size))?;
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = reader.read(&mut buf).map_err(io(format!("read {path}")))?;
                if n == 0 {
                    break;
                }
                ingest.write(&buf[..n])?;
            }
            let digest = ingest.commit().map_err(|e| match e {
                ImageError::Verify(why) => ImageError::Verify(format!("{path}: {why}")),
                other => other,
            })?;
            Content::Blob(digest, size)
        };
        self.files.insert(path.to_owned(), content);
        Ok(())
    }

    /// Reads a tar (plain or compressed) into the store.
    fn from_tar(store: &Store, input: impl Read) -> Result<Self, ImageError> {
        let mut input = std::io::BufReader::with_capacity(1 << 20, input);
        let head = std::io::BufRead::fill_buf(&mut input)
            .map_err(io("read the archive"))?
            .to_vec();
        let reader: Box<dyn Read> = match Compression::sniff(&head) {
            Compression::Gzip => Box::new(super::gzip::GzipReader::new(input)),
            Compression::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(input)
                    .map_err(|e| bad(format!("the archive's zstd stream: {e}")))?,
            ),
            Compression::None => Box::new(input),
        };
        let mut archive = tar::Archive::new(reader);
        let mut out = Input::default();
        let entries = archive.entries().map_err(io("read the archive"))?;
        for entry in entries {
            let entry = entry.map_err(io("read the archive"))?;
            let raw = entry.path().map_err(io("read the archive"))?.into_owned();
            let path = normalize(&raw)
                .ok_or_else(|| bad(format!("{}: an entry outside the archive", raw.display())))?;
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    out.add_file(store, &path, size, entry)?;
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(io("read the archive"))?
                        .ok_or_else(|| bad(format!("{path}: a link without a target")))?;
                    // Hard links name a path from the root; symbolic
                    // ones are relative to their directory.
                    let joined = if entry.header().entry_type() == tar::EntryType::Link {
                        target.into_owned()
                    } else {
                        Path::new(&path)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target)
                    };
                    let target = normalize(&joined)
                        .ok_or_else(|| bad(format!("{path}: a link out of the archive")))?;
                    out.links.insert(path, target);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Reads an OCI layout directory into the store.
    fn from_dir(store: &Store, root: &Path) -> Result<Self, ImageError> {
        let mut out = Input::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let dir = root.join(&rel);
            for entry in std::fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))? {
                let entry = entry.map_err(io(format!("read {}", dir.display())))?;
                let rel = rel.join(entry.file_name());
                let path = normalize(&rel).unwrap_or_default();
                let kind = entry
                    .file_type()
                    .map_err(io(format!("stat {}", rel.display())))?;
                if kind.is_dir() {
                    pending.push(rel);
                } else if kind.is_file() {
                    let file = std::fs::File::open(entry.path())
                        .map_err(io(format!("open {}", entry.path().display())))?;
                    let size = file
                        .metadata()
                        .map_err(io(format!("stat {}", rel.display())))?
                        .len();
                    out.add_file(store, &path, size, file)?;
                }
            }
        }
        Ok(out)
    }

    /// The file at `path`, through links.
    fn get(&self, path: &str) -> Result<&Content, ImageError> {
        let mut path = normalize(Path::new(path))
            .ok_or_else(|| bad(format!("{path}: a path out of the archive")))?;
        for _ in 0..MAX_LINKS {
            if let Some(content) = self.files.get(&path) {
                return Ok(content);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => return Err(bad(format!("the archive has no {path}"))),
            }
        }
        Err(bad(format!("{path}: too many links")))
    }

    /// The bytes at `path`.
    fn read(&self, store: &Store, path: &str) -> Result<Vec<u8>, ImageError> {
        match self.get(path)? {
            Content::Memory(bytes) => Ok(bytes.clone()),
            Content::Blob(digest, _) => store.read_blob(digest),
        }
    }

    /// The file at `path` as a blob in the store: its digest and size.
    fn blob(&self, store: &Store, path: &str) -> Result<(Digest, u64), ImageError> {
        match self.get(path)? {
            Content::Memory(bytes) => Ok((store.write_blob(bytes, None)?, bytes.len() as u64)),
            Content::Blob(digest, size) => Ok((digest.clone(), *size)),
        }
    }
}

/// Loads the images in `input` (a tar file, plain or compressed, or an
/// OCI layout directory): their blobs into the store, their layers
/// unpacked, their names set — each name the input gives, or `tag` for an
/// input that holds one image. Returns the names set.
pub fn load(
    store: &Store,
    input: &Path,
    platform: &Platform,
    tag: Option<&Reference>,
) -> Result<Vec<(String, ImageRecord)>, ImageError> {
    let files = if input.is_dir() {
        Input::from_dir(store, input)?
    } else {
        let file = std::fs::File::open(input).map_err(io(format!("open {}", input.display())))?;
        Input::from_tar(store, file)?
    };
    let images = if files.get("index.json").is_ok() {
        oci_images(store, &files, platform)?
    } else if files.get("manifest.json").is_ok() {
        docker_images(store, &files)?
    } else {
        return Err(bad(
            "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
        ));
    };
    if tag.is_some() && images.len() != 1 {
        return Err(bad(format!(
            "a name for one image was given, but the input holds {}",
            images.len()
        )));
    }
    let mut named = Vec::new();
    for (mut names, record) in images {
        if let Some(tag) = tag {
            names.push(tag.clone());
        }
        if names.is_empty() {
            return Err(bad(format!(
                "image {} has no name in the input: give it one",
                record.config
            )));
        }
        install(store, &record)?;
        for name in names {
            store.set_name(&name.to_string(), record.clone())?;
            named.push((name.to_string(), record.clone()));
        }
    }
    Ok(named)
}

/// Unpacks an image's layers into snapshots.
fn install(store: &Store, record: &ImageRecord) -> Result<(), ImageError> {
    let (manifest, config) = store.image(record)?;
    for layer in plan(&manifest, &config)? {
        if !store.has_blob(&layer.blob.digest) {
            return Err(bad(format!("the input lacks layer {}", layer.blob.digest)));
        }
        store.unpack_layer(&layer)?;
    }
    Ok(())
}

/// What a loaded image is called and points at.
type Loaded = (Vec<Reference>, ImageRecord);

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The platform an image config says it is for.
fn platform_of(config: &ImageConfigBlob) -> Platform {
    Platform {
        os: config.config.os().to_string(),
        architecture: config.config.architecture().to_string(),
        variant: config.config.variant().clone(),
        os_version: config.config.os_version().clone(),
    }
}

fn oci_images(
    store: &Store,
    files: &Input,
    platform: &Platform,
) -> Result<Vec<Loaded>, ImageError> {
    let index: Index = serde_json::from_slice(&files.read(store, "index.json")?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        let mut names = Vec::new();
        let name = entry
            .annotations
            .get(NAME_ANNOTATION)
            .or_else(|| entry.annotations.get(REF_ANNOTATION));
        // A bare tag in ref.name ("latest") names nothing on its own.
        if let Some(name) = name.filter(|n| n.contains('/') || n.contains(':') || n.contains('@')) {
            names.push(name.parse::<Reference>()?);
        }
        let bytes = store.read_blob(&entry.digest).map_err(|_| {
            bad(format!(
                "index.json names {}, which the input lacks",
                entry.digest
            ))
        })?;
        let manifest = match manifest::parse(&bytes, Some(&entry.media_type))? {
            Document::Manifest(_) => entry.digest.clone(),
            Document::Index(inner) => inner.select(platform)?.digest.clone(),
        };
        let bytes = store.read_blob(&manifest)?;
        let Document::Manifest(m) = manifest::parse(&bytes, None)? else {
            return Err(bad(format!("{manifest} is an index inside an index")));
        };
        let config = ImageConfigBlob::parse(&store.read_blob(&m.config.digest)?)?;
        out.push((
            names,
            ImageRecord {
                target: entry.digest.clone(),
                manifest,
                config: m.config.digest.clone(),
                platform: platform_of(&config),
                created: now(),
            },
        ));
    }
    Ok(out)
}

/// One image in `docker save`'s manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_images(store: &Store, files: &Input) -> Result<Vec<Loaded>, ImageError> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(&files.read(store, "manifest.json")?)
        .map_err(|e| bad(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = files.blob(store, &entry.config)?;
        let config = ImageConfigBlob::parse(&store.read_blob(&config_digest)?)?;
        let mut layers = Vec::new();
        for path in &entry.layers {
            let (digest, size) = files.blob(store, path)?;
            let mut head = [0u8; 4];
            let n = std::fs::File::open(store.blob_path(&digest))
                .and_then(|mut f| f.read(&mut head))
                .map_err(io(format!("read {path}")))?;
            let media_type = Compression::sniff(&head[..n]).layer_media_type();
            layers.push(Descriptor::new(media_type, digest, size));
        }
        // The archive has no manifest of its own: write the OCI one it
        // implies.
        let manifest = manifest::Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: Descriptor::new(media::OCI_CONFIG, config_digest.clone(), config_size),
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
        let digest = store.write_blob(&bytes, None)?;
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| t.parse::<Reference>())
            .collect::<Result<Vec<_>, _>>()?;
        out.push((
            names,
            ImageRecord {
                target: digest.clone(),
                manifest: digest,
                config: config_digest,
                platform: platform_of(&config),
                created: now(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_archive() {
        assert_eq!(
            normalize(Path::new("./blobs/sha256/ab")).unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(normalize(Path::new("a/../b")).unwrap(), "b");
        assert!(normalize(Path::new("../etc/passwd")).is_none());
        assert!(normalize(Path::new("/etc/passwd")).is_none());
    }
}
