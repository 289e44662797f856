//! An agent serving the Docker Engine API on a socket of its own, the
//! real `docker` CLI pointed at it, and a registry holding a busybox
//! image (every applet, `/etc/passwd`, `/etc/group`) for it to pull.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{entry, file, LayerFn, Layout, Registry};

/// The docker CLI: `/usr/local/bin/docker` if there, else `docker` on PATH.
pub fn docker_cli() -> PathBuf {
    let local = Path::new("/usr/local/bin/docker");
    if local.exists() {
        return local.to_owned();
    }
    PathBuf::from("docker")
}

/// A busybox root: every applet busybox lists, users and groups.
pub fn busybox_root() -> LayerFn {
    Box::new(|t| {
        for d in [
            "bin", "etc", "tmp", "proc", "dev", "sys", "root", "home", "var", "usr",
        ] {
            entry(t, d, tar::EntryType::Directory, None);
        }
        let busybox = std::fs::read("/usr/bin/busybox").unwrap();
        file(t, "bin/busybox", &busybox, 0o755);
        let list = Command::new("/usr/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                entry(
                    t,
                    &format!("bin/{applet}"),
                    tar::EntryType::Symlink,
                    Some("busybox"),
                );
            }
        }
        file(
            t,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        );
        file(t, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
    })
}

/// An agent with the Docker API, stopped (and its containers killed) on drop.
pub struct Engine {
    child: Child,
    /// The agent's root.
    pub root: tempfile::TempDir,
    /// The registry with `busybox:latest`.
    pub registry: Registry,
    extra: Vec<String>,
}

impl Engine {
    /// Starts a registry with busybox in it, then the agent.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Engine::start`], the agent given `extra` arguments.
    ///
    /// Tests run side by side on one host, so each agent gets a default
    /// network of its own (`--bridge-subnet`, unless `extra` names one):
    /// two agents choosing alike while both idle would both route it.
    pub fn start_with(extra: &[String]) -> Self {
        static NEXT_SUBNET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mut extra = extra.to_vec();
        if !extra.iter().any(|a| a == "--bridge-subnet") {
            let n = NEXT_SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
            extra.push("--bridge-subnet".into());
            extra.push(format!("10.213.{n}.0/24"));
        }
        let extra = &extra[..];
        let registry = Registry::start();
        Layout::new(&[busybox_root()], None).push(&registry, "busybox:latest");
        let root = tempfile::Builder::new()
            .prefix("bd")
            .tempdir_in("/tmp")
            .unwrap();
        let child = Self::spawn(root.path(), extra);
        Engine {
            child,
            root,
            registry,
            extra: extra.to_vec(),
        }
    }

    fn spawn(root: &Path, extra: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("agent.log"))
            .unwrap();
        let child = Command::new(crate::bin("berth-agent"))
            .arg("serve")
            .arg("--root")
            .arg(root.join("state"))
            .arg("--listen")
            .arg(format!("unix:{}", root.join("agent.sock").display()))
            .arg("--docker-socket")
            .arg(root.join("docker.sock"))
            .args(extra)
            .env("BERTH_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(root.join("docker.sock")).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not serve the docker socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops the agent (SIGTERM) and starts it again on the same root.
    pub fn restart_agent(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        self.child = Self::spawn(self.root.path(), &self.extra);
    }

    /// `unix://…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.root.path().join("docker.sock").display())
    }

    /// The image name tests run: `127.0.0.1:PORT/busybox`.
    pub fn busybox(&self) -> String {
        format!("{}/busybox", self.registry.host)
    }

    /// A `docker` command pointed at the agent.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_cli());
        c.args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.root.path().join("docker-config"))
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// Runs `docker args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs `docker args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}{}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The end of the agent's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Containers outlive the agent by design, and bridges and NAT rules
        // are the host's: all of them go, as with `berth rm`.
        let _ = Command::new(crate::bin("berth-agent"))
            .arg("purge")
            .arg("--root")
            .arg(self.root.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A command run on a pseudo-terminal of the test's own, as a user's
/// shell runs it: the terminal is its controlling terminal, and resizing
/// it sends SIGWINCH to it.
pub struct Pty {
    master: std::fs::File,
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    /// Starts `command` on a new terminal of `rows`×`cols`.
    pub fn spawn(mut command: Command, rows: u16, cols: u16) -> Pty {
        use std::os::unix::process::CommandExt;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        command
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap());
        // SAFETY: between fork and exec the closure calls only setsid and
        // ioctl, both async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(slave);
        let master = std::fs::File::from(pty.master);
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
        }
    }

    /// Types `text` on the terminal.
    pub fn write(&mut self, text: &str) {
        use std::io::Write;
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Resizes the terminal (its foreground process gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
        unsafe {
            nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size);
        }
    }

    /// Everything shown on the terminal so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal shows `text`; panics after `timeout`.
    pub fn expect(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {text:?}; it shows:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the command to end; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the command did not end; it shows:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
