//! `machine.json`: what Berth remembers of a machine.

use std::path::Path;

use berth_provisioners::DriverConfig;
use serde::{Deserialize, Serialize};

/// The record's file name inside the machine directory.
pub const RECORD_FILE: &str = "machine.json";

/// The newest record layout this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file is missing or unreadable.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a valid record (e.g. cut short or edited wrongly).
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The record was written by a newer Berth.
    #[error("its ConfigVersion {0} is newer than this berth understands ({CONFIG_VERSION}); upgrade berth")]
    TooNew(u32),
    /// The record names another machine.
    #[error("it is the record of machine {0:?}")]
    WrongName(String),
}

/// A machine as saved on disk. The field names follow docker-machine's
/// (`{{.Name}}`, `{{.DriverName}}` in `inspect --format`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MachineRecord {
    /// The layout version of this record.
    pub config_version: u32,
    /// The machine's name, equal to its directory's.
    pub name: String,
    /// The driver's name, repeated from `Driver.Name` for templates.
    pub driver_name: String,
    /// When the machine was created (RFC 3339, UTC).
    pub created_at: String,
    /// The driver and its settings.
    pub driver: DriverConfig,
}

impl MachineRecord {
    /// A record for a new machine made now.
    pub fn new(name: &str, driver: DriverConfig) -> Self {
        MachineRecord {
            config_version: CONFIG_VERSION,
            name: name.to_owned(),
            driver_name: driver.name().to_owned(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            driver,
        }
    }

    /// Reads and checks the record at `path` of the machine called `name`.
    pub fn read(path: &Path, name: &str) -> Result<Self, RecordError> {
        let bytes = std::fs::read(path)?;
        let record: MachineRecord = serde_json::from_slice(&bytes)?;
        if record.config_version > CONFIG_VERSION {
            return Err(RecordError::TooNew(record.config_version));
        }
        if record.name != name {
            return Err(RecordError::WrongName(record.name));
        }
        Ok(record)
    }

    /// The record as pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = crate::output::pretty_json(self);
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORD_FILE);
        let record = MachineRecord::new("dev", DriverConfig::default_for("native").unwrap());
        std::fs::write(&path, record.to_json()).unwrap();
        assert_eq!(MachineRecord::read(&path, "dev").unwrap(), record);
        assert!(matches!(
            MachineRecord::read(&path, "other"),
            Err(RecordError::WrongName(_))
        ));

        let json = record.to_json();
        std::fs::write(&path, &json[..json.len() / 2]).unwrap();
        assert!(matches!(
            MachineRecord::read(&path, "dev"),
            Err(RecordError::Json(_))
        ));

        let newer = String::from_utf8(json)
            .unwrap()
            .replace("\"ConfigVersion\": 1", "\"ConfigVersion\": 99");
        std::fs::write(&path, newer).unwrap();
        assert!(matches!(
            MachineRecord::read(&path, "dev"),
            Err(RecordError::TooNew(99))
        ));
    }
}
