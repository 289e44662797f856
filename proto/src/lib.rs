//! The wire between `berth` and `berth-agent`.
//!
//! This crate owns the gRPC protocol (`agent.proto`, compiled with tonic and
//! prost) and the **link**: how a byte stream to an agent is opened and
//! turned into a gRPC channel. The host CLI and the agent both depend on it;
//! it depends on neither.
//!
//! - [`pb`] — the generated messages, client and server.
//! - [`link`] — agent addresses and the connectors that reach them.
//! - [`copy`] — the tar form of `berth scp` copies, packed and placed.

#![deny(missing_docs)]

/// Generated protocol types for `berth.agent.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("berth.agent.v1");
}

pub mod copy;
pub mod link;

/// The protocol version this crate speaks, sent in `PingResponse.protocol`.
///
/// Bumped only for a change an older peer would misread; adding fields to
/// messages is not such a change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version of the Berth suite, shared by the CLI and the agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a local agent keeps its bookkeeping under its storage root: the
/// contract between `berth-agent serve` and the host tools that supervise
/// an agent on the same machine.
pub mod layout {
    /// The file an agent holds an exclusive lock on while it serves a root;
    /// a root whose lock is free has no agent.
    pub const LOCK_FILE: &str = "agent.lock";
    /// The serving agent's process id, written after the lock is taken and
    /// removed on a clean exit.
    pub const PID_FILE: &str = "agent.pid";
}
