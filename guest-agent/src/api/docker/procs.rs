//! `/containers/{id}/pause`, `unpause`, `top` and `stats`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{channel_body, empty, json, ApiError, Body, Query, Result};
use crate::engine::procs::{Sample, TOP_TITLES};
use crate::engine::Engine;

pub(super) async fn pause(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    engine.pause(id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) async fn unpause(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    engine.unpause(id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) fn top(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    if let Some(args) = query
        .get("ps_args")
        .filter(|a| !a.is_empty() && *a != "-ef")
    {
        return Err(ApiError::bad_request(format!(
            "ps_args {args:?}: only ps -ef's columns are supported"
        )));
    }
    let rows = engine.top(id)?;
    Ok(json(
        StatusCode::OK,
        &json!({ "Titles": TOP_TITLES, "Processes": rows }),
    ))
}

fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(at).to_string()
}

fn cpu_stats(sample: Option<&Sample>) -> Value {
    let Some(s) = sample else {
        return json!({ "cpu_usage": { "total_usage": 0 }, "throttling_data": {} });
    };
    let mut usage = json!({
        "total_usage": s.usage.cpu_ns,
        "usage_in_kernelmode": 0,
        "usage_in_usermode": 0,
    });
    if !s.usage.per_cpu_ns.is_empty() {
        usage["percpu_usage"] = json!(s.usage.per_cpu_ns);
    }
    json!({
        "cpu_usage": usage,
        "system_cpu_usage": s.system_ns,
        "online_cpus": s.cpus,
        "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
    })
}

/// One stats object, dockerd's shape.
fn stats_json(id: &str, name: &str, now: &Sample, before: Option<&Sample>) -> Value {
    let u = &now.usage;
    json!({
        "id": id,
        "name": format!("/{name}"),
        "read": rfc3339(now.at),
        "preread": before.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), |b| rfc3339(b.at)),
        "pids_stats": { "current": u.pids, "limit": u.pids_limit },
        "blkio_stats": {
            "io_service_bytes_recursive": null,
            "io_serviced_recursive": null,
            "io_queue_recursive": null,
            "io_service_time_recursive": null,
            "io_wait_time_recursive": null,
            "io_merged_recursive": null,
            "io_time_recursive": null,
            "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_stats(Some(now)),
        "precpu_stats": cpu_stats(before),
        "memory_stats": {
            "usage": u.memory,
            "limit": u.memory_limit.unwrap_or(now.host_memory),
            "stats": { "inactive_file": u.inactive_file },
        },
    })
}

pub(super) fn stats(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let stream = query.get("stream").is_none_or(|v| v == "1" || v == "true");
    let one_shot = query.flag("one-shot");
    let container = engine.container(id)?;
    let (cid, name) = (container.id.clone(), container.record().name);
    let first = engine.sample(id)?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let engine = engine.clone();
    tokio::spawn(async move {
        let line = |now: &Sample, before: Option<&Sample>| {
            let mut bytes =
                serde_json::to_vec(&stats_json(&cid, &name, now, before)).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        };
        if !stream && one_shot {
            let _ = tx.send(line(&first, None)).await;
            return;
        }
        let mut before = first;
        loop {
            // dockerd's collector samples once a second; CPU use is the
            // difference between two samples.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(now) = engine.sample(&cid) else { return };
            if tx.send(line(&now, Some(&before))).await.is_err() || !stream {
                return;
            }
            before = now;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(rx))
        .expect("valid response"))
}
