//! `berth rm`: a machine and every file Berth made for it.

use std::io::{BufRead, IsTerminal};

use berth_provisioners::MachineState;

use super::{is_not_found, progress, waiting, Machine};
use crate::cli::RmArgs;
use crate::error::CliError;
use crate::store::{validate_name, Store, StoreError};

/// Asks "Are you sure?" on the terminal; `None` when nobody can answer.
fn confirm(names: &[String]) -> Result<bool, CliError> {
    progress(&format!("About to remove {}", names.join(", ")));
    progress("WARNING: This action will delete both local reference and remote instance.");
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Usage(
            "Are you sure? cannot ask: stdin is not a terminal; pass -y to remove without asking"
                .to_owned(),
        ));
    }
    eprint!("Are you sure? (y/n): ");
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(answer.trim_start().to_lowercase().starts_with('y'))
}

async fn remove_one(store: &Store, name: &str, force: bool) -> Result<(), CliError> {
    validate_name(name)?;
    let lock = store.lock(name, waiting(name))?;
    match Machine::open(store, name) {
        Ok(machine) => {
            let state = machine.state().await;
            if !force && matches!(state, Ok(MachineState::Running)) {
                return Err(CliError::StillRunning(name.to_owned()));
            }
            if let Err(e) = machine.driver.remove().await {
                let e = CliError::driver("remove", name, e);
                if !force {
                    return Err(e);
                }
                progress(&format!("{e}; removing the local files anyway (-f)"));
            }
        }
        // A damaged record: without its driver, only -f removes the files.
        Err(CliError::Store(StoreError::Corrupt { .. })) if force => {}
        Err(e) => return Err(e),
    }
    store.remove(name, &lock)?;
    lock.remove();
    progress(&format!("Successfully removed {name}"));
    Ok(())
}

/// `berth rm [-f] [-y] NAME…`
pub(crate) async fn rm(store: &Store, args: RmArgs) -> Result<(), CliError> {
    if !(args.force || args.yes || confirm(&args.names)?) {
        progress("Aborted.");
        return Ok(());
    }
    let mut errors = Vec::new();
    for name in &args.names {
        match remove_one(store, name, args.force).await {
            Ok(()) => {}
            // As with `rm -f` of a missing file: say so, but succeed.
            Err(e) if args.force && is_not_found(&e) => progress(&e.to_string()),
            Err(e) => errors.push(e),
        }
    }
    CliError::collect(errors)
}
