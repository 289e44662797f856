//! `berth-agent runtime …`: runc's verbs and flags where they overlap.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::container_create::{create, CreateOptions};
use super::container_delete::delete;
use super::container_exec::{exec, ExecOptions};
use super::container_kill::{kill, parse_signal};
use super::container_run::run;
use super::container_start::start;
use super::spec::Bundle;
use super::state::ContainerDir;
use super::{sealed, RuntimeError};
use oci_spec::runtime::{Capabilities, Capability, Process};

/// Where container state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/berth-agent/runtime";

/// The runtime's command line.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Directory for container state (tmpfs recommended).
    #[arg(long, default_value = DEFAULT_ROOT, global = true, value_name = "DIR")]
    pub root: PathBuf,
    /// The verb.
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

/// Flags for the process a verb starts, shared by `create`, `run` and
/// `exec`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Write the process's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// A unix socket to receive the pty master on, when the process has a
    /// terminal.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Pass this many descriptors above 2 to the process.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,
}

/// Flags shared by `create` and `run`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// The process's pid file, console socket and descriptors.
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The container id.
    pub id: String,
}

/// `exec`'s flags, as runc's.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The whole process as JSON (an OCI `process`); replaces the
    /// command and the flags that shape the process.
    #[arg(long, short = 'p', value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Give the process a terminal (needs --console-socket).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Return once the process runs instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Add an environment variable (NAME=VALUE).
    #[arg(long, short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// The user, as UID[:GID].
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// An additional group id (repeatable).
    #[arg(long = "additional-gids", short = 'g', value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// Add a capability to the process's sets (repeatable), e.g. CAP_KILL.
    #[arg(long, short = 'c', value_name = "CAP")]
    pub cap: Vec<String>,
    /// Set no_new_privileges for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// The process's pid file, console socket and descriptors.
    #[command(flatten)]
    pub io: ProcessArgs,
    /// The container id.
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The runtime verbs.
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// The container id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        /// The container id.
        id: String,
        /// The signal, by name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (or any, with --force).
    Delete {
        /// Kill the container first if it runs.
        #[arg(long, short = 'f')]
        force: bool,
        /// The container id.
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        /// Return once started instead of waiting.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Create flags.
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Run another process in a container.
    Exec(ExecArgs),
    /// List the processes in a container.
    Ps {
        /// table or json (the pids).
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// The container id.
        id: String,
    },
    /// List containers.
    List {
        /// Print only ids.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
    },
}

fn options(root: PathBuf, args: CreateArgs) -> CreateOptions {
    CreateOptions {
        id: args.id,
        bundle: args.bundle,
        root,
        pid_file: args.process.pid_file,
        preserve_fds: args.process.preserve_fds,
        console_socket: args.process.console_socket,
    }
}

fn print(text: &str) -> Result<(), RuntimeError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(RuntimeError::io("write to stdout"))
}

/// Whether the verb must run from a sealed copy of the agent: where the
/// container can see a runtime process before it execs.
fn needs_sealing(command: &RuntimeCommand) -> bool {
    let bundle = match command {
        RuntimeCommand::Exec(_) => return true,
        RuntimeCommand::Create(c) | RuntimeCommand::Run { create: c, .. } => &c.bundle,
        _ => return false,
    };
    // A bundle that does not load fails in `create` with the reason.
    Bundle::load(bundle).is_ok_and(|b| b.exposes_runtime())
}

/// Runs one runtime verb; returns the process exit code.
pub fn main(args: RuntimeArgs) -> Result<i32, RuntimeError> {
    if needs_sealing(&args.command) {
        // Returns only on failure; on success this process starts over.
        sealed::ensure()?;
    }
    let root = args.root;
    match args.command {
        RuntimeCommand::Create(create_args) => create(&options(root, create_args)).map(|_| 0),
        RuntimeCommand::Start { id } => start(&root, &id).map(|()| 0),
        RuntimeCommand::State { id } => {
            let dir = ContainerDir::new(&root, &id);
            let report = dir.report(&dir.load()?);
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| RuntimeError::io("encode state")(e.into()))?;
            print(&format!("{json}\n")).map(|()| 0)
        }
        RuntimeCommand::Kill { id, signal } => kill(&root, &id, parse_signal(&signal)?).map(|()| 0),
        RuntimeCommand::Delete { force, id } => delete(&root, &id, force).map(|()| 0),
        RuntimeCommand::Run { detach, create } => run(&options(root, create), detach),
        RuntimeCommand::List { quiet, format } => list(&root, quiet, &format).map(|()| 0),
        RuntimeCommand::Ps { format, id } => ps(&root, &id, &format).map(|()| 0),
        RuntimeCommand::Exec(exec_args) => exec(&exec_options(root, exec_args)?),
    }
}

fn bad_exec(reason: String) -> RuntimeError {
    RuntimeError::Io {
        action: "prepare the process to exec".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    }
}

/// The process `exec` runs: `--process` as it is, or the container's own
/// process with the command and flags applied, as runc builds it.
fn exec_options(root: PathBuf, args: ExecArgs) -> Result<ExecOptions, RuntimeError> {
    let process = match &args.process {
        Some(file) => {
            let text = std::fs::read(file)
                .map_err(RuntimeError::io(format!("read {}", file.display())))?;
            serde_json::from_slice::<Process>(&text)
                .map_err(|e| bad_exec(format!("{}: {e}", file.display())))?
        }
        None => {
            if args.command.is_empty() {
                return Err(bad_exec("give a command, or --process FILE".into()));
            }
            let saved = ContainerDir::new(&root, &args.id).load()?;
            let bundle = Bundle::load(&saved.bundle)?;
            let mut process = bundle.spec.process().clone().unwrap_or_default();
            process.set_args(Some(args.command.clone()));
            process.set_terminal(Some(args.tty));
            process.set_console_size(None);
            let mut env = process.env().clone().unwrap_or_default();
            env.extend(args.env.iter().cloned());
            process.set_env(Some(env));
            if let Some(cwd) = &args.cwd {
                process.set_cwd(cwd.clone());
            }
            if let Some(user) = &args.user {
                let (uid, gid) = match user.split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (user.as_str(), None),
                };
                let id = |s: &str| {
                    s.parse::<u32>()
                        .map_err(|_| bad_exec(format!("--user {user:?}: use UID[:GID], numeric")))
                };
                process.user_mut().set_uid(id(uid)?);
                if let Some(gid) = gid {
                    process.user_mut().set_gid(id(gid)?);
                }
            }
            if !args.additional_gids.is_empty() {
                process
                    .user_mut()
                    .set_additional_gids(Some(args.additional_gids.clone()));
            }
            if args.no_new_privs {
                process.set_no_new_privileges(Some(true));
            }
            if !args.cap.is_empty() {
                let mut caps = process.capabilities().clone().unwrap_or_default();
                for name in &args.cap {
                    let full = if name.starts_with("CAP_") {
                        name.clone()
                    } else {
                        format!("CAP_{}", name.to_ascii_uppercase())
                    };
                    let cap: Capability =
                        serde_json::from_value(serde_json::Value::String(full))
                            .map_err(|_| bad_exec(format!("unknown capability {name:?}")))?;
                    let with = |set: &Option<Capabilities>| {
                        let mut set = set.clone().unwrap_or_default();
                        set.insert(cap);
                        Some(set)
                    };
                    caps.set_bounding(with(caps.bounding()));
                    caps.set_effective(with(caps.effective()));
                    caps.set_permitted(with(caps.permitted()));
                }
                process.set_capabilities(Some(caps));
            }
            process
        }
    };
    Ok(ExecOptions {
        root,
        id: args.id,
        process,
        console_socket: args.io.console_socket,
        pid_file: args.io.pid_file,
        detach: args.detach,
        preserve_fds: args.io.preserve_fds,
    })
}

fn list(root: &std::path::Path, quiet: bool, format: &str) -> Result<(), RuntimeError> {
    let mut reports = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let dir = ContainerDir::new(root, &id);
            if let Ok(saved) = dir.load() {
                reports.push(dir.report(&saved));
            }
        }
    }
    reports.sort_by(|a, b| a.id.cmp(&b.id));
    let text = if quiet {
        reports.iter().map(|r| format!("{}\n", r.id)).collect()
    } else if format == "json" {
        let json = serde_json::to_string(&reports)
            .map_err(|e| RuntimeError::io("encode list")(e.into()))?;
        format!("{json}\n")
    } else {
        let mut text = format!(
            "{:<20} {:<8} {:<10} {:<40} {}\n",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for r in &reports {
            text.push_str(&format!(
                "{:<20} {:<8} {:<10} {:<40} {}\n",
                r.id,
                r.pid,
                r.status,
                r.bundle.display(),
                r.created
            ));
        }
        text
    };
    print(&text)
}

/// The processes in container `id`'s cgroup: their pids as JSON, or a
/// table of UID, PID, PPID and command line.
fn ps(root: &std::path::Path, id: &str, format: &str) -> Result<(), RuntimeError> {
    let dir = ContainerDir::new(root, id);
    let saved = dir.load()?;
    let mut pids = super::cgroups::Cgroup::new(&saved.cgroup_path)?.pids();
    pids.sort_unstable();
    if format == "json" {
        let json =
            serde_json::to_string(&pids).map_err(|e| RuntimeError::io("encode pids")(e.into()))?;
        return print(&format!("{json}\n"));
    }
    let mut text = format!("{:<8} {:<8} {:<8} {}\n", "UID", "PID", "PPID", "CMD");
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_owned()
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.push_str(&format!(
            "{:<8} {:<8} {:<8} {}\n",
            field("Uid:"),
            pid,
            field("PPid:"),
            cmd.trim_end()
        ));
    }
    print(&text)
}
