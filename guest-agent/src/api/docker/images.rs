//! `/images/…`: pull (a JSON progress stream), list, inspect, tag,
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
    let arrow = if filled < width { ">" } else { "" };
    format!(
        "[{}{}{}] {}/{}",
        "=".repeat(
            filled
                .saturating_sub(1)
                .max(if filled > 0 { filled - 1 } else { 0 })
        ),
        if filled > 0 { arrow } else { "" },
        " ".repeat(width - filled),
        size(done),
        size(total)
    )
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
        .ok_or_else(|| {
            ApiError::bad_request("fromImage is required (import from a tar is not supported)")
        })?;
    let tag = query.get("tag").unwrap_or("");
    let text = if tag.is_empty() {
        from.to_owned()
    } else if tag.starts_with("sha256:") {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let reference: Reference = text.parse().map_err(ApiError::from)?;
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

fn created_unix(config: &Value) -> i64 {
    config["created"]
        .as_str()
        .and_then(|c| {
            humantime::parse_rfc3339_weak(c.trim_end_matches('Z').split('.').next()?).ok()
        })
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// `docker images` rows.
pub(super) fn summaries(engine: &Engine) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (id, (record, refs)) in by_id(engine)? {
        let config = config_json(engine, &record);
        let size = size_of(engine, &record);
        let containers = engine.users_of_image(&id).len();
        out.push(json!({
            "Id": id.to_string(),
            "ParentId": "",
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

fn matches_reference(pattern: &str, tags: &[String]) -> bool {
    let glob = |p: &str, s: &str| -> bool {
        // '*' matches within a path component, as Docker's filter does.
        fn go(p: &[u8], s: &[u8]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(b'*'), _) => {
                    go(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && go(p, &s[1..]))
                }
                (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
                _ => false,
            }
        }
        go(p.as_bytes(), s.as_bytes())
    };
    tags.iter().any(|t| {
        let repo = t.rsplit_once(':').map_or(t.as_str(), |(r, _)| r);
        glob(pattern, t) || glob(pattern, repo)
    })
}

pub(super) fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let rows: Vec<Value> = summaries(engine)?
        .into_iter()
        .filter(|row| {
            let tags: Vec<String> = row["RepoTags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            filters.iter().all(|(k, v)| match k.as_str() {
                "reference" => matches_reference(v, &tags),
                "dangling" => (v == "true") == tags.is_empty(),
                "label" => {
                    let labels = &row["Labels"];
                    match v.split_once('=') {
                        Some((lk, lv)) => labels[lk].as_str() == Some(lv),
                        None => !labels[v.as_str()].is_null(),
                    }
                }
                _ => true,
            })
        })
        .collect();
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
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": record.config.to_string(),
            "RepoTags": repo_tags(&refs),
            "RepoDigests": repo_digests(&refs, &record),
            "Parent": "",
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
            "RootFS": config["rootfs"],
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
    let named: HashSet<Digest> = names.values().map(|r| r.config.clone()).collect();
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
            deleted.push(json!({"Deleted": id.to_string()}));
        }
    }
    let reclaimed = collect_garbage(engine);
    Ok(json(
        StatusCode::OK,
        &json!({"ImagesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed}),
    ))
}
