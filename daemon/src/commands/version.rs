//! `gxd version`.

use std::process::ExitCode;

/// Prints the version.
pub fn execute() -> anyhow::Result<ExitCode> {
    println!("gxd {}", env!("CARGO_PKG_VERSION"));
    Ok(ExitCode::SUCCESS)
}
