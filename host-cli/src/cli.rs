//! The command line, as clap parses it.

use clap::{Args, Parser, Subcommand};

use crate::shell::Shell;

/// The name used when a command is given no machine name, as in docker-machine.
pub const DEFAULT_MACHINE: &str = "default";

/// Berth gives you a container host — this Linux machine, a local VM, or a
/// remote box — and points the stock docker CLI at it.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
pub struct Cli {
    /// Log what berth does to stderr (same as BERTH_LOG=debug).
    #[arg(long, short = 'D', global = true)]
    pub debug: bool,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Berth's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a machine.
    Create(Box<CreateArgs>),
    /// List machines.
    Ls(LsArgs),
    /// Print the state of a machine.
    Status(OneMachine),
    /// Start machines.
    Start(Machines),
    /// Stop machines gracefully.
    Stop(Machines),
    /// Restart machines.
    Restart(Machines),
    /// Stop machines at once, without letting them clean up.
    Kill(Machines),
    /// Remove machines and everything Berth made for them.
    Rm(RmArgs),
    /// Print a machine's record as JSON.
    Inspect(InspectArgs),
    /// Print the Docker endpoint of a machine.
    Url(OneMachine),
    /// Print the IP address of machines.
    Ip(Machines),
    /// Print the machine the docker CLI is pointed at (from DOCKER_HOST).
    Active(ActiveArgs),
    /// Print the commands that point docker at a machine.
    Env(EnvArgs),
    /// Print berth's version, or a machine's agent version.
    Version(VersionArgs),
    /// Print a shell completion script.
    Completion(CompletionArgs),
    /// Log into a machine, or run a command on it.
    Ssh(SshArgs),
    /// Provision a remote machine again: agent, certificates, service.
    Provision(Machines),
    /// Replace a remote machine's agent with this berth's, keeping its state.
    Upgrade(Machines),
    /// Make new TLS certificates for a remote machine and install them.
    RegenerateCerts(RegenerateCertsArgs),
    /// Copy files between this machine and a machine (NAME:PATH).
    Scp(ScpArgs),
    /// Hold a VM's link and serve its sockets (started by berth itself).
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
}

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The driver that provides the host.
    #[arg(long, short = 'd', default_value = "native", value_name = "DRIVER")]
    pub driver: String,
    /// Virtual CPUs of the VM (qemu; default 2).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory of the VM in MB (qemu; default 2048).
    #[arg(long, value_name = "MB")]
    pub memory: Option<u32>,
    /// Size of the VM's data disk in GB (qemu; default 20).
    #[arg(long, value_name = "GB")]
    pub disk_size: Option<u32>,
    /// The accelerator: kvm, hvf, whpx, tcg, or auto (qemu; default auto).
    #[arg(long, value_name = "ACCEL")]
    pub qemu_accel: Option<String>,
    /// Seconds a start may take until the agent answers (qemu; default 120).
    #[arg(long, value_name = "SECONDS")]
    pub qemu_boot_timeout: Option<u64>,
    /// A registry (host:port) the engine reaches over plain HTTP (repeatable).
    #[arg(long, value_name = "HOST")]
    pub engine_insecure_registry: Vec<String>,
    /// A Docker Hub mirror the engine pulls through, URL or host:port (repeatable).
    #[arg(long, value_name = "URL")]
    pub engine_registry_mirror: Vec<String>,
    /// A label for the engine, KEY=VALUE, shown by `docker info` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub engine_label: Vec<String>,
    /// An environment variable for the engine, KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub engine_env: Vec<String>,
    /// The host's IP address or name (generic).
    #[arg(long, value_name = "ADDRESS")]
    pub generic_ip_address: Option<String>,
    /// The user to log in as over SSH (generic; default root).
    #[arg(long, value_name = "USER")]
    pub generic_ssh_user: Option<String>,
    /// The private key to log in with (generic; default ~/.ssh/id_ed25519 or id_rsa).
    #[arg(long, value_name = "FILE")]
    pub generic_ssh_key: Option<std::path::PathBuf>,
    /// The host's SSH port (generic; default 22).
    #[arg(long, value_name = "PORT")]
    pub generic_ssh_port: Option<u16>,
    /// A known_hosts file to check the host's key against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub ssh_known_hosts: Option<std::path::PathBuf>,
    /// Trust the host's key on first use when no known_hosts file has it;
    /// it is pinned, and a different key is refused afterwards.
    #[arg(long)]
    pub ssh_accept_new_host_key: bool,
    /// AWS access key (ec2; default: AWS_ACCESS_KEY_ID or ~/.aws/credentials).
    #[arg(long, value_name = "KEY")]
    pub amazonec2_access_key: Option<String>,
    /// AWS secret key (ec2; default: AWS_SECRET_ACCESS_KEY or ~/.aws/credentials).
    #[arg(long, value_name = "KEY")]
    pub amazonec2_secret_key: Option<String>,
    /// AWS session token (ec2).
    #[arg(long, value_name = "TOKEN")]
    pub amazonec2_session_token: Option<String>,
    /// The region (ec2; default: AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub amazonec2_region: Option<String>,
    /// Another EC2 endpoint than the region's, e.g. https://ec2.example:443 (ec2).
    #[arg(long, value_name = "URL", env = "AWS_ENDPOINT_URL_EC2")]
    pub amazonec2_endpoint: Option<String>,
    /// The AMI to launch (ec2).
    #[arg(long, value_name = "AMI")]
    pub amazonec2_ami: Option<String>,
    /// The instance type (ec2; default t3.micro).
    #[arg(long, value_name = "TYPE")]
    pub amazonec2_instance_type: Option<String>,
    /// The user the AMI lets in over SSH (ec2; default ubuntu).
    #[arg(long, value_name = "USER")]
    pub amazonec2_ssh_user: Option<String>,
    /// The subnet to launch in (ec2).
    #[arg(long, value_name = "ID")]
    pub amazonec2_subnet_id: Option<String>,
    /// The VPC of the machine's security group (ec2).
    #[arg(long, value_name = "ID")]
    pub amazonec2_vpc_id: Option<String>,
    /// The instance's private address in its subnet (ec2).
    #[arg(long, value_name = "ADDRESS")]
    pub amazonec2_private_ip: Option<String>,
    /// Reach the instance at its private address only (ec2; from inside its VPC).
    #[arg(long)]
    pub amazonec2_private_address_only: bool,
    /// A private key for the instance instead of a new one (ec2).
    #[arg(long, value_name = "FILE")]
    pub amazonec2_ssh_keypath: Option<std::path::PathBuf>,
    /// The new machine's name.
    pub name: String,
}

/// Arguments of `regenerate-certs`.
#[derive(Debug, Args)]
pub struct RegenerateCertsArgs {
    /// Do not ask for confirmation.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Make a new CA too (clients must use the new certificates).
    #[arg(long)]
    pub client_certs: bool,
    /// The machines' names.
    pub names: Vec<String>,
}

/// Arguments of `ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The machine's name.
    pub name: Option<String>,
    /// The command to run (after `--`); none for an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Arguments of `scp`.
#[derive(Debug, Args)]
pub struct ScpArgs {
    /// Copy directories with all they hold.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// What to copy: a local path or NAME:PATH.
    pub source: String,
    /// Where to: a local path or NAME:PATH.
    pub destination: String,
}

/// Arguments of the hidden supervisor verb.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The machine's directory.
    pub dir: std::path::PathBuf,
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print only machine names.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Keep machines matching a condition: driver=, state=, name= (a regex),
    /// label=KEY=VALUE (an engine label).
    #[arg(long, value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Seconds to wait for each machine's answer.
    #[arg(long, short = 't', default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print each machine through a Go-style template, e.g. '{{.Name}} {{.State}}'.
    #[arg(long, short = 'f', conflicts_with = "json")]
    pub format: Option<String>,
    /// Print the list as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Commands that take at most one machine name (default: "default").
#[derive(Debug, Args)]
pub struct OneMachine {
    /// The machine's name.
    pub name: Option<String>,
}

/// Commands that take machine names (default: "default").
#[derive(Debug, Args)]
pub struct Machines {
    /// The machines' names.
    pub names: Vec<String>,
}

/// Arguments of `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove even running or damaged machines; implies -y.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y')]
    pub yes: bool,
    /// The machines' names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print through a Go-style template, e.g. '{{.DriverName}}'.
    #[arg(long, short = 'f')]
    pub format: Option<String>,
    /// The machine's name.
    pub name: Option<String>,
}

/// Arguments of `active`.
#[derive(Debug, Args)]
pub struct ActiveArgs {
    /// Seconds to wait for each machine's answer.
    #[arg(long, short = 't', default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Arguments of `env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The shell to write for (default: from $SHELL).
    #[arg(long, value_enum)]
    pub shell: Option<Shell>,
    /// Print the commands that unset the variables instead.
    #[arg(long, short = 'u')]
    pub unset: bool,
    /// The machine's name.
    pub name: Option<String>,
}

/// Arguments of `version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// A machine whose agent version to print.
    pub name: Option<String>,
}

/// Arguments of `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
