//! The body of each `gxd` command, one module each; [`main`] parses the command line
//! ([`crate::cli`]) and dispatches here.

pub mod config_check;
pub mod dev;
pub mod devnet;
pub mod migrate;
pub mod projections;
pub mod run;
pub mod token;
pub mod version;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand, ProjectionsCommand, TokenCommand};
use crate::config::{self, Config};
use crate::exit;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    if let Err(e) = gxd_engine::failpoints::configure_from_env() {
        eprintln!("gxd: {e}");
        return ExitCode::from(exit::USAGE);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match execute(cli) {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

/// Runs a parsed command line; returns the exit code, or an error (see
/// [`exit::code_for`]).
pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => version::execute(),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check::execute(file.as_deref()),
        Command::Run { config } => run::execute(load(config.as_deref())?),
        Command::Migrate { check, config } => migrate::execute(load(config.as_deref())?, check),
        Command::Projections {
            command: ProjectionsCommand::Status { config, json },
        } => projections::execute(load(config.as_deref())?, json),
        Command::Devnet {
            dir,
            listen,
            batch_max_tx,
            batch_timeout_ms,
            no_tls,
        } => devnet::execute(devnet::DevnetArgs {
            dir,
            listen,
            batch_max_tx,
            batch_timeout_ms,
            no_tls,
        }),
        Command::Dev {
            dir,
            api_listen,
            devnet_listen,
            treasury_wallet,
            initial_supply,
        } => dev::execute(dev::DevOptions {
            dir,
            api_listen,
            devnet_listen,
            treasury_wallet,
            initial_supply,
        }),
        Command::Token {
            command:
                TokenCommand::Issue {
                    config,
                    sub,
                    role,
                    ttl_seconds,
                    kid,
                },
        } => token::issue(
            &load(config.as_deref())?,
            &token::IssueArgs {
                sub,
                role,
                ttl: std::time::Duration::from_secs(ttl_seconds),
                kid,
            },
        ),
    }
}

/// The multi-threaded runtime every async command runs on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gxd-worker")
        .build()
        .context("start the tokio runtime")
}

/// Loads and validates the configuration (file, then `GXD_*` overrides).
pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(config::load(path, &config::process_env())?)
}
