//! `gxd devnet`: the Fabric-compatible development peer, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::{config, logging, signal};

/// The command line of `gxd devnet`.
#[derive(Debug, Clone)]
pub struct DevnetArgs {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub batch_max_tx: u32,
    pub batch_timeout_ms: u64,
    pub no_tls: bool,
    /// Run the chaincode as the service this ccaas package points at.
    pub chaincode_package: Option<PathBuf>,
}

/// Serves the devnet until a shutdown signal (or its own failure).
pub fn execute(args: DevnetArgs) -> anyhow::Result<ExitCode> {
    logging::init(config::LogFormat::Pretty, "info");
    let config = gxd_devnet::DevnetConfig::new(args.dir)
        .with_listen(args.listen)
        .with_tls(!args.no_tls)
        .with_batch(
            args.batch_max_tx as usize,
            Duration::from_millis(args.batch_timeout_ms),
        );
    super::runtime()?.block_on(async {
        let config = match &args.chaincode_package {
            None => config,
            Some(path) => config.with_external_chaincode(super::chaincode::external_config(path)?),
        };
        let devnet = gxd_devnet::start(config).await.context("devnet")?;
        devnet
            .run_until(signal::shutdown_signal())
            .await
            .context("devnet")?;
        Ok(ExitCode::SUCCESS)
    })
}
