//! `berth-agent image` against a real registry (Debian's docker-registry),
//! with images put there by skopeo; the pulled layers stacked by overlayfs
//! and run by the runtime; hostile layers refused.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use berth_agent::image::manifest::Compression;
use berth_agent::image::unpack::unpack;
use berth_agent::runtime::overlay::{self, Overlay};
use berth_tests::registry::{
    busybox_layer, entry, file, gzip, header, tar_of, LayerFn, Layout, Packing, Registry,
};
use berth_tests::runtime::{collect, ok, runtime, state_root};
use berth_tests::{bin, require_root};

fn image(store: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(bin("berth-agent"));
    command.arg("image").arg("--root").arg(store).args(args);
    collect(command)
}

/// A second layer: a deletion (whiteout), an opaque directory, a hard link.
fn changes_layer() -> LayerFn {
    Box::new(|t| {
        file(t, "etc/.wh.gone", b"", 0o644);
        file(t, "etc/hello", b"hello\n", 0o644);
        entry(t, "etc/hello-link", tar::EntryType::Link, Some("etc/hello"));
        entry(t, "data", tar::EntryType::Directory, None);
        file(t, "data/.wh..wh..opq", b"", 0o644);
        file(t, "data/new", b"new\n", 0o600);
    })
}

#[test]
fn a_pulled_image_runs_on_its_layers() {
    require_root();
    let registry = Registry::start();
    let base: LayerFn = Box::new(|t| {
        busybox_layer()(t);
        entry(t, "data", tar::EntryType::Directory, None);
        file(t, "data/old", b"old\n", 0o644);
    });
    Layout::new(&[base, changes_layer()], None).push(&registry, "test/busybox:1");
    let store = tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!("{}/test/busybox:1", registry.host);
    let out = ok(image(store.path(), &["pull", &name]));
    assert!(out.contains("pulled sha256:"), "{out}");
    // A second pull finds everything in place.
    let again = image(store.path(), &["pull", &name]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(ok(image(store.path(), &["ls"])).contains("test/busybox"));

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &name]))).unwrap();
    let lowers: Vec<std::path::PathBuf> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().into())
        .collect();
    assert_eq!(lowers.len(), 2);
    // The top layer in overlay form: a 0/0 whiteout, an opaque dir, a
    // hard link sharing its target's inode.
    let top = &lowers[0];
    let whiteout = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert_eq!((whiteout.mode() & 0o170000, whiteout.rdev()), (0o020000, 0));
    let hello = std::fs::metadata(top.join("etc/hello")).unwrap();
    assert_eq!(
        hello.ino(),
        std::fs::metadata(top.join("etc/hello-link")).unwrap().ino()
    );
    assert_eq!(
        xattr::get(top.join("data"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );

    // The layers under overlayfs, run by the runtime.
    let bundle = tempfile::Builder::new()
        .prefix("bundle")
        .tempdir_in("/tmp")
        .unwrap();
    let (upper, work, rootfs) = (
        bundle.path().join("upper"),
        bundle.path().join("work"),
        bundle.path().join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir(d).unwrap();
    }
    Overlay {
        lowers,
        upper,
        work,
    }
    .mount(&rootfs)
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = overlay::unmount(self.0);
        }
    }
    let _unmount = Unmount(&rootfs);
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
            "args": ["sh", "-c", "cat /etc/hello /etc/kept; ls /data; test -e /etc/gone || echo gone"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    std::fs::write(bundle.path().join("config.json"), config.to_string()).unwrap();
    let root = state_root();
    let out = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "from-image"],
    ));
    assert_eq!(out, "hello\nkept\nnew\ngone\n");
}

#[test]
fn a_config_that_lies_about_a_layer_is_refused() {
    require_root();
    let registry = Registry::start();
    let wrong = format!("sha256:{}", "0".repeat(64));
    Layout::new(&[busybox_layer()], Some(vec![wrong.clone()])).push(&registry, "test/liar:1");
    let store = tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap();
    let out = image(
        store.path(),
        &["pull", &format!("{}/test/liar:1", registry.host)],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("the config says {wrong}")), "{err}");
    // Nothing half-made is left: no snapshot, no name.
    let snapshots: Vec<_> = std::fs::read_dir(store.path().join("snapshots"))
        .unwrap()
        .collect();
    assert!(snapshots.is_empty(), "{snapshots:?}");
    assert!(!ok(image(store.path(), &["ls"])).contains("liar"));

    let missing = image(
        store.path(),
        &["pull", &format!("{}/test/nothing:1", registry.host)],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let bad = image(store.path(), &["pull", "Not/A/Reference"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase"));
}

/// Unpacks `layer` into a fresh snapshot beside a sentinel directory and
/// returns the error; asserts that nothing outside the snapshot changed.
fn refused(layer: &[u8], compression: Compression) -> String {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&snapshot).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "safe").unwrap();
    let err = unpack(layer, compression, &snapshot)
        .expect_err("the layer was accepted")
        .to_string();
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["victim"], "something appeared outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "safe"
    );
    assert!(!dir.path().join("escaped").exists());
    err
}

#[test]
fn hostile_layers_are_refused_and_change_nothing_outside() {
    require_root();
    let cases: Vec<(&str, LayerFn)> = vec![
        (
            "'..' would leave the layer",
            Box::new(|t| {
                // tar::Builder refuses '..' itself: write the name raw.
                let mut h = tar::Header::new_old();
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.as_old_mut().name[..17].copy_from_slice(b"../outside/victim");
                h.set_size(4);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                t.append(&h, &b"evil"[..]).unwrap();
            }),
        ),
        (
            "an absolute path is refused",
            Box::new(|t| {
                let mut h = tar::Header::new_old();
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.as_old_mut().name[..8].copy_from_slice(b"/escaped");
                h.set_size(4);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                t.append(&h, &b"evil"[..]).unwrap();
            }),
        ),
        (
            "is a symbolic link; writing through it is refused",
            Box::new(|t| {
                entry(t, "link", tar::EntryType::Symlink, Some("../outside"));
                file(t, "link/victim", b"evil", 0o644);
            }),
        ),
        (
            "is a symbolic link; writing through it is refused",
            Box::new(|t| {
                entry(t, "abs", tar::EntryType::Symlink, Some("/"));
                file(t, "abs/escaped", b"evil", 0o644);
            }),
        ),
        (
            "leaves the layer; refused",
            Box::new(|t| {
                let mut h = header();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Link);
                h.set_path("hard").unwrap();
                h.as_gnu_mut().unwrap().linkname[..17].copy_from_slice(b"../outside/victim");
                h.set_cksum();
                t.append(&h, std::io::empty()).unwrap();
            }),
        ),
        (
            "through a symbolic link; refused",
            Box::new(|t| {
                entry(t, "up", tar::EntryType::Symlink, Some("../outside"));
                entry(t, "hard", tar::EntryType::Link, Some("up/victim"));
            }),
        ),
        (
            "which is not in this layer",
            Box::new(|t| entry(t, "hard", tar::EntryType::Link, Some("etc/passwd"))),
        ),
        (
            "device nodes are refused",
            Box::new(|t| {
                let mut h = header();
                h.set_size(0);
                h.set_mode(0o600);
                h.set_entry_type(tar::EntryType::Block);
                h.set_device_major(8).unwrap();
                h.set_device_minor(0).unwrap();
                h.set_path("sda").unwrap();
                h.set_cksum();
                t.append(&h, std::io::empty()).unwrap();
            }),
        ),
    ];
    for (why, layer) in &cases {
        let err = refused(&gzip(&tar_of(layer)), Compression::Gzip);
        assert!(err.contains(why), "expected {why:?}, got {err:?}");
    }
    // A truncated layer: the gzip stream stops halfway.
    let whole = gzip(&tar_of(&busybox_layer()));
    let err = refused(&whole[..whole.len() / 2], Compression::Gzip);
    assert!(err.contains("layer refused"), "{err}");
    // Forged overlay metadata in an xattr is dropped, not applied.
    let forged: LayerFn = Box::new(|t| {
        t.append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])])
            .unwrap();
        entry(t, "dir", tar::EntryType::Directory, None);
    });
    let dir = tempfile::tempdir().unwrap();
    unpack(&gzip(&tar_of(&forged))[..], Compression::Gzip, dir.path()).unwrap();
    assert_eq!(
        xattr::get(dir.path().join("dir"), "trusted.overlay.opaque").unwrap(),
        None
    );
}

/// `skopeo` against the test registry, which speaks plain HTTP.
fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_pushed_image_reads_back_with_skopeo() {
    require_root();
    let registry = Registry::start();
    let host = &registry.host;
    Layout::new(&[busybox_layer(), changes_layer()], None).push(&registry, "test/busybox:1");
    let store = tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap();
    let pulled = format!("{host}/test/busybox:1");
    ok(image(store.path(), &["pull", &pulled]));

    // A new repository with no other name in the store to mount from:
    // every blob goes up, the big layer in 64 KiB chunks.
    let copy = format!("{host}/other/copy:2");
    ok(image(store.path(), &["tag", &pulled, &copy]));
    ok(image(store.path(), &["rm", &pulled]));
    let push = image(store.path(), &["push", "--chunk-size", "65536", &copy]);
    let (out, err) = (
        String::from_utf8_lossy(&push.stdout),
        String::from_utf8_lossy(&push.stderr),
    );
    assert!(push.status.success(), "{err}");
    assert!(err.contains("pushing") && err.contains(": pushed"), "{err}");
    let digest = out
        .trim()
        .rsplit("digest ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{copy}"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], digest);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    // skopeo copies it out (checking every blob's digest) and the layout
    // holds the same manifest we pushed.
    let out_dir = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{copy}"),
        &format!("oci:{}:copy", out_dir.path().display()),
    ]);
    let ours: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &copy]))).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(theirs["manifests"][0]["digest"], ours["record"]["manifest"]);

    // Same registry, third repository: the blobs are mounted, not sent.
    let third = format!("{host}/third/img:1");
    ok(image(store.path(), &["tag", &copy, &third]));
    let push = image(store.path(), &["push", &third]);
    let err = String::from_utf8_lossy(&push.stderr);
    assert!(push.status.success(), "{err}");
    assert_eq!(err.matches("mounted from").count(), 3, "{err}");
    // Pushed again: nothing to send.
    let push = image(store.path(), &["push", &third]);
    let err = String::from_utf8_lossy(&push.stderr);
    assert_eq!(err.matches("already exists").count(), 3, "{err}");

    // A name the store does not have.
    let missing = image(store.path(), &["push", &format!("{host}/no/such:1")]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn zstd_and_plain_layers_unpack_and_a_link_from_a_lower_layer_leads_nowhere() {
    require_root();
    let registry = Registry::start();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "safe").unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let base: LayerFn = Box::new(move |t| {
        busybox_layer()(t);
        entry(t, "escape", tar::EntryType::Symlink, Some(&target));
    });
    let zstd: LayerFn = Box::new(|t| {
        file(t, "etc/zstd", b"zstd\n", 0o644);
        // Through the link the layer below planted, if it were followed.
        file(t, "escape/victim", b"evil", 0o644);
    });
    let plain: LayerFn = Box::new(|t| {
        file(t, "etc/plain", b"plain\n", 0o644);
        file(t, "etc/.wh.kept", b"", 0o644);
    });
    Layout::packed(
        &[base, zstd, plain],
        &[Packing::Gzip, Packing::Zstd, Packing::Plain],
        None,
    )
    .push(&registry, "test/packed:1");
    let store = tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!("{}/test/packed:1", registry.host);
    ok(image(store.path(), &["pull", &name]));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &name]))).unwrap();
    let media: Vec<&str> = inspect["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(
        media[1].ends_with("+zstd") && media[2].ends_with(".tar"),
        "{media:?}"
    );
    let lowers: Vec<std::path::PathBuf> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().into())
        .collect();
    let (top, middle) = (&lowers[0], &lowers[1]);
    assert_eq!(std::fs::read(top.join("etc/plain")).unwrap(), b"plain\n");
    let whiteout = std::fs::symlink_metadata(top.join("etc/kept")).unwrap();
    assert_eq!(whiteout.mode() & 0o170000, 0o020000);
    assert_eq!(std::fs::read(middle.join("etc/zstd")).unwrap(), b"zstd\n");
    // The middle layer's escape/ is a directory of its own; the link in
    // the base layer was never followed.
    assert!(std::fs::symlink_metadata(middle.join("escape"))
        .unwrap()
        .is_dir());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim")).unwrap(),
        "safe"
    );
}

#[test]
fn a_killed_pull_leaves_nothing_half_made_and_gc_clears_what_no_name_needs() {
    use std::io::BufRead;
    require_root();
    let registry = Registry::start();
    // One big layer of noise (gzip cannot shrink it), so the pull is
    // still downloading when it is killed.
    let big: LayerFn = Box::new(|t| {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..24 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        file(t, "noise", &noise, 0o644);
    });
    Layout::new(&[busybox_layer(), big], None).push(&registry, "test/big:1");
    let store = tempfile::Builder::new()
        .prefix("images")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!("{}/test/big:1", registry.host);
    let mut child = Command::new(berth_tests::bin("berth-agent"))
        .arg("image")
        .arg("--root")
        .arg(store.path())
        .args(["pull", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains("downloading") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ok(image(store.path(), &["ls"])).contains("test/big"));

    // Pulled again: whole, and nothing of the killed pull is left over.
    ok(image(store.path(), &["pull", &name]));
    let leftovers = |dir: &str| -> Vec<String> {
        std::fs::read_dir(store.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") || dir == "ingest")
            .collect()
    };
    assert!(leftovers("ingest").is_empty(), "{:?}", leftovers("ingest"));
    assert!(
        leftovers("snapshots").is_empty(),
        "{:?}",
        leftovers("snapshots")
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(image(store.path(), &["inspect", &name]))).unwrap();
    let top = inspect["layers"][0].as_str().unwrap();
    assert_eq!(
        std::fs::metadata(Path::new(top).join("noise"))
            .unwrap()
            .len(),
        24 << 20
    );

    // gc keeps what a name needs, and removes it all once no name does.
    assert!(ok(image(store.path(), &["gc"])).contains("removed 0 blobs"));
    ok(image(store.path(), &["rm", &name]));
    let out = ok(image(store.path(), &["gc"]));
    assert!(
        out.contains("removed 4 blobs") && out.contains("2 snapshots"),
        "{out}"
    );
    for dir in ["blobs/sha256", "snapshots"] {
        let left = std::fs::read_dir(store.path().join(dir)).unwrap().count();
        assert_eq!(left, 0, "{dir}");
    }
}
