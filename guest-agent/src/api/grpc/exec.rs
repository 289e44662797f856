//! `Agent.Exec`: a command on the host itself (not in a container), on a
//! terminal or on pipes — what `berth ssh` runs on a VM that has no sshd.
//!
//! The child is spawned with `std::process::Command`; between fork and exec
//! it only calls `setsid` and `ioctl(TIOCSCTTY)`, both async-signal-safe,
//! so spawning from the multi-threaded agent is sound.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};

use berth_proto::pb::exec_input::Kind as In;
use berth_proto::pb::exec_output::Kind as Out;
use berth_proto::pb::{ExecInput, ExecOutput, ExecStart, TerminalSize};
use nix::fcntl::FcntlArg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// The shell run when no command is given: busybox's on our guest, the
/// system's elsewhere.
const LOGIN_SHELL: &[&str] = &["/bin/sh", "-l"];

/// Bytes read from the command's output into one frame.
const OUTPUT_CHUNK: usize = 32 << 10;

/// What a call's response stream carries.
pub type OutputSender = mpsc::Sender<Result<ExecOutput, Status>>;

/// Runs the exec described by the call's first frame, feeding it the rest,
/// and sends its output and exit status to `tx`.
pub async fn run(mut input: Streaming<ExecInput>, tx: OutputSender) -> Result<(), Status> {
    let start = match input.next().await {
        Some(Ok(ExecInput {
            kind: Some(In::Start(start)),
        })) => start,
        Some(Err(status)) => return Err(status),
        _ => {
            return Err(Status::invalid_argument(
                "the first frame of an exec must say what to run",
            ))
        }
    };
    // On our guest, busybox's applets are linked once the agent serves.
    crate::init::system::applets_linked().await;
    let argv: Vec<String> = if start.argv.is_empty() {
        LOGIN_SHELL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        start.argv.clone()
    };
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]).current_dir("/");
    command.env("HOME", "/root").env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for pair in &start.env {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                command.env(k, v);
            }
            _ => return Err(Status::invalid_argument(format!("bad env entry {pair:?}"))),
        }
    }
    let exit = match &start.terminal {
        Some(size) => on_terminal(command, &start, size, input, &tx).await,
        None => on_pipes(command, input, &tx).await,
    }
    .map_err(|e| Status::failed_precondition(format!("cannot run {:?}: {e}", argv[0])))?;
    let code = exit
        .code()
        .or_else(|| exit.signal().map(|s| 128 + s))
        .unwrap_or(255);
    let _ = tx
        .send(Ok(ExecOutput {
            kind: Some(Out::ExitCode(code)),
        }))
        .await;
    Ok(())
}

async fn on_pipes(
    mut command: std::process::Command,
    mut input: Streaming<ExecInput>,
    tx: &OutputSender,
) -> io::Result<ExitStatus> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(command).spawn()?;
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async {
        while let Some(Ok(frame)) = input.next().await {
            match frame.kind {
                Some(In::Stdin(data)) => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(In::CloseStdin(_)) => stdin = None,
                _ => {}
            }
        }
    };
    let outputs = async {
        tokio::join!(
            forward(stdout, tx, Out::Stdout),
            forward(stderr, tx, Out::Stderr),
        )
    };
    // The client may never close its input; the command ending with its
    // output read is what ends the call.
    tokio::select! {
        _ = outputs => {}
        _ = async { feed.await; std::future::pending::<()>().await } => {}
    }
    child.wait().await
}

async fn forward<R: AsyncRead + Unpin>(
    reader: Option<R>,
    tx: &OutputSender,
    kind: impl Fn(Vec<u8>) -> Out,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let frame = ExecOutput {
                    kind: Some(kind(buf[..n].to_vec())),
                };
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn on_terminal(
    mut command: std::process::Command,
    start: &ExecStart,
    size: &TerminalSize,
    mut input: Streaming<ExecInput>,
    tx: &OutputSender,
) -> io::Result<ExitStatus> {
    let (master, slave) = open_pty(size)?;
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    if !start.env.iter().any(|e| e.starts_with("TERM=")) {
        command.env("TERM", "xterm");
    }
    // SAFETY: between fork and exec the closure calls only setsid(2) and
    // ioctl(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::libc::setsid();
            // Stdin is the pty's slave: make it the controlling terminal.
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The temporary command, and its copies of the slave, are dropped here:
    // reading the master ends once the session's processes are gone.
    let mut child = tokio::process::Command::from(command).spawn()?;
    let master = crate::link::FdStream::new(master, false)?;
    // The halves share the master, open until both are dropped below.
    let master_fd = master.as_raw_fd();
    let (mut reader, mut writer) = tokio::io::split(master);
    let output = async {
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        loop {
            // EIO: every slave descriptor is closed; the shell is gone.
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let frame = ExecOutput {
                kind: Some(Out::Stdout(buf[..n].to_vec())),
            };
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    };
    let feed = async {
        while let Some(Ok(frame)) = input.next().await {
            match frame.kind {
                Some(In::Stdin(data)) if writer.write_all(&data).await.is_err() => break,
                Some(In::Stdin(_)) => {}
                Some(In::Resize(size)) => resize(master_fd, &size),
                // A terminal has no separate end of input: ^D is the user's.
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = output => {}
        _ = async { feed.await; std::future::pending::<()>().await } => {}
    }
    child.wait().await
}

/// Opens a pty of `size`: (master, slave).
fn open_pty(size: &TerminalSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let ws = winsize(size);
    let pty = nix::pty::openpty(Some(&ws), None).map_err(io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(io::Error::from)?;
    }
    Ok((pty.master, pty.slave))
}

fn winsize(size: &TerminalSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: u16::try_from(size.rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(size.cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn resize(fd: i32, size: &TerminalSize) {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the
    // call; `fd` is the pty master, open while the exec runs.
    unsafe { nix::libc::ioctl(fd, nix::libc::TIOCSWINSZ, &ws) };
}
