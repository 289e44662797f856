//! The unix-socket connector: the link to a local agent.

use std::path::PathBuf;

use super::{ConnectFuture, Connector, LinkError};

/// Connects to an agent listening on a unix domain socket.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    #[cfg_attr(not(unix), allow(dead_code))]
    path: PathBuf,
}

impl UnixConnector {
    /// A connector for the socket at `path`; fails where the platform has
    /// no unix sockets that tokio can drive.
    pub fn new(path: PathBuf) -> Result<Self, LinkError> {
        if cfg!(unix) {
            Ok(UnixConnector { path })
        } else {
            Err(LinkError::Unsupported {
                kind: "unix socket",
            })
        }
    }
}

#[cfg(unix)]
impl Connector for UnixConnector {
    type Stream = tokio::net::UnixStream;

    fn connect(&self) -> ConnectFuture<Self::Stream> {
        let path = self.path.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(path).await })
    }
}

#[cfg(not(unix))]
impl Connector for UnixConnector {
    type Stream = tokio::io::DuplexStream;

    fn connect(&self) -> ConnectFuture<Self::Stream> {
        // Unreachable in practice: `new` refuses to build one here.
        Box::pin(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "unix sockets are not supported on this platform",
            ))
        })
    }
}
