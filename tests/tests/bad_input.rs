//! Bad input: each case gets one clear line on stderr, a non-zero exit,
//! no panic, and leaves every other machine's files as they were.

use berth_tests::Berth;

/// A home with a running machine "keep" whose files must never change.
fn with_bystander() -> (
    Berth,
    std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
) {
    let berth = Berth::new();
    berth.ok(&["create", "keep"]);
    let snapshot = Berth::snapshot(&berth.machine_dir("keep"));
    (berth, snapshot)
}

fn assert_untouched(
    berth: &Berth,
    snapshot: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
) {
    assert_eq!(
        &Berth::snapshot(&berth.machine_dir("keep")),
        snapshot,
        "machine 'keep' was touched"
    );
    assert_eq!(berth.ok(&["status", "keep"]), "Running\n");
}

#[test]
fn invalid_names_are_refused() {
    let (berth, snapshot) = with_bystander();
    for name in ["-dev", ".dev", "dev_1", "a/b", "../keep", "dév", "a b", ""] {
        // `--` so that "-dev" reaches berth's check rather than clap's.
        let line = berth.fails(&["create", "--", name]);
        assert!(line.contains("invalid machine name"), "{name:?}: {line}");
    }
    for verb in ["status", "start", "stop", "inspect", "env", "url"] {
        let line = berth.fails(&[verb, "../keep"]);
        assert!(line.contains("invalid machine name"), "{verb}: {line}");
    }
    assert!(berth
        .fails(&["rm", "-f", "../keep"])
        .contains("invalid machine name"));
    assert!(!berth.home().join("keep").exists());
    assert_untouched(&berth, &snapshot);
}

#[test]
fn taken_names_unknown_machines_and_drivers() {
    let (berth, snapshot) = with_bystander();
    assert_eq!(
        berth.fails(&["create", "keep"]),
        "Machine \"keep\" already exists"
    );
    for args in [
        vec!["status", "ghost"],
        vec!["start", "ghost"],
        vec!["stop", "ghost"],
        vec!["kill", "ghost"],
        vec!["inspect", "ghost"],
        vec!["env", "ghost"],
        vec!["url", "ghost"],
        vec!["ip", "ghost"],
        vec!["rm", "-y", "ghost"],
    ] {
        let line = berth.fails(&args);
        assert!(
            line.starts_with("Machine \"ghost\" does not exist"),
            "{args:?}: {line}"
        );
    }
    let line = berth.fails(&["create", "-d", "virtualbox", "vm"]);
    assert_eq!(
        line,
        "unknown driver \"virtualbox\"; the drivers are: native, qemu, generic, ec2"
    );
    assert!(!berth.machine_dir("vm").exists());
    // No name and no "default" machine.
    assert!(berth
        .fails(&["status"])
        .contains("no \"default\" machine exists"));
    assert_untouched(&berth, &snapshot);
}

#[test]
fn corrupt_and_half_written_records() {
    let (berth, snapshot) = with_bystander();
    berth.ok(&["create", "broken"]);
    berth.ok(&["stop", "broken"]);
    let record = berth.machine_dir("broken").join("machine.json");
    let good = std::fs::read(&record).unwrap();

    for damaged in [&good[..good.len() / 2], b"", b"{\"Name\": 1}", b"\x00\xff"] {
        std::fs::write(&record, damaged).unwrap();
        for verb in ["status", "start", "inspect", "env"] {
            let line = berth.fails(&[verb, "broken"]);
            assert!(line.contains("unreadable record"), "{verb}: {line}");
            assert!(line.contains("berth rm -f broken"), "{verb}: {line}");
        }
        // ls still lists everything, the damaged machine as an error.
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&berth.ok(&["ls", "--json"])).unwrap();
        let broken = rows.iter().find(|r| r["Name"] == "broken").unwrap();
        assert_eq!(broken["State"], "Error");
        assert!(broken["Error"]
            .as_str()
            .unwrap()
            .contains("unreadable record"));
        let keep = rows.iter().find(|r| r["Name"] == "keep").unwrap();
        assert_eq!(keep["State"], "Running");
    }
    // A missing record reads the same way.
    std::fs::remove_file(&record).unwrap();
    assert!(berth
        .fails(&["status", "broken"])
        .contains("unreadable record"));
    // Without -f, rm refuses; with -f it removes only that machine.
    assert!(berth
        .fails(&["rm", "-y", "broken"])
        .contains("unreadable record"));
    assert!(berth.machine_dir("broken").exists());
    berth.ok(&["rm", "-f", "broken"]);
    assert!(!berth.machine_dir("broken").exists());
    assert_untouched(&berth, &snapshot);
}

#[test]
fn rm_of_a_running_machine_needs_force() {
    let (berth, snapshot) = with_bystander();
    berth.ok(&["create", "busy"]);
    let line = berth.fails(&["rm", "-y", "busy"]);
    assert!(line.contains("is running"), "{line}");
    assert!(line.contains("berth rm -f busy"), "{line}");
    assert_eq!(berth.ok(&["status", "busy"]), "Running\n");
    // Without -y and without a terminal to ask on, nothing is removed.
    let line = berth.fails(&["rm", "busy"]);
    assert!(line.contains("pass -y"), "{line}");
    assert!(berth.machine_dir("busy").exists());
    berth.ok(&["rm", "-f", "busy"]);
    assert!(!berth.machine_dir("busy").exists());
    // -f on a machine that does not exist says so but succeeds, as `rm -f`.
    berth.ok(&["rm", "-f", "busy"]);
    assert_untouched(&berth, &snapshot);
}

#[test]
fn env_unset_takes_no_name_and_unknown_shells_are_refused() {
    let (berth, snapshot) = with_bystander();
    assert!(berth
        .fails(&["env", "--unset", "keep"])
        .contains("Expected no machine name"));
    let out = berth
        .command(["env", "keep"])
        .env("SHELL", "/usr/bin/nushell")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown shell"));
    // clap's own usage errors exit 2, as docker-machine's flag errors do not
    // claim success either.
    let out = berth.run(&["env", "--shell", "klingon", "keep"]);
    assert_eq!(out.status.code(), Some(2));
    assert_untouched(&berth, &snapshot);
}

#[test]
fn a_missing_agent_program_fails_create_cleanly() {
    let berth = Berth::new();
    let out = berth
        .command(["create", "dev"])
        .env("BERTH_AGENT", "/nonexistent/berth-agent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "a pre-create failure exits 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Error with pre-create check"), "{stderr}");
    assert!(stderr.contains("BERTH_AGENT"), "{stderr}");
    assert!(!berth.machine_dir("dev").exists());
}

#[test]
fn an_agent_that_cannot_start_fails_create_and_leaves_nothing() {
    let berth = Berth::new();
    // An agent program that fails at start-up: create must quote its
    // output and undo itself.
    let fake = berth.home().join("fake-agent");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot listen: simulated failure' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = berth
        .command(["create", "dev"])
        .env("BERTH_AGENT", &fake)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create machine \"dev\""), "{stderr}");
    assert!(stderr.contains("simulated failure"), "{stderr}");
    assert!(!berth.machine_dir("dev").exists());
    assert_eq!(berth.ok(&["ls", "-q"]), "");
}
