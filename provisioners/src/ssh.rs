//! SSH to a remote host (russh): key authentication, the host's key
//! checked against a known-hosts file, commands with their output and
//! exit status, uploads, interactive sessions, and channels to the
//! agent's unix socket (`direct-streamlocal`) that carry gRPC.
//!
//! A host key is trusted only if the known-hosts file has it. Trust on
//! first use is the caller's explicit choice ([`HostKeys::AcceptNew`]):
//! the key seen then is written to the file, and from then on a
//! different key is refused as a possible attack.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::Channel;
pub use russh::ChannelMsg;
use serde::{Deserialize, Serialize};

/// How long a TCP connection and the SSH handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The port SSH listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 22;

/// Where and as whom a host is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SshTarget {
    /// The host's address or name.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// The private key to log in with.
    pub key: PathBuf,
    /// The host keys trusted for this host.
    pub known_hosts: PathBuf,
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Which host keys are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeys {
    /// Only the key pinned in the target's known-hosts file.
    Known,
    /// A new machine's first connection: the key must match where one of
    /// `consult` (known-hosts files, read only) has the host; a host none
    /// of them has is refused, or accepted when `accept_new` says so.
    /// What is accepted is pinned in the target's own file.
    Adopt {
        /// Files to look the host up in.
        consult: Vec<PathBuf>,
        /// Trust a host none of them has (trust on first use).
        accept_new: bool,
    },
}

/// What went wrong over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host could not be reached.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// The host's key is not in the known-hosts file.
    #[error("the host key of {host} ({fingerprint}) is not known in {known_hosts}: add it (ssh-keyscan), or trust it on first use with --ssh-accept-new-host-key")]
    HostKeyUnknown {
        /// The host.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The file that was looked in.
        known_hosts: String,
    },
    /// The host's key differs from the one known for it.
    #[error("the host key of {host} ({fingerprint}) differs from the one in {known_hosts} line {line}: someone may be intercepting the connection, or the host was reinstalled; remove that line if you know why")]
    HostKeyChanged {
        /// The host.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The file.
        known_hosts: String,
        /// The line with the other key.
        line: usize,
    },
    /// The private key cannot be read.
    #[error("cannot use the SSH key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The host refused the key.
    #[error("{target} refused the key {key}")]
    AuthRefused {
        /// Who logged in where.
        target: String,
        /// The key offered.
        key: String,
    },
    /// The SSH session failed.
    #[error("SSH to {target}: {reason}")]
    Session {
        /// Where.
        target: String,
        /// What happened.
        reason: String,
    },
    /// A remote command failed.
    #[error("`{command}` on {target} exited with {code}: {stderr}")]
    Command {
        /// Where.
        target: String,
        /// The command.
        command: String,
        /// Its exit status.
        code: u32,
        /// What it said on stderr.
        stderr: String,
    },
}

/// What a remote command gave.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Its exit status (255 if the session ended without one).
    pub code: u32,
}

/// The client side of a session: checks the host key.
struct Checker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeys,
    refused: Arc<Mutex<Option<SshError>>>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            self.refuse(SshError::Session {
                target: self.host.clone(),
                reason: "the host offered a certificate; only plain host keys are checked".into(),
            });
            return Ok(false);
        };
        Ok(self.check(key))
    }
}

impl Checker {
    fn refuse(&self, e: SshError) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn check(&self, key: &PublicKey) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        let (consult, accept_new) = match &self.policy {
            HostKeys::Known => (vec![self.known_hosts.clone()], false),
            HostKeys::Adopt {
                consult,
                accept_new,
            } => (consult.clone(), *accept_new),
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        for file in &consult {
            match russh::keys::check_known_hosts_path(&self.host, self.port, key, file) {
                Ok(true) => return self.pin(key),
                Ok(false) => {}
                Err(russh::keys::Error::KeyChanged { line }) => {
                    self.refuse(SshError::HostKeyChanged {
                        host: self.host.clone(),
                        fingerprint,
                        known_hosts: file.display().to_string(),
                        line,
                    });
                    return false;
                }
                Err(e) => {
                    self.refuse(SshError::Session {
                        target: self.host.clone(),
                        reason: format!("cannot read {}: {e}", file.display()),
                    });
                    return false;
                }
            }
        }
        if accept_new {
            return self.pin(key);
        }
        let files: Vec<String> = consult.iter().map(|f| f.display().to_string()).collect();
        self.refuse(SshError::HostKeyUnknown {
            host: self.host.clone(),
            fingerprint,
            known_hosts: files.join(", "),
        });
        false
    }

    /// Keeps an accepted key in the target's own file (adopting a host).
    fn pin(&self, key: &PublicKey) -> bool {
        if self.policy == HostKeys::Known {
            return true;
        }
        let pinned =
            russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts);
        if matches!(pinned, Ok(true)) {
            return true;
        }
        match russh::keys::known_hosts::learn_known_hosts_path(
            &self.host,
            self.port,
            key,
            &self.known_hosts,
        ) {
            Ok(()) => true,
            Err(e) => {
                self.refuse(SshError::Session {
                    target: self.host.clone(),
                    reason: format!(
                        "cannot record its host key in {}: {e}",
                        self.known_hosts.display()
                    ),
                });
                false
            }
        }
    }
}

/// An authenticated SSH session.
pub struct Session {
    handle: Handle<Checker>,
    target: SshTarget,
    host_key: Option<PublicKey>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        s.to_owned()
    } else {
        quote(s)
    }
}

impl Session {
    /// Connects to `target` and logs in with its key.
    pub async fn connect(target: &SshTarget, policy: HostKeys) -> Result<Self, SshError> {
        let key = russh::keys::load_secret_key(&target.key, None).map_err(|e| SshError::Key {
            path: target.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let refused = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
            policy: policy.clone(),
            refused: refused.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        });
        let shown = target.to_string();
        let connect = client::connect(config, (target.host.as_str(), target.port), checker);
        let mut handle = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => {
                return Err(SshError::Unreachable {
                    target: shown,
                    reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                })
            }
            Ok(Err(e)) => {
                if let Some(refusal) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(refusal);
                }
                return Err(SshError::Unreachable {
                    target: shown,
                    reason: e.to_string(),
                });
            }
            Ok(Ok(handle)) => handle,
        };
        let session_error = |e: russh::Error| SshError::Session {
            target: target.to_string(),
            reason: e.to_string(),
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(session_error)?
            .flatten();
        let auth = handle
            .authenticate_publickey(
                target.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(session_error)?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                target: target.to_string(),
                key: target.key.display().to_string(),
            });
        }
        let host_key = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(Session {
            handle,
            target: target.clone(),
            host_key,
        })
    }

    /// The key the host showed (and that was accepted).
    pub fn host_key(&self) -> Option<PublicKey> {
        self.host_key.clone()
    }

    /// Where this session is.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn error(&self, e: impl std::fmt::Display) -> SshError {
        SshError::Session {
            target: self.target.to_string(),
            reason: e.to_string(),
        }
    }

    /// A new session channel.
    pub async fn channel(&self) -> Result<Channel<Msg>, SshError> {
        self.handle
            .channel_open_session()
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs `command` (a shell command line), `input` on its stdin.
    pub async fn run_with_input(&self, command: &str, input: &[u8]) -> Result<Output, SshError> {
        let mut channel = self.channel().await?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| self.error(e))?;
        if !input.is_empty() {
            channel.data(input).await.map_err(|e| self.error(e))?;
        }
        channel.eof().await.map_err(|e| self.error(e))?;
        let mut out = Output {
            code: 255,
            ..Default::default()
        };
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.code = exit_status,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Runs `command`.
    pub async fn run(&self, command: &str) -> Result<Output, SshError> {
        self.run_with_input(command, &[]).await
    }

    /// Runs `command`, which must succeed; its stdout.
    pub async fn run_ok(&self, command: &str) -> Result<String, SshError> {
        let out = self.run(command).await?;
        self.check(command, out)
    }

    fn check(&self, command: &str, out: Output) -> Result<String, SshError> {
        if out.code != 0 {
            return Err(SshError::Command {
                target: self.target.to_string(),
                command: command.to_owned(),
                code: out.code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `data` to `path` on the host with permissions `mode`: into
    /// a temporary file beside it, then renamed, so the file is never seen
    /// half-written. `sudo` prefixes the remote commands when it is set.
    pub async fn upload(
        &self,
        data: &[u8],
        path: &str,
        mode: u32,
        sudo: &str,
    ) -> Result<(), SshError> {
        let tmp = format!("{path}.berth-upload");
        let command = format!(
            "{sudo}sh -c {}",
            shell_quote(&format!(
                "umask 077 && cat > {t} && chmod {mode:o} {t} && mv -f {t} {p}",
                t = shell_quote(&tmp),
                p = shell_quote(path),
            ))
        );
        let out = self.run_with_input(&command, data).await?;
        self.check(&command, out).map(|_| ())
    }

    /// Opens a byte stream to the unix socket `path` on the host.
    pub async fn open_socket(&self, path: &str) -> Result<russh::ChannelStream<Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| self.error(format!("open {path}: {e}")))?;
        Ok(channel.into_stream())
    }
}

/// Opens streams to the agent's socket on a host, over one SSH session:
/// what carries gRPC to an agent there.
#[derive(Clone)]
pub struct SocketConnector {
    session: Arc<Session>,
    path: String,
}

impl SocketConnector {
    /// Streams to `path` through `session`.
    pub fn new(session: Arc<Session>, path: &str) -> Self {
        SocketConnector {
            session,
            path: path.to_owned(),
        }
    }
}

impl berth_proto::link::Connector for SocketConnector {
    type Stream = russh::ChannelStream<Msg>;

    fn connect(&self) -> berth_proto::link::ConnectFuture<Self::Stream> {
        let this = self.clone();
        Box::pin(async move {
            this.session
                .open_socket(&this.path)
                .await
                .map_err(std::io::Error::other)
        })
    }
}

/// The default key for a user who names none: `~/.ssh/id_ed25519`, then
/// `~/.ssh/id_rsa`, then `~/.ssh/id_ecdsa`.
pub fn default_key() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    ["id_ed25519", "id_rsa", "id_ecdsa"]
        .iter()
        .map(|n| Path::new(&home).join(".ssh").join(n))
        .find(|p| p.is_file())
}

/// The user's own known-hosts file.
pub fn user_known_hosts() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(Path::new(&home).join(".ssh").join("known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/usr/local/bin/x"), "/usr/local/bin/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
