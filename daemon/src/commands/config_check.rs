//! `gxd config check [FILE]`: validates a configuration file without starting anything.

use std::path::Path;
use std::process::ExitCode;

use crate::config::ConfigError;

/// Validates `file` (with `GXD_*` overrides applied); prints a one-line summary.
pub fn execute(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(file) = file else {
        return Err(ConfigError {
            field: String::new(),
            message: "no file given: gxd config check FILE (or set GXD_CONFIG)".to_owned(),
        }
        .into());
    };
    let config = super::load(Some(file))?;
    let auth = match &config.auth {
        Some(a) => format!("auth: {} key(s)", a.keys.len()),
        None => "no [auth]: authenticated routes closed".to_owned(),
    };
    println!(
        "{}: ok (api {}, database {}, data_dir {}, {auth})",
        file.display(),
        config.api_listen,
        config.database.target(),
        config.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
