//! Pushing an image: its layers and config, each skipped if the
//! repository has it, mounted if another repository of the same registry
//! does, else uploaded — in one request when small, in chunks when large —
//! and then its manifest, byte for byte as stored, under the tag.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

use super::digest::Digest;
use super::manifest::{self, media, Descriptor, Document};
use super::progress::{LayerStatus, Progress};
use super::reference::Reference;
use super::registry::{Client, UploadStart};
use super::store::Store;
use super::ImageError;

/// How many blobs upload at once.
const CONCURRENT_BLOBS: usize = 3;
/// Blobs up to this size go in one request; larger ones in chunks of it.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;

/// Pushes images from a store to registries.
pub struct Pusher {
    store: Arc<Store>,
    client: Arc<Client>,
    chunk_size: u64,
}

impl Pusher {
    /// A pusher for `store` through `client`.
    pub fn new(store: Arc<Store>, client: Arc<Client>) -> Self {
        Pusher {
            store,
            client,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    /// Uploads blobs larger than `bytes` in chunks of `bytes`.
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Pushes the image the store names `reference` to the registry and
    /// repository in it; returns the manifest's digest.
    pub async fn push(
        &self,
        reference: &Reference,
        progress: Option<UnboundedSender<Progress>>,
    ) -> Result<Digest, ImageError> {
        let report = |p: Progress| {
            if let Some(tx) = &progress {
                let _ = tx.send(p);
            }
        };
        let record = self.store.lookup(&reference.to_string())?;
        let bytes = self.store.read_blob(&record.manifest)?;
        let Document::Manifest(manifest) = manifest::parse(&bytes, None)? else {
            return Err(ImageError::InvalidManifest(format!(
                "{} is an index, not a manifest",
                record.manifest
            )));
        };
        let mounts = self.mount_sources(reference)?;
        let blobs = manifest.layers.iter().chain([&manifest.config]);
        // Collected first: a lazy iterator's closure held across the
        // awaits would make this future not Send for every lifetime.
        let jobs: Vec<_> = blobs
            .map(|blob| {
                let from = mounts.get(&blob.digest).map(String::as_str);
                self.push_blob(reference, blob, from, &report)
            })
            .collect();
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(CONCURRENT_BLOBS);
        while let Some(result) = results.next().await {
            result?;
        }
        let media_type = manifest
            .media_type
            .as_deref()
            .unwrap_or(media::OCI_MANIFEST);
        let digest = self
            .client
            .put_manifest(
                reference,
                &reference.manifest_key(),
                media_type,
                bytes::Bytes::from(bytes),
            )
            .await?;
        report(Progress::Resolved {
            digest: digest.clone(),
        });
        Ok(digest)
    }

    /// For each blob of an image the store has from another repository
    /// of `reference`'s registry, that repository: the registry can mount
    /// the blob from there instead of receiving it again.
    fn mount_sources(&self, reference: &Reference) -> Result<HashMap<Digest, String>, ImageError> {
        let mut sources = HashMap::new();
        for (name, record) in self.store.names()? {
            let Ok(other) = name.parse::<Reference>() else {
                continue;
            };
            if other.api_host() != reference.api_host()
                || other.repository() == reference.repository()
            {
                continue;
            }
            let Ok((manifest, _)) = self.store.image(&record) else {
                continue;
            };
            for blob in manifest.layers.iter().chain([&manifest.config]) {
                sources
                    .entry(blob.digest.clone())
                    .or_insert_with(|| other.repository().to_owned());
            }
        }
        Ok(sources)
    }

    /// Gets `blob` into `reference`'s repository.
    async fn push_blob(
        &self,
        reference: &Reference,
        blob: &Descriptor,
        from: Option<&str>,
        report: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), ImageError> {
        let status = |s: LayerStatus| {
            report(Progress::Layer {
                digest: blob.digest.clone(),
                status: s,
            })
        };
        if self.client.has_blob(reference, &blob.digest).await? {
            status(LayerStatus::AlreadyExists);
            return Ok(());
        }
        let mut upload = match self
            .client
            .start_upload(reference, &blob.digest, from)
            .await?
        {
            UploadStart::Mounted => {
                status(LayerStatus::Mounted {
                    from: from.unwrap_or_default().to_owned(),
                });
                return Ok(());
            }
            UploadStart::Session(upload) => upload,
        };
        let path = self.store.blob_path(&blob.digest);
        let io = |e: std::io::Error| ImageError::Io {
            action: format!("read blob {}", blob.digest),
            source: e,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        if size != blob.size {
            return Err(ImageError::Verify(format!(
                "blob {} is {size} bytes in the store but {} in the manifest",
                blob.digest, blob.size
            )));
        }
        let mut offset = 0;
        let last = if size <= self.chunk_size {
            read_up_to(&mut file, size).await.map_err(io)?
        } else {
            while offset < size {
                let chunk = read_up_to(&mut file, self.chunk_size).await.map_err(io)?;
                if chunk.is_empty() {
                    return Err(ImageError::Verify(format!(
                        "blob {} ended at {offset} of {size} bytes",
                        blob.digest
                    )));
                }
                let len = chunk.len() as u64;
                upload = self
                    .client
                    .upload_chunk(reference, upload, offset, chunk)
                    .await?;
                offset += len;
                status(LayerStatus::Uploading {
                    done: offset,
                    total: size,
                });
            }
            bytes::Bytes::new()
        };
        self.client
            .finish_upload(reference, upload, &blob.digest, last)
            .await?;
        status(LayerStatus::Pushed);
        Ok(())
    }
}

/// Up to `limit` bytes from `file`, fewer only at its end.
async fn read_up_to(file: &mut tokio::fs::File, limit: u64) -> std::io::Result<bytes::Bytes> {
    let mut buf = Vec::with_capacity(usize::try_from(limit).unwrap_or(usize::MAX).min(64 << 20));
    AsyncReadExt::take(&mut *file, limit)
        .read_to_end(&mut buf)
        .await?;
    Ok(buf.into())
}
