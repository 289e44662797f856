//! One agent per storage root, serving on one socket until told to stop.
//!
//! The root is claimed with an exclusive lock on [`layout::LOCK_FILE`]
//! held for the agent's lifetime, so a second agent on the same root is
//! refused instead of corrupting shared state. The listening socket is
//! bound only after the lock is held; a socket file left by an agent that
//! died is removed, but only when nothing answers on it and it really is
//! a socket. Nothing here ever deletes a file that is not ours.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use berth_proto::layout;
use berth_proto::link::Address;
use berth_proto::pb::agent_server::AgentServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tracing::{info, warn};

use crate::api::grpc::{AgentService, ShutdownAction, Targets};

/// How long to keep trying for the root lock before concluding another agent
/// holds it. Host tools probe the lock for a few microseconds to learn
/// whether an agent runs; this grace keeps such a probe from failing a start.
const LOCK_GRACE: Duration = Duration::from_millis(750);

/// How long open connections may take to finish once the agent is told
/// to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes
/// including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The Docker Engine API's settings.
#[derive(Debug, Clone)]
pub struct DockerApi {
    /// The unix socket to serve it on.
    pub socket: PathBuf,
    /// Registries to reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Mirrors of Docker Hub to pull through (URLs or `host[:port]`).
    pub registry_mirrors: Vec<String>,
    /// The default network's subnet, if not chosen.
    pub bridge_subnet: Option<crate::network::ipam::Subnet>,
    /// The engine's labels (`KEY=VALUE`), as `docker info` shows them.
    pub labels: Vec<String>,
    /// Also on TCP, with mutual TLS.
    pub tcp: Option<(std::net::SocketAddr, crate::api::docker::tls::TlsFiles)>,
}

/// Where the gRPC service is served besides its unix socket, and what
/// `Shutdown` does: the guest side of a VM's link.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// A virtio-serial port's device node.
    pub port: Option<PathBuf>,
    /// A vsock port.
    pub vsock: Option<u32>,
    /// `Shutdown` powers the machine off (PID 1 is `berth-agent init`)
    /// instead of stopping this agent.
    pub power_off: bool,
}

/// Where a [`Gate`] stands.
enum GateState<S> {
    /// The service is not there yet: calls wait.
    Closed,
    /// Calls go to the service.
    Open(S),
    /// The agent stops (or never started): calls are refused.
    Ended,
}

/// A service that takes calls before it exists: each waits until the
/// service is put in ([`Gate::open`]), and is then handed to it.
pub struct Gate<S> {
    state: watch::Sender<GateState<S>>,
}

impl<S> Gate<S> {
    /// A closed gate.
    pub fn new() -> Self {
        Gate {
            state: watch::Sender::new(GateState::Closed),
        }
    }

    /// What takes the calls: a service to serve in `S`'s place.
    pub fn service(&self) -> Gated<S> {
        Gated {
            state: self.state.subscribe(),
        }
    }

    /// Hands the waiting calls, and every later one, to `service`.
    pub fn open(&self, service: S) {
        self.state.send_replace(GateState::Open(service));
    }

    /// Refuses the waiting calls and every later one; ends the servers
    /// that serve [`Gate::service`] through [`Gate::closed`].
    pub fn end(&self) {
        self.state.send_replace(GateState::Ended);
    }

    /// Completes once the gate is ended (or dropped): a server's
    /// shutdown signal.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static
    where
        S: Send + Sync + 'static,
    {
        let mut state = self.state.subscribe();
        async move {
            let _ = state.wait_for(|s| matches!(s, GateState::Ended)).await;
        }
    }
}

impl<S> Default for Gate<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Drop for Gate<S> {
    fn drop(&mut self) {
        self.state.send_replace(GateState::Ended);
    }
}

/// The stand-in a [`Gate`] gives out.
pub struct Gated<S> {
    state: watch::Receiver<GateState<S>>,
}

impl<S> Clone for Gated<S> {
    fn clone(&self) -> Self {
        Gated {
            state: self.state.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the call's to wait for, not the connection's: HTTP/2
        // keeps working (its pings, other streams) while calls wait.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut state = self.state.clone();
        Box::pin(async move {
            let service = match state
                .wait_for(|s| !matches!(s, GateState::Closed))
                .await
                .as_deref()
            {
                Ok(GateState::Open(service)) => Some(service.clone()),
                _ => None,
            };
            match service {
                Some(mut service) => {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                }
                None => Ok(tonic::Status::unavailable(
                    "the agent is not serving (it stopped, or could not start)",
                )
                .into_http()),
            }
        })
    }
}

/// The agent's API on a VM's link.
type AgentApi = AgentServer<AgentService>;

/// The servers of a VM's link (its virtio-serial port, its vsock port),
/// which may start before the agent serves: the host then connects (the
/// port's handshake, HTTP/2's settings) while the agent still waits for
/// its root, and its calls wait until the agent serves them.
pub struct LinkServers {
    gate: Gate<AgentApi>,
    power_off: bool,
}

impl LinkServers {
    /// Serves `links`; calls wait until the agent serves.
    pub fn start(links: &Links) -> Result<Self, DaemonError> {
        let gate = Gate::new();
        if let Some(device) = links.port.clone() {
            // The host side can vanish without a word (its supervisor
            // killed): probe the held connection so that the port is freed
            // for the next.
            let server = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(berth_proto::link::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(berth_proto::link::KEEPALIVE_TIMEOUT))
                .add_service(gate.service())
                .serve_with_incoming_shutdown(
                    crate::link::port_connections(device.clone()),
                    gate.closed(),
                );
            info!(port = %device.display(), "serving the link port");
            spawn_server(format!("the link port {}", device.display()), server);
        }
        if let Some(port) = links.vsock {
            let incoming = crate::link::vsock_connections(port)
                .map_err(|source| DaemonError::Vsock { port, source })?;
            let server = tonic::transport::Server::builder()
                .add_service(gate.service())
                .serve_with_incoming_shutdown(incoming, gate.closed());
            info!(port, "serving vsock");
            spawn_server(format!("vsock port {port}"), server);
        }
        Ok(LinkServers {
            gate,
            power_off: links.power_off,
        })
    }
}

/// Runs `server` on its own task; its failure is logged as serving `what`.
fn spawn_server(
    what: String,
    server: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            warn!("serving {what} failed: {e}");
        }
    });
}

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The storage root could not be created or opened.
    #[error("cannot prepare storage root {path}: {source}")]
    Root {
        /// The root.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another agent already serves this root.
    #[error("another berth-agent{} already serves {root}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The root.
        root: PathBuf,
        /// That agent's pid, when its pid file could be read.
        pid: Option<u32>,
    },
    /// The lock or pid file could not be written.
    #[error("cannot write {path}: {source}")]
    Bookkeeping {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// This address kind cannot be listened on by this command.
    #[error("cannot listen on {0}: only unix sockets are supported by 'serve'")]
    UnsupportedListen(Address),
    /// The socket path does not fit in a `sockaddr_un`.
    #[error("socket path {path} is {len} bytes long; unix sockets allow at most {MAX_SOCKET_PATH}: choose a shorter path")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Something answers on the socket path already.
    #[error("socket {0} is in use by another process; refusing to take it over")]
    SocketInUse(PathBuf),
    /// The socket path names something that is not a socket.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// Binding or cleaning up the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The engine's state could not be opened.
    #[error("cannot open the engine's state: {0}")]
    Engine(String),
    /// What the engine made outside its root could not all be removed.
    #[error("cannot remove the containers and networks of this root: {0}")]
    Purge(String),
    /// The Docker API's TLS endpoint could not be set up.
    #[error("cannot serve the Docker API over TLS: {0}")]
    Tls(String),
    /// Init did not say that the root is ready.
    #[error("the guest's init gave up before the agent's root was ready: {0}")]
    RootNotReady(String),
    /// The vsock port could not be listened on.
    #[error("cannot listen on vsock port {port}: {source}")]
    Vsock {
        /// The port.
        port: u32,
        /// The underlying error.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// An exclusive claim on a storage root, released when dropped.
#[derive(Debug)]
pub struct RootLock {
    root: PathBuf,
    // Held open for the lock; closing it releases the lock.
    _file: File,
}

impl RootLock {
    /// Creates `root` (mode 0700) if needed, takes its lock and records this
    /// process's pid.
    pub fn acquire(root: &Path) -> Result<Self, DaemonError> {
        let lock = Self::take(root)?;
        Self::write_pid(root)?;
        Ok(lock)
    }

    /// [`RootLock::acquire`] but for the pid, which the caller records with
    /// [`RootLock::write_pid`].
    fn take(root: &Path) -> Result<Self, DaemonError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| DaemonError::Root {
                path: root.to_owned(),
                source,
            })?;
        let lock_path = root.join(layout::LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| DaemonError::Bookkeeping {
                path: lock_path.clone(),
                source,
            })?;
        let deadline = Instant::now() + LOCK_GRACE;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let pid = fs::read_to_string(root.join(layout::PID_FILE))
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    return Err(DaemonError::AlreadyRunning {
                        root: root.to_owned(),
                        pid,
                    });
                }
                Err(fs::TryLockError::Error(source)) => {
                    return Err(DaemonError::Bookkeeping {
                        path: lock_path,
                        source,
                    })
                }
            }
        }
        Ok(RootLock {
            root: root.to_owned(),
            _file: file,
        })
    }

    /// Records this process's pid in `root`, whose lock it holds.
    fn write_pid(root: &Path) -> Result<(), DaemonError> {
        let path = root.join(layout::PID_FILE);
        let tmp = root.join(format!(".{}.tmp", layout::PID_FILE));
        // Whole or absent (the rename), but not synced: a pid means
        // nothing once the machine has gone down, and a sync costs a
        // flush of the whole disk cache at every start.
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{}", std::process::id())?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| DaemonError::Bookkeeping { path, source })
    }
}

impl Drop for RootLock {
    fn drop(&mut self) {
        // The pid file is only meaningful while the lock is held.
        let _ = fs::remove_file(self.root.join(layout::PID_FILE));
    }
}

/// A bound listening socket that is removed when dropped, unless another
/// process has replaced it in the meantime.
#[derive(Debug)]
struct SocketGuard {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file left behind by a dead process, after checking that
/// it is a socket and that nothing accepts connections on it.
fn clear_stale_socket(path: &Path) -> Result<(), DaemonError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DaemonError::Listen {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(DaemonError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            warn!(socket = %path.display(), "removing stale socket left by a previous agent");
            fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(DaemonError::Listen {
                    path: path.to_owned(),
                    source: e,
                }),
            })
        }
        Err(source) => Err(DaemonError::Listen {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Binds a unix socket at `path` (mode 0600), clearing a stale one first.
fn bind_unix(path: &Path) -> Result<(UnixListener, SocketGuard), DaemonError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(DaemonError::SocketPathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    let listen_err = |source| DaemonError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(listen_err)?;
    }
    clear_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    let ino = fs::symlink_metadata(path).map_err(listen_err)?.ino();
    let guard = SocketGuard {
        path: path.to_owned(),
        ino,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok((listener, guard))
}

/// Removes what the engine under `root` made outside it (see
/// [`crate::engine::Engine::purge`]), holding the root's lock meanwhile.
pub async fn purge(root: &Path) -> Result<(), DaemonError> {
    let _lock = RootLock::acquire(root)?;
    crate::engine::Engine::purge(root)
        .await
        .map_err(|e| DaemonError::Purge(e.to_string()))
}

/// The stages of the guest's boot that init tells an agent it started
/// early, one byte each on a pipe, in this order. Init starts the agent
/// first so that the agent's own start (the binary's load, the async
/// runtime) overlaps the modules' loading and the disk's mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum BootStage {
    /// The boot modules are in: the link's devices exist.
    Link = b'l',
    /// The data disk is mounted at the agent's root and the network is up.
    Root = b'r',
}

impl BootStage {
    /// The stage that `byte` says, if any.
    fn of_byte(byte: u8) -> Option<Self> {
        [BootStage::Link, BootStage::Root]
            .into_iter()
            .find(|stage| *stage as u8 == byte)
    }
}

/// The agent's end of init's pipe: where the boot has got to.
pub struct BootStages {
    pipe: tokio::net::unix::pipe::Receiver,
    reached: Option<BootStage>,
}

impl BootStages {
    /// Reads init's word from `pipe`.
    pub fn new(pipe: std::os::fd::OwnedFd) -> Result<Self, DaemonError> {
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)
            .map_err(|e| DaemonError::RootNotReady(e.to_string()))?;
        Ok(BootStages {
            pipe,
            reached: None,
        })
    }

    /// Waits until the boot has reached `stage` (a later stage counts).
    pub async fn reached(&mut self, stage: BootStage) -> Result<(), DaemonError> {
        use tokio::io::AsyncReadExt;
        while self.reached < Some(stage) {
            let mut byte = [0u8; 1];
            let read = self
                .pipe
                .read(&mut byte)
                .await
                .map_err(|e| DaemonError::RootNotReady(e.to_string()))?;
            if read == 0 {
                let said = match self.reached {
                    Some(_) => "its pipe closed after the link's stage",
                    None => "its pipe closed without a word",
                };
                return Err(DaemonError::RootNotReady(said.into()));
            }
            let stage = BootStage::of_byte(byte[0]).ok_or_else(|| {
                DaemonError::RootNotReady(format!(
                    "it said {:?}, which is no stage of the boot",
                    char::from(byte[0])
                ))
            })?;
            self.reached = Some(stage);
        }
        Ok(())
    }
}

/// Opens the engine under `root` and serves the Docker API for it as
/// `docker` says, until `stop_rx` turns true.
async fn serve_docker(
    root: &Path,
    docker: DockerApi,
    stop_rx: &watch::Receiver<bool>,
) -> Result<(SocketGuard, std::sync::Arc<crate::engine::Engine>), DaemonError> {
    let mut registry = crate::image::registry::RegistryConfig {
        insecure: docker.insecure_registries.clone(),
        ..Default::default()
    };
    for mirror in &docker.registry_mirrors {
        registry.add_mirror(mirror).map_err(DaemonError::Engine)?;
    }
    let engine =
        crate::engine::Engine::open(root, registry, docker.labels.clone(), docker.bridge_subnet)
            .await
            .map_err(|e| DaemonError::Engine(e.to_string()))?;
    if let Some((address, files)) = &docker.tcp {
        let config = crate::api::docker::tls::server_config(files).map_err(DaemonError::Tls)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| DaemonError::Tls(format!("listen on {address}: {e}")))?;
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::api::docker::serve_tls(
            engine.clone(),
            listener,
            config,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        info!(%address, "Docker API on TCP with mutual TLS");
    }
    let (docker_listener, guard) = bind_unix(&docker.socket)?;
    let mut stop = stop_rx.clone();
    tokio::spawn(crate::api::docker::serve(
        engine.clone(),
        docker_listener,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    Ok((guard, engine))
}

/// Serves the agent's gRPC API for `root` on `listen` until `shutdown`
/// completes, then removes the socket and releases the root.
pub async fn serve(
    root: &Path,
    listen: &Address,
    docker: Option<DockerApi>,
    links: LinkServers,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let Address::Unix(path) = listen else {
        return Err(DaemonError::UnsupportedListen(listen.clone()));
    };
    let lock = RootLock::take(root)?;
    let (listener, socket) = bind_unix(path)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let docker_socket = docker.as_ref().map(|d| d.socket.clone());
    // The pid file is written while the engine opens: on a disk just
    // mounted, making a file waits for the disk's reads. Both are done
    // before the agent's API answers (what a host waits for), and the
    // write is waited for whatever the engine's outcome, so that it cannot
    // land after the lock is let go.
    let pid_file = tokio::task::spawn_blocking({
        let root = root.to_owned();
        move || RootLock::write_pid(&root)
    });
    let docker = match docker {
        Some(docker) => Some(serve_docker(root, docker, &stop_rx).await),
        None => None,
    };
    pid_file.await.map_err(|e| DaemonError::Bookkeeping {
        path: root.join(layout::PID_FILE),
        source: io::Error::other(e),
    })??;
    let (docker_guard, engine_of_docker) = docker.transpose()?.unzip();
    let stop_requested = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut service = AgentService::new(
        root.to_owned(),
        Targets {
            docker: docker_socket,
        },
        if links.power_off {
            ShutdownAction::PowerOff
        } else {
            ShutdownAction::Stop(stop_requested.clone())
        },
    );
    if let Some(engine) = engine_of_docker {
        service = service.with_engine(engine);
    }
    links.gate.open(AgentServer::new(service.clone()));
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_requested.notified() => info!("shutdown requested over gRPC"),
        }
        let _ = stop_tx.send(true);
        links.gate.end();
    };
    info!(
        version = crate::VERSION,
        root = %root.display(),
        listen = %listen,
        "berth-agent serving"
    );
    let mut stopping = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    tokio::select! {
        served = server => served?,
        // A client that holds its connection open (a VM's supervisor holds
        // the link) must not keep the agent from stopping.
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => info!("connections still open after {SHUTDOWN_GRACE:?}; closing them"),
    }
    drop(socket);
    drop(docker_guard);
    drop(lock);
    info!("berth-agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that says who answered.
    #[derive(Clone)]
    struct Answers(&'static str);

    impl Service<http::Request<Body>> for Answers {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let response = http::Response::builder()
                .header("answered-by", self.0)
                .body(Body::empty())
                .expect("a valid response");
            std::future::ready(Ok(response))
        }
    }

    fn call(service: &Gated<Answers>) -> tokio::task::JoinHandle<http::Response<Body>> {
        let mut service = service.clone();
        let request = http::Request::new(Body::empty());
        tokio::spawn(async move {
            match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_gate_holds_calls_until_it_opens_then_refuses_them_once_ended() {
        let gate = Gate::new();
        let gated = gate.service();
        let early = call(&gated);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!early.is_finished(), "a call went through a closed gate");
        gate.open(Answers("agent"));
        let answered = early.await.unwrap();
        assert_eq!(answered.headers()["answered-by"], "agent");
        assert_eq!(
            call(&gated).await.unwrap().headers()["answered-by"],
            "agent"
        );

        let closed = gate.closed();
        gate.end();
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("servers are told to stop when the gate ends");
        let refused = call(&gated).await.unwrap();
        // UNAVAILABLE, and never the service's answer.
        assert_eq!(grpc_status(&refused), Some("14"));
        assert!(refused.headers().get("answered-by").is_none());
    }

    #[tokio::test]
    async fn calls_waiting_at_a_gate_that_goes_away_are_refused() {
        let gate: Gate<Answers> = Gate::new();
        let waiting = call(&gate.service());
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(gate);
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiting call ends when its gate goes")
            .unwrap();
        assert_eq!(grpc_status(&refused), Some("14"));
    }

    #[tokio::test]
    async fn boot_stages_come_in_order_and_a_later_one_implies_the_earlier() {
        use std::io::Write;
        let stages = |said: &[u8], close: bool| {
            let (reader, mut writer) = std::io::pipe().unwrap();
            writer.write_all(said).unwrap();
            let writer = (!close).then_some(writer);
            (BootStages::new(reader.into()).unwrap(), writer)
        };
        let (mut boot, mut init) = stages(b"l", false);
        boot.reached(BootStage::Link).await.unwrap();
        let root =
            tokio::time::timeout(Duration::from_millis(50), boot.reached(BootStage::Root)).await;
        assert!(root.is_err(), "the root was ready before init said so");
        init.as_mut().unwrap().write_all(b"r").unwrap();
        boot.reached(BootStage::Root).await.unwrap();
        boot.reached(BootStage::Link).await.unwrap();

        let (mut boot, _init) = stages(b"r", false);
        boot.reached(BootStage::Link).await.unwrap();
        boot.reached(BootStage::Root).await.unwrap();

        let (mut boot, _) = stages(b"l", true);
        boot.reached(BootStage::Link).await.unwrap();
        let err = boot.reached(BootStage::Root).await.unwrap_err();
        assert!(
            err.to_string().contains("closed after the link's stage"),
            "{err}"
        );

        let (mut boot, _) = stages(b"1", true);
        let err = boot.reached(BootStage::Link).await.unwrap_err();
        assert!(err.to_string().contains("'1', which is no stage"), "{err}");
    }

    #[test]
    fn second_lock_on_a_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let first = RootLock::acquire(&root).unwrap();
        let pid = fs::read_to_string(root.join(layout::PID_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        match RootLock::acquire(&root) {
            Err(DaemonError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        drop(first);
        assert!(!root.join(layout::PID_FILE).exists());
        RootLock::acquire(&root).unwrap();
    }

    #[test]
    fn stale_socket_is_removed_but_live_one_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");

        // A socket whose listener is gone: stale.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        clear_stale_socket(&path).unwrap();
        assert!(!path.exists());

        // A live listener: refused, left in place.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            clear_stale_socket(&path),
            Err(DaemonError::SocketInUse(_))
        ));
        assert!(path.exists());
        drop(live);
        fs::remove_file(&path).unwrap();

        // A regular file: never removed.
        fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            clear_stale_socket(&path),
            Err(DaemonError::NotASocket(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}/a.sock", "x".repeat(120)));
        assert!(matches!(
            bind_unix(&long),
            Err(DaemonError::SocketPathTooLong { .. })
        ));
    }
}
