//! The CLI's errors and the exit codes they map to.

use berth_provisioners::DriverError;

use crate::output::TemplateError;
use crate::store::StoreError;

/// How `berth` exits, as docker-machine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked was done.
    Success = 0,
    /// Something failed; stderr says what.
    Failure = 1,
    /// A pre-create check failed; nothing was made.
    PreCreate = 3,
}

/// Everything that can go wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The machine store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such driver.
    #[error("unknown driver {name:?}; the drivers are: {known}")]
    UnknownDriver {
        /// The name given.
        name: String,
        /// The drivers there are.
        known: String,
    },
    /// A check before creating failed.
    #[error("Error with pre-create check: {0}")]
    PreCreate(DriverError),
    /// The machine is in the state asked for already.
    #[error("Machine {name:?} is already {state}.")]
    AlreadyInState {
        /// The machine.
        name: String,
        /// Its state, lower case.
        state: String,
    },
    /// The command needs a running machine.
    #[error("Host is not running: machine {0:?} is stopped; start it with \"berth start {0}\"")]
    NotRunning(String),
    /// `rm` without `-f` of a running machine.
    #[error(
        "Machine {0:?} is running; stop it first, or remove it anyway with \"berth rm -f {0}\""
    )]
    StillRunning(String),
    /// A driver operation failed.
    #[error("cannot {action} machine {name:?}: {source}")]
    Driver {
        /// What was being done ("start", "stop", …).
        action: &'static str,
        /// The machine.
        name: String,
        /// The driver's error.
        source: DriverError,
    },
    /// The agent did not answer.
    #[error("the agent of machine {name:?} does not answer at {address}: {reason}")]
    Agent {
        /// The machine.
        name: String,
        /// Where it was asked.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// `active` found no machine that DOCKER_HOST points at.
    #[error("No active host found")]
    NoActive,
    /// A command run on the machine exited non-zero; berth exits with its code.
    #[error("")]
    Remote(i32),
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// A `--format` template is wrong.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Writing to stdout failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Several machines failed; each error on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<CliError>),
}

impl CliError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::PreCreate(_) => Exit::PreCreate,
            _ => Exit::Failure,
        }
    }

    /// Wraps a driver error with what was being done to which machine.
    pub fn driver(action: &'static str, name: &str, source: DriverError) -> Self {
        CliError::Driver {
            action,
            name: name.to_owned(),
            source,
        }
    }

    /// One error for a list of them, or none.
    pub fn collect(mut errors: Vec<CliError>) -> Result<(), CliError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CliError::Many(errors)),
        }
    }
}
