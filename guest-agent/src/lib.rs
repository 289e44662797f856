//! `berth-agent`: everything that runs on a container host.
//!
//! One static binary serves `berth` over gRPC (and, as later layers land,
//! the Docker Engine API to `docker`). This library is what the thin binary
//! in `main.rs` drives and what the tests exercise.
//!
//! Layers present today:
//! - [`daemon`] — one agent per storage root: the root lock, the listening
//!   socket (stale ones removed safely), graceful shutdown.
//! - [`api`] — the front doors; today the gRPC [`api::grpc::AgentService`].
//! - [`host_info`] — what the agent reports about its host (kernel, OS,
//!   CPUs, memory, storage).
//! - [`runtime`] — the OCI runtime (`berth-agent runtime …`), runc's verbs
//!   over a bundle; in progress.
//!
//! Not yet here (see the README): the image store, networking, the
//! builder, the engine state and the Docker API.

#![deny(missing_docs)]
#![recursion_limit = "256"]

pub mod api;
pub mod daemon;
pub mod engine;
pub mod host_info;
pub mod image;
pub mod init;
pub mod link;
pub mod network;
pub mod runtime;

/// The agent's version, shared with the CLI through `berth-proto`.
pub const VERSION: &str = berth_proto::VERSION;
