//! The agent's end of a VM's link to its host: the gRPC service served on
//! a virtio-serial port (always there in our guest) and on vsock (where the
//! host has it). The host side holds one HTTP/2 connection over the link and
//! multiplexes everything through it (see `berth_proto::link::tunnel`).
//!
//! A virtio-serial port is one byte stream that outlives connections: it
//! is opened, greeted (`berth_proto::link::serial`: the handshake that
//! tells which bytes are this opening's), served as one HTTP/2 connection
//! until that ends (the host side went away, or sent something that is not
//! HTTP/2), then opened again for the next. While no host is connected a
//! read returns end of file at once and the port reports a hang-up (a
//! write would wait for ever), so an opening ends there and reopening waits
//! [`REOPEN_DELAY`] between tries.
//!
//! Past the handshake this module never interprets the bytes: that is
//! tonic's job.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use berth_proto::link::serial::{self, Prefixed};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The name QEMU gives the agent's virtio-serial port
/// (`virtserialport,name=…`); the guest finds the port by it.
pub const PORT_NAME: &str = "org.berth.agent.0";

/// The vsock port the agent listens on in a guest.
pub const VSOCK_PORT: u32 = 1024;

/// How long to wait before opening the port again after a connection
/// ended: short enough that a new host side is served at once, long enough
/// not to spin while nobody is connected.
const REOPEN_DELAY: Duration = Duration::from_millis(100);

/// Finds the virtio-serial port named `name` under `/sys/class/virtio-ports`
/// and returns its device node.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for port in ports.flatten() {
        let named = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
        if named.trim() == name {
            return Some(Path::new("/dev").join(port.file_name()));
        }
    }
    None
}

/// The connections made on a virtio-serial port, one after another, for
/// tonic's `serve_with_incoming`.
pub fn port_connections(device: PathBuf) -> ReceiverStream<io::Result<PortStream>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut reported = false;
        loop {
            match PortStream::open(&device).await {
                Ok((stream, closed)) => {
                    reported = false;
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                    // One opener at a time: wait until the server drops it.
                    let _ = closed.await;
                }
                // No host connected (or it left mid-greeting): the usual
                // state between supervisors, not worth a warning.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) if !reported => {
                    tracing::warn!("cannot open the link port {}: {e}", device.display());
                    reported = true;
                }
                Err(_) => {}
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(REOPEN_DELAY).await;
        }
    });
    ReceiverStream::new(rx)
}

/// One opening of a virtio-serial port, past its handshake.
#[derive(Debug)]
pub struct PortStream {
    stream: Prefixed<FdStream>,
    // Told when this opening is dropped, so the port can be opened again.
    _closed: oneshot::Sender<()>,
}

impl PortStream {
    /// Opens the port and waits for a host's greeting on it; an error if no
    /// host is connected, or it leaves first.
    async fn open(device: &Path) -> io::Result<(Self, oneshot::Receiver<()>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(device)?;
        let (tx, rx) = oneshot::channel();
        // While no host is connected the port hangs up and a write would
        // wait for ever: this opening is over then.
        let stream = serial::guest_handshake(FdStream::new(OwnedFd::from(file), true)?).await?;
        Ok((
            PortStream {
                stream,
                _closed: tx,
            },
            rx,
        ))
    }
}

impl Connected for PortStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for PortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A descriptor this process owns (a virtio-serial port, a pty master) as
/// a non-blocking byte stream driven by the reactor.
#[derive(Debug)]
pub(crate) struct FdStream {
    fd: AsyncFd<OwnedFd>,
    /// Whether a hang-up fails writes instead of leaving them waiting.
    hangup_fails_writes: bool,
}

impl FdStream {
    /// Makes `fd` non-blocking and registers it with the reactor.
    pub(crate) fn new(fd: OwnedFd, hangup_fails_writes: bool) -> io::Result<Self> {
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(FdStream {
            fd: register(fd)?,
            hangup_fails_writes,
        })
    }
}

impl std::os::fd::AsRawFd for FdStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            if self.hangup_fails_writes && guard.ready().is_write_closed() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the other end hung up",
                )));
            }
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Registers a descriptor this process owns with the reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` owns the descriptor and keeps it open, the
    // same file description, until the `AsyncFd` drops it; `as_raw_fd`
    // of an `OwnedFd` always returns that descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Connections accepted on vsock `port`, for tonic's `serve_with_incoming`.
pub fn vsock_connections(
    port: u32,
) -> io::Result<impl tokio_stream::Stream<Item = io::Result<tokio_vsock::VsockStream>>> {
    let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port,
    ))?;
    Ok(listener.incoming())
}
