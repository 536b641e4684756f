//! `gxd dev`: the whole system on one machine, on embedded defaults.
//!
//! - a private PostgreSQL cluster in `DIR/postgres` (initdb on first start; the
//!   superuser password is kept in `DIR/postgres/gxd_superuser_password`); as root, when
//!   the `postgres` user cannot reach DIR (say, under a 0700 /root), in
//!   `/var/tmp/gxd-dev-<hash of DIR>/postgres` instead;
//! - the devnet in `DIR/devnet`, in-process, started first (a busy port is an error: gxd
//!   dev never runs without one of its parts; the devnet failing later stops everything);
//! - the daemon, against database `gxd` of that cluster, with its data in `DIR/data`, the
//!   API on 127.0.0.1:8080, and the engine (submitter, projector) signing as
//!   `Admin@org1.example.com` of Org1MSP against the devnet (an admin identity: the GX
//!   chaincode accepts `Bootstrap` only from one).
//! - ports: the API's 127.0.0.1:8080 and the devnet's 127.0.0.1:7051 when free, else free
//!   ports (printed); an address given with `--api-listen` / `--devnet-listen` that is
//!   busy is an error (exit non-zero) before anything starts.
//! - auth: on first start an HS256 secret in `DIR/auth/hs256.secret` (0600); the
//!   configuration it runs with (an `[auth]` section included) is written to
//!   `DIR/gxd.toml` on every start, so `gxd token issue --config DIR/gxd.toml ...` works;
//!   an admin and a user token (24 h) and a curl line are printed.
//! - bootstrap: once per DIR, a `BOOTSTRAP_SYSTEM` command (treasury wallet, initial
//!   supply) enqueued straight into the outbox with a fixed request id before the daemon
//!   starts; `DIR/bootstrap.json` records it, so later starts skip it (and a crash between
//!   the two makes the next start an idempotent repeat of the same request id).
//!
//! Ctrl-C (or SIGTERM) stops the daemon, then the devnet, then PostgreSQL.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gxd_storage::pg::cluster::{ClusterError, LocalCluster};
use tokio_util::sync::CancellationToken;

use crate::config::{
    ApiSection, AuthKeySection, AuthSection, Config, ConfigError, DatabaseSection, FabricSection,
    FileConfig, LogFormat, LogSection, ShutdownSection, StorageSection,
};

/// Database the daemon uses in the dev cluster.
pub const DEV_DATABASE: &str = "gxd";
/// The API's address when free.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";
/// The devnet's address when free.
pub const DEFAULT_DEVNET_LISTEN: &str = "127.0.0.1:7051";
/// `iss` and `aud` of the dev tokens.
pub const DEV_ISSUER: &str = "gxd-dev";
pub const DEV_AUDIENCE: &str = "gxd";
/// kid of the dev HS256 key.
pub const DEV_KID: &str = "gxd-dev";
/// Request id (idempotency key) of the one bootstrap command.
pub const BOOTSTRAP_REQUEST_ID: &str = "gxd-dev-bootstrap";
/// Tenant of the bootstrap command: the organization gxd signs for.
pub const DEV_TENANT: &str = "Org1MSP";
/// The user id of the printed user token.
pub const DEV_USER: &str = "alice";
/// The subject of the printed admin token.
pub const DEV_ADMIN: &str = "admin";
/// Lifetime of the printed tokens.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Options of `gxd dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    /// `None`: [`DEFAULT_API_LISTEN`], or a free port when that is busy.
    pub api_listen: Option<SocketAddr>,
    /// `None`: [`DEFAULT_DEVNET_LISTEN`], or a free port when that is busy.
    pub devnet_listen: Option<SocketAddr>,
    pub treasury_wallet: String,
    pub initial_supply: String,
}

/// The address to use: `asked` must be free (an error naming `flag` otherwise); without
/// it, `default` when free, else a free port on the same interface (said on stdout).
fn choose_listen(
    asked: Option<SocketAddr>,
    default: &str,
    what: &str,
    flag: &str,
) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = asked {
        return match TcpListener::bind(addr) {
            Ok(_) => Ok(addr),
            Err(e) => Err(ConfigError {
                field: flag.to_owned(),
                message: format!(
                    "{addr} is not available for the {what} ({e}); choose another address or stop what holds it"
                ),
            }
            .into()),
        };
    }
    let default: SocketAddr = default
        .parse()
        .with_context(|| format!("parse {default}"))?;
    if TcpListener::bind(default).is_ok() {
        return Ok(default);
    }
    let free = TcpListener::bind(SocketAddr::new(default.ip(), 0))
        .and_then(|l| l.local_addr())
        .with_context(|| format!("find a free port for the {what}"))?;
    println!("gxd dev: {default} is busy; the {what} uses {free} instead");
    Ok(free)
}

/// A positive integer of digits without leading zeros (minor units).
fn valid_amount(s: &str) -> bool {
    !s.is_empty() && s.len() <= 30 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
}

fn valid_wallet_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Writes `contents` to `path` with mode 0600 (replacing it).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// `DIR/auth/hs256.secret`: created once (32 random bytes, hex), kept afterwards.
fn ensure_secret(dir: &Path) -> anyhow::Result<PathBuf> {
    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir).with_context(|| format!("create {}", auth_dir.display()))?;
    let path = auth_dir.join("hs256.secret");
    if path.exists() {
        return Ok(path);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom for the dev JWT secret")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, format!("{hex}\n").as_bytes())?;
    Ok(path)
}

/// `/var/tmp/gxd-dev-<hash of DIR>/postgres`: where the cluster goes when DIR is not
/// reachable by the `postgres` user. The hash keeps two DIRs apart; /var/tmp survives reboots.
fn fallback_pg_dir(dir: &std::path::Path) -> PathBuf {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    PathBuf::from(format!("/var/tmp/gxd-dev-{h:016x}")).join("postgres")
}

/// `gxd dev`: runs the dev environment until SIGINT/SIGTERM.
pub fn execute(opts: DevOptions) -> anyhow::Result<ExitCode> {
    crate::logging::init(LogFormat::Pretty, "info");
    super::runtime()?.block_on(run(opts))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the dev environment until SIGINT/SIGTERM.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    if !valid_wallet_id(&opts.treasury_wallet) {
        return Err(ConfigError {
            field: "--treasury-wallet".to_owned(),
            message: format!(
                "{:?} is not a wallet id (1..=64 of A-Z a-z 0-9 - _ .)",
                opts.treasury_wallet
            ),
        }
        .into());
    }
    if !valid_amount(&opts.initial_supply) {
        return Err(ConfigError {
            field: "--initial-supply".to_owned(),
            message: format!(
                "{:?} is not a positive integer (digits, no leading zero)",
                opts.initial_supply
            ),
        }
        .into());
    }
    // Ports first: a busy address given explicitly stops us before anything starts.
    let devnet_listen = choose_listen(
        opts.devnet_listen,
        DEFAULT_DEVNET_LISTEN,
        "devnet",
        "--devnet-listen",
    )?;
    let api_listen = choose_listen(opts.api_listen, DEFAULT_API_LISTEN, "API", "--api-listen")?;
    let opts = Resolved {
        opts,
        api_listen,
        devnet_listen,
    };
    let raw_dir = &opts.opts.dir;
    std::fs::create_dir_all(raw_dir).with_context(|| format!("create {}", raw_dir.display()))?;
    let dir = raw_dir
        .canonicalize()
        .with_context(|| format!("resolve {}", raw_dir.display()))?;

    let mut pg_dir = dir.join("postgres");
    let start = |pg_dir: PathBuf| tokio::task::spawn_blocking(move || LocalCluster::start(&pg_dir));
    let cluster = match start(pg_dir.clone())
        .await
        .context("PostgreSQL start task")?
    {
        // As root the server runs as `postgres`, which cannot reach a DIR under a private
        // home (e.g. /root is 0700). Rather than ask for a chmod, keep the cluster in a
        // root-owned place it can reach, named after DIR so each DIR keeps its own data.
        Err(ClusterError::InaccessibleDir { path, .. }) => {
            pg_dir = fallback_pg_dir(&dir);
            tracing::warn!(
                unreachable = %path.display(),
                postgres = %pg_dir.display(),
                "DIR is not reachable by the postgres user; keeping the PostgreSQL cluster elsewhere"
            );
            start(pg_dir.clone())
                .await
                .context("PostgreSQL start task")?
                .with_context(|| format!("start PostgreSQL in {}", pg_dir.display()))?
        }
        other => other.with_context(|| format!("start PostgreSQL in {}", pg_dir.display()))?,
    };
    let result = with_cluster(&opts, &dir, &cluster).await;
    // Stop PostgreSQL last, off the async threads (it waits for the server).
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .context("PostgreSQL stop task")?;
    result
}

/// The options with the addresses chosen.
struct Resolved {
    opts: DevOptions,
    api_listen: SocketAddr,
    devnet_listen: SocketAddr,
}

async fn with_cluster(
    opts: &Resolved,
    dir: &std::path::Path,
    cluster: &LocalCluster,
) -> anyhow::Result<()> {
    cluster
        .ensure_database(DEV_DATABASE)
        .await
        .context("create the dev database")?;

    // The devnet first: its port bound and its crypto material in place before the daemon
    // is configured with them. It never runs without one of its parts.
    let devnet_dir = dir.join("devnet");
    let devnet = gxd_devnet::start(
        gxd_devnet::DevnetConfig::new(devnet_dir.clone()).with_listen(opts.devnet_listen),
    )
    .await
    .with_context(|| format!("start the devnet on {}", opts.devnet_listen))?;
    let devnet_addr = devnet.local_addr();
    let paths = devnet.paths().clone();
    let devnet_token = CancellationToken::new();
    let devnet = tokio::spawn(devnet.run_until(devnet_token.clone().cancelled_owned()));
    const ORG1: &str = "org1.example.com";
    // Through the same validation (and defaults) as a [fabric] section in a config file.
    let fabric_section = FabricSection {
        peer_endpoints: vec![devnet_addr.to_string()],
        peer_tls_server_name: Some(gxd_devnet::PEER_HOST.to_owned()),
        tls_ca_file: Some(paths.peer_tls_ca(ORG1)),
        msp_id: Some("Org1MSP".to_owned()),
        msp_dir: Some(paths.user_msp(ORG1, "Admin")),
        channel: gxd_devnet::DEFAULT_CHANNEL.to_owned(),
        chaincode: gxd_devnet::DEFAULT_CHAINCODE.to_owned(),
        ..FabricSection::default()
    };

    // The configuration, written to DIR/gxd.toml and run through the same validation
    // (and defaults) as any configuration file.
    let password_file = dir.join("postgres-password");
    write_private(&password_file, cluster.superuser_password().as_bytes())?;
    let secret_file = ensure_secret(dir)?;
    let file = FileConfig {
        api: ApiSection {
            listen: opts.api_listen.to_string(),
            ..ApiSection::default()
        },
        auth: Some(AuthSection {
            issuer: Some(DEV_ISSUER.to_owned()),
            audience: Some(DEV_AUDIENCE.to_owned()),
            keys: vec![AuthKeySection {
                kid: Some(DEV_KID.to_owned()),
                algorithm: "HS256".to_owned(),
                secret_file: Some(secret_file),
                ..AuthKeySection::default()
            }],
            ..AuthSection::default()
        }),
        database: DatabaseSection {
            host: Some(cluster.host().to_owned()),
            port: Some(cluster.port()),
            user: Some(cluster.superuser().to_owned()),
            password_file: Some(password_file),
            dbname: Some(DEV_DATABASE.to_owned()),
            pool_max_size: 8,
            application_name: "gxd-dev".to_owned(),
            ..DatabaseSection::default()
        },
        storage: StorageSection {
            data_dir: dir.join("data"),
        },
        fabric: fabric_section,
        log: LogSection {
            format: "pretty".to_owned(),
            filter: "info".to_owned(),
        },
        shutdown: ShutdownSection {
            http_drain_timeout_seconds: 5,
            storage_close_timeout_seconds: 5,
        },
        ..FileConfig::default()
    };
    let config_path = dir.join("gxd.toml");
    let text = toml::to_string(&file).context("encode the dev configuration")?;
    write_private(
        &config_path,
        format!("# Written by `gxd dev` on every start; edits are overwritten.\n{text}").as_bytes(),
    )?;
    let config: Config = file.validate()?;
    let bootstrap = bootstrap_once(dir, &config, &opts.opts).await?;
    let token = |sub: &str, role: &str| {
        super::token::mint_token(
            &config,
            &super::token::IssueArgs {
                sub: sub.to_owned(),
                role: role.to_owned(),
                ttl: DEV_TOKEN_TTL,
                kid: None,
            },
        )
    };
    let admin_token = token(DEV_ADMIN, "admin")?;
    let user_token = token(DEV_USER, "user")?;

    println!(
        "gxd dev: everything on 127.0.0.1, state in {}",
        dir.display()
    );
    println!(
        "  PostgreSQL  {}:{} user {} database {} (password in {}; log {})",
        cluster.host(),
        cluster.port(),
        cluster.superuser(),
        DEV_DATABASE,
        cluster
            .data_dir()
            .join(gxd_storage::pg::cluster::SUPERUSER_PASSWORD_FILE)
            .display(),
        cluster.log_file().display()
    );
    println!(
        "  devnet      {} (state in {}; gxd signs as Admin@{ORG1}, Org1MSP)",
        devnet_addr,
        devnet_dir.display()
    );
    println!(
        "  API         http://{0}  (GET /healthz /readyz /metrics, /api/v1/...)",
        opts.api_listen
    );
    println!("  daemon data {}", config.data_dir.display());
    println!("  config      {}", config_path.display());
    println!("  {bootstrap}");
    println!(
        "Tokens (valid 24 h; more with gxd token issue --config {} --sub ID --role user|admin):",
        config_path.display()
    );
    println!("  admin ({DEV_ADMIN}): {admin_token}");
    println!("  user  ({DEV_USER}): {user_token}");
    println!("Try:");
    println!(
        "  curl -s -H 'Authorization: Bearer {admin_token}' http://{}/api/v1/wallets/{}",
        opts.api_listen, bootstrap.treasury_wallet_id
    );
    println!("Ctrl-C stops everything.");

    // The devnet ending early (an error) stops everything: never run without it.
    let devnet_failed = std::sync::Arc::new(tokio::sync::Notify::new());
    let devnet_watch = {
        let token = devnet_token.clone();
        let failed = devnet_failed.clone();
        tokio::spawn(async move {
            let result = devnet.await;
            let stopped_early = !token.is_cancelled();
            match &result {
                Ok(Ok(())) if !stopped_early => {}
                Ok(Ok(())) => tracing::error!("the devnet stopped; stopping gxd dev"),
                Ok(Err(e)) => tracing::error!(error = %e, "the devnet failed; stopping gxd dev"),
                Err(e) => tracing::error!(error = %e, "the devnet task failed; stopping gxd dev"),
            }
            if stopped_early {
                failed.notify_one();
            }
        })
    };
    let shutdown = {
        let failed = devnet_failed.clone();
        async move {
            tokio::select! {
                () = crate::signal::shutdown_signal() => {}
                () = failed.notified() => {}
            }
        }
    };

    let result = crate::daemon::run(config, shutdown).await;

    devnet_token.cancel();
    if tokio::time::timeout(Duration::from_secs(10), devnet_watch)
        .await
        .is_err()
    {
        tracing::warn!("the devnet did not stop within 10s");
    }
    result
}

/// What `DIR/bootstrap.json` records: the GX system's bootstrap, enqueued once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRecord {
    pub command_id: String,
    pub treasury_wallet_id: String,
    pub initial_supply: String,
}

/// The bootstrap as printed.
struct Bootstrap {
    record: BootstrapRecord,
    treasury_wallet_id: String,
    /// True when this start enqueued it.
    now: bool,
}

impl std::fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.record;
        if self.now {
            write!(
                f,
                "bootstrap   treasury wallet {} with initial supply {} (command {}, enqueued now)",
                r.treasury_wallet_id, r.initial_supply, r.command_id
            )
        } else {
            write!(
                f,
                "bootstrap   treasury wallet {} with initial supply {} (command {}, done on an earlier start)",
                r.treasury_wallet_id, r.initial_supply, r.command_id
            )
        }
    }
}

/// Enqueues `BOOTSTRAP_SYSTEM` into the outbox once per DIR (see the module docs). The
/// outbox is opened and closed here, before the daemon opens it.
async fn bootstrap_once(
    dir: &Path,
    config: &Config,
    opts: &DevOptions,
) -> anyhow::Result<Bootstrap> {
    use gxd_storage::outbox::{NewCommand, Outbox, OutboxOptions};
    use gxd_storage::{Db, DbOptions};

    let marker = dir.join("bootstrap.json");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let record: BootstrapRecord = serde_json::from_str(&text)
            .with_context(|| format!("read {} (delete it to bootstrap again)", marker.display()))?;
        if record.treasury_wallet_id != opts.treasury_wallet
            || record.initial_supply != opts.initial_supply
        {
            println!(
                "gxd dev: {} was bootstrapped earlier (treasury {}, supply {}); --treasury-wallet and --initial-supply apply to a new DIR only",
                dir.display(),
                record.treasury_wallet_id,
                record.initial_supply
            );
        }
        return Ok(Bootstrap {
            treasury_wallet_id: record.treasury_wallet_id.clone(),
            record,
            now: false,
        });
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create {}", config.data_dir.display()))?;
    let db_path = Db::path_in(&config.data_dir);
    let db = {
        let path = db_path.clone();
        tokio::task::spawn_blocking(move || Db::open(&path, &DbOptions::default()))
            .await
            .context("open storage task")?
            .with_context(|| format!("open the outbox in {}", db_path.display()))?
    };
    let payload = gxd_gx::commands::BootstrapSystem {
        treasury_wallet_id: opts.treasury_wallet.clone(),
        initial_supply: opts.initial_supply.clone(),
    };
    let outcome = {
        let outbox = Outbox::new(db.clone(), OutboxOptions::default())
            .with_context(|| format!("open the outbox in {}", db_path.display()))?;
        outbox
            .enqueue(NewCommand {
                tenant: DEV_TENANT.to_owned(),
                command_type: gxd_gx::commands::command_type::BOOTSTRAP_SYSTEM.to_owned(),
                request_id: BOOTSTRAP_REQUEST_ID.to_owned(),
                partition_key: opts.treasury_wallet.clone(),
                extra_partition_keys: Vec::new(),
                payload: serde_json::to_vec(&payload).context("encode the bootstrap payload")?,
            })
            .await
            .context("enqueue the GX bootstrap")?
    };
    // Close the outbox before the daemon opens it.
    tokio::task::spawn_blocking(move || drop(db))
        .await
        .context("close storage task")?;
    let record = BootstrapRecord {
        command_id: outcome.command.id.to_string(),
        treasury_wallet_id: opts.treasury_wallet.clone(),
        initial_supply: opts.initial_supply.clone(),
    };
    write_private(
        &marker,
        serde_json::to_string_pretty(&record)
            .context("encode the bootstrap record")?
            .as_bytes(),
    )?;
    Ok(Bootstrap {
        treasury_wallet_id: record.treasury_wallet_id.clone(),
        record,
        now: outcome.created,
    })
}
