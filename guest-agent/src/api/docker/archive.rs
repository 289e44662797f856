//! `/containers/{id}/archive`: `docker cp`, both ways.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::{
    channel_body, ApiError, Body, ChannelWriter, Query, Result, DRAIN_LIMIT, DRAIN_TIMEOUT,
};
use crate::engine::archive::PathStat;
use crate::engine::Engine;
use crate::image::pull::ChannelReader;

const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn path_of(req: &Request<Incoming>) -> Result<String> {
    Query::parse(req)
        .get("path")
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("path is required"))
}

fn stat_header(stat: &PathStat) -> String {
    let json = serde_json::to_vec(stat).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(json)
}

pub(super) async fn stat(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let stat = engine.archive_stat(id, &path_of(req)?).await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(STAT_HEADER, stat_header(&stat))
        .body(super::full(Bytes::new()))
        .expect("valid response"))
}

pub(super) async fn get(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let (stat, mut response) =
        tar_of(engine, id, &path_of(req)?, "docker cp from the container").await?;
    if let Ok(value) = hyper::header::HeaderValue::from_str(&stat_header(&stat)) {
        response.headers_mut().insert(STAT_HEADER, value);
    }
    Ok(response)
}

/// `docker export`: the container's file system as a tar.
pub(super) async fn export(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    Ok(tar_of(engine, id, "/.", "docker export").await?.1)
}

/// A response streaming the tar of `path` in container `id`, with the
/// path's stat; a failure midway is logged as `what`'s.
async fn tar_of(
    engine: &Arc<Engine>,
    id: &str,
    path: &str,
    what: &'static str,
) -> Result<(PathStat, Response<Body>)> {
    let (tx, rx) = mpsc::channel(8);
    let writer = std::io::BufWriter::with_capacity(256 << 10, ChannelWriter(tx));
    let (stat, task) = engine.archive_get(id, path, writer).await?;
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::debug!("{what}: {e}");
        }
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/x-tar")
        .body(channel_body(rx))
        .expect("valid response");
    Ok((stat, response))
}

/// `docker diff`: `[{"Path": "/etc", "Kind": 0}, …]`.
pub(super) async fn changes(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    let changes: Vec<serde_json::Value> = engine
        .changes(id)
        .await?
        .into_iter()
        .map(|(path, kind)| {
            serde_json::json!({
                "Path": format!("/{}", path.display()),
                "Kind": kind as u8,
            })
        })
        .collect();
    Ok(super::json(StatusCode::OK, &changes))
}

pub(super) async fn put(
    engine: &Arc<Engine>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let path = path_of(&req)?;
    let (tx, rx) = mpsc::channel(16);
    let mut body = BodyStream::new(req.into_body());
    let feed = tokio::spawn(async move {
        let mut receiver = Some(tx);
        let mut discarded = 0usize;
        while let Some(Ok(frame)) = body.next().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match &receiver {
                Some(tx) => {
                    let len = data.len();
                    if tx.send(data).await.is_err() {
                        // The copy has ended (refused); read on so that the
                        // client can finish sending and hear why.
                        receiver = None;
                        discarded += len;
                    }
                }
                None => discarded += data.len(),
            }
            if discarded > DRAIN_LIMIT {
                break;
            }
        }
    });
    let result = engine.archive_put(id, &path, ChannelReader::new(rx)).await;
    if tokio::time::timeout(DRAIN_TIMEOUT, feed).await.is_err() {
        tracing::debug!("docker cp: the client did not finish its upload");
    }
    result?;
    Ok(super::empty(StatusCode::OK))
}
