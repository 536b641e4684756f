//! The shutdown signal every long-running command waits for.

use crate::exit;

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
