//! `Agent.CopyOut` and `Agent.CopyIn`: `berth scp` to and from the host,
//! as tar streams in the form `berth_proto::copy` defines. Packing and
//! unpacking run on blocking threads, fed through bounded channels.

use std::io;
use std::path::PathBuf;

use berth_proto::copy::{self, ChunkReader, ChunkWriter};
use berth_proto::pb::copy_in_frame::Kind;
use berth_proto::pb::{CopyData, CopyInFrame, CopyInResponse};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// Chunks queued between the blocking side and the call.
const QUEUE_CHUNKS: usize = 8;

fn status(e: io::Error) -> Status {
    match e.kind() {
        io::ErrorKind::NotFound => Status::not_found(e.to_string()),
        io::ErrorKind::InvalidInput => Status::invalid_argument(e.to_string()),
        io::ErrorKind::PermissionDenied => Status::permission_denied(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Packs `path` on a blocking thread; its chunks (or its error) go to the
/// returned channel.
pub fn out(path: PathBuf, recursive: bool) -> mpsc::Receiver<Result<CopyData, Status>> {
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let sender = tx.clone();
        let writer = ChunkWriter::new(move |chunk| {
            sender
                .blocking_send(Ok(CopyData { data: chunk }))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
        });
        if let Err(e) = copy::pack(&path, recursive, writer) {
            let _ = tx.blocking_send(Err(status(e)));
        }
    });
    rx
}

/// Receives a copy and places it where its first frame says.
pub async fn into(mut input: Streaming<CopyInFrame>) -> Result<CopyInResponse, Status> {
    let destination = match input.next().await {
        Some(Ok(CopyInFrame {
            kind: Some(Kind::Destination(d)),
        })) if !d.is_empty() => PathBuf::from(d),
        Some(Err(status)) => return Err(status),
        _ => {
            return Err(Status::invalid_argument(
                "the first frame of a copy must name its destination",
            ))
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    let unpacking =
        tokio::task::spawn_blocking(move || copy::unpack(ChunkReader::new(rx), &destination));
    while let Some(frame) = input.next().await {
        let chunk = match frame {
            Ok(CopyInFrame {
                kind: Some(Kind::Data(data)),
            }) => Ok(data),
            Ok(_) => continue,
            Err(status) => Err(io::Error::other(status.message().to_owned())),
        };
        let failed = chunk.is_err();
        // The unpacker stops reading when it fails; its error says why.
        let sent = tx.send(chunk).await;
        if sent.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let written = unpacking
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
    Ok(CopyInResponse {
        written: written.display().to_string(),
    })
}
