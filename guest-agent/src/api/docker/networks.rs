//! `/networks/…`: list, inspect, create, remove, connect, disconnect,
//! prune.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{empty, json, read_json, ApiError, Body, Query, Result};
use crate::engine::Engine;
use crate::network::{Network, NetworkError};

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        let status = match &e {
            NetworkError::NotFound(_) => StatusCode::NOT_FOUND,
            NetworkError::Conflict(_) => StatusCode::CONFLICT,
            NetworkError::Forbidden(_) => StatusCode::FORBIDDEN,
            NetworkError::Invalid(_) => StatusCode::BAD_REQUEST,
            NetworkError::System(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A network as the API shows it, with the containers on it (`verbose`
/// adds nothing more here).
fn network_json(engine: &Engine, n: &Network) -> Value {
    let mut containers = serde_json::Map::new();
    for c in engine.containers() {
        let r = c.record();
        if let Some(e) = r.network.endpoints.iter().find(|e| e.network_id == n.id) {
            containers.insert(
                r.id.clone(),
                json!({
                    "Name": r.name,
                    "EndpointID": e.endpoint_id,
                    "MacAddress": e.mac,
                    "IPv4Address": e.address.map(|a| format!("{a}/{}", e.prefix)).unwrap_or_default(),
                    "IPv6Address": "",
                }),
            );
        }
    }
    let config: Vec<Value> = match (&n.subnet, n.gateway) {
        (Some(subnet), Some(gateway)) => {
            vec![json!({"Subnet": subnet, "Gateway": gateway.to_string()})]
        }
        _ => Vec::new(),
    };
    let mut options = n.options.clone();
    if n.is_bridge() {
        options.insert("com.docker.network.bridge.name".into(), n.bridge.clone());
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": if n.created.is_empty() { "0001-01-01T00:00:00Z" } else { &n.created },
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": n.labels,
    })
}

fn matches(n: &Network, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "name" => n.name.contains(v.as_str()),
        "id" => n.id.starts_with(v.as_str()),
        "driver" => n.driver == *v,
        "type" => match v.as_str() {
            "builtin" => n.is_builtin(),
            "custom" => !n.is_builtin(),
            _ => false,
        },
        "label" => match v.split_once('=') {
            Some((key, value)) => n.labels.get(key).is_some_and(|x| x == value),
            None => n.labels.contains_key(v.as_str()),
        },
        _ => true,
    })
}

pub(super) fn list(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let list: Vec<Value> = engine
        .networks
        .list()
        .iter()
        .filter(|n| matches(n, &filters))
        .map(|n| network_json(engine, n))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

pub(super) fn inspect(engine: &Arc<Engine>, key: &str) -> Result<Response<Body>> {
    let n = engine.networks.find(key)?;
    Ok(json(StatusCode::OK, &network_json(engine, &n)))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    internal: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<Ipam>,
    options: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    enable_ipv6: Option<bool>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Ipam {
    config: Option<Vec<IpamConfig>>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfig {
    subnet: String,
    gateway: String,
}

pub(super) async fn create(engine: &Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let body: CreateBody = read_json(req.into_body()).await?;
    if !body.driver.is_empty() && body.driver != "bridge" {
        return Err(ApiError::not_found(format!(
            "plugin \"{}\" not found",
            body.driver
        )));
    }
    if body.enable_ipv6 == Some(true) {
        return Err(ApiError::bad_request("IPv6 networks are not supported"));
    }
    let configs = body.ipam.and_then(|i| i.config).unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::bad_request(
            "only one IPv4 subnet per network is supported",
        ));
    }
    let (subnet, gateway) = match configs.first() {
        Some(c) => {
            let subnet = match c.subnet.as_str() {
                "" => None,
                s => Some(s.parse().map_err(ApiError::bad_request)?),
            };
            let gateway = match c.gateway.as_str() {
                "" => None,
                g => Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gateway address {g:?}"))
                })?),
            };
            if gateway.is_some() && subnet.is_none() {
                return Err(ApiError::bad_request(
                    "a gateway needs a subnet (--subnet) to be in",
                ));
            }
            (subnet, gateway)
        }
        None => (None, None),
    };
    let n = engine.networks.create(
        &body.name,
        subnet,
        gateway,
        body.internal,
        body.labels.unwrap_or_default(),
        body.options.unwrap_or_default(),
    )?;
    engine.emit_simple("network", "create", &n.id, Some(&n.name));
    Ok(json(
        StatusCode::CREATED,
        &json!({"Id": n.id, "Warning": ""}),
    ))
}

pub(super) async fn remove(engine: &Arc<Engine>, key: &str) -> Result<Response<Body>> {
    let n = engine.networks.find(key)?;
    engine.networks.remove(&n.id).await?;
    engine.emit_simple("network", "destroy", &n.id, Some(&n.name));
    Ok(empty(StatusCode::NO_CONTENT))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectBody {
    container: String,
    endpoint_config: Option<EndpointConfig>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointConfig {
    aliases: Option<Vec<String>>,
}

pub(super) async fn connect(
    engine: &Arc<Engine>,
    key: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let body: ConnectBody = read_json(req.into_body()).await?;
    let aliases = body
        .endpoint_config
        .and_then(|e| e.aliases)
        .unwrap_or_default();
    engine.connect(&body.container, key, aliases).await?;
    Ok(empty(StatusCode::OK))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DisconnectBody {
    container: String,
}

pub(super) async fn disconnect(
    engine: &Arc<Engine>,
    key: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let body: DisconnectBody = read_json(req.into_body()).await?;
    engine.disconnect(&body.container, key).await?;
    Ok(empty(StatusCode::OK))
}

pub(super) async fn prune(engine: &Arc<Engine>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let filters = Query::parse(req).filters()?;
    let mut deleted = Vec::new();
    for n in engine.networks.list() {
        if n.is_builtin() || !matches(&n, &filters) {
            continue;
        }
        let used = engine.containers().iter().any(|c| {
            c.record()
                .network
                .attachments
                .iter()
                .any(|a| a.network == n.name)
        });
        if used {
            continue;
        }
        if engine.networks.remove(&n.id).await.is_ok() {
            engine.emit_simple("network", "destroy", &n.id, Some(&n.name));
            deleted.push(n.name);
        }
    }
    Ok(json(StatusCode::OK, &json!({"NetworksDeleted": deleted})))
}
