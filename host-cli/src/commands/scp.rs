//! `berth scp [-r] SRC DST`: copies between this machine and a machine's
//! host, one side written `NAME:PATH`, through the agent (`CopyIn`,
//! `CopyOut`) on whatever carries the machine's link — an SSH channel on
//! remote hosts, no sshd needed on a VM. Files land as `scp` puts them
//! (see `berth_proto::copy`).

use std::io;
use std::path::{Path, PathBuf};

use berth_proto::copy::{self, ChunkReader, ChunkWriter};
use berth_proto::pb::agent_client::AgentClient;
use berth_proto::pb::copy_in_frame::Kind;
use berth_proto::pb::{CopyInFrame, CopyOutRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Machine;
use crate::cli::ScpArgs;
use crate::error::CliError;
use crate::store::Store;

/// Chunks queued between the blocking side and the call.
const QUEUE_CHUNKS: usize = 8;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Local(PathBuf),
    Remote { machine: String, path: String },
}

/// Reads `NAME:PATH` as remote when NAME is a machine of the store, as a
/// local path otherwise (so `C:\…` and `./a:b` stay local).
fn side(store: &Store, arg: &str) -> Side {
    if let Some((machine, path)) = arg.split_once(':') {
        if !machine.is_empty() && store.exists(machine) {
            return Side::Remote {
                machine: machine.to_owned(),
                path: path.to_owned(),
            };
        }
    }
    Side::Local(PathBuf::from(arg))
}

fn copy_error(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("scp: {what}: {e}"))
}

pub(crate) async fn scp(store: &Store, args: ScpArgs) -> Result<(), CliError> {
    match (side(store, &args.source), side(store, &args.destination)) {
        (Side::Local(source), Side::Remote { machine, path }) => {
            upload(store, &machine, &source, &path, args.recursive).await
        }
        (Side::Remote { machine, path }, Side::Local(destination)) => {
            download(store, &machine, &path, &destination, args.recursive).await
        }
        (Side::Local(_), Side::Local(_)) => Err(CliError::Usage(
            "scp: one side must be a machine's path, written NAME:PATH".into(),
        )),
        (Side::Remote { .. }, Side::Remote { .. }) => Err(CliError::Usage(
            "scp: copies between two machines are not supported; copy through this machine".into(),
        )),
    }
}

async fn client(
    store: &Store,
    name: &str,
) -> Result<AgentClient<tonic::transport::Channel>, CliError> {
    let machine = Machine::open(store, name)?;
    let endpoint = machine.running_endpoint().await?;
    let channel = machine
        .driver
        .agent_channel()
        .await
        .map_err(|e| CliError::Agent {
            name: name.to_owned(),
            address: endpoint.agent.to_string(),
            reason: e.to_string(),
        })?;
    Ok(AgentClient::new(channel))
}

async fn upload(
    store: &Store,
    name: &str,
    source: &Path,
    destination: &str,
    recursive: bool,
) -> Result<(), CliError> {
    // Refuse what cannot be sent before reaching for the machine.
    let meta =
        std::fs::metadata(source).map_err(|e| copy_error(&source.display().to_string(), e))?;
    if meta.is_dir() && !recursive {
        return Err(copy_error(
            &source.display().to_string(),
            "is a directory (copy it with -r)",
        ));
    }
    let mut client = client(store, name).await?;
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    let first = CopyInFrame {
        kind: Some(Kind::Destination(if destination.is_empty() {
            ".".into()
        } else {
            destination.to_owned()
        })),
    };
    let _ = tx.send(first).await;
    let source = source.to_owned();
    let packing = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter::new(move |chunk| {
            tx.blocking_send(CopyInFrame {
                kind: Some(Kind::Data(chunk)),
            })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy was refused"))
        });
        copy::pack(&source, recursive, writer)
    });
    let answer = client.copy_in(ReceiverStream::new(rx)).await;
    let packed = packing.await.map_err(|e| copy_error("pack", e))?;
    match answer {
        Ok(_) => packed.map_err(|e| copy_error("pack", e)),
        Err(status) => Err(copy_error(
            &format!("{name}:{destination}"),
            status.message(),
        )),
    }
}

async fn download(
    store: &Store,
    name: &str,
    source: &str,
    destination: &Path,
    recursive: bool,
) -> Result<(), CliError> {
    let mut client = client(store, name).await?;
    let mut stream = client
        .copy_out(CopyOutRequest {
            path: source.to_owned(),
            recursive,
        })
        .await
        .map_err(|s| copy_error(&format!("{name}:{source}"), s.message()))?
        .into_inner();
    // The first message says whether the source could be read at all;
    // nothing is written here before that.
    let first = stream
        .message()
        .await
        .map_err(|s| copy_error(&format!("{name}:{source}"), s.message()))?;
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(QUEUE_CHUNKS);
    let destination = destination.to_owned();
    let unpacking =
        tokio::task::spawn_blocking(move || copy::unpack(ChunkReader::new(rx), &destination));
    let mut next = first.map(Ok);
    while let Some(chunk) = next {
        let failed = chunk.is_err();
        let sent = tx.send(chunk.map(|c| c.data)).await;
        if sent.is_err() || failed {
            break;
        }
        next = match stream.message().await {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => None,
            Err(status) => Some(Err(io::Error::other(status.message().to_owned()))),
        };
    }
    drop(tx);
    unpacking
        .await
        .map_err(|e| copy_error("copy", e))?
        .map(|_| ())
        .map_err(|e| copy_error(&format!("{name}:{source}"), e))
}
