//! `docker build` through the stock CLI (its classic builder, `/build`):
//! a multi-stage Dockerfile built from the test registry's busybox, run,
//! built again from the cache, rebuilt from a changed file on, pushed and
//! read back by skopeo; errors that point at their line; `.dockerignore`;
//! `docker commit` and `docker history`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_tests::docker::Engine;
use berth_tests::require_root;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// `docker build ARGS… DIR` with the classic builder (the CLI has no
/// buildx here; saying so keeps it from warning).
fn build(d: &Engine, args: &[&str], dir: &Path) -> Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let dir = dir.to_str().unwrap();
    all.push(dir);
    d.command(&all)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn build_ok(d: &Engine, args: &[&str], dir: &Path) -> String {
    let out = build(d, args, dir);
    assert!(
        out.status.success(),
        "docker build failed ({}): {}\nagent log:\n{}",
        out.status,
        text(&out),
        d.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The build output cut into steps: (instruction, what followed it).
fn steps(output: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("Step ") {
            let instruction = rest.split_once(" : ").map_or("", |(_, i)| i);
            out.push((instruction.to_owned(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out
}

const DOCKERFILE: &str = r#"# A two-stage build.
ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
ENV APP=/app \
    STAGE=build
WORKDIR $APP
COPY --chown=65534:65534 src/*.txt ./
RUN echo "$GREETING from $STAGE" > made.txt \
 && touch scratch.tmp && rm scratch.tmp \
 && mkdir out && cp *.txt out/ && ls -n a.txt | awk '{print $3}' > out/owner

FROM ${BASE}
LABEL org.example.role="the app"
COPY --from=build /app/out/ /srv/
COPY --chown=nobody:nogroup --chmod=640 conf/app.conf /etc/app/
RUN rm /bin/vi && echo "vi removed"
USER nobody
WORKDIR /srv
ENV MODE=prod
EXPOSE 8080/tcp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat made.txt a.txt owner; id -u; stat -c '%U %a' /etc/app/app.conf; echo mode=$MODE; pwd"]
"#;

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile", DOCKERFILE);
    write(dir.path(), "src/a.txt", "file a\n");
    write(dir.path(), "src/b.txt", "file b\n");
    write(dir.path(), "src/notes.md", "not copied\n");
    write(dir.path(), "conf/app.conf", "port=8080\n");
    dir
}

#[test]
fn a_multi_stage_build_runs_caches_and_pushes() {
    require_root();
    let d = Engine::start();
    let ctx = context();
    let base = format!("BASE={}", d.busybox());
    let first = build_ok(&d, &["-t", "app:1", "--build-arg", &base], ctx.path());
    assert!(first.contains("Successfully built "), "{first}");
    assert!(first.contains("Successfully tagged app:1"), "{first}");
    assert!(first.contains("vi removed"), "{first}");
    assert!(first.contains(" ---> Running in "), "{first}");

    // What the image does.
    let run = d.ok(&["run", "--rm", "app:1"]);
    assert_eq!(
        run, "hello from build\nfile a\n65534\n65534\nnobody 640\nmode=prod\n/srv\n",
        "{run}"
    );
    // A deleted file is gone from the image, not only hidden in a step.
    let out = d.run(&["run", "--rm", "--entrypoint", "ls", "app:1", "/bin/vi"]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = d.ok(&["run", "--rm", "--entrypoint", "ls", "app:1", "/srv"]);
    assert_eq!(out, "a.txt\nb.txt\nmade.txt\nowner\n");
    let inspect = d.ok(&["image", "inspect", "app:1"]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["WorkingDir"], "/srv");
    assert_eq!(config["Labels"]["org.example.role"], "the app");
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert!(config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "MODE=prod"));
    let id = inspect[0]["Id"].as_str().unwrap().to_owned();

    // Again: every step from the cache, the same image.
    let second = build_ok(&d, &["-t", "app:2", "--build-arg", &base], ctx.path());
    assert!(!second.contains("Running in"), "{second}");
    for (instruction, rest) in steps(&second) {
        if !instruction.starts_with("FROM") && !instruction.starts_with("ARG BASE") {
            assert!(
                rest.contains("Using cache"),
                "{instruction} did not use the cache:\n{second}"
            );
        }
    }
    let again = d.ok(&["image", "inspect", "-f", "{{.Id}}", "app:2"]);
    assert_eq!(again.trim(), id);

    // One copied file changes: that step and those after it run again,
    // those before come from the cache.
    write(ctx.path(), "src/a.txt", "file a, changed\n");
    let third = build_ok(&d, &["-t", "app:3", "--build-arg", &base], ctx.path());
    let third_steps = steps(&third);
    let copy_at = third_steps
        .iter()
        .position(|(i, _)| i.starts_with("COPY --chown=65534"))
        .unwrap();
    for (instruction, rest) in &third_steps[..copy_at] {
        if !instruction.starts_with("FROM") && !instruction.starts_with("ARG BASE") {
            assert!(rest.contains("Using cache"), "{instruction}:\n{third}");
        }
    }
    assert!(!third_steps[copy_at].1.contains("Using cache"), "{third}");
    assert!(third_steps[copy_at + 1].1.contains("Running in"), "{third}");
    let run = d.ok(&["run", "--rm", "app:3"]);
    assert!(run.contains("file a, changed"), "{run}");

    // The built image pushes, and another client reads it.
    let target = format!("{}/team/app:v1", d.registry.host);
    d.ok(&["tag", "app:3", &target]);
    let pushed = d.ok(&["push", &target]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    let seen = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ])
        .output()
        .unwrap();
    assert!(seen.status.success(), "{}", text(&seen));
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert!(seen["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "MODE=prod"));
    assert_eq!(seen["Labels"]["org.example.role"], "the app");
    // busybox's layer and the three this stage added.
    assert_eq!(seen["Layers"].as_array().unwrap().len(), 4, "{seen}");

    // The history tells the steps, newest first.
    let history = d.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "app:3",
    ]);
    let first_line = history.lines().next().unwrap();
    assert!(first_line.contains("CMD"), "{history}");
    assert!(history.contains("rm /bin/vi"), "{history}");

    // A changed file behind --no-cache still rebuilds everything.
    let fresh = build_ok(&d, &["--no-cache", "-q", "--build-arg", &base], ctx.path());
    assert!(fresh.trim().starts_with("sha256:"), "{fresh}");
    assert_eq!(fresh.lines().count(), 1, "{fresh}");

    // The untagged result is dangling; intermediate images only show with -a.
    let dangling = d.ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert!(dangling.contains(fresh.trim()), "{dangling}");
    let shown = d.ok(&["images", "-q"]).lines().count();
    let all = d.ok(&["images", "-a", "-q"]).lines().count();
    assert!(all > shown, "{all} images with -a, {shown} without");
    let pruned = d.ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(fresh.trim()), "{pruned}");
    let out = d.run(&["image", "inspect", fresh.trim()]);
    assert!(!out.status.success(), "{}", text(&out));

    // Without its cache the next build runs every step; tagged images stay.
    d.ok(&["builder", "prune", "-f"]);
    let rebuilt = build_ok(&d, &["-t", "app:4", "--build-arg", &base], ctx.path());
    assert!(!rebuilt.contains("Using cache"), "{rebuilt}");
    d.ok(&["run", "--rm", "app:3"]);
}

#[test]
fn build_errors_point_at_their_line() {
    require_root();
    let d = Engine::start();
    let ctx = tempfile::tempdir().unwrap();

    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {}\nRUN true\n\nFORM nothing\n", d.busybox()),
    );
    let out = build(&d, &[], ctx.path());
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("line 4"), "{said}");
    assert!(said.contains("unknown instruction: FORM"), "{said}");

    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {}\nCOPY missing.txt /\n", d.busybox()),
    );
    let said = text(&build(&d, &[], ctx.path()));
    assert!(said.contains("line 2"), "{said}");
    assert!(said.contains("missing.txt"), "{said}");

    // A failing RUN: dockerd's words, and its exit code.
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {}\nRUN echo about to fail && exit 3\n", d.busybox()),
    );
    let out = build(&d, &[], ctx.path());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("about to fail"), "{said}");
    assert!(said.contains("returned a non-zero code: 3"), "{said}");

    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {}\nCOPY ../outside /\n", d.busybox()),
    );
    let said = text(&build(&d, &[], ctx.path()));
    assert!(said.contains("outside the build context"), "{said}");

    let out = build(&d, &["--target", "nowhere"], ctx.path());
    assert!(text(&out).contains("nowhere"), "{}", text(&out));
}

#[test]
fn dockerignore_scratch_heredocs_and_add() {
    require_root();
    let d = Engine::start();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), ".dockerignore", "*.log\nsecret/\n");
    write(ctx.path(), "keep.txt", "kept\n");
    write(ctx.path(), "debug.log", "left out\n");
    write(ctx.path(), "secret/key", "left out\n");
    // A tar that ADD extracts.
    let payload = tempfile::tempdir().unwrap();
    write(payload.path(), "pkg/inside.txt", "from the archive\n");
    let status = Command::new("tar")
        .args(["-czf"])
        .arg(ctx.path().join("pkg.tar.gz"))
        .arg("-C")
        .arg(payload.path())
        .arg("pkg")
        .status()
        .unwrap();
    assert!(status.success());
    // The same archive from a URL: downloaded, never extracted.
    let archive = std::fs::read(ctx.path().join("pkg.tar.gz")).unwrap();
    let url = berth_tests::serve_once("pkg.tar.gz", archive.clone());
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM {bb} AS tools\n\
             FROM scratch\n\
             COPY --from=tools /bin/busybox /bin/busybox\n\
             COPY . /ctx/\n\
             ADD pkg.tar.gz /opt/\n\
             ADD {url} /dl/\n\
             COPY <<EOF /etc/motd\n\
             made by a heredoc\n\
             EOF\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox ls -a /ctx > /listing\"]\n\
             SHELL [\"/bin/busybox\", \"sh\", \"-c\"]\n\
             RUN <<EOT\n\
             /bin/busybox echo two lines >> /listing\n\
             /bin/busybox echo of script >> /listing\n\
             EOT\n\
             CMD [\"/bin/busybox\", \"cat\", \"/listing\", \"/etc/motd\", \"/opt/pkg/inside.txt\"]\n",
            bb = d.busybox()
        ),
    );
    build_ok(&d, &["-t", "small"], ctx.path());
    let out = d.ok(&["run", "--rm", "small"]);
    assert_eq!(
        out,
        ".\n..\n.dockerignore\nDockerfile\nkeep.txt\npkg.tar.gz\ntwo lines\nof script\nmade by a heredoc\nfrom the archive\n",
        "{out}"
    );
    let downloaded = d.ok(&[
        "run",
        "--rm",
        "small",
        "/bin/busybox",
        "stat",
        "-c",
        "%a %s",
        "/dl/pkg.tar.gz",
    ]);
    assert_eq!(downloaded, format!("600 {}\n", archive.len()));
}

#[test]
fn commit_makes_an_image_of_a_container() {
    require_root();
    let d = Engine::start();
    d.ok(&[
        "run",
        "--name",
        "worker",
        &d.busybox(),
        "sh",
        "-c",
        "echo state > /data.txt && rm /bin/vi",
    ]);
    d.ok(&[
        "commit",
        "-m",
        "saved",
        "--change",
        "CMD [\"cat\", \"/data.txt\"]",
        "--change",
        "ENV SAVED=1",
        "worker",
        "saved:1",
    ]);
    assert_eq!(d.ok(&["run", "--rm", "saved:1"]), "state\n");
    assert_eq!(
        d.ok(&["run", "--rm", "saved:1", "sh", "-c", "echo $SAVED"]),
        "1\n"
    );
    let out = d.run(&["run", "--rm", "saved:1", "ls", "/bin/vi"]);
    assert!(!out.status.success(), "{}", text(&out));
    let history = d.ok(&["history", "--format", "{{.Comment}}", "saved:1"]);
    assert_eq!(history.lines().next(), Some("saved"), "{history}");
    let out = d.run(&["commit", "--change", "FROM x", "worker", "bad:1"]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn targets_onbuild_digests_and_another_dockerfile() {
    require_root();
    let d = Engine::start();
    d.ok(&["pull", "-q", &d.busybox()]);
    let pinned = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{index .RepoDigests 0}}",
        &d.busybox(),
    ]);
    let pinned = pinned.trim();
    assert!(pinned.contains("@sha256:"), "{pinned}");
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "docker/Custom.dockerfile",
        &format!(
            "FROM {pinned} AS first\n\
             RUN echo first > /stage\n\
             FROM {bb} AS second\n\
             ONBUILD RUN echo triggered > /onbuild\n\
             STOPSIGNAL SIGINT\n\
             HEALTHCHECK --interval=5s --retries=2 CMD true\n\
             VOLUME /data\n\
             RUN echo second > /stage\n",
            bb = d.busybox()
        ),
    );
    let f = ctx.path().join("docker/Custom.dockerfile");
    let f = f.to_str().unwrap();
    let out = build_ok(
        &d,
        &["-f", f, "--target", "first", "-t", "t:first"],
        ctx.path(),
    );
    assert!(!out.contains("second"), "{out}");
    assert_eq!(
        d.ok(&["run", "--rm", "t:first", "cat", "/stage"]),
        "first\n"
    );

    let out = build_ok(&d, &["--pull", "-f", f, "-t", "t:base"], ctx.path());
    assert!(out.contains("Pulling"), "{out}");
    assert_eq!(
        d.ok(&["run", "--rm", "t:base", "cat", "/stage"]),
        "second\n"
    );
    let config = d.ok(&["image", "inspect", "-f", "{{json .Config}}", "t:base"]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    assert_eq!(config["Healthcheck"]["Retries"], 2);
    assert!(config["Volumes"]["/data"].is_object(), "{config}");
    assert_eq!(
        config["OnBuild"],
        serde_json::json!(["RUN echo triggered > /onbuild"])
    );

    // A build on it runs its trigger, and does not pass it on.
    let child = tempfile::tempdir().unwrap();
    write(
        child.path(),
        "Dockerfile",
        "FROM t:base\nRUN cat /onbuild\n",
    );
    let out = build_ok(&d, &["-t", "t:child"], child.path());
    assert!(out.contains("Executing 1 build trigger"), "{out}");
    assert!(out.contains("triggered"), "{out}");
    let onbuild = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.OnBuild}}",
        "t:child",
    ]);
    assert_eq!(onbuild.trim(), "null");
}

#[test]
fn an_interrupted_build_stops_and_leaves_no_container() {
    require_root();
    let d = Engine::start();
    let dir = context();
    write(
        dir.path(),
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo started && sleep 1000\nRUN echo never\n",
            d.busybox()
        ),
    );
    let mut client = d
        .command(&["build", "-t", "local/cut:1", dir.path().to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the RUN has started: its output has reached the client.
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the build ended before its RUN started: {seen}");
        if line.trim() == "started" {
            break;
        }
        seen.push_str(&line);
    }
    let running = d.ok(&["ps", "-q"]);
    assert_eq!(running.lines().count(), 1, "the RUN's container: {running}");
    // As Ctrl-C does: the client goes away.
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.ok(&["ps", "-aq"]).trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build's container outlived its client:\n{}",
            d.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let tagged = d.run(&["image", "inspect", "local/cut:1"]);
    assert!(!tagged.status.success(), "the cut build tagged its image");
    // The engine builds on.
    write(
        dir.path(),
        "Dockerfile",
        &format!("FROM {}\nRUN echo done\n", d.busybox()),
    );
    build_ok(&d, &["-t", "local/cut:1"], dir.path());
}
