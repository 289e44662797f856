//! The `generic` driver: any Linux host reachable over SSH, as
//! docker-machine's `generic` driver takes it (`--generic-ip-address`,
//! `--generic-ssh-user`, `--generic-ssh-key`, `--generic-ssh-port`).
//! Creating it provisions the host ([`crate::provision`]); the Docker API
//! is then `tcp://HOST:2376` with mutual TLS, and the agent's gRPC is
//! reached through SSH to its socket.
//!
//! In the machine's directory: `ssh_key` (a copy of the key given),
//! `known_hosts` (the host key pinned at create; every later connection
//! must match it), and `certs/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::link::Address;
use serde::{Deserialize, Serialize};

use super::{
    DockerEndpoint, Driver, DriverError, Endpoint, EngineOptions, MachineContext, MachineState,
    Provision,
};
use crate::certs::{self, CertPaths};
use crate::provision::{self, ProvisionError, DOCKER_PORT};
use crate::ssh::{HostKeys, Session, SocketConnector, SshTarget};

/// The driver's name.
pub const NAME: &str = "generic";
/// How long `state` waits for the Docker endpoint.
const STATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How the host is reached, as saved in `machine.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenericConfig {
    /// The host's address or name.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// The user to log in as.
    #[serde(rename = "SSHUser")]
    pub ssh_user: String,
    /// The SSH port.
    #[serde(rename = "SSHPort")]
    pub ssh_port: u16,
    /// The private key given at create (copied into the machine).
    #[serde(rename = "SSHKeyPath")]
    pub ssh_key: PathBuf,
    /// The known-hosts file the host's key is checked against at create.
    #[serde(default, rename = "SSHKnownHosts")]
    pub known_hosts: Option<PathBuf>,
    /// Trust the host's key on first use, when no known-hosts file has it.
    #[serde(default, rename = "SSHAcceptNewHostKey")]
    pub accept_new_host_key: bool,
    /// How the engine is set up.
    #[serde(default)]
    pub engine: EngineOptions,
}

impl Default for GenericConfig {
    fn default() -> Self {
        GenericConfig {
            ip_address: String::new(),
            ssh_user: "root".into(),
            ssh_port: crate::ssh::DEFAULT_PORT,
            ssh_key: PathBuf::new(),
            known_hosts: None,
            accept_new_host_key: false,
            engine: EngineOptions::default(),
        }
    }
}

/// A host reached over SSH: the `generic` driver, and what cloud drivers
/// do once their instance has an address.
pub struct RemoteHost {
    /// Where the host is.
    pub host: String,
    /// The SSH user.
    pub user: String,
    /// The SSH port.
    pub port: u16,
    /// How the engine is set up.
    pub engine: EngineOptions,
    /// The machine.
    pub context: MachineContext,
}

fn provision_error(e: ProvisionError) -> DriverError {
    DriverError::Remote(e.to_string())
}

impl RemoteHost {
    /// The machine's SSH target (its own key copy and pinned host key).
    pub fn target(&self) -> SshTarget {
        SshTarget {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            key: self.context.dir.join("ssh_key"),
            known_hosts: self.context.dir.join("known_hosts"),
        }
    }

    /// The machine's certificates.
    pub fn certs(&self) -> CertPaths {
        CertPaths::new(&self.context.dir)
    }

    /// An SSH session to the host, its key checked against the pinned one.
    pub async fn session(&self) -> Result<Session, DriverError> {
        Session::connect(&self.target(), HostKeys::Known)
            .await
            .map_err(|e| DriverError::Remote(e.to_string()))
    }

    /// Copies `key` into the machine: what every later connection uses.
    pub fn adopt_key(&self, key: &std::path::Path) -> Result<(), DriverError> {
        let bytes = std::fs::read(key)
            .map_err(|e| DriverError::io(format!("read the SSH key {}", key.display()), e))?;
        write_private(&self.target().key, &bytes)
    }

    /// Logs in once and pins the host's key in the machine: the key must
    /// match where one of `consult` (read only) has the host; a host none
    /// of them has is refused unless `accept_new` (trust on first use).
    pub async fn pin_host_key(
        &self,
        consult: Vec<PathBuf>,
        accept_new: bool,
    ) -> Result<(), DriverError> {
        Session::connect(
            &self.target(),
            HostKeys::Adopt {
                consult,
                accept_new,
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| DriverError::Remote(e.to_string()))
    }

    /// Makes the CA (unless there is one) and the server and client
    /// certificates for the host's address.
    pub fn make_certs(&self, new_ca: bool) -> Result<(), DriverError> {
        let certs = self.certs();
        let name = &self.context.name;
        if new_ca || !certs.ca_key().is_file() {
            certs::make_ca(&certs, name).map_err(|e| DriverError::Remote(e.to_string()))?;
        }
        certs::make_leaves(&certs, name, std::slice::from_ref(&self.host))
            .map_err(|e| DriverError::Remote(e.to_string()))
    }

    /// Provisions the host (or parts of it, for `upgrade` and
    /// `regenerate-certs`).
    pub async fn provision(&self, what: Provision) -> Result<(), DriverError> {
        let session = self.session().await?;
        match what {
            Provision::Full => {
                if !self.certs().client().is_file() {
                    self.make_certs(false)?;
                }
                provision::provision(&session, &self.certs(), &self.engine, &self.host)
                    .await
                    .map_err(provision_error)?;
            }
            Provision::Upgrade => {
                let facts = provision::facts(&session).await.map_err(provision_error)?;
                provision::stop_agent(&session, &facts, false)
                    .await
                    .map_err(provision_error)?;
                provision::upload_agent(&session, &facts)
                    .await
                    .map_err(provision_error)?;
                provision::install_service(&session, &facts, &self.engine)
                    .await
                    .map_err(provision_error)?;
                self.start_on(&session, &facts).await?;
            }
            Provision::RegenerateCerts { new_ca } => {
                self.make_certs(new_ca)?;
                let facts = provision::facts(&session).await.map_err(provision_error)?;
                provision::stop_agent(&session, &facts, false)
                    .await
                    .map_err(provision_error)?;
                provision::upload_certs(&session, &facts, &self.certs())
                    .await
                    .map_err(provision_error)?;
                self.start_on(&session, &facts).await?;
            }
        }
        Ok(())
    }

    async fn start_on(
        &self,
        session: &Session,
        facts: &provision::HostFacts,
    ) -> Result<(), DriverError> {
        provision::start_agent(session, facts)
            .await
            .map_err(provision_error)?;
        provision::wait_for_docker(
            &self.certs(),
            &self.host,
            DOCKER_PORT,
            Duration::from_secs(60),
        )
        .await
        .map_err(provision_error)
    }

    /// Starts the agent and waits for the Docker endpoint.
    pub async fn start(&self) -> Result<(), DriverError> {
        let session = self.session().await?;
        let facts = provision::facts(&session).await.map_err(provision_error)?;
        self.start_on(&session, &facts).await
    }

    /// Stops the agent (at once with `kill`).
    pub async fn stop(&self, kill: bool) -> Result<(), DriverError> {
        let session = self.session().await?;
        let facts = provision::facts(&session).await.map_err(provision_error)?;
        provision::stop_agent(&session, &facts, kill)
            .await
            .map_err(provision_error)
    }

    /// Removes what provisioning installed; a host that cannot be reached
    /// is left as it is (and said so in the log).
    pub async fn uninstall(&self) -> Result<(), DriverError> {
        if !self.context.dir.join("ssh_key").is_file() {
            return Ok(());
        }
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("leaving {} as it is: {e}", self.host);
                return Ok(());
            }
        };
        let facts = provision::facts(&session).await.map_err(provision_error)?;
        provision::uninstall(&session, &facts)
            .await
            .map_err(provision_error)
    }

    /// Running when the Docker endpoint answers; Stopped when the host
    /// answers SSH but not Docker; Error when it cannot be reached.
    pub async fn state(&self) -> Result<MachineState, DriverError> {
        let certs = self.certs();
        let ping = provision::ping_docker(&certs, &self.host, DOCKER_PORT);
        if let Ok(Ok(())) = tokio::time::timeout(STATE_TIMEOUT, ping).await {
            return Ok(MachineState::Running);
        }
        match self.session().await {
            Ok(session) => {
                let facts = provision::facts(&session).await.map_err(provision_error)?;
                match provision::agent_running(&session, &facts).await {
                    // The agent runs but its endpoint does not answer.
                    Ok(true) => Ok(MachineState::Error),
                    Ok(false) => Ok(MachineState::Stopped),
                    Err(e) => Err(provision_error(e)),
                }
            }
            Err(_) => Ok(MachineState::Error),
        }
    }

    /// Where the agent and Docker API are.
    pub fn endpoint(&self) -> Endpoint {
        let target = self.target();
        Endpoint {
            agent: Address::Ssh {
                destination: target.to_string(),
                socket: PathBuf::from(provision::agent_socket()),
            },
            docker: DockerEndpoint {
                url: format!("tcp://{}:{DOCKER_PORT}", bracketed(&self.host)),
                tls: true,
            },
            ssh: Some(target),
        }
    }

    /// A gRPC channel to the agent, through SSH.
    pub async fn agent_channel(&self) -> Result<tonic::transport::Channel, DriverError> {
        let session = Arc::new(self.session().await?);
        Ok(berth_proto::link::channel(SocketConnector::new(
            session,
            &provision::agent_socket(),
        )))
    }
}

/// An IPv6 address in brackets, for a URL.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Writes a private file (mode 0600) atomically.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), DriverError> {
    crate::write_atomic(path, bytes, true)
        .map_err(|e| DriverError::io(format!("write {}", path.display()), e))
}

/// The `generic` driver.
pub struct GenericDriver {
    config: GenericConfig,
    host: RemoteHost,
}

impl GenericDriver {
    /// The driver for the machine in `context`.
    pub fn new(config: GenericConfig, context: MachineContext) -> Self {
        let host = RemoteHost {
            host: config.ip_address.clone(),
            user: config.ssh_user.clone(),
            port: config.ssh_port,
            engine: config.engine.clone(),
            context,
        };
        GenericDriver { config, host }
    }
}

#[async_trait::async_trait]
impl Driver for GenericDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_create_check(&self) -> Result<(), DriverError> {
        if self.config.ip_address.is_empty() {
            return Err(DriverError::PreCreate(
                "the generic driver needs the host's address: --generic-ip-address".into(),
            ));
        }
        if self.config.ssh_user.is_empty() {
            return Err(DriverError::PreCreate("--generic-ssh-user is empty".into()));
        }
        if self.config.ssh_port == 0 {
            return Err(DriverError::PreCreate(
                "--generic-ssh-port must not be 0".into(),
            ));
        }
        if !self.config.ssh_key.is_file() {
            return Err(DriverError::PreCreate(format!(
                "the SSH key {} is not a file: give one with --generic-ssh-key",
                self.config.ssh_key.display()
            )));
        }
        if let Some(file) = &self.config.known_hosts {
            if !file.is_file() {
                return Err(DriverError::PreCreate(format!(
                    "--ssh-known-hosts {} is not a file",
                    file.display()
                )));
            }
        }
        self.config
            .engine
            .validate()
            .map_err(DriverError::PreCreate)?;
        Ok(())
    }

    async fn create(&self) -> Result<(), DriverError> {
        self.host.adopt_key(&self.config.ssh_key)?;
        // The host's key is looked up in the file given, else the user's
        // (never written there); what is accepted is pinned in the machine.
        let consult = self
            .config
            .known_hosts
            .clone()
            .or_else(crate::ssh::user_known_hosts)
            .into_iter()
            .collect();
        self.host
            .pin_host_key(consult, self.config.accept_new_host_key)
            .await?;
        self.host.make_certs(true)?;
        self.host.provision(Provision::Full).await
    }

    async fn start(&self) -> Result<(), DriverError> {
        self.host.start().await
    }

    async fn stop(&self) -> Result<(), DriverError> {
        self.host.stop(false).await
    }

    async fn kill(&self) -> Result<(), DriverError> {
        self.host.stop(true).await
    }

    async fn remove(&self) -> Result<(), DriverError> {
        self.host.uninstall().await
    }

    async fn state(&self) -> Result<MachineState, DriverError> {
        self.host.state().await
    }

    async fn ip(&self) -> Result<String, DriverError> {
        Ok(self.config.ip_address.clone())
    }

    fn endpoint(&self) -> Endpoint {
        self.host.endpoint()
    }

    async fn agent_channel(&self) -> Result<tonic::transport::Channel, DriverError> {
        self.host.agent_channel().await
    }

    async fn provision(&self, what: Provision) -> Result<(), DriverError> {
        self.host.provision(what).await
    }
}
