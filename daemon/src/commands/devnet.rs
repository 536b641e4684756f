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
}

/// Serves the devnet until a shutdown signal (or its own failure).
pub fn execute(args: DevnetArgs) -> anyhow::Result<ExitCode> {
    logging::init(config::LogFormat::Pretty, "info");
    let mut settings = gxd_fabric::devnet::DevnetConfig::default().with_batch(
        args.batch_max_tx as usize,
        Duration::from_millis(args.batch_timeout_ms),
    );
    settings.tls = !args.no_tls;
    super::runtime()?.block_on(devnet(args.dir, args.listen, settings))
}

async fn devnet(
    dir: PathBuf,
    listen: SocketAddr,
    settings: gxd_fabric::devnet::DevnetConfig,
) -> anyhow::Result<ExitCode> {
    let token = tokio_util::sync::CancellationToken::new();
    let serve = gxd_fabric::devnet::serve_with(
        gxd_fabric::devnet::DevnetOptions::new(dir).with_listen(listen),
        settings,
        token.clone(),
    );
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        result = &mut serve => {
            result.context("devnet")?;
            return Ok(ExitCode::SUCCESS);
        }
        () = signal::shutdown_signal() => {}
    }
    token.cancel();
    serve.await.context("devnet")?;
    Ok(ExitCode::SUCCESS)
}
