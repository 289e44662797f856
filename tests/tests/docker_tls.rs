//! The Docker API on TCP with mutual TLS: the stock CLI with
//! DOCKER_TLS_VERIFY and a client certificate gets in; without one, with
//! one from another CA, or in plain HTTP, it does not.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_tests::docker::{docker_cli, Engine};
use berth_tests::registry::certificates;
use berth_tests::require_root;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn docker(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(docker_cli());
    c.args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_endpoint_serves_only_clients_the_ca_signed() {
    require_root();
    let pki = tempfile::tempdir().unwrap();
    let ours = pki.path().join("ours");
    let theirs = pki.path().join("theirs");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    certificates(&ours, "server");
    certificates(&ours, "client");
    certificates(&theirs, "client");
    // DOCKER_CERT_PATH layouts: ca.pem, cert.pem, key.pem.
    let client_dir = |ca_from: &Path, cert_from: &Path, name: &str| {
        let d = pki.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(ca_from.join("ca.pem"), d.join("ca.pem")).unwrap();
        std::fs::copy(cert_from.join("client.pem"), d.join("cert.pem")).unwrap();
        std::fs::copy(cert_from.join("client.key"), d.join("key.pem")).unwrap();
        d
    };
    let good = client_dir(&ours, &ours, "good");
    let foreign = client_dir(&ours, &theirs, "foreign");

    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let d = Engine::start_with(&[
        "--docker-tcp".into(),
        address.clone(),
        "--tls-ca".into(),
        ours.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        ours.join("server.pem").display().to_string(),
        "--tls-key".into(),
        ours.join("server.key").display().to_string(),
    ]);
    let host = format!("tcp://{address}");
    let host = Path::new(&host);
    let one = Path::new("1");

    let out = docker(
        &["version", "--format", "{{.Server.APIVersion}}"],
        &[
            ("DOCKER_HOST", host),
            ("DOCKER_TLS_VERIFY", one),
            ("DOCKER_CERT_PATH", &good),
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), d.log_tail());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.47\n");
    let image = d.busybox();
    let out = docker(
        &["run", "--rm", &image, "echo", "over tls"],
        &[
            ("DOCKER_HOST", host),
            ("DOCKER_TLS_VERIFY", one),
            ("DOCKER_CERT_PATH", &good),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "over tls\n",
        "{}",
        text(&out)
    );

    // No client certificate.
    let ca = ours.join("ca.pem");
    let out = docker(
        &[
            "--tlsverify",
            "--tlscacert",
            ca.to_str().unwrap(),
            "-H",
            &address,
            "version",
        ],
        &[],
    );
    assert!(
        !out.status.success(),
        "served a client without a certificate"
    );
    // A certificate from another CA.
    let out = docker(
        &["version"],
        &[
            ("DOCKER_HOST", host),
            ("DOCKER_TLS_VERIFY", one),
            ("DOCKER_CERT_PATH", &foreign),
        ],
    );
    assert!(!out.status.success(), "served a client another CA signed");
    // Plain HTTP.
    let out = docker(&["-H", &format!("tcp://{address}"), "version"], &[]);
    assert!(!out.status.success(), "served plain HTTP on the TLS port");

    // And it goes on serving the good client (and the unix socket).
    let out = docker(
        &["ps", "-a", "-q"],
        &[
            ("DOCKER_HOST", host),
            ("DOCKER_TLS_VERIFY", one),
            ("DOCKER_CERT_PATH", &good),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.ok(&["ps", "-aq"]), "");
}

#[test]
fn tcp_without_tls_files_is_refused() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(berth_tests::bin("berth-agent"))
        .args(["serve", "--root"])
        .arg(root.path().join("state"))
        .arg("--listen")
        .arg(format!("unix:{}", root.path().join("a.sock").display()))
        .arg("--docker-socket")
        .arg(root.path().join("d.sock"))
        .args(["--docker-tcp", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--tls-ca"), "{}", text(&out));
}
