//! `berth-agent shim`: one small process per running container, its
//! parent for life. It creates the container through the runtime, holds
//! its stdio (pipes, or the pty master), writes its json-file log, waits
//! for its exit and records it; the engine talks to it over a unix socket
//! in the container's directory ([`super::frame`]) and may come and go —
//! an agent restart loses no output and no exit status.
//!
//! Single-threaded and synchronous on purpose: it forks (through the
//! runtime) and must stay a one-thread process when it does.
//!
//! ```text
//! agent ──spawn──▶ shim ──runtime create──▶ init (waits on exec FIFO)
//!   │  reads "ok <pid>" on the shim's stdout, then connects to shim.sock
//!   └──Start──▶ shim ──runtime start──▶ the process runs
//!              shim ◀── stdout/stderr ── process     ──▶ log + Stdout/Stderr frames
//!              shim ◀── SIGCHLD ──────── process ends ──▶ exit.json + Exited frame
//! ```

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::frame::{self, Decoder, Exit, Kind};
use super::logs;
use crate::runtime::container_create::{create, CreateOptions};
use crate::runtime::container_delete::delete;
use crate::runtime::container_start::start;
use crate::runtime::RuntimeError;

/// The shim's socket, in the container's directory.
pub const SOCKET: &str = "shim.sock";
/// The exit record, in the container's directory.
pub const EXIT_FILE: &str = "exit.json";
/// The json-file log, in the container's directory.
pub const LOG_FILE: &str = "container-json.log";
/// The shim's own messages (panics included), in the container's directory.
const SHIM_LOG: &str = "shim.log";
/// Where the pty master is received, in the container's directory.
const CONSOLE_SOCKET: &str = "console.sock";
/// How long output may keep coming after the process exited.
const DRAIN: Duration = Duration::from_secs(2);

/// What the engine starts a shim with.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// The runtime's state root.
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// The container id.
    #[arg(long)]
    pub id: String,
    /// The OCI bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The container's directory: socket, log, exit record.
    #[arg(long)]
    pub dir: PathBuf,
    /// The process has a terminal.
    #[arg(long)]
    pub tty: bool,
    /// The process's stdin stays open for the engine to write to.
    #[arg(long)]
    pub stdin: bool,
}

/// Runs the shim; its stdout is the handshake pipe to the engine.
pub fn main(args: ShimArgs) -> i32 {
    // The handshake goes on a descriptor of its own: 0-2 become the
    // container's for the length of `create`.
    let handshake = match nix::unistd::dup(std::io::stdout()) {
        Ok(fd) => File::from(fd),
        Err(_) => return 1,
    };
    let _ = nix::fcntl::fcntl(
        &handshake,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut handshake = Some(handshake);
    match run(&args, &mut handshake) {
        Ok(()) => 0,
        Err(e) => {
            if let Some(mut h) = handshake {
                let _ = writeln!(h, "error {e}");
            }
            1
        }
    }
}

/// The container's output descriptors and the shim's ends of them.
struct Stdio {
    /// stdout (or the pty master) and stderr, while open.
    out: [Option<File>; 2],
    /// Where stdin bytes go, while open (the pty master's dup with a tty).
    stdin: Option<File>,
    tty: bool,
}

fn run(args: &ShimArgs, handshake: &mut Option<File>) -> Result<(), RuntimeError> {
    let io = |what: &str| RuntimeError::io(what.to_owned());
    std::env::set_current_dir(&args.dir).map_err(io("enter the container's directory"))?;
    nix::unistd::setsid().map_err(RuntimeError::sys("start a session"))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(RuntimeError::sys("become a subreaper"))?;
    // SAFETY: setting SIGPIPE's disposition to ignore touches no memory; a
    // peer that hangs up then gives EPIPE instead of killing the shim.
    unsafe {
        nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
            .map_err(RuntimeError::sys("ignore SIGPIPE"))?;
    }
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    sigchld
        .thread_block()
        .map_err(RuntimeError::sys("block SIGCHLD"))?;
    let signals = SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(RuntimeError::sys("open a signalfd"))?;

    let _ = std::fs::remove_file(SOCKET);
    let _ = std::fs::remove_file(CONSOLE_SOCKET);
    let console = if args.tty {
        Some(UnixListener::bind(CONSOLE_SOCKET).map_err(io("bind the console socket"))?)
    } else {
        None
    };
    let (mut stdio, container_ends) = if args.tty {
        (
            Stdio {
                out: [None, None],
                stdin: None,
                tty: true,
            },
            None,
        )
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_r, in_w) = if args.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(io("open /dev/null"))?;
            (OwnedFd::from(null), None)
        };
        (
            Stdio {
                out: [Some(File::from(out_r)), Some(File::from(err_r))],
                stdin: in_w.map(File::from),
                tty: false,
            },
            Some([in_r, out_w, err_w]),
        )
    };
    if let Some(ends) = &container_ends {
        for (target, fd) in ends.iter().enumerate() {
            replace_stdio(fd.as_fd(), target as RawFd)
                .map_err(RuntimeError::sys("hand the container its stdio"))?;
        }
    }
    let created = create(&CreateOptions {
        id: args.id.clone(),
        bundle: args.bundle.clone(),
        root: args.runtime_root.clone(),
        pid_file: None,
        preserve_fds: 0,
        console_socket: console.as_ref().map(|_| PathBuf::from(CONSOLE_SOCKET)),
    });
    // The container has its ends now (or failed): ours are /dev/null,
    // and the shim's own messages go to its log.
    let null = File::open("/dev/null").map_err(io("open /dev/null"))?;
    let own_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SHIM_LOG)
        .map_err(io("open the shim's log"))?;
    for target in 0..=2 {
        let to = if target == 2 {
            own_log.as_fd()
        } else {
            null.as_fd()
        };
        let _ = replace_stdio(to, target);
    }
    drop(container_ends);
    let saved = created?;
    let init = Pid::from_raw(saved.pid);

    if let Some(console) = console {
        let master = receive_pty(&console)?;
        drop(console);
        let _ = std::fs::remove_file(CONSOLE_SOCKET);
        let input = master.try_clone().map_err(io("duplicate the pty master"))?;
        stdio.out[0] = Some(master);
        stdio.stdin = Some(input);
    }
    let listener = UnixListener::bind(SOCKET).map_err(io("bind the shim socket"))?;
    let mut log = logs::Writer::open(std::path::Path::new(LOG_FILE)).map_err(io("open the log"))?;

    if let Some(mut h) = handshake.take() {
        let _ = writeln!(h, "ok {}", saved.pid);
    }
    serve(args, init, &signals, &listener, &mut stdio, &mut log)
}

/// The shim's event loop: until the process has exited and its output
/// has been drained.
fn serve(
    args: &ShimArgs,
    init: Pid,
    signals: &SignalFd,
    listener: &UnixListener,
    stdio: &mut Stdio,
    log: &mut logs::Writer,
) -> Result<(), RuntimeError> {
    let mut client: Option<(UnixStream, Decoder)> = None;
    let mut exit: Option<(i32, Instant)> = None;
    let mut buffer = vec![0u8; 32 << 10];
    loop {
        let draining = exit.is_some();
        if let Some((_, since)) = exit {
            if stdio.out.iter().all(Option::is_none) || since.elapsed() > DRAIN {
                break;
            }
        }
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        let client_at = client.as_ref().map(|(c, _)| {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mut out_at = [None, None];
        for (i, out) in stdio.out.iter().enumerate() {
            if let Some(f) = out {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                out_at[i] = Some(fds.len() - 1);
            }
        }
        let timeout = if draining {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(RuntimeError::sys("poll")(e)),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (sig_ready, listen_ready) = (ready(0), ready(1));
        let client_ready = client_at.is_some_and(ready);
        let outs_ready = [out_at[0].is_some_and(ready), out_at[1].is_some_and(ready)];
        drop(fds);

        if sig_ready {
            while signals.read_signal().ok().flatten().is_some() {}
            if let Some(code) = reap(init) {
                exit = Some((code, Instant::now()));
            }
        }
        if listen_ready {
            if let Ok((stream, _)) = listener.accept() {
                // The newest engine connection wins; an old one is stale.
                client = Some((stream, Decoder::default()));
            }
        }
        for (i, ready) in outs_ready.into_iter().enumerate() {
            if !ready {
                continue;
            }
            let Some(f) = stdio.out[i].as_mut() else {
                continue;
            };
            match f.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    // EOF, or EIO from a pty whose other side is gone.
                    stdio.out[i] = None;
                }
                Ok(n) => {
                    let _ = log.write(i, &buffer[..n]);
                    let kind = if i == 0 { Kind::Stdout } else { Kind::Stderr };
                    send(&mut client, kind, &buffer[..n]);
                }
            }
        }
        if client_ready {
            let mut gone = false;
            let mut frames = Vec::new();
            if let Some((stream, decoder)) = client.as_mut() {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => gone = true,
                    Ok(n) => {
                        decoder.extend(&buffer[..n]);
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(f)) => frames.push(f),
                                Ok(None) => break,
                                Err(_) => {
                                    gone = true;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            if gone {
                client = None;
            }
            for (kind, payload) in frames {
                handle(
                    args,
                    init,
                    stdio,
                    &mut client,
                    kind,
                    &payload,
                    exit.is_some(),
                );
            }
        }
    }
    let _ = log.flush();
    let (code, _) = exit.expect("the loop ends only after the exit");
    let record = Exit {
        code,
        at: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
    };
    write_exit(&record)?;
    // The engine hears of the exit first; the runtime's cleanup (a cgroup
    // the kernel may release a moment late) follows.
    let json = serde_json::to_vec(&record).unwrap_or_default();
    send(&mut client, Kind::Exited, &json);
    let _ = delete(&args.runtime_root, &args.id, true);
    let _ = std::fs::remove_file(SOCKET);
    Ok(())
}

/// Acts on one frame from the engine.
fn handle(
    args: &ShimArgs,
    init: Pid,
    stdio: &mut Stdio,
    client: &mut Option<(UnixStream, Decoder)>,
    kind: Kind,
    payload: &[u8],
    exited: bool,
) {
    match kind {
        Kind::Start => match start(&args.runtime_root, &args.id) {
            Ok(()) => send(client, Kind::Started, b""),
            Err(e) => send(client, Kind::Error, e.to_string().as_bytes()),
        },
        Kind::Stdin => {
            if let Some(input) = stdio.stdin.as_mut() {
                if input.write_all(payload).is_err() {
                    stdio.stdin = None;
                }
            }
        }
        Kind::CloseStdin => {
            if stdio.tty {
                // A terminal has no end of input: send it the EOF character.
                if let Some(input) = stdio.stdin.as_mut() {
                    let _ = input.write_all(&[4]);
                }
            } else {
                stdio.stdin = None;
            }
        }
        Kind::Resize if payload.len() == 4 && stdio.tty => {
            let rows = u16::from_be_bytes([payload[0], payload[1]]);
            let cols = u16::from_be_bytes([payload[2], payload[3]]);
            if let Some(master) = stdio.out[0].as_ref() {
                resize(master, rows, cols);
            }
        }
        Kind::Signal if payload.len() == 4 && !exited => {
            let number = i32::from_be_bytes(payload.try_into().expect("4 bytes"));
            if let Ok(signal) = Signal::try_from(number) {
                let _ = nix::sys::signal::kill(init, signal);
            }
        }
        _ => {}
    }
}

/// Sends a frame to the engine if one is connected; a failed write
/// forgets it (it reconnects and reads the log).
fn send(client: &mut Option<(UnixStream, Decoder)>, kind: Kind, payload: &[u8]) {
    if let Some((stream, _)) = client.as_mut() {
        if frame::write(stream, kind, payload).is_err() {
            *client = None;
        }
    }
}

/// Reaps every exited child; the init's exit code if it was among them.
fn reap(init: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == init => code = Some(c),
            Ok(WaitStatus::Signaled(pid, s, _)) if pid == init => code = Some(128 + s as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}

fn write_exit(record: &Exit) -> Result<(), RuntimeError> {
    let tmp = format!(".{EXIT_FILE}.tmp");
    let write = || -> std::io::Result<()> {
        // Atomic, not synced: the record must survive the agent's restart,
        // not the machine's.
        let mut f = File::create(&tmp)?;
        serde_json::to_writer(&mut f, record)?;
        std::fs::rename(&tmp, EXIT_FILE)
    };
    write().map_err(RuntimeError::io("record the exit"))
}

/// Points one of descriptors 0-2 at `to`. The descriptor stays the
/// process's stdio: it is never owned (and so never closed) here.
fn replace_stdio(to: std::os::fd::BorrowedFd<'_>, target: RawFd) -> nix::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: 0-2 are this process's stdio, which nothing else in this
    // single-threaded process holds as an owned descriptor.
    let fd = unsafe { nix::unistd::dup2_raw(to, target) }?;
    let _ = fd.into_raw_fd();
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RuntimeError::sys("make a pipe"))
}

/// Takes the pty master the container's init sends over the console socket.
fn receive_pty(console: &UnixListener) -> Result<File, RuntimeError> {
    let (stream, _) = console
        .accept()
        .map_err(RuntimeError::io("accept on the console socket"))?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(RuntimeError::sys("receive the pty"))?;
    for cmsg in msg.cmsgs().map_err(RuntimeError::sys("receive the pty"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our
                // table for us; nothing else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(RuntimeError::Io {
        action: "receive the pty".into(),
        source: std::io::Error::other("no descriptor came over the console socket"),
    })
}

/// Sets a terminal's size.
pub fn resize(tty: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
    unsafe {
        nix::libc::ioctl(tty.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}
