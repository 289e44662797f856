//! `POST /build` (the classic builder: a tar of the context in, a JSON
//! stream out), `POST /build/prune`, `POST /commit` and
//! `GET /images/{name}/history`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::images::{decode_header, AuthConfig};
use super::{channel_body, json, read_body, ApiError, Body, Query, Result, MAX_BODY};
use crate::build::{self, Message, Options};
use crate::engine::commit::CommitRequest;
use crate::engine::{Engine, EngineError};
use crate::image::digest::Digest;
use crate::image::reference::Reference;

fn line(value: Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(EngineError::Internal(e.to_string()))
}

/// A JSON map query parameter (`buildargs`, `labels`).
fn json_map<T: serde::de::DeserializeOwned>(
    query: &Query,
    key: &str,
) -> Result<BTreeMap<String, T>> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(BTreeMap::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid {key}: {e}"))),
    }
}

/// The build's options from the query string.
fn options(query: &Query) -> Result<Options> {
    let mut tags = Vec::new();
    for t in query.all("t").into_iter().filter(|t| !t.is_empty()) {
        let reference: Reference = t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid reference format: {t}")))?;
        if reference.digest().is_some() {
            return Err(ApiError::bad_request(format!(
                "invalid tag {t}: a build's tag cannot have a digest"
            )));
        }
        tags.push(reference);
    }
    Ok(Options {
        dockerfile: query.get("dockerfile").unwrap_or_default().to_owned(),
        tags,
        build_args: json_map(query, "buildargs")?,
        labels: json_map(query, "labels")?,
        no_cache: query.flag("nocache"),
        pull: query.flag("pull"),
        target: query
            .get("target")
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        // `rm` is on unless the client turns it off.
        remove: query.get("rm").is_none() || query.flag("rm"),
        force_remove: query.flag("forcerm"),
        network_mode: query.get("networkmode").unwrap_or_default().to_owned(),
        quiet: query.flag("q"),
    })
}

/// `X-Registry-Config`: credentials per registry, for pulling bases.
fn use_registry_config(engine: &Engine, req: &Request<Incoming>) -> Result<()> {
    let Some(value) = req.headers().get("X-Registry-Config") else {
        return Ok(());
    };
    if value.is_empty() {
        return Ok(());
    }
    let decoded = decode_header(value.as_bytes(), "X-Registry-Config")?;
    let configs: BTreeMap<String, AuthConfig> = serde_json::from_slice(&decoded)
        .map_err(|e| ApiError::bad_request(format!("invalid X-Registry-Config header: {e}")))?;
    for (host, auth) in configs {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if let Some(credentials) = auth.credentials() {
            engine.client.login(&host, credentials);
        }
    }
    Ok(())
}

pub(super) async fn build(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(&req);
    if query.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad_request(
            "building from a remote context (a URL or git repository) is not supported: send the context as a tar",
        ));
    }
    let opts = options(&query)?;
    use_registry_config(engine, &req)?;
    let work = build::work_dir(engine).map_err(internal)?;
    let tar = work.join("context.tar");
    let file = std::fs::File::create(&tar).map_err(internal)?;
    if let Err(e) = super::spool(req.into_body(), &file).await {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    drop(file);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(64);
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let builder = build::Build::new(engine.clone(), opts, work, tx, cancelled);
    tokio::spawn(async move {
        let run = tokio::spawn(builder.run(tar));
        // A client that goes away (interrupted) stops the build, as with
        // dockerd; its messages are read to the end all the same.
        loop {
            let message = tokio::select! {
                message = rx.recv() => match message {
                    Some(m) => m,
                    None => break,
                },
                _ = body_tx.closed(), if !*cancel.borrow() => {
                    tracing::info!("the build's client went away; cancelling the build");
                    let _ = cancel.send(true);
                    continue;
                }
            };
            let value = match message {
                Message::Stream(text) => json!({ "stream": text }),
                Message::Aux(id) => json!({ "aux": { "ID": id.to_string() } }),
            };
            if body_tx.send(line(value)).await.is_err() {
                let _ = cancel.send(true);
            }
        }
        let outcome = match run.await {
            Ok(result) => result,
            Err(e) => Err(build::BuildError::Step(format!("the build stopped: {e}"))),
        };
        if let Err(e) = outcome {
            let message = e.to_string();
            let _ = body_tx
                .send(line(json!({
                    "errorDetail": { "message": message, "code": e.code() },
                    "error": message,
                })))
                .await;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(body_rx))
        .expect("valid response"))
}

pub(super) fn prune(engine: &Arc<Engine>) -> Result<Response<Body>> {
    let removed = build::prune(engine).map_err(internal)?;
    let reclaimed = engine.store.gc().map(|r| r.blob_bytes).unwrap_or(0);
    let ids: Vec<String> = removed.iter().map(Digest::to_string).collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "CachesDeleted": ids, "SpaceReclaimed": reclaimed }),
    ))
}

pub(super) async fn commit(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(&req);
    let container = query
        .get("container")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("no container given to commit"))?
        .to_owned();
    let reference = match query.get("repo").filter(|r| !r.is_empty()) {
        Some(repo) => {
            let tag = query
                .get("tag")
                .filter(|t| !t.is_empty())
                .unwrap_or("latest");
            Some(format!("{repo}:{tag}").parse::<Reference>().map_err(|_| {
                ApiError::bad_request(format!("invalid reference format: {repo}:{tag}"))
            })?)
        }
        None => None,
    };
    let request = CommitRequest {
        changes: query
            .all("changes")
            .into_iter()
            .map(str::to_owned)
            .filter(|c| !c.trim().is_empty())
            .collect(),
        comment: query
            .get("comment")
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
        author: query
            .get("author")
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
        pause: query.get("pause").is_none() || query.flag("pause"),
        config: {
            let body = read_body(req.into_body(), MAX_BODY).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                Default::default()
            } else {
                match serde_json::from_slice::<Value>(&body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?
                {
                    Value::Object(map) => map,
                    Value::Null => Default::default(),
                    _ => {
                        return Err(ApiError::bad_request(
                            "the commit's config must be a JSON object",
                        ))
                    }
                }
            }
        },
    };
    let record = engine.commit(&container, request).await?;
    if let Some(reference) = &reference {
        engine
            .store
            .set_name(&reference.to_string(), record.clone())?;
    }
    engine.emit_simple(
        "container",
        "commit",
        &container,
        reference.as_ref().map(|r| r.familiar()).as_deref(),
    );
    Ok(json(
        StatusCode::CREATED,
        &json!({ "Id": record.config.to_string() }),
    ))
}

pub(super) fn history(engine: &Arc<Engine>, name: &str) -> Result<Response<Body>> {
    let (_, record) = engine.image(name)?;
    let local = engine.store.local_images()?;
    let names = engine.store.names()?;
    // The images of this one's line, with how many history entries each has.
    let mut line_of: Vec<(Digest, usize)> = Vec::new();
    let mut at = Some(record.config.clone());
    while let Some(id) = at.take() {
        let Ok(bytes) = engine.store.read_blob(&id) else {
            break;
        };
        let config: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let n = config["history"].as_array().map_or(0, Vec::len);
        line_of.push((id.clone(), n));
        at = local.get(&id).and_then(|l| l.parent.clone());
        if line_of.len() > 10_000 {
            break;
        }
    }
    let config: Value = serde_json::from_slice(&engine.store.read_blob(&record.config)?)
        .map_err(|e| internal(format!("image config: {e}")))?;
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut layer = 0;
    let mut rows = Vec::new();
    for (i, entry) in history.iter().enumerate() {
        let empty = entry["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layer += 1;
            crate::image::store::chain_id(&diff_ids[..layer.min(diff_ids.len())])
                .and_then(|c| engine.store.snapshot(&c))
                .map_or(0, |s| s.size)
        };
        let id = line_of
            .iter()
            .find(|(_, n)| *n == i + 1)
            .map(|(id, _)| id.clone());
        let tags: Vec<String> = id
            .as_ref()
            .map(|id| {
                names
                    .iter()
                    .filter(|(_, r)| &r.config == id)
                    .filter_map(|(n, _)| n.parse::<Reference>().ok())
                    .map(|r| r.familiar())
                    .collect()
            })
            .unwrap_or_default();
        rows.push(json!({
            "Id": id.map_or_else(|| "<missing>".to_owned(), |d| d.to_string()),
            "Created": super::images::created_unix(entry),
            "CreatedBy": entry["created_by"].as_str().unwrap_or_default(),
            "Tags": if tags.is_empty() { Value::Null } else { json!(tags) },
            "Size": size,
            "Comment": entry["comment"].as_str().unwrap_or_default(),
        }));
    }
    rows.reverse();
    Ok(json(StatusCode::OK, &rows))
}
