//! The stock `docker` CLI against `berth-agent`'s Docker Engine API.

use std::time::{Duration, Instant};

use berth_tests::docker::Engine;
use berth_tests::require_root;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn run_prints_output_and_passes_exit_codes() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    assert_eq!(d.ok(&["run", "--rm", &image, "echo", "hi"]), "hi\n");
    let out = d.run(&["run", &image, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // Output on stderr stays on stderr.
    let out = d.run(&["run", "--rm", &image, "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // A command that does not exist: dockerd's 127.
    let out = d.run(&["run", "--rm", &image, "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
}

#[test]
fn run_options_reach_the_process() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let out = d.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "--hostname",
        "box1",
        &image,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u) $(hostname)",
    ]);
    assert_eq!(out, "hello /tmp 65534 box1\n");
    let out = d.ok(&["run", "--rm", "--entrypoint", "echo", &image, "a", "b"]);
    assert_eq!(out, "a b\n");
    // -m and --cpus land in the cgroup.
    let out = d.ok(&[
        "run", "--rm", "-m", "64m", "--cpus", "0.5", "-l", "k=v", &image, "true",
    ]);
    assert_eq!(out, "");
    let id = d.ok(&["create", "-m", "64m", "--cpus", "0.5", "-l", "k=v", &image]);
    let id = id.trim();
    let shown = d.ok(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{index .Config.Labels \"k\"}}",
        id,
    ]);
    assert_eq!(shown, "67108864 500000000 v\n");
}

#[test]
fn detached_container_logs_follow_and_ps_shows_status() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        &image,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.3; done; sleep 30",
    ]);
    assert_eq!(id.trim().len(), 64);
    let mut follow = d
        .command(&["logs", "-f", "ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    while !seen.contains("line3") {
        assert!(Instant::now() < deadline, "logs -f showed only {seen:?}");
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "logs -f ended early: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(seen, "line1\nline2\nline3\n");
    let _ = follow.kill();
    let _ = follow.wait();

    let ps = d.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("ticker Up "), "{ps}");
    assert_eq!(d.ok(&["logs", "--tail", "1", "ticker"]), "line3\n");
    let stamped = d.ok(&["logs", "-t", "ticker"]);
    assert!(
        stamped.lines().all(|l| l.len() > 31 && &l[4..5] == "-"),
        "{stamped}"
    );

    d.ok(&["kill", "-s", "KILL", "ticker"]);
    let ps = d.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("ticker Exited (137) "), "{ps}");
    assert_eq!(d.ok(&["ps", "-q"]), "");
    assert_eq!(
        d.ok(&["ps", "-aq", "--filter", "status=exited"]).trim(),
        &id.trim()[..12]
    );
    assert_eq!(d.ok(&["wait", "ticker"]), "137\n");
}

#[test]
fn ps_filters_select_as_dockerd_does() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    for name in ["first", "second", "third"] {
        d.ok(&["create", "--name", name, &image, "true"]);
    }
    d.ok(&[
        "create",
        "--name",
        "alone",
        "--network",
        "none",
        &image,
        "true",
    ]);
    let names = |filter: &str| {
        let mut names: Vec<String> = d
            .ok(&["ps", "-a", "--format", "{{.Names}}", "--filter", filter])
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names.join(" ")
    };
    assert_eq!(names("before=second"), "first");
    assert_eq!(names("since=second"), "alone third");
    assert_eq!(names("status=created"), "alone first second third");
    assert_eq!(names("network=none"), "alone");
    assert_eq!(names("network=bridge"), "first second third");
    // Refused, as dockerd refuses them, rather than ignored.
    for (filter, error) in [
        ("colour=red", "invalid filter 'colour'"),
        ("status=asleep", "invalid filter 'status=asleep'"),
        ("publish=80", "the filter 'publish' is not supported"),
        ("before=nobody", "nobody"),
    ] {
        let out = d.run(&["ps", "-a", "--filter", filter]);
        assert!(!out.status.success(), "{filter} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(error), "{filter}: {stderr}");
    }
}

#[test]
fn stop_waits_the_timeout_then_kills() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        &image,
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ]);
    let start = Instant::now();
    d.ok(&["stop", "-t", "2", "stubborn"]);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(2), "stop took {took:?}");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let code = d.ok(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.Running}}",
        "stubborn",
    ]);
    assert_eq!(code, "137 false\n");

    // A process that honours SIGTERM goes at once (a plain `sleep` would
    // not: as its namespace's init it has no default SIGTERM action).
    d.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        &image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 60 & wait",
    ]);
    let start = Instant::now();
    d.ok(&["stop", "polite"]);
    assert!(start.elapsed() < Duration::from_secs(5));

    // rm -f of a running container.
    d.ok(&["run", "-d", "--name", "doomed", &image, "sleep", "60"]);
    let out = d.run(&["rm", "doomed"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stop the container before removing"),
        "{}",
        text(&out)
    );
    d.ok(&["rm", "-f", "doomed"]);
    let out = d.run(&["inspect", "doomed"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("No such object: doomed"),
        "{}",
        text(&out)
    );
}

#[test]
fn create_start_attach_restart_rename_and_prune() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["create", "--name", "first", &image, "echo", "from first"]);
    let ps = d.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert_eq!(ps, "first Created\n");
    assert_eq!(d.ok(&["start", "-a", "first"]), "from first\n");
    d.ok(&["rename", "first", "second"]);
    assert_eq!(d.ok(&["start", "-a", "second"]), "from first\n");
    assert_eq!(d.ok(&["logs", "second"]), "from first\nfrom first\n");
    // Names collide.
    let out = d.run(&["create", "--name", "second", &image]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is already in use"), "{}", text(&out));

    d.ok(&["run", "-d", "--name", "runner", &image, "sleep", "60"]);
    let before = d.ok(&["inspect", "-f", "{{.State.Pid}}", "runner"]);
    d.ok(&["restart", "-t", "1", "runner"]);
    let after = d.ok(&[
        "inspect",
        "-f",
        "{{.State.Pid}} {{.State.Running}}",
        "runner",
    ]);
    assert_ne!(before.trim(), after.split(' ').next().unwrap());
    assert!(after.ends_with("true\n"), "{after}\n{}", d.log_tail());

    let pruned = d.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    assert_eq!(d.ok(&["ps", "-a", "--format", "{{.Names}}"]), "runner\n");
}

#[test]
fn restart_policies_and_auto_remove() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        &image,
        "sh",
        "-c",
        "exit 1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = d.ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky",
        ]);
        if s == "2 exited\n" {
            break;
        }
        assert!(Instant::now() < deadline, "restart count stuck at {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.ok(&["run", "-d", "--rm", "--name", "brief", &image, "true"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.run(&["inspect", "brief"]).status.success() {
        assert!(Instant::now() < deadline, "--rm container still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = d.run(&["run", "--rm", "--restart", "always", &image, "true"]);
    assert!(!out.status.success());
}

#[test]
fn volumes_bind_mounts_and_named_volumes() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();
    let bind = format!("{}:/data", dir.path().display());
    let out = d.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        &image,
        "sh",
        "-c",
        "cat /data/in.txt; echo back > /data/out.txt",
    ]);
    assert_eq!(out, "from host\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "back\n"
    );

    assert_eq!(d.ok(&["volume", "create", "store"]), "store\n");
    d.ok(&[
        "run",
        "--rm",
        "-v",
        "store:/s",
        &image,
        "sh",
        "-c",
        "echo kept > /s/f",
    ]);
    assert_eq!(
        d.ok(&["run", "--rm", "-v", "store:/s", &image, "cat", "/s/f"]),
        "kept\n"
    );
    let ls = d.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert_eq!(ls, "local store\n");
    let mp = d.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "store"]);
    assert!(std::path::Path::new(mp.trim()).join("f").exists());
    d.ok(&["run", "--name", "user", "-v", "store:/s", &image, "true"]);
    let out = d.run(&["volume", "rm", "store"]);
    assert!(text(&out).contains("volume is in use"), "{}", text(&out));
    d.ok(&["rm", "user"]);
    d.ok(&["volume", "rm", "store"]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "");
    let df = d.ok(&["system", "df"]);
    assert!(
        df.contains("Images") && df.contains("Local Volumes"),
        "{df}"
    );
}

#[test]
fn mount_and_tmpfs_options_mount_what_they_say() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();

    // A read-only bind.
    let bind = format!(
        "type=bind,source={},target=/data,readonly",
        dir.path().display()
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--mount",
        &bind,
        &image,
        "sh",
        "-c",
        "cat /data/in.txt; touch /data/x 2>/dev/null || echo refused",
    ]);
    assert_eq!(out, "from host\nrefused\n");
    // A named volume, kept between containers; an anonymous one.
    d.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=kept,target=/v",
        &image,
        "sh",
        "-c",
        "echo kept > /v/f",
    ]);
    assert_eq!(
        d.ok(&["run", "--rm", "-v", "kept:/v", &image, "cat", "/v/f"]),
        "kept\n"
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--mount",
            "type=volume,target=/anon",
            &image,
            "ls",
            "-d",
            "/anon"
        ]),
        "/anon\n"
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--mount",
            "type=volume,target=/anon,readonly",
            &image,
            "sh",
            "-c",
            "touch /anon/x 2>/dev/null || echo refused",
        ]),
        "refused\n"
    );
    // Tmpfs mounts, from both options, with their sizes and flags.
    let mounts = d.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=tmpfs,target=/m,tmpfs-size=1048576",
        "--tmpfs",
        "/t:size=2m",
        &image,
        "sh",
        "-c",
        "grep -E ' /(m|t) ' /proc/mounts",
    ]);
    let line = |at: &str| {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(at))
            .unwrap_or_else(|| panic!("no tmpfs at {at}: {mounts}"))
            .to_owned()
    };
    assert!(line("/m").starts_with("tmpfs /m tmpfs") && line("/m").contains("size=1024k"));
    assert!(line("/t").contains("size=2048k") && line("/t").contains("noexec"));
    let inspect = d.ok(&["create", "--mount", &bind, "--tmpfs", "/t", &image, "true"]);
    let types = d.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}}:{{.Destination}} {{end}}",
        inspect.trim(),
    ]);
    assert_eq!(types.trim(), "bind:/data tmpfs:/t");
    let anonymous = d.ok(&[
        "create",
        "--mount",
        "type=volume,target=/anon,readonly",
        &image,
        "true",
    ]);
    let shown = d.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}}:{{.Destination}}:{{.RW}}:{{.Name}} {{end}}",
        anonymous.trim(),
    ]);
    // Named after the container, as the volume its start makes.
    assert_eq!(
        shown.trim(),
        format!("volume:/anon:false:{}0000", &anonymous.trim()[..48])
    );
    // A bind whose source went away after create: still shown, and start
    // says why it cannot mount it.
    let going = tempfile::tempdir().unwrap();
    let vanishing = format!("type=bind,source={},target=/gone", going.path().display());
    let orphan = d.ok(&["create", "--mount", &vanishing, &image, "true"]);
    drop(going);
    let shown = d.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}}:{{.Destination}} {{end}}",
        orphan.trim(),
    ]);
    assert_eq!(shown.trim(), "bind:/gone");
    let out = d.run(&["start", orphan.trim()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bind source path does not exist"),
        "{}",
        text(&out)
    );

    // What cannot be mounted is refused at create, with the reason.
    let missing = format!("type=bind,source={}/nope,target=/h", dir.path().display());
    for (args, says) in [
        (
            vec!["--mount", missing.as_str()],
            "bind source path does not exist",
        ),
        (
            vec!["--mount", "type=volume,source=v,target=rel"],
            "must be absolute",
        ),
        (
            vec!["-v", "/tmp:/d", "--tmpfs", "/d"],
            "Duplicate mount point: /d",
        ),
        (vec!["--tmpfs", "/t:bogus"], "invalid tmpfs option"),
    ] {
        let mut all = vec!["create"];
        all.extend(args.iter().copied());
        all.extend([image.as_str(), "true"]);
        let out = d.run(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}

#[test]
fn security_limit_and_name_options_apply() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let run = |opts: &[&str], script: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(opts);
        args.extend([image.as_str(), "sh", "-c", script]);
        d.ok(&args)
    };
    let caps = "grep CapEff /proc/self/status | cut -f2";
    // Docker's default set is 00000000a80425fb.
    assert_eq!(run(&["--cap-drop", "chown"], caps), "00000000a80425fa\n");
    assert_eq!(run(&["--cap-add", "NET_ADMIN"], caps), "00000000a80435fb\n");
    assert_eq!(
        run(
            &["--cap-drop", "ALL"],
            "touch /f; chown 5 /f 2>/dev/null && echo chowned || echo refused"
        ),
        "refused\n"
    );
    assert_eq!(
        run(
            &["--security-opt", "no-new-privileges"],
            "grep NoNewPrivs /proc/self/status | cut -f2"
        ),
        "1\n"
    );
    assert_eq!(
        run(&["--ulimit", "nofile=100:200"], "ulimit -n; ulimit -Hn"),
        "100\n200\n"
    );
    assert_eq!(
        run(
            &["--pids-limit", "10"],
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
        ),
        "10\n"
    );
    assert!(run(&["--group-add", "10", "--group-add", "20"], "id").contains("groups=10,20"));
    assert_eq!(
        run(
            &["--sysctl", "net.ipv4.ip_local_port_range=2000 3000"],
            "cat /proc/sys/net/ipv4/ip_local_port_range"
        ),
        "2000\t3000\n"
    );
    let hosts = run(
        &[
            "--add-host",
            "db.local:10.9.8.7",
            "--add-host",
            "me:host-gateway",
        ],
        "cat /etc/hosts",
    );
    assert!(hosts.contains("10.9.8.7\tdb.local\n"), "{hosts}");
    assert!(
        hosts
            .lines()
            .any(|l| l.ends_with("\tme") && !l.starts_with("host-gateway")),
        "{hosts}"
    );
    let resolv = run(
        &[
            "--dns",
            "9.9.9.9",
            "--dns-search",
            "example.com",
            "--dns-option",
            "ndots:2",
        ],
        "cat /etc/resolv.conf",
    );
    for line in [
        "nameserver 9.9.9.9",
        "search example.com",
        "options ndots:2",
    ] {
        assert!(resolv.lines().any(|l| l == line), "{line}: {resolv}");
    }
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");

    // What this engine cannot do is refused, not ignored.
    for (opts, says) in [
        (
            &["--privileged"][..],
            "privileged containers are not supported",
        ),
        (&["--device", "/dev/null"], "--device is not supported"),
        (&["--cap-add", "BOGUS"], "unknown capability"),
        (
            &["--security-opt", "apparmor=strict"],
            "not supported by this engine",
        ),
    ] {
        let mut args = vec!["create"];
        args.extend_from_slice(opts);
        args.extend([image.as_str(), "true"]);
        let out = d.run(&args);
        assert!(!out.status.success(), "{opts:?} was accepted");
        assert!(text(&out).contains(says), "{opts:?}: {}", text(&out));
    }
}

/// Waits until `docker inspect -f FORMAT name` prints `want`.
fn wait_for_inspect(d: &Engine, name: &str, format: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = d.ok(&["inspect", "-f", format, name]);
        if got.trim() == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {format} is {got:?}, not {want:?}\n{}",
            d.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_health_check_past_its_timeout_is_killed() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "hung",
        "--health-cmd",
        "sleep 30",
        "--health-interval",
        "1s",
        "--health-timeout",
        "1s",
        "--health-retries",
        "1",
        &image,
        "sleep",
        "300",
    ]);
    let health = || d.ok(&["inspect", "-f", "{{.State.Health.Status}}", "hung"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while health().trim() != "unhealthy" {
        assert!(Instant::now() < deadline, "never unhealthy: {}", health());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Several checks have timed out by now; none of them lives on.
    std::thread::sleep(Duration::from_secs(4));
    let ps = d.ok(&["exec", "hung", "ps"]);
    let hung = ps.lines().filter(|l| l.contains("sleep 30")).count();
    assert!(hung <= 1, "checks past their timeout still run:\n{ps}");
}

#[test]
fn health_checks_run_and_count_as_dockerd_counts_them() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "probed",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "100ms",
        "--health-retries",
        "2",
        &image,
        "sleep",
        "1000",
    ]);
    let status = "{{.State.Health.Status}}";
    wait_for_inspect(&d, "probed", status, "unhealthy");
    d.ok(&["exec", "probed", "touch", "/tmp/ok"]);
    wait_for_inspect(&d, "probed", status, "healthy");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Health.FailingStreak}}", "probed"])
            .trim(),
        "0"
    );
    let last = d.ok(&[
        "inspect",
        "-f",
        "{{(index .State.Health.Log 0).ExitCode}}",
        "probed",
    ]);
    assert!(matches!(last.trim(), "0" | "1"), "{last}");
    let ps = d.ok(&[
        "ps",
        "--filter",
        "health=healthy",
        "--format",
        "{{.Names}} {{.Status}}",
    ]);
    assert!(
        ps.starts_with("probed Up ") && ps.trim().ends_with("(healthy)"),
        "{ps}"
    );
    assert_eq!(d.ok(&["ps", "-q", "--filter", "health=unhealthy"]), "");

    // The image's HEALTHCHECK, and --no-healthcheck.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {image}\nHEALTHCHECK --interval=100ms CMD true\n"),
    )
    .unwrap();
    let built = d
        .command(&[
            "build",
            "-q",
            "-t",
            "local/checked",
            dir.path().to_str().unwrap(),
        ])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "checked",
        "local/checked",
        "sleep",
        "1000",
    ]);
    wait_for_inspect(&d, "checked", status, "healthy");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "unchecked",
        "--no-healthcheck",
        "local/checked",
        "sleep",
        "1000",
    ]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Health}}", "unchecked"])
            .trim(),
        "<nil>"
    );
    let bad = d.run(&[
        "create",
        "--health-cmd",
        "true",
        "--health-interval",
        "1us",
        &image,
    ]);
    assert!(!bad.status.success());
}

#[test]
fn agent_restart_keeps_containers() {
    require_root();
    let mut d = Engine::start();
    let image = d.busybox();
    d.ok(&["run", "--name", "done", &image, "echo", "kept"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "alive",
        &image,
        "sh",
        "-c",
        "sleep 2; echo late; sleep 60",
    ]);
    d.restart_agent();
    assert_eq!(d.ok(&["logs", "done"]), "kept\n");
    let ps = d.ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(ps, "alive\n");
    // Output written while the agent was away is in the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.ok(&["logs", "alive"]) != "late\n" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    d.ok(&["kill", "alive"]);
    assert_eq!(d.ok(&["wait", "alive"]), "137\n");
}

#[test]
fn version_info_events_and_bad_input() {
    require_root();
    let d = Engine::start();
    let v = d.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(v, "1.47 linux\n");
    let info = d.ok(&["info", "--format", "{{.OperatingSystem}} {{.Containers}}"]);
    assert!(info.ends_with(" 0\n"), "{info}");
    let out = d.run(&["inspect", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    let out = d.run(&["run", "--rm", "no-such-registry.invalid/x"]);
    assert_eq!(out.status.code(), Some(125));
    let out = d.run(&["run", "--rm", "--name", "bad/name", &d.busybox(), "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out).contains("Invalid container name"),
        "{}",
        text(&out)
    );
    // events sees a run.
    let mut events = d
        .command(&[
            "events",
            "--format",
            "{{.Type}} {{.Action}}",
            "--filter",
            "type=container",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.ok(&["run", "--rm", &d.busybox(), "true"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    for action in ["create", "start", "die", "destroy"] {
        assert!(seen.contains(&format!("container {action}")), "{seen}");
    }
}
