//! `provision`, `upgrade`, `regenerate-certs`: redoing provisioning, or a
//! part of it, on machines whose driver provisions its host.

use std::io::{BufRead, IsTerminal};

use berth_provisioners::driver::Provision;

use super::{for_each_machine, progress};
use crate::cli::RegenerateCertsArgs;
use crate::error::CliError;
use crate::store::Store;

async fn for_each(store: &Store, names: Vec<String>, what: Provision) -> Result<(), CliError> {
    let verb = match what {
        Provision::Full => "provision",
        Provision::Upgrade => "upgrade",
        Provision::RegenerateCerts { .. } => "regenerate the certificates of",
    };
    for_each_machine(store, names, |machine| async move {
        let name = machine.name().to_owned();
        progress(&format!("Working on {name:?} ({verb})..."));
        machine
            .driver
            .provision(what)
            .await
            .map_err(|e| CliError::driver(verb, &name, e))?;
        progress(&format!("Machine {name:?} is done."));
        Ok(())
    })
    .await
}

/// `berth provision NAME…`
pub(crate) async fn provision(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Provision::Full).await
}

/// `berth upgrade NAME…`
pub(crate) async fn upgrade(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    for_each(store, names, Provision::Upgrade).await
}

/// `berth regenerate-certs [-f] [--client-certs] NAME…`
pub(crate) async fn regenerate_certs(
    store: &Store,
    args: RegenerateCertsArgs,
) -> Result<(), CliError> {
    if !args.force {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(CliError::Usage(
                "Regenerate TLS machine certs? cannot ask: stdin is not a terminal; pass -f".into(),
            ));
        }
        eprint!("Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): ");
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !answer.trim_start().to_lowercase().starts_with('y') {
            progress("Aborted.");
            return Ok(());
        }
    }
    for_each(
        store,
        args.names,
        Provision::RegenerateCerts {
            new_ca: args.client_certs,
        },
    )
    .await
}
