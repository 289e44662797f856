//! A container's settings as the Docker API spells them (`Config` and
//! `HostConfig` of `POST /containers/create`), and the durable record the
//! engine keeps per container. Fields the engine does not use are kept
//! as they came, so `inspect` gives back what `create` was given.

// The fields are the Docker API's, documented there.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::store::ImageRecord;

/// `Config`: what runs, from the client's point of view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub volumes: Option<BTreeMap<String, Value>>,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<super::health::HealthConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// Everything else the client sent, given back as it came.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `HostConfig.RestartPolicy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: String,
    pub maximum_retry_count: i64,
}

/// `HostConfig`: how it runs on this host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    pub memory: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub network_mode: String,
    /// `-p`: `"80/tcp"` → where on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    /// `-P`: every exposed port on a free host port.
    pub publish_all_ports: bool,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    /// `--mount`: binds, volumes and tmpfs mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MountRequest>>,
    /// `--tmpfs`: container path → mount options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub group_add: Option<Vec<String>>,
    pub ulimits: Option<Vec<Ulimit>>,
    pub pids_limit: Option<i64>,
    pub sysctls: Option<BTreeMap<String, String>>,
    pub extra_hosts: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
    pub dns_search: Option<Vec<String>>,
    pub dns_options: Option<Vec<String>>,
    /// Everything else the client sent, given back as it came.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One `--ulimit NAME=SOFT[:HARD]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// One `--mount`, as `HostConfig.Mounts` has it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountRequest {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<TmpfsOptions>,
    /// The other options (`BindOptions`, `VolumeOptions`, …), given back
    /// as they came.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `--mount type=tmpfs`'s `tmpfs-size` and `tmpfs-mode`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TmpfsOptions {
    pub size_bytes: i64,
    pub mode: u32,
}

/// One host side of a published port.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

/// A network a container is on, as asked at create or `network connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// The network's name.
    pub network: String,
    /// Its other names there.
    pub aliases: Vec<String>,
}

/// A container's networking: where it is to be, and while it runs, where
/// it is and what it publishes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkState {
    pub attachments: Vec<Attachment>,
    /// The running process's network namespace (bind mount).
    pub netns: Option<std::path::PathBuf>,
    pub endpoints: Vec<crate::network::Endpoint>,
    pub ports: Vec<crate::network::PortMapping>,
}

impl NetworkState {
    /// Takes out what belongs to the run that ended (namespace, places on
    /// networks, ports), leaving what the container asked for.
    pub fn take_run(&mut self) -> NetworkState {
        NetworkState {
            attachments: Vec::new(),
            netns: self.netns.take(),
            endpoints: std::mem::take(&mut self.endpoints),
            ports: std::mem::take(&mut self.ports),
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    /// The word Docker uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Whether a process is there.
    pub fn is_running(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

/// A container's run state, as `inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Stopped by the user (`docker stop`/`kill`), for `unless-stopped`
    /// and for not restarting what was asked to stop.
    pub stopped_by_user: bool,
    pub oom_killed: bool,
    /// The health check's standing, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<super::health::Health>,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: None,
            finished_at: None,
            stopped_by_user: false,
            oom_killed: false,
            health: None,
        }
    }
}

/// What the engine keeps on disk per container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub created: String,
    /// The image as the user named it.
    pub image_name: String,
    /// The image it was created from.
    pub image: ImageRecord,
    /// The process: entrypoint and command resolved against the image.
    pub path: String,
    pub args: Vec<String>,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub state: State,
    pub restart_count: i64,
    #[serde(default)]
    pub network: NetworkState,
}
