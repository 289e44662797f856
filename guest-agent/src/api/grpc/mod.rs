//! The gRPC service that `berth` calls (`berth.agent.v1.Agent`).
//!
//! - [`copy`] — files to and from the host (`berth scp`).
//! - [`exec`] — commands on the host itself (`berth ssh`).
//! - [`ports`] — the listening ports a VM's supervisor forwards.
//! - [`tunnel`] — byte streams to the agent's services and to ports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use berth_proto::pb::agent_server::Agent;
use berth_proto::pb::{
    CopyData, CopyInFrame, CopyInResponse, CopyOutRequest, ExecInput, ExecOutput, InfoRequest,
    InfoResponse, PingRequest, PingResponse, Ports, ShutdownRequest, ShutdownResponse, TunnelFrame,
    WatchPortsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::host_info;

pub mod copy;
pub mod exec;
pub mod ports;
pub mod tunnel;

pub use tunnel::Targets;

/// Frames of exec output queued towards the client.
const EXEC_QUEUE: usize = 16;

/// What `Shutdown` does on this host.
#[derive(Debug, Clone)]
pub enum ShutdownAction {
    /// Stop this agent: `serve` returns.
    Stop(Arc<tokio::sync::Notify>),
    /// Ask PID 1 (`berth-agent init` in our guest) to sync and power off.
    PowerOff,
}

/// Serves the agent's control API.
#[derive(Clone)]
pub struct AgentService {
    storage_root: PathBuf,
    started: Instant,
    targets: Targets,
    shutdown: ShutdownAction,
    engine: Option<Arc<crate::engine::Engine>>,
}

impl AgentService {
    /// A service reporting on the agent whose state lives at `storage_root`;
    /// its tunnels reach `targets`, and `Shutdown` does `shutdown`.
    pub fn new(storage_root: PathBuf, targets: Targets, shutdown: ShutdownAction) -> Self {
        AgentService {
            storage_root,
            started: Instant::now(),
            targets,
            shutdown,
            engine: None,
        }
    }

    /// The same, with `engine`'s containers stopped before `Shutdown`
    /// acts.
    pub fn with_engine(self, engine: Arc<crate::engine::Engine>) -> Self {
        AgentService {
            engine: Some(engine),
            ..self
        }
    }
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("storage_root", &self.storage_root)
            .field("targets", &self.targets)
            .field("shutdown", &self.shutdown)
            .field("engine", &self.engine.is_some())
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            version: crate::VERSION.to_owned(),
            protocol: berth_proto::PROTOCOL_VERSION,
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let root = self.storage_root.clone();
        // Reading /proc and statvfs blocks; keep it off the reactor.
        let host = tokio::task::spawn_blocking(move || host_info::HostInfo::gather(&root))
            .await
            .map_err(|e| Status::internal(format!("gathering host information failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(InfoResponse {
            version: crate::VERSION.to_owned(),
            kernel: host.kernel,
            os: host.os,
            arch: host.arch,
            cpus: host.cpus,
            memory_bytes: host.memory_bytes,
            storage_root: self.storage_root.display().to_string(),
            storage_total_bytes: host.storage_total_bytes,
            storage_free_bytes: host.storage_free_bytes,
            agent_uptime_seconds: self.started.elapsed().as_secs(),
            host_uptime_seconds: host.uptime_seconds,
            hostname: host.hostname,
            pid: std::process::id(),
        }))
    }

    type TunnelStream = tunnel::FrameStream;

    async fn tunnel(
        &self,
        request: Request<Streaming<TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        tunnel::open(&self.targets, request.into_inner())
            .await
            .map(Response::new)
    }

    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (tx, rx) = mpsc::channel(EXEC_QUEUE);
        let input = request.into_inner();
        let failed = tx.clone();
        tokio::spawn(async move {
            if let Err(status) = exec::run(input, tx).await {
                let _ = failed.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type CopyOutStream = ReceiverStream<Result<CopyData, Status>>;

    async fn copy_out(
        &self,
        request: Request<CopyOutRequest>,
    ) -> Result<Response<Self::CopyOutStream>, Status> {
        let request = request.into_inner();
        if request.path.is_empty() {
            return Err(Status::invalid_argument("the copy names no path"));
        }
        let rx = copy::out(PathBuf::from(request.path), request.recursive);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn copy_in(
        &self,
        request: Request<Streaming<CopyInFrame>>,
    ) -> Result<Response<CopyInResponse>, Status> {
        copy::into(request.into_inner()).await.map(Response::new)
    }

    type WatchPortsStream = ReceiverStream<Result<Ports, Status>>;

    async fn watch_ports(
        &self,
        _: Request<WatchPortsRequest>,
    ) -> Result<Response<Self::WatchPortsStream>, Status> {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(ports::watch(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        // Answered at once: the containers' stop timeouts may take a while,
        // and the caller watches the machine go down instead.
        let engine = self.engine.clone();
        let action = self.shutdown.clone();
        tokio::spawn(async move {
            if let Some(engine) = engine {
                tracing::info!("shutdown requested: stopping the containers");
                engine.stop_all().await;
            }
            match action {
                ShutdownAction::Stop(notify) => notify.notify_one(),
                ShutdownAction::PowerOff => {
                    tracing::info!("asking init to power off");
                    if let Err(e) = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(1),
                        crate::init::POWEROFF_SIGNAL,
                    ) {
                        tracing::error!("cannot signal init to power off: {e}");
                    }
                }
            }
        });
        Ok(Response::new(ShutdownResponse {}))
    }
}
