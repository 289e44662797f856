//! User namespaces, cgroup mounts and hooks inside the container, each
//! compared with Debian's `runc` on the same bundle where runc can run it.

use std::os::unix::fs::PermissionsExt;

use berth_tests::runtime::{ok, runc_run, runtime, state_root};
use berth_tests::{bin, require_root, BusyboxBundle};

/// The container's root is host uid/gid 100000, as a user namespace
/// remaps it.
fn userns_bundle(args: &[&str]) -> BusyboxBundle {
    let bundle = BusyboxBundle::new(args, |c| {
        let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
    });
    // The remapped root must be able to reach its rootfs.
    std::fs::set_permissions(bundle.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    bundle
}

#[test]
fn a_user_namespace_remaps_ids_as_under_runc() {
    require_root();
    let script = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; \
                  stat -c '%u:%g' /bin/busybox; \
                  echo x > /written 2>/dev/null && echo wrote || echo refused; \
                  echo x > /tmp/ok && echo tmp-ok; \
                  hostname; ls /dev/null /dev/zero";
    let bundle = userns_bundle(&["sh", "-c", script]);
    // /tmp must be the container's to write: a tmpfs it owns.
    let root = state_root();
    let got = ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "users"],
    ));
    let want = runc_run(&bundle, "users");
    assert_eq!(got, want);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[..2], ["0", "0"]);
    for map in &lines[2..4] {
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(fields, ["0", "100000", "65536"]);
    }
    // The host's root owns the rootfs: unmapped, it shows as nobody, and
    // the container's root cannot write there.
    assert_eq!(lines[4], "65534:65534");
    assert_eq!(lines[5], "refused");
    assert!(!bundle.path().join("rootfs/written").exists());
}

#[test]
fn a_user_namespace_container_runs_as_its_host_ids() {
    require_root();
    let bundle = userns_bundle(&["sleep", "1000"]);
    let root = state_root();
    ok(runtime(
        root.path(),
        &[
            "run",
            "-d",
            "-b",
            bundle.path().to_str().unwrap(),
            "host-ids",
        ],
    ));
    let state: serde_json::Value =
        serde_json::from_str(&ok(runtime(root.path(), &["state", "host-ids"]))).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(field("Uid:"), "100000");
    assert_eq!(field("Gid:"), "100000");
    // An exec joins the user namespace too.
    let id = ok(runtime(root.path(), &["exec", "host-ids", "id", "-u"]));
    assert_eq!(id, "0\n");
    ok(runtime(root.path(), &["delete", "--force", "host-ids"]));

    // Maps without a user namespace, and the reverse, are refused.
    let unmapped = BusyboxBundle::new(&["true"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
    });
    let out = runtime(
        root.path(),
        &["run", "-b", unmapped.path().to_str().unwrap(), "bad"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uidMappings and gidMappings"));
}

fn cgroup_bundle(cgroup_ns: bool) -> BusyboxBundle {
    let script = "cat /sys/fs/cgroup/pids/pids.max; grep ':pids:' /proc/self/cgroup; \
                  mkdir /sys/fs/cgroup/pids/x 2>/dev/null && echo rw || echo ro; \
                  ls /sys/fs/cgroup/pids/ | grep -c '^pids\\.'";
    BusyboxBundle::new(&["sh", "-c", script], |c| {
        c["linux"]["resources"] = serde_json::json!({"pids": {"limit": 77}});
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }));
        if cgroup_ns {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "cgroup"}));
        }
    })
}

#[test]
fn the_cgroup_mount_shows_the_containers_own_cgroups_as_under_runc() {
    require_root();
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // A v2-only host has no pids/ directory; the v1 layout is what
        // this host (hybrid) and the probe below look at.
        return;
    }
    let root = state_root();
    for (cgroup_ns, id) in [(true, "cgns"), (false, "nocgns")] {
        let bundle = cgroup_bundle(cgroup_ns);
        let got = ok(runtime(
            root.path(),
            &["run", "-b", bundle.path().to_str().unwrap(), id],
        ));
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "77", "{id}: {got}");
        if cgroup_ns {
            assert!(lines[1].ends_with(":pids:/"), "{got}");
        } else {
            assert!(lines[1].ends_with(&format!(":pids:/berth/{id}")), "{got}");
        }
        assert_eq!(lines[2], "ro");
        assert!(lines[3].parse::<u32>().unwrap() >= 2, "{got}");
        if cgroup_ns {
            assert_eq!(got, runc_run(&bundle, id));
        }
    }
}

#[test]
fn hooks_run_inside_the_container_and_cannot_reach_the_agent() {
    require_root();
    let agent = bin("berth-agent");
    let before = std::fs::read(&agent).unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_path = out.path().to_str().unwrap().to_owned();
    // createContainer: in the container's namespaces, before pivot_root
    // (host paths still resolve). startContainer: after it (the path is
    // the container's /bin/sh); it keeps a handle on PID 1's binary, the
    // runtime's, and tries to write through it once PID 1 has exec'd. The
    // kernel may refuse the open (ETXTBSY while the copy is still mapped
    // for execution) or the write (the seals): either is a refusal.
    let attack = "readlink /proc/1/exe > /tmp/init-exe; exec 3</proc/1/exe; \
        ( while grep -q berth /proc/1/cmdline; do :; done; \
          for i in $(seq 30); do \
            { echo pwned >> /proc/self/fd/3; } 2>/dev/null && { echo wrote; exit; }; sleep 0.1; \
          done; echo refused ) > /tmp/attack 2>&1 & \
        hostname > /tmp/start-hook";
    let bundle = BusyboxBundle::new(
        &[
            "sh",
            "-c",
            "sleep 4; cat /tmp/start-hook /tmp/init-exe /tmp/attack > /result",
        ],
        |c| {
            c["hooks"] = serde_json::json!({
                "createContainer": [{
                    "path": "/bin/sh",
                    "args": ["sh", "-c", format!("readlink /proc/self/ns/net > {out_path}/create-hook")],
                }],
                "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", attack]}]
            });
        },
    );
    let root = state_root();
    ok(runtime(
        root.path(),
        &["create", "-b", bundle.path().to_str().unwrap(), "inside"],
    ));
    let state: serde_json::Value =
        serde_json::from_str(&ok(runtime(root.path(), &["state", "inside"]))).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let container_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let create_hook = std::fs::read_to_string(out.path().join("create-hook")).unwrap();
    assert_eq!(create_hook.trim_end(), container_net.to_str().unwrap());
    ok(runtime(root.path(), &["start", "inside"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while berth_tests::runtime::status(root.path(), "inside") != "stopped" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(runtime(root.path(), &["delete", "inside"]));
    let result = std::fs::read_to_string(bundle.path().join("rootfs/result")).unwrap();
    let lines: Vec<&str> = result.lines().collect();
    assert_eq!(
        lines[0], "berthbox",
        "startContainer runs after the hostname is set"
    );
    assert!(
        lines[1].starts_with("/memfd:berth-agent"),
        "the init runs from the sealed copy: {result}"
    );
    assert_eq!(lines[2], "refused", "{result}");
    assert!(
        std::fs::read(&agent).unwrap() == before,
        "the agent binary changed"
    );
}
