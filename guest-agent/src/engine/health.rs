//! Health checks (`HEALTHCHECK`, `docker run --health-*`): while a
//! container runs, its check runs as an exec in it every interval, and
//! the results make it `starting`, `healthy` or `unhealthy` as dockerd
//! counts them (failures in the start period do not count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::config::Status;
use super::exec::ExecConfig;
use super::{now, Container, Engine, EngineError};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// How many results `inspect` keeps.
const LOG_LENGTH: usize = 5;
/// How much of a check's output is kept.
const OUTPUT_LIMIT: usize = 4096;

/// Docker's `Healthcheck` (durations in nanoseconds; 0 means the default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    /// `["CMD", arg…]`, `["CMD-SHELL", command]` or `["NONE"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Between checks.
    pub interval: i64,
    /// How long one check may take.
    pub timeout: i64,
    /// After start, failures do not count for this long.
    pub start_period: i64,
    /// Between checks in the start period.
    pub start_interval: i64,
    /// Failures in a row that make it unhealthy.
    pub retries: i64,
}

/// `State.Health`, as `inspect` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    /// Failures in a row.
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: Vec<Probe>,
}

/// One run of the check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    /// When it began (RFC 3339).
    pub start: String,
    /// When it ended.
    pub end: String,
    /// Its exit code; -1 when it could not run or ran out of time.
    pub exit_code: i32,
    /// The start of its output.
    pub output: String,
}

/// The check in effect: the container's settings over its image's; none
/// without a test or with `NONE`.
pub fn effective(
    container: Option<&HealthConfig>,
    image: Option<&HealthConfig>,
) -> Option<HealthConfig> {
    let mut check = image.cloned().unwrap_or_default();
    if let Some(c) = container {
        if c.test.as_ref().is_some_and(|t| !t.is_empty()) {
            check.test = c.test.clone();
        }
        for (mine, theirs) in [
            (&mut check.interval, c.interval),
            (&mut check.timeout, c.timeout),
            (&mut check.start_period, c.start_period),
            (&mut check.start_interval, c.start_interval),
            (&mut check.retries, c.retries),
        ] {
            if theirs != 0 {
                *mine = theirs;
            }
        }
    }
    argv(check.test.as_deref().unwrap_or_default())?;
    Some(check)
}

/// The command a test runs.
fn argv(test: &[String]) -> Option<Vec<String>> {
    match test {
        [kind, rest @ ..] if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        [kind, command] if kind == "CMD-SHELL" => {
            Some(vec!["/bin/sh".into(), "-c".into(), command.clone()])
        }
        _ => None,
    }
}

/// Checks a container's `Healthcheck` at create.
pub fn check(config: &HealthConfig) -> Result<(), EngineError> {
    let invalid = |why: &str| EngineError::Invalid(format!("invalid healthcheck: {why}"));
    match config.test.as_deref() {
        None | Some([]) => {}
        Some([kind]) if kind == "NONE" => {}
        Some(test) if argv(test).is_none() => {
            return Err(invalid(
                "the test must be [\"CMD\", …], [\"CMD-SHELL\", …] or [\"NONE\"]",
            ))
        }
        Some(_) => {}
    }
    for (name, value) in [
        ("interval", config.interval),
        ("timeout", config.timeout),
        ("start period", config.start_period),
        ("start interval", config.start_interval),
    ] {
        if value != 0 && value < 1_000_000 {
            return Err(invalid(&format!("{name} must be at least 1ms")));
        }
    }
    if config.retries < 0 {
        return Err(invalid("retries must not be negative"));
    }
    Ok(())
}

fn duration(nanos: i64, default: Duration) -> Duration {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map_or(default, Duration::from_nanos)
}

/// The first [`OUTPUT_LIMIT`] bytes of `stream`; the rest is read and
/// dropped, so the check never blocks on a full pipe.
async fn head(stream: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>) -> Vec<u8> {
    let mut kept = Vec::new();
    if let Some(stream) = stream {
        let mut limited = stream.take(OUTPUT_LIMIT as u64);
        let _ = limited.read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await;
    }
    kept
}

impl Engine {
    /// Runs `check` on `container` for as long as its current run lasts.
    pub(super) fn watch_health(self: &Arc<Self>, container: Arc<Container>, check: HealthConfig) {
        let Some(argv) = argv(check.test.as_deref().unwrap_or_default()) else {
            return;
        };
        let interval = duration(check.interval, DEFAULT_INTERVAL);
        let timeout = duration(check.timeout, DEFAULT_TIMEOUT);
        let start_period = duration(check.start_period, Duration::ZERO);
        let start_interval = duration(check.start_interval, DEFAULT_START_INTERVAL);
        let retries = u32::try_from(check.retries)
            .ok()
            .filter(|r| *r > 0)
            .unwrap_or(DEFAULT_RETRIES);
        let engine = self.clone();
        let mut watch = container.watch();
        let run = watch.borrow().exits;
        // It may have exited already: its exit is not among those watched.
        if !container.record().state.status.is_running() {
            return;
        }
        container.update(|r| {
            r.state.health = Some(Health {
                status: "starting".into(),
                ..Health::default()
            })
        });
        tokio::spawn(async move {
            let began = Instant::now();
            loop {
                let starting = began.elapsed() < start_period;
                let wait = if starting && check.start_interval > 0 {
                    start_interval
                } else {
                    interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = watch.wait_for(|w| w.exits != run || w.removed) => return,
                }
                if container.record().state.status != Status::Running {
                    continue;
                }
                let probe = engine.probe(&container, argv.clone(), timeout).await;
                let passed = probe.exit_code == 0;
                let mut changed = None;
                let record = container.update(|r| {
                    let health = r.state.health.get_or_insert_with(Health::default);
                    let before = health.status.clone();
                    if passed {
                        health.failing_streak = 0;
                        health.status = "healthy".into();
                    } else if !starting {
                        health.failing_streak += 1;
                        if health.failing_streak >= retries {
                            health.status = "unhealthy".into();
                        }
                    }
                    health.log.push(probe);
                    let extra = health.log.len().saturating_sub(LOG_LENGTH);
                    health.log.drain(..extra);
                    if health.status != before {
                        changed = Some(health.status.clone());
                    }
                });
                let _ = engine.save(&container);
                if let Some(status) = changed {
                    engine.emit_container(&format!("health_status: {status}"), &record, &[]);
                }
            }
        });
    }

    /// Runs the check once: its exit code and output, or -1 and why.
    async fn probe(
        self: &Arc<Self>,
        container: &Container,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Probe {
        let start = now();
        let config = ExecConfig {
            attach_stdout: true,
            attach_stderr: true,
            cmd: Some(argv),
            ..ExecConfig::default()
        };
        let id = match self.exec_create(&container.id, config) {
            Ok(id) => id,
            Err(e) => {
                return Probe {
                    start,
                    end: now(),
                    exit_code: -1,
                    output: e.to_string(),
                }
            }
        };
        let run = async {
            let io = self.exec_start(&id).await?;
            // Both at once: a check that fills one pipe while the other is
            // read would never end.
            let (mut output, errors) = tokio::join!(head(io.stdout), head(io.stderr));
            output.extend(errors);
            let exec = self.exec(&id)?;
            let mut state = exec.watch();
            let code = state
                .wait_for(|s| s.exit_code.is_some())
                .await
                .ok()
                .and_then(|s| s.exit_code)
                .unwrap_or(-1);
            Ok::<_, EngineError>((code, output))
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        let (exit_code, output) = match outcome {
            Ok(Ok((code, output))) => (code, String::from_utf8_lossy(&output).into_owned()),
            Ok(Err(e)) => (-1, e.to_string()),
            Err(_) => {
                if let Ok(exec) = self.exec(&id) {
                    exec.kill();
                }
                (
                    -1,
                    format!("Health check exceeded timeout ({}s)", timeout.as_secs_f64()),
                )
            }
        };
        // Not one of the client's: `docker exec` never sees it.
        self.execs.forget(&id);
        Probe {
            start,
            end: now(),
            exit_code,
            output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(words: &[&str]) -> HealthConfig {
        HealthConfig {
            test: Some(words.iter().map(|w| w.to_string()).collect()),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn the_containers_check_overrides_the_images() {
        let mut image = test(&["CMD-SHELL", "true"]);
        image.interval = 5_000_000_000;
        image.retries = 2;
        let mut mine = HealthConfig {
            retries: 7,
            ..HealthConfig::default()
        };
        let merged = effective(Some(&mine), Some(&image)).unwrap();
        assert_eq!(merged.test, image.test);
        assert_eq!((merged.interval, merged.retries), (5_000_000_000, 7));
        mine.test = Some(vec!["NONE".into()]);
        assert_eq!(effective(Some(&mine), Some(&image)), None);
        assert_eq!(effective(None, None), None);
        assert_eq!(argv(&["CMD".into(), "ls".into()]), Some(vec!["ls".into()]));
        assert!(check(&test(&["SHELL", "x"])).is_err());
        let mut fast = test(&["CMD", "true"]);
        fast.interval = 10;
        assert!(check(&fast).is_err());
    }
}
