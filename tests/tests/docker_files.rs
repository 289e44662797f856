//! `docker cp` both ways, `diff`, `export`, `top`, `stats --no-stream`,
//! `pause`/`unpause` through the stock CLI.

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
fn cp_round_trips_a_directory() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["run", "-d", "--name", "box", &image, "sleep", "600"]);

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(src.join("sub/deeper/b.bin"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();

    // In: the directory lands under the target directory.
    d.ok(&["cp", src.to_str().unwrap(), "box:/tmp/"]);
    assert_eq!(d.ok(&["exec", "box", "cat", "/tmp/tree/a.txt"]), "alpha\n");
    assert_eq!(
        d.ok(&["exec", "box", "readlink", "/tmp/tree/link"]),
        "a.txt\n"
    );
    let size = d.ok(&[
        "exec",
        "box",
        "stat",
        "-c",
        "%s",
        "/tmp/tree/sub/deeper/b.bin",
    ]);
    assert_eq!(size, "300000\n");
    d.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "echo made inside > /tmp/tree/sub/c.txt",
    ]);

    // Out: the same tree back, plus what was made inside.
    let back = work.path().join("back");
    d.ok(&["cp", "box:/tmp/tree", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read(back.join("sub/deeper/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap().to_str(),
        Some("a.txt")
    );
    assert_eq!(
        std::fs::read_to_string(back.join("sub/c.txt")).unwrap(),
        "made inside\n"
    );

    // A single file out, to a new name; and from a stopped container.
    let file = work.path().join("passwd");
    d.ok(&["cp", "box:/etc/passwd", file.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .starts_with("root:x:0:0"));
    d.ok(&["kill", "box"]);
    let again = work.path().join("again.txt");
    d.ok(&["cp", "box:/tmp/tree/a.txt", again.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), "alpha\n");

    // A link in the container cannot point the copy at the host.
    d.ok(&[
        "run",
        "--name",
        "sly",
        &image,
        "ln",
        "-s",
        "/",
        "/tmp/hostroot",
    ]);
    let out = d.run(&["cp", "sly:/tmp/hostroot/etc/hostname-of-host-marker", "-"]);
    assert!(!out.status.success());
    let marker = format!("/tmp/berth-cp-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret\n").unwrap();
    let out = d.run(&["cp", &format!("sly:/tmp/hostroot{marker}"), "-"]);
    let _ = std::fs::remove_file(&marker);
    assert!(!out.status.success(), "read a host file: {}", text(&out));

    // Errors.
    let out = d.run(&["cp", "box:/no/such/file", work.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Could not find the file"),
        "{}",
        text(&out)
    );
    let out = d.run(&["cp", src.to_str().unwrap(), "nothing:/tmp/"]);
    assert!(text(&out).contains("No such container"), "{}", text(&out));
}

#[test]
fn top_stats_pause_and_unpause() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "128m",
        &image,
        "sh",
        "-c",
        "while true; do :; done",
    ]);
    let top = d.ok(&["top", "busy"]);
    let mut lines = top.lines();
    let titles: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        titles,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    assert!(
        lines.any(|l| l.starts_with("root") && l.ends_with("sh -c while true; do :; done")),
        "{top}"
    );

    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}",
    ]);
    let fields: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(fields[0], "busy", "{stats}");
    let cpu: f64 = fields[1].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 10.0, "a spinning shell uses CPU: {stats}");
    assert_eq!(fields[4], "128MiB", "{stats}");
    assert_eq!(fields[5], "1", "{stats}");

    d.ok(&["pause", "busy"]);
    let status = d.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.Paused}}",
        "busy",
    ]);
    assert_eq!(status, "paused true\n");
    let ps = d.ok(&["ps", "--format", "{{.Status}}"]);
    assert!(ps.ends_with("(Paused)\n"), "{ps}");
    // Frozen: it gets no CPU.
    let before = d.ok(&["top", "busy"]);
    std::thread::sleep(Duration::from_millis(1500));
    let after = d.ok(&["top", "busy"]);
    let time = |t: &str| {
        t.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(6)
            .unwrap()
            .to_owned()
    };
    assert_eq!(time(&before), time(&after));
    let out = d.run(&["pause", "busy"]);
    assert!(text(&out).contains("is already paused"), "{}", text(&out));
    let out = d.run(&["exec", "busy", "true"]);
    assert!(!out.status.success());

    d.ok(&["unpause", "busy"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "busy"]),
        "running\n"
    );
    let out = d.run(&["unpause", "busy"]);
    assert!(text(&out).contains("is not paused"), "{}", text(&out));

    // A paused container still stops.
    d.ok(&["pause", "busy"]);
    let start = Instant::now();
    d.ok(&["stop", "-t", "1", "busy"]);
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "busy"]),
        "exited\n"
    );
    let out = d.run(&["top", "busy"]);
    assert!(text(&out).contains("is not running"), "{}", text(&out));
}

#[test]
fn diff_and_export_show_what_the_container_has() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "changed",
        &image,
        "sh",
        "-c",
        "mkdir /home/me && echo hi > /home/me/f && rm /bin/yes && echo more >> /etc/group && touch /tmp/done && sleep 1000",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let diff = loop {
        let diff = d.ok(&["diff", "changed"]);
        if diff.contains("A /tmp/done") {
            break diff;
        }
        assert!(Instant::now() < deadline, "the script did not run: {diff}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "C /bin",
        "D /bin/yes",
        "C /etc",
        "C /etc/group",
        "C /home",
        "A /home/me",
        "A /home/me/f",
        "C /tmp",
    ] {
        assert!(lines.contains(&want), "{want} not in:\n{diff}");
    }
    // The runtime's mount points are not changes.
    assert!(
        !diff.contains("/etc/hosts") && !diff.contains("/proc"),
        "{diff}"
    );

    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("changed.tar");
    d.ok(&["export", "-o", tar.to_str().unwrap(), "changed"]);
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut content = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let name = name.trim_start_matches("./").to_owned();
        if name == "home/me/f" {
            std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
        }
        names.push(name);
    }
    assert_eq!(content, "hi\n");
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "bin/yes"),
        "a deleted file was exported"
    );
    // A stopped container exports and diffs too.
    d.ok(&["kill", "changed"]);
    let stopped = work.path().join("stopped.tar");
    d.ok(&["export", "-o", stopped.to_str().unwrap(), "changed"]);
    assert_eq!(
        std::fs::metadata(&stopped).unwrap().len(),
        std::fs::metadata(&tar).unwrap().len()
    );
    assert_eq!(d.ok(&["diff", "changed"]), diff);
    let out = d.run(&["diff", "nothing"]);
    assert!(text(&out).contains("No such container"), "{}", text(&out));
}
