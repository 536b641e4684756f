//! The GX world the fault tests run in (a treasury, paying wallets, each paying into its own
//! sink) and their verdict, read from the ledger itself and from the read models.
//!
//! - [`setup`]: bootstrap, create the wallets, fund the payers.
//! - [`transfer`]: a `TRANSFER_TOKENS` command of one unit from a payer to its sink.
//! - [`ledger_blocks`] / [`exactly_once`]: every block from 0; per accepted command the
//!   number of VALID transfers with its id (lost = 0, duplicated = 0), and the VALID
//!   transfers of each partition in acceptance order.
//! - [`check_read_models`]: `applied_transactions` holds every ledger transaction exactly
//!   once (none skipped, none doubled), every wallet's balance is the ledger's, and the sum
//!   of the balances is the supply.
//! - [`rebuild_verifies`]: `gxd projections rebuild --verify` finds the rebuilt read models
//!   identical to the incremental ones.

use std::collections::HashMap;
use std::time::Duration;

use gxd_devnet::DevnetHandle;
use gxd_fabric::block::ParsedBlock;
use gxd_fabric::client::Gateway;
use gxd_fabric::stream::{BlockStream, BlockStreamConfig};
use gxd_gx::commands::command_type;
use gxd_storage::outbox::{CommandId, NewCommand};
use gxd_storage::pg::{Pool, read_models};
use tokio_util::sync::CancellationToken;

/// The supply the treasury is bootstrapped with.
pub const SUPPLY: u128 = 1_000_000_000;
/// What each non-treasury payer is funded with.
pub const FUNDING: u128 = 1_000_000;

/// The wallet a payer pays into. Each payer has its own, so payers do not wait for one
/// another (a shared payee would serialize them: it is a partition key of every transfer
/// into it — `daemon/engine/tests/submitter.rs` tests that case).
pub fn sink(payer: &str) -> String {
    format!("sink-{payer}")
}

/// Every wallet of the world of `payers` (the first is the treasury).
pub fn all_wallets(payers: &[String]) -> Vec<String> {
    payers
        .iter()
        .cloned()
        .chain(payers.iter().map(|p| sink(p)))
        .collect()
}

/// Bootstraps the treasury (`payers[0]`), creates every other payer and every sink, funds
/// the other payers; through the devnet's gateway as its admin (not through gxd).
pub async fn setup(devnet: &DevnetHandle, payers: &[String]) {
    let admin = devnet.gateway("Admin").unwrap();
    let submit = |function: &'static str, args: Vec<String>| {
        let admin = admin.clone();
        async move {
            admin
                .submit_transaction(&admin.proposal("gx", function).with_args(args))
                .await
                .unwrap_or_else(|e| panic!("{function}: {e}"));
        }
    };
    submit("Bootstrap", vec![payers[0].clone(), SUPPLY.to_string()]).await;
    for w in payers {
        submit("CreateUser", vec![sink(w), "{}".into()]).await;
    }
    for (i, u) in payers[1..].iter().enumerate() {
        submit("CreateUser", vec![u.clone(), "{}".into()]).await;
        submit(
            "TransferTokens",
            vec![
                format!("fund-{i}"),
                payers[0].clone(),
                u.clone(),
                FUNDING.to_string(),
                String::new(),
            ],
        )
        .await;
    }
}

/// A command moving one unit from `from` to its sink.
pub fn transfer(request_id: String, from: &str) -> NewCommand {
    NewCommand {
        tenant: "Org1MSP".into(),
        command_type: command_type::TRANSFER_TOKENS.into(),
        request_id,
        partition_key: from.into(),
        // As the API sets them: the payer and the payee.
        extra_partition_keys: vec![sink(from)],
        payload: serde_json::to_vec(&serde_json::json!({
            "fromWalletId": from, "toWalletId": sink(from), "amount": "1",
        }))
        .unwrap(),
    }
}

/// Blocks `0..height` of the channel, through the Deliver service.
pub async fn ledger_blocks(gw: &Gateway, height: u64) -> Vec<ParsedBlock> {
    let cancel = CancellationToken::new();
    let mut s = BlockStream::new(
        gw.connector().clone(),
        gw.identity().clone(),
        BlockStreamConfig::new(gw.channel(), 0),
        cancel.clone(),
    );
    let mut out = Vec::new();
    while (out.len() as u64) < height {
        out.push(s.next().await.unwrap().unwrap());
    }
    cancel.cancel();
    out
}

/// What the ledger says about the accepted commands.
#[derive(Debug, Default)]
pub struct LedgerVerdict {
    pub commands: usize,
    /// Accepted commands with no VALID transaction.
    pub lost: Vec<CommandId>,
    /// Accepted commands with more than one VALID transaction.
    pub duplicated: Vec<CommandId>,
    /// Transfers marked invalid on the ledger (DUPLICATE_TXID copies of resubmissions,
    /// MVCC conflicts): they changed nothing.
    pub invalid_copies: usize,
    /// Partitions whose VALID transfers are not in acceptance order.
    pub out_of_order: Vec<String>,
}

impl LedgerVerdict {
    pub fn is_exactly_once(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.out_of_order.is_empty()
    }
}

/// Exactly one VALID transfer per accepted `(command, partition)`, in acceptance order per
/// partition (transfer ids are the command ids; the setup's `fund-*` are left out).
pub fn exactly_once(blocks: &[ParsedBlock], accepted: &[(CommandId, String)]) -> LedgerVerdict {
    let mut valid: HashMap<String, u32> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut verdict = LedgerVerdict {
        commands: accepted.len(),
        ..LedgerVerdict::default()
    };
    for t in blocks.iter().flat_map(|b| b.transactions.iter()) {
        if t.function() != Some("TransferTokens") {
            continue;
        }
        let transfer_id = String::from_utf8(t.args[1].clone()).unwrap();
        let from = String::from_utf8(t.args[2].clone()).unwrap();
        if t.is_valid() {
            *valid.entry(transfer_id.clone()).or_default() += 1;
            if !transfer_id.starts_with("fund-") {
                order.entry(from).or_default().push(transfer_id);
            }
        } else {
            verdict.invalid_copies += 1;
        }
    }
    for (id, _) in accepted {
        match valid.get(&id.to_string()).copied().unwrap_or(0) {
            0 => verdict.lost.push(*id),
            1 => {}
            _ => verdict.duplicated.push(*id),
        }
    }
    let mut partitions: Vec<&String> = accepted.iter().map(|(_, p)| p).collect();
    partitions.sort();
    partitions.dedup();
    for p in partitions {
        let expected: Vec<String> = accepted
            .iter()
            .filter(|(_, q)| q == p)
            .map(|(id, _)| id.to_string())
            .collect();
        if order.get(p).cloned().unwrap_or_default() != expected {
            verdict.out_of_order.push(p.clone());
        }
    }
    verdict
}

/// The read models against the ledger: every transaction of `blocks` recorded exactly once
/// in `applied_transactions` (same block, index, tx id and validation code; nothing more),
/// each wallet's balance the ledger's (`GetWallet`), and the balances summing to [`SUPPLY`].
pub async fn check_read_models(
    pool: &Pool,
    gw: &Gateway,
    blocks: &[ParsedBlock],
    wallets: &[String],
) {
    let applied = read_models::applied_transactions(pool, gw.channel())
        .await
        .unwrap();
    let on_ledger: Vec<(i64, i32, String, i32)> = blocks
        .iter()
        .flat_map(|b| {
            b.transactions.iter().map(move |t| {
                (
                    i64::try_from(b.number).unwrap(),
                    i32::try_from(t.index).unwrap(),
                    t.tx_id.clone(),
                    t.validation_code,
                )
            })
        })
        .collect();
    let projected: Vec<(i64, i32, String, i32)> = applied
        .iter()
        .map(|a| {
            (
                a.block_number,
                a.tx_index,
                a.tx_id.clone().unwrap_or_default(),
                a.validation_code,
            )
        })
        .collect();
    assert_eq!(
        projected.len(),
        on_ledger.len(),
        "applied_transactions rows vs ledger transactions"
    );
    assert_eq!(projected, on_ledger, "applied_transactions = the ledger");
    let mut sum: u128 = 0;
    for w in wallets {
        let on_ledger: serde_json::Value = serde_json::from_slice(
            &gw.evaluate(&gw.proposal("gx", "GetWallet").with_args([w.as_str()]))
                .await
                .unwrap(),
        )
        .unwrap();
        let row = read_models::wallet(pool, w).await.unwrap().unwrap();
        assert_eq!(row.balance, on_ledger["balance"].as_str().unwrap(), "{w}");
        sum += row.balance.parse::<u128>().unwrap();
    }
    assert_eq!(sum, SUPPLY, "sum of the balances = the supply");
    let c = pool.get().await.unwrap();
    let total: String = c
        .query_one("SELECT sum(balance)::text FROM wallets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        SUPPLY.to_string(),
        "sum over every wallet = the supply"
    );
}

/// `gxd projections rebuild --verify` on `config` (the binary, as an operator runs it):
/// replays the ledger into fresh read models and compares them with the incremental ones
/// at the same block. Asserts that they are identical (exit 0) and returns the report.
pub fn rebuild_verifies(config: &std::path::Path) -> serde_json::Value {
    let out = super::run_gxd(
        &[
            "projections",
            "rebuild",
            "--verify",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(300),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && report["identical"] == true,
        "gxd projections rebuild --verify: {:?}\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// Waits (with a deadline; checked at least once) until the read models hold `want`
/// transfers of kind `transfer`; `Err` with the last count past the deadline.
pub async fn wait_projected_transfers(
    pool: &Pool,
    want: i64,
    deadline: Duration,
) -> Result<i64, i64> {
    let end = tokio::time::Instant::now() + deadline;
    let mut n = 0;
    loop {
        if let Ok(c) = pool.get().await
            && let Ok(row) = c
                .query_one(
                    "SELECT count(*) FROM transfers WHERE kind = 'transfer'",
                    &[],
                )
                .await
        {
            n = row.get(0);
            if n >= want {
                return Ok(n);
            }
        }
        if tokio::time::Instant::now() >= end {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
