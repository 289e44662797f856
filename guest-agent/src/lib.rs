//! `berth-agent`: everything that runs on a container host.
//!
//! One static binary serves `berth` over gRPC and the Docker Engine API to
//! `docker`. This library is what the thin binary in `main.rs` drives and
//! what the tests exercise.
//!
//! - [`daemon`] — one agent per storage root: the root lock, the listening
//!   sockets (stale ones removed safely), graceful shutdown.
//! - [`api`] — the front doors: gRPC for `berth`, the Docker Engine API.
//! - [`engine`] — containers, images and volumes as durable state.
//! - [`build`] — `docker build`: the Dockerfile builder and its cache.
//! - [`download`] — the URLs users name (`ADD`, `import`), into files.
//! - [`image`] — the image store, the registry client, layers.
//! - [`network`] — bridges, addresses, NAT, published ports, DNS.
//! - [`runtime`] — the OCI runtime (`berth-agent runtime …`).
//! - [`init`] — PID 1 of the guest image.
//! - [`link`] — the agent's end of a VM's link.
//! - [`host_info`] — what the agent reports about its host.

#![deny(missing_docs)]
#![recursion_limit = "256"]

pub mod api;
pub mod build;
pub mod daemon;
pub mod download;
pub mod engine;
pub mod host_info;
pub mod image;
pub mod init;
pub mod link;
pub mod network;
pub mod runtime;

/// The agent's version, shared with the CLI through `berth-proto`.
pub const VERSION: &str = berth_proto::VERSION;
