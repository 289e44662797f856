//! `berth env`: the shell commands that point docker at a machine.

use super::{agent_info, print, target, Machine, AGENT_TIMEOUT};
use crate::cli::EnvArgs;
use crate::error::CliError;
use crate::shell::Shell;
use crate::store::Store;

/// Names the machine the shell's docker points at; prompts and `berth`
/// itself can read it.
pub const ACTIVE_MACHINE_VAR: &str = "BERTH_ACTIVE_MACHINE";

/// Every variable `env` may set, in the order it writes them.
const VARIABLES: [&str; 4] = [
    "DOCKER_TLS_VERIFY",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    ACTIVE_MACHINE_VAR,
];

/// The command line as the user typed it, for the closing hint.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            if arg.contains([' ', '\\', '"', '\'']) {
                format!("\"{}\"", arg.replace('"', "\\\""))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `berth env [--shell S] [--unset] [NAME]`
pub(crate) async fn env(store: &Store, args: EnvArgs) -> Result<(), CliError> {
    let shell = match args.shell {
        Some(shell) => shell,
        None => Shell::detect().map_err(CliError::Usage)?,
    };
    let mut out = String::new();
    if args.unset {
        if args.name.is_some() {
            return Err(CliError::Usage(
                "Error: Expected no machine name when the -u flag is present".to_owned(),
            ));
        }
        for var in VARIABLES {
            out.push_str(&shell.unset(var));
        }
    } else {
        let machine = Machine::open(store, &target(store, args.name)?)?;
        let endpoint = machine.running_endpoint().await?;
        // Point docker only at an agent that answers.
        agent_info(&machine, &endpoint, AGENT_TIMEOUT).await?;
        if endpoint.docker.tls {
            let certs = store.machine_dir(machine.name()).join("certs");
            out.push_str(&shell.set("DOCKER_TLS_VERIFY", "1"));
            out.push_str(&shell.set("DOCKER_HOST", &endpoint.docker.url));
            out.push_str(&shell.set("DOCKER_CERT_PATH", &certs.display().to_string()));
        } else {
            // Clear what a TLS machine set before, or docker would try TLS.
            out.push_str(&shell.unset("DOCKER_TLS_VERIFY"));
            out.push_str(&shell.set("DOCKER_HOST", &endpoint.docker.url));
            out.push_str(&shell.unset("DOCKER_CERT_PATH"));
        }
        out.push_str(&shell.set(ACTIVE_MACHINE_VAR, machine.name()));
    }
    out.push_str(&shell.usage_hint(&command_line()));
    print(&out)
}
