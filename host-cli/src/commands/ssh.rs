//! `berth ssh`: a shell on the machine, or one command: over real SSH on
//! hosts that have it (`generic`, the clouds), else through the agent's
//! `Exec` — a VM has no sshd. With no command and a terminal on stdin the
//! session gets a terminal of the same size (resized along with it) and
//! this terminal goes raw; otherwise the command runs on pipes. The exit
//! status is the remote command's.

use berth_proto::pb::agent_client::AgentClient;
use berth_proto::pb::exec_input::Kind as In;
use berth_proto::pb::exec_output::Kind as Out;
use berth_proto::pb::{ExecInput, ExecStart, TerminalSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use berth_provisioners::ssh::{shell_quote, HostKeys, Session, SshTarget};

use super::{target, Machine};
use crate::cli::SshArgs;
use crate::error::CliError;
use crate::store::Store;

/// Frames of input queued towards the machine.
const INPUT_QUEUE: usize = 16;

/// Bytes of stdin read into one frame.
const INPUT_CHUNK: usize = 16 << 10;

pub(crate) async fn ssh(store: &Store, args: SshArgs) -> Result<(), CliError> {
    let name = target(store, args.name)?;
    let machine = Machine::open(store, &name)?;
    let endpoint = machine.running_endpoint().await?;
    if let Some(target) = &endpoint.ssh {
        return over_ssh(target, &args.command).await;
    }
    let agent_error = |reason: String| CliError::Agent {
        name: name.clone(),
        address: endpoint.agent.to_string(),
        reason,
    };
    let channel = machine
        .driver
        .agent_channel()
        .await
        .map_err(|e| agent_error(e.to_string()))?;

    let interactive = args.command.is_empty() && terminal::is_terminal();
    let size = if interactive { terminal::size() } else { None };
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let start = ExecStart {
        argv: args.command.clone(),
        terminal: interactive.then(|| size.unwrap_or(TerminalSize { rows: 24, cols: 80 })),
        env: std::env::var("TERM")
            .map(|t| vec![format!("TERM={t}")])
            .unwrap_or_default(),
    };
    let _ = tx
        .send(ExecInput {
            kind: Some(In::Start(start)),
        })
        .await;
    let mut output = AgentClient::new(channel)
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(|s| agent_error(s.message().to_owned()))?
        .into_inner();
    // The agent refuses a command it cannot start with a status, not as
    // an unreachable agent.
    let failed = |status: tonic::Status| match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            CliError::Usage(format!("machine {name:?}: {}", status.message()))
        }
        _ => agent_error(status.message().to_owned()),
    };

    let raw_mode = if interactive {
        terminal::Raw::enter()
    } else {
        None
    };
    let stdin_tx = tx.clone();
    let feeder = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; INPUT_CHUNK];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx
                        .send(ExecInput {
                            kind: Some(In::CloseStdin(true)),
                        })
                        .await;
                    return;
                }
                Ok(n) => {
                    let frame = ExecInput {
                        kind: Some(In::Stdin(buf[..n].to_vec())),
                    };
                    if stdin_tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let resizer = interactive.then(|| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut sizes = terminal::resizes();
            while let Some(size) = sizes.recv().await {
                let frame = ExecInput {
                    kind: Some(In::Resize(size)),
                };
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        })
    });
    drop(tx);

    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut code = None;
    loop {
        match output.message().await {
            Ok(Some(frame)) => match frame.kind {
                Some(Out::Stdout(data)) => {
                    let _ = stdout.write_all(&data).await;
                    let _ = stdout.flush().await;
                }
                Some(Out::Stderr(data)) => {
                    let _ = stderr.write_all(&data).await;
                    let _ = stderr.flush().await;
                }
                Some(Out::ExitCode(c)) => code = Some(c),
                None => {}
            },
            Ok(None) => break,
            Err(status) => {
                drop(raw_mode);
                return Err(failed(status));
            }
        }
    }
    feeder.abort();
    if let Some(resizer) = resizer {
        resizer.abort();
    }
    drop(raw_mode);
    match code {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Remote(code)),
        None => Err(agent_error(
            "the session ended without an exit status".into(),
        )),
    }
}

/// `berth ssh` over real SSH: a login shell on a terminal, or `command`.
async fn over_ssh(target: &SshTarget, command: &[String]) -> Result<(), CliError> {
    use berth_provisioners::ssh::ChannelMsg;
    let failed = |e: String| CliError::Usage(format!("ssh {target}: {e}"));
    let session = Session::connect(target, HostKeys::Known)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let channel = session.channel().await.map_err(|e| failed(e.to_string()))?;
    let interactive = command.is_empty() && terminal::is_terminal();
    let (mut reader, writer) = channel.split();
    if interactive {
        let size = terminal::size().unwrap_or(TerminalSize { rows: 24, cols: 80 });
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        writer
            .request_pty(false, &term, size.cols, size.rows, 0, 0, &[])
            .await
            .map_err(|e| failed(e.to_string()))?;
        writer
            .request_shell(true)
            .await
            .map_err(|e| failed(e.to_string()))?;
    } else if command.is_empty() {
        writer
            .request_shell(true)
            .await
            .map_err(|e| failed(e.to_string()))?;
    } else {
        let line: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
        writer
            .exec(true, line.join(" "))
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let raw_mode = if interactive {
        terminal::Raw::enter()
    } else {
        None
    };
    let mut sizes = if interactive {
        terminal::resizes()
    } else {
        mpsc::channel(1).1
    };
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut buf = vec![0u8; INPUT_CHUNK];
    let mut stdin_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = writer.eof().await;
                }
                Ok(n) => {
                    if writer.data_bytes(buf[..n].to_vec()).await.is_err() {
                        stdin_open = false;
                    }
                }
            },
            Some(size) = sizes.recv() => {
                let _ = writer.window_change(size.cols, size.rows, 0, 0).await;
            }
            msg = reader.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = stdout.write_all(&data).await;
                    let _ = stdout.flush().await;
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let _ = stderr.write_all(&data).await;
                    let _ = stderr.flush().await;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(_) => {}
                None => break,
            },
        }
    }
    drop(raw_mode);
    match code {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Remote(i32::try_from(code).unwrap_or(255))),
        None => Err(failed("the session ended without an exit status".into())),
    }
}

#[cfg(unix)]
mod terminal {
    //! The local terminal: raw mode, its size, its resizes.

    use std::os::fd::AsFd;

    use berth_proto::pb::TerminalSize;
    use nix::sys::termios::{self, SetArg, Termios};
    use tokio::sync::mpsc;

    pub(super) fn is_terminal() -> bool {
        std::io::IsTerminal::is_terminal(&std::io::stdin())
    }

    pub(super) fn size() -> Option<TerminalSize> {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which
        // is valid for the call.
        let rc = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0).then(|| TerminalSize {
            rows: ws.ws_row.into(),
            cols: ws.ws_col.into(),
        })
    }

    /// The terminal in raw mode until dropped.
    pub(super) struct Raw(Termios);

    impl Raw {
        pub(super) fn enter() -> Option<Self> {
            let stdin = std::io::stdin();
            let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
            Some(Raw(saved))
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
        }
    }

    /// The terminal's new size each time it changes.
    pub(super) fn resizes() -> mpsc::Receiver<TerminalSize> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = size() {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

#[cfg(not(unix))]
mod terminal {
    //! Windows: the session runs on pipes (no raw mode yet).

    use berth_proto::pb::TerminalSize;
    use tokio::sync::mpsc;

    pub(super) fn is_terminal() -> bool {
        false
    }

    pub(super) fn size() -> Option<TerminalSize> {
        None
    }

    pub(super) struct Raw;

    impl Raw {
        pub(super) fn enter() -> Option<Self> {
            None
        }
    }

    pub(super) fn resizes() -> mpsc::Receiver<TerminalSize> {
        mpsc::channel(1).1
    }
}
