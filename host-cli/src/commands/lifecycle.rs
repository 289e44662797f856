//! `start`, `stop`, `restart`, `kill`: moving machines between states.
//! Each holds the machine's lock while it works; with several machines, a
//! failure on one does not stop the others.

use berth_provisioners::MachineState;

use super::{for_each_machine, progress, Machine};
use crate::error::CliError;
use crate::store::Store;

/// The state change a verb makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Restart,
    Kill,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Kill => "kill",
        }
    }
}

async fn apply(machine: &Machine, action: Action) -> Result<(), CliError> {
    let name = machine.name();
    let state = machine.state().await?;
    let already = |state: &str| CliError::AlreadyInState {
        name: name.to_owned(),
        state: state.to_owned(),
    };
    let driver = &machine.driver;
    let fail = |e| CliError::driver(action.verb(), name, e);
    match action {
        Action::Start if state == MachineState::Running => return Err(already("running")),
        Action::Stop | Action::Kill if state == MachineState::Stopped => {
            return Err(already("stopped"))
        }
        Action::Start => {
            progress(&format!("Starting {name:?}..."));
            driver.start().await.map_err(fail)?;
            progress(&format!("Machine {name:?} was started."));
        }
        Action::Stop => {
            progress(&format!("Stopping {name:?}..."));
            driver.stop().await.map_err(fail)?;
            progress(&format!("Machine {name:?} was stopped."));
        }
        Action::Kill => {
            progress(&format!("Killing {name:?}..."));
            driver.kill().await.map_err(fail)?;
            progress(&format!("Machine {name:?} was killed."));
        }
        Action::Restart => {
            progress(&format!("Restarting {name:?}..."));
            if state != MachineState::Stopped {
                driver.stop().await.map_err(fail)?;
            }
            driver.start().await.map_err(fail)?;
            progress(&format!("Machine {name:?} was restarted."));
        }
    }
    Ok(())
}

async fn for_each(store: &Store, names: Vec<String>, action: Action) -> Result<(), CliError> {
    for_each_machine(store, names, |machine| async move {
        apply(&machine, action).await
    })
    .await
}

/// `berth start NAME…`
pub(crate) async fn start(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Action::Start).await
}

/// `berth stop NAME…`
pub(crate) async fn stop(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Action::Stop).await
}

/// `berth restart NAME…`
pub(crate) async fn restart(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Action::Restart).await
}

/// `berth kill NAME…`
pub(crate) async fn kill(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Action::Kill).await
}
