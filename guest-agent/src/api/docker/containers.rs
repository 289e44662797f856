//! `/containers/…`: create, list, inspect, start, stop, restart, kill,
//! wait, attach (hijacked), resize, rename, logs, remove, prune.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{channel_body, empty, json, read_json, ApiError, Body, Query, Result};
use crate::engine::config::{Attachment, ContainerConfig, HostConfig, Record, Status};
use crate::engine::{logs, Container, Engine, WaitCondition};

/// The create body: `Config` fields at the top, plus `HostConfig`.
#[derive(Default, serde::Deserialize)]
struct CreateBody {
    #[serde(flatten)]
    config: ContainerConfig,
    #[serde(rename = "HostConfig", default)]
    host_config: HostConfig,
    #[serde(rename = "NetworkingConfig", default)]
    networking: NetworkingConfig,
}

/// `NetworkingConfig`: the endpoint settings per network.
#[derive(Default, serde::Deserialize)]
struct NetworkingConfig {
    #[serde(rename = "EndpointsConfig", default)]
    endpoints: Option<BTreeMap<String, EndpointSettings>>,
}

#[derive(Default, serde::Deserialize)]
struct EndpointSettings {
    #[serde(rename = "Aliases", default)]
    aliases: Option<Vec<String>>,
}

/// The networks a new container joins, from its network mode and endpoint
/// settings: none for `host` and `none`, else the named network (the
/// default one for `default`/`bridge`/empty) with its aliases.
fn attachments(
    mode: &str,
    endpoints: Option<BTreeMap<String, EndpointSettings>>,
) -> Result<Vec<Attachment>> {
    let network = match mode {
        "host" | "none" => return Ok(Vec::new()),
        "" | "default" => crate::network::DEFAULT_NETWORK,
        m if m.starts_with("container:") => {
            return Err(ApiError::bad_request(
                "sharing another container's network (--network container:…) is not supported",
            ))
        }
        m => m,
    };
    let mut endpoints = endpoints.unwrap_or_default();
    let aliases = endpoints
        .remove(network)
        .and_then(|e| e.aliases)
        .unwrap_or_default();
    Ok(vec![Attachment {
        network: network.to_owned(),
        aliases,
    }])
}

/// A stdcopy frame: stream, three zero bytes, big-endian length, bytes.
pub(super) fn stdcopy(stream: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

pub(super) async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(&req);
    let name = query.get("name").map(str::to_owned);
    let body: CreateBody = read_json(req.into_body()).await?;
    let mut config = body.config;
    // `other` keeps what we do not model; the HostConfig is its own field.
    config.other.remove("HostConfig");
    config.other.remove("NetworkingConfig");
    let attachments = attachments(&body.host_config.network_mode, body.networking.endpoints)?;
    let id = engine.create(name.as_deref(), config, body.host_config, attachments)?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"Id": id, "Warnings": []}),
    ))
}

fn ago(at: Option<&str>) -> String {
    let Some(d) = at.and_then(Engine::since) else {
        return "Less than a second".into();
    };
    human_duration(d)
}

/// Docker's `units.HumanDuration`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

fn status_text(c: &Container) -> String {
    let r = c.record();
    match r.state.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let health = match r.state.health.as_ref().map(|h| h.status.as_str()) {
                Some("starting") => " (health: starting)",
                Some("healthy") => " (healthy)",
                Some("unhealthy") => " (unhealthy)",
                _ => "",
            };
            format!("Up {}{health}", ago(r.state.started_at.as_deref()))
        }
        Status::Paused => format!("Up {} (Paused)", ago(r.state.started_at.as_deref())),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            r.state.exit_code,
            ago(r.state.finished_at.as_deref())
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            r.state.exit_code,
            ago(r.state.finished_at.as_deref())
        ),
        Status::Dead => "Dead".into(),
    }
}

fn created_unix(created: &str) -> i64 {
    Engine::since(created)
        .map(|d| {
            (std::time::SystemTime::now() - d)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs() as i64)
        })
        .unwrap_or(0)
}

fn command_line(path: &str, args: &[String]) -> String {
    std::iter::once(path.to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `NetworkSettings.Networks`: the container's place on each network
/// (addresses only while it runs).
pub(super) fn endpoints_json(r: &Record) -> Value {
    let mut out = serde_json::Map::new();
    for a in &r.network.attachments {
        let e = r.network.endpoints.iter().find(|e| e.network == a.network);
        let (ip, prefix, gateway, mac, endpoint, network_id) = match e {
            Some(e) => (
                e.address.map(|a| a.to_string()).unwrap_or_default(),
                e.prefix,
                e.gateway.map(|g| g.to_string()).unwrap_or_default(),
                e.mac.clone(),
                e.endpoint_id.clone(),
                e.network_id.clone(),
            ),
            None => Default::default(),
        };
        let mut dns_names = vec![r.name.clone(), r.id[..12].to_owned()];
        dns_names.extend(a.aliases.iter().cloned());
        out.insert(
            a.network.clone(),
            json!({
                "IPAMConfig": null, "Links": null,
                "Aliases": if a.aliases.is_empty() { Value::Null } else { json!(a.aliases) },
                "MacAddress": mac, "NetworkID": network_id, "EndpointID": endpoint,
                "Gateway": gateway, "IPAddress": ip, "IPPrefixLen": prefix,
                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "DriverOpts": null,
                "DNSNames": if a.network == crate::network::DEFAULT_NETWORK { Value::Null } else { json!(dns_names) },
            }),
        );
    }
    Value::Object(out)
}

/// `NetworkSettings` of `inspect`: networks, published ports (`docker
/// port` reads these), and the default network's address at the top as
/// dockerd gives it.
fn network_settings(r: &Record) -> Value {
    let mut ports = serde_json::Map::new();
    let mut exposed: Vec<String> = r
        .config
        .exposed_ports
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    for p in &r.network.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        exposed.retain(|k| *k != key);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    for key in exposed {
        ports.entry(key).or_insert(Value::Null);
    }
    let default = r
        .network
        .endpoints
        .iter()
        .find(|e| e.network == crate::network::DEFAULT_NETWORK);
    let sandbox = if r.network.endpoints.is_empty() {
        String::new()
    } else {
        r.id[..12].to_owned()
    };
    json!({
        "Bridge": "", "SandboxID": sandbox, "SandboxKey": "",
        "HairpinMode": false, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports,
        "EndpointID": default.map(|e| e.endpoint_id.clone()).unwrap_or_default(),
        "Gateway": default.and_then(|e| e.gateway).map(|g| g.to_string()).unwrap_or_default(),
        "IPAddress": default.and_then(|e| e.address).map(|a| a.to_string()).unwrap_or_default(),
        "IPPrefixLen": default.map_or(0, |e| e.prefix),
        "MacAddress": default.map(|e| e.mac.clone()).unwrap_or_default(),
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
        "Networks": endpoints_json(r),
    })
}

/// A `docker ps` row.
pub(super) fn summary(_engine: &Engine, c: &Container) -> Value {
    let r = c.record();
    json!({
        "Id": r.id,
        "Names": [format!("/{}", r.name)],
        "Image": r.image_name,
        "ImageID": r.image.config.to_string(),
        "Command": command_line(&r.path, &r.args),
        "Created": created_unix(&r.created),
        "State": r.state.status.as_str(),
        "Status": status_text(c),
        "Ports": r.network.ports.iter().map(|p| json!({
            "IP": p.host_ip, "PrivatePort": p.container_port,
            "PublicPort": p.host_port, "Type": p.protocol,
        })).collect::<Vec<_>>(),
        "Labels": r.config.labels.clone().unwrap_or_default(),
        "HostConfig": {"NetworkMode": if r.host_config.network_mode.is_empty() { "default" } else { &r.host_config.network_mode }},
        "NetworkSettings": {"Networks": endpoints_json(&r)},
        "Mounts": [],
    })
}

/// The `docker ps` filters dockerd knows and Berth applies; `before` and
/// `since` hold the creation time of the container they name once
/// [`ps_filters`] has resolved them.
const PS_FILTERS: &[&str] = &[
    "ancestor", "before", "exited", "health", "id", "label", "name", "network", "since", "status",
];

/// dockerd's other `ps` filters: refused, not ignored (ignoring one would
/// list what was filtered out).
const PS_FILTERS_NOT_BUILT: &[&str] = &["expose", "isolation", "is-task", "publish", "volume"];

/// A container's states, as `status=` names them.
const STATUSES: &[&str] = &[
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

/// The `ps` request's filters, checked as dockerd checks them, with
/// `before` and `since` resolved to the named container's creation time.
fn ps_filters(engine: &Engine, query: &Query) -> Result<Vec<(String, String)>> {
    let mut filters = query.filters()?;
    for (k, v) in &mut filters {
        match k.as_str() {
            k if PS_FILTERS_NOT_BUILT.contains(&k) => {
                return Err(ApiError::bad_request(format!(
                    "the filter '{k}' is not supported by Berth"
                )))
            }
            k if !PS_FILTERS.contains(&k) => {
                return Err(ApiError::bad_request(format!("invalid filter '{k}'")))
            }
            "status" if !STATUSES.contains(&v.as_str()) => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter 'status={v}'"
                )))
            }
            "before" | "since" => *v = engine.container(v)?.record().created,
            _ => {}
        }
    }
    Ok(filters)
}

fn matches(c: &Container, filters: &[(String, String)]) -> bool {
    let r = c.record();
    let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (k, v) in filters {
        by_name.entry(k.as_str()).or_default().push(v.as_str());
    }
    by_name.iter().all(|(k, values)| {
        values.iter().any(|v| match *k {
            "status" => r.state.status.as_str() == *v,
            "name" => r.name.contains(v),
            "id" => r.id.starts_with(v),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => r
                    .config
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(lk))
                    .is_some_and(|x| x == lv),
                None => r.config.labels.as_ref().is_some_and(|l| l.contains_key(*v)),
            },
            "ancestor" => r.image_name == *v || r.image.config.to_string().contains(v),
            "exited" => r.state.status == Status::Exited && r.state.exit_code.to_string() == *v,
            "before" => r.created.as_str() < *v,
            "since" => r.created.as_str() > *v,
            "network" => {
                r.host_config.network_mode == *v
                    || r.network.attachments.iter().any(|a| a.network == *v)
                    || r.network
                        .endpoints
                        .iter()
                        .any(|e| !v.is_empty() && e.network_id.starts_with(v))
            }
            "health" => {
                r.state
                    .health
                    .as_ref()
                    .map_or("none", |h| h.status.as_str())
                    == *v
            }
            // ps_filters let no other through.
            _ => false,
        })
    })
}

pub(super) fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let all = query.flag("all");
    let limit = query.int("limit")?.filter(|l| *l > 0);
    let filters = ps_filters(engine, &query)?;
    let mut containers = engine.containers();
    containers.sort_by(|a, b| b.record().created.cmp(&a.record().created));
    let mut rows: Vec<Value> = containers
        .iter()
        .filter(|c| {
            all || limit.is_some()
                || c.record().state.status.is_running()
                || c.record().state.status == Status::Restarting
        })
        .filter(|c| matches(c, &filters))
        .map(|c| summary(engine, c))
        .collect();
    if let Some(l) = limit {
        rows.truncate(l as usize);
    }
    Ok(json(StatusCode::OK, &rows))
}

pub(super) fn inspect(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    let c = engine.container(id)?;
    let r = c.record();
    let s = &r.state;
    use crate::engine::volumes::{Planned, Source};
    let image_cfg = engine
        .store
        .image(&r.image)
        .ok()
        .and_then(|(_, image)| image.config.config().clone())
        .unwrap_or_default();
    let mounts: Vec<Value> = engine
        .mount_points(&r, &image_cfg)
        .unwrap_or_default()
        .into_iter()
        .map(|m| match m {
            Planned::Bind(b) => match b.source {
                Source::Path(p) => json!({
                    "Type": "bind", "Source": p, "Destination": b.destination,
                    "Mode": "", "RW": !b.read_only, "Propagation": "rprivate"}),
                Source::Volume(v) => json!({
                    "Type": "volume", "Name": v, "Source": engine.volumes.data(&v),
                    "Destination": b.destination, "Driver": "local", "Mode": "z",
                    "RW": !b.read_only, "Propagation": ""}),
            },
            Planned::Anonymous {
                name,
                destination,
                read_only,
            } => json!({
                "Type": "volume", "Name": name, "Source": engine.volumes.data(&name),
                "Destination": destination, "Driver": "local", "Mode": "",
                "RW": !read_only, "Propagation": ""}),
            Planned::Tmpfs {
                destination,
                options,
            } => json!({
                "Type": "tmpfs", "Source": "", "Destination": destination,
                "Mode": "", "RW": !options.iter().any(|o| o == "ro"), "Propagation": ""}),
        })
        .collect();
    let mut config = serde_json::to_value(&r.config).unwrap_or(Value::Null);
    config["Image"] = json!(r.image_name);
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": r.id,
            "Created": r.created,
            "Path": r.path,
            "Args": r.args,
            "State": {
                "Status": s.status.as_str(),
                "Running": s.status.is_running(),
                "Paused": s.status == Status::Paused,
                "Restarting": s.status == Status::Restarting,
                "OOMKilled": s.oom_killed,
                "Dead": s.status == Status::Dead,
                "Pid": s.pid,
                "ExitCode": s.exit_code,
                "Error": s.error,
                "StartedAt": s.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "FinishedAt": s.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "Health": s.health,
            },
            "Image": r.image.config.to_string(),
            "ResolvConfPath": c.dir().join("resolv.conf"),
            "HostnamePath": c.dir().join("hostname"),
            "HostsPath": c.dir().join("hosts"),
            "LogPath": c.log_path(),
            "Name": format!("/{}", r.name),
            "RestartCount": r.restart_count,
            "Driver": "overlayfs",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "HostConfig": r.host_config,
            "GraphDriver": {"Name": "overlayfs", "Data": {
                "UpperDir": c.dir().join("upper"),
                "WorkDir": c.dir().join("work"),
                "MergedDir": c.dir().join("bundle/rootfs"),
            }},
            "Mounts": mounts,
            "Config": config,
            "NetworkSettings": network_settings(&r),
        }),
    ))
}

pub(super) async fn start(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    let c = engine.container(id)?;
    if c.record().state.status.is_running() {
        return Ok(empty(StatusCode::NOT_MODIFIED));
    }
    engine.start(&c.id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

fn timeout(query: &Query) -> Result<Option<i64>> {
    match query.int("t")? {
        Some(t) => Ok(Some(t)),
        None => query.int("timeout"),
    }
}

pub(super) async fn stop(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let c = engine.container(id)?;
    if !c.record().state.status.is_running() && c.record().state.status != Status::Restarting {
        return Ok(empty(StatusCode::NOT_MODIFIED));
    }
    engine.stop(&c.id, timeout(&query)?).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) async fn restart(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let c = engine.container(id)?;
    engine.stop(&c.id, timeout(&query)?).await?;
    // The exit is handled (and the rootfs unmounted) before it starts again.
    let mut watch = c.watch();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|w| !w.status.is_running()),
    )
    .await;
    engine.start(&c.id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) fn kill(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let signal = match query.get("signal").filter(|s| !s.is_empty()) {
        Some(s) => crate::runtime::container_kill::parse_signal(s)
            .map_err(|_| ApiError::bad_request(format!("Invalid signal: {s}")))?,
        None => nix::sys::signal::Signal::SIGKILL,
    };
    engine.kill(id, signal)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) fn wait(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let condition = match query.get("condition").unwrap_or("") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid condition: \"{other}\""
            )))
        }
    };
    let c = engine.container(id)?;
    let engine = engine.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    // Headers go at once (the CLI waits for them before it starts the
    // container); the body when the condition is met.
    tokio::spawn(async move {
        let code = engine.wait(&c.id, condition).await.unwrap_or(-1);
        let body =
            serde_json::to_vec(&json!({"StatusCode": code, "Error": null})).unwrap_or_default();
        let _ = tx.send(Bytes::from(body)).await;
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(rx))
        .expect("valid response"))
}

pub(super) fn attach(
    engine: &Arc<Engine>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(&req);
    let c = engine.container(id)?;
    let record = c.record();
    let tty = record.config.tty;
    let want_stdin = query.flag("stdin");
    let want = [query.flag("stdout"), query.flag("stderr")];
    let logs_first = query.flag("logs");
    let stream = query.flag("stream");
    let upgrade = super::wants_upgrade(req.headers());
    // Subscribe now, before the response: output after this is not missed.
    let output = c.subscribe();
    let mut watch = c.watch();
    let exits_at_attach = watch.borrow().exits;
    let log_path = c.log_path();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let (mut reader, mut writer) = tokio::io::split(io);
        let frame = |stream: u8, bytes: &[u8]| -> Vec<u8> {
            if tty {
                bytes.to_vec()
            } else {
                stdcopy(stream, bytes)
            }
        };
        if logs_first {
            for entry in logs::read(&log_path).unwrap_or_default() {
                let s = if entry.stream == "stderr" { 2 } else { 1 };
                if want[s as usize - 1]
                    && writer
                        .write_all(&frame(s, entry.log.as_bytes()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
        if !stream {
            let _ = writer.shutdown().await;
            return;
        }
        if want_stdin {
            let input = c.clone();
            let stdin_once = record.config.stdin_once;
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 << 10];
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => input.write_stdin(&buffer[..n]),
                    }
                }
                if stdin_once {
                    input.close_stdin();
                }
            });
        }
        let mut output = output;
        let ended = |w: &crate::engine::Watched| w.removed || w.exits > exits_at_attach;
        loop {
            tokio::select! {
                biased;
                item = output.recv() => match item {
                    Ok(o) => {
                        if want[o.stream as usize - 1]
                            && writer.write_all(&frame(o.stream, &o.bytes)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
                _ = async { watch.wait_for(ended).await.map(|_| ()) } => {
                    // Everything sent before the exit is in the channel.
                    while let Ok(o) = output.try_recv() {
                        if want[o.stream as usize - 1]
                            && writer.write_all(&frame(o.stream, &o.bytes)).await.is_err()
                        {
                            return;
                        }
                    }
                    break;
                }
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    });
    Ok(super::hijacked(upgrade, tty))
}

pub(super) fn resize(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let c = engine.container(id)?;
    let rows = query.int("h")?.unwrap_or(0);
    let cols = query.int("w")?.unwrap_or(0);
    if !c.record().state.status.is_running() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Container {} is not running", c.id),
        ));
    }
    c.resize(
        rows.clamp(0, u16::MAX as i64) as u16,
        cols.clamp(0, u16::MAX as i64) as u16,
    );
    Ok(empty(StatusCode::OK))
}

pub(super) fn rename(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let name = query
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Neither old nor new names may be empty"))?;
    engine.rename(id, name)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) fn logs(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let c = engine.container(id)?;
    let want = [query.flag("stdout"), query.flag("stderr")];
    if !want[0] && !want[1] {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let follow = query.flag("follow");
    let timestamps = query.flag("timestamps");
    let tail: Option<usize> = match query.get("tail").unwrap_or("all") {
        "all" | "" => None,
        n => Some(
            n.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid tail value {n:?}")))?,
        ),
    };
    let tty = c.record().config.tty;
    let path = c.log_path();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let render = |e: &logs::Entry| -> Option<Bytes> {
            let s: u8 = if e.stream == "stderr" { 2 } else { 1 };
            if !want[s as usize - 1] {
                return None;
            }
            let text = if timestamps {
                format!("{} {}", e.time, e.log)
            } else {
                e.log.clone()
            };
            Some(Bytes::from(if tty {
                text.into_bytes()
            } else {
                stdcopy(s, text.as_bytes())
            }))
        };
        let entries = logs::read(&path).unwrap_or_default();
        let skip = tail.map_or(0, |t| entries.len().saturating_sub(t));
        let mut sent = entries.len();
        for e in &entries[skip..] {
            if let Some(b) = render(e) {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        // Follow the file while the container runs (or may run again).
        let mut watch = c.watch();
        loop {
            let running = {
                let w = *watch.borrow_and_update();
                !w.removed
                    && matches!(
                        w.status,
                        Status::Running | Status::Restarting | Status::Created
                    )
            };
            let entries = logs::read(&path).unwrap_or_default();
            for e in entries.iter().skip(sent) {
                if let Some(b) = render(e) {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            }
            sent = sent.max(entries.len());
            if !running {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = watch.changed() => {}
                () = tx.closed() => return,
            }
        }
    });
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", content_type)
        .body(channel_body(rx))
        .expect("valid response"))
}

pub(super) async fn remove(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    engine
        .remove(id, query.flag("force"), query.flag("v"))
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) async fn prune(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for c in engine.containers() {
        let r = c.record();
        if r.state.status.is_running() || r.state.status == Status::Restarting {
            continue;
        }
        if !matches(
            &c,
            &filters
                .iter()
                .filter(|(k, _)| k == "label")
                .cloned()
                .collect::<Vec<_>>(),
        ) {
            continue;
        }
        reclaimed += super::system::disk_usage(&c.dir().join("upper"));
        engine.remove(&c.id, false, false).await?;
        deleted.push(c.id.clone());
    }
    Ok(json(
        StatusCode::OK,
        &json!({"ContainersDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed}),
    ))
}
