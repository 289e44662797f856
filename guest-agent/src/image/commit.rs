//! New images made on this host: a container's writable layer turned into
//! a layer blob, and an image committed on top of a parent with it. What
//! `docker build` and `docker commit` make.
//!
//! A container's upper directory is already in overlay form (a whiteout is
//! a 0/0 character device, an opaque directory has
//! `trusted.overlay.opaque=y`); the layer tar is written in the form the
//! image spec gives (`.wh.NAME` files, `.wh..wh..opq`), gzip-compressed,
//! hashed twice as it goes (the diff id before compression, the blob's
//! digest after) and streamed into the store. The new layer's snapshot is
//! then unpacked from the stored blob by the same unpacker a pull uses,
//! so what runs is exactly what would be pushed.
//!
//! The upper directory belongs to a container: nothing in it is followed.
//! Every file is opened with `O_NOFOLLOW` and links are archived as links.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::digest::{Digest, Hasher};
use super::manifest::{self, media, Descriptor, Document};
use super::store::{plan, ImageRecord, Ingest, Store};
use super::ImageError;

/// The overlayfs xattr that marks an opaque directory.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// How deep a layer's tree may go: deeper than any real file system
/// layout, and shallow enough that the walk's recursion stays small.
const MAX_DEPTH: usize = 256;

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let action = action.into();
    move |source| ImageError::Io { action, source }
}

/// A layer written into the store.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// The blob.
    pub descriptor: Descriptor,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
}

/// What is in an upper directory, in the order it is archived.
struct Entry {
    rel: PathBuf,
    meta: fs::Metadata,
}

/// Lists `dir` (relative `rel`) depth first, names sorted, so the same
/// tree always gives the same tar.
fn walk(root: &Path, rel: &Path, depth: usize, out: &mut Vec<Entry>) -> Result<(), ImageError> {
    if depth > MAX_DEPTH {
        return Err(ImageError::Layer(format!(
            "{}: deeper than {MAX_DEPTH} directories",
            rel.display()
        )));
    }
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err(format!("list {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("list {}", dir.display())))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let meta = fs::symlink_metadata(root.join(&rel))
            .map_err(io_err(format!("stat {}", rel.display())))?;
        let is_dir = meta.is_dir();
        out.push(Entry {
            rel: rel.clone(),
            meta,
        });
        if is_dir {
            walk(root, &rel, depth + 1, out)?;
        }
    }
    Ok(())
}

/// How a path changed, as `docker diff` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `C`: there below, changed above.
    Modified = 0,
    /// `A`: new.
    Added = 1,
    /// `D`: removed (a whiteout).
    Deleted = 2,
}

/// What the upper directory `upper` changed on the layers `lowers` (top
/// first): each path, sorted, with how. Directories count as changed only
/// when something in them did; mount points the runtime made (`skip`) do
/// not count.
pub fn changes(
    upper: &Path,
    lowers: &[PathBuf],
    skip: &[PathBuf],
) -> Result<Vec<(PathBuf, Change)>, ImageError> {
    let mut entries = Vec::new();
    walk(upper, Path::new(""), 0, &mut entries)?;
    let below = |rel: &Path| {
        lowers
            .iter()
            .any(|l| fs::symlink_metadata(l.join(rel)).is_ok())
    };
    let mut out: std::collections::BTreeMap<PathBuf, Change> = Default::default();
    for entry in &entries {
        if is_placeholder(entry, upper, skip) {
            continue;
        }
        let kind = if entry.meta.file_type().is_char_device() && entry.meta.rdev() == 0 {
            Change::Deleted
        } else if !below(&entry.rel) {
            Change::Added
        } else if entry.meta.is_dir() {
            // Made again over one below (opaque): what the layers had in
            // it and it has not is gone. Otherwise copied up for what is
            // in it: said below, for its parents.
            if is_opaque(&upper.join(&entry.rel)) {
                for name in hidden_by(upper, lowers, &entry.rel) {
                    out.insert(entry.rel.join(name), Change::Deleted);
                }
            }
            continue;
        } else {
            Change::Modified
        };
        out.insert(entry.rel.clone(), kind);
    }
    let parents: Vec<PathBuf> = out
        .keys()
        .flat_map(|p| {
            p.ancestors()
                .skip(1)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    for parent in parents {
        out.entry(parent).or_insert(Change::Modified);
    }
    Ok(out.into_iter().collect())
}

/// The names the layers `lowers` (top first, in overlay form) show in
/// directory `rel` that the opaque directory `rel` of `upper` does not,
/// sorted: what a whiteout or an opaque directory in a layer hides from
/// the layers under it is not there to be hidden again.
fn hidden_by(upper: &Path, lowers: &[PathBuf], rel: &Path) -> Vec<std::ffi::OsString> {
    let mut seen = std::collections::BTreeMap::new();
    for lower in lowers {
        let dir = lower.join(rel);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            // Nothing here, or a file over the layers below it.
            Ok(_) => break,
            Err(_) => continue,
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let shown = entry
                .metadata()
                .is_ok_and(|m| !(m.file_type().is_char_device() && m.rdev() == 0));
            seen.entry(entry.file_name()).or_insert(shown);
        }
        if is_opaque(&dir) {
            break;
        }
    }
    seen.into_iter()
        .filter(|(name, shown)| *shown && fs::symlink_metadata(upper.join(rel).join(name)).is_err())
        .map(|(name, _)| name)
        .collect()
}

/// Whether an entry is a mount point the runtime made and nothing wrote
/// to: an empty file or directory at one of `skip`.
fn is_placeholder(entry: &Entry, root: &Path, skip: &[PathBuf]) -> bool {
    if !skip.iter().any(|s| s == &entry.rel) {
        return false;
    }
    if entry.meta.is_file() {
        return entry.meta.len() == 0;
    }
    entry.meta.is_dir() && fs::read_dir(root.join(&entry.rel)).is_ok_and(|mut d| d.next().is_none())
}

/// The xattrs a layer carries: all but overlayfs's own and other
/// `trusted.` ones, which only the kernel's layers may have.
fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with("trusted."))
        .filter_map(|n| {
            let value = xattr::get(path, &n).ok().flatten()?;
            Some((n, value))
        })
        .collect()
}

fn is_opaque(path: &Path) -> bool {
    xattr::get(path, OPAQUE_XATTR)
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

/// Hashes what is written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes into a blob being ingested.
struct IngestWriter(Ingest);

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn header_for(meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid().into());
    h.set_gid(meta.gid().into());
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

/// Turns the upper directory `upper` of a container into a layer in the
/// store; `None` if the container changed nothing. `skip` names mount
/// points (relative paths) the runtime made, left out while empty.
pub fn layer_from_upper(
    store: &Store,
    upper: &Path,
    skip: &[PathBuf],
) -> Result<Option<NewLayer>, ImageError> {
    let mut entries = Vec::new();
    walk(upper, Path::new(""), 0, &mut entries)?;
    entries.retain(|e| !is_placeholder(e, upper, skip));
    if entries.is_empty() {
        return Ok(None);
    }
    let ingest = store.ingest(None, None)?;
    let compressed = HashingWriter {
        inner: IngestWriter(ingest),
        hasher: Hasher::new(),
    };
    let gzip = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
    let uncompressed = HashingWriter {
        inner: gzip,
        hasher: Hasher::new(),
    };
    let mut tar = tar::Builder::new(uncompressed);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in &entries {
        append(&mut tar, upper, entry, &mut links)?;
    }
    let uncompressed = tar.into_inner().map_err(io_err("finish the layer tar"))?;
    let diff_id = uncompressed.hasher.finish();
    let compressed = uncompressed
        .inner
        .finish()
        .map_err(io_err("compress the layer"))?;
    let size = compressed.hasher.len();
    let digest = compressed.inner.0.commit()?;
    Ok(Some(NewLayer {
        descriptor: Descriptor::new(media::OCI_LAYER_GZIP, digest, size),
        diff_id,
    }))
}

/// Appends one entry of the upper directory in image-spec form.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    upper: &Path,
    entry: &Entry,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ImageError> {
    let path = upper.join(&entry.rel);
    let rel = &entry.rel;
    let meta = &entry.meta;
    let failed = |e: io::Error| io_err(format!("archive {}", rel.display()))(e);
    let kind = meta.file_type();
    if kind.is_char_device() && meta.rdev() == 0 {
        // An overlayfs whiteout: `.wh.NAME` beside it.
        let name = rel.file_name().unwrap_or_default().to_string_lossy();
        let whiteout = rel.with_file_name(format!(".wh.{name}"));
        let mut h = header_for(meta, tar::EntryType::Regular);
        h.set_mode(0o644);
        return tar
            .append_data(&mut h, &whiteout, io::empty())
            .map_err(failed);
    }
    let xattrs = xattrs_of(&path);
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(n, v)| (format!("SCHILY.xattr.{n}"), v.as_slice()))
            .collect();
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(failed)?;
    }
    if kind.is_dir() {
        let mut h = header_for(meta, tar::EntryType::Directory);
        // `dir/`, as docker's layers name directories.
        tar.append_data(&mut h, rel.join(""), io::empty())
            .map_err(failed)?;
        if is_opaque(&path) {
            let mut h = header_for(meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            tar.append_data(&mut h, rel.join(".wh..wh..opq"), io::empty())
                .map_err(failed)?;
        }
        Ok(())
    } else if kind.is_symlink() {
        let target = fs::read_link(&path).map_err(failed)?;
        let mut h = header_for(meta, tar::EntryType::Symlink);
        tar.append_link(&mut h, rel, target).map_err(failed)
    } else if kind.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                let mut h = header_for(meta, tar::EntryType::Link);
                return tar.append_link(&mut h, rel, first).map_err(failed);
            }
            links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(failed)?;
        let mut h = header_for(meta, tar::EntryType::Regular);
        h.set_size(meta.len());
        tar.append_data(&mut h, rel, file).map_err(failed)
    } else if kind.is_fifo() {
        let mut h = header_for(meta, tar::EntryType::Fifo);
        tar.append_data(&mut h, rel, io::empty()).map_err(failed)
    } else if kind.is_socket() {
        // A socket is a live thing, not content: left out, as docker does.
        Ok(())
    } else {
        Err(ImageError::Layer(format!(
            "{}: device nodes cannot go into an image layer",
            rel.display()
        )))
    }
}

/// One entry of an image config's `history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryEntry {
    /// What made the step (`/bin/sh -c #(nop)  ENV A=b`, say).
    pub created_by: String,
    /// A comment (`docker commit -m`).
    pub comment: Option<String>,
}

/// A new image: its parent (none for `scratch`), its new layer if any,
/// and its runtime config (Docker's `config` object).
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// The image below, if any.
    pub parent: Option<&'a ImageRecord>,
    /// The layer this step adds.
    pub layer: Option<NewLayer>,
    /// The `config` object: Env, Cmd, Entrypoint, WorkingDir, …
    pub config: Value,
    /// What made it.
    pub history: HistoryEntry,
    /// The author (`docker commit -a`).
    pub author: Option<String>,
}

/// Writes the config and manifest of `image` into the store and unpacks
/// its new layer's snapshot; the image's record (it has no name yet).
pub fn commit(store: &Store, image: NewImage<'_>) -> Result<ImageRecord, ImageError> {
    let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let (mut config, mut layers, docker_form, platform) = match image.parent {
        Some(parent) => {
            let config: Value = serde_json::from_slice(&store.read_blob(&parent.config)?)
                .map_err(|e| ImageError::InvalidManifest(format!("image config: {e}")))?;
            let bytes = store.read_blob(&parent.manifest)?;
            let Document::Manifest(m) = manifest::parse(&bytes, None)? else {
                return Err(ImageError::InvalidManifest(format!(
                    "{} is an index, not a manifest",
                    parent.manifest
                )));
            };
            let docker = m.media_type.as_deref() == Some(media::DOCKER_MANIFEST)
                || m.config.media_type == media::DOCKER_CONFIG;
            (config, m.layers, docker, parent.platform.clone())
        }
        None => {
            let platform = manifest::Platform::host();
            let mut config = json!({
                "architecture": platform.architecture,
                "os": platform.os,
                "rootfs": {"type": "layers", "diff_ids": []},
            });
            if let Some(v) = &platform.variant {
                config["variant"] = json!(v);
            }
            (config, Vec::new(), false, platform)
        }
    };
    let Some(object) = config.as_object_mut() else {
        return Err(ImageError::InvalidManifest(
            "the parent's config is not a JSON object".into(),
        ));
    };
    // What dockerd's older builders kept about the container: not ours to carry.
    for stale in ["container", "container_config", "docker_version"] {
        object.remove(stale);
    }
    object.insert("config".into(), image.config);
    object.insert("created".into(), json!(now));
    if let Some(author) = &image.author {
        object.insert("author".into(), json!(author));
    }
    let mut entry = json!({"created": now, "created_by": image.history.created_by});
    if let Some(author) = &image.author {
        entry["author"] = json!(author);
    }
    if let Some(comment) = &image.history.comment {
        entry["comment"] = json!(comment);
    }
    if image.layer.is_none() {
        entry["empty_layer"] = json!(true);
    }
    let history = object.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    if let Some(list) = history.as_array_mut() {
        list.push(entry);
    }
    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(layer) = &image.layer {
        let diff_ids = rootfs
            .as_object_mut()
            .map(|r| r.entry("diff_ids").or_insert_with(|| json!([])));
        match diff_ids.and_then(Value::as_array_mut) {
            Some(ids) => ids.push(json!(layer.diff_id.to_string())),
            None => {
                return Err(ImageError::InvalidManifest(
                    "the parent's config has no rootfs.diff_ids list".into(),
                ))
            }
        }
        let mut descriptor = layer.descriptor.clone();
        if docker_form {
            descriptor.media_type = media::DOCKER_LAYER.to_owned();
        }
        layers.push(descriptor);
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| ImageError::Io {
        action: "encode the image config".into(),
        source: e.into(),
    })?;
    let config_digest = store.write_blob(&config_bytes, None)?;
    let (manifest_type, config_type) = if docker_form {
        (media::DOCKER_MANIFEST, media::DOCKER_CONFIG)
    } else {
        (media::OCI_MANIFEST, media::OCI_CONFIG)
    };
    let manifest = manifest::Manifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_owned()),
        config: Descriptor::new(
            config_type,
            config_digest.clone(),
            config_bytes.len() as u64,
        ),
        layers,
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Io {
        action: "encode the manifest".into(),
        source: e.into(),
    })?;
    let manifest_digest = store.write_blob(&manifest_bytes, None)?;
    let record = ImageRecord {
        target: manifest_digest.clone(),
        manifest: manifest_digest,
        config: config_digest,
        platform,
        created: now,
    };
    if image.layer.is_some() {
        let (m, parsed) = store.image(&record)?;
        if let Some(top) = plan(&m, &parsed)?.last() {
            store.unpack_layer(top)?;
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries_of(store: &Store, layer: &NewLayer) -> Vec<(String, tar::EntryType)> {
        let file = File::open(store.blob_path(&layer.descriptor.digest)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn an_upper_directory_becomes_an_image_spec_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir_all(upper.join("etc/app")).unwrap();
        fs::write(upper.join("etc/app/conf"), b"x=1\n").unwrap();
        fs::hard_link(upper.join("etc/app/conf"), upper.join("etc/app/again")).unwrap();
        symlink("conf", upper.join("etc/app/link")).unwrap();
        // The runtime's empty mount point is left out.
        fs::write(upper.join("etc/hosts"), b"").unwrap();
        let skip = vec![PathBuf::from("etc/hosts")];
        let layer = layer_from_upper(&store, &upper, &skip).unwrap().unwrap();
        let entries = entries_of(&store, &layer);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/app/",
                "etc/app/again",
                "etc/app/conf",
                "etc/app/link"
            ]
        );
        assert_eq!(entries[3].1, tar::EntryType::Link, "{entries:?}");
        assert_eq!(entries[4].1, tar::EntryType::Symlink);
        // The same tree gives the same layer.
        let again = layer_from_upper(&store, &upper, &skip).unwrap().unwrap();
        assert_eq!(again.descriptor.digest, layer.descriptor.digest);
        assert_eq!(again.diff_id, layer.diff_id);
    }

    #[test]
    fn an_opaque_directory_says_what_it_hid() {
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom, upper) = (
            dir.path().join("top"),
            dir.path().join("bottom"),
            dir.path().join("upper"),
        );
        for d in [&top, &bottom] {
            fs::create_dir_all(d.join("etc/conf.d")).unwrap();
        }
        fs::write(bottom.join("etc/conf.d/a"), b"").unwrap();
        fs::write(bottom.join("etc/conf.d/gone-before"), b"").unwrap();
        fs::write(top.join("etc/conf.d/b"), b"").unwrap();
        // The top layer already deleted one of the bottom's files.
        nix::sys::stat::mknod(
            &top.join("etc/conf.d/gone-before"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        // The container removed the directory and made it again with a
        // file the layers also had.
        fs::create_dir_all(upper.join("etc/conf.d")).unwrap();
        fs::write(upper.join("etc/conf.d/b"), b"new").unwrap();
        xattr::set(upper.join("etc/conf.d"), OPAQUE_XATTR, b"y").unwrap();
        let got = changes(&upper, &[top, bottom], &[]).unwrap();
        let said: Vec<(String, Change)> = got
            .into_iter()
            .map(|(p, c)| (p.display().to_string(), c))
            .collect();
        assert_eq!(
            said,
            [
                ("etc".to_owned(), Change::Modified),
                ("etc/conf.d".to_owned(), Change::Modified),
                ("etc/conf.d/a".to_owned(), Change::Deleted),
                ("etc/conf.d/b".to_owned(), Change::Modified),
            ]
        );
    }

    #[test]
    fn nothing_changed_is_no_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir_all(upper.join("proc")).unwrap();
        let layer = layer_from_upper(&store, &upper, &[PathBuf::from("proc")]).unwrap();
        assert!(layer.is_none());
    }

    #[test]
    fn a_commit_stacks_on_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir_all(&upper).unwrap();
        fs::write(upper.join("hello"), b"hi\n").unwrap();
        let layer = layer_from_upper(&store, &upper, &[]).unwrap();
        let base = commit(
            &store,
            NewImage {
                parent: None,
                layer,
                config: json!({"Cmd": ["/hello"]}),
                history: HistoryEntry {
                    created_by: "COPY hello /".into(),
                    comment: None,
                },
                author: None,
            },
        )
        .unwrap();
        let lowers = store.lowers(&base).unwrap();
        assert_eq!(lowers.len(), 1);
        assert_eq!(fs::read(lowers[0].join("hello")).unwrap(), b"hi\n");
        let top = commit(
            &store,
            NewImage {
                parent: Some(&base),
                layer: None,
                config: json!({"Cmd": ["/hello"], "Env": ["A=b"]}),
                history: HistoryEntry {
                    created_by: "ENV A=b".into(),
                    comment: None,
                },
                author: None,
            },
        )
        .unwrap();
        let (m, config) = store.image(&top).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(config.diff_ids.len(), 1);
        let raw: Value = serde_json::from_slice(&store.read_blob(&top.config).unwrap()).unwrap();
        assert_eq!(raw["history"].as_array().unwrap().len(), 2);
        assert_eq!(raw["history"][1]["empty_layer"], json!(true));
        assert_eq!(raw["config"]["Env"], json!(["A=b"]));
    }
}
