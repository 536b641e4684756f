//! `gxd run`: the daemon until SIGTERM/SIGINT (see [`crate::daemon`]).

use std::process::ExitCode;

use crate::config::Config;
use crate::{logging, signal};

/// Runs the daemon with `config` until a shutdown signal.
pub fn execute(config: Config) -> anyhow::Result<ExitCode> {
    logging::init(config.log_format, &config.log_filter);
    super::runtime()?.block_on(async {
        crate::daemon::run(config, signal::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
