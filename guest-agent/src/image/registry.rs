//! A client of the distribution API v2: manifests and blobs, with
//! anonymous, basic and bearer-token auth.
//!
//! Auth follows the registry's lead: a request goes out with what is
//! cached for its host and scope; on 401 the `WWW-Authenticate` challenge
//! says how to authenticate (Basic, or Bearer with a realm that hands out
//! tokens for a scope), and the request is sent once more. Tokens are
//! cached per host and scope. Everything is HTTPS with the system's roots
//! plus any extra CA, except that loopback hosts and hosts configured
//! insecure fall back to plain HTTP when they do not speak TLS (as Docker
//! does); which one a host speaks is learnt once.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::digest::Digest;
use super::manifest::media;
use super::reference::Reference;
use super::ImageError;

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A user name and password (or token) for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Hosts (`host:port`) to speak plain HTTP to besides loopback.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM) to trust for HTTPS.
    pub extra_ca_pem: Vec<Vec<u8>>,
    /// Credentials by registry host.
    pub credentials: HashMap<String, Credentials>,
    /// Mirrors of Docker Hub (`host[:port]`), tried in order before it
    /// for pulls.
    pub mirrors: Vec<String>,
}

impl RegistryConfig {
    /// Adds a Docker Hub mirror given as dockerd takes it (`URL` or
    /// `host[:port]`); an `http://` mirror is reached over plain HTTP.
    pub fn add_mirror(&mut self, mirror: &str) -> Result<(), String> {
        let (plain, rest) = match mirror.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(format!("mirror {mirror:?}: unknown scheme {scheme:?}"))
            }
            None => (false, mirror),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(format!(
                "mirror {mirror:?} is not a registry's URL or host[:port]"
            ));
        }
        if plain && !self.insecure.iter().any(|h| h == host) {
            self.insecure.push(host.to_owned());
        }
        self.mirrors.push(host.to_owned());
        Ok(())
    }
}

/// How a host wants to be authenticated, once it has said.
#[derive(Debug, Clone)]
enum Scheme {
    /// The host's credentials on every request.
    Basic,
    /// Tokens per scope, from the realm the last challenge named.
    Bearer,
}

/// A registry client, shared by concurrent pulls and pushes.
pub struct Client {
    /// Made at first use: loading the system's CA certificates is not free,
    /// and an agent that never pulls does not need them.
    http: OnceLock<Result<reqwest::Client, String>>,
    extra_roots: Vec<reqwest::Certificate>,
    config: RegistryConfig,
    /// Credentials by host: the configured ones, then what clients log in
    /// with.
    credentials: Mutex<HashMap<String, Credentials>>,
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<(String, String), String>>,
    bases: Mutex<HashMap<String, String>>,
}

/// Where a blob upload stands: the URL the registry said to go on at.
#[derive(Debug, Clone)]
pub struct Upload {
    location: reqwest::Url,
}

/// What starting a blob upload came to.
#[derive(Debug)]
pub enum UploadStart {
    /// The blob was mounted from another repository: nothing to send.
    Mounted,
    /// An upload session to send the blob through.
    Session(Upload),
}

/// A challenge from `WWW-Authenticate`: the scheme and its parameters.
fn parse_challenge(header: &str) -> Option<(String, HashMap<String, String>)> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; a backslash escapes the next character.
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

/// Whether `host` may be spoken to over plain HTTP when it does not
/// speak TLS: loopback hosts and those configured insecure.
fn plain_allowed(host: &str, insecure: &[String]) -> bool {
    is_loopback(host) || insecure.iter().any(|h| h == host)
}

/// Whether `host` (with or without a port) is a loopback address.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client with `config`.
    pub fn new(config: RegistryConfig) -> Result<Self, ImageError> {
        let mut extra_roots = Vec::new();
        for pem in &config.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ImageError::Config(
                        "an extra CA certificate file holds no PEM certificate".into(),
                    )
                })?;
            extra_roots.extend(certs);
        }
        Ok(Client {
            http: OnceLock::new(),
            extra_roots,
            credentials: Mutex::new(config.credentials.clone()),
            config,
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            bases: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client, made on first use.
    fn http(&self) -> Result<&reqwest::Client, ImageError> {
        self.http
            .get_or_init(|| {
                let mut builder = reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")));
                for cert in &self.extra_roots {
                    builder = builder.add_root_certificate(cert.clone());
                }
                builder
                    .build()
                    .map_err(|e| format!("cannot make an HTTP client: {}", causes(&e)))
            })
            .as_ref()
            .map_err(|e| ImageError::Config(e.clone()))
    }

    /// The API base for `host`: `https://…/v2`, or `http://…/v2` for a
    /// loopback or insecure host that does not answer TLS.
    pub async fn base(&self, host: &str) -> String {
        let https = format!("https://{host}/v2");
        if !plain_allowed(host, &self.config.insecure) {
            return https;
        }
        if let Some(base) = self.bases.lock().ok().and_then(|b| b.get(host).cloned()) {
            return base;
        }
        // Plain HTTP only when TLS fails and the host answers like a
        // registry over HTTP; else requests go over HTTPS and report why
        // TLS failed (an unknown CA, say).
        let Ok(client) = self.http() else {
            // Requests say why there is no client.
            return https;
        };
        let http = format!("http://{host}/v2");
        let base = match client.get(format!("{https}/")).send().await {
            Ok(_) => https,
            Err(_) => match client.get(format!("{http}/")).send().await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED => http,
                _ => https,
            },
        };
        if let Ok(mut bases) = self.bases.lock() {
            bases.insert(host.to_owned(), base.clone());
        }
        base
    }

    fn err(host: &str, message: impl Into<String>) -> ImageError {
        ImageError::Registry {
            registry: host.to_owned(),
            message: message.into(),
        }
    }

    /// The credentials for `host`, if any.
    fn credentials(&self, host: &str) -> Option<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// Uses `credentials` for `host` from now on (as `docker login` gives
    /// them with each request). Tokens got with other credentials are
    /// forgotten.
    pub fn login(&self, host: &str, credentials: Credentials) {
        let mut all = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        if all.get(host) == Some(&credentials) {
            return;
        }
        all.insert(host.to_owned(), credentials);
        drop(all);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|(h, _), _| h != host);
        }
        if let Ok(mut schemes) = self.schemes.lock() {
            schemes.remove(host);
        }
    }

    /// What to send for `host` and `scope` from what is cached.
    fn cached_auth(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        let scheme = self.schemes.lock().ok()?.get(host).cloned()?;
        match scheme {
            Scheme::Basic => {
                let c = self.credentials(host)?;
                let raw = format!("{}:{}", c.username, c.password);
                HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes()))).ok()
            }
            Scheme::Bearer => {
                let token = self
                    .tokens
                    .lock()
                    .ok()?
                    .get(&(host.to_owned(), scope.to_owned()))
                    .cloned()?;
                HeaderValue::from_str(&format!("Bearer {token}")).ok()
            }
        }
    }

    /// Learns how `host` wants to be authenticated from a 401, and gets a
    /// token for `scope` if it hands them out.
    async fn authenticate(
        &self,
        host: &str,
        scope: &str,
        challenge: &str,
    ) -> Result<(), ImageError> {
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| Self::err(host, format!("unreadable challenge {challenge:?}")))?;
        let creds = self.credentials(host);
        match scheme.as_str() {
            "basic" => {
                if creds.is_none() {
                    return Err(ImageError::Unauthorized {
                        registry: host.to_owned(),
                        message: "authentication required: no credentials were given for it".into(),
                    });
                }
                if let Ok(mut s) = self.schemes.lock() {
                    s.insert(host.to_owned(), Scheme::Basic);
                }
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .cloned()
                    .ok_or_else(|| Self::err(host, "a Bearer challenge without a realm"))?;
                let service = params.get("service").cloned();
                let mut request = self.http()?.get(&realm);
                let mut query: Vec<(&str, &str)> = scope.split(' ').map(|s| ("scope", s)).collect();
                if let Some(s) = &service {
                    query.push(("service", s));
                }
                request = request.query(&query);
                if let Some(c) = &creds {
                    request = request.basic_auth(&c.username, Some(&c.password));
                }
                let response = request.send().await.map_err(|e| {
                    Self::err(host, format!("token request to {realm}: {}", causes(&e)))
                })?;
                if response.status() == StatusCode::UNAUTHORIZED
                    || response.status() == StatusCode::FORBIDDEN
                {
                    return Err(ImageError::Unauthorized {
                        registry: host.to_owned(),
                        message: format!(
                            "the token service refused {scope}: {}",
                            response.status()
                        ),
                    });
                }
                if !response.status().is_success() {
                    return Err(Self::err(
                        host,
                        format!("token service {realm}: {}", response.status()),
                    ));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| Self::err(host, format!("token service answer: {e}")))?;
                let body: Token = serde_json::from_slice(&bytes)
                    .map_err(|e| Self::err(host, format!("token service answer: {e}")))?;
                let token = body
                    .token
                    .or(body.access_token)
                    .ok_or_else(|| Self::err(host, "the token service sent no token"))?;
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert((host.to_owned(), scope.to_owned()), token);
                }
                if let Ok(mut s) = self.schemes.lock() {
                    s.insert(host.to_owned(), Scheme::Bearer);
                }
                Ok(())
            }
            other => Err(Self::err(
                host,
                format!("unsupported auth scheme {other:?}"),
            )),
        }
    }

    /// Sends the request `build` makes, authenticating on a 401 and
    /// sending it once more.
    pub async fn send(
        &self,
        host: &str,
        scope: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, ImageError> {
        for attempt in 0..2 {
            let mut request = build(self.http()?);
            if let Some(auth) = self.cached_auth(host, scope) {
                request = request.header(AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|e| {
                let text = causes(&e);
                let hint = if e.is_connect() && !text.contains("certificate") {
                    " (is the registry up, and is it HTTP or HTTPS?)"
                } else {
                    ""
                };
                Self::err(host, format!("{text}{hint}"))
            })?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match (attempt, challenge) {
                (0, Some(challenge)) => self.authenticate(host, scope, &challenge).await?,
                _ => {
                    return Err(ImageError::Unauthorized {
                        registry: host.to_owned(),
                        message: if self.credentials(host).is_some() {
                            "the credentials were refused".into()
                        } else {
                            "authentication required".into()
                        },
                    })
                }
            }
        }
        Err(Self::err(host, "authentication did not succeed"))
    }

    /// The scope string for `repository` and `actions` ("pull", "pull,push").
    pub fn scope(repository: &str, actions: &str) -> String {
        format!("repository:{repository}:{actions}")
    }

    /// Fails with the registry's own error text for a non-success status.
    pub async fn check(host: &str, what: &str, response: Response) -> Result<Response, ImageError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?;
                Some(format!(
                    "{}: {}",
                    e.get("code")?.as_str()?,
                    e.get("message").and_then(|m| m.as_str()).unwrap_or("")
                ))
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound(format!("{what} at {host} ({detail})")));
        }
        Err(Self::err(host, format!("{what}: {status} {detail}")))
    }

    /// Fetches the manifest (or index) `reference` names: its bytes, media
    /// type and digest. A pinned digest is checked.
    pub async fn get_manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Option<String>, Digest), ImageError> {
        self.get_manifest_at(reference, &reference.manifest_key())
            .await
    }

    /// The mirrors configured for Docker Hub.
    pub fn mirrors(&self) -> &[String] {
        &self.config.mirrors
    }

    /// Fetches manifest `key` (a tag or digest) of `reference`'s repository.
    pub async fn get_manifest_at(
        &self,
        reference: &Reference,
        key: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest), ImageError> {
        let host = reference.api_host();
        let url = format!(
            "{}/{}/manifests/{key}",
            self.base(host).await,
            reference.repository()
        );
        let scope = Self::scope(reference.repository(), "pull");
        let response = self
            .send(host, &scope, |c| c.get(&url).header(ACCEPT, media::ACCEPT))
            .await?;
        let response = Self::check(
            host,
            &format!("manifest {}", reference.familiar()),
            response,
        )
        .await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Self::err(host, format!("reading manifest: {e}")))?
            .to_vec();
        let digest = Digest::of(&bytes);
        if let Ok(pinned) = key.parse::<Digest>() {
            if pinned != digest {
                return Err(ImageError::Verify(format!(
                    "the registry sent a manifest with digest {digest} for {pinned}"
                )));
            }
        }
        Ok((bytes, content_type, digest))
    }

    /// Starts fetching blob `digest` from byte `offset` on.
    pub async fn get_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<Response, ImageError> {
        let host = reference.api_host();
        let url = format!(
            "{}/{}/blobs/{digest}",
            self.base(host).await,
            reference.repository()
        );
        let scope = Self::scope(reference.repository(), "pull");
        let response = self
            .send(host, &scope, |c| {
                let mut headers = HeaderMap::new();
                if offset > 0 {
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                        headers.insert(reqwest::header::RANGE, v);
                    }
                }
                c.get(&url).headers(headers)
            })
            .await?;
        Self::check(host, &format!("blob {digest}"), response).await
    }
    /// Whether `reference`'s repository has blob `digest`.
    pub async fn has_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, ImageError> {
        let host = reference.api_host();
        let url = format!(
            "{}/{}/blobs/{digest}",
            self.base(host).await,
            reference.repository()
        );
        let scope = Self::scope(reference.repository(), "pull,push");
        let response = self.send(host, &scope, |c| c.head(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Self::check(host, &format!("blob {digest}"), response)
                .await
                .map(|_| false),
        }
    }

    /// Starts uploading blob `digest` to `reference`'s repository, asking
    /// to mount it from repository `from` on the same registry instead.
    pub async fn start_upload(
        &self,
        reference: &Reference,
        digest: &Digest,
        from: Option<&str>,
    ) -> Result<UploadStart, ImageError> {
        let host = reference.api_host();
        let base = self.base(host).await;
        let url = format!("{base}/{}/blobs/uploads/", reference.repository());
        let mut scope = Self::scope(reference.repository(), "pull,push");
        let mut query = Vec::new();
        if let Some(from) = from {
            scope = format!("{scope} {}", Self::scope(from, "pull"));
            query = vec![("mount", digest.to_string()), ("from", from.to_owned())];
        }
        let response = self
            .send(host, &scope, |c| {
                c.post(&url).query(&query).header(CONTENT_LENGTH, 0)
            })
            .await?;
        let response =
            Self::check(host, &format!("starting the upload of {digest}"), response).await?;
        if response.status() == StatusCode::CREATED && from.is_some() {
            return Ok(UploadStart::Mounted);
        }
        Ok(UploadStart::Session(Upload {
            location: Self::location(host, &base, &response)?,
        }))
    }

    /// The `Location` an upload response names, resolved against `base`.
    fn location(host: &str, base: &str, response: &Response) -> Result<reqwest::Url, ImageError> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Self::err(host, "an upload answer without a Location"))?;
        reqwest::Url::parse(base)
            .and_then(|b| b.join(location))
            .map_err(|e| Self::err(host, format!("upload location {location:?}: {e}")))
    }

    /// Sends `chunk`, the bytes from `offset` on, into `upload`.
    pub async fn upload_chunk(
        &self,
        reference: &Reference,
        upload: Upload,
        offset: u64,
        chunk: bytes::Bytes,
    ) -> Result<Upload, ImageError> {
        let host = reference.api_host();
        let base = self.base(host).await;
        let scope = Self::scope(reference.repository(), "pull,push");
        let end = offset + chunk.len() as u64;
        let range = format!("{offset}-{}", end.saturating_sub(1));
        let response = self
            .send(host, &scope, |c| {
                c.patch(upload.location.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, range.as_str())
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone())
            })
            .await?;
        let response = Self::check(host, &format!("uploading bytes {range}"), response).await?;
        Ok(Upload {
            location: Self::location(host, &base, &response)?,
        })
    }

    /// Ends `upload` as blob `digest`, sending `last` (all of a
    /// monolithic upload, or nothing after chunks).
    pub async fn finish_upload(
        &self,
        reference: &Reference,
        upload: Upload,
        digest: &Digest,
        last: bytes::Bytes,
    ) -> Result<(), ImageError> {
        let host = reference.api_host();
        let scope = Self::scope(reference.repository(), "pull,push");
        let mut url = upload.location;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(host, &scope, |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, last.len())
                    .body(last.clone())
            })
            .await?;
        Self::check(host, &format!("committing blob {digest}"), response).await?;
        Ok(())
    }

    /// Puts manifest `bytes` of `media_type` under `key` (a tag or
    /// digest); checks the digest the registry says it stored.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        key: &str,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<Digest, ImageError> {
        let host = reference.api_host();
        let url = format!(
            "{}/{}/manifests/{key}",
            self.base(host).await,
            reference.repository()
        );
        let scope = Self::scope(reference.repository(), "pull,push");
        let response = self
            .send(host, &scope, |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        let response = Self::check(
            host,
            &format!("manifest {}", reference.familiar()),
            response,
        )
        .await?;
        let digest = Digest::of(&bytes);
        if let Some(said) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if said != digest.to_string() {
                return Err(ImageError::Verify(format!(
                    "the registry stored manifest {said} for {digest}"
                )));
            }
        }
        Ok(digest)
    }
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own
/// text leaves out why, e.g. which certificate check failed).
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Standard base64 (for Basic auth), without a crate for ten lines.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (scheme.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let (_, p) = parse_challenge(r#"Bearer realm="a\"b", service=x"#).unwrap();
        assert_eq!((p["realm"].as_str(), p["service"].as_str()), ("a\"b", "x"));
    }

    #[test]
    fn only_loopback_and_insecure_hosts_may_be_plain_http() {
        let insecure = vec!["reg.internal:5000".to_owned()];
        for host in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "reg.internal:5000",
        ] {
            assert!(plain_allowed(host, &insecure), "{host}");
        }
        for host in ["registry-1.docker.io", "reg.internal:5001", "10.0.0.1:5000"] {
            assert!(!plain_allowed(host, &insecure), "{host}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
