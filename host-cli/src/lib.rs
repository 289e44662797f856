//! `berth`, the user's command line: machines as docker-machine users know
//! them, on hosts provided by Berth's drivers.
//!
//! The binary in `main.rs` only parses arguments and maps errors to exit
//! codes; everything else is here, driver-blind:
//!
//! - [`cli`] — the command line (clap).
//! - [`commands`] — one module per group of verbs.
//! - [`store`] — machines on disk: atomic records, per-machine locks.
//! - [`record`] — `machine.json`, what Berth remembers of a machine.
//! - [`shell`] — how each shell sets variables, for `berth env`.
//! - [`output`] — tables, JSON and `--format` templates.
//! - [`error`] — the CLI's errors and exit codes.

#![deny(missing_docs)]

pub mod cli;
pub mod commands;
pub mod error;
pub mod output;
pub mod record;
pub mod shell;
pub mod store;

pub use commands::run;
