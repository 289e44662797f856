//! Read-only verbs about one machine: `status`, `url`, `ip`, `inspect`,
//! `version`.

use super::{agent_info, print, target, targets, Machine, AGENT_TIMEOUT};
use crate::cli::InspectArgs;
use crate::error::CliError;
use crate::output::{pretty_json, Template};
use crate::store::Store;

/// `berth status [NAME]`
pub(crate) async fn status(store: &Store, name: Option<String>) -> Result<(), CliError> {
    let machine = Machine::open(store, &target(store, name)?)?;
    print(&format!("{}\n", machine.state().await?))
}

/// `berth url [NAME]`: the Docker endpoint of a running machine.
pub(crate) async fn url(store: &Store, name: Option<String>) -> Result<(), CliError> {
    let machine = Machine::open(store, &target(store, name)?)?;
    let endpoint = machine.running_endpoint().await?;
    print(&format!("{}\n", endpoint.docker.url))
}

/// `berth ip [NAME…]`
pub(crate) async fn ip(store: &Store, names: Vec<String>) -> Result<(), CliError> {
    let mut errors = Vec::new();
    for name in targets(store, names)? {
        let result = async {
            let machine = Machine::open(store, &name)?;
            let ip = machine
                .driver
                .ip()
                .await
                .map_err(|e| CliError::driver("get the IP address of", &name, e))?;
            print(&format!("{ip}\n"))
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
    CliError::collect(errors)
}

/// `berth inspect [-f FORMAT] [NAME]`: the machine's record.
pub(crate) fn inspect(store: &Store, args: InspectArgs) -> Result<(), CliError> {
    let record = store.load(&target(store, args.name)?)?;
    match args.format {
        Some(format) => {
            let template = Template::parse(&format)?;
            let value =
                serde_json::to_value(&record).map_err(|e| CliError::Usage(e.to_string()))?;
            print(&format!("{}\n", template.render(&value)?))
        }
        None => {
            let mut json = pretty_json(&record);
            json.push(b'\n');
            print(&String::from_utf8_lossy(&json))
        }
    }
}

/// `berth version [NAME]`: berth's version, or the version of a running
/// machine's agent.
pub(crate) async fn version(store: &Store, name: Option<String>) -> Result<(), CliError> {
    let Some(name) = name else {
        return print(&format!(
            "berth version {} (agent protocol {})\n",
            berth_proto::VERSION,
            berth_proto::PROTOCOL_VERSION
        ));
    };
    let machine = Machine::open(store, &name)?;
    let endpoint = machine.running_endpoint().await?;
    let info = agent_info(&machine, &endpoint, AGENT_TIMEOUT).await?;
    print(&format!("v{}\n", info.version))
}
