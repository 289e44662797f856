//! `berth-agent image` against registries that want something: Basic
//! auth (htpasswd), bearer tokens from a token service, HTTPS with a CA
//! of their own. The registry is Debian's docker-registry every time.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_tests::registry::{busybox_layer, Layout, Options, Registry};
use berth_tests::runtime::ok;
use berth_tests::token::TokenService;
use berth_tests::{bin, require_root};

/// `berth-agent image --root STORE ARGS`, with `password` on stdin.
fn image(store: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let mut child = Command::new(bin("berth-agent"))
        .arg("image")
        .arg("--root")
        .arg(store)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(p) = password {
        stdin.write_all(format!("{p}\n").as_bytes()).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn fails_with(out: &Output, text: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {err}");
    assert!(err.contains(text), "expected {text:?} in {err:?}");
}

fn store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn basic_auth_pulls_and_pushes_with_credentials_only() {
    require_root();
    let registry = Registry::start_with(&Options {
        basic: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    });
    Layout::new(&[busybox_layer()], None).push(&registry, "private/busybox:1");
    let name = format!("{}/private/busybox:1", registry.host);
    let store = store();

    fails_with(
        &image(store.path(), None, &["pull", &name]),
        "authentication required",
    );
    fails_with(
        &image(
            store.path(),
            Some("wrong"),
            &["--username", "alice", "--password-stdin", "pull", &name],
        ),
        "the credentials were refused",
    );
    let login = ["--username", "alice", "--password-stdin"];
    ok(image(
        store.path(),
        Some("s3cret"),
        &[&login[..], &["pull", &name]].concat(),
    ));
    let copy = format!("{}/private/copy:1", registry.host);
    ok(image(store.path(), None, &["tag", &name, &copy]));
    ok(image(
        store.path(),
        Some("s3cret"),
        &[&login[..], &["push", &copy]].concat(),
    ));
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds=alice:s3cret"])
        .arg(format!("docker://{copy}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bearer_tokens_are_fetched_once_per_scope() {
    require_root();
    let tokens = TokenService::start("bob:hunter2");
    let registry = Registry::start_with(&Options {
        token: Some((
            tokens.realm.clone(),
            tokens.cert.clone(),
            "bob:hunter2".into(),
        )),
        ..Default::default()
    });
    Layout::new(&[busybox_layer(), busybox_layer()], None).push(&registry, "team/app:1");
    tokens.requests.lock().unwrap().clear();
    let name = format!("{}/team/app:1", registry.host);
    let store = store();
    fails_with(
        &image(
            store.path(),
            Some("nope"),
            &["--username", "bob", "--password-stdin", "pull", &name],
        ),
        "the token service refused repository:team/app:pull",
    );
    tokens.requests.lock().unwrap().clear();
    let login = ["--username", "bob", "--password-stdin"];
    ok(image(
        store.path(),
        Some("hunter2"),
        &[&login[..], &["pull", &name]].concat(),
    ));
    // Manifest, config and two layers: one token for all of them.
    assert_eq!(
        *tokens.requests.lock().unwrap(),
        [["repository:team/app:pull"]]
    );
    tokens.requests.lock().unwrap().clear();
    let copy = format!("{}/team/copy:1", registry.host);
    ok(image(store.path(), None, &["tag", &name, &copy]));
    ok(image(
        store.path(),
        Some("hunter2"),
        &[&login[..], &["push", &copy]].concat(),
    ));
    // Pushing asks for push on the target and, to mount, pull on the source.
    let requests = tokens.requests.lock().unwrap().clone();
    assert!(
        requests.contains(&vec!["repository:team/copy:pull,push".to_owned()]),
        "{requests:?}"
    );
    assert!(
        requests.contains(&vec![
            "repository:team/copy:pull,push".to_owned(),
            "repository:team/app:pull".to_owned()
        ]),
        "{requests:?}"
    );
}

#[test]
fn https_with_an_extra_ca() {
    require_root();
    let registry = Registry::start_with(&Options {
        tls: true,
        ..Default::default()
    });
    Layout::new(&[busybox_layer()], None).push(&registry, "secure/busybox:1");
    let name = format!("{}/secure/busybox:1", registry.host);
    let store = store();
    // Its CA is not among the system's roots: refused, saying why.
    fails_with(
        &image(store.path(), None, &["pull", &name]),
        "UnknownIssuer",
    );
    let ca = registry.ca();
    let ca = ca.to_str().unwrap();
    let out = ok(image(
        store.path(),
        None,
        &["--registry-ca", ca, "pull", &name],
    ));
    assert!(out.contains("pulled sha256:"), "{out}");
    let copy = format!("{}/secure/copy:1", registry.host);
    ok(image(store.path(), None, &["tag", &name, &copy]));
    ok(image(
        store.path(),
        None,
        &["--registry-ca", ca, "push", &copy],
    ));
    let bad = image(
        store.path(),
        None,
        &["--registry-ca", "/etc/hostname", "pull", &name],
    );
    fails_with(&bad, "CA certificate");
}
