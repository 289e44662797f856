//! `docker exec` and `docker run -it` through the stock CLI, terminals
//! included: a real pseudo-terminal, typed input, `exit`, window resize.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use berth_tests::docker::{Engine, Pty};
use berth_tests::require_root;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn exec_runs_commands_in_a_running_container() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&[
        "run", "-d", "--name", "box", "-e", "BASE=1", &image, "sleep", "600",
    ]);
    assert_eq!(d.ok(&["exec", "box", "echo", "hi"]), "hi\n");
    let out = d.ok(&[
        "exec",
        "-e",
        "EXTRA=2",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "box",
        "sh",
        "-c",
        "echo $BASE $EXTRA $(pwd) $(id -u)",
    ]);
    assert_eq!(out, "1 2 /tmp 65534\n");
    // It is in the container: same filesystem, same pid namespace.
    d.ok(&["exec", "box", "sh", "-c", "echo mark > /tmp/mark"]);
    assert_eq!(d.ok(&["exec", "box", "cat", "/tmp/mark"]), "mark\n");
    let ps = d.ok(&["exec", "box", "ps", "-o", "pid,comm"]);
    assert!(ps.lines().any(|l| l.trim() == "1 sleep"), "{ps}");

    let out = d.run(&["exec", "box", "sh", "-c", "echo err >&2; exit 5"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}\n{}",
        text(&out),
        d.log_tail()
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = d.run(&["exec", "box", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(
        text(&out).contains("executable file not found"),
        "{}",
        text(&out)
    );

    // stdin reaches the process and its end ends the process's input.
    let mut child = d
        .command(&["exec", "-i", "box", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\ndone\n");

    // -d: the process runs on its own.
    d.ok(&[
        "exec",
        "-d",
        "box",
        "sh",
        "-c",
        "sleep 0.2; echo later > /tmp/later",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d
        .run(&["exec", "box", "test", "-f", "/tmp/later"])
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Not into a stopped container, nor one that does not exist.
    d.ok(&["kill", "box"]);
    let out = d.run(&["exec", "box", "true"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not running"), "{}", text(&out));
    let out = d.run(&["exec", "nothing", "true"]);
    assert!(
        text(&out).contains("No such container: nothing"),
        "{}",
        text(&out)
    );
}

#[test]
fn exec_it_has_a_terminal_that_resizes() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["run", "-d", "--name", "box", &image, "sleep", "600"]);
    let mut pty = Pty::spawn(d.command(&["exec", "-it", "box", "sh"]), 24, 80);
    pty.expect("# ", Duration::from_secs(20));
    pty.write("stty size; tty\n");
    pty.expect("24 80", Duration::from_secs(20));
    pty.expect("/dev/pts/", Duration::from_secs(5));
    pty.resize(40, 132);
    std::thread::sleep(Duration::from_millis(500));
    pty.write("stty size\n");
    pty.expect("40 132", Duration::from_secs(10));
    pty.write("exit 7\n");
    assert_eq!(pty.wait(Duration::from_secs(20)), Some(7));
}

#[test]
fn run_it_is_interactive_and_exit_ends_it() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["pull", "-q", &image]);
    let mut pty = Pty::spawn(d.command(&["run", "-it", "--rm", &image, "sh"]), 30, 100);
    pty.expect("# ", Duration::from_secs(20));
    pty.write("echo $((6 * 7)); stty size\n");
    pty.expect("42", Duration::from_secs(20));
    pty.expect("30 100", Duration::from_secs(5));
    pty.resize(50, 120);
    std::thread::sleep(Duration::from_millis(500));
    pty.write("stty size\n");
    pty.expect("50 120", Duration::from_secs(10));
    pty.write("exit 3\n");
    assert_eq!(pty.wait(Duration::from_secs(20)), Some(3));
    assert_eq!(d.ok(&["ps", "-aq"]), "");

    // -t alone: raw output, no stdcopy framing, \r\n from the terminal.
    let out = d.ok(&["run", "-t", "--rm", &image, "echo", "raw"]);
    assert_eq!(out, "raw\r\n");
}
