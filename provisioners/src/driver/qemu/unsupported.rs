//! The qemu driver where its unix-socket plumbing (QMP, the link, the
//! supervisor's sockets) is not built yet: Windows. Every operation says so.

use std::path::Path;
use std::time::Duration;

use super::{Files, MachineState};
use crate::driver::DriverError;

fn unsupported() -> DriverError {
    DriverError::Unsupported {
        driver: super::NAME,
        platform: std::env::consts::OS,
    }
}

pub(super) fn supported() -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) fn verify_image(_: &Path) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) fn copy_image(_: &Path, _: &Path) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) async fn make_disk(_: &Path, _: u32) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) fn qemu_running(_: &Files) -> Result<bool, DriverError> {
    Ok(false)
}
pub(super) async fn launch(_: &Path, _: &[String], _: &Files) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) async fn ensure_supervisor(_: &Files) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) async fn wait_ready(_: &Files, _: Duration) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) async fn stop(_: &Files, _: Duration, _: Duration) -> Result<(), DriverError> {
    Err(unsupported())
}
pub(super) async fn kill(_: &Files, _: Duration) -> Result<(), DriverError> {
    Ok(())
}
pub(super) async fn state(_: &Files) -> Result<MachineState, DriverError> {
    Ok(MachineState::Stopped)
}
