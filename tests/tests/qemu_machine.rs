//! QEMU machines end to end, under TCG (nested KVM hangs on CI's hosts):
//! the guest image built by scripts/build-guest-image, `berth create
//! --driver qemu`, `berth ssh` through the agent, the stock docker CLI
//! through the supervisor's socket pulling from the host's registry over
//! QEMU's user network, stop/start keeping the data disk, the supervisor
//! re-attached, two machines at once, `rm` leaving nothing; and the boot
//! watchdog ending a VM that never comes up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_guest_image::cpio::{Archive, Node};
use berth_tests::docker::{busybox_root, docker_cli, Pty};
use berth_tests::registry::{Layout, Registry};
use berth_tests::{bin, process_gone, Berth};

/// The image scripts/build-guest-image writes beside the binaries.
fn guest_image() -> PathBuf {
    let dir = bin("berth").parent().unwrap().join("../guest-image/x86_64");
    assert!(
        dir.join("image.json").is_file(),
        "no guest image at {}: run scripts/build-guest-image first (scripts/test does)",
        dir.display()
    );
    dir
}

fn create_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "create",
        "--driver",
        "qemu",
        "--qemu-accel",
        "tcg",
        "--memory",
        "768",
        "--cpus",
        "1",
        "--disk-size",
        "2",
    ];
    args.extend_from_slice(extra);
    args.push(name);
    args
}

fn docker(berth: &Berth, name: &str, args: &[&str]) -> std::process::Output {
    let url = berth.ok(&["url", name]);
    Command::new(docker_cli())
        .args(args)
        .env("DOCKER_HOST", url.trim())
        .env("DOCKER_CONFIG", berth.home().join("docker-config"))
        .output()
        .unwrap()
}

fn docker_ok(berth: &Berth, name: &str, args: &[&str]) -> String {
    let out = docker(berth, name, args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The body of `GET path` on 127.0.0.1:`port`, if a 200 came back.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.") && head.contains(" 200 ")).then(|| body.to_owned())
}

#[test]
fn qemu_machine_lifecycle() {
    let _ = guest_image();
    let registry = Registry::start();
    Layout::new(&[busybox_root()], None).push(&registry, "busybox:latest");
    let port = registry.host.rsplit(':').next().unwrap().to_owned();
    // The guest reaches the host's loopback as 10.0.2.2 (QEMU's user net).
    let guest_registry = format!("10.0.2.2:{port}");
    let image = format!("{guest_registry}/busybox");

    let berth = Berth::new();
    berth.ok(&create_args(
        "vm",
        &[
            "--engine-insecure-registry",
            &guest_registry,
            "--engine-label",
            "where=vm",
        ],
    ));
    let dir = berth.machine_dir("vm");
    assert_eq!(berth.ok(&["status", "vm"]), "Running\n");
    assert_eq!(
        berth.ok(&["url", "vm"]).trim(),
        format!("unix://{}", dir.join("docker.sock").display())
    );

    // berth ssh: a command through the agent, its output and exit status.
    let uname = berth.ok(&["ssh", "vm", "--", "uname", "-a"]);
    assert!(uname.starts_with("Linux vm "), "{uname}");
    let out = berth.run(&["ssh", "vm", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The guest trusts the CA certificates TLS registries are signed by
    // (Debian's set, bundled where TLS clients look).
    let certs = berth.ok(&[
        "ssh",
        "vm",
        "--",
        "grep",
        "-c",
        "BEGIN CERTIFICATE",
        "/etc/ssl/certs/ca-certificates.crt",
    ]);
    assert!(certs.trim().parse::<u32>().unwrap() > 100, "{certs}");

    // An interactive shell: a terminal of the user's size, resized with
    // it, and the shell's exit status.
    let mut session = Pty::spawn(berth.command(["ssh", "vm"]), 24, 80);
    session.write("stty size; echo $((6 * 7))\n");
    session.expect("24 80", Duration::from_secs(30));
    session.expect("42", Duration::from_secs(10));
    session.resize(40, 132);
    std::thread::sleep(Duration::from_millis(500));
    session.write("stty size\n");
    session.expect("40 132", Duration::from_secs(10));
    session.write("exit 5\n");
    assert_eq!(session.wait(Duration::from_secs(20)), Some(5));

    // The stock docker CLI, the image pulled by the guest from the host.
    docker_ok(&berth, "vm", &["pull", "-q", &image]);
    assert_eq!(
        docker_ok(&berth, "vm", &["info", "--format", "{{.Labels}}"]),
        "[where=vm]\n"
    );
    assert_eq!(
        docker_ok(&berth, "vm", &["run", "--rm", &image, "echo", "hi"]),
        "hi\n"
    );
    let out = docker(&berth, "vm", &["run", "--rm", &image, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));

    // Containers reach out through the guest (NAT) and publish ports that
    // the supervisor forwards to this machine's loopback.
    let v2 = docker_ok(
        &berth,
        "vm",
        &[
            "run",
            "--rm",
            &image,
            "wget",
            "-q",
            "-O-",
            &format!("http://{guest_registry}/v2/"),
        ],
    );
    assert_eq!(v2.trim(), "{}");
    let published = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    docker_ok(
        &berth,
        "vm",
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{published}:80"),
            &image,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ],
    );
    let hostname = docker_ok(
        &berth,
        "vm",
        &["inspect", "-f", "{{.Config.Hostname}}", "web"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(published, "/hostname") {
            Some(body) if body.ends_with(&hostname) => break,
            other if Instant::now() > deadline => {
                panic!("published port {published} not forwarded: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    docker_ok(&berth, "vm", &["rm", "-f", "web"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", published)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {published} still forwarded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stop is graceful; the data disk keeps the image across a start.
    let qemu = pid_in(&dir.join("qemu.pid"));
    berth.ok(&["stop", "vm"]);
    assert_eq!(berth.ok(&["status", "vm"]), "Stopped\n");
    assert!(process_gone(qemu));
    assert!(!dir.join("docker.sock").exists());
    berth.ok(&["start", "vm"]);
    let images = docker_ok(&berth, "vm", &["images", "--format", "{{.Repository}}"]);
    assert!(images.contains(&image), "{images}");

    // The supervisor dies; the VM runs on and `start` re-attaches.
    let supervisor = pid_in(&dir.join("supervisor.lock"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(supervisor) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(berth.ok(&["status", "vm"]), "Error\n");
    berth.ok(&["start", "vm"]);
    assert_eq!(
        docker_ok(&berth, "vm", &["run", "--rm", &image, "echo", "again"]),
        "again\n"
    );
    // The last boot, its later part done (the container above waited for
    // it), logged no warning and no error.
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    let complaints: Vec<&str> = console
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));

    // berth scp both ways: a file, then a directory with -r.
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("tree/sub")).unwrap();
    std::fs::write(work.path().join("tree/top.txt"), "top\n").unwrap();
    std::fs::write(work.path().join("tree/sub/deep.txt"), "deep\n").unwrap();
    let tree = work.path().join("tree");
    let top = tree.join("top.txt");
    berth.ok(&["scp", top.to_str().unwrap(), "vm:/tmp/"]);
    assert_eq!(
        berth.ok(&["ssh", "vm", "--", "cat", "/tmp/top.txt"]),
        "top\n"
    );
    let err = berth.fails(&["scp", tree.to_str().unwrap(), "vm:/tmp/"]);
    assert!(err.contains("copy it with -r"), "{err}");
    berth.ok(&["scp", "-r", tree.to_str().unwrap(), "vm:/tmp/copied"]);
    assert_eq!(
        berth.ok(&["ssh", "vm", "--", "cat", "/tmp/copied/sub/deep.txt"]),
        "deep\n"
    );
    let back = work.path().join("back");
    berth.ok(&["scp", "-r", "vm:/tmp/copied", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/deep.txt")).unwrap(),
        "deep\n"
    );
    berth.ok(&["scp", "vm:/etc/hostname", work.path().to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(work.path().join("hostname")).unwrap(),
        "vm\n"
    );
    let err = berth.fails(&["scp", "vm:/no/such/file", work.path().to_str().unwrap()]);
    assert!(err.contains("/no/such/file"), "{err}");

    // A port that starts listening in the guest is forwarded to this
    // machine's loopback, and closed again when it goes.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    berth.ok(&[
        "ssh",
        "vm",
        "--",
        "sh",
        "-c",
        &format!("mkdir -p /tmp/www && echo forwarded > /tmp/www/index.html && httpd -p {port} -h /tmp/www"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match http_get(port, "/index.html") {
            Some(body) if body == "forwarded\n" => break,
            _ if Instant::now() > deadline => panic!("port {port} was not forwarded"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    berth.ok(&["ssh", "vm", "--", "killall", "httpd"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {port} still forwarded after its listener went"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A second machine beside the first.
    berth.ok(&create_args("vm2", &[]));
    assert!(berth
        .ok(&["ssh", "vm2", "--", "hostname"])
        .starts_with("vm2"));
    assert!(berth.ok(&["ssh", "vm", "--", "hostname"]).starts_with("vm"));

    // rm leaves nothing: no process, no file.
    let qemu = pid_in(&dir.join("qemu.pid"));
    let supervisor = pid_in(&dir.join("supervisor.lock"));
    berth.ok(&["rm", "-f", "vm", "vm2"]);
    assert!(!dir.exists());
    assert!(!berth.machine_dir("vm2").exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(process_gone(qemu) && process_gone(supervisor)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(process_gone(qemu) && process_gone(supervisor));
}

/// An image whose kernel is real but whose /init never serves.
fn silent_image(dir: &Path) {
    let real = guest_image();
    let mut archive = Archive::new();
    archive.add("dev/console", Node::CharDevice(5, 1), 0o600);
    archive.add(
        "init",
        Node::File(std::fs::read("/bin/busybox").unwrap()),
        0o755,
    );
    let mut cpio = Vec::new();
    archive.write_to(&mut cpio).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    // The real kernel, as the real image ships it (expanded at create).
    let real_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real.join("image.json")).unwrap()).unwrap();
    let kernel = real_manifest["kernel"]["file"].as_str().unwrap();
    std::fs::copy(real.join(kernel), dir.join(kernel)).unwrap();
    std::fs::write(dir.join("initramfs.gz"), berth_tests::registry::gzip(&cpio)).unwrap();
    let file = |name: &str| {
        let data = std::fs::read(dir.join(name)).unwrap();
        serde_json::json!({"file": name, "digest": berth_guest_image::sha256(&data), "size": data.len()})
    };
    let mut manifest = serde_json::json!({
        "arch": "x86_64",
        "kernel_release": "test",
        "kernel": file(kernel),
        "initramfs": file("initramfs.gz"),
        "digest": "sha256:0",
    });
    if let Some(expanded) = real_manifest.get("kernel_expanded") {
        manifest["kernel_expanded"] = expanded.clone();
    }
    std::fs::write(dir.join("image.json"), manifest.to_string()).unwrap();
}

#[test]
fn the_watchdog_ends_a_vm_that_never_comes_up() {
    let berth = Berth::new();
    let image = berth.home().join("silent-image");
    silent_image(&image);
    let started = Instant::now();
    let out = berth
        .command(create_args("mute", &["--qemu-boot-timeout", "8"]))
        .env("BERTH_GUEST_IMAGE", &image)
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not come up"), "{err}");
    assert!(err.contains("console ends with"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(took < Duration::from_secs(40), "took {took:?}");
    // Nothing half-made is left: no machine, no QEMU.
    assert!(!berth.machine_dir("mute").exists());
    assert_eq!(berth.ok(&["ls", "-q"]), "");
    let qemus = Command::new("pgrep")
        .args(["-f", &image.display().to_string()])
        .output()
        .unwrap();
    assert!(
        qemus.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&qemus.stdout)
    );
}

#[test]
fn bad_qemu_flags_are_refused_before_anything_is_made() {
    let berth = Berth::new();
    let err = berth.fails(&["create", "--driver", "qemu", "--qemu-accel", "warp", "x"]);
    assert!(err.contains("unknown --qemu-accel"), "{err}");
    let err = berth.fails(&["create", "--cpus", "2", "x"]);
    assert!(
        err.contains("--cpus does not apply to the native driver"),
        "{err}"
    );
    let err = berth.fails_with(
        3,
        &[
            "create",
            "--driver",
            "qemu",
            "--qemu-accel",
            "tcg",
            "--memory",
            "16",
            "y",
        ],
    );
    assert!(err.contains("at least"), "{err}");
    let out = berth
        .command(create_args("z", &[]))
        .env("BERTH_GUEST_IMAGE", berth.home())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no guest image"));
    assert_eq!(berth.ok(&["ls", "-q"]), "");
}
