//! The per-machine supervisor of a VM: a detached `berth` process (the
//! hidden verb [`COMMAND`]) that holds the one link to the guest's agent
//! and serves the machine's sockets on this host:
//!
//! - `<machine dir>/docker.sock` — each connection becomes a tunnel to the
//!   guest's Docker API, so `DOCKER_HOST=unix://…` works;
//! - `<machine dir>/agent.sock` — the agent's gRPC API for `berth` (ssh,
//!   version, stop): each call is passed on as a call of its own on the
//!   link, which the agent serves itself;
//! - `127.0.0.1:PORT` for every TCP port listening in the guest (published
//!   container ports among them), opened and closed as the agent reports
//!   them; a port taken on this machine is skipped with a warning.
//!
//! All of it rides one HTTP/2 connection over the virtio-serial port
//! (`link.sock`, which QEMU serves); the channel re-dials when the link
//! breaks, e.g. after the guest's agent restarted. The supervisor holds
//! `supervisor.lock` (with its pid) while it runs, exits when QEMU is gone
//! or on SIGTERM, and removes its sockets. If it dies the VM runs on, and
//! `berth start` starts a new one.

use std::path::{Path, PathBuf};

/// The hidden `berth` verb that runs a supervisor: `berth COMMAND DIR`.
pub const COMMAND: &str = "__supervise";

/// Errors that end a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Another supervisor holds this machine.
    #[error("another supervisor runs for {0}")]
    AlreadyRunning(PathBuf),
    /// A file or socket operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// This platform has no supervisor yet.
    #[error("the supervisor is not supported on this platform")]
    Unsupported,
}

/// Runs the supervisor for the machine in `dir` until QEMU exits or
/// SIGTERM.
pub async fn run(dir: &Path) -> Result<(), SupervisorError> {
    imp::run(dir).await
}

#[cfg(unix)]
mod imp {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use berth_proto::link::{self, tunnel, SerialConnector};
    use berth_proto::pb::tunnel_open::Target;
    use std::collections::BTreeMap;

    use berth_proto::pb::agent_client::AgentClient;
    use berth_proto::pb::{TunnelOpen, TunnelService, WatchPortsRequest};
    use hyper::body::Incoming;
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, UnixListener, UnixStream};
    use tokio::task::JoinHandle;
    use tonic::transport::Channel;
    use tower::ServiceExt;

    use super::SupervisorError;
    use crate::driver::qemu::Files;

    /// How often the supervisor checks that QEMU still runs.
    const QEMU_CHECK: Duration = Duration::from_secs(1);

    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
        let action = action.into();
        move |source| SupervisorError::Io { action, source }
    }

    pub(super) async fn run(dir: &Path) -> Result<(), SupervisorError> {
        let files = Files {
            dir: dir.to_owned(),
        };
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(files.supervisor_lock())
            .map_err(io(format!("open {}", files.supervisor_lock().display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SupervisorError::AlreadyRunning(dir.to_owned()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("lock the machine")(e)),
        }
        lock.set_len(0).map_err(io("write the supervisor's pid"))?;
        writeln!(lock, "{}", std::process::id()).map_err(io("write the supervisor's pid"))?;

        let connector = SerialConnector::new(files.link())
            .map_err(|e| io("open the link")(std::io::Error::other(e)))?;
        let channel = link::held_channel(connector);
        let docker = listen(&files.docker_socket())?;
        let agent = listen(&files.agent_socket())?;
        tracing::info!(dir = %dir.display(), "supervising");
        let service = |s: TunnelService| TunnelOpen {
            target: Some(Target::Service(s as i32)),
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("handle SIGTERM"))?;
        tokio::select! {
            _ = serve(docker, channel.clone(), service(TunnelService::Docker)) => {}
            _ = serve_agent(agent, channel.clone()) => {}
            _ = forward_ports(channel.clone()) => {}
            _ = qemu_gone(&files) => tracing::info!("QEMU has exited"),
            _ = term.recv() => tracing::info!("SIGTERM"),
        }
        for socket in [files.docker_socket(), files.agent_socket()] {
            let _ = fs::remove_file(socket);
        }
        drop(lock);
        Ok(())
    }

    fn listen(path: &Path) -> Result<UnixListener, SupervisorError> {
        // Only a supervisor serves these paths, and only one at a time (the
        // lock): what is there is a stale socket of a dead one.
        let _ = fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(io(format!("listen on {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restrict {}", path.display())))?;
        Ok(listener)
    }

    /// Runs `handle` on a task of its own for each connection `listener`
    /// accepts, until the supervisor ends.
    async fn accept_each<F>(listener: UnixListener, handle: impl Fn(UnixStream) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream));
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Makes each connection on `listener` a tunnel to `target`.
    async fn serve(listener: UnixListener, channel: Channel, target: TunnelOpen) {
        accept_each(listener, |stream| {
            let channel = channel.clone();
            async move {
                if let Err(e) = tunnel::open(channel, target, stream).await {
                    tracing::debug!("tunnel ended: {e}");
                }
            }
        })
        .await
    }

    /// Serves the agent's API on `listener` by passing each call on to the
    /// agent over `channel`: a call from `berth` is one more stream of the
    /// link's HTTP/2 connection, with no connection of its own inside a
    /// tunnel (whose handshake would cost round trips over the link). While
    /// the link is down a call waits for it, as on the link itself.
    async fn serve_agent(listener: UnixListener, channel: Channel) {
        accept_each(listener, |stream| {
            let channel = channel.clone();
            let pass_on = hyper::service::service_fn(move |request: Request<Incoming>| {
                let channel = channel.clone();
                async move {
                    let request = request.map(tonic::body::Body::new);
                    let response = match channel.oneshot(request).await {
                        Ok(response) => response,
                        Err(e) => tonic::Status::unavailable(format!(
                            "cannot reach the agent over the link: {e}"
                        ))
                        .into_http(),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            async move {
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), pass_on)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("agent connection ended: {e}");
                }
            }
        })
        .await
    }

    /// How long to wait before asking the agent for its ports again after
    /// the watch broke (the guest rebooting, the link re-dialling).
    const WATCH_RETRY: Duration = Duration::from_secs(1);

    /// Keeps a listener on 127.0.0.1 for every port the guest listens on.
    async fn forward_ports(channel: Channel) {
        let mut open: BTreeMap<u16, JoinHandle<()>> = BTreeMap::new();
        loop {
            let watch = AgentClient::new(channel.clone())
                .watch_ports(WatchPortsRequest {})
                .await;
            if let Ok(response) = watch {
                let mut updates = response.into_inner();
                while let Ok(Some(ports)) = updates.message().await {
                    let wanted: Vec<u16> = ports
                        .tcp
                        .iter()
                        .filter_map(|p| u16::try_from(*p).ok())
                        .collect();
                    open.retain(|port, task| {
                        let keep = wanted.contains(port);
                        if !keep {
                            task.abort();
                            tracing::info!(port, "port closed in the guest; no longer forwarded");
                        }
                        keep
                    });
                    for port in wanted {
                        if open.contains_key(&port) {
                            continue;
                        }
                        match TcpListener::bind(("127.0.0.1", port)).await {
                            Ok(listener) => {
                                tracing::info!(port, "forwarding 127.0.0.1:{port} to the guest");
                                open.insert(
                                    port,
                                    tokio::spawn(serve_tcp(listener, channel.clone(), port)),
                                );
                            }
                            Err(e) => tracing::warn!(port, "cannot forward port {port}: {e}"),
                        }
                    }
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    async fn serve_tcp(listener: TcpListener, channel: Channel, port: u16) {
        let target = TunnelOpen {
            target: Some(Target::TcpPort(u32::from(port))),
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let channel = channel.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tunnel::open(channel, target, stream).await {
                            tracing::debug!(port, "forwarded connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept on port {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn qemu_gone(files: &Files) {
        while crate::driver::qemu::qemu_running(files) {
            tokio::time::sleep(QEMU_CHECK).await;
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::path::Path;

    use super::SupervisorError;

    pub(super) async fn run(_: &Path) -> Result<(), SupervisorError> {
        Err(SupervisorError::Unsupported)
    }
}
