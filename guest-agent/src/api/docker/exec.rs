//! `/containers/{id}/exec` and `/exec/…`: create, start (hijacked),
//! resize, inspect.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::stdcopy;
use super::{json, read_json, ApiError, Body, Query, Result};
use crate::engine::exec::ExecConfig;
use crate::engine::Engine;

pub(super) async fn create(
    engine: &Arc<Engine>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let config: ExecConfig = read_json(req.into_body()).await?;
    let exec_id = engine.exec_create(id, config)?;
    Ok(json(StatusCode::CREATED, &json!({ "Id": exec_id })))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
}

pub(super) async fn start(
    engine: &Arc<Engine>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body: StartBody = read_json(body).await?;
    let mut req = Request::from_parts(parts, ());
    let exec = engine.exec(id)?;
    let tty = exec.config.tty;
    let io = engine.exec_start(id).await?;
    if body.detach {
        // Nobody reads the output: drain it so the process never blocks
        // or meets a closed pipe.
        for out in [io.stdout, io.stderr].into_iter().flatten() {
            tokio::spawn(drain(out));
        }
        return Ok(super::empty(StatusCode::OK));
    }
    let upgrade = super::wants_upgrade(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let want = [exec.config.attach_stdout, exec.config.attach_stderr];
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.ok();
        let (reader, mut writer) = match upgraded {
            Some(u) => {
                let (r, w) = tokio::io::split(TokioIo::new(u));
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        if let (Some(mut reader), Some(mut stdin)) = (reader, io.stdin) {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 << 10];
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stdin.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Dropping the pipe's end is the process's end of input.
                let _ = stdin.shutdown().await;
            });
        }
        let (tx, mut rx) = mpsc::channel::<(u8, Bytes)>(16);
        for (stream, out) in [(1u8, io.stdout), (2u8, io.stderr)] {
            let Some(mut out) = out else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 << 10];
                loop {
                    match out.read(&mut buffer).await {
                        // EIO: a terminal whose last holder is gone.
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx
                                .send((stream, Bytes::copy_from_slice(&buffer[..n])))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(tx);
        while let Some((stream, bytes)) = rx.recv().await {
            if !want[stream as usize - 1] {
                continue;
            }
            let Some(w) = writer.as_mut() else { continue };
            let framed = if tty {
                bytes.to_vec()
            } else {
                stdcopy(stream, &bytes)
            };
            if w.write_all(&framed).await.is_err() {
                writer = None;
            }
        }
        // The client reads the exit code once the stream ends: record it
        // first. A process that never started says why on its stdout, as
        // with dockerd.
        let mut state = exec.watch();
        let _ = state.wait_for(|s| !s.running).await;
        if let (Some(message), Some(w)) = (exec.error(), writer.as_mut()) {
            let line = format!("{message}\r\n");
            let framed = if tty {
                line.into_bytes()
            } else {
                stdcopy(1, line.as_bytes())
            };
            let _ = w.write_all(&framed).await;
        }
        if let Some(mut w) = writer {
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        }
    });
    Ok(super::hijacked(upgrade, tty))
}

async fn drain(mut out: std::pin::Pin<Box<dyn AsyncRead + Send>>) {
    let mut buffer = vec![0u8; 16 << 10];
    while matches!(out.read(&mut buffer).await, Ok(n) if n > 0) {}
}

pub(super) fn resize(
    engine: &Arc<Engine>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req);
    let exec = engine.exec(id)?;
    let rows = query.int("h")?.unwrap_or(0);
    let cols = query.int("w")?.unwrap_or(0);
    if !exec.state().running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("exec {id} is not running"),
        ));
    }
    exec.resize(
        rows.clamp(0, u16::MAX as i64) as u16,
        cols.clamp(0, u16::MAX as i64) as u16,
    );
    Ok(super::empty(StatusCode::OK))
}

pub(super) fn inspect(engine: &Arc<Engine>, id: &str) -> Result<Response<Body>> {
    let exec = engine.exec(id)?;
    let state = exec.state();
    let config = &exec.config;
    let cmd = config.cmd.clone().unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &json!({
            "ID": exec.id,
            "Running": state.running,
            "ExitCode": state.exit_code,
            "ProcessConfig": {
                "tty": config.tty,
                "entrypoint": cmd.first(),
                "arguments": cmd.get(1..).unwrap_or_default(),
                "privileged": config.privileged,
                "user": config.user,
            },
            "OpenStdin": config.attach_stdin,
            "OpenStderr": config.attach_stderr,
            "OpenStdout": config.attach_stdout,
            "CanRemove": false,
            "ContainerID": exec.container.id,
            "DetachKeys": "",
            "Pid": state.pid,
        }),
    ))
}
