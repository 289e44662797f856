//! The OCI runtime: an OCI bundle (`config.json` + rootfs) in, an isolated
//! process out, with `runc`'s verbs so the two can be compared on the same
//! bundle.
//!
//! The spawn path is synchronous and single-threaded: the `runtime`
//! subcommand never starts an async runtime, so `fork()` copies a process
//! with one thread and the child may allocate and run ordinary code before
//! it execs. The process model follows runc's:
//!
//! ```text
//! berth-agent runtime create ──fork──▶ intermediate: setns/unshare ──fork──▶ init (PID 1)
//!      │  reads "pid"/"ready"/"error" over a pipe      exits                 │ mounts, pivot_root,
//!      ▼                                                                     │ devices, hostname…
//!  state.json (created)                                                      ▼ blocks on exec.fifo
//! berth-agent runtime start ── opens exec.fifo ───────────────────────────▶ execve(process.args)
//! ```
//!
//! `create` and the forked processes talk over one socket ([`sync`]): the
//! intermediate says `hello` once it has made its user namespace and waits
//! for `go`, by which time the runtime has written its id maps
//! ([`userns`]) and put it in the container's cgroup, so the init and all
//! it forks are accounted from the start.
//!
//! - [`spec`] — reading and checking `config.json`.
//! - [`state`] — a container's durable state under `--root`, and its status.
//! - [`rootfs`] — mounts, devices and `pivot_root`, never writing outside the rootfs.
//! - [`cgroupfs`] — the container's own cgroups mounted inside it.
//! - [`overlay`] — an overlayfs rootfs from image layers.
//! - [`cgroups`] — resource limits, v2 and v1 behind one interface.
//! - [`seccomp`] — a profile compiled to BPF and installed before exec.
//! - [`hooks`] — the spec's hooks, in the runtime's or the container's namespaces.
//! - [`console`] — the pty handed over `--console-socket`.
//! - [`sealed`] — re-executing from a sealed copy where a container could
//!   reach the binary.
//! - [`container_create`], [`container_start`], [`container_exec`],
//!   [`container_kill`], [`container_delete`], [`container_run`] — the verbs.
//! - [`container_init`] — what the init process does between fork and exec.
//! - [`cli`] — the runc-compatible command line.

pub mod cgroupfs;
pub mod cgroups;
pub mod cli;
pub mod console;
pub mod container_create;
pub mod container_delete;
pub mod container_exec;
pub mod container_init;
pub mod container_kill;
pub mod container_run;
pub mod container_start;
pub mod hooks;
pub mod overlay;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod state;
mod sync;
mod userns;

use std::path::PathBuf;

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bundle's config cannot be used.
    #[error("invalid bundle {bundle}: {reason}")]
    Spec {
        /// The bundle directory.
        bundle: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The container id is not acceptable.
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.'")]
    InvalidId(String),
    /// A container with this id exists already.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// No container has this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The container is not in a state that allows the operation.
    #[error("cannot {action} container {id:?}: it is {status}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The container.
        id: String,
        /// Its status.
        status: state::Status,
    },
    /// The container's init process failed before it could exec.
    #[error("container {id:?} failed to start: {reason}")]
    Init {
        /// The container.
        id: String,
        /// What its init reported.
        reason: String,
    },
    /// A signal name or number is not known.
    #[error("unknown signal {0:?}")]
    Signal(String),
    /// A system call failed.
    #[error("{action}: {source}")]
    Sys {
        /// What was being done.
        action: String,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn sys(action: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let action = action.into();
        move |source| RuntimeError::Sys { action, source }
    }

    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| RuntimeError::Io { action, source }
    }
}
