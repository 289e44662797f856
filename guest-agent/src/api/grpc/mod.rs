//! The gRPC service that `berth` calls (`berth.agent.v1.Agent`).

use std::path::PathBuf;
use std::time::Instant;

use berth_proto::pb::agent_server::Agent;
use berth_proto::pb::{InfoRequest, InfoResponse, PingRequest, PingResponse};
use tonic::{Request, Response, Status};

use crate::host_info;

/// Serves the agent's control API.
#[derive(Debug, Clone)]
pub struct AgentService {
    storage_root: PathBuf,
    started: Instant,
}

impl AgentService {
    /// A service reporting on the agent whose state lives at `storage_root`.
    pub fn new(storage_root: PathBuf) -> Self {
        AgentService {
            storage_root,
            started: Instant::now(),
        }
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
}
