//! Tunnels: byte streams carried as `Agent.Tunnel` calls, so that one link
//! to an agent (one HTTP/2 connection over a virtio-serial port or a vsock
//! connection) carries any number of Docker API connections and forwarded
//! ports at once, each with HTTP/2's own flow control.
//!
//! [`open`] is the client's side: it splices a local stream (an accepted
//! connection on the host) into a new tunnel. [`splice`] moves bytes
//! between a stream and the frames of a call; the agent uses it for its
//! side too.

use std::io;

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::pb::agent_client::AgentClient;
use crate::pb::tunnel_frame::Kind;
use crate::pb::{TunnelFrame, TunnelOpen};

/// Bytes read from a stream into one frame. Large enough that a bulk
/// transfer is not dominated by per-frame costs, small enough to stay well
/// under gRPC's default 4 MiB message limit.
pub const FRAME_BYTES: usize = 64 << 10;

/// Frames queued towards the peer before reading the local stream pauses.
const QUEUE_FRAMES: usize = 8;

/// Opens a tunnel to `target` over `channel` and moves bytes between it and
/// `stream` until both directions are done.
pub async fn open<S>(channel: Channel, target: TunnelOpen, stream: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    tx.send(TunnelFrame {
        kind: Some(Kind::Open(target)),
    })
    .await
    .map_err(|_| io::Error::other("the tunnel's request stream closed"))?;
    let response = AgentClient::new(channel)
        .tunnel(ReceiverStream::new(rx))
        .await
        .map_err(status_to_io)?;
    let incoming = response.into_inner().map(|r| r.map_err(status_to_io));
    splice(stream, incoming, tx, |frame| frame).await
}

/// Moves bytes between `stream` and a call: the data of `incoming` frames
/// is written to `stream` (its end shuts the stream's write side), and what
/// `stream` yields goes out through `outgoing` (its end drops `outgoing`,
/// which ends the call's stream in that direction). Returns when `incoming`
/// has ended and the stream's bytes are all sent, or on the first error.
///
/// `wrap` turns a frame into what `outgoing` carries (the server sends
/// `Result<TunnelFrame, Status>`).
pub async fn splice<S, I, T>(
    stream: S,
    mut incoming: I,
    outgoing: mpsc::Sender<T>,
    wrap: impl Fn(TunnelFrame) -> T + Send,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
    I: Stream<Item = io::Result<TunnelFrame>> + Send + Unpin,
    T: Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let upstream = async move {
        let mut buf = vec![0u8; FRAME_BYTES];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                // Dropping the sender ends our half of the call.
                return Ok::<_, io::Error>(());
            }
            let frame = TunnelFrame {
                kind: Some(Kind::Data(buf[..n].to_vec())),
            };
            if outgoing.send(wrap(frame)).await.is_err() {
                // The peer has ended the call; nothing more can be sent.
                return Ok(());
            }
        }
    };
    let downstream = async move {
        while let Some(frame) = incoming.next().await {
            match frame?.kind {
                Some(Kind::Data(data)) => writer.write_all(&data).await?,
                Some(Kind::Open(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a tunnel was opened twice",
                    ))
                }
                None => {}
            }
        }
        writer.shutdown().await
    };
    // The stream closing its write side does not end what it still reads,
    // and the other way round: the call is over when both are, or at the
    // first error in either.
    tokio::try_join!(upstream, downstream).map(|_| ())
}

/// A gRPC status as an I/O error that keeps its message.
pub fn status_to_io(status: tonic::Status) -> io::Error {
    let kind = match status.code() {
        tonic::Code::NotFound => io::ErrorKind::NotFound,
        tonic::Code::Unavailable => io::ErrorKind::ConnectionRefused,
        tonic::Code::InvalidArgument => io::ErrorKind::InvalidInput,
        tonic::Code::PermissionDenied => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, status.message().to_owned())
}
