//! `gxd projections status`: where the projector is — PostgreSQL's position (the
//! authoritative one), the RocksDB checkpoint log's last block, the outbox's COMMITTED and
//! PROJECTED counts, and the peer's ledger height when it answers.
//!
//! It never waits for or fights a running daemon: the data dir's RocksDB is opened only if
//! its lock is free; when the daemon holds it (it is running), only PostgreSQL is read and
//! the output says so. A data dir that does not exist is not created.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gxd_fabric::identity::SigningIdentity;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::pg::{self, projection};
use gxd_storage::{Db, DbOptions, StorageError};
use serde::Serialize;

use crate::config::{Config, FabricSection};
use crate::logging;

/// How long the peer gets to say its height.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `gxd projections status` reports (also as `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionsStatus {
    pub channel: String,
    /// Last block applied to the read models (PostgreSQL), if any.
    pub position: Option<u64>,
    /// Last block in the checkpoint log, if the data dir could be read.
    pub checkpoint_height: Option<u64>,
    /// COMMITTED and PROJECTED commands in the outbox, if the data dir could be read.
    pub committed_commands: Option<u64>,
    pub projected_commands: Option<u64>,
    /// Why the data dir was not read (the daemon holds its lock, it does not exist).
    pub data_dir_note: Option<String>,
    /// The peer's ledger height, if a peer is configured and answered.
    pub ledger_height: Option<u64>,
    /// Blocks on the ledger not applied yet (`ledger_height − position − 1`).
    pub lag_blocks: Option<u64>,
    /// Why the ledger height is unknown.
    pub ledger_note: Option<String>,
}

impl ProjectionsStatus {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let block = |b: Option<u64>| b.map_or_else(|| "none".to_owned(), |b| b.to_string());
        let mut out = format!("channel:           {}\n", self.channel);
        out += &format!(
            "position:          {} (PostgreSQL, authoritative)\n",
            block(self.position)
        );
        match &self.data_dir_note {
            None => {
                out += &format!("checkpoint log:    {}\n", block(self.checkpoint_height));
                out += &format!(
                    "commands:          {} committed, {} projected\n",
                    self.committed_commands.unwrap_or(0),
                    self.projected_commands.unwrap_or(0)
                );
            }
            Some(note) => out += &format!("checkpoint log:    not read: {note}\n"),
        }
        match (self.ledger_height, &self.ledger_note) {
            (Some(h), _) => {
                out += &format!(
                    "ledger height:     {h} ({} block(s) behind)\n",
                    self.lag_blocks.unwrap_or(0)
                );
            }
            (None, Some(note)) => out += &format!("ledger height:     unknown: {note}\n"),
            (None, None) => out += "ledger height:     unknown\n",
        }
        out
    }
}

/// Prints the status; exit 0, or an error when PostgreSQL cannot be read.
pub fn execute(config: Config, json: bool) -> anyhow::Result<ExitCode> {
    logging::init(config.log_format, "warn");
    let status = super::runtime()?.block_on(status(&config))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("render the status as JSON")?
        );
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Gathers the status (see the module docs).
pub async fn status(config: &Config) -> anyhow::Result<ProjectionsStatus> {
    let channel = config
        .fabric
        .as_ref()
        .map_or_else(|| FabricSection::default().channel, |f| f.channel.clone());
    let pool = pg::connect_pool(&config.database)
        .await
        .context("connect to PostgreSQL (database.*)")?;
    let position = projection::position(&pool, &channel)
        .await
        .context("read the projector's position (projector_checkpoints)")?
        .map(|p| p.block_number);
    pool.close();
    let mut out = ProjectionsStatus {
        channel: channel.clone(),
        position,
        ..ProjectionsStatus::default()
    };

    let path = Db::path_in(&config.data_dir);
    if !path.exists() {
        out.data_dir_note = Some(format!("{} does not exist", path.display()));
    } else {
        let open_path = path.clone();
        let opened =
            tokio::task::spawn_blocking(move || Db::open(&open_path, &DbOptions::default()))
                .await
                .context("open storage task")?;
        match opened {
            Ok(db) => {
                let log = CheckpointLog::new(db.clone());
                out.checkpoint_height = log
                    .last(&channel)
                    .context("read the checkpoint log")?
                    .map(|c| c.number);
                let counts = Outbox::new(db.clone(), OutboxOptions::default())
                    .context("open the outbox")?
                    .counts()
                    .context("count the outbox")?;
                out.committed_commands = Some(counts.committed);
                out.projected_commands = Some(counts.projected);
                tokio::task::spawn_blocking(move || drop(db))
                    .await
                    .context("close storage task")?;
            }
            Err(StorageError::Locked { .. }) => {
                out.data_dir_note = Some(format!(
                    "{} is locked by a running gxd; read PostgreSQL only",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("open {}", path.display()));
            }
        }
    }

    match &config.fabric {
        None => out.ledger_note = Some("no [fabric] peer configured".to_owned()),
        Some(fabric) => match ledger_height(fabric).await {
            Ok(h) => {
                out.ledger_height = Some(h);
                out.lag_blocks = Some(h.saturating_sub(position.map_or(0, |p| p + 1)));
            }
            Err(e) => out.ledger_note = Some(format!("{e:#}")),
        },
    }
    Ok(out)
}

async fn ledger_height(fabric: &crate::config::FabricConfig) -> anyhow::Result<u64> {
    let connector = crate::engine::connector(fabric)?;
    let identity = SigningIdentity::from_msp_dir(fabric.msp_id.clone(), &fabric.msp_dir)
        .with_context(|| format!("load the identity in {}", fabric.msp_dir.display()))?;
    let probe = gxd_fabric::stream::ledger_height(&connector, &identity, &fabric.channel);
    match tokio::time::timeout(PEER_TIMEOUT, probe).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(anyhow::anyhow!("peer did not answer: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "peer did not answer within {PEER_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_says_what_was_not_read() {
        let s = ProjectionsStatus {
            channel: "gxchannel".into(),
            position: Some(41),
            data_dir_note: Some(
                "/d/rocksdb is locked by a running gxd; read PostgreSQL only".into(),
            ),
            ledger_height: Some(45),
            lag_blocks: Some(3),
            ..ProjectionsStatus::default()
        };
        let text = s.render();
        assert!(text.contains("position:          41"), "{text}");
        assert!(text.contains("locked by a running gxd"), "{text}");
        assert!(
            text.contains("ledger height:     45 (3 block(s) behind)"),
            "{text}"
        );
        let fresh = ProjectionsStatus {
            channel: "c".into(),
            ledger_note: Some("no [fabric] peer configured".into()),
            ..ProjectionsStatus::default()
        };
        let text = fresh.render();
        assert!(text.contains("position:          none"), "{text}");
        assert!(text.contains("checkpoint log:    none"), "{text}");
        assert!(
            text.contains("unknown: no [fabric] peer configured"),
            "{text}"
        );
    }
}
