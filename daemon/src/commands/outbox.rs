//! `gxd outbox counts|list|requeue`: the operator's view of the command outbox on the
//! host, straight from the data dir.
//!
//! The outbox is single-writer: while a daemon runs it holds the data dir's RocksDB lock,
//! and this command does not fight it — it exits 75 (EX_TEMPFAIL) naming the REST routes
//! that do the same through the running daemon (`/api/v1/admin/outbox…`, with an admin
//! token from `gxd token issue`). With the daemon stopped it opens the outbox itself: an
//! offline requeue is then picked up by the next start. A data dir that does not exist is
//! not created.

use std::process::ExitCode;

use anyhow::Context;
use gxd_storage::outbox::{Command, CommandId, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions, StorageError};

use crate::config::Config;
use crate::logging;

/// Exit code when a running gxd holds the data dir (EX_TEMPFAIL: try again later, or use
/// the daemon's REST routes).
pub const EXIT_LOCKED: u8 = 75;

/// What to do with the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commands per status.
    Counts,
    /// One page of commands of a status, oldest first.
    List {
        status: Status,
        cursor: Option<CommandId>,
        limit: usize,
    },
    /// A dead letter (FAILED) back to PENDING, at the tail of its partition queues.
    Requeue { id: CommandId },
}

/// Runs `action` against the outbox in `config.data_dir`.
pub fn execute(config: Config, action: Action, json: bool) -> anyhow::Result<ExitCode> {
    logging::init(config.log_format, "warn");
    let path = Db::path_in(&config.data_dir);
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: no outbox here (storage.data_dir = {})",
            path.display(),
            config.data_dir.display()
        );
    }
    let db = match Db::open(&path, &DbOptions::default()) {
        Ok(db) => db,
        Err(StorageError::Locked { .. }) => {
            eprintln!(
                "gxd: {} is locked by a running gxd. Use its REST routes instead: \
                 GET /api/v1/admin/outbox/counts, GET /api/v1/admin/outbox?status=failed, \
                 POST /api/v1/admin/outbox/{{id}}/requeue (an admin token: gxd token issue \
                 --config FILE --sub ops --role admin)",
                path.display()
            );
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let outbox = Outbox::new(db, OutboxOptions::default()).context("open the outbox")?;
    let text = match action {
        Action::Counts => {
            let counts = outbox.counts().context("count the outbox")?;
            if json {
                serde_json::to_string_pretty(&counts).context("render JSON")?
            } else {
                let mut out = String::new();
                for s in Status::ALL {
                    out += &format!(
                        "{:<10} {}\n",
                        s.as_str().to_ascii_lowercase(),
                        counts.get(s)
                    );
                }
                out += &format!("{:<10} {}", "total", counts.total());
                out
            }
        }
        Action::List {
            status,
            cursor,
            limit,
        } => {
            let page = outbox
                .list_by_status(status, cursor, limit)
                .context("list the outbox")?;
            if json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "commands": page.commands,
                    "nextCursor": page.next_cursor.map(|c| c.to_string()),
                }))
                .context("render JSON")?
            } else {
                let mut out: Vec<String> = page.commands.iter().map(line).collect();
                if out.is_empty() {
                    out.push(format!(
                        "no {} commands",
                        status.as_str().to_ascii_lowercase()
                    ));
                }
                if let Some(next) = page.next_cursor {
                    out.push(format!("more: --cursor {next}"));
                }
                out.join("\n")
            }
        }
        Action::Requeue { id } => {
            let runtime = super::runtime()?;
            let c = runtime.block_on(outbox.requeue(id)).map_err(|e| match e {
                StorageError::NotFound { .. } => anyhow::anyhow!("no command {id} in the outbox"),
                StorageError::IllegalTransition { .. } => anyhow::anyhow!(
                    "command {id} is not a dead letter (FAILED): only those can be requeued"
                ),
                e => anyhow::Error::new(e).context(format!("requeue {id}")),
            })?;
            if json {
                serde_json::to_string_pretty(&c).context("render JSON")?
            } else {
                format!(
                    "requeued {} ({}): now {}, requeued {} time(s); the next `gxd run` submits it",
                    c.id, c.command_type, c.status, c.requeues
                )
            }
        }
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// One command as a line: id, type, partition keys (comma-separated, the first one
/// first), attempts, last error.
fn line(c: &Command) -> String {
    let error = c
        .last_error
        .as_ref()
        .map(|e| format!(" — {}/{}: {}", e.stage, e.code, e.message))
        .unwrap_or_default();
    format!(
        "{} {} {} partition={} attempts={} updated={}{}",
        c.id,
        c.status,
        c.command_type,
        c.partition_keys().collect::<Vec<_>>().join(","),
        c.attempts,
        c.updated_at.to_rfc3339(),
        error
    )
}
