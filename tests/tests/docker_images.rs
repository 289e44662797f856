//! Images through the stock CLI: login and push (seen by skopeo), save
//! and load, import, and pull, tag, rmi, prune.

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

#[test]
fn import_makes_a_one_layer_image_from_a_tar() {
    use berth_tests::docker::busybox_root;
    use berth_tests::registry::{gzip, tar_of};
    require_root();
    let d = Engine::start();
    let work = tempfile::tempdir().unwrap();
    let tar = tar_of(&busybox_root());

    // From standard input, with a change and a message, and named.
    let mut import = d.command(&[
        "import",
        "--change",
        "CMD [\"echo\", \"imported\"]",
        "--change",
        "ENV GREETING=hi",
        "--message",
        "a root of busybox",
        "-",
        "local/root:1",
    ]);
    let mut child = import
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Id}}", "local/root:1"])
            .trim(),
        id
    );
    assert_eq!(d.ok(&["run", "--rm", "local/root:1"]), "imported\n");
    assert_eq!(
        d.ok(&["run", "--rm", "local/root:1", "sh", "-c", "echo $GREETING"]),
        "hi\n"
    );
    let layers = d.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", &id]);
    assert_eq!(layers.trim(), "1");
    let history = d.ok(&["history", "--format", "{{.Comment}}", "local/root:1"]);
    assert_eq!(history.trim(), "a root of busybox");

    // From a gzip file by path: the same files, so the same layer.
    let gz = work.path().join("root.tar.gz");
    std::fs::write(&gz, gzip(&tar)).unwrap();
    let from_file = d.ok(&["import", gz.to_str().unwrap(), "local/gz"]);
    let layer = |image: &str| {
        d.ok(&[
            "image",
            "inspect",
            "-f",
            "{{index .RootFS.Layers 0}}",
            image,
        ])
    };
    assert_eq!(layer("local/gz:latest"), layer("local/root:1"));
    assert_eq!(
        d.ok(&["run", "--rm", from_file.trim(), "echo", "from a file"]),
        "from a file\n"
    );
    let history = d.ok(&["history", "--format", "{{.Comment}}", "local/gz"]);
    assert_eq!(history.trim(), "Imported from -");

    // From a URL.
    let url = berth_tests::serve_once("rootfs.tar.gz", gzip(&tar));
    d.ok(&["import", &url, "local/url:1"]);
    assert_eq!(layer("local/url:1"), layer("local/root:1"));
    let history = d.ok(&["history", "--format", "{{.Comment}}", "local/url:1"]);
    assert_eq!(history.trim(), format!("Imported from {url}"));

    // Bad input: a clear refusal, and no image.
    let before = d.ok(&["images", "-aq"]);
    let empty = work.path().join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let not_tar = work.path().join("note.txt");
    std::fs::write(&not_tar, b"not an archive at all\n").unwrap();
    let xz = work.path().join("root.tar.xz");
    std::fs::write(&xz, b"\xfd7zXZ\x00\x00\x04").unwrap();
    for (args, says) in [
        (
            vec!["import", empty.to_str().unwrap()],
            "the archive is empty",
        ),
        (vec!["import", not_tar.to_str().unwrap()], "reading the tar"),
        (vec!["import", xz.to_str().unwrap()], "xz-compressed"),
        (
            vec!["import", "--change", "FROB x", gz.to_str().unwrap()],
            "unknown instruction: FROB",
        ),
        (
            vec!["import", gz.to_str().unwrap(), "Bad:Name:x"],
            "invalid reference format",
        ),
    ] {
        let out = d.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(d.ok(&["images", "-aq"]), before);
}
