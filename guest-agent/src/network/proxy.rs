//! Published ports: a listener on the host's address and port for each
//! binding, relaying to the container's address and port. Done in user
//! space, as dockerd's userland proxy does, so that a port answers on the
//! host's loopback as well as from outside, and — in a VM — is a plain
//! listening socket that the machine's supervisor forwards to the user's
//! 127.0.0.1.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Bytes buffered per direction of a relayed TCP connection: large enough
/// that a bulk transfer costs few system calls.
const TCP_BUFFER: usize = 256 << 10;

/// How long a UDP peer may stay silent before its flow is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// The largest datagram relayed.
const UDP_MAX: usize = 65_535;

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Parses `tcp`/`udp` (`sctp` is not supported).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("unsupported port protocol {other:?} (tcp or udp)")),
        }
    }
}

/// A running published port; stops when dropped.
#[derive(Debug)]
pub struct Published {
    /// Where it listens (the port chosen if 0 was asked for).
    pub host: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `host` and relays to `target`.
pub async fn publish(
    protocol: Protocol,
    host: SocketAddr,
    target: SocketAddrV4,
) -> std::io::Result<Published> {
    match protocol {
        Protocol::Tcp => {
            let listener = TcpListener::bind(host).await?;
            let host = listener.local_addr()?;
            let task = tokio::spawn(serve_tcp(listener, target));
            Ok(Published { host, task })
        }
        Protocol::Udp => {
            let socket = UdpSocket::bind(host).await?;
            let host = socket.local_addr()?;
            let task = tokio::spawn(serve_udp(socket, target));
            Ok(Published { host, task })
        }
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddrV4) {
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("published port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            match TcpStream::connect(target).await {
                Ok(mut container) => {
                    let _ = container.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut container,
                        TCP_BUFFER,
                        TCP_BUFFER,
                    )
                    .await;
                }
                // Nothing listens in the container (yet): the client sees
                // its connection closed, as with dockerd's proxy.
                Err(e) => tracing::debug!(%target, "published port: {e}"),
            }
        });
    }
}

/// One socket per client address, connected to the container, so that
/// answers go back to the right client.
async fn serve_udp(socket: UdpSocket, target: SocketAddrV4) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0; UDP_MAX];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Ok(u) = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, u.clone());
                let (socket, flows, back) = (socket.clone(), flows.clone(), u.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; UDP_MAX];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, back.recv(&mut buf)).await
                    {
                        let _ = socket.send_to(&buf[..n], client).await;
                    }
                    flows
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&client);
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_tcp_and_udp() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(target) = backend.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            let (mut s, _) = backend.accept().await.unwrap();
            let mut b = [0; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let p = publish(Protocol::Tcp, "127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        let mut c = TcpStream::connect(p.host).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut b = [0; 5];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");

        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(target) = echo.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            let mut b = [0; 64];
            let (n, from) = echo.recv_from(&mut b).await.unwrap();
            echo.send_to(&b[..n], from).await.unwrap();
        });
        let p = publish(Protocol::Udp, "127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"ping", p.host).await.unwrap();
        let mut b = [0; 8];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"ping");
    }
}
