//! The command line: clap definitions only. Each command's body is its own module under
//! [`crate::commands`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// The command outbox, from the data dir (when no running gxd holds it; else exit 75
    /// naming the REST routes that do the same).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Projection (read model) commands.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
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
        /// Run the chaincode as an external service instead of in-process: the ccaas
        /// package (`gxd chaincode package`) whose connection.json the peer dials; the
        /// chaincode must register under the package's id (label:sha256).
        #[arg(long, value_name = "FILE")]
        chaincode_package: Option<PathBuf>,
    },
    /// GX as a chaincode-as-a-service for a Fabric peer (Fabric 2.4+ ccaas builder).
    Chaincode {
        #[command(subcommand)]
        command: ChaincodeCommand,
    },
    /// Development environment: a private PostgreSQL, the devnet and the daemon,
    /// all on 127.0.0.1, state under DIR. Ctrl-C stops everything.
    Dev {
        /// State directory (PostgreSQL cluster, devnet, daemon data).
        #[arg(long, default_value = "./.gxd-dev", value_name = "DIR")]
        dir: PathBuf,
        /// API listen address. Default 127.0.0.1:8080, or a free port when that is busy;
        /// given and busy: an error.
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<SocketAddr>,
        /// Devnet gRPC listen address. Default 127.0.0.1:7051, or a free port when that is
        /// busy; given and busy: an error.
        #[arg(long, value_name = "ADDR")]
        devnet_listen: Option<SocketAddr>,
        /// Wallet id of the treasury the GX system is bootstrapped with (first start only).
        #[arg(long, default_value = "treasury", value_name = "ID")]
        treasury_wallet: String,
        /// Initial supply minted into the treasury (minor units; first start only).
        #[arg(long, default_value = "1000000000", value_name = "AMOUNT")]
        initial_supply: String,
    },
    /// Bearer tokens for the API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChaincodeCommand {
    /// Serve the GX chaincode over the shim protocol (`protos.Chaincode`) until
    /// SIGTERM/SIGINT; the peer connects to it as connection.json says.
    Serve {
        /// Listen address (Fabric's CCaaS convention: CHAINCODE_SERVER_ADDRESS).
        #[arg(long, env = "CHAINCODE_SERVER_ADDRESS", value_name = "ADDR")]
        listen: SocketAddr,
        /// The id to register under: the package id `label:sha256` that `peer lifecycle
        /// chaincode install` printed (or `gxd chaincode package`).
        #[arg(long, env = "CHAINCODE_ID", value_name = "CHAINCODE_ID")]
        id: String,
        /// Server certificate (PEM); with --tls-key turns TLS on.
        #[arg(
            long,
            env = "CHAINCODE_TLS_CERT",
            value_name = "FILE",
            requires = "tls_key"
        )]
        tls_cert: Option<PathBuf>,
        /// Server private key (PEM).
        #[arg(
            long,
            env = "CHAINCODE_TLS_KEY",
            value_name = "FILE",
            requires = "tls_cert"
        )]
        tls_key: Option<PathBuf>,
        /// CA bundle (PEM) of the peers' client certificates: requires client
        /// authentication (connection.json `client_auth_required`).
        #[arg(
            long,
            env = "CHAINCODE_CLIENT_CA_CERT",
            value_name = "FILE",
            requires = "tls_cert"
        )]
        client_ca: Option<PathBuf>,
    },
    /// Write the ccaas package Fabric's ccaas builder installs (metadata.json and
    /// code.tar.gz with connection.json); prints the package id.
    Package {
        /// Where the peer reaches the chaincode (`host:port`, as the peer resolves it).
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// Package label (letters, digits, `_ . + -`), e.g. gx_1.0.
        #[arg(long, value_name = "LABEL")]
        label: String,
        /// connection.json `dial_timeout` (a Go duration).
        #[arg(long, default_value = "10s", value_name = "DURATION")]
        dial_timeout: String,
        /// The chaincode serves TLS: needs --root-cert.
        #[arg(long, requires = "root_cert")]
        tls_required: bool,
        /// CA certificate (PEM) of the chaincode's server certificate (`root_cert`).
        #[arg(long, value_name = "FILE", requires = "tls_required")]
        root_cert: Option<PathBuf>,
        /// The peer's client certificate (PEM) for mutual TLS (`client_cert`; sets
        /// `client_auth_required`).
        #[arg(
            long,
            value_name = "FILE",
            requires = "client_key",
            requires = "tls_required"
        )]
        client_cert: Option<PathBuf>,
        /// The peer's client key (PEM) for mutual TLS (`client_key`).
        #[arg(long, value_name = "FILE", requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// The package file to write (e.g. gx.tar.gz).
        #[arg(value_name = "OUT.tar.gz")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a JWT with the configured signing key ([auth] of the configuration): iss and
    /// aud from the configuration, iat = nbf = now, exp = now + TTL. Prints the token
    /// alone on stdout.
    Issue {
        /// Configuration file (its [auth] section and keys).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Subject: the user id.
        #[arg(long, value_name = "ID")]
        sub: String,
        /// Role.
        #[arg(long, value_name = "ROLE", value_parser = ["user", "admin"])]
        role: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
        ttl_seconds: u64,
        /// Key to sign with (its kid); needed when several keys can sign.
        #[arg(long, value_name = "KID")]
        kid: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Commands per status.
    Counts {
        /// Configuration file (its storage.data_dir).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A page of commands of one status, oldest first (default: the dead letters).
    List {
        /// Configuration file (its storage.data_dir).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// pending, prepared, submitted, committed, projected or failed.
        #[arg(long, default_value = "failed", value_name = "STATUS")]
        status: String,
        /// Continue after this command id (the `more: --cursor` of the previous page).
        #[arg(long, value_name = "ID")]
        cursor: Option<String>,
        /// Commands per page.
        #[arg(long, default_value_t = 50, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a dead letter (FAILED) again: back to PENDING at the tail of its partition queues.
    Requeue {
        /// Configuration file (its storage.data_dir).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The command id.
        #[arg(value_name = "ID")]
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Where the projector is: PostgreSQL's position, the checkpoint log's last block and
    /// the outbox's committed/projected counts (only when no running gxd holds the data
    /// dir's lock; else PostgreSQL only, and it says so), and the peer's ledger height
    /// when a peer is configured and answers.
    Status {
        /// Configuration file (without one: defaults plus GXD_* overrides).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replays the channel from block 0 into fresh read models (a shadow schema) while the
    /// current ones keep serving, compares both at the same block (a digest of every
    /// projection table) and swaps the rebuilt ones in, in one PostgreSQL transaction.
    /// Safe beside a running gxd. Progress on stderr.
    Rebuild {
        /// Configuration file (without one: defaults plus GXD_* overrides).
        #[arg(long, short, env = "GXD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only compare: keep the live read models (exit 1 when they differ).
        #[arg(long)]
        verify: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
                dir,
                api_listen,
                treasury_wallet,
                ..
            } => {
                assert_eq!(dir, PathBuf::from("./.gxd-dev"));
                assert_eq!(api_listen, None);
                assert_eq!(treasury_wallet, "treasury");
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from([
            "gxd", "token", "issue", "--config", "/c", "--sub", "alice", "--role", "user",
        ])
        .unwrap();
        match c.command {
            Command::Token {
                command:
                    TokenCommand::Issue {
                        sub,
                        role,
                        ttl_seconds,
                        kid,
                        ..
                    },
            } => assert_eq!(
                (sub.as_str(), role.as_str(), ttl_seconds, kid),
                ("alice", "user", 3600, None)
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["gxd", "token", "issue", "--sub", "a", "--role", "root"]).is_err()
        );
        assert!(Cli::try_parse_from(["gxd", "devnet"]).is_err());
        let c = Cli::try_parse_from([
            "gxd",
            "chaincode",
            "serve",
            "--listen",
            "127.0.0.1:9999",
            "--id",
            "gx_1.0:ab",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Chaincode {
                command: ChaincodeCommand::Serve { tls_cert: None, .. }
            }
        ));
        // TLS material comes in pairs; a client CA needs TLS.
        for args in [
            &["--tls-cert", "/c"][..],
            &["--tls-key", "/k"],
            &["--client-ca", "/ca"],
        ] {
            let mut argv = vec![
                "gxd",
                "chaincode",
                "serve",
                "--listen",
                "127.0.0.1:1",
                "--id",
                "x",
            ];
            argv.extend_from_slice(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
        assert!(
            Cli::try_parse_from([
                "gxd",
                "chaincode",
                "package",
                "--address",
                "cc:9999",
                "--label",
                "gx_1.0",
                "--tls-required",
                "out.tgz",
            ])
            .is_err(),
            "--tls-required needs --root-cert"
        );
    }
}
