//! The agent's front doors. Each submodule adapts one protocol onto the
//! layers below it and owns no state of its own.

pub mod docker;
pub mod grpc;
