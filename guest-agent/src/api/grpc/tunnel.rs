//! `Agent.Tunnel`, the agent's end: connects to the target the first frame
//! names — the Docker API's socket, this agent's own gRPC socket, or a TCP
//! port on the loopback — and splices the call's frames into it.

use std::path::PathBuf;

use berth_proto::link::tunnel;
use berth_proto::pb::tunnel_frame::Kind;
use berth_proto::pb::tunnel_open::Target;
use berth_proto::pb::{TunnelFrame, TunnelService};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// Frames queued towards the client before reading the target pauses.
const QUEUE_FRAMES: usize = 8;

/// What a call's response stream carries.
pub type FrameStream = tokio_stream::wrappers::ReceiverStream<Result<TunnelFrame, Status>>;

/// Where the agent's own services listen, for tunnels to reach them.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The Docker API's socket.
    pub docker: Option<PathBuf>,
}

/// Opens the target the call names and returns the stream of frames from
/// it; the splice runs on its own task until either side ends.
pub async fn open(
    targets: &Targets,
    mut input: Streaming<TunnelFrame>,
) -> Result<FrameStream, Status> {
    let open = match input.next().await {
        Some(Ok(TunnelFrame {
            kind: Some(Kind::Open(open)),
        })) => open,
        Some(Err(status)) => return Err(status),
        _ => {
            return Err(Status::invalid_argument(
                "the first frame of a tunnel must name its target",
            ))
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let incoming = input.map(|r| r.map_err(tunnel::status_to_io));
    match open.target {
        Some(Target::TcpPort(port)) => {
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Status::invalid_argument(format!("{port} is not a TCP port")))?;
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to port {port}: {e}")))?;
            let _ = stream.set_nodelay(true);
            spawn(stream, incoming, tx);
        }
        Some(Target::Service(service)) => {
            let (name, path) = match TunnelService::try_from(service) {
                Ok(TunnelService::Docker) => ("the Docker API", &targets.docker),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "unknown service {service}"
                    )))
                }
            };
            let path = path
                .as_ref()
                .ok_or_else(|| Status::unavailable(format!("{name} is not served on this host")))?;
            let stream = UnixStream::connect(path)
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to {name}: {e}")))?;
            spawn(stream, incoming, tx);
        }
        None => return Err(Status::invalid_argument("the tunnel names no target")),
    }
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn spawn<S>(
    stream: S,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<TunnelFrame>> + Send + Unpin + 'static,
    tx: mpsc::Sender<Result<TunnelFrame, Status>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = tunnel::splice(stream, incoming, tx, Ok).await {
            tracing::debug!("tunnel ended: {e}");
        }
    });
}
