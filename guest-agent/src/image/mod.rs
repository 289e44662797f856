//! Images: a content-addressed store, manifests and indexes (OCI and
//! Docker schema2), a registry client for pull and push, and a layer
//! unpacker that cannot be made to write outside its snapshot.
//!
//! - [`digest`] — sha256 digests, hashing as bytes go by.
//! - [`reference`] — image references read as Docker reads them.
//! - [`manifest`] — manifests, indexes, platforms, layer compression.
//! - [`store`] — blobs, snapshots and names on disk, never half-written.
//! - [`unpack`] — one layer into one snapshot directory, in overlay form.
//! - [`registry`] — the distribution API v2 client and its auth.
//! - [`pull`] — reference → manifest → blobs → snapshots → name.
//! - [`archive`] — `save` and `load`: OCI layouts and `docker save` tars.
//! - [`push`] — name → blobs (skipped, mounted or uploaded) → manifest.
//! - [`commit`] — a container's writable layer → a layer → a new image.
//! - [`progress`] — what a pull or push is doing, blob by blob.
//! - [`cli`] — `berth-agent image …`.

pub mod archive;
pub mod cli;
pub mod commit;
pub mod digest;
pub mod gzip;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

/// What went wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference does not parse.
    #[error("invalid reference {0}")]
    InvalidReference(String),
    /// A digest does not parse.
    #[error("invalid digest {0}")]
    InvalidDigest(String),
    /// A platform does not parse.
    #[error("invalid platform {0}")]
    InvalidPlatform(String),
    /// A manifest, index or config cannot be used.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The image has no manifest for the platform asked for.
    #[error("no matching manifest for {wanted} in the manifest list entries (offered: {offered})")]
    NoPlatform {
        /// The platform asked for.
        wanted: String,
        /// What the index has.
        offered: String,
    },
    /// Content does not match its digest or size.
    #[error("content verification failed: {0}")]
    Verify(String),
    /// A layer was refused or could not be unpacked.
    #[error("layer refused: {0}")]
    Layer(String),
    /// Something is not in the store or the registry.
    #[error("{0} not found")]
    NotFound(String),
    /// How registries are to be reached does not hold together (an
    /// unreadable CA file, say).
    #[error("registry settings: {0}")]
    Config(String),
    /// The registry said no, or could not be reached.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What happened.
        message: String,
    },
    /// The registry wants credentials it was not given, or refused them.
    #[error("registry {registry}: {message}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What it said.
        message: String,
    },
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
