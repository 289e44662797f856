//! Driving `berth-agent runtime` and Debian's `runc` on the same bundles.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::{bin, BusyboxBundle};

/// A runtime state root of the test's own.
pub fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rt")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Runs `command` with its output going through files, not pipes: a
/// created container inherits the runtime's stdio and would hold a pipe
/// open long after the runtime has exited.
pub fn collect(mut command: Command) -> Output {
    let stdout = tempfile::tempfile().unwrap();
    let stderr = tempfile::tempfile().unwrap();
    let status = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut buf = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut buf).unwrap();
        buf
    };
    Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// Runs `berth-agent runtime --root ROOT ARGS`.
pub fn runtime(root: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(bin("berth-agent"));
    command.arg("runtime").arg("--root").arg(root).args(args);
    collect(command)
}

/// Runs Debian's `runc --root ROOT ARGS`.
pub fn runc(root: &Path, args: &[&str]) -> Output {
    let mut command = Command::new("runc");
    command.arg("--root").arg(root).args(args);
    collect(command)
}

/// Asserts that the command succeeded and returns its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The status `state` reports for container `id`.
pub fn status(root: &Path, id: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_str(&ok(runtime(root, &["state", id]))).unwrap();
    state["status"].as_str().unwrap().to_owned()
}

/// Runs `bundle` under Debian's runc (in a state root of its own) and
/// returns what the container printed.
pub fn runc_run(bundle: &BusyboxBundle, id: &str) -> String {
    let runc_root = state_root();
    ok(runc(
        runc_root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), id],
    ))
}
