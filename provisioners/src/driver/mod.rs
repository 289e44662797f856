//! The `Driver` trait and what every driver shares.

use std::fmt;
use std::path::PathBuf;

use berth_proto::link::Address;
use serde::{Deserialize, Serialize};

pub mod ec2;
pub mod generic;
pub mod native;
pub mod qemu;

/// The state of a host, as docker-machine users know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineState {
    /// The host is up and its agent process runs.
    Running,
    /// The host is being brought up.
    Starting,
    /// The host is being shut down.
    Stopping,
    /// The host is not running.
    Stopped,
    /// The host's state could not be determined.
    Error,
}

impl MachineState {
    /// Every state, for parsing filters.
    pub const ALL: [MachineState; 5] = [
        MachineState::Running,
        MachineState::Starting,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Error,
    ];
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachineState::Running => "Running",
            MachineState::Starting => "Starting",
            MachineState::Stopping => "Stopping",
            MachineState::Stopped => "Stopped",
            MachineState::Error => "Error",
        })
    }
}

/// Where a client reaches the Docker Engine API of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEndpoint {
    /// The value for `DOCKER_HOST`, e.g. `unix:///…/docker.sock` or
    /// `tcp://203.0.113.7:2376`.
    pub url: String,
    /// Whether the endpoint requires mutual TLS with the machine's certs.
    pub tls: bool,
}

/// How a host's agent and Docker API are reached from this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The agent's gRPC address.
    pub agent: Address,
    /// The Docker Engine API.
    pub docker: DockerEndpoint,
    /// Real SSH to the host, where it has it (`berth ssh` and `scp` use
    /// it); without it they go through the agent.
    pub ssh: Option<crate::ssh::SshTarget>,
}

/// What `provision`, `upgrade` and `regenerate-certs` redo on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provision {
    /// Everything provisioning does.
    Full,
    /// A new agent program, its state kept.
    Upgrade,
    /// New server and client certificates (and a new CA with `new_ca`).
    RegenerateCerts {
        /// Make a new CA too.
        new_ca: bool,
    },
}

/// How the engine on a host is set up, as docker-machine's `--engine-*`
/// flags say; every driver hands these to its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineOptions {
    /// Registries (`host:port`) reached over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Docker Hub mirrors to pull through (URLs or `host[:port]`).
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// The engine's labels, `KEY=VALUE`, as `docker info` shows them.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The engine's environment, `KEY=VALUE` (e.g. `HTTP_PROXY=…`).
    #[serde(default)]
    pub env: Vec<String>,
}

impl EngineOptions {
    /// Checks every value: no whitespace (a VM's settings travel on the
    /// kernel command line), and `KEY=VALUE` where that is the form.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, values, pairs) in [
            (
                "--engine-insecure-registry",
                &self.insecure_registries,
                false,
            ),
            ("--engine-label", &self.labels, true),
            ("--engine-env", &self.env, true),
        ] {
            for value in values {
                let pair_ok = !pairs || value.split_once('=').is_some_and(|(k, _)| !k.is_empty());
                if value.is_empty() || value.contains(char::is_whitespace) || !pair_ok {
                    let form = if pairs {
                        "KEY=VALUE"
                    } else {
                        "a host[:port] or URL"
                    };
                    return Err(format!("{flag} {value:?} is not {form} without spaces"));
                }
            }
        }
        Ok(())
    }

    /// The agent's `serve` arguments and environment for these options.
    pub fn serve_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut args = Vec::new();
        for registry in &self.insecure_registries {
            args.extend(["--insecure-registry".to_owned(), registry.clone()]);
        }
        for mirror in &self.registry_mirrors {
            args.extend(["--registry-mirror".to_owned(), mirror.clone()]);
        }
        for label in &self.labels {
            args.extend(["--label".to_owned(), label.clone()]);
        }
        let env = self
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (args, env)
    }

    /// The words a guest's init reads from the kernel command line.
    pub fn kernel_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        words.extend(
            self.insecure_registries
                .iter()
                .map(|r| format!("berth.insecure_registry={r}")),
        );
        words.extend(
            self.registry_mirrors
                .iter()
                .map(|m| format!("berth.registry_mirror={m}")),
        );
        words.extend(self.labels.iter().map(|l| format!("berth.label={l}")));
        words.extend(self.env.iter().map(|e| format!("berth.env={e}")));
        words
    }
}

/// The first `name` in a directory of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Asks the agent serving gRPC on the unix socket `socket` to shut its
/// host down (it stops its containers, then itself or its VM); whether it
/// agreed within `timeout`. It answers before it stops anything: the
/// caller then watches the host go.
#[cfg(unix)]
pub(crate) async fn ask_shutdown(socket: &std::path::Path, timeout: std::time::Duration) -> bool {
    use berth_proto::pb::{agent_client::AgentClient, ShutdownRequest};
    let Ok(channel) = berth_proto::link::connect(&Address::Unix(socket.to_owned())) else {
        return false;
    };
    let mut client = AgentClient::new(channel);
    let asked = client.shutdown(ShutdownRequest {});
    matches!(tokio::time::timeout(timeout, asked).await, Ok(Ok(_)))
}

/// The longest socket path a `sockaddr_un` holds, without its NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Refuses, before anything is made, socket paths too long for a unix
/// socket (a deep `BERTH_HOME`).
pub(crate) fn check_socket_paths(paths: &[PathBuf]) -> Result<(), DriverError> {
    for socket in paths {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(DriverError::PreCreate(format!(
                "the machine's socket path {} is {len} bytes; unix sockets allow {MAX_SOCKET_PATH}: \
                 set BERTH_HOME to a shorter directory",
                socket.display()
            )));
        }
    }
    Ok(())
}

/// What a driver knows of the machine it drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineContext {
    /// The machine's name.
    pub name: String,
    /// The machine's directory; the driver may keep files there and nowhere
    /// else on this host.
    pub dir: PathBuf,
}

/// What went wrong in a driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver cannot work on this platform.
    #[error("the {driver} driver is not supported on this platform ({platform})")]
    Unsupported {
        /// The driver.
        driver: &'static str,
        /// The platform, e.g. "macos".
        platform: &'static str,
    },
    /// The agent program was not found.
    #[error("cannot find the berth-agent program: {0}")]
    AgentNotFound(String),
    /// A check before creating failed; nothing was made.
    #[error("{0}")]
    PreCreate(String),
    /// The agent process exited while starting.
    #[error("berth-agent exited during start-up ({status}): {log_tail}")]
    AgentExited {
        /// How it exited.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The agent did not answer in time.
    #[error("berth-agent did not answer within {seconds}s (its log: {log})")]
    AgentTimeout {
        /// The deadline in seconds.
        seconds: u64,
        /// Where its log is.
        log: String,
    },
    /// The agent would not stop.
    #[error("berth-agent (pid {pid}) did not exit within {seconds}s of {signal}")]
    StopTimeout {
        /// The agent's pid.
        pid: u32,
        /// The signal sent.
        signal: &'static str,
        /// The time waited.
        seconds: u64,
    },
    /// An agent holds the root but its process cannot be identified.
    #[error("an agent holds {root} but its pid file names no agent serving it; stop it by hand")]
    AgentProcessUnknown {
        /// The agent's storage root.
        root: String,
    },
    /// QEMU refused to start or exited.
    #[error("QEMU failed: {0}")]
    QemuFailed(String),
    /// The VM did not come up; it was ended.
    #[error("the VM did not come up ({reason}); it was stopped. Its console ends with:\n{console}\nhint: {hint}")]
    BootFailed {
        /// What the watchdog saw.
        reason: String,
        /// The last lines of the guest's console.
        console: String,
        /// What the user can try.
        hint: String,
    },
    /// Reaching or provisioning a remote host failed.
    #[error("{0}")]
    Remote(String),
    /// What the machine made on its host (containers, networks) could not
    /// all be removed.
    #[error("cannot remove the machine's containers and networks: {0}")]
    Cleanup(String),
    /// The driver does not do this.
    #[error("the {driver} driver does not support {what}")]
    NotSupported {
        /// The driver.
        driver: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// A file or process operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl DriverError {
    /// Wraps an I/O error with what was being done.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            action: action.into(),
            source,
        }
    }
}

/// How one kind of host is obtained and controlled.
///
/// Every method acts on the one machine the driver was opened for. The
/// caller holds the machine's lock, so no two calls race on one machine.
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// The driver's name, as `--driver` takes it.
    fn name(&self) -> &'static str;

    /// Checks, before anything is made, that the host can be created here.
    async fn pre_create_check(&self) -> Result<(), DriverError>;

    /// Makes the host and starts it; on error the caller calls
    /// [`Driver::remove`] to undo whatever was made.
    async fn create(&self) -> Result<(), DriverError>;

    /// Starts a stopped host and waits until its agent answers.
    async fn start(&self) -> Result<(), DriverError>;

    /// Stops the host gracefully.
    async fn stop(&self) -> Result<(), DriverError>;

    /// Stops the host at once, without letting it clean up.
    async fn kill(&self) -> Result<(), DriverError>;

    /// Stops the host if it runs and releases everything the driver made,
    /// except the machine's directory, which the store removes.
    async fn remove(&self) -> Result<(), DriverError>;

    /// The host's current state.
    async fn state(&self) -> Result<MachineState, DriverError>;

    /// The host's IP address as the user reaches it.
    async fn ip(&self) -> Result<String, DriverError>;

    /// Where the host's agent and Docker API are reached.
    fn endpoint(&self) -> Endpoint;

    /// A gRPC channel to the host's agent.
    async fn agent_channel(&self) -> Result<tonic::transport::Channel, DriverError> {
        berth_proto::link::connect(&self.endpoint().agent)
            .map_err(|e| DriverError::Remote(e.to_string()))
    }

    /// Provisions the host again, or the part `what` names.
    async fn provision(&self, what: Provision) -> Result<(), DriverError> {
        Err(DriverError::NotSupported {
            driver: self.name(),
            what: match what {
                Provision::Full => "provision",
                Provision::Upgrade => "upgrade",
                Provision::RegenerateCerts { .. } => "regenerate-certs",
            },
        })
    }
}

/// A machine's choice of driver and that driver's settings, as saved in
/// `machine.json` under `"Driver"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Name", rename_all = "lowercase")]
pub enum DriverConfig {
    /// This Linux machine itself.
    Native(native::NativeConfig),
    /// A QEMU VM booted from Berth's guest image.
    Qemu(qemu::QemuConfig),
    /// Any Linux host reachable over SSH.
    Generic(generic::GenericConfig),
    /// An Amazon EC2 instance.
    Ec2(ec2::Ec2Config),
}

impl DriverConfig {
    /// Names of all drivers, as `--driver` takes them.
    pub const NAMES: &'static [&'static str] =
        &[native::NAME, qemu::NAME, generic::NAME, ec2::NAME];

    /// The driver's name.
    pub fn name(&self) -> &'static str {
        match self {
            DriverConfig::Native(_) => native::NAME,
            DriverConfig::Qemu(_) => qemu::NAME,
            DriverConfig::Generic(_) => generic::NAME,
            DriverConfig::Ec2(_) => ec2::NAME,
        }
    }

    /// The default settings of the driver called `name`, if there is one.
    pub fn default_for(name: &str) -> Option<Self> {
        match name {
            native::NAME => Some(DriverConfig::Native(native::NativeConfig::default())),
            qemu::NAME => Some(DriverConfig::Qemu(qemu::QemuConfig::default())),
            generic::NAME => Some(DriverConfig::Generic(generic::GenericConfig::default())),
            ec2::NAME => Some(DriverConfig::Ec2(ec2::Ec2Config::default())),
            _ => None,
        }
    }

    /// The engine options the machine was made with.
    pub fn engine(&self) -> &EngineOptions {
        match self {
            DriverConfig::Native(c) => &c.engine,
            DriverConfig::Qemu(c) => &c.engine,
            DriverConfig::Generic(c) => &c.engine,
            DriverConfig::Ec2(c) => &c.engine,
        }
    }

    /// Opens the driver for the machine in `context`.
    pub fn open(&self, context: MachineContext) -> Box<dyn Driver> {
        match self {
            DriverConfig::Native(config) => {
                Box::new(native::NativeDriver::new(config.clone(), context))
            }
            DriverConfig::Qemu(config) => Box::new(qemu::QemuDriver::new(config.clone(), context)),
            DriverConfig::Generic(config) => {
                Box::new(generic::GenericDriver::new(config.clone(), context))
            }
            DriverConfig::Ec2(config) => Box::new(ec2::Ec2Driver::new(config.clone(), context)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_options_are_checked_and_handed_on() {
        let options = EngineOptions {
            insecure_registries: vec!["10.0.2.2:5000".into()],
            registry_mirrors: vec![],
            labels: vec!["tier=dev".into()],
            env: vec!["HTTP_PROXY=http://p:3128".into()],
        };
        options.validate().unwrap();
        let (args, env) = options.serve_args();
        assert_eq!(
            args,
            [
                "--insecure-registry",
                "10.0.2.2:5000",
                "--label",
                "tier=dev"
            ]
        );
        assert_eq!(env, [("HTTP_PROXY".to_owned(), "http://p:3128".to_owned())]);
        for bad in [
            EngineOptions {
                labels: vec!["novalue".into()],
                ..Default::default()
            },
            EngineOptions {
                env: vec!["=x".into()],
                ..Default::default()
            },
            EngineOptions {
                insecure_registries: vec!["a b".into()],
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn driver_config_round_trips_with_its_name() {
        let config = DriverConfig::default_for("native").unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.starts_with(r#"{"Name":"native""#), "{json}");
        assert_eq!(serde_json::from_str::<DriverConfig>(&json).unwrap(), config);
        // Records written before the engine options existed still load.
        assert_eq!(
            serde_json::from_str::<DriverConfig>(r#"{"Name":"native"}"#).unwrap(),
            config
        );
        assert!(serde_json::from_str::<DriverConfig>(r#"{"Name":"warp"}"#).is_err());
        assert!(DriverConfig::default_for("warp").is_none());
    }
}
