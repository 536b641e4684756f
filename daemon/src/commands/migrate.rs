//! `gxd migrate [--check]`: applies the embedded migrations, or only reports.

use std::process::ExitCode;

use anyhow::Context;
use gxd_storage::pg;

use crate::config::Config;
use crate::exit;
use crate::logging;

/// Applies pending migrations, or with `check` reports and changes nothing: exit 1
/// naming pending migrations, 65 for a diverged database, 0 when current.
pub fn execute(config: Config, check: bool) -> anyhow::Result<ExitCode> {
    logging::init(config.log_format, &config.log_filter);
    super::runtime()?.block_on(migrate(config, check))
}

async fn migrate(config: Config, check: bool) -> anyhow::Result<ExitCode> {
    let mut client = pg::connect(&config.database)
        .await
        .context("connect to PostgreSQL (database.*)")?;
    if check {
        let status = pg::migrate::check(&client)
            .await
            .map_err(|e| exit::schema_error(e, "check migrations"))?;
        if !status.pending.is_empty() {
            eprintln!("gxd: {}", status.describe_pending());
            return Ok(ExitCode::from(exit::PENDING_MIGRATIONS));
        }
        println!(
            "database schema is current ({} migration(s) applied)",
            status.applied.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let applied = pg::migrate::migrate(&mut client)
        .await
        .map_err(|e| exit::schema_error(e, "apply migrations"))?;
    if applied.is_empty() {
        println!("nothing to apply: the database schema is current");
    }
    for m in &applied {
        println!("applied {m}");
    }
    Ok(ExitCode::SUCCESS)
}
