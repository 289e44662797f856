//! The Docker Engine API, enough of it for the stock `docker` CLI: HTTP/1.1
//! on a unix socket, versioned (`/v1.47/…`) and unversioned paths, errors
//! as `{"message": …}` with dockerd's status codes, JSON streams for pull
//! and events, stdcopy framing, and the `Upgrade: tcp` hijack for attach.
//!
//! Each handler translates onto [`crate::engine::Engine`] and owns no state.

mod archive;
mod build;
mod containers;
mod exec;
mod images;
mod networks;
mod procs;
mod system;
pub mod tls;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::engine::{Engine, EngineError};
use crate::image::ImageError;
use crate::runtime::RuntimeError;

/// The newest API version served.
pub const API_VERSION: &str = "1.47";
/// The oldest API version served.
pub const MIN_API_VERSION: &str = "1.24";
/// The largest request body read into memory (JSON bodies).
const MAX_BODY: usize = 4 << 20;

/// A response body: whole or streamed.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An error as dockerd answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::Image(ImageError::NotFound(_)) => StatusCode::NOT_FOUND,
            EngineError::Image(
                ImageError::InvalidReference(_)
                | ImageError::InvalidDigest(_)
                | ImageError::InvalidPlatform(_),
            ) => StatusCode::BAD_REQUEST,
            EngineError::Image(ImageError::Unauthorized { .. }) => StatusCode::UNAUTHORIZED,
            EngineError::Runtime(RuntimeError::NotFound(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        EngineError::from(e).into()
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// A whole body.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends what is written to it down a channel, for a streamed body
/// written by blocking code.
struct ChannelWriter(mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A body fed from a channel.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A JSON response.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(full(body))
        .expect("valid response")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// Whether the client asked to take the connection over (`Upgrade: tcp`).
fn wants_upgrade(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tcp"))
}

/// The answer to an attach or exec start: the connection is the stream
/// from here on, raw with a terminal, stdcopy-framed without.
fn hijacked(upgrade: bool, tty: bool) -> Response<Body> {
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let mut response = Response::builder().header("Content-Type", content_type);
    response = if upgrade {
        response
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("Connection", "Upgrade")
            .header("Upgrade", "tcp")
    } else {
        response.status(StatusCode::OK)
    };
    response.body(full(Bytes::new())).expect("valid response")
}

fn error_response(e: ApiError) -> Response<Body> {
    json(e.status, &serde_json::json!({ "message": e.message }))
}

/// The query string as pairs.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(req: &Request<Incoming>) -> Self {
        Query(
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// Every value given for `key`, in order.
    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean as dockerd reads one: present and not `0`/`false`/`""`.
    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| !matches!(v, "" | "0" | "false" | "False" | "FALSE"))
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    }

    /// `filters` (JSON: name → values, or name → {value: true}).
    fn filters(&self) -> Result<Vec<(String, String)>> {
        let Some(text) = self.get("filters").filter(|t| !t.is_empty()) else {
            return Ok(Vec::new());
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let mut out = Vec::new();
        let Some(map) = value.as_object() else {
            return Err(ApiError::bad_request("invalid filter: not an object"));
        };
        for (name, values) in map {
            match values {
                serde_json::Value::Array(list) => {
                    for v in list {
                        out.push((name.clone(), v.as_str().unwrap_or_default().to_owned()));
                    }
                }
                serde_json::Value::Object(set) => {
                    for (v, on) in set {
                        if on.as_bool() != Some(false) {
                            out.push((name.clone(), v.clone()));
                        }
                    }
                }
                _ => return Err(ApiError::bad_request(format!("invalid filter {name}"))),
            }
        }
        Ok(out)
    }
}

/// Reads a JSON body (empty allowed: `T::default()`).
async fn read_json<T: serde::de::DeserializeOwned + Default>(body: Incoming) -> Result<T> {
    let bytes = read_body(body, MAX_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// Reads a body up to `limit` bytes.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// How much of a refused upload is read and dropped so that the client can
/// finish sending and read the error, as Go's server lets it; past this the
/// connection is closed instead.
const DRAIN_LIMIT: usize = 64 << 20;

/// How long a refused upload may take to arrive before the error is sent
/// anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops what is left of a request `body` that is refused
/// (within [`DRAIN_LIMIT`] and [`DRAIN_TIMEOUT`]): a client still sending
/// when the connection closes hears a broken pipe, not the refusal.
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut discarded = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, Bytes::len);
            if discarded > DRAIN_LIMIT {
                break;
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        debug!("the client did not finish sending a refused request");
    }
}

/// Writes a request body to `file` as it arrives (archives too large
/// for memory: `load`, a build's context).
async fn spool(mut body: Incoming, file: &std::fs::File) -> Result<()> {
    use std::io::Write;
    let mut file = file;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).map_err(|e| {
                ApiError::from(EngineError::Internal(format!(
                    "spool the request body: {e}"
                )))
            })?;
        }
    }
    Ok(())
}

/// Serves the Docker API on `listener` until `shutdown`.
pub async fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("docker API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        tokio::spawn(serve_connection(engine.clone(), stream));
    }
}

/// How long a TCP client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the Docker API on `listener` over mutual TLS until `shutdown`.
pub async fn serve_tls(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("docker API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(engine, tls).await,
                Ok(Err(e)) => debug!(%peer, "docker API TLS handshake refused: {e}"),
                Err(_) => debug!(%peer, "docker API TLS handshake timed out"),
            }
        });
    }
}

/// Serves HTTP/1.1 (with upgrades, for attach and exec) on one connection.
async fn serve_connection<S>(engine: Arc<Engine>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let engine = engine.clone();
        async move { Ok::<_, Infallible>(route(engine, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        debug!("docker API connection: {e}");
    }
}

/// Removes a `/v1.NN` prefix; an unsupported version is an error.
fn unversioned(path: &str) -> Result<&str> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(path);
    };
    let Some((version, tail)) = rest.split_once('/') else {
        return Ok(path);
    };
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (Some(asked), Some(min), Some(max)) =
        (parse(version), parse(MIN_API_VERSION), parse(API_VERSION))
    else {
        return Ok(path);
    };
    if asked > max {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if asked < min {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    let _ = tail;
    Ok(&path[2 + version.len()..])
}

async fn route(engine: Arc<Engine>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    debug!(%method, %path, "docker API");
    let mut response = match unversioned(&path) {
        Ok(path) => {
            let segments: Vec<String> = path
                .trim_start_matches('/')
                .split('/')
                .map(percent_decode)
                .collect();
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            dispatch(&engine, req, &method, &segments)
                .await
                .unwrap_or_else(error_response)
        }
        Err(e) => error_response(e),
    };
    let headers = response.headers_mut();
    headers.insert("Api-Version", API_VERSION.parse().expect("header"));
    headers.insert("Docker-Experimental", "false".parse().expect("header"));
    headers.insert("Ostype", "linux".parse().expect("header"));
    headers.insert(
        "Server",
        format!("Docker/{} (linux)", crate::VERSION)
            .parse()
            .expect("header"),
    );
    response
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn dispatch(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
    method: &Method,
    segments: &[&str],
) -> Result<Response<Body>> {
    use Method as M;
    match (method, segments) {
        (&M::GET | &M::HEAD, ["_ping"]) => Ok(system::ping(method)),
        (&M::GET, ["version"]) => Ok(system::version()),
        (&M::GET, ["info"]) => system::info(engine),
        (&M::GET, ["events"]) => system::events(engine, &req),
        (&M::GET, ["system", "df"]) => system::df(engine),
        (&M::POST, ["auth"]) => system::auth(engine, req).await,

        (&M::POST, ["build"]) => build::build(engine, req).await,
        (&M::POST, ["build", "prune"]) => build::prune(engine),
        (&M::POST, ["commit"]) => build::commit(engine, req).await,
        (&M::GET, ["images", name @ .., "history"]) if !name.is_empty() => {
            build::history(engine, &name.join("/"))
        }

        (&M::POST, ["images", "create"]) if Query::parse(&req).get("fromSrc").is_some() => {
            images::import(engine, req).await
        }
        (&M::POST, ["images", "create"]) => images::pull(engine, &req),
        (&M::GET, ["images", "json"]) => images::list(engine, &req),
        (&M::POST, ["images", "prune"]) => images::prune(engine, &req),
        (&M::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            images::inspect(engine, &name.join("/"))
        }
        (&M::GET, ["images", "get"]) => images::save(engine, &Query::parse(&req).all("names")),
        (&M::POST, ["images", "load"]) => images::load(engine, req).await,
        (&M::GET, ["images", name @ .., "get"]) if !name.is_empty() => {
            images::save(engine, &[name.join("/").as_str()])
        }
        (&M::POST, ["images", name @ .., "push"]) if !name.is_empty() => {
            images::push(engine, &name.join("/"), &req)
        }
        (&M::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
            images::tag(engine, &name.join("/"), &req)
        }
        (&M::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            images::remove(engine, &name.join("/"), &req)
        }

        (&M::POST, ["containers", "create"]) => containers::create(engine, req).await,
        (&M::GET, ["containers", "json"]) => containers::list(engine, &req),
        (&M::POST, ["containers", "prune"]) => containers::prune(engine, &req).await,
        (&M::GET, ["containers", id, "json"]) => containers::inspect(engine, id),
        (&M::POST, ["containers", id, "start"]) => containers::start(engine, id).await,
        (&M::POST, ["containers", id, "stop"]) => containers::stop(engine, id, &req).await,
        (&M::POST, ["containers", id, "restart"]) => containers::restart(engine, id, &req).await,
        (&M::POST, ["containers", id, "kill"]) => containers::kill(engine, id, &req),
        (&M::POST, ["containers", id, "wait"]) => containers::wait(engine, id, &req),
        (&M::POST, ["containers", id, "attach"]) => containers::attach(engine, id, req),
        (&M::POST, ["containers", id, "resize"]) => containers::resize(engine, id, &req),
        (&M::HEAD, ["containers", id, "archive"]) => archive::stat(engine, id, &req).await,
        (&M::GET, ["containers", id, "archive"]) => archive::get(engine, id, &req).await,
        (&M::GET, ["containers", id, "export"]) => archive::export(engine, id).await,
        (&M::GET, ["containers", id, "changes"]) => archive::changes(engine, id).await,
        (&M::PUT, ["containers", id, "archive"]) => archive::put(engine, id, req).await,
        (&M::POST, ["containers", id, "pause"]) => procs::pause(engine, id).await,
        (&M::POST, ["containers", id, "unpause"]) => procs::unpause(engine, id).await,
        (&M::GET, ["containers", id, "top"]) => procs::top(engine, id, &req),
        (&M::GET, ["containers", id, "stats"]) => procs::stats(engine, id, &req),
        (&M::POST, ["containers", id, "exec"]) => exec::create(engine, id, req).await,
        (&M::POST, ["exec", id, "start"]) => exec::start(engine, id, req).await,
        (&M::POST, ["exec", id, "resize"]) => exec::resize(engine, id, &req),
        (&M::GET, ["exec", id, "json"]) => exec::inspect(engine, id),
        (&M::POST, ["containers", id, "rename"]) => containers::rename(engine, id, &req),
        (&M::GET, ["containers", id, "logs"]) => containers::logs(engine, id, &req),
        (&M::DELETE, ["containers", id]) => containers::remove(engine, id, &req).await,

        (&M::GET, ["networks"]) => networks::list(engine, &req),
        (&M::POST, ["networks", "create"]) => networks::create(engine, req).await,
        (&M::POST, ["networks", "prune"]) => networks::prune(engine, &req).await,
        (&M::GET, ["networks", id]) => networks::inspect(engine, id),
        (&M::DELETE, ["networks", id]) => networks::remove(engine, id).await,
        (&M::POST, ["networks", id, "connect"]) => networks::connect(engine, id, req).await,
        (&M::POST, ["networks", id, "disconnect"]) => networks::disconnect(engine, id, req).await,

        (&M::POST, ["volumes", "create"]) => system::volume_create(engine, req).await,
        (&M::GET, ["volumes"]) => system::volume_list(engine, &req),
        (&M::GET, ["volumes", name]) => system::volume_inspect(engine, name),
        (&M::DELETE, ["volumes", name]) => system::volume_remove(engine, name, &req),

        _ => Err(ApiError::not_found(format!(
            "page not found: {method} /{}",
            segments.join("/")
        ))),
    }
}

/// Serves the Docker API on a unix socket at `path` (made 0660, replacing
/// a stale socket).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?;
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
