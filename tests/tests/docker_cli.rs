//! The stock `docker` CLI against `berth-agent`'s Docker Engine API.

use berth_tests::docker::Engine;
use berth_tests::require_root;

#[test]
fn run_prints_output_and_passes_exit_codes() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    assert_eq!(d.ok(&["run", "--rm", &image, "echo", "hi"]), "hi\n");
    let out = d.run(&["run", &image, "sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
