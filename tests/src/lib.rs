//! The harness for Berth's end-to-end tests: runs the built `berth` and
//! `berth-agent` binaries as a user would, each test in a home of its own.
//!
//! The binaries come from the same target directory as the test; build
//! them first (`cargo build --workspace --bins`), as `scripts/test` does.

pub mod docker;
pub mod moto;
pub mod registry;
pub mod runtime;
pub mod sshd;
pub mod token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of a binary built in this workspace's target directory.
pub fn bin(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps/; binaries sit in target/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The static (musl) agent the guest image build makes, if it was built:
/// what provisioning uploads to remote hosts (a tenth of the debug build).
pub fn static_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    let path = target.join("x86_64-unknown-linux-musl/guest/berth-agent");
    path.is_file().then_some(path)
}

/// A `berth` with its own BERTH_HOME, removed (machines first) when dropped.
pub struct Berth {
    home: tempfile::TempDir,
}

impl Default for Berth {
    fn default() -> Self {
        Self::new()
    }
}

impl Berth {
    /// A fresh, empty home.
    pub fn new() -> Self {
        Berth {
            home: tempfile::Builder::new()
                .prefix("bt")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    /// BERTH_HOME.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The directory of machine `name`.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.home().join("machines").join(name)
    }

    /// A `berth` command in this home, with a predictable environment.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(bin("berth"));
        cmd.args(args)
            .env("BERTH_HOME", self.home())
            .env("BERTH_AGENT", bin("berth-agent"))
            .envs(static_agent().map(|a| ("BERTH_AGENT_X86_64", a)))
            .env("SHELL", "/bin/bash")
            .env_remove("DOCKER_HOST")
            .env_remove("BERTH_LOG")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs `berth ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `berth ARGS`, asserts it succeeded, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `berth ARGS`, asserts it failed with exit code `code`, printed
    /// nothing on stdout, one line on stderr and no panic; returns that line.
    pub fn fails_with(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "berth {args:?} should exit {code}; stderr: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "berth {args:?} panicked: {stderr}"
        );
        assert!(out.stdout.is_empty(), "berth {args:?} printed on stdout");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines.last().copied().unwrap_or_default().to_owned();
        assert!(!last.is_empty(), "berth {args:?} failed silently");
        last
    }

    /// Runs `berth ARGS` and asserts the usual failure (exit 1).
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with(1, args)
    }

    /// The pid of the agent of machine `name`, read from its pid file.
    pub fn agent_pid(&self, name: &str) -> i32 {
        let path = self.machine_dir(name).join("agent/agent.pid");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// Every file under `dir` with its content (sockets and directories as
    /// markers), to show that an operation left a machine untouched.
    pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let kind = entry.file_type().unwrap();
                let rel = path.strip_prefix(dir).unwrap().to_owned();
                if kind.is_dir() {
                    out.insert(rel, b"<dir>".to_vec());
                    stack.push(path);
                } else if kind.is_file() {
                    out.insert(rel, std::fs::read(&path).unwrap());
                } else {
                    out.insert(rel, b"<special>".to_vec());
                }
            }
        }
        out
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        // Stop every agent this home started, even when a test failed.
        if let Ok(out) = self.command(["ls", "-q", "-t", "2"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.command(["rm", "-f", "-y", name]).output();
            }
        }
    }
}

/// Whether process `pid` has exited. A dead agent is adopted by whatever
/// reaps orphans on this machine; until that happens it is a zombie, which
/// counts as gone.
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Runs `script` in `shell -c` and returns stdout, asserting success.
pub fn shell(shell: &str, script: &str, envs: &[(&str, &str)]) -> String {
    let out = Command::new(shell)
        .arg("-c")
        .arg(script)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell} -c {script:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Parses `berth ls --json`.
pub fn ls_json(berth: &Berth) -> Vec<serde_json::Value> {
    serde_json::from_str(&berth.ok(&["ls", "--json"])).unwrap()
}

/// An OCI bundle with a busybox rootfs (from Debian's `busybox-static`)
/// running `args`, in a temporary directory. `tweak` edits config.json.
pub struct BusyboxBundle {
    dir: tempfile::TempDir,
}

impl BusyboxBundle {
    /// Makes the bundle.
    pub fn new(args: &[&str], tweak: impl FnOnce(&mut serde_json::Value)) -> Self {
        let busybox = Path::new("/usr/bin/busybox");
        assert!(
            busybox.is_file(),
            "these tests need Debian's busybox-static (scripts/test installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("bundle")
            .tempdir_in("/tmp")
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        // Ask the original: the fresh copy may be open for writing in a
        // child another test thread is forking (ETXTBSY).
        let out = Command::new(busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "HOME=/"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "berthbox",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/sys"]
            }
        });
        tweak(&mut config);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        BusyboxBundle { dir }
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Asserts that the tests run as root, which namespaces and mounts need.
pub fn require_root() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the runtime tests need root (CI runs them as root)"
    );
}

/// Serves `body` once over HTTP on a loopback port, as `/name`; its URL.
pub fn serve_once(name: &str, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{name}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
    });
    url
}
