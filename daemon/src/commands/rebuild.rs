//! `gxd projections rebuild`: replays the channel from block 0 into a shadow schema while
//! the current read models keep serving, compares the two at the same block, and swaps the
//! rebuilt ones in (`gxd_engine::rebuild` has the protocol). Progress goes to stderr once a
//! second; the report to stdout (`--json` for a machine).
//!
//! Safe beside a running `gxd run`: the live projector is held back only for the last few
//! blocks, the digests and the swap (one PostgreSQL transaction). Ctrl-C before the swap
//! leaves the live read models untouched.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gxd_engine::projector::{DeliverSource, PoisonPolicy};
use gxd_engine::rebuild::{self, Progress, RebuildConfig, RebuildReport};
use gxd_fabric::identity::SigningIdentity;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoisonPolicySetting};
use crate::logging;

/// Exit code of `--verify` when the rebuilt read models differ from the live ones.
pub const DIFFERENT: u8 = 1;

/// The report (`--json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    channel: String,
    position: u64,
    blocks: u64,
    transactions: u64,
    elapsed_seconds: f64,
    transactions_per_second: f64,
    live_digest: String,
    rebuilt_digest: String,
    identical: bool,
    differing_tables: Vec<&'static str>,
    swapped: bool,
}

fn report(channel: &str, r: &RebuildReport) -> Report {
    let secs = r.elapsed.as_secs_f64();
    Report {
        channel: channel.to_owned(),
        position: r.position,
        blocks: r.blocks,
        transactions: r.transactions,
        elapsed_seconds: secs,
        transactions_per_second: r.transactions as f64 / secs.max(1e-3),
        live_digest: r.live.combined(),
        rebuilt_digest: r.rebuilt.combined(),
        identical: r.identical(),
        differing_tables: r.live.differences(&r.rebuilt),
        swapped: r.swapped,
    }
}

fn render_progress(p: &Progress) -> String {
    let block = p.block.map_or_else(|| "none".to_owned(), |b| b.to_string());
    let pct = p
        .block
        .map_or(0.0, |b| (b + 1) as f64 * 100.0 / (p.target + 1) as f64);
    let eta = p
        .eta
        .map_or_else(|| "?".to_owned(), |d| format!("{} s", d.as_secs()));
    format!(
        "rebuild: block {block}/{} ({pct:.1}%), {} transactions, {:.0} tx/s, ETA {eta}",
        p.target, p.transactions, p.transactions_per_second
    )
}

/// Runs the rebuild; exit 0 when done (`--verify`: when identical, else [`DIFFERENT`]).
pub fn execute(config: Config, verify: bool, json: bool) -> anyhow::Result<ExitCode> {
    logging::init(config.log_format, "warn");
    let fabric = config.fabric.clone().context(
        "no [fabric] peer configured: a rebuild replays the ledger from the peer's Deliver service",
    )?;
    super::runtime()?.block_on(async move {
        let connector = crate::engine::connector(&fabric)?;
        let signer = SigningIdentity::from_msp_dir(fabric.msp_id.clone(), &fabric.msp_dir)
            .with_context(|| format!("load the identity in {}", fabric.msp_dir.display()))?;
        let source = DeliverSource {
            connector,
            signer,
            backoff: gxd_fabric::stream::Backoff::default(),
        };
        let mut rc = RebuildConfig::new(fabric.channel.clone());
        rc.poison = match config.projector.poison_policy {
            PoisonPolicySetting::Halt => PoisonPolicy::Halt,
            PoisonPolicySetting::DeadLetter => PoisonPolicy::DeadLetter,
        };
        rc.swap = !verify;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            crate::signal::shutdown_signal().await;
            on_signal.cancel();
        });
        let handler = Arc::new(gxd_gx::handlers::GxProjection::new(
            fabric.chaincode.clone(),
        ));
        let done = rebuild::rebuild(
            &config.database,
            rc,
            handler,
            Arc::new(source),
            |p| eprintln!("{}", render_progress(p)),
            shutdown,
        )
        .await
        .context("rebuild the read models")?;
        let r = report(&fabric.channel, &done);
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).context("render the report as JSON")?
            );
        } else {
            println!(
                "rebuilt channel {} up to block {}: {} transactions in {:.1} s ({:.0} tx/s)",
                r.channel, r.position, r.transactions, r.elapsed_seconds, r.transactions_per_second
            );
            println!("live read models:    {}", done.live);
            println!("rebuilt read models: {}", done.rebuilt);
            if r.identical {
                println!("identical: yes");
            } else {
                println!(
                    "identical: NO (tables differing: {})",
                    r.differing_tables.join(", ")
                );
            }
            println!(
                "{}",
                if r.swapped {
                    "swapped: the rebuilt read models are now served"
                } else {
                    "not swapped (--verify): the live read models are unchanged"
                }
            );
        }
        Ok(if verify && !r.identical {
            ExitCode::from(DIFFERENT)
        } else {
            ExitCode::SUCCESS
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn progress_reads_as_blocks_rate_and_eta() {
        let p = Progress {
            block: Some(49),
            target: 99,
            transactions: 5000,
            elapsed: Duration::from_secs(2),
            transactions_per_second: 2500.0,
            eta: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            render_progress(&p),
            "rebuild: block 49/99 (50.0%), 5000 transactions, 2500 tx/s, ETA 2 s"
        );
    }
}
