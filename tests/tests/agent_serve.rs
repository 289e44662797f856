//! `berth-agent serve` on its own: one agent per root, safe socket
//! handling, a clean stop on SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::bin;

fn serve(root: &std::path::Path, socket: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin("berth-agent"));
    cmd.arg("serve")
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A scratch directory under /tmp (a socket's path must be short), and
/// the paths of a root and a socket in it.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ag")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("agent.sock");
    (dir, root, socket)
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn one_agent_per_root_and_a_clean_sigterm() {
    let (dir, root, socket) = scratch();
    let first = serve(&root, &socket).spawn().unwrap();
    wait_for(&socket);

    let second = serve(&root, &dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "another berth-agent (pid {}) already serves",
            first.id()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("other.sock").exists());

    sigterm(&first);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "exit on SIGTERM: {}", out.status);
    assert!(String::from_utf8_lossy(&out.stderr).contains("signal=\"SIGTERM\""));
    assert!(!socket.exists(), "socket removed on a clean stop");
    assert!(!root.join("agent.pid").exists(), "pid file removed");
}

/// `serve` with `--wait-for-root` on a pipe it inherits, and the pipe's
/// other end.
fn serve_waiting(root: &std::path::Path, socket: &std::path::Path) -> (Child, std::io::PipeWriter) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::os::unix::process::CommandExt;
    let (reader, writer) = std::io::pipe().unwrap();
    let fd = reader.as_raw_fd();
    let mut cmd = serve(root, socket);
    cmd.arg("--wait-for-root").arg(fd.to_string());
    // SAFETY: fcntl(2) on a descriptor number is async-signal-safe; the
    // descriptor is open (the reader lives until after spawn).
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(reader);
    (child, writer)
}

#[test]
fn with_wait_for_root_it_serves_only_after_the_go_ahead() {
    use std::io::Write;
    let (_dir, root, socket) = scratch();
    let (child, mut go_ahead) = serve_waiting(&root, &socket);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!root.exists(), "the root was taken before the go-ahead");
    // The link's stage: still not the root's.
    go_ahead.write_all(b"l").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!root.exists(), "the root was taken at the link's go-ahead");
    assert!(!socket.exists());
    go_ahead.write_all(b"r").unwrap();
    wait_for(&socket);
    assert!(root.join("agent.pid").exists());
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit on SIGTERM: {}", out.status);

    // A pipe closed without the byte: init gave up; the agent ends.
    let (child, go_ahead) = serve_waiting(&root, &socket);
    drop(go_ahead);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the guest's init gave up before the agent's root was ready"),
        "{stderr}"
    );
    assert!(!socket.exists());

    for (fd, says) in [("1", "1 is a standard stream"), ("99", "descriptor 99: ")] {
        let out = serve(&root, &socket)
            .args(["--wait-for-root", fd])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("--wait-for-root: {says}")),
            "{stderr}"
        );
    }
}

#[test]
fn never_removes_what_is_not_a_stale_socket() {
    let (dir, _, path) = scratch();

    // A regular file in the way is kept, and the agent says why it stops.
    std::fs::write(&path, "precious").unwrap();
    let out = serve(&dir.path().join("r1"), &path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_file(&path).unwrap();

    // A socket someone serves on is not taken over.
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let out = serve(&dir.path().join("r2"), &path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    drop(live);

    // The same socket, now stale, is replaced.
    let agent = serve(&dir.path().join("r3"), &path).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(Instant::now() < deadline, "agent never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&agent);
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("removing stale socket"));
}
