//! Images through the stock CLI: login and push (seen by skopeo), save
//! and load, and pull, tag, rmi, prune.

use std::process::{Command, Stdio};

use berth_tests::docker::Engine;
use berth_tests::registry::{Options, Registry};
use berth_tests::require_root;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn login_then_push_is_seen_by_skopeo() {
    require_root();
    let d = Engine::start();
    let private = Registry::start_with(&Options {
        basic: Some(("berth".into(), "s3cret".into())),
        ..Options::default()
    });
    let target = format!("{}/team/tool:v1", private.host);
    d.ok(&["pull", "-q", &d.busybox()]);
    d.ok(&["tag", &d.busybox(), &target]);

    // Without credentials the registry refuses.
    let out = d.run(&["push", &target]);
    assert!(!out.status.success(), "{}", text(&out));

    let out = d
        .command(&["login", "-u", "berth", "--password-stdin", &private.host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"wrong\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        !out.status.success(),
        "a wrong password logged in: {}",
        text(&out)
    );

    let out = d
        .command(&["login", "-u", "berth", "--password-stdin", &private.host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"s3cret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Login Succeeded"), "{}", text(&out));

    let pushed = d.ok(&["push", &target]);
    assert!(pushed.contains("Pushed"), "{pushed}");
    assert!(pushed.contains("v1: digest: sha256:"), "{pushed}");

    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            "berth:s3cret",
            &format!("docker://{target}"),
        ])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", text(&inspect));
    let seen: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let pushed_digest = pushed
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert_eq!(seen["Digest"], pushed_digest);
    assert_eq!(seen["Layers"].as_array().unwrap().len(), 1);

    // Pushing again: every layer is already there.
    let again = d.ok(&["push", &target]);
    assert!(again.contains("Layer already exists"), "{again}");
    let out = d.run(&["push", &format!("{}/never/tagged", private.host)]);
    assert!(
        text(&out).contains("does not exist locally"),
        "{}",
        text(&out)
    );
}

#[test]
fn save_load_tag_rmi_and_prune() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let pulled = d.ok(&["pull", &image]);
    assert!(pulled.contains("Pull complete"), "{pulled}");
    assert!(
        pulled.contains(&format!(
            "Status: Downloaded newer image for {image}:latest"
        )),
        "{pulled}"
    );
    let again = d.ok(&["pull", &image]);
    assert!(again.contains("Image is up to date"), "{again}");
    let id = d.ok(&["image", "inspect", "-f", "{{.Id}}", &image]);
    d.ok(&["tag", &image, "local/copy:1"]);
    let listed = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.contains("local/copy:1"), "{listed}");
    let filtered = d.ok(&["images", "--filter", "reference=local/*", "-q"]);
    assert_eq!(filtered.trim(), &id.trim()["sha256:".len()..][..12]);

    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("copy.tar");
    d.ok(&["save", "-o", archive.to_str().unwrap(), "local/copy:1"]);
    assert!(std::fs::metadata(&archive).unwrap().len() > 100_000);

    d.ok(&["rmi", "local/copy:1"]);
    let out = d.run(&["image", "inspect", "local/copy:1"]);
    assert!(!out.status.success());
    let loaded = d.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(loaded, "Loaded image: local/copy:1\n");
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Id}}", "local/copy:1"]),
        id
    );
    assert_eq!(
        d.ok(&["run", "--rm", "local/copy:1", "echo", "loaded"]),
        "loaded\n"
    );

    // A junk archive is refused.
    std::fs::write(work.path().join("junk.tar"), b"not a tar at all").unwrap();
    let out = d.run(&["load", "-i", work.path().join("junk.tar").to_str().unwrap()]);
    assert!(!out.status.success());

    // An image a container uses is not removed without -f.
    d.ok(&["create", "--name", "user", "local/copy:1"]);
    d.ok(&["rmi", &image]);
    let out = d.run(&["rmi", "local/copy:1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is being used by"), "{}", text(&out));
    d.ok(&["rm", "user"]);
    d.ok(&["rmi", "local/copy:1"]);
    assert_eq!(d.ok(&["images", "-q"]), "");
    let out = d.run(&["rmi", "local/copy:1"]);
    assert!(text(&out).contains("No such image"), "{}", text(&out));
    let pruned = d.ok(&["image", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
}
