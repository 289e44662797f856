//! The `ec2` driver: a cloud VM on Amazon EC2 (or an endpoint that speaks
//! its API), made the way docker-machine's `amazonec2` driver makes one —
//! a key pair (generated here, imported), a security group open on SSH and
//! the TLS Docker port, an instance from an AMI — then provisioned over
//! SSH as a `generic` host is. `stop`/`start`/`kill`/`rm` are EC2 calls;
//! `rm` deletes everything `create` made, and a failed `create` is undone
//! the same way, so no resource is left behind.
//!
//! What `create` made is written to `<machine dir>/ec2.json` as soon as it
//! exists (atomically), so every later command — and the undoing of a
//! failed create — knows it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::generic::{write_private, RemoteHost};
use super::{
    Driver, DriverError, Endpoint, EngineOptions, MachineContext, MachineState, Provision,
};
use crate::ec2::{params, Client, Credentials, Ec2Error};
use crate::provision::DOCKER_PORT;

/// The driver's name.
pub const NAME: &str = "ec2";
/// How long an instance may take to reach a state.
const STATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a new instance's SSH may take to answer, unless
/// `BERTH_EC2_SSH_TIMEOUT` (seconds) says otherwise.
const SSH_TIMEOUT: Duration = Duration::from_secs(300);

fn ssh_timeout() -> Duration {
    std::env::var("BERTH_EC2_SSH_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SSH_TIMEOUT, Duration::from_secs)
}
/// How often EC2 is asked while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The instance and how it is reached, as saved in `machine.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ec2Config {
    /// The region.
    pub region: String,
    /// Another endpoint than the region's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The access key (else from the environment or ~/.aws/credentials).
    #[serde(default)]
    pub access_key: Option<String>,
    /// The secret key.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// A session token.
    #[serde(default)]
    pub session_token: Option<String>,
    /// The AMI.
    #[serde(rename = "AMI")]
    pub ami: String,
    /// The instance type.
    pub instance_type: String,
    /// The user the AMI lets in.
    #[serde(rename = "SSHUser")]
    pub ssh_user: String,
    /// The subnet to launch in.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// The VPC of the security group.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// The instance's private address, when one is wanted.
    #[serde(default, rename = "PrivateIPAddress")]
    pub private_ip: Option<String>,
    /// Reach the instance at its private address (from inside its VPC).
    #[serde(default)]
    pub private_address_only: bool,
    /// A private key to use instead of a new one (its public key is
    /// imported as the instance's key pair).
    #[serde(default, rename = "SSHKeyPath")]
    pub ssh_key: Option<PathBuf>,
    /// How the engine is set up.
    #[serde(default)]
    pub engine: EngineOptions,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            region: std::env::var("AWS_DEFAULT_REGION")
                .or_else(|_| std::env::var("AWS_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
            endpoint: None,
            access_key: None,
            secret_key: None,
            session_token: None,
            ami: String::new(),
            instance_type: "t3.micro".into(),
            ssh_user: "ubuntu".into(),
            subnet_id: None,
            vpc_id: None,
            private_ip: None,
            private_address_only: false,
            ssh_key: None,
            engine: EngineOptions::default(),
        }
    }
}

/// What `create` made in the cloud, and where the instance is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ec2State {
    /// The imported key pair.
    pub key_name: Option<String>,
    /// The security group.
    pub group_id: Option<String>,
    /// The instance.
    pub instance_id: Option<String>,
    /// The address the instance was last reached at.
    pub address: Option<String>,
}

/// The `ec2` driver.
pub struct Ec2Driver {
    config: Ec2Config,
    context: MachineContext,
}

fn cloud(e: Ec2Error) -> DriverError {
    DriverError::Remote(e.to_string())
}

/// Calls `attempt` until it succeeds or `timeout` has passed (then its
/// last error): for an instance whose SSH is still coming up.
async fn retry<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, DriverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DriverError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// A short random suffix for cloud names, so a name reused after an `rm`
/// whose cloud side failed never collides.
fn suffix() -> String {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new ed25519 key: the private key in OpenSSH form, the public key line.
fn new_key() -> Result<(String, String), DriverError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| DriverError::Remote("no randomness for a new SSH key".into()))?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = russh::keys::PrivateKey::from(pair);
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| DriverError::Remote(format!("encode the SSH key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| DriverError::Remote(format!("encode the SSH key: {e}")))?;
    Ok((private.to_string(), public))
}

/// A key the user has: its private key as it is, its public key line.
fn existing_key(path: &std::path::Path) -> Result<(String, String), DriverError> {
    let private = std::fs::read_to_string(path)
        .map_err(|e| DriverError::io(format!("read the SSH key {}", path.display()), e))?;
    let key = russh::keys::decode_secret_key(&private, None)
        .map_err(|e| DriverError::Remote(format!("the SSH key {}: {e}", path.display())))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| DriverError::Remote(format!("encode the SSH key: {e}")))?;
    Ok((private, public))
}

impl Ec2Driver {
    /// The driver for the machine in `context`.
    pub fn new(config: Ec2Config, context: MachineContext) -> Self {
        Ec2Driver { config, context }
    }

    fn state_path(&self) -> PathBuf {
        self.context.dir.join("ec2.json")
    }

    fn load(&self) -> Ec2State {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, state: &Ec2State) -> Result<(), DriverError> {
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| DriverError::Remote(format!("encode ec2.json: {e}")))?;
        write_private(&self.state_path(), &json)
    }

    fn client(&self) -> Result<Client, DriverError> {
        let c = &self.config;
        let creds = Credentials::resolve(
            c.access_key.as_deref(),
            c.secret_key.as_deref(),
            c.session_token.as_deref(),
        )
        .map_err(cloud)?;
        Client::new(&c.region, c.endpoint.as_deref(), creds).map_err(cloud)
    }

    fn remote(&self, address: &str) -> RemoteHost {
        RemoteHost {
            host: address.to_owned(),
            user: self.config.ssh_user.clone(),
            port: crate::ssh::DEFAULT_PORT,
            engine: self.config.engine.clone(),
            context: self.context.clone(),
        }
    }

    fn host(&self) -> RemoteHost {
        self.remote(&self.load().address.unwrap_or_default())
    }

    /// The instance's state name and its address (public unless only the
    /// private one is to be used, or there is no public one).
    async fn describe(
        &self,
        client: &Client,
        id: &str,
    ) -> Result<(String, Option<String>), DriverError> {
        let answer = client
            .call("DescribeInstances", &params(&[("InstanceId.1", id)]))
            .await
            .map_err(cloud)?;
        let state = answer
            .within("instanceState", "name")
            .ok_or_else(|| DriverError::Remote(format!("EC2 does not know instance {id}")))?;
        let public = answer.first("ipAddress");
        let private = answer.first("privateIpAddress");
        let address = if self.config.private_address_only {
            private
        } else {
            public.or(private)
        };
        Ok((state, address))
    }

    async fn wait_for(
        &self,
        client: &Client,
        id: &str,
        wanted: &str,
    ) -> Result<Option<String>, DriverError> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let (state, address) = self.describe(client, id).await?;
            if state == wanted {
                return Ok(address);
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Remote(format!(
                    "instance {id} is {state}, not {wanted}, after {}s",
                    STATE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes the key pair, the security group and the instance, each
    /// recorded as soon as it exists.
    async fn make_resources(&self, client: &Client) -> Result<String, DriverError> {
        let name = &self.context.name;
        let tag = format!("berth-{name}-{}", suffix());
        let mut state = self.load();

        let (private, public) = match &self.config.ssh_key {
            Some(path) => existing_key(path)?,
            None => new_key()?,
        };
        write_private(&self.context.dir.join("ssh_key"), private.as_bytes())?;
        use base64::Engine as _;
        let material = base64::engine::general_purpose::STANDARD.encode(public.as_bytes());
        client
            .call(
                "ImportKeyPair",
                &params(&[("KeyName", &tag), ("PublicKeyMaterial", &material)]),
            )
            .await
            .map_err(cloud)?;
        state.key_name = Some(tag.clone());
        self.save(&state)?;

        let mut group = params(&[
            ("GroupName", &tag),
            (
                "GroupDescription",
                &format!("berth machine {name}: SSH and the Docker TLS port"),
            ),
        ]);
        if let Some(vpc) = &self.config.vpc_id {
            group.push(("VpcId".into(), vpc.clone()));
        }
        let answer = client
            .call("CreateSecurityGroup", &group)
            .await
            .map_err(cloud)?;
        let group_id = answer
            .first("groupId")
            .ok_or_else(|| DriverError::Remote("CreateSecurityGroup gave no groupId".into()))?;
        state.group_id = Some(group_id.clone());
        self.save(&state)?;
        let mut ingress = params(&[("GroupId", &group_id)]);
        for (i, port) in [22u16, DOCKER_PORT].iter().enumerate() {
            let p = format!("IpPermissions.{}", i + 1);
            ingress.extend(params(&[
                (&format!("{p}.IpProtocol"), "tcp"),
                (&format!("{p}.FromPort"), &port.to_string()),
                (&format!("{p}.ToPort"), &port.to_string()),
                (&format!("{p}.IpRanges.1.CidrIp"), "0.0.0.0/0"),
            ]));
        }
        client
            .call("AuthorizeSecurityGroupIngress", &ingress)
            .await
            .map_err(cloud)?;

        let mut run = params(&[
            ("ImageId", &self.config.ami),
            ("InstanceType", &self.config.instance_type),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("KeyName", &tag),
            ("SecurityGroupId.1", &group_id),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", name),
            ("TagSpecification.1.Tag.2.Key", "berth-machine"),
            ("TagSpecification.1.Tag.2.Value", &tag),
        ]);
        if let Some(subnet) = &self.config.subnet_id {
            run.push(("SubnetId".into(), subnet.clone()));
        }
        if let Some(ip) = &self.config.private_ip {
            run.push(("PrivateIpAddress".into(), ip.clone()));
        }
        let answer = client.call("RunInstances", &run).await.map_err(cloud)?;
        let instance = answer
            .within("instancesSet", "instanceId")
            .ok_or_else(|| DriverError::Remote("RunInstances gave no instanceId".into()))?;
        state.instance_id = Some(instance.clone());
        self.save(&state)?;
        let address = self.wait_for(client, &instance, "running").await?.ok_or_else(|| {
            DriverError::Remote(format!(
                "instance {instance} has no address to reach it at (give a subnet with public addresses, or --amazonec2-private-address-only from inside the VPC)"
            ))
        })?;
        state.address = Some(address.clone());
        self.save(&state)?;
        Ok(address)
    }

    /// Waits until the instance's SSH lets us in, then pins its key: a
    /// new instance's host key is trusted on first use (an address EC2
    /// hands out again must not match an old entry of the user's file).
    async fn adopt(&self, host: &RemoteHost) -> Result<(), DriverError> {
        retry(ssh_timeout(), async || {
            host.pin_host_key(Vec::new(), true).await
        })
        .await
    }
}

#[async_trait::async_trait]
impl Driver for Ec2Driver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_create_check(&self) -> Result<(), DriverError> {
        if let Some(key) = &self.config.ssh_key {
            existing_key(key).map_err(|e| DriverError::PreCreate(e.to_string()))?;
        }
        if self.config.ami.is_empty() {
            return Err(DriverError::PreCreate(
                "the ec2 driver needs an AMI: --amazonec2-ami".into(),
            ));
        }
        self.config
            .engine
            .validate()
            .map_err(DriverError::PreCreate)?;
        let c = &self.config;
        Credentials::resolve(
            c.access_key.as_deref(),
            c.secret_key.as_deref(),
            c.session_token.as_deref(),
        )
        .map_err(|e| DriverError::PreCreate(e.to_string()))?;
        // The AMI must exist in the region before anything is made for it
        // (RunInstances would only say so after the key pair and group).
        let client = self.client()?;
        let answer = client
            .call("DescribeImages", &params(&[("ImageId.1", &c.ami)]))
            .await
            .map_err(|e| DriverError::PreCreate(e.to_string()))?;
        if answer.first("imageId").is_none() {
            return Err(DriverError::PreCreate(format!(
                "the AMI {} is not in region {} (give an AMI of this region with --amazonec2-ami)",
                c.ami, c.region
            )));
        }
        Ok(())
    }

    async fn create(&self) -> Result<(), DriverError> {
        let client = self.client()?;
        let address = self.make_resources(&client).await?;
        let host = self.remote(&address);
        self.adopt(&host).await?;
        host.make_certs(true)?;
        host.provision(Provision::Full).await
    }

    async fn start(&self) -> Result<(), DriverError> {
        let client = self.client()?;
        let mut state = self.load();
        let id = state
            .instance_id
            .clone()
            .ok_or_else(|| DriverError::Remote("the machine has no instance".into()))?;
        client
            .call("StartInstances", &params(&[("InstanceId.1", &id)]))
            .await
            .map_err(cloud)?;
        let address = self
            .wait_for(&client, &id, "running")
            .await?
            .ok_or_else(|| {
                DriverError::Remote(format!("instance {id} has no address after starting"))
            })?;
        let moved = state.address.as_deref() != Some(address.as_str());
        state.address = Some(address.clone());
        self.save(&state)?;
        let host = self.remote(&address);
        if moved {
            // A new public address: new server certificates name it.
            self.adopt(&host).await?;
            return host
                .provision(Provision::RegenerateCerts { new_ca: false })
                .await;
        }
        retry(ssh_timeout(), || host.start()).await
    }

    async fn stop(&self) -> Result<(), DriverError> {
        let client = self.client()?;
        let Some(id) = self.load().instance_id else {
            return Ok(());
        };
        client
            .call("StopInstances", &params(&[("InstanceId.1", &id)]))
            .await
            .map_err(cloud)?;
        self.wait_for(&client, &id, "stopped").await.map(|_| ())
    }

    async fn kill(&self) -> Result<(), DriverError> {
        let client = self.client()?;
        let Some(id) = self.load().instance_id else {
            return Ok(());
        };
        client
            .call(
                "StopInstances",
                &params(&[("InstanceId.1", &id), ("Force", "true")]),
            )
            .await
            .map_err(cloud)?;
        self.wait_for(&client, &id, "stopped").await.map(|_| ())
    }

    async fn remove(&self) -> Result<(), DriverError> {
        let mut state = self.load();
        if state.key_name.is_none() && state.group_id.is_none() && state.instance_id.is_none() {
            return Ok(());
        }
        let client = self.client()?;
        if let Some(id) = state.instance_id.clone() {
            match client
                .call("TerminateInstances", &params(&[("InstanceId.1", &id)]))
                .await
            {
                Ok(_) => {
                    self.wait_for(&client, &id, "terminated").await?;
                }
                Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")) => {}
                Err(e) => return Err(cloud(e)),
            }
            state.instance_id = None;
            self.save(&state)?;
        }
        if let Some(group) = state.group_id.clone() {
            // Refused while a terminating instance still holds it.
            let deadline = Instant::now() + STATE_TIMEOUT;
            loop {
                match client
                    .call("DeleteSecurityGroup", &params(&[("GroupId", &group)]))
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidGroup")) => break,
                    Err(e)
                        if e.code() == Some("DependencyViolation") && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => return Err(cloud(e)),
                }
            }
            state.group_id = None;
            self.save(&state)?;
        }
        if let Some(key) = state.key_name.clone() {
            client
                .call("DeleteKeyPair", &params(&[("KeyName", &key)]))
                .await
                .map_err(cloud)?;
            state.key_name = None;
            self.save(&state)?;
        }
        Ok(())
    }

    async fn state(&self) -> Result<MachineState, DriverError> {
        let Some(id) = self.load().instance_id else {
            return Ok(MachineState::Error);
        };
        let client = self.client()?;
        let (state, _) = self.describe(&client, &id).await?;
        Ok(match state.as_str() {
            "pending" => MachineState::Starting,
            "running" => self.host().state().await?,
            "stopping" | "shutting-down" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            _ => MachineState::Error,
        })
    }

    async fn ip(&self) -> Result<String, DriverError> {
        self.load()
            .address
            .ok_or_else(|| DriverError::Remote("the instance has no address yet".into()))
    }

    fn endpoint(&self) -> Endpoint {
        self.host().endpoint()
    }

    async fn agent_channel(&self) -> Result<tonic::transport::Channel, DriverError> {
        self.host().agent_channel().await
    }

    async fn provision(&self, what: Provision) -> Result<(), DriverError> {
        self.host().provision(what).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_openssh_ed25519() {
        let (private, public) = new_key().unwrap();
        assert!(
            private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{private}"
        );
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert_ne!(new_key().unwrap().1, public);
    }
}
