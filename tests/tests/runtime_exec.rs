//! `berth-agent runtime exec`: a second process in a live container, with
//! the same flags given to Debian's `runc exec` on the same bundle.

use std::path::Path;

use berth_tests::runtime::{ok, runc, runtime, state_root};
use berth_tests::{require_root, BusyboxBundle};

/// What an exec'd process sees of itself and its container.
const PROBE: &str = "hostname; id -u; id -g; pwd; echo \"$FOO\"; \
    tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc/self/fd; \
    sed -n 's/^CapEff:\\s*//p' /proc/self/status";

/// A running container (`sleep`), under berth or runc, deleted on drop.
struct Live<'a> {
    tool: fn(&Path, &[&str]) -> std::process::Output,
    root: &'a Path,
    id: &'static str,
}

impl<'a> Live<'a> {
    fn start(
        tool: fn(&Path, &[&str]) -> std::process::Output,
        root: &'a Path,
        bundle: &BusyboxBundle,
        id: &'static str,
    ) -> Self {
        ok(tool(
            root,
            &["run", "-d", "-b", bundle.path().to_str().unwrap(), id],
        ));
        Live { tool, root, id }
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["exec"];
        all.extend_from_slice(&args[..args.len() - 1]);
        all.push(self.id);
        all.push("sh");
        all.push("-c");
        all.push(args[args.len() - 1]);
        (self.tool)(self.root, &all)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        let _ = (self.tool)(self.root, &["delete", "--force", self.id]);
    }
}

#[test]
fn exec_joins_the_container_as_runc_exec_does() {
    require_root();
    let bundle = BusyboxBundle::new(&["sleep", "1000"], |c| {
        let caps = serde_json::json!(["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"]);
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps
        });
    });
    let (ours, theirs) = (state_root(), state_root());
    let berth = Live::start(runtime, ours.path(), &bundle, "ex");
    let runc_live = Live::start(runc, theirs.path(), &bundle, "ex");
    let flags: &[&str] = &["-e", "FOO=bar", "--cwd", "/tmp", "-u", "1000:1001", PROBE];
    let got = ok(berth.exec(flags));
    let want = ok(runc_live.exec(flags));
    assert_eq!(got, want);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[..5], ["berthbox", "1000", "1001", "/tmp", "bar"]);
    assert_eq!(lines[5].trim(), "sleep 1000");
    // Only stdio (and ls's own listing descriptor) is open.
    assert_eq!(lines[6..10], ["0", "1", "2", "3"]);

    // A capability added for one exec, as with runc exec --cap.
    let rename = "hostname other 2>/dev/null || echo refused; hostname";
    assert_eq!(ok(berth.exec(&[rename])), "refused\nberthbox\n");
    let flags: &[&str] = &["--cap", "CAP_SYS_ADMIN", rename];
    let got = ok(berth.exec(flags));
    assert_eq!(got, "other\n");
    assert_eq!(got, ok(runc_live.exec(flags)));
}

#[test]
fn exec_reports_exit_codes_and_joins_the_cgroup() {
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(&["sleep", "1000"], |c| {
        c["linux"]["resources"] = serde_json::json!({"pids": {"limit": 50}});
    });
    let live = Live::start(runtime, root.path(), &bundle, "codes");
    assert_eq!(live.exec(&["exit 7"]).status.code(), Some(7));
    assert_eq!(live.exec(&["kill -TERM $$"]).status.code(), Some(128 + 15));
    let cgroup = ok(live.exec(&["grep pids /proc/self/cgroup"]));
    assert!(cgroup.trim_end().ends_with("/berth/codes"), "{cgroup}");

    // Detached, with its pid written where asked: the process is the
    // container's, and `ps` lists it.
    let pid_file = root.path().join("exec.pid");
    ok(runtime(
        root.path(),
        &[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "codes",
            "sleep",
            "999",
        ],
    ));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let listed: Vec<i64> =
        serde_json::from_str(&ok(runtime(root.path(), &["ps", "-f", "json", "codes"]))).unwrap();
    assert!(
        listed.contains(&pid.trim().parse().unwrap()),
        "{pid} not in {listed:?}"
    );
}

#[test]
fn exec_refuses_what_it_cannot_do_clearly() {
    require_root();
    let root = state_root();
    let bundle = BusyboxBundle::new(&["true"], |_| {});
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = err(runtime(root.path(), &["exec", "nosuch", "true"]));
    assert!(missing.contains("\"nosuch\" does not exist"), "{missing}");

    ok(runtime(
        root.path(),
        &["run", "-b", bundle.path().to_str().unwrap(), "done"],
    ));
    // `run` deleted it; make a stopped one to exec into.
    ok(runtime(
        root.path(),
        &["create", "-b", bundle.path().to_str().unwrap(), "stopped"],
    ));
    ok(runtime(root.path(), &["start", "stopped"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while berth_tests::runtime::status(root.path(), "stopped") != "stopped" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stopped = err(runtime(root.path(), &["exec", "stopped", "true"]));
    assert!(stopped.contains("it is stopped"), "{stopped}");
    ok(runtime(root.path(), &["delete", "stopped"]));

    let sleeper = BusyboxBundle::new(&["sleep", "1000"], |_| {});
    let live = Live::start(runtime, root.path(), &sleeper, "live");
    let no_program = err(runtime(root.path(), &["exec", "live", "no-such-program"]));
    assert!(no_program.contains("no-such-program"), "{no_program}");
    let no_command = err(runtime(root.path(), &["exec", "live"]));
    assert!(no_command.contains("give a command"), "{no_command}");
    let bad_user = err(runtime(root.path(), &["exec", "-u", "bob", "live", "true"]));
    assert!(bad_user.contains("UID[:GID]"), "{bad_user}");
    drop(live);
}
