//! A native machine through its whole life, driven by the real `berth`
//! binary, with the shells that evaluate `berth env` being real too.

use std::process::Stdio;

use berth_tests::{bin, ls_json, process_gone, shell, Berth};

fn row<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["Name"] == name)
        .unwrap_or_else(|| panic!("{name} not in ls: {rows:?}"))
}

/// `eval "$(berth env …)"` in `sh_path`, then prints the variables.
fn eval_env(berth: &Berth, sh_path: &str, env_args: &str, pre: &str) -> Vec<String> {
    let script = format!(
        "{pre}\neval \"$(\"$BERTH\" {env_args})\" || exit 9\n\
         printf '%s\\n' \"${{DOCKER_HOST-<unset>}}\" \"${{BERTH_ACTIVE_MACHINE-<unset>}}\" \
         \"${{DOCKER_TLS_VERIFY-<unset>}}\" \"${{DOCKER_CERT_PATH-<unset>}}\"\n\
         \"$BERTH\" active || echo '<no active>'"
    );
    let berth_bin = bin("berth");
    let agent_bin = bin("berth-agent");
    let out = shell(
        sh_path,
        &script,
        &[
            ("BERTH", berth_bin.to_str().unwrap()),
            ("BERTH_HOME", berth.home().to_str().unwrap()),
            ("BERTH_AGENT", agent_bin.to_str().unwrap()),
        ],
    );
    out.lines().map(str::to_owned).collect()
}

#[test]
fn create_ls_env_stop_start_rm() {
    let berth = Berth::new();
    berth.ok(&["create", "--driver", "native", "dev"]);

    // ls: running, with the agent's version, in the default table too.
    let rows = ls_json(&berth);
    let dev = row(&rows, "dev");
    assert_eq!(dev["State"], "Running");
    assert_eq!(dev["DriverName"], "native");
    assert_eq!(dev["Version"], format!("v{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(dev["Error"], "");
    let url = format!("unix://{}/docker.sock", berth.machine_dir("dev").display());
    assert_eq!(dev["URL"], url.as_str());
    let table = berth.ok(&["ls"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "VERSION", "ERRORS"]
    );
    let cells: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(cells[..4], ["dev", "-", "native", "Running"]);
    assert_eq!(berth.ok(&["status", "dev"]), "Running\n");
    assert_eq!(berth.ok(&["url", "dev"]), format!("{url}\n"));
    assert_eq!(berth.ok(&["ip", "dev"]), "127.0.0.1\n");
    assert_eq!(
        berth.ok(&["version", "dev"]),
        format!("v{}\n", env!("CARGO_PKG_VERSION"))
    );

    // env, evaluated by real shells; a TLS setting left from another
    // machine is cleared, and `active` reads DOCKER_HOST.
    for (sh, flag) in [("bash", "bash"), ("sh", "sh")] {
        let vars = eval_env(
            &berth,
            sh,
            &format!("env --shell {flag} dev"),
            "DOCKER_TLS_VERIFY=1; export DOCKER_TLS_VERIFY",
        );
        assert_eq!(
            vars,
            [url.as_str(), "dev", "<unset>", "<unset>", "dev"],
            "{sh}"
        );
        let vars = eval_env(
            &berth,
            sh,
            &format!("env --shell {flag} --unset"),
            &format!("export DOCKER_HOST={url} BERTH_ACTIVE_MACHINE=dev"),
        );
        assert_eq!(
            vars,
            ["<unset>", "<unset>", "<unset>", "<unset>", "<no active>"],
            "{sh}"
        );
    }
    // The shell is taken from $SHELL when not given.
    let vars = eval_env(&berth, "bash", "env dev", "");
    assert_eq!(vars[0], url);
    let active = berth
        .command(["ls", "--format", "{{.Name}} {{.Active}}"])
        .env("DOCKER_HOST", &url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&active.stdout), "dev *\n");

    // stop: the agent exits and cleans up after itself.
    berth.ok(&["stop", "dev"]);
    assert_eq!(row(&ls_json(&berth), "dev")["State"], "Stopped");
    assert_eq!(berth.ok(&["status", "dev"]), "Stopped\n");
    assert!(!berth.machine_dir("dev").join("agent.sock").exists());
    assert!(!berth.machine_dir("dev").join("agent/agent.pid").exists());
    assert!(berth.fails(&["env", "dev"]).contains("Host is not running"));
    assert!(berth.fails(&["url", "dev"]).contains("Host is not running"));
    assert!(berth.fails(&["stop", "dev"]).contains("is already stopped"));

    // start, restart, kill.
    berth.ok(&["start", "dev"]);
    assert_eq!(row(&ls_json(&berth), "dev")["State"], "Running");
    assert!(berth
        .fails(&["start", "dev"])
        .contains("is already running"));
    let before = berth.agent_pid("dev");
    berth.ok(&["restart", "dev"]);
    assert_ne!(
        berth.agent_pid("dev"),
        before,
        "restart must run a new agent"
    );
    berth.ok(&["kill", "dev"]);
    assert_eq!(berth.ok(&["status", "dev"]), "Stopped\n");
    berth.ok(&["restart", "dev"]);
    assert_eq!(berth.ok(&["status", "dev"]), "Running\n");

    // rm leaves nothing behind: no directory, no lock, no process.
    let pid = berth.agent_pid("dev");
    berth.ok(&["stop", "dev"]);
    berth.ok(&["rm", "-y", "dev"]);
    assert!(!berth.machine_dir("dev").exists());
    assert!(!berth.home().join("locks/dev.lock").exists());
    assert_eq!(
        std::fs::read_dir(berth.home().join("machines"))
            .unwrap()
            .count(),
        0
    );
    assert!(process_gone(pid), "agent {pid} outlived rm");
    assert_eq!(berth.ok(&["ls", "-q"]), "");
}

#[test]
fn rm_force_removes_a_running_machine_and_its_agent() {
    let berth = Berth::new();
    berth.ok(&["create", "dev"]);
    let pid = berth.agent_pid("dev");
    berth.ok(&["rm", "-f", "dev"]);
    assert!(!berth.machine_dir("dev").exists());
    assert!(process_gone(pid), "agent {pid} outlived rm -f");
}

#[test]
fn concurrent_creates_of_one_name_have_one_winner() {
    let berth = Berth::new();
    for round in 0..3 {
        let name = format!("race{round}");
        let children: Vec<_> = (0..2)
            .map(|_| {
                berth
                    .command(["create", name.as_str()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let winners = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(winners, 1, "round {round}: {outs:?}");
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        assert_eq!(loser.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&loser.stderr);
        assert!(
            stderr.contains(&format!("Machine \"{name}\" already exists")),
            "{stderr}"
        );
        assert_eq!(row(&ls_json(&berth), &name)["State"], "Running");
    }
}

#[test]
fn a_killed_agent_reads_as_stopped_and_its_stale_socket_does_not_block_start() {
    let berth = Berth::new();
    berth.ok(&["create", "dev"]);
    let socket = berth.machine_dir("dev").join("agent.sock");
    let pid = berth.agent_pid("dev");
    // The agent dies without cleaning up, as on an OOM kill.
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while berth.ok(&["status", "dev"]) != "Stopped\n" {
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(socket.exists(), "a killed agent leaves its socket");
    assert!(berth.fails(&["env", "dev"]).contains("Host is not running"));
    berth.ok(&["start", "dev"]);
    assert_eq!(
        row(&ls_json(&berth), "dev")["Version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let log = std::fs::read_to_string(berth.machine_dir("dev").join("agent.log")).unwrap();
    assert!(log.contains("removing stale socket"), "{log}");
}

#[test]
fn a_hung_agent_is_reported_not_waited_for() {
    let berth = Berth::new();
    berth.ok(&["create", "dev"]);
    let pid = berth.agent_pid("dev").to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&berth.ok(&["ls", "--json", "--timeout", "2"])).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    let dev = row(&rows, "dev");
    assert_eq!(dev["Version"], "Unknown");
    assert!(
        dev["Error"].as_str().unwrap().contains("does not answer"),
        "{dev}"
    );
    signal("-CONT");
    assert_eq!(row(&ls_json(&berth), "dev")["Error"], "");
}

#[test]
fn ls_formats_filters_and_quiet() {
    let berth = Berth::new();
    berth.ok(&["create", "--engine-label", "tier=front", "web2"]);
    berth.ok(&["create", "--engine-label", "tier=Front", "web10"]);
    berth.ok(&["create", "--engine-label", "tier=back", "db"]);
    berth.ok(&["stop", "db"]);
    assert_eq!(berth.ok(&["ls", "-q"]), "db\nweb2\nweb10\n");
    // Any value of one key may match, all keys must; labels as
    // docker-machine matches them: the key exact, the value in any case.
    for (filters, expected) in [
        (&["state=Running"][..], "web2\nweb10\n"),
        (&["name=^web1", "driver=native"], "web10\n"),
        (&["label=tier=front"], "web2\nweb10\n"),
        (&["label=tier=back", "label=zone=x"], "db\n"),
        (&["label=Tier=back"], ""),
    ] {
        let mut args = vec!["ls", "-q"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        assert_eq!(berth.ok(&args), expected, "{filters:?}");
    }
    assert_eq!(
        berth.ok(&["ls", "--format", "{{.Name}}:{{.State}}"]),
        "db:Stopped\nweb2:Running\nweb10:Running\n"
    );
    let table = berth.ok(&["ls", "--format", "table {{.Name}}\t{{upper .State}}"]);
    assert_eq!(
        table,
        "NAME    STATE\ndb      STOPPED\nweb2    RUNNING\nweb10   RUNNING\n"
    );
    assert!(berth
        .fails(&["ls", "--format", "{{.Nope}}"])
        .contains("can't evaluate field Nope"));
    assert!(berth
        .fails(&["ls", "--filter", "label=tier"])
        .contains("label=KEY=VALUE"));
    assert!(berth
        .fails(&["ls", "--filter", "color=red"])
        .contains("Unsupported filter key"));
    assert!(berth
        .fails(&["ls", "--filter", "state=Sleeping"])
        .contains("unknown state"));
}

#[test]
fn completion_scripts_load() {
    let berth = Berth::new();
    for shell_name in ["bash", "zsh", "fish", "powershell"] {
        let script = berth.ok(&["completion", shell_name]);
        assert!(script.contains("berth"), "{shell_name}");
    }
    let script = berth.ok(&["completion", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.bash");
    std::fs::write(&path, script).unwrap();
    let out = shell(
        "bash",
        &format!("source {}; complete -p berth", path.display()),
        &[],
    );
    assert!(out.contains("berth"), "{out}");
}

/// `docker args` against machine `name`, which must succeed; its stdout.
fn docker_on(berth: &Berth, name: &str, args: &[&str]) -> String {
    let url = berth.ok(&["url", name]);
    let out = std::process::Command::new(berth_tests::docker::docker_cli())
        .args(args)
        .env("DOCKER_HOST", url.trim())
        .env("DOCKER_CONFIG", berth.home().join("docker-config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn docker_runs_a_container_on_a_native_machine() {
    use berth_tests::docker::busybox_root;
    use berth_tests::registry::{Layout, Registry};

    let registry = Registry::start();
    Layout::new(&[busybox_root()], None).push(&registry, "busybox:latest");
    // The same image as Docker Hub's library/busybox, for the mirror.
    Layout::new(&[busybox_root()], None).push(&registry, "library/busybox:latest");
    let berth = Berth::new();
    let mirror = format!("http://{}", registry.host);
    berth.ok(&[
        "create",
        "--engine-label",
        "tier=dev",
        "--engine-env",
        "BERTH_TEST=1",
        "--engine-registry-mirror",
        &mirror,
        "dev",
    ]);
    let docker = |args: &[&str]| docker_on(&berth, "dev", args);
    let image = format!("{}/busybox", registry.host);
    docker(&["pull", "-q", &image]);
    assert_eq!(docker(&["run", "--rm", &image, "echo", "hi"]), "hi\n");
    assert_eq!(docker(&["info", "--format", "{{.Labels}}"]), "[tier=dev]\n");
    // Docker Hub's name, pulled through the mirror (this machine has no
    // internet: only the mirror can have answered).
    docker(&["pull", "-q", "busybox"]);
    assert_eq!(
        docker(&["run", "--rm", "busybox", "echo", "mirrored"]),
        "mirrored\n"
    );
    let mirrors = docker(&["info", "--format", "{{.RegistryConfig.Mirrors}}"]);
    assert!(mirrors.contains(&registry.host), "{mirrors}");
    let agent = berth.agent_pid("dev");
    let environ = std::fs::read(format!("/proc/{agent}/environ")).unwrap();
    assert!(environ.split(|b| *b == 0).any(|e| e == b"BERTH_TEST=1"));
    let err = berth.fails(&["create", "--engine-label", "no value", "x"]);
    assert!(err.contains("--engine-label"), "{err}");
}

/// A native machine `dev` with busybox from a test registry pulled: the
/// registry (to keep while the test runs), the berth, the image's name.
fn dev_with_busybox() -> (berth_tests::registry::Registry, Berth, String) {
    use berth_tests::docker::busybox_root;
    use berth_tests::registry::{Layout, Registry};

    let registry = Registry::start();
    Layout::new(&[busybox_root()], None).push(&registry, "busybox:latest");
    let berth = Berth::new();
    berth.ok(&["create", "dev"]);
    let image = format!("{}/busybox", registry.host);
    docker_on(&berth, "dev", &["pull", "-q", &image]);
    (registry, berth, image)
}

/// Whether this host has a network link named `name`.
fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether this host's nftables has table `ip name`.
fn nft_table_exists(name: &str) -> bool {
    let out = std::process::Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nft list tables failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(name))
}

#[test]
fn rm_takes_the_machines_containers_and_networks_off_the_host() {
    let (_registry, berth, image) = dev_with_busybox();
    let docker = |args: &[&str]| docker_on(&berth, "dev", args).trim().to_owned();
    let network = docker(&["network", "create", "apps"]);
    docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1::80",
        &image,
        "sleep",
        "1000",
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "apps",
        &image,
        "sleep",
        "1000",
    ]);
    let default = docker(&["network", "inspect", "--format", "{{.Id}}", "bridge"]);
    let bridges = [
        format!("br-{}", &default[..12]),
        format!("br-{}", &network[..12]),
    ];
    let table = format!("berth_{}", &default[..12]);
    let pids: Vec<i32> = ["web", "db"]
        .iter()
        .map(|c| {
            docker(&["inspect", "--format", "{{.State.Pid}}", c])
                .parse()
                .unwrap()
        })
        .collect();
    for bridge in &bridges {
        assert!(link_exists(bridge), "{bridge} is not up");
    }
    assert!(nft_table_exists(&table), "no table {table}");

    // As after a crash: the containers outlive their agent.
    berth.ok(&["kill", "dev"]);
    assert!(pids.iter().all(|p| !process_gone(*p)));

    berth.ok(&["rm", "-y", "dev"]);
    for pid in &pids {
        assert!(process_gone(*pid), "container process {pid} outlived rm");
    }
    for bridge in &bridges {
        assert!(!link_exists(bridge), "{bridge} outlived rm");
    }
    assert!(!nft_table_exists(&table), "table {table} outlived rm");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home = berth.home().display().to_string();
    assert!(!mounts.contains(&home), "mounts outlived rm:\n{mounts}");
    assert!(!berth.machine_dir("dev").exists());
}

#[test]
fn stop_stops_the_machines_containers_and_start_brings_back_the_restarting_ones() {
    let (_registry, berth, image) = dev_with_busybox();
    let docker = |args: &[&str]| docker_on(&berth, "dev", args).trim().to_owned();
    // One that ends on its stop signal, one that must be killed after its
    // stop timeout, one that comes back with the machine.
    docker(&[
        "run",
        "-d",
        "--name",
        "polite",
        &image,
        "sh",
        "-c",
        "trap 'exit 3' TERM; while true; do sleep 0.2; done",
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--stop-timeout",
        "1",
        &image,
        "sleep",
        "1000",
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        "always",
        "--restart",
        "always",
        &image,
        "sleep",
        "1000",
    ]);
    let pids: Vec<i32> = ["polite", "stubborn", "always"]
        .iter()
        .map(|c| {
            docker(&["inspect", "--format", "{{.State.Pid}}", c])
                .parse()
                .unwrap()
        })
        .collect();

    berth.ok(&["stop", "dev"]);
    for pid in &pids {
        assert!(process_gone(*pid), "container process {pid} outlived stop");
    }
    berth.ok(&["start", "dev"]);
    let state = |c: &str| {
        docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            c,
        ])
    };
    assert_eq!(state("polite"), "exited 3");
    assert_eq!(state("stubborn"), "exited 137");
    // Brought back by its policy: stopped by the machine, not by its user.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state("always") != "running 0" {
        assert!(
            std::time::Instant::now() < deadline,
            "always: {}",
            state("always")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    berth.ok(&["rm", "-f", "dev"]);
}
