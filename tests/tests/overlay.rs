//! The overlay rootfs helper on this kernel: many layers past the mount
//! options' page, a container running on the result, its writes in its
//! own upper directory only.

use std::path::{Path, PathBuf};

use berth_agent::runtime::overlay::{self, Overlay};
use berth_tests::runtime::{ok, runtime, state_root};
use berth_tests::{require_root, BusyboxBundle};

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = overlay::unmount(&self.0);
    }
}

/// `count` one-file layers under `store`, named long enough that their
/// absolute paths overflow a page of mount options.
fn layers(store: &Path, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let dir = store
                .join("layers")
                .join(format!("{i:04}-sha256-{}", "0123456789abcdef".repeat(3)))
                .join("fs");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("layer-{i}")), format!("{i}\n")).unwrap();
            // The same name in every layer: the topmost one must win.
            std::fs::write(dir.join("top"), format!("{i}\n")).unwrap();
            dir
        })
        .collect()
}

#[test]
fn a_container_runs_on_three_hundred_layers() {
    require_root();
    let bundle = BusyboxBundle::new(
        &["sh", "-c", "cat /top /layer-0 /layer-298; echo new > /written; rm /layer-5; [ -e /layer-5 ] || echo gone"],
        |c| c["root"]["path"] = "merged".into(),
    );
    let store = tempfile::Builder::new()
        .prefix("store")
        .tempdir_in("/tmp")
        .unwrap();
    // Topmost first: layer 0 is the top; busybox is the base.
    let mut lowers = layers(store.path(), 299);
    lowers.push(bundle.path().join("rootfs"));
    let absolute: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        absolute > 4096,
        "the test must overflow a page ({absolute} bytes)"
    );
    let (upper, work) = (store.path().join("c/upper"), store.path().join("c/work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let merged = bundle.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    Overlay {
        lowers: lowers.clone(),
        upper: upper.clone(),
        work,
    }
    .mount(&merged)
    .unwrap();
    let _mounted = Mounted(merged.clone());

    let root = state_root();
    let out = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "layered"],
    ));
    assert_eq!(out, "0\n0\n298\ngone\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "new\n"
    );
    // The deletion is a whiteout in the upper dir; the layer is untouched.
    assert!(lowers[5].join("layer-5").exists());
    assert!(!merged.join("layer-5").exists());
    assert!(!lowers[0].join("written").exists());
}

#[test]
fn the_legacy_way_names_many_layers_relative_to_their_parent() {
    require_root();
    let store = tempfile::Builder::new()
        .prefix("store")
        .tempdir_in("/tmp")
        .unwrap();
    let lowers: Vec<PathBuf> = (0..300)
        .map(|i| {
            let dir = store.path().join(i.to_string()).join("fs");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("layer-{i}")), format!("{i}\n")).unwrap();
            std::fs::write(dir.join("top"), format!("{i}\n")).unwrap();
            dir
        })
        .collect();
    let absolute: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        absolute > 4096,
        "the test must overflow a page ({absolute} bytes)"
    );
    let (upper, work, merged) = (
        store.path().join("upper"),
        store.path().join("work"),
        store.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let cwd = std::env::current_dir().unwrap();
    Overlay {
        lowers,
        upper: upper.clone(),
        work,
    }
    .mount_legacy(&merged)
    .unwrap();
    let _mounted = Mounted(merged.clone());
    // The mount thread had a cwd of its own.
    assert_eq!(std::env::current_dir().unwrap(), cwd);
    let read = |name: &str| std::fs::read_to_string(merged.join(name)).unwrap();
    assert_eq!(read("top"), "0\n");
    assert_eq!(read("layer-0"), "0\n");
    assert_eq!(read("layer-299"), "299\n");
    std::fs::write(merged.join("new"), "x").unwrap();
    assert!(upper.join("new").exists());
}

#[test]
fn too_many_layers_for_a_page_even_relative_are_refused_clearly() {
    require_root();
    let store = tempfile::Builder::new()
        .prefix("store")
        .tempdir_in("/tmp")
        .unwrap();
    // Names so long that even relative to their parent they overflow.
    let lowers: Vec<PathBuf> = (0..80)
        .map(|i| {
            let dir = store.path().join(format!("{i:03}-{}", "x".repeat(60)));
            std::fs::create_dir(&dir).unwrap();
            dir
        })
        .collect();
    let target = store.path().join("merged");
    std::fs::create_dir(&target).unwrap();
    let err = Overlay {
        lowers,
        upper: store.path().join("upper"),
        work: store.path().join("work"),
    }
    .mount_legacy(&target)
    .unwrap_err()
    .to_string();
    assert!(err.contains("more than a page"), "{err}");
}
