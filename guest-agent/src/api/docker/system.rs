//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`, `/volumes`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{channel_body, empty, full, json, read_json, ApiError, Body, Query, Result};
use crate::engine::config::Status;
use crate::engine::Engine;
use crate::host_info::HostInfo;

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(super) fn ping(method: &Method) -> Response<Body> {
    let body = if method == Method::HEAD { "" } else { "OK" };
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Cache-Control", "no-cache, no-store, must-revalidate")
        .header("Pragma", "no-cache")
        .body(full(body))
        .expect("valid response")
}

pub(super) fn version() -> Response<Body> {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = crate::VERSION;
    json(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "Berth"},
            "Components": [{
                "Name": "Engine",
                "Version": version,
                "Details": {
                    "ApiVersion": super::API_VERSION,
                    "MinAPIVersion": super::MIN_API_VERSION,
                    "Os": "linux",
                    "Arch": go_arch(),
                    "KernelVersion": kernel,
                    "Experimental": "false",
                }
            }],
            "Version": version,
            "ApiVersion": super::API_VERSION,
            "MinAPIVersion": super::MIN_API_VERSION,
            "GitCommit": "berth",
            "GoVersion": "n/a (Rust)",
            "Os": "linux",
            "Arch": go_arch(),
            "KernelVersion": kernel,
            "BuildTime": "",
        }),
    )
}

pub(super) fn info(engine: &Arc<Engine>) -> Result<Response<Body>> {
    let host = HostInfo::gather(engine.root())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let containers = engine.containers();
    let count = |s: &[Status]| {
        containers
            .iter()
            .filter(|c| s.contains(&c.record().state.status))
            .count()
    };
    let images = engine.store.names()?.len();
    let cgroup_version = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    };
    Ok(json(
        StatusCode::OK,
        &json!({
            "ID": host.hostname,
            "Containers": containers.len(),
            "ContainersRunning": count(&[Status::Running, Status::Restarting]),
            "ContainersPaused": count(&[Status::Paused]),
            "ContainersStopped": count(&[Status::Exited, Status::Created, Status::Dead]),
            "Images": images,
            "Driver": "overlayfs",
            "DriverStatus": [["Backing Filesystem", "extfs"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Log": ["json-file"]},
            "MemoryLimit": true,
            "SwapLimit": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "IPv4Forwarding": true,
            "Debug": false,
            "NFd": 0,
            "NGoroutines": 0,
            "SystemTime": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": cgroup_version,
            "KernelVersion": host.kernel,
            "OperatingSystem": host.os,
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": host.arch,
            "NCPU": host.cpus,
            "MemTotal": host.memory_bytes,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "IndexConfigs": engine.insecure_registries.iter().map(|r| (r.clone(), serde_json::json!({
                    "Name": r, "Mirrors": [], "Secure": false, "Official": false,
                }))).collect::<serde_json::Map<String, serde_json::Value>>(),
                "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                "Mirrors": engine.registry_mirrors.iter().map(|m| format!("https://{m}/")).collect::<Vec<_>>(),
            },
            "DockerRootDir": engine.root(),
            "Name": host.hostname,
            "Labels": engine.labels,
            "ExperimentalBuild": false,
            "ServerVersion": crate::VERSION,
            "Runtimes": {"berth": {"path": "berth-agent runtime"}},
            "DefaultRuntime": "berth",
            "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": "",
            "SecurityOptions": ["name=seccomp,profile=builtin"],
            "Warnings": [],
        }),
    ))
}

pub(super) fn events(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let filters = query.filters()?;
    let until = query.int("until")?;
    let mut events = engine.events();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let deadline = until.map(|u| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            tokio::time::Instant::now() + std::time::Duration::from_secs((u - now).max(0) as u64)
        });
        loop {
            let event = match deadline {
                Some(d) => match tokio::time::timeout_at(d, events.recv()).await {
                    Ok(e) => e,
                    Err(_) => return,
                },
                None => events.recv().await,
            };
            let event = match event {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let wanted = filters.iter().all(|(name, value)| match name.as_str() {
                "type" => &event.kind == value,
                "event" => &event.action == value,
                "container" => {
                    event.kind == "container"
                        && (event.actor.id.starts_with(value.as_str())
                            || event.actor.attributes.get("name") == Some(value))
                }
                "image" => event.actor.attributes.get("image") == Some(value),
                _ => true,
            });
            if !wanted {
                continue;
            }
            let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
            if event.kind == "container" {
                value["status"] = json!(event.action);
                value["id"] = json!(event.actor.id);
                value["from"] = json!(event.actor.attributes.get("image"));
            }
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(channel_body(rx))
        .expect("valid response"))
}

/// Bytes under `path`, not following links.
pub(super) fn disk_usage(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum()
}

pub(super) fn df(engine: &Arc<Engine>) -> Result<Response<Body>> {
    let images = super::images::summaries(engine, false)?;
    let containers: Vec<Value> = engine
        .containers()
        .iter()
        .map(|c| {
            let mut v = super::containers::summary(engine, c);
            v["SizeRw"] = json!(disk_usage(&c.dir().join("upper")));
            v
        })
        .collect();
    let volumes: Vec<Value> = engine
        .volumes
        .list()
        .into_iter()
        .map(|v| {
            let size = disk_usage(&engine.volumes.data(&v.name));
            let mut out = volume_json(engine, &v);
            out["UsageData"] = json!({"Size": size, "RefCount": 0});
            out
        })
        .collect();
    let layers: u64 = images.iter().map(|i| i["Size"].as_u64().unwrap_or(0)).sum();
    Ok(json(
        StatusCode::OK,
        &json!({
            "LayersSize": layers,
            "Images": images,
            "Containers": containers,
            "Volumes": volumes,
            "BuildCache": [],
        }),
    ))
}

fn volume_json(engine: &Engine, v: &crate::engine::volumes::Volume) -> Value {
    json!({
        "Name": v.name,
        "Driver": "local",
        "Mountpoint": engine.volumes.data(&v.name),
        "CreatedAt": v.created,
        "Labels": v.labels,
        "Scope": "local",
        "Options": {},
    })
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeCreate {
    name: String,
    driver: String,
    labels: BTreeMap<String, String>,
}

pub(super) async fn volume_create(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let body: VolumeCreate = read_json(req.into_body()).await?;
    if !body.driver.is_empty() && body.driver != "local" {
        return Err(ApiError::not_found(format!(
            "plugin \"{}\" not found",
            body.driver
        )));
    }
    let name = if body.name.is_empty() {
        crate::engine::random_id()
    } else {
        body.name
    };
    let v = engine.volumes.ensure(&name, false, body.labels)?;
    engine.emit_simple("volume", "create", &v.name, None);
    Ok(json(StatusCode::CREATED, &volume_json(engine, &v)))
}

pub(super) fn volume_list(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let volumes: Vec<Value> = engine
        .volumes
        .list()
        .iter()
        .filter(|v| {
            filters.iter().all(|(k, val)| match k.as_str() {
                "name" => v.name.contains(val.as_str()),
                "label" => match val.split_once('=') {
                    Some((lk, lv)) => v.labels.get(lk).is_some_and(|x| x == lv),
                    None => v.labels.contains_key(val),
                },
                _ => true,
            })
        })
        .map(|v| volume_json(engine, v))
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({"Volumes": volumes, "Warnings": []}),
    ))
}

pub(super) fn volume_inspect(engine: &Arc<Engine>, name: &str) -> Result<Response<Body>> {
    let v = engine.volumes.get(name)?;
    Ok(json(StatusCode::OK, &volume_json(engine, &v)))
}

pub(super) fn volume_remove(
    engine: &Arc<Engine>,
    name: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let _force = Query::parse(req).flag("force");
    let in_use: Vec<String> = engine
        .containers()
        .iter()
        .filter(|c| {
            c.record().host_config.binds.iter().flatten().any(|b| {
                matches!(crate::engine::volumes::parse_bind(b),
                    Ok(crate::engine::volumes::Bind { source: crate::engine::volumes::Source::Volume(v), .. }) if v == name)
            })
        })
        .map(|c| c.id.clone())
        .collect();
    if !in_use.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("remove {name}: volume is in use - [{}]", in_use.join(", ")),
        ));
    }
    engine.volumes.remove(name, false)?;
    engine.emit_simple("volume", "destroy", name, None);
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /auth`: checks credentials against a registry, as `docker
/// login` asks; on success the agent uses them for that registry.
pub(super) async fn auth(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Login {
        username: String,
        password: String,
        serveraddress: String,
    }
    let login: Login = read_json(req.into_body()).await?;
    let address = login.serveraddress.trim();
    let host = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match host {
        "" | "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    engine.client.login(
        host,
        crate::image::registry::Credentials {
            username: login.username,
            password: login.password,
        },
    );
    let base = engine.client.base(host).await;
    let response = engine
        .client
        .send(host, "", |http| http.get(format!("{base}/")))
        .await;
    match response {
        Ok(r) if r.status().is_success() => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "Status": "Login Succeeded", "IdentityToken": "" }),
        )),
        Ok(r) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("login to {host} failed: {}", r.status()),
        )),
        Err(crate::image::ImageError::Unauthorized { .. }) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("Get \"{base}/\": unauthorized: incorrect username or password"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}
