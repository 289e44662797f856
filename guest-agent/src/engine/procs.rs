//! A running container's processes: pause and unpause (the freezer),
//! `top`, and `stats` from its cgroup.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Container, Engine, EngineError, Status};
use crate::runtime::cgroups::{Cgroup, Usage};
use crate::runtime::state::ContainerDir;

/// One sample of a container's usage, with the machine's CPU time then.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: SystemTime,
    /// The cgroup's usage.
    pub usage: Usage,
    /// All CPUs' time since boot, nanoseconds (`/proc/stat`).
    pub system_ns: u64,
    /// CPUs online.
    pub cpus: u32,
    /// The machine's memory, bytes (the limit when there is none).
    pub host_memory: u64,
}

/// `ps -ef`'s columns.
pub const TOP_TITLES: [&str; 8] = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];

impl Engine {
    pub(super) fn cgroup(&self, container: &Container) -> Result<Cgroup, EngineError> {
        let saved = ContainerDir::new(&self.runtime_root(), &container.id).load()?;
        Ok(Cgroup::new(&saved.cgroup_path)?)
    }

    fn running(&self, key: &str) -> Result<Arc<Container>, EngineError> {
        let container = self.container(key)?;
        if !container.record().state.status.is_running() {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                container.id
            )));
        }
        Ok(container)
    }

    /// Freezes every process of the container.
    pub async fn pause(&self, key: &str) -> Result<(), EngineError> {
        let container = self.running(key)?;
        let _guard = container.lifecycle.lock().await;
        if container.record().state.status == Status::Paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is already paused",
                container.id
            )));
        }
        let cgroup = self.cgroup(&container)?;
        tokio::task::spawn_blocking(move || cgroup.freeze(true))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let record = container.update(|r| r.state.status = Status::Paused);
        self.save(&container)?;
        self.emit_container("pause", &record, &[]);
        Ok(())
    }

    /// Thaws a paused container.
    pub async fn unpause(&self, key: &str) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let _guard = container.lifecycle.lock().await;
        if container.record().state.status != Status::Paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is not paused",
                container.id
            )));
        }
        self.thaw(&container).await?;
        let record = container.record();
        self.emit_container("unpause", &record, &[]);
        Ok(())
    }

    /// Thaws the container's cgroup and marks it running.
    pub(super) async fn thaw(&self, container: &Container) -> Result<(), EngineError> {
        let cgroup = self.cgroup(container)?;
        tokio::task::spawn_blocking(move || cgroup.freeze(false))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        container.update(|r| {
            if r.state.status == Status::Paused {
                r.state.status = Status::Running;
            }
        });
        self.save(container)
    }

    /// The container's processes as `ps -ef` shows them.
    pub fn top(&self, key: &str) -> Result<Vec<Vec<String>>, EngineError> {
        let container = self.running(key)?;
        let mut pids = self.cgroup(&container)?.pids();
        pids.sort_unstable();
        let users = UserNames::load();
        let boot = boot_time();
        Ok(pids
            .into_iter()
            .filter_map(|pid| ps_row(pid, &users, boot))
            .collect())
    }

    /// One sample of the container's usage.
    pub fn sample(&self, key: &str) -> Result<Sample, EngineError> {
        let container = self.running(key)?;
        let cgroup = self.cgroup(&container)?;
        Ok(Sample {
            at: SystemTime::now(),
            usage: cgroup.usage(),
            system_ns: system_cpu_ns(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            host_memory: host_memory(),
        })
    }
}

/// uid → name, from this machine's /etc/passwd (as `ps` shows them).
struct UserNames(Vec<(u32, String)>);

impl UserNames {
    fn load() -> Self {
        let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        UserNames(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let uid = f.nth(1)?.parse().ok()?;
                    Some((uid, name.to_owned()))
                })
                .collect(),
        )
    }

    fn name(&self, uid: u32) -> String {
        self.0
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or_else(|| uid.to_string(), |(_, n)| n.clone())
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// All CPUs' busy and idle time since boot, nanoseconds.
fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .take(7)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ticks * (1_000_000_000 / clock_ticks())
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// One `ps -ef` row from /proc.
fn ps_row(pid: i32, users: &UserNames, boot: u64) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let close = stat.rfind(')')?;
    let comm = stat.get(stat.find('(')? + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name: state(0) ppid(1) … tty_nr(4) … utime(11) stime(12) … starttime(19).
    let ppid = field(1);
    let tty_nr = field(4);
    let cpu_ticks = field(11) + field(12);
    let start_ticks = field(19);
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        format!("[{comm}]")
    } else {
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ticks = clock_ticks();
    let started = boot + start_ticks / ticks;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let elapsed = now.saturating_sub(started).max(1);
    let cpu_secs = cpu_ticks / ticks;
    let stime = {
        let t = humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(started),
        )
        .to_string();
        t.get(11..16).unwrap_or("?").to_owned()
    };
    let tty = if tty_nr == 0 {
        "?".to_owned()
    } else {
        let major = (tty_nr >> 8) & 0xfff;
        let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
        if (136..=143).contains(&major) {
            format!("pts/{}", (major - 136) * 256 + minor)
        } else {
            format!("tty{minor}")
        }
    };
    Some(vec![
        users.name(uid),
        pid.to_string(),
        ppid.to_string(),
        (cpu_secs * 100 / elapsed).to_string(),
        stime,
        tty,
        format!(
            "{:02}:{:02}:{:02}",
            cpu_secs / 3600,
            cpu_secs / 60 % 60,
            cpu_secs % 60
        ),
        cmd,
    ])
}
