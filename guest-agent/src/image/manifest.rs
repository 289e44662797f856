//! Manifests, indexes and descriptors, in both the OCI image-spec and
//! Docker schema2 forms (the same shapes under different media types),
//! and picking this host's platform out of an index.
//!
//! The raw bytes of a manifest are what its digest covers and what is
//! stored and pushed; these types only read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::ImageError;

/// Media types this store reads and writes.
pub mod media {
    /// An OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A zstd OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// A Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// A Docker (gzip) layer.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// A Docker layer stored elsewhere (Windows base layers).
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// What a registry is asked for, most wanted first.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// A platform, as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The OS version (Windows images).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this agent runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
        }
    }

    /// Parses `os/arch[/variant]`, as `docker pull --platform` takes it.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some((*variant).to_owned())),
            _ => {
                return Err(ImageError::InvalidPlatform(format!(
                    "{s:?}: use OS/ARCH[/VARIANT], e.g. linux/arm64/v8"
                )))
            }
        };
        let arch = match arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        Ok(Platform {
            architecture: arch.to_owned(),
            os: os.to_owned(),
            variant,
            os_version: None,
        })
    }

    /// How well an index entry's platform serves this one: `None` when
    /// not at all, higher is better. arm64 without a variant is v8.
    fn score(&self, offered: &Platform) -> Option<u8> {
        if self.os != offered.os || self.architecture != offered.architecture {
            return None;
        }
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        match (norm(self), norm(offered)) {
            (a, b) if a == b => Some(2),
            (None, _) | (_, None) => Some(1),
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Where else it may be fetched from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// Content of `media_type` with `digest` and `size`, nothing more.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, one per platform.
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum Document {
    /// An index of per-platform manifests.
    Index(Index),
    /// One image's manifest.
    Manifest(Manifest),
}

/// Reads a manifest document, by its `mediaType` field, else by the
/// content type it came with, else by its shape.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ImageError> {
    let bad = |why: String| ImageError::InvalidManifest(why);
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(bad(
            "Docker schema1 manifests are not supported: push the image again with a current client"
                .into(),
        ));
    }
    let kind = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned()));
    let is_index = match kind.as_deref() {
        Some(media::OCI_INDEX | media::DOCKER_LIST) => true,
        Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => false,
        _ => value.get("manifests").is_some(),
    };
    if is_index {
        serde_json::from_value(value)
            .map(Document::Index)
            .map_err(|e| bad(format!("an index that does not read: {e}")))
    } else {
        serde_json::from_value(value)
            .map(Document::Manifest)
            .map_err(|e| bad(format!("a manifest that does not read: {e}")))
    }
}

impl Index {
    /// The entry for `platform`, the best match if several.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, ImageError> {
        self.manifests
            .iter()
            .filter_map(|d| {
                let offered = d.platform.as_ref()?;
                platform.score(offered).map(|s| (s, d))
            })
            .max_by_key(|(s, _)| *s)
            .map(|(_, d)| d)
            .ok_or_else(|| {
                let offered: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .collect();
                ImageError::NoPlatform {
                    wanted: platform.to_string(),
                    offered: offered.join(", "),
                }
            })
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// From the layer's media type; `None` for a type that is not a layer.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        Some(match media_type {
            media::OCI_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Compression::None
            }
            media::OCI_LAYER_GZIP
            | media::DOCKER_LAYER
            | media::DOCKER_FOREIGN_LAYER
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Compression::Gzip,
            media::OCI_LAYER_ZSTD => Compression::Zstd,
            _ => return None,
        })
    }

    /// The OCI media type of a layer compressed so.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// From the first bytes of a blob (for archives that do not say).
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn an_index_picks_the_platform() {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_LIST,
            "manifests": [
                {"mediaType": media::DOCKER_MANIFEST, "digest": D1, "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": media::DOCKER_MANIFEST, "digest": D2, "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": media::DOCKER_MANIFEST, "digest": D3, "size": 1,
                 "platform": {"architecture": "arm", "os": "linux", "variant": "v6"}}
            ]
        });
        let Document::Index(index) = parse(json.to_string().as_bytes(), None).unwrap() else {
            panic!("not an index");
        };
        let pick = |p: &str| {
            index
                .select(&Platform::parse(p).unwrap())
                .map(|d| d.digest.to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), D1);
        assert_eq!(pick("linux/arm64").unwrap(), D2);
        assert_eq!(pick("linux/aarch64/v8").unwrap(), D2);
        let err = pick("linux/arm/v7").unwrap_err().to_string();
        assert!(
            err.contains("linux/arm/v7") && err.contains("linux/arm/v6"),
            "{err}"
        );
        assert!(pick("windows/amd64").is_err());
    }

    #[test]
    fn manifests_by_type_shape_and_schema1_refused() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": media::OCI_CONFIG, "digest": D1, "size": 10},
            "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": D2, "size": 20}]
        });
        let Document::Manifest(parsed) =
            parse(m.to_string().as_bytes(), Some(media::OCI_MANIFEST)).unwrap()
        else {
            panic!("not a manifest");
        };
        assert_eq!(parsed.layers[0].size, 20);
        let old = serde_json::json!({"schemaVersion": 1, "fsLayers": []});
        let err = parse(old.to_string().as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema1"), "{err}");
        assert!(parse(b"not json", None).is_err());
        let bad_digest = m.to_string().replace(&D2[7..], "xyz");
        assert!(parse(bad_digest.as_bytes(), None).is_err());
    }

    #[test]
    fn compression_by_type_and_magic() {
        assert_eq!(
            Compression::of_media_type(media::DOCKER_LAYER),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type(media::OCI_LAYER_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::of_media_type(media::OCI_CONFIG), None);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
    }
}
