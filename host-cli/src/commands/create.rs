//! `berth create`: a new machine, made whole or not at all.

use berth_provisioners::{DriverConfig, MachineContext};

use super::{progress, waiting};
use crate::cli::CreateArgs;
use crate::error::CliError;
use crate::record::MachineRecord;
use crate::store::{validate_name, Store, StoreError};

/// Creates machine `args.name` with `args.driver` and starts it. If any
/// step after the pre-create checks fails, what was made is removed again.
pub(crate) async fn create(store: &Store, args: CreateArgs) -> Result<(), CliError> {
    let name = args.name;
    validate_name(&name)?;
    let config =
        DriverConfig::default_for(&args.driver).ok_or_else(|| CliError::UnknownDriver {
            name: args.driver.clone(),
            known: DriverConfig::NAMES.join(", "),
        })?;
    let lock = store.lock(&name, waiting(&name))?;
    if store.exists(&name) {
        return Err(StoreError::AlreadyExists(name).into());
    }
    let driver = config.open(MachineContext {
        name: name.clone(),
        dir: store.machine_dir(&name),
    });

    progress("Running pre-create checks...");
    driver
        .pre_create_check()
        .await
        .map_err(CliError::PreCreate)?;

    progress(&format!("Creating machine {name:?} ({})...", driver.name()));
    let record = MachineRecord::new(&name, config);
    store.create(&record, &lock)?;
    if let Err(e) = driver.create().await {
        // Leave no half-made machine behind.
        if let Err(cleanup) = driver.remove().await {
            tracing::warn!("while undoing the failed create: {cleanup}");
        }
        if let Err(cleanup) = store.remove(&name, &lock) {
            tracing::warn!("while undoing the failed create: {cleanup}");
        }
        lock.remove();
        return Err(CliError::driver("create", &name, e));
    }
    progress(&format!(
        "Machine {name:?} is running. To point docker at it, run: berth env {name}"
    ));
    Ok(())
}
