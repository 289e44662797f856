//! `/images/…`: pull (a JSON progress stream), import, list, inspect, tag,
//! remove, prune.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{channel_body, json, ApiError, Body, Query, Result};
use crate::engine::Engine;
use crate::image::digest::Digest;
use crate::image::progress::{LayerStatus, Progress};
use crate::image::reference::Reference;
use crate::image::store::{chain_id, ImageRecord};

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

/// `[=====>      ] 12.3MB/45.6MB`, as the CLI shows it.
fn bar(done: u64, total: u64) -> String {
    let width = 50;
    let filled = if total > 0 {
        ((done as f64 / total as f64) * width as f64) as usize
    } else {
        0
    }
    .min(width);
    let size = |b: u64| -> String {
        if b >= 1_000_000 {
            format!("{:.1}MB", b as f64 / 1e6)
        } else if b >= 1_000 {
            format!("{:.1}kB", b as f64 / 1e3)
        } else {
            format!("{b}B")
        }
    };
    let drawn = match filled {
        0 => " ".repeat(width),
        f if f >= width => "=".repeat(width),
        f => format!("{}>{}", "=".repeat(f - 1), " ".repeat(width - f)),
    };
    format!("[{drawn}] {}/{}", size(done), size(total))
}

fn line(value: Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

pub(super) fn pull(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let from = query
        .get("fromImage")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage or fromSrc is required"))?;
    let tag = query.get("tag").unwrap_or("");
    let text = if tag.is_empty() {
        from.to_owned()
    } else if tag.starts_with("sha256:") {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let reference: Reference = text.parse().map_err(ApiError::from)?;
    use_registry_auth(engine, req, reference.registry())?;
    let engine = engine.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let before = engine.store.lookup(&reference.to_string()).ok();
        let shown = reference
            .tag()
            .map(str::to_owned)
            .or_else(|| reference.digest().map(|d| d.to_string()))
            .unwrap_or_default();
        let _ = tx
            .send(line(json!({
                "status": format!("Pulling from {}", reference.familiar_name()),
                "id": shown,
            })))
            .await;
        let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
        let pulling = {
            let engine = engine.clone();
            let reference = reference.clone();
            tokio::spawn(async move { engine.pull(&reference, Some(ptx)).await })
        };
        let mut seen = HashSet::new();
        let mut resolved = None;
        while let Some(p) = prx.recv().await {
            let out = match p {
                Progress::Resolved { digest } => {
                    resolved = Some(digest);
                    continue;
                }
                Progress::Layer { digest, status } => {
                    let id = short(&digest);
                    if seen.insert(digest.clone()) && !matches!(status, LayerStatus::AlreadyExists)
                    {
                        let _ = tx
                            .send(line(json!({"status": "Pulling fs layer", "progressDetail": {}, "id": id})))
                            .await;
                    }
                    match status {
                        LayerStatus::AlreadyExists => {
                            json!({"status": "Already exists", "progressDetail": {}, "id": id})
                        }
                        LayerStatus::Downloading { done, total } => json!({
                            "status": "Downloading",
                            "progressDetail": {"current": done, "total": total},
                            "progress": bar(done, total),
                            "id": id,
                        }),
                        LayerStatus::Extracting => {
                            json!({"status": "Extracting", "progressDetail": {}, "id": id})
                        }
                        LayerStatus::Complete => {
                            json!({"status": "Pull complete", "progressDetail": {}, "id": id})
                        }
                        _ => continue,
                    }
                }
            };
            if tx.send(line(out)).await.is_err() {
                // The client went away; the pull goes on for the next one.
            }
        }
        match pulling.await {
            Ok(Ok(record)) => {
                let digest = resolved.unwrap_or(record.target.clone());
                let _ = tx
                    .send(line(json!({"status": format!("Digest: {digest}")})))
                    .await;
                let status = if before.is_some_and(|b| b.config == record.config) {
                    format!("Status: Image is up to date for {}", reference.familiar())
                } else {
                    format!(
                        "Status: Downloaded newer image for {}",
                        reference.familiar()
                    )
                };
                let _ = tx.send(line(json!({"status": status}))).await;
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                let _ = tx
                    .send(line(
                        json!({"errorDetail": {"message": message}, "error": message}),
                    ))
                    .await;
            }
            Err(e) => {
                let message = format!("the pull failed: {e}");
                let _ = tx
                    .send(line(
                        json!({"errorDetail": {"message": message}, "error": message}),
                    ))
                    .await;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(rx))
        .expect("valid response"))
}

/// An image's names grouped by image id (config digest).
fn by_id(engine: &Engine) -> Result<BTreeMap<Digest, (ImageRecord, Vec<Reference>)>> {
    let mut out: BTreeMap<Digest, (ImageRecord, Vec<Reference>)> = BTreeMap::new();
    for (name, record) in engine.store.names()? {
        let Ok(reference) = name.parse::<Reference>() else {
            continue;
        };
        out.entry(record.config.clone())
            .or_insert_with(|| (record.clone(), Vec::new()))
            .1
            .push(reference);
    }
    Ok(out)
}

fn size_of(engine: &Engine, record: &ImageRecord) -> u64 {
    let Ok((_, config)) = engine.store.image(record) else {
        return 0;
    };
    (1..=config.diff_ids.len())
        .filter_map(|n| chain_id(&config.diff_ids[..n]))
        .filter_map(|c| engine.store.snapshot(&c))
        .map(|s| s.size)
        .sum()
}

fn config_json(engine: &Engine, record: &ImageRecord) -> Value {
    engine
        .store
        .read_blob(&record.config)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null)
}

fn repo_tags(refs: &[Reference]) -> Vec<String> {
    refs.iter()
        .filter(|r| r.tag().is_some())
        .map(Reference::familiar)
        .collect()
}

fn repo_digests(refs: &[Reference], record: &ImageRecord) -> Vec<String> {
    let mut out: Vec<String> = refs
        .iter()
        .map(|r| format!("{}@{}", r.familiar_name(), record.target))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The `created` time of an image config or a history entry, in Unix seconds.
pub(super) fn created_unix(config: &Value) -> i64 {
    config["created"]
        .as_str()
        .and_then(|c| {
            humantime::parse_rfc3339_weak(c.trim_end_matches('Z').split('.').next()?).ok()
        })
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// `docker images` rows: named images, and images made here that lost
/// their names (`<none>`); with `all`, a build's intermediate images too.
pub(super) fn summaries(engine: &Engine, all: bool) -> Result<Vec<Value>> {
    let mut groups = by_id(engine)?;
    let local = engine.store.local_images()?;
    for (id, image) in &local {
        if !groups.contains_key(id) && (all || !image.intermediate) {
            groups.insert(id.clone(), (image.record.clone(), Vec::new()));
        }
    }
    let mut out = Vec::new();
    for (id, (record, refs)) in groups {
        let config = config_json(engine, &record);
        let size = size_of(engine, &record);
        let containers = engine.users_of_image(&id).len();
        let parent = local
            .get(&id)
            .and_then(|l| l.parent.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default();
        out.push(json!({
            "Id": id.to_string(),
            "ParentId": parent,
            "RepoTags": repo_tags(&refs),
            "RepoDigests": repo_digests(&refs, &record),
            "Created": created_unix(&config),
            "Size": size,
            "SharedSize": -1,
            "VirtualSize": size,
            "Labels": config["config"]["Labels"],
            "Containers": containers,
        }));
    }
    out.sort_by_key(|v| std::cmp::Reverse(v["Created"].as_i64().unwrap_or(0)));
    Ok(out)
}

/// Whether `tag` (`repo:tag`, familiar) matches a reference filter: the
/// whole of it or its repository, `*` within one path component.
fn matches_reference(pattern: &str, tag: &str) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(p, &s[1..]))
            }
            (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let repo = tag.rsplit_once(':').map_or(tag, |(r, _)| r);
    glob(pattern.as_bytes(), tag.as_bytes()) || glob(pattern.as_bytes(), repo.as_bytes())
}

pub(super) fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let filters = query.filters()?;
    let all = query.flag("all");
    // Values of one filter are alternatives; different filters all apply.
    let values = |key: &str| -> Vec<&str> {
        filters
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (references, dangling, labels) = (values("reference"), values("dangling"), values("label"));
    let mut rows = Vec::new();
    for mut row in summaries(engine, all)? {
        let tags: Vec<String> = row["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !dangling.is_empty() && !dangling.iter().any(|v| (*v == "true") == tags.is_empty()) {
            continue;
        }
        let labelled = |v: &&str| match v.split_once('=') {
            Some((k, value)) => row["Labels"][k].as_str() == Some(value),
            None => !row["Labels"][*v].is_null(),
        };
        if !labels.iter().all(labelled) {
            continue;
        }
        if !references.is_empty() {
            // Only the names that match are listed, as dockerd does.
            let kept: Vec<&String> = tags
                .iter()
                .filter(|t| references.iter().any(|p| matches_reference(p, t)))
                .collect();
            if kept.is_empty() {
                continue;
            }
            let digests: Vec<String> = row["RepoDigests"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let kept_digests: Vec<&String> = digests
                .iter()
                .filter(|d| {
                    let repo = d.split_once('@').map_or(d.as_str(), |(r, _)| r);
                    references.iter().any(|p| matches_reference(p, repo))
                })
                .collect();
            row["RepoTags"] = json!(kept);
            row["RepoDigests"] = json!(kept_digests);
        }
        rows.push(row);
    }
    Ok(json(StatusCode::OK, &rows))
}

pub(super) fn inspect(engine: &Arc<Engine>, name: &str) -> Result<Response<Body>> {
    let (_, record) = engine.image(name)?;
    let refs = by_id(engine)?
        .remove(&record.config)
        .map(|(_, r)| r)
        .unwrap_or_default();
    let config = config_json(engine, &record);
    let size = size_of(engine, &record);
    let parent = engine
        .store
        .local_images()?
        .remove(&record.config)
        .and_then(|l| l.parent)
        .map(|p| p.to_string())
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": record.config.to_string(),
            "RepoTags": repo_tags(&refs),
            "RepoDigests": repo_digests(&refs, &record),
            "Parent": parent,
            "Comment": "",
            "Created": config["created"],
            "DockerVersion": "",
            "Author": config["author"],
            "Config": config["config"],
            "Architecture": config["architecture"],
            "Variant": config["variant"],
            "Os": config["os"],
            "Size": size,
            "VirtualSize": size,
            "GraphDriver": {"Name": "overlayfs", "Data": null},
            // The config's `rootfs` in the Engine API's words.
            "RootFS": {
                "Type": config["rootfs"]["type"],
                "Layers": config["rootfs"]["diff_ids"],
            },
            "Metadata": {"LastTagTime": record.created},
        }),
    ))
}

pub(super) fn tag(
    engine: &Arc<Engine>,
    name: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let (_, record) = engine.image(name)?;
    let repo = query
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repository name must have at least one component"))?;
    let tag = query
        .get("tag")
        .filter(|t| !t.is_empty())
        .unwrap_or("latest");
    let reference: Reference = format!("{repo}:{tag}").parse().map_err(ApiError::from)?;
    engine
        .store
        .set_name(&reference.to_string(), record.clone())?;
    engine.emit_simple(
        "image",
        "tag",
        &record.config.to_string(),
        Some(&reference.familiar()),
    );
    Ok(super::empty(StatusCode::CREATED))
}

pub(super) fn remove(
    engine: &Arc<Engine>,
    name: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let force = Query::parse(req).flag("force");
    let (found, record) = engine.image(name)?;
    let groups = by_id(engine)?;
    let refs = groups
        .get(&record.config)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let by_reference = name
        .parse::<Reference>()
        .is_ok_and(|r| r.to_string() == found);
    let users = engine.users_of_image(&record.config);
    let mut out = Vec::new();
    let untag: Vec<Reference> = if by_reference && refs.len() > 1 {
        // Another name keeps the image: only this one goes.
        refs.into_iter()
            .filter(|r| r.to_string() == found)
            .collect()
    } else {
        if !users.is_empty() && !force {
            let user = &users[0];
            let running = user.record().state.status.is_running();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "conflict: unable to delete {} (must be forced) - image is being used by {} container {}",
                    if by_reference { found.clone() } else { record.config.hex()[..12].to_owned() },
                    if running { "running" } else { "stopped" },
                    &user.id[..12]
                ),
            ));
        }
        if !by_reference && refs.len() > 1 && !force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    &record.config.hex()[..12]
                ),
            ));
        }
        refs
    };
    for r in &untag {
        engine.store.remove_name(&r.to_string())?;
        out.push(json!({"Untagged": r.familiar()}));
        engine.emit_simple(
            "image",
            "untag",
            &record.config.to_string(),
            Some(&r.familiar()),
        );
    }
    let still_named = engine
        .store
        .names()?
        .values()
        .any(|r| r.config == record.config);
    if !still_named {
        engine.store.forget(&record.config)?;
        out.push(json!({"Deleted": record.config.to_string()}));
        engine.emit_simple("image", "delete", &record.config.to_string(), None);
        // Layers go unless a container still stands on them.
        if engine.users_of_image(&record.config).is_empty() {
            collect_garbage(engine);
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// Clears blobs and snapshots no name needs, unless a container's image
/// has lost its names (its layers must stay).
fn collect_garbage(engine: &Engine) -> u64 {
    let Ok(names) = engine.store.names() else {
        return 0;
    };
    let mut named: HashSet<Digest> = names.values().map(|r| r.config.clone()).collect();
    named.extend(engine.store.local_images().unwrap_or_default().into_keys());
    let orphaned_in_use = engine
        .containers()
        .iter()
        .any(|c| !named.contains(&c.record().image.config));
    if orphaned_in_use {
        return 0;
    }
    engine.store.gc().map(|r| r.blob_bytes).unwrap_or(0)
}

pub(super) fn prune(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let all = filters
        .iter()
        .any(|(k, v)| k == "dangling" && (v == "false" || v == "0"));
    let mut deleted = Vec::new();
    if all {
        for (id, (_, refs)) in by_id(engine)? {
            if !engine.users_of_image(&id).is_empty() {
                continue;
            }
            for r in refs {
                engine.store.remove_name(&r.to_string())?;
                deleted.push(json!({"Untagged": r.familiar()}));
            }
            engine.store.forget(&id)?;
            deleted.push(json!({"Deleted": id.to_string()}));
        }
    }
    // Images made here that no name points at: the dangling ones, and
    // with `-a` a build's intermediate images as well.
    let named: HashSet<Digest> = engine
        .store
        .names()?
        .values()
        .map(|r| r.config.clone())
        .collect();
    for (id, image) in engine.store.local_images()? {
        if named.contains(&id)
            || (image.intermediate && !all)
            || !engine.users_of_image(&id).is_empty()
        {
            continue;
        }
        engine.store.forget(&id)?;
        deleted.push(json!({"Deleted": id.to_string()}));
    }
    let reclaimed = collect_garbage(engine);
    Ok(json(
        StatusCode::OK,
        &json!({"ImagesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed}),
    ))
}

/// The `X-Registry-Auth` header's credentials, as `docker login` stored
/// them, handed to the registry client for `host`.
/// Credentials as the CLI sends them (`X-Registry-Auth`, and per
/// registry in `X-Registry-Config`): as `docker login` stored them.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct AuthConfig {
    username: String,
    password: String,
    auth: String,
    identitytoken: String,
}

impl AuthConfig {
    /// The user name and password (or token), if any were given.
    pub(super) fn credentials(self) -> Option<crate::image::registry::Credentials> {
        let (mut username, mut password) = (self.username, self.password);
        if username.is_empty() && !self.auth.is_empty() {
            // "auth" is base64 of user:password, as in config.json.
            use base64::Engine as _;
            let pair = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            if let Some((u, p)) = pair.split_once(':') {
                (username, password) = (u.to_owned(), p.to_owned());
            }
        }
        if !self.identitytoken.is_empty() {
            // An OAuth refresh token stands in for the password.
            password = self.identitytoken;
        }
        (!username.is_empty() || !password.is_empty())
            .then_some(crate::image::registry::Credentials { username, password })
    }
}

/// Decodes a base64 JSON header as the CLI encodes it (URL-safe or not,
/// padded or not).
pub(super) fn decode_header(text: &[u8], name: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let trimmed: Vec<u8> = text.iter().copied().filter(|b| *b != b'=').collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&trimmed))
        .map_err(|_| ApiError::bad_request(format!("invalid {name} header: not base64")))
}

pub(super) fn use_registry_auth(
    engine: &Engine,
    req: &Request<Incoming>,
    host: &str,
) -> Result<()> {
    let Some(value) = req.headers().get("X-Registry-Auth") else {
        return Ok(());
    };
    let text = value.as_bytes();
    if text.is_empty() {
        return Ok(());
    }
    let decoded = decode_header(text, "X-Registry-Auth")?;
    let auth: AuthConfig = serde_json::from_slice(&decoded)
        .map_err(|e| ApiError::bad_request(format!("invalid X-Registry-Auth header: {e}")))?;
    if let Some(credentials) = auth.credentials() {
        engine.client.login(host, credentials);
    }
    Ok(())
}

pub(super) fn push(
    engine: &Arc<Engine>,
    name: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let text = match query.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{name}:{tag}"),
        None => name.to_owned(),
    };
    let reference: Reference = text.parse().map_err(ApiError::from)?;
    if engine.store.lookup(&reference.to_string()).is_err() {
        return Err(ApiError::not_found(format!(
            "An image does not exist locally with the tag: {}",
            reference.familiar_name()
        )));
    }
    use_registry_auth(engine, req, reference.registry())?;
    let engine = engine.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let _ = tx
            .send(line(json!({
                "status": format!("The push refers to repository [{}]", reference.familiar_name()),
            })))
            .await;
        let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
        let pushing = {
            let pusher =
                crate::image::push::Pusher::new(engine.store.clone(), engine.client.clone());
            let reference = reference.clone();
            tokio::spawn(async move { pusher.push(&reference, Some(ptx)).await })
        };
        let mut seen = HashSet::new();
        while let Some(p) = prx.recv().await {
            let Progress::Layer { digest, status } = p else {
                continue;
            };
            let id = short(&digest);
            if seen.insert(digest.clone()) {
                let _ = tx
                    .send(line(
                        json!({"status": "Preparing", "progressDetail": {}, "id": id}),
                    ))
                    .await;
            }
            let out = match status {
                LayerStatus::AlreadyExists => {
                    json!({"status": "Layer already exists", "progressDetail": {}, "id": id})
                }
                LayerStatus::Uploading { done, total } => json!({
                    "status": "Pushing",
                    "progressDetail": {"current": done, "total": total},
                    "progress": bar(done, total),
                    "id": id,
                }),
                LayerStatus::Mounted { from } => json!({
                    "status": format!("Mounted from {from}"),
                    "progressDetail": {},
                    "id": id,
                }),
                LayerStatus::Pushed => json!({"status": "Pushed", "progressDetail": {}, "id": id}),
                _ => continue,
            };
            let _ = tx.send(line(out)).await;
        }
        let error = match pushing.await {
            Ok(Ok(digest)) => {
                let tag = reference.tag().unwrap_or("latest").to_owned();
                let _ = tx
                    .send(line(json!({"status": format!("{tag}: digest: {digest}")})))
                    .await;
                let _ = tx
                    .send(line(json!({
                        "progressDetail": {},
                        "aux": {"Tag": tag, "Digest": digest.to_string()},
                    })))
                    .await;
                engine.emit_simple("image", "push", &reference.to_string(), None);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the push failed: {e}"),
        };
        let _ = tx
            .send(line(
                json!({"errorDetail": {"message": error}, "error": error}),
            ))
            .await;
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(rx))
        .expect("valid response"))
}

pub(super) fn save(engine: &Arc<Engine>, names: &[&str]) -> Result<Response<Body>> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given"));
    }
    let mut references = Vec::new();
    for name in names {
        // A short name or id the store knows is saved under its full name.
        let (key, _) = engine.image(name)?;
        let reference: Reference = key
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{name}: save an image by its name")))?;
        references.push(reference);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let store = engine.store.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(256 << 10, super::ChannelWriter(tx));
        if let Err(e) = crate::image::archive::save(&store, &references, out) {
            tracing::debug!("docker save: {e}");
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/x-tar")
        .body(channel_body(rx))
        .expect("valid response"))
}

pub(super) async fn load(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    // The archive is read twice (index, then blobs): it is spooled first.
    let spool = spool_file(engine)?;
    super::spool(req.into_body(), spool.as_file()).await?;
    let _adding = engine.store.adding().await;
    let store = engine.store.clone();
    let path = spool.path().to_owned();
    let loaded = tokio::task::spawn_blocking(move || {
        let result = crate::image::archive::load(
            &store,
            &path,
            &crate::image::manifest::Platform::host(),
            None,
        );
        drop(spool);
        result
    })
    .await
    .map_err(|e| ApiError::from(crate::engine::EngineError::Internal(e.to_string())))?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut out = Vec::new();
    for (name, record) in &loaded {
        engine.emit_simple("image", "load", name, None);
        let shown = if name.starts_with("sha256:") {
            format!("Loaded image ID: {}\n", record.config)
        } else {
            let familiar = name
                .parse::<Reference>()
                .map(|r| r.familiar())
                .unwrap_or_else(|_| name.clone());
            format!("Loaded image: {familiar}\n")
        };
        // quiet only drops progress, which a spooled load has none of.
        out.extend_from_slice(&line(json!({ "stream": shown })));
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(super::full(out))
        .expect("valid response"))
}

/// `POST /images/create?fromSrc=…`: `docker import`, an image of one
/// layer from a file system tar in the request body (`-`) or at a URL.
pub(super) async fn import(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(&req);
    let source = query.get("fromSrc").unwrap_or_default().to_owned();
    let settings = import_settings(&query, &source);
    let (name, config, comment) = match settings {
        Ok(s) => s,
        Err(e) => {
            super::discard(req.into_body()).await;
            return Err(e);
        }
    };
    let internal = |e: String| ApiError::from(crate::engine::EngineError::Internal(e));
    // Until the image is kept and named, its layer is nobody's.
    let _adding = engine.store.adding().await;
    let spool = spool_file(engine)?;
    if source == "-" {
        super::spool(req.into_body(), spool.as_file()).await?;
    } else {
        download(&source, spool.as_file()).await?;
    }
    let store = engine.store.clone();
    let record = tokio::task::spawn_blocking(move || {
        let file = spool.reopen().map_err(|e| crate::image::ImageError::Io {
            action: "read the spooled archive".into(),
            source: e,
        })?;
        crate::image::archive::import(&store, file, Value::Object(config), comment)
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    engine.store.keep(crate::image::store::LocalImage {
        record: record.clone(),
        parent: None,
        intermediate: false,
    })?;
    if let Some(name) = &name {
        engine.store.set_name(&name.to_string(), record.clone())?;
    }
    let id = record.config.to_string();
    engine.emit_simple(
        "image",
        "import",
        &id,
        name.as_ref().map(Reference::familiar).as_deref(),
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(super::full(line(json!({ "status": id })).to_vec()))
        .expect("valid response"))
}

/// A temporary file under the agent's root for an archive that arrives
/// (removed when dropped).
fn spool_file(engine: &Engine) -> Result<tempfile::NamedTempFile> {
    let internal = |e: std::io::Error| {
        ApiError::from(crate::engine::EngineError::Internal(format!(
            "make a file for the upload: {e}"
        )))
    };
    let dir = engine.root().join("tmp");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    tempfile::NamedTempFile::new_in(&dir).map_err(internal)
}

/// An import's name (`repo`, `tag`), config (`changes`) and history
/// comment (`message`), checked before anything is read.
fn import_settings(
    query: &Query,
    source: &str,
) -> Result<(Option<Reference>, serde_json::Map<String, Value>, String)> {
    if source != "-" && !source.starts_with("http://") && !source.starts_with("https://") {
        return Err(ApiError::bad_request(format!(
            "cannot import from {source:?}: give - (the request body) or an http(s) URL"
        )));
    }
    let name = match query.get("repo").filter(|r| !r.is_empty()) {
        Some(repo) => {
            let text = match query.get("tag").filter(|t| !t.is_empty()) {
                Some(tag) => format!("{repo}:{tag}"),
                None => repo.to_owned(),
            };
            let invalid = || ApiError::bad_request(format!("invalid reference format: {text}"));
            let reference: Reference = text.parse().map_err(|_| invalid())?;
            if reference.tag().is_none() && reference.digest().is_none() {
                Some(
                    format!("{text}:latest")
                        .parse::<Reference>()
                        .map_err(|_| invalid())?,
                )
            } else {
                Some(reference)
            }
        }
        None => None,
    };
    let changes: Vec<String> = query
        .all("changes")
        .into_iter()
        .map(str::to_owned)
        .filter(|c| !c.trim().is_empty())
        .collect();
    let config = crate::build::apply_changes(Default::default(), &changes)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let comment = query
        .get("message")
        .filter(|m| !m.is_empty())
        .map_or_else(|| format!("Imported from {source}"), str::to_owned);
    Ok((name, config, comment))
}

/// Writes what `url` answers into `file`.
async fn download(url: &str, file: &std::fs::File) -> Result<()> {
    use crate::download::DownloadError;
    match crate::download::to_file(url, file).await {
        Ok(_) => Ok(()),
        Err(e @ DownloadError::Fetch { .. }) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ DownloadError::Write { .. }) => Err(ApiError::from(
            crate::engine::EngineError::Internal(e.to_string()),
        )),
    }
}
