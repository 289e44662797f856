//! The `berth` binary: parses the command line, runs it, and turns an
//! error into one line on stderr and docker-machine's exit code.

use std::process::ExitCode;

use berth_cli::cli::Cli;
use berth_cli::error::Exit;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(debug: bool) {
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.debug);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start berth's async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    let result = runtime.block_on(berth_cli::run(cli));
    // A blocking read of stdin (`berth ssh`) may still wait for input that
    // will never come: the work is done, so do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::from(Exit::Success as u8),
        // A remote command's status is passed on as it is, with nothing said.
        Err(berth_cli::error::CliError::Remote(code)) => {
            ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit() as u8)
        }
    }
}
