//! The verbs. Each takes parsed arguments, works through the store and a
//! machine's driver, and writes its result to stdout; progress goes to
//! stderr so that stdout stays fit for scripts and `eval`.

use std::io::Write;
use std::time::Duration;

use berth_proto::pb::agent_client::AgentClient;
use berth_proto::pb::{InfoRequest, InfoResponse};
use berth_provisioners::{Driver, Endpoint, MachineContext, MachineState};

use crate::cli::{Cli, Command, DEFAULT_MACHINE};
use crate::error::CliError;
use crate::record::MachineRecord;
use crate::store::{Store, StoreError};

mod create;
mod env;
mod lifecycle;
mod ls;
mod provision;
mod rm;
mod scp;
mod show;
mod ssh;

/// How long a single question to an agent may take in commands that need
/// its answer (`env`, `version`). `ls` and `active` take `--timeout`.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let store = Store::open()?;
    match cli.command {
        Command::Create(args) => create::create(&store, *args).await,
        Command::Ls(args) => ls::ls(&store, args).await,
        Command::Status(args) => show::status(&store, args.name).await,
        Command::Start(args) => lifecycle::start(&store, args.names).await,
        Command::Stop(args) => lifecycle::stop(&store, args.names).await,
        Command::Restart(args) => lifecycle::restart(&store, args.names).await,
        Command::Kill(args) => lifecycle::kill(&store, args.names).await,
        Command::Rm(args) => rm::rm(&store, args).await,
        Command::Inspect(args) => show::inspect(&store, args),
        Command::Url(args) => show::url(&store, args.name).await,
        Command::Ip(args) => show::ip(&store, args.names).await,
        Command::Active(args) => ls::active(&store, args).await,
        Command::Env(args) => env::env(&store, args).await,
        Command::Version(args) => show::version(&store, args.name).await,
        Command::Completion(args) => completion(args.shell),
        Command::Ssh(args) => ssh::ssh(&store, args).await,
        Command::Scp(args) => scp::scp(&store, args).await,
        Command::Provision(args) => provision::provision(&store, args.names).await,
        Command::Upgrade(args) => provision::upgrade(&store, args.names).await,
        Command::RegenerateCerts(args) => provision::regenerate_certs(&store, args).await,
        Command::Supervise(args) => berth_provisioners::supervisor::run(&args.dir)
            .await
            .map_err(|e| CliError::Usage(e.to_string())),
    }
}

fn completion(shell: clap_complete::Shell) -> Result<(), CliError> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "berth", &mut out);
    print_bytes(&out)
}

/// A machine opened for work: its record and its driver.
pub(crate) struct Machine {
    pub(crate) record: MachineRecord,
    pub(crate) driver: Box<dyn Driver>,
}

impl Machine {
    /// Loads machine `name` and opens its driver.
    pub(crate) fn open(store: &Store, name: &str) -> Result<Self, CliError> {
        let record = store.load(name)?;
        let driver = record.driver.open(MachineContext {
            name: record.name.clone(),
            dir: store.machine_dir(name),
        });
        Ok(Machine { record, driver })
    }

    pub(crate) fn name(&self) -> &str {
        &self.record.name
    }

    pub(crate) async fn state(&self) -> Result<MachineState, CliError> {
        self.driver
            .state()
            .await
            .map_err(|e| CliError::driver("get the state of", self.name(), e))
    }

    /// The endpoint, if the machine runs; `NotRunning` otherwise.
    pub(crate) async fn running_endpoint(&self) -> Result<Endpoint, CliError> {
        match self.state().await? {
            MachineState::Running => Ok(self.driver.endpoint()),
            _ => Err(CliError::NotRunning(self.name().to_owned())),
        }
    }
}

/// Runs `work` on each machine `names` names (else "default"), each under
/// its lock; a failure on one does not stop the others.
pub(crate) async fn for_each_machine<F, Fut>(
    store: &Store,
    names: Vec<String>,
    mut work: F,
) -> Result<(), CliError>
where
    F: FnMut(Machine) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let mut errors = Vec::new();
    for name in targets(store, names)? {
        let _lock = match store.lock(&name, waiting(&name)) {
            Ok(lock) => lock,
            Err(e) => {
                errors.push(e.into());
                continue;
            }
        };
        let result = match Machine::open(store, &name) {
            Ok(machine) => work(machine).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    CliError::collect(errors)
}

/// The one machine a command is about: the name given, else "default".
pub(crate) fn target(store: &Store, name: Option<String>) -> Result<String, CliError> {
    match name {
        Some(name) => Ok(name),
        None if store.exists(DEFAULT_MACHINE) => Ok(DEFAULT_MACHINE.to_owned()),
        None => Err(no_default()),
    }
}

/// The machines a command is about: the names given, else "default".
pub(crate) fn targets(store: &Store, names: Vec<String>) -> Result<Vec<String>, CliError> {
    if names.is_empty() {
        Ok(vec![target(store, None)?])
    } else {
        Ok(names)
    }
}

fn no_default() -> CliError {
    CliError::Usage(format!(
        "Error: No machine name(s) specified and no {DEFAULT_MACHINE:?} machine exists"
    ))
}

/// Asks machine's agent (at `endpoint`) for its Info, within `timeout`.
pub(crate) async fn agent_info(
    machine: &Machine,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<InfoResponse, CliError> {
    let fail = |reason: String| CliError::Agent {
        name: machine.name().to_owned(),
        address: endpoint.agent.to_string(),
        reason,
    };
    let call = async {
        let channel = machine
            .driver
            .agent_channel()
            .await
            .map_err(|e| fail(e.to_string()))?;
        AgentClient::new(channel)
            .info(InfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| fail(status_reason(&status)))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer,
        Err(_) => Err(fail(format!("no answer within {}s", timeout.as_secs()))),
    }
}

/// A one-line reason for a failed call, with the transport's cause.
fn status_reason(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut reason = status.message().to_owned();
    let mut source = status.source();
    while let Some(e) = source {
        reason = format!("{reason}: {e}");
        source = e.source();
    }
    reason
}

/// Writes to stdout; a closed pipe (`berth ls | head`) is not an error.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    print_bytes(text.as_bytes())
}

fn print_bytes(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Tells the user what is happening, on stderr.
pub(crate) fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// The message shown while waiting for another berth command's lock.
pub(crate) fn waiting(name: &str) -> impl FnOnce() + '_ {
    move || {
        progress(&format!(
            "Waiting for another berth command working on {name:?}..."
        ))
    }
}

/// Whether `e` says that a machine does not exist.
pub(crate) fn is_not_found(e: &CliError) -> bool {
    matches!(e, CliError::Store(StoreError::NotFound(_)))
}
