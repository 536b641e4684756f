//! The devnet: a Fabric-compatible peer for development and tests.
//!
//! Placeholder entry point; the real peer replaces this module.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options for `gxd devnet`.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// State directory: crypto material, ledger, world state. Initialized on first start.
    pub dir: PathBuf,
    /// gRPC listen address (default 127.0.0.1:7051).
    pub listen: SocketAddr,
}

/// Errors from the devnet.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("devnet is not built yet")]
    NotBuilt,
}

/// Initialize `opts.dir` if needed, then serve until `shutdown` is cancelled.
pub async fn serve(
    opts: DevnetOptions,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), DevnetError> {
    let _ = (opts, shutdown);
    Err(DevnetError::NotBuilt)
}
