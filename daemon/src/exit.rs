//! Process exit codes (sysexits-style) and the errors that select them.

use std::process::ExitCode;

use crate::config::ConfigError;

/// Success.
pub const OK: u8 = 0;
/// Any other failure (I/O, database unreachable, a task failed, ...).
pub const FAILURE: u8 = 1;
/// `gxd migrate --check`: migrations are pending.
pub const PENDING_MIGRATIONS: u8 = 1;
/// Invalid command line or configuration (EX_USAGE). systemd does not restart on it.
pub const USAGE: u8 = 64;
/// The database's schema is not one this binary can run against (EX_DATAERR):
/// migrations unknown to the binary or divergent, or pending with
/// `database.migrate_on_startup = false`. systemd does not restart on it.
pub const SCHEMA: u8 = 65;

/// The database schema refuses this binary; exit code [`SCHEMA`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SchemaRefused(pub String);

/// The one mapping of a schema-check or migration error to the daemon's errors: a
/// diverged database is [`SchemaRefused`] (exit 65) — "refusing to {action}: …" with the
/// storage crate's explanation — anything else is a failure with `action` as context.
pub fn schema_error(error: gxd_storage::pg::MigrationError, action: &str) -> anyhow::Error {
    match error {
        e @ gxd_storage::pg::MigrationError::Diverged(_) => {
            SchemaRefused(format!("refusing to {action}: {e}")).into()
        }
        e => anyhow::Error::new(e).context(action.to_owned()),
    }
}

/// Picks the exit code for an error: [`USAGE`] for configuration errors,
/// [`SCHEMA`] for schema refusals, [`FAILURE`] otherwise.
pub fn code_for(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<ConfigError>().is_some() {
        USAGE
    } else if error.downcast_ref::<SchemaRefused>().is_some() {
        SCHEMA
    } else {
        FAILURE
    }
}

/// Prints `error` with its causes on one line (no backtrace), returns its code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    let code = code_for(error);
    let message = one_line(error);
    if crate::logging::is_initialized() {
        tracing::error!(exit_code = code, "{message}");
    } else {
        eprintln!("gxd: error: {message}");
    }
    ExitCode::from(code)
}

/// The error and its causes on one line, `: `-separated, skipping a cause whose
/// text the line already holds (many errors print their source themselves).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
