//! The command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::exit::{self, SchemaRefused};
use crate::logging;

const ABOUT: &str = "gxd: a Hyperledger Fabric sidecar giving an organization's wallet apps a \
reliable REST API (command outbox, Fabric submitter, read-model projector).";

const AFTER_HELP: &str = "\
Configuration: a TOML file (see packaging/gxd.example.toml) plus GXD_<SECTION>__<FIELD>
environment overrides, e.g. GXD_DATABASE__HOST=db GXD_DATABASE__PASSWORD_FILE=/run/secrets/pg.

Exit codes: 0 success; 1 failure (or pending migrations for `migrate --check`);
64 invalid command line or configuration; 65 database schema incompatible with this binary.";

#[derive(Debug, Parser)]
#[command(name = "gxd", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// Configuration file (without one: defaults plus GXD_* overrides).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations (or only check with --check).
    ///
    /// --check exits 1 naming the pending migrations, 65 naming migrations the
    /// database holds that this binary does not know (or that differ), 0 when the
    /// schema is current. It changes nothing.
    Migrate {
        /// Only report; exit non-zero unless the schema is current.
        #[arg(long)]
        check: bool,
        /// Configuration file (without one: defaults plus GXD_* overrides).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the version.
    Version,
    /// Run the devnet: a Fabric-compatible peer with the GX chaincode built in.
    Devnet {
        /// State directory (crypto material, ledger); initialized on first start.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:7051", value_name = "ADDR")]
        listen: SocketAddr,
        /// Cut a block when it holds this many transactions.
        #[arg(long, default_value_t = 100, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_max_tx: u32,
        /// Cut a block this many milliseconds after its first transaction arrived.
        #[arg(long, default_value_t = 100, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(1..=60_000))]
        batch_timeout_ms: u64,
        /// Serve plaintext gRPC instead of TLS (TLS is on by default, as on a Fabric peer).
        #[arg(long)]
        no_tls: bool,
    },
    /// Development environment: a private PostgreSQL, the devnet and the daemon,
    /// all on 127.0.0.1, state under DIR. Ctrl-C stops everything.
    Dev {
        /// State directory (PostgreSQL cluster, devnet, daemon data).
        #[arg(long, default_value = "./.gxd-dev", value_name = "DIR")]
        dir: PathBuf,
        /// API listen address.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        api_listen: SocketAddr,
        /// Devnet gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:7051", value_name = "ADDR")]
        devnet_listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (with GXD_* overrides applied) without
    /// starting anything. Exits 64 naming the invalid field.
    Check {
        /// The file (default: $GXD_CONFIG).
        #[arg(env = "GXD_CONFIG", value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gxd-worker")
        .build()
        .context("start the tokio runtime")
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(config::load(path, &config::process_env())?)
}

/// Runs a parsed command line; returns the exit code, or an error (see
/// [`exit::code_for`]).
pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("gxd {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let Some(file) = file else {
                return Err(config::ConfigError {
                    field: String::new(),
                    message: "no file given: gxd config check FILE (or set GXD_CONFIG)".to_owned(),
                }
                .into());
            };
            let config = load(Some(&file))?;
            println!(
                "{}: ok (api {}, database {}, data_dir {})",
                file.display(),
                config.api_listen,
                config.database.target(),
                config.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let config = load(config.as_deref())?;
            logging::init(config.log_format, &config.log_filter);
            runtime()?.block_on(async {
                crate::daemon::run(config, shutdown_signal()).await?;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Migrate { check, config } => {
            let config = load(config.as_deref())?;
            logging::init(config.log_format, &config.log_filter);
            runtime()?.block_on(migrate(config, check))
        }
        Command::Devnet {
            dir,
            listen,
            batch_max_tx,
            batch_timeout_ms,
            no_tls,
        } => {
            logging::init(config::LogFormat::Pretty, "info");
            let config = gxd_devnet::DevnetConfig::new(dir)
                .with_listen(listen)
                .with_tls(!no_tls)
                .with_batch(
                    batch_max_tx as usize,
                    std::time::Duration::from_millis(batch_timeout_ms),
                );
            runtime()?.block_on(devnet(config))
        }
        Command::Dev {
            dir,
            api_listen,
            devnet_listen,
        } => {
            logging::init(config::LogFormat::Pretty, "info");
            runtime()?.block_on(async {
                crate::dev::run(crate::dev::DevOptions {
                    dir,
                    api_listen,
                    devnet_listen,
                })
                .await?;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
    }
}

async fn migrate(config: Config, check: bool) -> anyhow::Result<ExitCode> {
    use gxd_storage::pg;
    let mut client = pg::connect(&config.database)
        .await
        .context("connect to PostgreSQL (database.*)")?;
    if check {
        let status = pg::migrate::status(&client)
            .await
            .context("read the applied migrations")?;
        if status.is_diverged() {
            return Err(SchemaRefused(format!(
                "the database's schema diverges from this gxd binary: {}",
                status.describe_divergence()
            ))
            .into());
        }
        if !status.pending.is_empty() {
            eprintln!("gxd: {}", status.describe_pending());
            return Ok(ExitCode::from(exit::PENDING_MIGRATIONS));
        }
        println!(
            "database schema is current ({} migration(s) applied)",
            status.applied.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match pg::migrate::migrate(&mut client).await {
        Ok(applied) if applied.is_empty() => {
            println!("nothing to apply: the database schema is current");
            Ok(ExitCode::SUCCESS)
        }
        Ok(applied) => {
            for m in &applied {
                println!("applied {m}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(pg::MigrationError::Diverged(st)) => Err(SchemaRefused(format!(
            "refusing to migrate: the database's schema diverges from this gxd binary: {}",
            st.describe_divergence()
        ))
        .into()),
        Err(e) => Err(e).context("apply migrations"),
    }
}

async fn devnet(config: gxd_devnet::DevnetConfig) -> anyhow::Result<ExitCode> {
    let devnet = gxd_devnet::start(config).await.context("devnet")?;
    devnet
        .run_until(shutdown_signal())
        .await
        .context("devnet")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT. A second signal exits at once (code 1).
pub async fn shutdown_signal() {
    wait_signal().await;
    tokio::spawn(async {
        wait_signal().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(i32::from(exit::FAILURE));
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
            }
        }
        _ => {
            // Cannot install handlers (should not happen on Unix): fall back to Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_each_command() {
        let c = Cli::try_parse_from(["gxd", "migrate", "--check", "--config", "/x.toml"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Migrate {
                check: true,
                config: Some(_)
            }
        ));
        let c = Cli::try_parse_from(["gxd", "config", "check", "/x.toml"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Config {
                command: ConfigCommand::Check { file: Some(_) }
            }
        ));
        let c = Cli::try_parse_from(["gxd", "devnet", "--dir", "/d"]).unwrap();
        match c.command {
            Command::Devnet {
                listen,
                batch_max_tx,
                batch_timeout_ms,
                no_tls,
                ..
            } => {
                assert_eq!(listen.port(), 7051);
                assert_eq!((batch_max_tx, batch_timeout_ms, no_tls), (100, 100, false));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from([
            "gxd",
            "devnet",
            "--dir",
            "/d",
            "--batch-max-tx",
            "10",
            "--batch-timeout-ms",
            "2000",
            "--no-tls",
        ])
        .unwrap();
        match c.command {
            Command::Devnet {
                batch_max_tx,
                batch_timeout_ms,
                no_tls,
                ..
            } => assert_eq!((batch_max_tx, batch_timeout_ms, no_tls), (10, 2000, true)),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["gxd", "devnet", "--dir", "/d", "--batch-max-tx", "0"]).is_err()
        );
        let c = Cli::try_parse_from(["gxd", "dev"]).unwrap();
        match c.command {
            Command::Dev {
                dir, api_listen, ..
            } => {
                assert_eq!(dir, PathBuf::from("./.gxd-dev"));
                assert_eq!(api_listen.port(), 8080);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["gxd", "devnet"]).is_err());
    }
}
