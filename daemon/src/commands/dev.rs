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
//!   `User1@org1.example.com` of Org1MSP against the devnet.
//!
//! Ctrl-C (or SIGTERM) stops the daemon, then the devnet, then PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gxd_storage::pg::PgSettings;
use gxd_storage::pg::cluster::{ClusterError, LocalCluster};
use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, FabricSection, LogFormat, PoisonPolicySetting, ProjectorSection, ProjectorSettings,
    ShutdownTimeouts, SubmitterSection,
};

/// Database the daemon uses in the dev cluster.
pub const DEV_DATABASE: &str = "gxd";

/// Options of `gxd dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub api_listen: SocketAddr,
    pub devnet_listen: SocketAddr,
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
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    let dir = opts
        .dir
        .canonicalize()
        .with_context(|| format!("resolve {}", opts.dir.display()))?;

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

async fn with_cluster(
    opts: &DevOptions,
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
    let fabric = FabricSection {
        peer_endpoints: vec![devnet_addr.to_string()],
        peer_tls_server_name: Some(gxd_devnet::PEER_HOST.to_owned()),
        tls_ca_file: Some(paths.peer_tls_ca(ORG1)),
        msp_id: Some("Org1MSP".to_owned()),
        msp_dir: Some(paths.user_msp(ORG1, "User1")),
        channel: gxd_devnet::DEFAULT_CHANNEL.to_owned(),
        chaincode: gxd_devnet::DEFAULT_CHAINCODE.to_owned(),
        ..FabricSection::default()
    }
    .validate()?;

    let config = Config {
        api_listen: opts.api_listen,
        database: PgSettings {
            host: cluster.host().to_owned(),
            port: cluster.port(),
            user: cluster.superuser().to_owned(),
            password: Some(cluster.superuser_password().to_owned()),
            dbname: DEV_DATABASE.to_owned(),
            pool_max_size: 8,
            connect_timeout: Duration::from_secs(10),
            application_name: "gxd-dev".to_owned(),
        },
        migrate_on_startup: true,
        data_dir: dir.join("data"),
        fabric,
        submitter: SubmitterSection::default().validate()?,
        projector: ProjectorSettings {
            poison_policy: PoisonPolicySetting::Halt,
            max_lag: Duration::from_secs(ProjectorSection::default().max_lag_seconds),
        },
        log_format: LogFormat::Pretty,
        log_filter: "info".to_owned(),
        shutdown: ShutdownTimeouts {
            http_drain: Duration::from_secs(5),
            storage_close: Duration::from_secs(5),
        },
    };

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
        "  devnet      {} (state in {}; gxd signs as User1@{ORG1}, Org1MSP)",
        devnet_addr,
        devnet_dir.display()
    );
    println!(
        "  API         http://{0}  (GET /healthz /readyz /metrics)",
        opts.api_listen
    );
    println!("  daemon data {}", config.data_dir.display());
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
