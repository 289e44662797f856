//! Provisioning a remote Linux host over SSH, for every driver whose host
//! is reached that way (`generic`, the clouds): what the host is (kernel,
//! architecture), the `berth-agent` built for it uploaded, its TLS
//! certificates, the agent installed as a service (systemd where the host
//! runs it, else a supervised daemon), and the Docker endpoint checked to
//! answer over mutual TLS before provisioning counts as done.
//!
//! On the host:
//!
//! ```text
//! /usr/local/bin/berth-agent          the agent
//! /etc/berth-agent/                   ca.pem server.pem server-key.pem, run.sh
//! /var/lib/berth-agent/               the agent's state (images, containers)
//! /run/berth-agent/                   agent.sock docker.sock, supervisor.pid
//! /etc/systemd/system/berth-agent.service   where systemd runs the host
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::CertPaths;
use crate::driver::EngineOptions;
use crate::ssh::{shell_quote, Session, SshError};

/// The agent's program on the host.
pub const AGENT_BIN: &str = "/usr/local/bin/berth-agent";
/// Its configuration: certificates and the supervisor script.
pub const CONFIG_DIR: &str = "/etc/berth-agent";
/// Its state.
pub const STATE_DIR: &str = "/var/lib/berth-agent";
/// Its sockets.
pub const RUN_DIR: &str = "/run/berth-agent";
/// Its log, where no systemd journal keeps it.
pub const LOG_FILE: &str = "/var/log/berth-agent.log";
/// The systemd unit.
pub const UNIT_FILE: &str = "/etc/systemd/system/berth-agent.service";
/// The Docker API's TLS port, as docker-machine uses it.
pub const DOCKER_PORT: u16 = 2376;
/// How long the agent may take to answer after it is (re)started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped agent may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's pid file on the host (the agent writes it in its root).
fn pid_file() -> String {
    format!("{STATE_DIR}/{}", berth_proto::layout::PID_FILE)
}

/// A shell test that holds while the agent's process is alive.
fn agent_alive() -> String {
    let pid = pid_file();
    format!("[ -f {pid} ] && kill -0 $(cat {pid}) 2>/dev/null")
}

/// The agent's gRPC socket on the host.
pub fn agent_socket() -> String {
    format!("{RUN_DIR}/agent.sock")
}

/// What went wrong provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// SSH failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The host is not one the agent runs on.
    #[error("{host} runs {os} on {arch}; berth-agent runs on Linux on x86_64 and aarch64")]
    UnsupportedHost {
        /// The host.
        host: String,
        /// Its kernel (`uname -s`).
        os: String,
        /// Its machine (`uname -m`).
        arch: String,
    },
    /// No agent program was found for the host's architecture.
    #[error("no berth-agent for {arch} Linux: {hint}")]
    NoAgent {
        /// The architecture.
        arch: &'static str,
        /// Where it was looked for.
        hint: String,
    },
    /// The login user cannot act as root.
    #[error("{user} on {host} is not root and cannot use sudo without a password: log in as root or allow passwordless sudo")]
    NoRoot {
        /// The user.
        user: String,
        /// The host.
        host: String,
    },
    /// The certificates could not be made or read.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// The Docker endpoint did not answer in time.
    #[error("the Docker endpoint {endpoint} did not answer within {seconds}s: {reason}")]
    NotAnswering {
        /// `host:2376`.
        endpoint: String,
        /// The time waited.
        seconds: u64,
        /// The last failure.
        reason: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The architectures the agent is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 / amd64.
    X86_64,
    /// aarch64 / arm64.
    Aarch64,
}

impl Arch {
    /// From `uname -m`.
    pub fn from_uname(machine: &str) -> Option<Self> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" | "armv8l" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The name used in paths and variables.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The variable that names the agent for this architecture.
    pub fn env_var(self) -> &'static str {
        match self {
            Arch::X86_64 => "BERTH_AGENT_X86_64",
            Arch::Aarch64 => "BERTH_AGENT_AARCH64",
        }
    }
}

/// The agent program for `arch` Linux: `$BERTH_AGENT_<ARCH>`, then
/// `berth-agent-<arch>-linux` next to `berth`, then — when this machine is
/// Linux on the same architecture — the agent the native driver runs.
pub fn agent_for(arch: Arch) -> Result<PathBuf, ProvisionError> {
    if let Some(path) = std::env::var_os(arch.env_var()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ProvisionError::NoAgent {
                arch: arch.name(),
                hint: format!("{}={} is not a file", arch.env_var(), path.display()),
            })
        };
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .map(|d| d.join(format!("berth-agent-{}-linux", arch.name())))
        })
        .filter(|p| p.is_file());
    if let Some(path) = sibling {
        return Ok(path);
    }
    if cfg!(target_os = "linux") && std::env::consts::ARCH == arch.name() {
        if let Ok(path) = crate::driver::native::find_agent() {
            return Ok(path);
        }
    }
    Err(ProvisionError::NoAgent {
        arch: arch.name(),
        hint: format!(
            "put berth-agent-{}-linux next to berth or set {}",
            arch.name(),
            arch.env_var()
        ),
    })
}

/// What the host is.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Its architecture.
    pub arch: Arch,
    /// `sudo -n ` when the login user is not root, else empty.
    pub sudo: &'static str,
    /// Whether systemd runs the host.
    pub systemd: bool,
}

/// Finds out what the host is, and whether the login user can act as root.
pub async fn facts(session: &Session) -> Result<HostFacts, ProvisionError> {
    let out = session
        .run_ok("uname -s; uname -m; id -u; [ -d /run/systemd/system ] && command -v systemctl >/dev/null && echo systemd || echo none")
        .await?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let [os, machine, uid, init, ..] = lines.as_slice() else {
        return Err(SshError::Session {
            target: session.target().to_string(),
            reason: format!("unexpected answer to uname: {out:?}"),
        }
        .into());
    };
    let arch = match (*os, Arch::from_uname(machine)) {
        ("Linux", Some(arch)) => arch,
        _ => {
            return Err(ProvisionError::UnsupportedHost {
                host: session.target().host.clone(),
                os: (*os).to_owned(),
                arch: (*machine).to_owned(),
            })
        }
    };
    let sudo = if *uid == "0" {
        ""
    } else {
        if session.run("sudo -n true").await?.code != 0 {
            return Err(ProvisionError::NoRoot {
                user: session.target().user.clone(),
                host: session.target().host.clone(),
            });
        }
        "sudo -n "
    };
    Ok(HostFacts {
        arch,
        sudo,
        systemd: *init == "systemd",
    })
}

/// The agent's `serve` command line and environment on the host.
fn serve_command(engine: &EngineOptions) -> (Vec<String>, Vec<(String, String)>) {
    let mut argv: Vec<String> = [
        AGENT_BIN,
        "serve",
        "--root",
        STATE_DIR,
        "--listen",
        &format!("unix:{}", agent_socket()),
        "--docker-socket",
        &format!("{RUN_DIR}/docker.sock"),
        "--docker-tcp",
        &format!("0.0.0.0:{DOCKER_PORT}"),
        "--tls-ca",
        &format!("{CONFIG_DIR}/ca.pem"),
        "--tls-cert",
        &format!("{CONFIG_DIR}/server.pem"),
        "--tls-key",
        &format!("{CONFIG_DIR}/server-key.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (args, env) = engine.serve_args();
    argv.extend(args);
    (argv, env)
}

/// The supervisor of a host without systemd: restarts the agent when it
/// exits, until told to stop (by the stop file and SIGTERM).
fn supervisor_script(engine: &EngineOptions) -> String {
    let (argv, env) = serve_command(engine);
    let command: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {}={}\n", k, shell_quote(v)))
        .collect();
    format!(
        r#"#!/bin/sh
# Keeps berth-agent running on a host without systemd (written by berth).
STOP={RUN_DIR}/stopping
{exports}echo $$ > {RUN_DIR}/supervisor.pid
trap 'touch "$STOP"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
while [ ! -e "$STOP" ]; do
  {command} >>{LOG_FILE} 2>&1 &
  child=$!
  wait "$child"
  wait "$child" 2>/dev/null
  [ -e "$STOP" ] || sleep 1
done
rm -f {RUN_DIR}/supervisor.pid
"#,
        command = command.join(" ")
    )
}

fn unit_file(engine: &EngineOptions) -> String {
    let (argv, env) = serve_command(engine);
    let environment: String = env
        .iter()
        .map(|(k, v)| format!("Environment={}\n", shell_quote(&format!("{k}={v}"))))
        .collect();
    format!(
        "[Unit]\nDescription=berth-agent, the container engine (installed by berth)\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\n{environment}ExecStartPre=/bin/mkdir -p {RUN_DIR}\nExecStart={}\nKillMode=process\nRestart=always\nRestartSec=1\nLimitNOFILE=1048576\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        argv.join(" ")
    )
}

/// Starts the agent (its service, or its supervisor).
pub async fn start_agent(session: &Session, facts: &HostFacts) -> Result<(), ProvisionError> {
    let sudo = facts.sudo;
    if facts.systemd {
        session
            .run_ok(&format!("{sudo}systemctl start berth-agent"))
            .await?;
    } else {
        let script = format!(
            "mkdir -p {RUN_DIR} && rm -f {RUN_DIR}/stopping && \
             if [ -f {RUN_DIR}/supervisor.pid ] && kill -0 $(cat {RUN_DIR}/supervisor.pid) 2>/dev/null; then exit 0; fi; \
             setsid {CONFIG_DIR}/run.sh </dev/null >/dev/null 2>&1 &"
        );
        session
            .run_ok(&format!("{sudo}sh -c {}", shell_quote(&script)))
            .await?;
    }
    Ok(())
}

/// Stops the agent gracefully and waits until it has gone.
pub async fn stop_agent(
    session: &Session,
    facts: &HostFacts,
    kill: bool,
) -> Result<(), ProvisionError> {
    let sudo = facts.sudo;
    let signal = if kill { "KILL" } else { "TERM" };
    if facts.systemd {
        let verb = if kill { "kill --signal=KILL" } else { "stop" };
        let _ = session
            .run(&format!("{sudo}systemctl {verb} berth-agent"))
            .await?;
        if kill {
            let _ = session
                .run(&format!("{sudo}systemctl stop berth-agent"))
                .await?;
        }
    } else {
        let script = format!(
            "touch {RUN_DIR}/stopping 2>/dev/null; \
             [ -f {RUN_DIR}/supervisor.pid ] && kill -TERM $(cat {RUN_DIR}/supervisor.pid) 2>/dev/null; \
             [ -f {pid} ] && kill -{signal} $(cat {pid}) 2>/dev/null; true",
            pid = pid_file()
        );
        session
            .run_ok(&format!("{sudo}sh -c {}", shell_quote(&script)))
            .await?;
    }
    // Gone when no process holds the agent's pid any more.
    let deadline = Instant::now() + STOP_TIMEOUT;
    let probe = format!(
        "{sudo}sh -c {}",
        shell_quote(&format!("{} && echo running || echo gone", agent_alive()))
    );
    while Instant::now() < deadline {
        if session.run_ok(&probe).await?.trim() == "gone" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(SshError::Session {
        target: session.target().to_string(),
        reason: format!(
            "berth-agent did not exit within {}s",
            STOP_TIMEOUT.as_secs()
        ),
    }
    .into())
}

/// Whether the agent runs on the host.
pub async fn agent_running(session: &Session, facts: &HostFacts) -> Result<bool, ProvisionError> {
    let script = format!("{} && echo running || echo stopped", agent_alive());
    let out = session
        .run_ok(&format!("{}sh -c {}", facts.sudo, shell_quote(&script)))
        .await?;
    Ok(out.trim() == "running")
}

fn read_local(path: &Path) -> Result<Vec<u8>, ProvisionError> {
    std::fs::read(path).map_err(|source| ProvisionError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Uploads the agent program for the host, replacing the one there.
pub async fn upload_agent(session: &Session, facts: &HostFacts) -> Result<(), ProvisionError> {
    let agent = agent_for(facts.arch)?;
    let bytes = read_local(&agent)?;
    session
        .run_ok(&format!("{}mkdir -p /usr/local/bin", facts.sudo))
        .await?;
    session.upload(&bytes, AGENT_BIN, 0o755, facts.sudo).await?;
    Ok(())
}

/// Uploads the server's certificates (the CA's, the server's and its key).
pub async fn upload_certs(
    session: &Session,
    facts: &HostFacts,
    certs: &CertPaths,
) -> Result<(), ProvisionError> {
    session
        .run_ok(&format!("{}mkdir -p {CONFIG_DIR}", facts.sudo))
        .await?;
    for (local, remote, mode) in [
        (certs.ca(), "ca.pem", 0o644),
        (certs.server(), "server.pem", 0o644),
        (certs.server_key(), "server-key.pem", 0o600),
    ] {
        let bytes = read_local(&local)?;
        session
            .upload(&bytes, &format!("{CONFIG_DIR}/{remote}"), mode, facts.sudo)
            .await?;
    }
    Ok(())
}

/// Installs the agent as a service (not started).
pub async fn install_service(
    session: &Session,
    facts: &HostFacts,
    engine: &EngineOptions,
) -> Result<(), ProvisionError> {
    let sudo = facts.sudo;
    session
        .run_ok(&format!(
            "{sudo}mkdir -p {CONFIG_DIR} {STATE_DIR} {RUN_DIR}"
        ))
        .await?;
    if facts.systemd {
        session
            .upload(unit_file(engine).as_bytes(), UNIT_FILE, 0o644, sudo)
            .await?;
        session
            .run_ok(&format!(
                "{sudo}systemctl daemon-reload && {sudo}systemctl enable berth-agent"
            ))
            .await?;
    } else {
        session
            .upload(
                supervisor_script(engine).as_bytes(),
                &format!("{CONFIG_DIR}/run.sh"),
                0o755,
                sudo,
            )
            .await?;
    }
    Ok(())
}

/// Removes what provisioning installed (the agent's state stays).
pub async fn uninstall(session: &Session, facts: &HostFacts) -> Result<(), ProvisionError> {
    let _ = stop_agent(session, facts, false).await;
    let sudo = facts.sudo;
    if facts.systemd {
        let _ = session
            .run(&format!("{sudo}systemctl disable berth-agent"))
            .await?;
    }
    session
        .run_ok(&format!(
            "{sudo}rm -rf {AGENT_BIN} {CONFIG_DIR} {RUN_DIR} {UNIT_FILE}"
        ))
        .await?;
    if facts.systemd {
        let _ = session
            .run(&format!("{sudo}systemctl daemon-reload"))
            .await?;
    }
    Ok(())
}

/// Everything: facts, agent, certificates, service, start, and the Docker
/// endpoint answering over TLS.
pub async fn provision(
    session: &Session,
    certs: &CertPaths,
    engine: &EngineOptions,
    docker_host: &str,
) -> Result<HostFacts, ProvisionError> {
    let facts = facts(session).await?;
    let _ = stop_agent(session, &facts, false).await;
    upload_agent(session, &facts).await?;
    upload_certs(session, &facts, certs).await?;
    install_service(session, &facts, engine).await?;
    start_agent(session, &facts).await?;
    wait_for_docker(certs, docker_host, DOCKER_PORT, READY_TIMEOUT).await?;
    Ok(facts)
}

/// Waits until the Docker API at `host:port` answers `/_ping` over mutual
/// TLS with the machine's client certificate.
pub async fn wait_for_docker(
    certs: &CertPaths,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), ProvisionError> {
    let deadline = Instant::now() + timeout;
    loop {
        let reason = match tokio::time::timeout(
            Duration::from_secs(5),
            ping_docker(certs, host, port),
        )
        .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer within 5s".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(ProvisionError::NotAnswering {
                endpoint: format!("{host}:{port}"),
                seconds: timeout.as_secs(),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The client side of the machine's mutual TLS.
pub fn client_tls(certs: &CertPaths) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(certs.ca())
        .map_err(|e| format!("{}: {e}", certs.ca().display()))?;
    roots.add(ca).map_err(|e| e.to_string())?;
    let chain = CertificateDer::pem_file_iter(certs.client())
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", certs.client().display()))?;
    let key = PrivateKeyDer::from_pem_file(certs.client_key())
        .map_err(|e| format!("{}: {e}", certs.client_key().display()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// One `GET /_ping` over mutual TLS.
pub async fn ping_docker(certs: &CertPaths, host: &str, port: u16) -> Result<(), String> {
    let config = client_tls(certs)?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(
        format!("GET /_ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "answered {:?}",
            text.lines().next().unwrap_or("nothing")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_from_uname() {
        assert_eq!(Arch::from_uname("x86_64\n"), Some(Arch::X86_64));
        assert_eq!(Arch::from_uname("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_uname("riscv64"), None);
    }

    #[test]
    fn the_supervisor_runs_the_agent_with_its_options() {
        let engine = EngineOptions {
            labels: vec!["tier=dev".into()],
            env: vec!["HTTP_PROXY=http://p:3128".into()],
            ..Default::default()
        };
        let script = supervisor_script(&engine);
        assert!(script.contains("--docker-tcp 0.0.0.0:2376"), "{script}");
        assert!(script.contains("--label tier=dev"), "{script}");
        assert!(
            script.contains("export HTTP_PROXY=http://p:3128"),
            "{script}"
        );
        let unit = unit_file(&engine);
        assert!(
            unit.contains("ExecStart=/usr/local/bin/berth-agent serve"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=HTTP_PROXY=http://p:3128"),
            "{unit}"
        );
    }
}
