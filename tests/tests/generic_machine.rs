//! The `generic` driver against a real OpenSSH `sshd` on a host of its own
//! (a network namespace with its own address): provisioning, the real
//! docker CLI through the TLS endpoint, real SSH for `ssh` and `scp`,
//! stop/start/upgrade/regenerate-certs, and `rm` leaving the host as it
//! was. Then the faults: unreachable host, refused key, unknown and
//! changed host keys, an architecture the agent is not built for — each
//! one clear error, and no half-made machine.

use std::process::Command;

use berth_tests::sshd::{SshHost, SshHostOptions};
use berth_tests::{require_root, Berth};

fn create_args<'a>(host: &'a SshHost, name: &'a str) -> Vec<&'a str> {
    vec![
        "create",
        "--driver",
        "generic",
        "--generic-ip-address",
        &host.ip,
        "--generic-ssh-key",
        host.key.to_str().unwrap(),
        "--ssh-known-hosts",
        host.known_hosts.to_str().unwrap(),
        name,
    ]
}

/// The variables `berth env` sets, from its bash output.
fn env_of(berth: &Berth, name: &str) -> Vec<(String, String)> {
    berth
        .ok(&["env", "--shell", "bash", name])
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

fn docker(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(berth_tests::docker::docker_cli());
    c.args(args)
        .env("DOCKER_CONFIG", "/nonexistent-berth-test")
        .env_remove("DOCKER_CONTEXT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null()).output().unwrap()
}

fn docker_ok(env: &[(String, String)], args: &[&str]) -> String {
    let out = docker(env, args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn busybox_tar(dir: &std::path::Path) -> std::path::PathBuf {
    let tar = dir.join("busybox.tar");
    let helper = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/lib/busybox_image.py"
    );
    let status = Command::new("python3")
        .args([helper, "--tar", tar.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    tar
}

#[test]
fn a_generic_host_is_provisioned_and_driven() {
    require_root();
    let host = SshHost::start();
    let berth = Berth::new();
    let out = berth.ok(&create_args(&host, "far"));
    let _ = out;
    assert!(host.path("/usr/local/bin/berth-agent").is_file());
    assert!(host.path("/etc/berth-agent/server-key.pem").is_file());
    let ls = berth.ok(&[
        "ls",
        "--format",
        "{{.Name}} {{.DriverName}} {{.State}} {{.URL}}",
    ]);
    assert_eq!(
        ls.trim(),
        format!("far generic Running tcp://{}:2376", host.ip),
        "{ls}"
    );
    assert_eq!(berth.ok(&["ip", "far"]).trim(), host.ip);
    assert_eq!(
        berth.ok(&["url", "far"]).trim(),
        format!("tcp://{}:2376", host.ip)
    );

    // The docker CLI through the TLS endpoint, as `berth env` points it.
    let env = env_of(&berth, "far");
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("DOCKER_TLS_VERIFY").as_deref(), Some("1"));
    assert_eq!(get("DOCKER_HOST"), Some(format!("tcp://{}:2376", host.ip)));
    let certs = std::path::PathBuf::from(get("DOCKER_CERT_PATH").unwrap());
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(certs.join(f).is_file(), "{f}");
    }
    let tar = busybox_tar(host.dir.path());
    docker_ok(&env, &["load", "-q", "-i", tar.to_str().unwrap()]);
    assert_eq!(
        docker_ok(&env, &["run", "--rm", "busybox", "echo", "hi from far"]),
        "hi from far\n"
    );
    // Without the client certificate the endpoint refuses.
    let bare = vec![("DOCKER_HOST".to_owned(), format!("tcp://{}:2376", host.ip))];
    assert!(!docker(&bare, &["version"]).status.success());

    // Real SSH: a command's output and exit status, and scp both ways.
    let out = berth.ok(&["ssh", "far", "--", "uname", "-s"]);
    assert_eq!(out.trim(), "Linux");
    let out = berth.run(&["ssh", "far", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    let local = host.dir.path().join("note.txt");
    std::fs::write(&local, "carried over\n").unwrap();
    berth.ok(&["scp", local.to_str().unwrap(), "far:/var/log/"]);
    assert_eq!(
        std::fs::read_to_string(host.path("/var/log/note.txt")).unwrap(),
        "carried over\n"
    );
    let back = host.dir.path().join("back.txt");
    berth.ok(&["scp", "far:/var/log/note.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "carried over\n");

    // Stop and start: the agent goes and comes back with its images.
    berth.ok(&["stop", "far"]);
    assert_eq!(berth.ok(&["status", "far"]).trim(), "Stopped");
    assert!(!host.runs("berth-agent serve"));
    berth.ok(&["start", "far"]);
    assert_eq!(berth.ok(&["status", "far"]).trim(), "Running");
    assert!(docker_ok(&env, &["images", "-q"]).lines().count() >= 1);

    // Upgrade keeps the state; new certificates work; provision again works.
    berth.ok(&["upgrade", "far"]);
    assert!(docker_ok(&env, &["images", "-q"]).lines().count() >= 1);
    let old_client = std::fs::read(certs.join("cert.pem")).unwrap();
    berth.ok(&["regenerate-certs", "-f", "far"]);
    assert_ne!(std::fs::read(certs.join("cert.pem")).unwrap(), old_client);
    docker_ok(&env, &["version"]);
    berth.ok(&["provision", "far"]);
    docker_ok(&env, &["version"]);

    // rm takes away what provisioning installed, and the machine.
    berth.ok(&["rm", "-f", "far"]);
    assert!(!host.path("/usr/local/bin/berth-agent").exists());
    assert!(!host.path("/etc/berth-agent/server.pem").exists());
    assert!(!host.runs("berth-agent serve"));
    assert!(!berth.machine_dir("far").exists());
}

#[test]
fn remote_faults_are_clear_and_leave_nothing() {
    require_root();
    let host = SshHost::start();
    let berth = Berth::new();
    let gone = |name: &str| {
        assert!(!berth.machine_dir(name).exists(), "{name} was left behind");
        assert!(berth.ok(&["ls", "-q"]).trim().is_empty());
    };

    // Nobody at that address.
    let mut args = create_args(&host, "nobody");
    let elsewhere = host.ip.replace(".2", ".9");
    args[4] = &elsewhere;
    let said = berth.fails(&args);
    assert!(said.contains("cannot reach"), "{said}");
    gone("nobody");

    // A key the host does not accept.
    let other = host.dir.path().join("other_key");
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            other.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut args = create_args(&host, "refused");
    args[6] = other.to_str().unwrap();
    let said = berth.fails(&args);
    assert!(said.contains("refused the key"), "{said}");
    gone("refused");

    // A host key nobody knows: refused unless trusted on first use.
    let empty = host.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut args = create_args(&host, "unknown");
    args[8] = empty.to_str().unwrap();
    let said = berth.fails(&args);
    assert!(said.contains("is not known"), "{said}");
    assert!(said.contains("--ssh-accept-new-host-key"), "{said}");
    gone("unknown");

    // A host key that differs from the one known for the address.
    let forged = host.dir.path().join("forged_known_hosts");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let parts: Vec<&str> = other_pub.split_whitespace().collect();
    std::fs::write(&forged, format!("{} {} {}\n", host.ip, parts[0], parts[1])).unwrap();
    let mut args = create_args(&host, "changed");
    args[8] = forged.to_str().unwrap();
    let said = berth.fails(&args);
    assert!(said.contains("differs"), "{said}");
    gone("changed");
    // Bad input is refused before anything is made.
    let said = berth.fails(&["create", "--driver", "generic", "noaddress"]);
    assert!(said.contains("--generic-ip-address"), "{said}");
    let said = berth.fails(&[
        "create",
        "--driver",
        "native",
        "--generic-ssh-port",
        "2",
        "x",
    ]);
    assert!(said.contains("does not apply"), "{said}");
    gone("noaddress");
}

#[test]
fn a_host_of_another_architecture_is_refused() {
    require_root();
    let host = SshHost::start_with(&SshHostOptions {
        fake_arch: Some("sparc64".into()),
    });
    let berth = Berth::new();
    // Trusted on first use this time: the key is pinned in the machine.
    let mut args = create_args(&host, "odd");
    args.splice(7..9, ["--ssh-accept-new-host-key"]);
    let said = berth.fails(&args);
    assert!(said.contains("sparc64"), "{said}");
    assert!(said.contains("x86_64 and aarch64"), "{said}");
    assert!(!berth.machine_dir("odd").exists());
    assert!(!host.path("/usr/local/bin/berth-agent").exists());
}
