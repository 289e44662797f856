//! Links: how a byte stream to an agent is opened and carried.
//!
//! An [`Address`] names where an agent listens (`unix:/path/agent.sock`
//! today; vsock, virtio-serial and SSH channels are further variants). A
//! [`Connector`] opens one byte stream to it; [`channel`] turns any
//! connector into a lazily connecting tonic [`Channel`], so every transport
//! gets the same gRPC client.
//!
//! This module never interprets what flows over a stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

pub mod serial;
pub mod tunnel;
mod unix;

pub use serial::SerialConnector;
pub use unix::UnixConnector;

/// How long opening one stream to an agent may take before it counts as
/// unreachable. Local links connect in microseconds; a second covers a
/// loaded host without making `berth ls` hang on a dead one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of addresses and links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The address text is not of a known form.
    #[error("invalid agent address '{address}': {reason}")]
    InvalidAddress {
        /// The text as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// This platform cannot use this kind of link.
    #[error("{kind} links are not supported on this platform")]
    Unsupported {
        /// The kind of link, e.g. "unix socket".
        kind: &'static str,
    },
}

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A unix socket on a remote host, reached through SSH
    /// (`direct-streamlocal`): the machine's driver holds the session and
    /// its keys, so such an address is shown, never dialled from here.
    Ssh {
        /// `user@host:port`.
        destination: String,
        /// The socket's path on that host.
        socket: PathBuf,
    },
}

impl FromStr for Address {
    type Err = LinkError;

    /// Parses `unix:PATH` or `unix://PATH` (PATH absolute or relative).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| LinkError::InvalidAddress {
            address: s.to_owned(),
            reason,
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| invalid("expected SCHEME:TARGET, e.g. unix:/run/berth/agent.sock"))?;
        match scheme {
            "unix" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(invalid("the socket path is empty"));
                }
                Ok(Address::Unix(PathBuf::from(path)))
            }
            "ssh" => {
                let rest = rest
                    .strip_prefix("//")
                    .ok_or_else(|| invalid("expected ssh://USER@HOST:PORT/SOCKET"))?;
                let (destination, socket) = rest
                    .split_once('/')
                    .ok_or_else(|| invalid("expected ssh://USER@HOST:PORT/SOCKET"))?;
                if destination.is_empty() || socket.is_empty() {
                    return Err(invalid("expected ssh://USER@HOST:PORT/SOCKET"));
                }
                Ok(Address::Ssh {
                    destination: destination.to_owned(),
                    socket: PathBuf::from(format!("/{socket}")),
                })
            }
            _ => Err(invalid(
                "unknown scheme; the supported ones are 'unix' and 'ssh'",
            )),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Ssh {
                destination,
                socket,
            } => write!(f, "ssh://{destination}{}", socket.display()),
        }
    }
}

/// A boxed future returned by [`Connector::connect`].
pub type ConnectFuture<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// Opens byte streams to one agent. Cheap to clone: the channel calls
/// [`Connector::connect`] again whenever it needs a new connection.
pub trait Connector: Clone + Send + Sync + 'static {
    /// The stream this connector yields.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Opens one new stream to the agent.
    fn connect(&self) -> ConnectFuture<Self::Stream>;
}

/// Builds a gRPC channel that opens its connections through `connector`.
///
/// The channel connects lazily: the first call dials, and a broken
/// connection is re-dialled on the next call, which is what lets a client
/// outlive an agent restart.
pub fn channel<C: Connector>(connector: C) -> Channel {
    // The URI is required by tonic but never resolved: every connection
    // comes from the connector. Its authority becomes the HTTP/2 `:authority`.
    Endpoint::from_static("http://berth-agent")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(service(connector))
}

/// How often a held link is probed with HTTP/2 pings, and how long an
/// answer may take: a VM's agent that restarted (or a link that broke
/// without closing) is noticed within these, and the channel re-dials.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// As [`channel`], for a link held open for a long time (a supervisor's
/// link to a VM): idle connections are probed, and a dead one is replaced.
pub fn held_channel<C: Connector>(connector: C) -> Channel {
    Endpoint::from_static("http://berth-agent")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(service(connector))
}

fn service<C: Connector>(
    connector: C,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<C::Stream>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<C::Stream>>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        async move {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect())
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "connecting to the agent timed out")
                })??;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    })
}

/// Builds a gRPC channel to the agent at `address`.
pub fn connect(address: &Address) -> Result<Channel, LinkError> {
    match address {
        Address::Unix(path) => Ok(channel(UnixConnector::new(path.clone())?)),
        Address::Ssh { .. } => Err(LinkError::Unsupported {
            kind: "SSH (opened by the machine's driver)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse::<Address>().unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "unix:///run/a.sock".parse::<Address>().unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "unix:rel/a.sock".parse::<Address>().unwrap(),
            Address::Unix("rel/a.sock".into())
        );
    }

    #[test]
    fn display_round_trips() {
        let a = Address::Unix("/tmp/x y/agent.sock".into());
        assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        let s = Address::Ssh {
            destination: "root@192.0.2.7:22".into(),
            socket: "/run/berth-agent/agent.sock".into(),
        };
        assert_eq!(
            s.to_string(),
            "ssh://root@192.0.2.7:22/run/berth-agent/agent.sock"
        );
        assert_eq!(s.to_string().parse::<Address>().unwrap(), s);
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "unix:",
            "unix://",
            "/run/a.sock",
            "tcp:1.2.3.4:5",
            "ssh://host",
            "ssh:x/y",
        ] {
            let err = bad.parse::<Address>().unwrap_err();
            assert!(
                err.to_string().contains("invalid agent address"),
                "{bad}: {err}"
            );
        }
    }
}
