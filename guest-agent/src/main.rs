//! The `berth-agent` binary: parses the command line and hands over to the
//! library. See the crate docs of `berth_agent` for what each layer owns.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_proto::link::Address;
use clap::{Args, Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// The Berth agent: the container engine on a Berth host.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = SERVE_ABOUT)]
    Serve(Box<ServeArgs>),
    /// Removes what the agent of `--root` made on this host outside it:
    /// its containers (processes, mounts) and its networks (bridges, NAT
    /// rules). For a host done with the machine; no agent may serve the
    /// root meanwhile.
    Purge {
        /// The agent's storage root.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
    },
    /// PID 1 of Berth's guest VM: sets the system up and runs `serve`.
    Init,
    /// A container's shim (started by the engine; not for direct use).
    #[command(hide = true)]
    Shim(berth_agent::engine::shim::ShimArgs),
    /// Runs one exec for the engine (internal).
    #[command(hide = true)]
    ExecShim(berth_agent::engine::exec::ExecShimArgs),
    /// The OCI runtime: runc's verbs over a bundle.
    Runtime(Box<berth_agent::runtime::cli::RuntimeArgs>),
    /// The image store: pull, list, inspect, remove, gc.
    Image(Box<berth_agent::image::cli::ImageArgs>),
}

/// What `berth-agent serve` does, as both parsers of it say.
const SERVE_ABOUT: &str = "Serve the agent's API until SIGTERM or SIGINT";

// `berth-agent serve` on its own, parsed without building every other
// subcommand's parser: the guest's init starts it at every boot, and under
// TCG building them all takes the guest about 25 ms. (Its help is the
// subcommand's, so its doc is not a doc comment.)
#[derive(Debug, Parser)]
#[command(name = "berth-agent", bin_name = "berth-agent serve", about = SERVE_ABOUT)]
struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
}

/// `serve`'s options.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory holding the agent's state; one agent per root.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Where to listen, e.g. unix:/run/berth/agent.sock.
    #[arg(long, value_name = "ADDRESS")]
    listen: Address,
    /// Where to serve the Docker Engine API (a unix socket path).
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
    /// A registry (host:port) to reach over plain HTTP (repeatable).
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// A mirror of Docker Hub to pull through, as a URL or host:port
    /// (repeatable).
    #[arg(long, value_name = "URL")]
    registry_mirror: Vec<String>,
    /// The default network's subnet (CIDR); by default the first of
    /// 172.17–31.0.0/16 that no route of this host uses.
    #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
    bridge_subnet: Option<berth_agent::network::ipam::Subnet>,
    /// A label of this engine, KEY=VALUE, as `docker info` shows it
    /// (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<String>,
    /// Also serve the Docker API on this TCP address, with mutual TLS
    /// (needs --tls-ca, --tls-cert and --tls-key).
    #[arg(long, value_name = "IP:PORT", requires_all = ["tls_ca", "tls_cert", "tls_key"], requires = "docker_socket")]
    docker_tcp: Option<std::net::SocketAddr>,
    /// The CA that signs the clients' certificates (PEM).
    #[arg(long, value_name = "FILE", requires = "docker_tcp")]
    tls_ca: Option<PathBuf>,
    /// The server's certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "docker_tcp")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "docker_tcp")]
    tls_key: Option<PathBuf>,
    /// Also serve the gRPC API on this virtio-serial port (a VM's link).
    #[arg(long, value_name = "DEVICE")]
    link_port: Option<PathBuf>,
    /// Also serve the gRPC API on the virtio-serial port of this name,
    /// looked up once the link's devices exist (after --wait-for-root's
    /// first word).
    #[arg(long, value_name = "NAME", conflicts_with = "link_port")]
    link_port_name: Option<String>,
    /// Also serve the gRPC API on this vsock port (a VM's link).
    #[arg(long, value_name = "PORT")]
    vsock_port: Option<u32>,
    /// Make `Shutdown` power the machine off (when PID 1 is
    /// `berth-agent init`) instead of stopping this agent.
    #[arg(long)]
    power_off_on_shutdown: bool,
    /// A pipe from the guest's init: serve the link once it says the
    /// link's devices exist, and the root once it says that is mounted
    /// (internal).
    #[arg(long, value_name = "FD", hide = true)]
    wait_for_root: Option<std::os::fd::RawFd>,
}

/// Descriptor `fd`, which this process inherited open, taken over (it is
/// closed when dropped).
fn take_inherited_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(format!("{fd} is a standard stream"));
    }
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is open (F_GETFD succeeded) and was handed to this process
    // to own: nothing else in it refers to that descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A `KEY=VALUE` label with a non-empty key.
fn parse_label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn init_logging() {
    // BERTH_LOG takes tracing's filter syntax, e.g. "debug" or "berth_agent=trace".
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Plain text for PID 1 and where NO_COLOR is set (the guest's
        // console, which error messages quote).
        .with_ansi(
            std::process::id() != 1
                && std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
}

/// Completes on the first SIGTERM or SIGINT. The handlers are in place
/// once this returns (call it inside the runtime, before serving): a
/// signal that comes while the agent starts would otherwise end it
/// without its cleanup.
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without handlers the default action (exit) still applies.
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
    }
}

/// Runs `job` to completion on a multi-threaded async runtime.
fn run_async<E: std::fmt::Display>(
    job: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT.
fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        root,
        listen,
        docker_socket,
        insecure_registry,
        registry_mirror,
        bridge_subnet,
        label,
        docker_tcp,
        tls_ca,
        tls_cert,
        tls_key,
        link_port,
        link_port_name,
        vsock_port,
        power_off_on_shutdown,
        wait_for_root,
    } = args;
    let wait_for_root = match wait_for_root.map(take_inherited_fd).transpose() {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::error!("--wait-for-root: {e}");
            return ExitCode::FAILURE;
        }
    };
    let docker = docker_socket.map(|socket| berth_agent::daemon::DockerApi {
        socket,
        insecure_registries: insecure_registry,
        registry_mirrors: registry_mirror,
        bridge_subnet,
        labels: label,
        tcp: docker_tcp.zip(tls_ca.zip(tls_cert).zip(tls_key)).map(
            |(address, ((ca, cert), key))| {
                (
                    address,
                    berth_agent::api::docker::tls::TlsFiles { ca, cert, key },
                )
            },
        ),
    });
    let mut links = berth_agent::daemon::Links {
        port: link_port,
        vsock: vsock_port,
        power_off: power_off_on_shutdown,
    };
    run_async(async move {
        use berth_agent::daemon::{BootStage, BootStages, LinkServers};
        let stop = termination();
        let mut boot = wait_for_root.map(BootStages::new).transpose()?;
        if let Some(boot) = &mut boot {
            boot.reached(BootStage::Link).await?;
        }
        if let Some(name) = link_port_name {
            links.port = berth_agent::link::find_port(&name);
            if links.port.is_none() {
                tracing::warn!(
                    "no virtio-serial port named {name}: the host cannot reach the agent"
                );
            }
        }
        // The host may connect while the root is readied; its calls wait.
        let links = LinkServers::start(&links)?;
        if let Some(boot) = &mut boot {
            boot.reached(BootStage::Root).await?;
        }
        berth_agent::daemon::serve(&root, &listen, docker, links, stop).await
    })
}

fn main() -> ExitCode {
    // The kernel starts /init with no arguments: as PID 1 this binary is
    // the guest's init, whatever its command line says.
    if std::process::id() == 1 {
        init_logging();
        berth_agent::init::main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        // Clap takes the first argument for the program's name.
        let serve_cli = ServeCli::parse_from(std::env::args_os().skip(1));
        init_logging();
        return serve(serve_cli.args);
    }
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Init => {
            tracing::error!("berth-agent init runs only as PID 1 of Berth's guest VM");
            ExitCode::FAILURE
        }
        Command::Serve(args) => serve(*args),
        Command::Purge { root } => run_async(berth_agent::daemon::purge(&root)),
        Command::Shim(args) => {
            // Like the runtime's create: re-executed from a sealed copy
            // when the container could reach the agent binary.
            let exposes = berth_agent::runtime::spec::Bundle::load(&args.bundle)
                .is_ok_and(|b| b.exposes_runtime());
            if exposes {
                if let Err(e) = berth_agent::runtime::sealed::ensure() {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::from(u8::try_from(berth_agent::engine::shim::main(args)).unwrap_or(1))
        }
        Command::ExecShim(args) => ExitCode::from(
            u8::try_from(berth_agent::engine::exec::shim_main(args)).unwrap_or(u8::MAX),
        ),
        // The runtime forks: it must stay single-threaded, so it never
        // starts the async runtime.
        Command::Runtime(args) => match berth_agent::runtime::cli::main(*args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Image(args) => match berth_agent::image::cli::main(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn parse_subnet(s: &str) -> Result<berth_agent::network::ipam::Subnet, String> {
    s.parse()
}
