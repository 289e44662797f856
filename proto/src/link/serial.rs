//! The opening of a virtio-serial link: a handshake before HTTP/2.
//!
//! A virtio-serial port is not a connection. The host end (QEMU's chardev
//! socket) is usually connected long before the guest's agent opens its
//! end, and the guest kernel throws away whatever arrives on a port that
//! no process holds open. An HTTP/2 preface written at connect time is
//! therefore lost, or cut in half, and the connection hangs until a
//! keepalive gives up on it.
//!
//! So each opening starts with a handshake that survives lost bytes: the
//! host writes [`HELLO`] every [`HELLO_INTERVAL`] until it reads
//! [`READY`]; the guest skips everything up to a whole `HELLO`, answers
//! `READY` once, and skips the copies of `HELLO` still on their way before
//! the host's HTTP/2 preface. Bytes read past the handshake on either side
//! (the guest's HTTP/2 settings may share a read with `READY`) are handed
//! on in a [`Prefixed`] stream, so HTTP/2 sees the exact byte stream.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{ConnectFuture, Connector, LinkError, UnixConnector};

/// What the host writes until the guest answers.
pub const HELLO: &[u8; 16] = b"\x00berth-link-hi\x00\n";
/// The guest's answer; HTTP/2 follows it on both sides.
pub const READY: &[u8; 16] = b"\x00berth-link-ok\x00\n";

/// How often the host repeats [`HELLO`]: the delay between the guest
/// opening its port and the link being usable is at most this.
pub const HELLO_INTERVAL: Duration = Duration::from_millis(20);

/// How much is read at once during the handshake.
const READ_CHUNK: usize = 4096;

/// A stream whose first bytes were already read: they are returned
/// before anything else is read from the inner stream. Writes pass
/// through.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, to be read after `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the link closed during its handshake",
    )
}

/// Reads once into `seen`; an error at end of stream.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, seen: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0; READ_CHUNK];
    match stream.read(&mut chunk).await? {
        0 => Err(ended()),
        n => {
            seen.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Drops all of `seen` but a tail that could still begin `needle`.
fn keep_tail(seen: &mut Vec<u8>, needle: &[u8]) {
    let keep = (needle.len() - 1).min(seen.len());
    seen.drain(..seen.len() - keep);
}

/// The host's side: says [`HELLO`] until the guest answers, and returns
/// the stream ready for HTTP/2. Never returns while the guest is silent;
/// the caller bounds it with a timeout.
pub async fn host_handshake<S>(mut stream: S) -> io::Result<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen = Vec::new();
    loop {
        stream.write_all(HELLO).await?;
        stream.flush().await?;
        let deadline = tokio::time::Instant::now() + HELLO_INTERVAL;
        while let Ok(read) =
            tokio::time::timeout_at(deadline, read_more(&mut stream, &mut seen)).await
        {
            read?;
            if let Some(at) = find(&seen, READY) {
                let rest = seen.split_off(at + READY.len());
                return Ok(Prefixed::new(rest, stream));
            }
            // Anything before READY is left over from an earlier opening.
            keep_tail(&mut seen, READY);
        }
    }
}

/// The guest's side: waits for a whole [`HELLO`] (whatever came before
/// it was cut off by the port being closed), answers [`READY`], skips the
/// repeats the host sent meanwhile, and returns the stream ready for
/// HTTP/2. Returns an error if the host goes away first.
pub async fn guest_handshake<S>(mut stream: S) -> io::Result<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen = Vec::new();
    loop {
        read_more(&mut stream, &mut seen).await?;
        if let Some(at) = find(&seen, HELLO) {
            seen.drain(..at + HELLO.len());
            break;
        }
        keep_tail(&mut seen, HELLO);
    }
    stream.write_all(READY).await?;
    stream.flush().await?;
    // The host writes nothing but whole HELLOs until it has read READY,
    // then its HTTP/2 preface (which does not begin like HELLO).
    loop {
        if seen.starts_with(HELLO) {
            seen.drain(..HELLO.len());
        } else if !seen.is_empty() && !HELLO.starts_with(&seen) {
            return Ok(Prefixed::new(seen, stream));
        } else {
            read_more(&mut stream, &mut seen).await?;
        }
    }
}

/// Connects to a VM's virtio-serial port through the unix socket QEMU
/// serves for it, and performs the host's handshake on each connection.
#[derive(Debug, Clone)]
pub struct SerialConnector {
    socket: UnixConnector,
}

impl SerialConnector {
    /// A connector for the chardev socket at `path`.
    pub fn new(path: PathBuf) -> Result<Self, LinkError> {
        Ok(SerialConnector {
            socket: UnixConnector::new(path)?,
        })
    }
}

impl Connector for SerialConnector {
    type Stream = Prefixed<<UnixConnector as Connector>::Stream>;

    fn connect(&self) -> ConnectFuture<Self::Stream> {
        let opening = self.socket.connect();
        Box::pin(async move { host_handshake(opening.await?).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A guest port: drops what the host writes until `open`, as the guest
    /// kernel does for a port nobody holds open.
    async fn guest_port(
        mut from_host: tokio::io::DuplexStream,
        mut to_guest: tokio::io::DuplexStream,
        open: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut open = open;
        let mut chunk = [0; 7];
        loop {
            tokio::select! {
                _ = &mut open => break,
                n = from_host.read(&mut chunk) => {
                    if n.unwrap() == 0 { return; }
                }
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut from_host, &mut to_guest).await;
    }

    #[tokio::test]
    async fn survives_bytes_lost_before_the_guest_opens() {
        let (host, port_host_side) = tokio::io::duplex(1 << 16);
        let (port_guest_side, guest) = tokio::io::duplex(1 << 16);
        let (open, opened) = tokio::sync::oneshot::channel();
        tokio::spawn(guest_port(port_host_side, port_guest_side, opened));

        let host = tokio::spawn(async move {
            let mut link = host_handshake(host).await.unwrap();
            link.write_all(PREFACE).await.unwrap();
            let mut answer = [0; 8];
            link.read_exact(&mut answer).await.unwrap();
            answer
        });
        // The host says HELLO several times into a closed port.
        tokio::time::sleep(HELLO_INTERVAL * 4).await;
        open.send(()).unwrap();
        let mut guest = guest_handshake(guest).await.unwrap();
        // What the guest's HTTP/2 server reads next is the host's preface.
        let mut preface = vec![0; PREFACE.len()];
        guest.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
        guest.write_all(b"settings").await.unwrap();
        assert_eq!(&host.await.unwrap(), b"settings");
    }

    #[tokio::test]
    async fn bytes_after_ready_in_the_same_read_reach_the_host() {
        let (host, mut guest) = tokio::io::duplex(1 << 16);
        // Stale output of an earlier opening, then READY and HTTP/2 at once.
        guest.write_all(b"\x00\x00stale").await.unwrap();
        let mut reply = READY.to_vec();
        reply.extend_from_slice(b"settings");
        guest.write_all(&reply).await.unwrap();
        let mut link = host_handshake(host).await.unwrap();
        let mut answer = [0; 8];
        link.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"settings");
    }

    #[tokio::test]
    async fn the_guest_skips_a_cut_hello_and_repeats() {
        let (mut host, guest) = tokio::io::duplex(1 << 16);
        host.write_all(&HELLO[5..]).await.unwrap();
        host.write_all(HELLO).await.unwrap();
        host.write_all(HELLO).await.unwrap();
        host.write_all(PREFACE).await.unwrap();
        let mut guest = guest_handshake(guest).await.unwrap();
        let mut preface = vec![0; PREFACE.len()];
        guest.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
        let mut ready = [0; 16];
        host.read_exact(&mut ready).await.unwrap();
        assert_eq!(&ready, READY);
    }

    #[tokio::test]
    async fn a_host_that_leaves_ends_the_guest_handshake() {
        let (host, guest) = tokio::io::duplex(64);
        drop(host);
        let err = guest_handshake(guest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
