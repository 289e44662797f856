//! Image references, read as Docker reads them: `busybox` is
//! `docker.io/library/busybox:latest`; a first component with a `.` or a
//! `:`, or `localhost`, names a registry; `@sha256:…` pins a digest.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;
use super::ImageError;

/// The registry a reference without one names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where Docker Hub's registry API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag a reference without tag or digest names.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository name (with its registry) Docker accepts.
const MAX_NAME: usize = 255;
/// The longest tag.
const MAX_TAG: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

fn invalid(s: &str, why: impl fmt::Display) -> ImageError {
    ImageError::InvalidReference(format!("{s:?}: {why}"))
}

/// One path component: lowercase letters and digits, joined by `.`, `_`,
/// `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels or an IPv6 literal in brackets, with an
/// optional port.
fn valid_registry(r: &str) -> bool {
    let valid_port =
        |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, tail)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok()
            && (tail.is_empty() || tail.strip_prefix(':').is_some_and(valid_port));
    }
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

impl FromStr for Reference {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(invalid(s, "an image reference cannot be empty"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, d)) => (name, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name[..at], Some(name[at + 1..].to_owned()))
            }
            None => (name, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(invalid(s, format!("invalid tag {t:?}")));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(invalid(s, format!("invalid registry {registry:?}")));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid(s, "repository names must be lowercase"));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !repository.split('/').all(valid_component) {
            return Err(invalid(
                s,
                format!("invalid repository name {repository:?}"),
            ));
        }
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(invalid(
                s,
                format!("the name is longer than {MAX_NAME} characters"),
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl Reference {
    /// The registry, as written (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The same repository, tag and digest on another registry (`host[:port]`):
    /// what a pull through a mirror asks that mirror for.
    pub fn on_registry(&self, registry: &str) -> Option<Reference> {
        let mut moved = self.clone();
        moved.registry = registry.to_owned();
        // A host without a dot or port would read as a repository path.
        format!("{moved}")
            .parse()
            .ok()
            .filter(|r: &Reference| r.registry == registry)
    }

    /// The host (and port) whose registry API serves this reference.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What the registry's manifest endpoint is asked for: the digest when
    /// pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ImageError> {
        if !valid_tag(tag) {
            return Err(invalid(tag, "invalid tag"));
        }
        Ok(Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The repository as Docker shows it: `busybox` for
    /// `docker.io/library/busybox`, `localhost:5000/a/b` as is.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The familiar name with its tag or digest, e.g. `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            full("library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("index.docker.io/user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:t"), "localhost:5000/a/b:t");
        assert_eq!(
            full(&format!("host:5000/a/b@{d}")),
            format!("host:5000/a/b@{d}")
        );
        assert_eq!(full(&format!("a.b/c:tag@{d}")), format!("a.b/c:tag@{d}"));
        assert_eq!(full("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(
            full("a__b/c-d/e.f_g---h"),
            "docker.io/a__b/c-d/e.f_g---h:latest"
        );
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let mirrored = "busybox:1.36"
            .parse::<Reference>()
            .unwrap()
            .on_registry("10.0.2.2:5000")
            .unwrap();
        assert_eq!(mirrored.to_string(), "10.0.2.2:5000/library/busybox:1.36");
        assert_eq!(mirrored.api_host(), "10.0.2.2:5000");
        assert_eq!(r.familiar(), "busybox:latest");
        let r: Reference = "127.0.0.1:5000/x/y:1".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "x/y", Some("1"))
        );
        assert_eq!(r.familiar(), "127.0.0.1:5000/x/y:1");
    }

    #[test]
    fn bad_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("a//b", "invalid repository"),
            ("a/-b", "invalid repository"),
            ("busybox@sha256:abc", "64 lowercase hex"),
            ("host:port/x", "invalid registry"),
            ("_a/b", "invalid repository"),
        ] {
            let err = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(long.parse::<Reference>().is_err());
    }
}
