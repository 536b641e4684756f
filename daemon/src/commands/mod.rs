//! The body of each `gxd` command, one module each; [`main`] parses the command line
//! ([`crate::cli`]) and dispatches here.

pub mod chaincode;
pub mod config_check;
pub mod dev;
pub mod devnet;
pub mod migrate;
pub mod outbox;
pub mod projections;
pub mod rebuild;
pub mod run;
pub mod token;
pub mod version;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{
    ChaincodeCommand, Cli, Command, ConfigCommand, OutboxCommand, ProjectionsCommand, TokenCommand,
};
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
        Command::Projections {
            command:
                ProjectionsCommand::Rebuild {
                    config,
                    verify,
                    json,
                },
        } => rebuild::execute(load(config.as_deref())?, verify, json),
        Command::Outbox { command } => outbox_command(command),
        Command::Devnet {
            dir,
            listen,
            batch_max_tx,
            batch_timeout_ms,
            no_tls,
            chaincode_package,
        } => devnet::execute(devnet::DevnetArgs {
            dir,
            listen,
            batch_max_tx,
            batch_timeout_ms,
            no_tls,
            chaincode_package,
        }),
        Command::Chaincode { command } => match command {
            ChaincodeCommand::Serve {
                listen,
                id,
                tls_cert,
                tls_key,
                client_ca,
            } => chaincode::serve(chaincode::ServeArgs {
                listen,
                id,
                tls_cert,
                tls_key,
                client_ca,
            }),
            ChaincodeCommand::Package {
                address,
                label,
                dial_timeout,
                tls_required,
                root_cert,
                client_cert,
                client_key,
                out,
            } => chaincode::package(chaincode::PackageArgs {
                address,
                label,
                dial_timeout,
                tls_required,
                root_cert,
                client_cert,
                client_key,
                out,
            }),
        },
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

/// `gxd outbox …`: parses the status / id arguments (a bad one is a usage error, exit 64).
fn outbox_command(command: OutboxCommand) -> anyhow::Result<ExitCode> {
    let usage = |msg: String| {
        eprintln!("gxd: {msg}");
        Ok(ExitCode::from(exit::USAGE))
    };
    let parse_id = |s: &str| s.parse::<gxd_storage::outbox::CommandId>();
    let (config, action, json) = match command {
        OutboxCommand::Counts { config, json } => (config, outbox::Action::Counts, json),
        OutboxCommand::List {
            config,
            status,
            cursor,
            limit,
            json,
        } => {
            let Ok(status) = status.parse() else {
                return usage(format!(
                    "--status {status:?}: expected pending, prepared, submitted, committed, \
                     projected or failed"
                ));
            };
            let cursor = match cursor.as_deref().map(parse_id).transpose() {
                Ok(c) => c,
                Err(_) => return usage("--cursor: expected a command id (a UUID)".into()),
            };
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            (
                config,
                outbox::Action::List {
                    status,
                    cursor,
                    limit,
                },
                json,
            )
        }
        OutboxCommand::Requeue { config, id, json } => match parse_id(&id) {
            Ok(id) => (config, outbox::Action::Requeue { id }, json),
            Err(_) => return usage(format!("{id:?}: expected a command id (a UUID)")),
        },
    };
    outbox::execute(load(config.as_deref())?, action, json)
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
