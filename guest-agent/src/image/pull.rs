//! Pulling an image: the reference's manifest (an index narrowed to this
//! platform), its config, and its layers — fetched concurrently, each
//! verified by digest while written, unpacked into its snapshot and
//! checked against the config's diff id — then the name set.
//!
//! A layer two pulls share is fetched once: the second waits for the
//! first. A download cut off midway resumes with a `Range` request where
//! the registry allows it, and restarts from zero where it does not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use super::digest::Digest;
use super::manifest::{self, Compression, Descriptor, Document, Platform};
pub use super::progress::{LayerStatus, Progress};
use super::reference::Reference;
use super::registry::{causes, Client};
use super::store::{plan, ImageConfigBlob, ImageRecord, LayerPlan, Store};
use super::ImageError;

/// How many layers download at once.
const CONCURRENT_LAYERS: usize = 6;
/// Chunks in flight between a download and its unpacker.
const TEE_DEPTH: usize = 64;
/// Attempts at one blob before giving up (a resume counts as one).
const BLOB_ATTEMPTS: usize = 5;

/// Pulls images into a store; one per agent, shared by concurrent pulls.
pub struct Puller {
    store: Arc<Store>,
    client: Arc<Client>,
    in_flight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Puller {
    /// A puller for `store` through `client`.
    pub fn new(store: Arc<Store>, client: Arc<Client>) -> Self {
        Puller {
            store,
            client,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Pulls `reference` for `platform`; sets its name in the store and
    /// returns what the name points at.
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        progress: Option<UnboundedSender<Progress>>,
    ) -> Result<ImageRecord, ImageError> {
        let report = |p: Progress| {
            if let Some(tx) = &progress {
                let _ = tx.send(p);
            }
        };
        let name = reference;
        // What is pulled is nobody's until the name is set at the end.
        let _adding = self.store.adding().await;
        let (source, (bytes, content_type, target)) = self.resolve(reference).await?;
        let reference = &source;
        report(Progress::Resolved {
            digest: target.clone(),
        });
        self.store.write_blob(&bytes, Some(&target))?;
        let (manifest, manifest_digest) = match manifest::parse(&bytes, content_type.as_deref())? {
            Document::Manifest(m) => (m, target.clone()),
            Document::Index(index) => {
                let entry = index.select(platform)?;
                let (bytes, ct, digest) = self
                    .client
                    .get_manifest_at(reference, &entry.digest.to_string())
                    .await?;
                self.store.write_blob(&bytes, Some(&digest))?;
                match manifest::parse(&bytes, ct.as_deref())? {
                    Document::Manifest(m) => (m, digest),
                    Document::Index(_) => {
                        return Err(ImageError::InvalidManifest(format!(
                            "the index entry {digest} for {platform} is another index"
                        )))
                    }
                }
            }
        };
        if !self.store.has_blob(&manifest.config.digest) {
            self.fetch_blob(reference, &manifest.config, &|_, _| {}, None)
                .await?;
        }
        let config = ImageConfigBlob::parse(&self.store.read_blob(&manifest.config.digest)?)?;
        let jobs = plan(&manifest, &config)?
            .into_iter()
            .map(|layer| self.layer(reference, layer, &report));
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(CONCURRENT_LAYERS);
        while let Some(result) = results.next().await {
            result?;
        }
        let record = ImageRecord {
            target,
            manifest: manifest_digest,
            config: manifest.config.digest.clone(),
            platform: platform.clone(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.store.set_name(&name.to_string(), record.clone())?;
        Ok(record)
    }

    /// Where `reference` is pulled from, with its manifest: the first
    /// Docker Hub mirror that has it, else its own registry. A mirror that
    /// fails or lacks the image is passed over, as dockerd does.
    async fn resolve(
        &self,
        reference: &Reference,
    ) -> Result<(Reference, (Vec<u8>, Option<String>, Digest)), ImageError> {
        if reference.registry() == crate::image::reference::DEFAULT_REGISTRY {
            for mirror in self.client.mirrors() {
                let Some(mirrored) = reference.on_registry(mirror) else {
                    continue;
                };
                match self.client.get_manifest(&mirrored).await {
                    Ok(found) => {
                        tracing::debug!(%mirror, image = %reference, "pulling through the mirror");
                        return Ok((mirrored, found));
                    }
                    Err(e) => tracing::debug!(%mirror, "mirror passed over: {e}"),
                }
            }
        }
        let manifest = self.client.get_manifest(reference).await?;
        Ok((reference.clone(), manifest))
    }

    /// Makes layer `layer`'s snapshot unless it is there.
    async fn layer(
        &self,
        reference: &Reference,
        layer: LayerPlan,
        report: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), ImageError> {
        let status = |s: LayerStatus| {
            report(Progress::Layer {
                digest: layer.blob.digest.clone(),
                status: s,
            })
        };
        if self.store.snapshot(&layer.chain).is_some() {
            status(LayerStatus::AlreadyExists);
            return Ok(());
        }
        if Compression::of_media_type(&layer.blob.media_type).is_none() {
            return Err(ImageError::InvalidManifest(format!(
                "layer {} has media type {:?}, which is not a layer",
                layer.blob.digest, layer.blob.media_type
            )));
        }
        if !self.store.has_blob(&layer.blob.digest) {
            // Unpack while downloading: the bytes go to the blob and, through
            // a bounded channel, to the unpacker on a blocking thread. The
            // snapshot is put in place only once the blob's digest checks
            // out; if this fails in any way, the layer is unpacked again
            // from the verified blob below, which reports the real error.
            let (tee, bytes) = tokio::sync::mpsc::channel(TEE_DEPTH);
            let (verdict, verified) = std::sync::mpsc::channel();
            let store = self.store.clone();
            let piped = layer.clone();
            let unpacking = tokio::task::spawn_blocking(move || {
                store.unpack_layer_from(&piped, ChannelReader::new(bytes), || {
                    verified.recv().unwrap_or(false)
                })
            });
            let fetched = self
                .fetch_blob(
                    reference,
                    &layer.blob,
                    &|done, total| status(LayerStatus::Downloading { done, total }),
                    Some(tee),
                )
                .await;
            let _ = verdict.send(fetched.is_ok());
            let piped = unpacking.await;
            fetched?;
            if matches!(piped, Ok(Ok(()))) {
                status(LayerStatus::Complete);
                return Ok(());
            }
        }
        status(LayerStatus::Extracting);
        let store = self.store.clone();
        let digest = layer.blob.digest.clone();
        tokio::task::spawn_blocking(move || store.unpack_layer(&layer))
            .await
            .map_err(|e| ImageError::Layer(format!("the unpacking task failed: {e}")))??;
        report(Progress::Layer {
            digest,
            status: LayerStatus::Complete,
        });
        Ok(())
    }

    /// Downloads `blob` into the store, once even if asked concurrently.
    async fn fetch_blob(
        &self,
        reference: &Reference,
        blob: &Descriptor,
        progress: &(dyn Fn(u64, u64) + Sync),
        mut tee: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    ) -> Result<(), ImageError> {
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.entry(blob.digest.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        if self.store.has_blob(&blob.digest) {
            return Ok(());
        }
        let mut ingest = self
            .store
            .ingest(Some(blob.digest.clone()), Some(blob.size))?;
        let mut last_error = None;
        for _ in 0..BLOB_ATTEMPTS {
            let offset = ingest.len();
            let response = match self.client.get_blob(reference, &blob.digest, offset).await {
                Ok(r) => r,
                Err(e @ (ImageError::NotFound(_) | ImageError::Unauthorized { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            if offset > 0 && response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                // The registry ignored the range: start over, without the
                // unpacker, which has had the bytes that are sent again.
                ingest.reset()?;
                tee = None;
            }
            let mut stream = response.bytes_stream();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        ingest.write_bytes(bytes.clone())?;
                        if let Some(t) = &tee {
                            if t.send(bytes).await.is_err() {
                                // The unpacker stopped; the blob goes on.
                                tee = None;
                            }
                        }
                        progress(ingest.len(), blob.size);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None if ingest.len() == blob.size => {
                    tokio::task::spawn_blocking(move || ingest.commit())
                        .await
                        .map_err(|e| {
                            ImageError::Verify(format!("the commit task failed: {e}"))
                        })??;
                    self.forget(&blob.digest);
                    return Ok(());
                }
                None => {
                    last_error = Some(ImageError::Verify(format!(
                        "blob {} ended after {} of {} bytes",
                        blob.digest,
                        ingest.len(),
                        blob.size
                    )))
                }
                Some(e) => {
                    last_error = Some(ImageError::Registry {
                        registry: reference.api_host().to_owned(),
                        message: format!("downloading {}: {}", blob.digest, causes(&e)),
                    })
                }
            }
        }
        self.forget(&blob.digest);
        Err(last_error.unwrap_or_else(|| {
            ImageError::Verify(format!("blob {} did not download", blob.digest))
        }))
    }

    fn forget(&self, digest: &Digest) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(digest);
        }
    }
}

/// The bytes of a download as a blocking reader, for the unpacker.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::BufRead::fill_buf(self)?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// The chunks as they came are the buffer: the decompressor reads them
/// without another copy.
impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amount: usize) {
        let _ = self.current.split_to(amount.min(self.current.len()));
    }
}
