//! `berth-agent runtime` on real bundles (busybox from Debian), with the
//! same bundle run under Debian's `runc` to show that the outputs agree.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::runtime::{ok, runc_run, runtime, state_root, status};
use berth_tests::{bin, require_root, BusyboxBundle};

const PROBE: &str = "echo pid=$$; hostname; ls /sys/class/net; \
    grep -c . /proc/self/mountinfo; ls /proc/self/fd; id -u";

#[test]
fn isolation_matches_runc() {
    require_root();
    let bundle = BusyboxBundle::new(&["sh", "-c", PROBE], |_| {});
    let root = state_root();
    let ours = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "probe"],
    ));
    let lines: Vec<&str> = ours.lines().collect();
    assert_eq!(lines[0], "pid=1", "{ours}");
    assert_eq!(lines[1], "berthbox");
    assert_eq!(lines[2], "lo", "only the loopback interface: {ours}");
    // Only the container's own mounts, none of the host's.
    let mounts: usize = lines[3].parse().unwrap();
    let host: usize = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert!(mounts < 15 && mounts < host, "{mounts} mounts inside");
    // 0, 1, 2 and the descriptor ls uses to read the directory: nothing leaked.
    assert_eq!(&lines[4..8], ["0", "1", "2", "3"], "{ours}");
    assert_eq!(lines[8], "0");
    assert!(
        !root.path().join("probe").exists(),
        "run deletes the container"
    );

    assert_eq!(ours, runc_run(&bundle, "probe"), "berth and runc disagree");
}

#[test]
fn exit_codes_and_signals_come_back() {
    require_root();
    let root = state_root();
    let exit3 = BusyboxBundle::new(&["sh", "-c", "exit 3"], |_| {});
    let out = runtime(
        root.path(),
        &["run", "-b", exit3.path().to_str().unwrap(), "e3"],
    );
    assert_eq!(out.status.code(), Some(3));

    // A foreground run killed from outside reports 128+9.
    let sleeper = BusyboxBundle::new(&["sleep", "1000"], |_| {});
    let mut run = Command::new(bin("berth-agent"))
        .arg("runtime")
        .arg("--root")
        .arg(root.path())
        .args(["run", "-b", sleeper.path().to_str().unwrap(), "sl"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime(root.path(), &["state", "sl"]).status.code() != Some(0)
        || status(root.path(), "sl") != "running"
    {
        assert!(Instant::now() < deadline, "container never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(runtime(root.path(), &["kill", "sl", "KILL"]));
    assert_eq!(run.wait().unwrap().code(), Some(137));
}

#[test]
fn create_start_state_kill_delete() {
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(&["sleep", "1000"], |_| {});
    let b = bundle.path().to_str().unwrap();
    let pid_file = root.path().join("pid");
    ok(runtime(
        root.path(),
        &[
            "create",
            "-b",
            b,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ],
    ));
    assert_eq!(status(root.path(), "c1"), "created");
    let state: serde_json::Value =
        serde_json::from_str(&ok(runtime(root.path(), &["state", "c1"]))).unwrap();
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], b);
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());

    let dup = runtime(root.path(), &["create", "-b", b, "c1"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    assert!(!dup.status.success());

    ok(runtime(root.path(), &["start", "c1"]));
    assert_eq!(status(root.path(), "c1"), "running");
    let again = runtime(root.path(), &["start", "c1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("it is running"));
    assert_eq!(ok(runtime(root.path(), &["list", "-q"])), "c1\n");

    let refused = runtime(root.path(), &["delete", "c1"]);
    assert!(!refused.status.success());
    ok(runtime(root.path(), &["kill", "c1", "9"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(root.path(), "c1") != "stopped" {
        assert!(Instant::now() < deadline, "never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(runtime(root.path(), &["delete", "c1"]));
    assert_eq!(ok(runtime(root.path(), &["list", "-q"])), "");
    let gone = runtime(root.path(), &["state", "c1"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));

    // delete --force takes a running container down.
    ok(runtime(root.path(), &["run", "-d", "-b", b, "c2"]));
    assert_eq!(status(root.path(), "c2"), "running");
    ok(runtime(root.path(), &["delete", "--force", "c2"]));
    assert_eq!(ok(runtime(root.path(), &["list", "-q"])), "");
}

#[test]
fn read_only_rootfs_refuses_writes() {
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(
        &["sh", "-c", "touch /x 2>&1; echo rc=$?; touch /tmp/y"],
        |c| {
            c["root"]["readonly"] = true.into();
        },
    );
    let out = runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "ro"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Read-only file system"), "{stdout}");
    assert!(stdout.contains("rc=1"), "{stdout}");
    assert_ne!(out.status.code(), Some(0));
    assert!(!bundle.path().join("rootfs/x").exists());
}

#[test]
fn bad_bundles_are_refused_clearly() {
    require_root();
    let root = state_root();
    let empty = tempfile::tempdir().unwrap();
    let out = runtime(
        root.path(),
        &["create", "-b", empty.path().to_str().unwrap(), "x"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bundle"));

    let bundle = BusyboxBundle::new(&["no-such-program"], |_| {});
    let out = runtime(
        root.path(),
        &["create", "-b", bundle.path().to_str().unwrap(), "x"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-program"), "{stderr}");
    assert!(
        !root.path().join("x").exists(),
        "a failed create leaves nothing"
    );

    let out = runtime(
        root.path(),
        &["create", "-b", bundle.path().to_str().unwrap(), "../x"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid container id"));
}

/// The host-side directory of a container's cgroup for `controller`.
fn cgroup_dir(controller: &str, id: &str) -> std::path::PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.join("berth").join(id)
    } else {
        root.join(controller).join("berth").join(id)
    }
}

#[test]
fn a_memory_limit_oom_kills() {
    require_root();
    let root = state_root();
    // dd fills a 64 MiB buffer: fine without a limit, fatal under 16 MiB.
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd=$?";
    let limited = BusyboxBundle::new(&["sh", "-c", script], |c| {
        c["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 16 << 20, "swap": 16 << 20}});
    });
    let out = runtime(
        root.path(),
        &["run", "-b", limited.path().to_str().unwrap(), "oom"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "dd=137\n",
        "OOM-killed"
    );
    let free = BusyboxBundle::new(&["sh", "-c", script], |_| {});
    let out = runtime(
        root.path(),
        &["run", "-b", free.path().to_str().unwrap(), "free"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dd=0\n");
    assert!(
        !cgroup_dir("memory", "oom").exists(),
        "cgroup removed on delete"
    );
}

#[test]
fn a_pids_limit_stops_a_fork_bomb() {
    require_root();
    let root = state_root();
    // The bomb runs in a child shell, which dies at its first failed fork;
    // the processes are counted by a glob, which needs no fork.
    let script = "sh -c 'i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done' 2>/dev/null; \
                  set -- /proc/[0-9]*; echo $#";
    let limited = BusyboxBundle::new(&["sh", "-c", script], |c| {
        c["linux"]["resources"] = serde_json::json!({"pids": {"limit": 10}});
    });
    let out = runtime(
        root.path(),
        &["run", "-b", limited.path().to_str().unwrap(), "bomb"],
    );
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(count <= 10, "{count} processes under pids.max=10");
    let free = BusyboxBundle::new(&["sh", "-c", script], |_| {});
    let out = runtime(
        root.path(),
        &["run", "-b", free.path().to_str().unwrap(), "nobomb"],
    );
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(count > 40, "{count} processes without a limit");
}

#[test]
fn a_cpu_quota_throttles() {
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(&["sh", "-c", "while :; do :; done"], |c| {
        c["linux"]["resources"] = serde_json::json!({"cpu": {"quota": 10000, "period": 100000}});
    });
    ok(runtime(
        root.path(),
        &["run", "-d", "-b", bundle.path().to_str().unwrap(), "spin"],
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let stat = std::fs::read_to_string(cgroup_dir("cpu", "spin").join("cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    ok(runtime(root.path(), &["delete", "-f", "spin"]));
    assert!(throttled > 0, "never throttled: {stat}");
    assert!(!cgroup_dir("cpu", "spin").exists());
}

#[test]
fn rlimits_apply_or_fail_clearly() {
    require_root();
    let root = state_root();
    let current: u64 = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let wanted = current + 1;
    // Whether this host lets root raise a hard limit (ours does not).
    let host_allows = Command::new("sh")
        .args(["-c", &format!("ulimit -Hn {wanted}")])
        .status()
        .unwrap()
        .success();
    let bundle = BusyboxBundle::new(&["sh", "-c", "ulimit -Hn; ulimit -Sn"], |c| {
        c["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "hard": wanted, "soft": 512}
        ]);
    });
    let out = runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "rl"],
    );
    if host_allows {
        assert_eq!(ok(out), format!("{wanted}\n512\n"));
    } else {
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("set rlimit RLIMIT_NOFILE to 512/"),
            "{stderr}"
        );
        assert!(stderr.contains("CAP_SYS_RESOURCE"), "{stderr}");
    }
    // A limit within the hard one applies wherever.
    let bundle = BusyboxBundle::new(&["sh", "-c", "ulimit -Sn"], |c| {
        c["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "hard": current, "soft": 256}
        ]);
    });
    let out = runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "rl2"],
    );
    assert_eq!(ok(out), "256\n");
}

/// runc's default capability set (`runc spec`): no CAP_SYS_ADMIN.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[test]
fn dropped_capabilities_are_gone_as_under_runc() {
    require_root();
    let script = "grep ^Cap /proc/self/status; hostname changed 2>&1; echo rc=$?";
    let bundle = BusyboxBundle::new(&["sh", "-c", script], |c| {
        let set = serde_json::json!(DEFAULT_CAPS);
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": set, "effective": set, "permitted": set, "ambient": set
        });
    });
    let root = state_root();
    let ours = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "caps"],
    ));
    assert!(ours.contains("Operation not permitted"), "{ours}");
    assert!(ours.contains("rc=1"), "{ours}");
    assert_eq!(
        ours,
        runc_run(&bundle, "caps"),
        "berth and runc disagree on capabilities"
    );

    // With CAP_SYS_ADMIN granted, the same call succeeds.
    let bundle = BusyboxBundle::new(&["sh", "-c", "hostname changed && hostname"], |c| {
        let mut caps: Vec<&str> = DEFAULT_CAPS.to_vec();
        caps.push("CAP_SYS_ADMIN");
        let set = serde_json::json!(caps);
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": set, "effective": set, "permitted": set
        });
    });
    let out = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "admin"],
    ));
    assert_eq!(out, "changed\n");
}

#[test]
fn the_container_cannot_overwrite_the_agent() {
    require_root();
    let agent = bin("berth-agent");
    let before = std::fs::read(&agent).unwrap();
    let script =
        "for f in /proc/self/exe /proc/1/exe; do echo x > $f 2>/dev/null && echo wrote $f; done; \
                  echo done";
    let bundle = BusyboxBundle::new(&["sh", "-c", script], |_| {});
    let root = state_root();
    let out = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "exe"],
    ));
    assert_eq!(out, "done\n");
    assert!(
        std::fs::read(&agent).unwrap() == before,
        "the agent binary changed"
    );
}

#[test]
fn many_short_containers_all_report_their_init() {
    // The init's pid and its "ready" arrive on one pipe in either order;
    // a quick container makes both orders happen (a race found by the bench).
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(&["true"], |_| {});
    for i in 0..150 {
        let id = format!("q{i}");
        ok(runtime(
            root.path(),
            &["run", "-b", bundle.path().to_str().unwrap(), &id],
        ));
    }
    assert_eq!(ok(runtime(root.path(), &["list", "-q"])), "");
}

#[test]
fn a_seccomp_profile_blocks_what_it_names_as_under_runc() {
    require_root();
    let script = "mkdir /tmp/blocked 2>&1; echo mkdir=$?; touch /tmp/allowed && echo touch=$?; \
                  grep ^Seccomp: /proc/self/status";
    let bundle = BusyboxBundle::new(&["sh", "-c", script], |c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["not_a_syscall_anywhere"], "action": "SCMP_ACT_KILL"}
            ]
        });
    });
    let root = state_root();
    let ours = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "sc"],
    ));
    assert!(ours.contains("Operation not permitted"), "{ours}");
    assert!(ours.contains("mkdir=1"), "{ours}");
    assert!(ours.contains("touch=0"), "{ours}");
    assert!(ours.contains("Seccomp:\t2"), "filter mode: {ours}");
    assert!(!bundle.path().join("rootfs/tmp/blocked").exists());
    assert_eq!(
        ours,
        runc_run(&bundle, "sc"),
        "berth and runc disagree on seccomp"
    );
}

#[test]
fn ps_lists_a_containers_processes_and_a_pid_namespace_can_be_joined() {
    require_root();
    let root = state_root();
    let first = BusyboxBundle::new(&["sh", "-c", "sleep 1000 & sleep 1001"], |_| {});
    ok(runtime(
        root.path(),
        &["run", "-d", "-b", first.path().to_str().unwrap(), "one"],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids: Vec<i64> = loop {
        let pids: Vec<i64> = serde_json::from_str(&ok(runtime(
            root.path(),
            &["ps", "--format", "json", "one"],
        )))
        .unwrap();
        // sh execs its last command: two sleeps, one of them the init.
        if pids.len() == 2 {
            break pids;
        }
        assert!(Instant::now() < deadline, "expected two sleeps: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let table = ok(runtime(root.path(), &["ps", "one"]));
    assert!(
        table.contains("sleep 1000") && table.contains("sleep 1001"),
        "{table}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&ok(runtime(root.path(), &["state", "one"]))).unwrap();
    let init = state["pid"].as_i64().unwrap();
    assert!(pids.contains(&init), "{pids:?} lacks the init {init}");

    // A second container in the first one's PID namespace sees its processes.
    let second = BusyboxBundle::new(&["sh", "-c", "ps -o args | grep -c '^sleep 100'"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid", "path": format!("/proc/{init}/ns/pid")},
            {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}
        ]);
    });
    let out = ok(runtime(
        root.path(),
        &["run", "-b", second.path().to_str().unwrap(), "two"],
    ));
    assert_eq!(out, "2\n");
    ok(runtime(root.path(), &["delete", "-f", "one"]));
}

#[test]
fn hooks_see_each_state_and_a_failing_one_stops_create() {
    require_root();
    let root = state_root();
    let out = tempfile::tempdir().unwrap();
    let hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", out.path().display())],
            "timeout": 10
        })
    };
    let bundle = BusyboxBundle::new(&["sleep", "1000"], |c| {
        c["hooks"] = serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")]
        });
    });
    let b = bundle.path().to_str().unwrap();
    ok(runtime(root.path(), &["create", "-b", b, "h"]));
    ok(runtime(root.path(), &["start", "h"]));
    ok(runtime(root.path(), &["delete", "--force", "h"]));
    let seen = |name: &str| -> serde_json::Value {
        let path = out.path().join(format!("{name}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap()
    };
    assert_eq!(seen("prestart")["status"], "creating");
    assert_eq!(seen("createRuntime")["id"], "h");
    assert_eq!(seen("poststart")["status"], "running");
    assert_eq!(seen("poststop")["status"], "stopped");
    assert!(seen("prestart")["pid"].as_i64().unwrap() > 0);

    let failing = BusyboxBundle::new(&["true"], |c| {
        c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]});
    });
    let res = runtime(
        root.path(),
        &["create", "-b", failing.path().to_str().unwrap(), "f"],
    );
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("prestart hook /bin/false"));
    assert!(
        !root.path().join("f").exists(),
        "a failed create leaves nothing"
    );
}

#[test]
fn a_terminal_is_handed_over_the_console_socket() {
    use std::io::{IoSliceMut, Read};
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

    require_root();
    let root = state_root();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut name = [0u8; 64];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut name)];
        let msg = recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("a pty master in SCM_RIGHTS");
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let mut master = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut out = Vec::new();
        // Reading the master ends with EIO once the container's side closes.
        let _ = master.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let bundle = BusyboxBundle::new(&["sh", "-c", "tty; stty size; echo hello"], |c| {
        c["process"]["terminal"] = true.into();
        c["process"]["consoleSize"] = serde_json::json!({"height": 24, "width": 80});
    });
    ok(runtime(
        root.path(),
        &[
            "run",
            "-d",
            "--console-socket",
            socket_path.to_str().unwrap(),
            "-b",
            bundle.path().to_str().unwrap(),
            "tty",
        ],
    ));
    let screen = receiver.join().unwrap();
    assert!(screen.contains("/dev/pts/0"), "{screen:?}");
    assert!(screen.contains("24 80"), "{screen:?}");
    assert!(
        screen.contains("hello\r\n"),
        "a terminal turns \\n into \\r\\n: {screen:?}"
    );

    // terminal without a console socket is refused before anything runs.
    let out = runtime(
        root.path(),
        &["create", "-b", bundle.path().to_str().unwrap(), "t2"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--console-socket"));
    assert!(!root.path().join("t2").exists());
}
