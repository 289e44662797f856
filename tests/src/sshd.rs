//! A separate SSH host for the remote-host tests: Debian's OpenSSH `sshd`
//! in a network namespace of its own (reached over a veth pair at its own
//! address) and a mount namespace of its own, where the paths a Berth
//! provisioning writes (`/usr/local/bin`, `/etc/berth-agent`,
//! `/var/lib/berth-agent`, `/run/berth-agent`, `/var/log`) are the test's
//! directories — what it installs stays out of this machine's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The directories a provisioning writes, each replaced in the host's
/// mount namespace by one of the test's.
const PRIVATE_DIRS: [&str; 5] = [
    "/usr/local/bin",
    "/etc/berth-agent",
    "/var/lib/berth-agent",
    "/run/berth-agent",
    "/var/log",
];

/// How the host is made.
#[derive(Debug, Clone, Default)]
pub struct SshHostOptions {
    /// What `uname -m` says on the host, when it must not be the truth.
    pub fake_arch: Option<String>,
}

/// An SSH host; torn down (every process in it killed) on drop.
pub struct SshHost {
    /// The network namespace.
    pub netns: String,
    /// The host's address.
    pub ip: String,
    /// A key the host accepts for root.
    pub key: PathBuf,
    /// A known_hosts file with the host's key.
    pub known_hosts: PathBuf,
    /// The test's directory.
    pub dir: tempfile::TempDir,
    sshd: Child,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "berth-test",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

impl SshHost {
    /// Starts a host.
    pub fn start() -> Self {
        Self::start_with(&SshHostOptions::default())
    }

    /// Starts a host made as `options` say.
    pub fn start_with(options: &SshHostOptions) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed)) % 200 + 20;
        let netns = format!("berth-ssh-{n}");
        let (host_if, ns_if) = (format!("bsh{n}"), format!("bsn{n}"));
        let (host_ip, ip) = (format!("10.77.{n}.1"), format!("10.77.{n}.2"));
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run("ip", &["netns", "add", &netns]);
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        run("ip", &["link", "set", &ns_if, "netns", &netns]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        in_ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &ns_if]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "route", "add", "default", "via", &host_ip]);

        let dir = tempfile::Builder::new()
            .prefix("sshhost")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_pub: Vec<&str> = host_pub.split_whitespace().collect();
        std::fs::write(
            d.join("known_hosts"),
            format!("{ip} {} {}\n", host_pub[0], host_pub[1]),
        )
        .unwrap();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port 22\nListenAddress {ip}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nAllowStreamLocalForwarding yes\nPrintMotd no\nLogLevel ERROR\n",
                d = d.display()
            ),
        )
        .unwrap();
        // The host's private directories, bound over the real ones in its
        // own mount namespace only.
        let mut script = String::from("set -e\n");
        for (i, path) in PRIVATE_DIRS.iter().enumerate() {
            let mine = d.join(format!("fs{i}"));
            std::fs::create_dir_all(&mine).unwrap();
            std::fs::create_dir_all(path).unwrap();
            script.push_str(&format!("mount --bind {} {path}\n", mine.display()));
        }
        if let Some(arch) = &options.fake_arch {
            // First on PATH on the host: a uname that tells another machine.
            let fake = d.join("fs0/uname");
            std::fs::write(
                &fake,
                format!("#!/bin/sh\ncase \"$1\" in -m) echo {arch} ;; *) /usr/bin/uname \"$@\" ;; esac\n"),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all("/run/sshd").unwrap();
        script.push_str(&format!(
            "exec /usr/sbin/sshd -D -e -f {}/sshd_config\n",
            d.display()
        ));
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        // nsenter, not `ip netns exec`: that one mounts a sysfs of the
        // namespace's over /sys, which hides the cgroup hierarchies the
        // agent's containers need.
        let sshd = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let host = SshHost {
            netns,
            ip,
            key: d.join("client_key"),
            known_hosts: d.join("known_hosts"),
            dir,
            sshd,
        };
        host.wait_for_port(22);
        host
    }

    /// Waits until something listens on `port` of the host.
    pub fn wait_for_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("{}:{port}", self.ip).parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {}:{port}; sshd said: {}",
                self.ip,
                std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host's view of one of its private directories (by its path
    /// there, e.g. `/usr/local/bin`).
    pub fn path(&self, remote: &str) -> PathBuf {
        for (i, path) in PRIVATE_DIRS.iter().enumerate() {
            if let Ok(rest) = Path::new(remote).strip_prefix(path) {
                return self.dir.path().join(format!("fs{i}")).join(rest);
            }
        }
        panic!("{remote} is not one of the host's own directories");
    }

    /// The processes running in the host's network namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether a process whose command line contains `text` runs there.
    pub fn runs(&self, text: &str) -> bool {
        self.pids().into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(text)
                })
                .unwrap_or(false)
        })
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        for _ in 0..3 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
