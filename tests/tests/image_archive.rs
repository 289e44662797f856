//! `berth-agent image save` and `load`, checked against skopeo's own
//! readers and writers of OCI layouts and `docker save` archives.

use std::path::Path;
use std::process::Command;

use berth_tests::registry::{busybox_layer, file, LayerFn, Layout, Registry};
use berth_tests::runtime::{collect, ok};
use berth_tests::{bin, require_root};

fn image(store: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(bin("berth-agent"));
    command.arg("image").arg("--root").arg(store).args(args);
    collect(command)
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new_store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap()
}

fn config_id(store: &Path, name: &str) -> String {
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(store, &["inspect", name]))).unwrap();
    inspect["id"].as_str().unwrap().to_owned()
}

fn two_layers() -> [LayerFn; 2] {
    [
        busybox_layer(),
        Box::new(|t| file(t, "etc/second", b"2\n", 0o644)),
    ]
}

#[test]
fn saved_images_read_with_skopeo_and_load_back() {
    require_root();
    let registry = Registry::start();
    Layout::new(&two_layers(), None).push(&registry, "test/busybox:1");
    let name = format!("{}/test/busybox:1", registry.host);
    let store = new_store();
    ok(image(store.path(), &["pull", &name]));
    let id = config_id(store.path(), &name);

    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("busybox.tar");
    let tar_str = tar.to_str().unwrap();
    ok(image(store.path(), &["save", "-o", tar_str, &name]));
    // skopeo reads it both as a docker save archive and as an OCI archive.
    let docker: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("docker-archive:{tar_str}")])).unwrap();
    assert_eq!(docker["Layers"].as_array().unwrap().len(), 2);
    let oci: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci-archive:{tar_str}")])).unwrap();
    // (skopeo names a docker archive's layers by their diff ids.)
    let ours: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &name]))).unwrap();
    assert_eq!(docker["Layers"], ours["config"]["rootfs"]["diff_ids"]);
    let digests: Vec<_> = ours["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(oci["Layers"], serde_json::Value::from(digests));
    // And copies it to the registry under a new name, which we pull.
    let copied = format!("{}/test/from-archive:1", registry.host);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci-archive:{tar_str}"),
        &format!("docker://{copied}"),
    ]);
    let fresh = new_store();
    ok(image(fresh.path(), &["pull", &copied]));
    assert_eq!(config_id(fresh.path(), &copied), id);

    // Loaded into a fresh store: the same image under the same name.
    let other = new_store();
    let out = ok(image(other.path(), &["load", "-i", tar_str]));
    assert!(out.contains("loaded") && out.contains(&id), "{out}");
    assert_eq!(config_id(other.path(), &name), id);
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(other.path(), &["inspect", &name]))).unwrap();
    let top = inspect["layers"][0].as_str().unwrap();
    assert_eq!(
        std::fs::read(Path::new(top).join("etc/second")).unwrap(),
        b"2\n"
    );
}

#[test]
fn skopeo_layouts_and_docker_archives_load() {
    require_root();
    let registry = Registry::start();
    Layout::new(&two_layers(), None).push(&registry, "test/busybox:1");
    let name = format!("{}/test/busybox:1", registry.host);
    let dir = tempfile::tempdir().unwrap();

    // An OCI layout directory whose ref.name is a bare tag: named by -t.
    let layout = dir.path().join("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:v1", layout.display()),
    ]);
    let store = new_store();
    let unnamed = image(store.path(), &["load", "-i", layout.to_str().unwrap()]);
    assert!(!unnamed.status.success());
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("has no name in the input"));
    ok(image(
        store.path(),
        &[
            "load",
            "-i",
            layout.to_str().unwrap(),
            "-t",
            "local/busybox:v1",
        ],
    ));
    let id = config_id(store.path(), "local/busybox:v1");

    // A docker save archive as skopeo writes it (layer tars, RepoTags).
    let archive = dir.path().join("docker.tar");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("docker-archive:{}:saved/busybox:2", archive.display()),
    ]);
    let store = new_store();
    let out = ok(image(
        store.path(),
        &["load", "-i", archive.to_str().unwrap()],
    ));
    assert!(out.contains("saved/busybox:2"), "{out}");
    assert_eq!(config_id(store.path(), "saved/busybox:2"), id);
    assert!(ok(image(store.path(), &["ls"])).contains("saved/busybox"));
}

#[test]
fn bad_archives_are_refused_and_name_nothing() {
    require_root();
    let registry = Registry::start();
    Layout::new(&two_layers(), None).push(&registry, "test/busybox:1");
    let name = format!("{}/test/busybox:1", registry.host);
    let store = new_store();
    ok(image(store.path(), &["pull", &name]));
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.tar");
    ok(image(
        store.path(),
        &["save", "-o", saved.to_str().unwrap(), &name],
    ));

    // A blob whose content is not what its name says.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&saved)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(untar.success());
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &name]))).unwrap();
    let layer = inspect["manifest"]["layers"][1]["digest"].as_str().unwrap();
    let path = layout.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let fresh = new_store();
    let out = image(fresh.path(), &["load", "-i", layout.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("not {layer}")), "{err}");
    assert!(!ok(image(fresh.path(), &["ls"])).contains("busybox"));

    // Not an archive at all; a missing file.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a tar").unwrap();
    let out = image(fresh.path(), &["load", "-i", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let out = image(fresh.path(), &["load", "-i", "/nonexistent.tar"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.tar"));
    // Saving an image the store lacks leaves no file behind.
    let target = dir.path().join("never.tar");
    let out = image(
        fresh.path(),
        &["save", "-o", target.to_str().unwrap(), "no/such:1"],
    );
    assert!(!out.status.success());
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}
