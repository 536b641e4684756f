//! Projector catch-up: a devnet ledger of N GX transactions, projected from block 0 into
//! fresh PostgreSQL databases, three ways in one run:
//!
//! - **batched** — the real [`Projector`] with GX's handler, as `gxd run` runs it (each
//!   block's writes buffered and written at commit in multi-row statements);
//! - **direct** — the same projector with `batch_writes` off: one transaction at a time,
//!   every typed write its own statements (the projector before batching);
//! - **naive** — written here: one row per statement, one statement per round trip, one
//!   PostgreSQL transaction per block (prepared statements, no batching), with the same
//!   read-model SQL, so its read models must equal the others' (digest checked).
//!
//! All three read the blocks from the devnet's Deliver service over TLS and append each
//! block to a RocksDB checkpoint log, as the projector does. The devnet runs as its own
//! process (`gxd devnet`), so this process's memory is the projector's (and the ledger
//! builder's client state).
//!
//! The ledger: GX bootstrapped, then closed-loop submitters (gxd's Fabric client, each on
//! its own wallets so that nothing conflicts) create users, fund them from their bank,
//! move small amounts between users, create more users, and on a few multisig wallets
//! propose, approve, reject and execute transfers.
//!
//! Run (needs a PostgreSQL that may `CREATE DATABASE`: `GXD_TEST_DATABASE_URL`, as the
//! tests use; or `GXD_BENCH_LOCAL_PG=1` for a private throwaway cluster, as the tests
//! start without the URL):
//!
//! ```text
//! GXD_TEST_DATABASE_URL=postgres://gxd_test@127.0.0.1:5432/postgres \
//!   cargo bench --workspace --bench projector
//! GXD_BENCH_QUICK=1 cargo bench --workspace --bench projector --profile dev   # ~5,000 txs
//! ```
//!
//! Knobs: `GXD_BENCH_PROJECTOR_TXS` (ledger size, default 100,000; 5,000 quick),
//! `GXD_BENCH_INFLIGHT` (submitters, default 256; 64 quick), `GXD_BENCH_BATCH` /
//! `GXD_BENCH_TIMEOUT_MS` (the devnet's block cutting, default 500 tx / 200 ms: a ledger
//! written under load has full blocks; Fabric's sample orderer cuts at 500 tx / 2 s),
//! `GXD_BENCH_SKIP_DIRECT=1` (leave out the direct projector).
//!
//! Memory: `VmHWM` of this process (the projector; the devnet is another process), reset through
//! `/proc/self/clear_refs` before each projection, so each figure is that projection's peak.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
#[path = "support/devnet_process.rs"]
mod devnet_process;
use devnet_process::DevnetProcess;
use gxd_engine::projector::{BlockSourceFactory, DeliverSource, Projector, ProjectorConfig};
use gxd_fabric::block::{BlockTransaction, ParsedBlock};
use gxd_fabric::client::Gateway;
use gxd_fabric::stream::Backoff;
use gxd_gx::contract::{GxEvent, ProposalStatus};
use gxd_gx::handlers::GxProjection;
use gxd_storage::checkpoint::{CheckpointLog, NewCheckpoint};
use gxd_storage::pg::testing::{TEST_DATABASE_URL_ENV, TestDb};
use gxd_storage::pg::{self, PgSettings, Pool, read_models};
use gxd_storage::{Db, DbOptions};
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = gxd_devnet::DEFAULT_CHANNEL;
/// Submitters per gRPC connection.
const PER_CONNECTION: usize = 128;
/// Users per submitter.
const USERS: usize = 8;
/// Submitters that also run multisig proposals.
const MULTISIG: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---- the ledger ----

struct Ledger {
    committed: AtomicU64,
    failed: AtomicU64,
    budget: u64,
}

impl Ledger {
    /// Whether the ledger still needs transactions (committed ones count).
    fn claim(&self) -> bool {
        self.committed.load(Ordering::Relaxed) < self.budget
    }

    /// Submits and waits for the commit; false if it failed (counted, a few printed).
    async fn submit(&self, gw: &Gateway, function: &str, args: &[&str]) -> bool {
        let spec = gw.proposal("gx", function).with_args(args.iter().copied());
        match gw.submit_transaction(&spec).await {
            Ok(_) => {
                self.committed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("{function} {args:?} failed: {e}");
                }
                false
            }
        }
    }

    /// A step the rest depends on: retried (a deadline under load) up to 10 times; a
    /// refusal because the id exists means an earlier attempt committed after all.
    async fn must(&self, gw: &Gateway, function: &str, args: &[&str]) {
        let spec = gw.proposal("gx", function).with_args(args.iter().copied());
        let mut last = String::new();
        for _ in 0..10 {
            match gw.submit_transaction(&spec).await {
                Ok(_) => {
                    self.committed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if e.to_string().contains("already") => return,
                Err(e) => last = e.to_string(),
            }
        }
        panic!("{function} {args:?} failed 10 times: {last}");
    }
}

/// One submitter's life: its users and bank, then funding, transfers, new users and (for
/// the first few) multisig proposals, until the budget is spent.
async fn submitter(
    gw: Gateway,
    w: usize,
    ledger: Arc<Ledger>,
    funded: tokio::sync::mpsc::Sender<usize>,
    mut go: tokio::sync::watch::Receiver<bool>,
) {
    let users: Vec<String> = (0..USERS).map(|i| format!("u{w}-{i}")).collect();
    let bank = format!("b{w}");
    for id in std::iter::once(&bank).chain(&users) {
        ledger
            .must(
                &gw,
                "CreateUser",
                &[id, r#"{"country":"DE","commitment":"c0ffee"}"#],
            )
            .await;
    }
    let multisig = (w < MULTISIG).then(|| format!("ms{w}"));
    if let Some(ms) = &multisig {
        let owners = serde_json::to_string(&users[..3]).unwrap();
        ledger
            .must(&gw, "CreateMultisigWallet", &[ms, &owners, "2"])
            .await;
    }
    funded.send(w).await.ok();
    drop(funded);
    go.wait_for(|g| *g).await.ok();
    // Fund every user, and the multisig wallet.
    for (i, u) in users.iter().enumerate() {
        ledger
            .must(
                &gw,
                "TransferTokens",
                &[&format!("f{w}-{i}"), &bank, u, "100000", "funding"],
            )
            .await;
    }
    if let Some(ms) = &multisig {
        ledger
            .must(
                &gw,
                "TransferTokens",
                &[&format!("f{w}-ms"), &bank, ms, "100000", "funding"],
            )
            .await;
    }
    let mut seq = 0u64;
    while ledger.claim() {
        seq += 1;
        let i = (seq as usize) % USERS;
        match seq % 20 {
            0 => {
                let id = format!("n{w}-{seq}");
                ledger
                    .submit(&gw, "CreateUser", &[&id, r#"{"country":"FR"}"#])
                    .await;
            }
            1 => {
                ledger
                    .submit(
                        &gw,
                        "TransferTokens",
                        &[&format!("top{w}-{seq}"), &bank, &users[i], "1000", "top-up"],
                    )
                    .await;
            }
            10 if multisig.is_some() => {
                let ms = multisig.as_deref().unwrap_or_default();
                let p = format!("p{w}-{seq}");
                ledger
                    .submit(&gw, "ProposeTransfer", &[&p, ms, &users[3], "10", "rent"])
                    .await;
                if ledger.claim() {
                    ledger
                        .submit(&gw, "ApproveTransfer", &[&p, &users[0]])
                        .await;
                }
                if ledger.claim() {
                    let (f, who) = if seq % 40 == 10 {
                        ("ApproveTransfer", &users[1])
                    } else {
                        ("RejectTransfer", &users[2])
                    };
                    ledger.submit(&gw, f, &[&p, who]).await;
                }
            }
            _ => {
                let to = &users[(i + 1) % USERS];
                let amount = (seq % 9 + 1).to_string();
                let memo = if seq.is_multiple_of(3) { "" } else { "lunch" };
                ledger
                    .submit(
                        &gw,
                        "TransferTokens",
                        &[&format!("t{w}-{seq}"), &users[i], to, &amount, memo],
                    )
                    .await;
            }
        }
    }
}

async fn build_ledger(gateways: &[Gateway], admin: &Gateway, txs: u64, in_flight: usize) {
    let ledger = Arc::new(Ledger {
        committed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        budget: txs,
    });
    ledger
        .must(admin, "Bootstrap", &["treasury", "1000000000000000"])
        .await;
    let (funded_tx, mut funded_rx) = tokio::sync::mpsc::channel(in_flight);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let gw = gateways[w / PER_CONNECTION % gateways.len()].clone();
        tasks.push(tokio::spawn(submitter(
            gw,
            w,
            ledger.clone(),
            funded_tx.clone(),
            go_rx.clone(),
        )));
    }
    drop(funded_tx);
    // Banks funded as their users exist: from the treasury through 16 hubs (a wallet pays
    // one transfer at a time, or the next conflicts), the hubs in parallel.
    let hubs = in_flight.clamp(1, 16);
    let gw = &gateways[0];
    for h in 0..hubs {
        ledger
            .must(gw, "CreateUser", &[&format!("hub{h}"), "{}"])
            .await;
    }
    for h in 0..hubs {
        ledger
            .must(
                gw,
                "TransferTokens",
                &[
                    &format!("fh{h}"),
                    "treasury",
                    &format!("hub{h}"),
                    "10000000000000",
                    "",
                ],
            )
            .await;
    }
    let mut ready = Vec::new();
    while let Some(w) = funded_rx.recv().await {
        ready.push(w);
    }
    let mut per_hub = vec![Vec::new(); hubs];
    for w in ready {
        per_hub[w % hubs].push(w);
    }
    let mut funders = Vec::new();
    for (h, ws) in per_hub.into_iter().enumerate() {
        let gw = gw.clone();
        let ledger = ledger.clone();
        funders.push(tokio::spawn(async move {
            for w in ws {
                ledger
                    .must(
                        &gw,
                        "TransferTokens",
                        &[
                            &format!("fb{w}"),
                            &format!("hub{h}"),
                            &format!("b{w}"),
                            "100000000",
                            "",
                        ],
                    )
                    .await;
            }
        }));
    }
    for f in funders {
        f.await.unwrap();
    }
    go_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let failed = ledger.failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("ledger: {failed} transactions failed (left out)");
    }
}

// ---- the naive projector ----

fn ts(tx: &BlockTransaction) -> DateTime<Utc> {
    tx.system_time()
        .map(DateTime::<Utc>::from)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The read-model statements, one row each, prepared once.
struct Naive {
    user: tokio_postgres::Statement,
    wallet: tokio_postgres::Statement,
    owner: tokio_postgres::Statement,
    transfer: tokio_postgres::Statement,
    history: tokio_postgres::Statement,
    set_balance: tokio_postgres::Statement,
    proposal: tokio_postgres::Statement,
    decision: tokio_postgres::Statement,
    decide: tokio_postgres::Statement,
    applied: tokio_postgres::Statement,
    first_position: tokio_postgres::Statement,
    position: tokio_postgres::Statement,
}

impl Naive {
    async fn prepare(c: &tokio_postgres::Client) -> Naive {
        let p = async |sql: &str| c.prepare(sql).await.unwrap();
        Naive {
            user: p("INSERT INTO users (user_id, country, profile_commitment, msp_id, channel, \
                     created_tx_id, created_block, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await,
            wallet: p("INSERT INTO wallets (wallet_id, kind, balance, threshold, msp_id, channel, \
                       created_tx_id, created_block, created_at, updated_block, updated_at) \
                       VALUES ($1, $2, $3::text::numeric, $4, $5, $6, $7, $8, $9, $8, $9)").await,
            owner: p("INSERT INTO wallet_owners (wallet_id, owner_id) VALUES ($1, $2)").await,
            transfer: p("INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, \
                         to_wallet_id, amount, memo, proposal_id, block_number, tx_index, tx_timestamp) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, \
                         COALESCE($8, (SELECT memo FROM proposals WHERE proposal_id = $9)), \
                         $9, $10, $11, $12) RETURNING memo").await,
            history: p("INSERT INTO wallet_history (wallet_id, channel, tx_id, direction, \
                        counterparty_wallet_id, amount, memo, block_number, tx_index, tx_timestamp) \
                        VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7, $8, $9, $10)").await,
            set_balance: p("UPDATE wallets SET balance = $2::text::numeric, updated_block = $3, \
                            updated_at = $4 WHERE wallet_id = $1").await,
            proposal: p("INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, \
                         state, threshold, channel, created_tx_id, created_block, created_at) \
                         VALUES ($1, $2, $3, $4::text::numeric, $5, 'pending', $6, $7, $8, $9, $10)").await,
            decision: p("INSERT INTO proposal_decisions (proposal_id, approver_id, decision, channel, \
                         tx_id, block_number, tx_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7)").await,
            decide: p("UPDATE proposals SET approval_count = COALESCE($2, approval_count), \
                       rejection_count = COALESCE($3, rejection_count), state = $4, \
                       closed_tx_id = CASE WHEN $4 = 'pending' THEN NULL ELSE $5 END, \
                       closed_block = CASE WHEN $4 = 'pending' THEN NULL ELSE $6::int8 END, \
                       closed_at = CASE WHEN $4 = 'pending' THEN NULL ELSE $7::timestamptz END \
                       WHERE proposal_id = $1 AND state = 'pending'").await,
            applied: p("INSERT INTO applied_transactions (channel, block_number, tx_id, tx_index, \
                        validation_code, event_name, tx_timestamp, outcome) \
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await,
            first_position: p("INSERT INTO projector_checkpoints (channel, block_number, block_hash) \
                               VALUES ($1, $2, $3)").await,
            position: p("UPDATE projector_checkpoints SET block_number = $2, block_hash = $3, \
                         updated_at = now() WHERE channel = $1 AND block_number = $4").await,
        }
    }
}

struct Move<'a> {
    transfer_id: &'a str,
    kind: &'a str,
    from: Option<&'a str>,
    to: &'a str,
    amount: &'a str,
    memo: Option<&'a str>,
    proposal: Option<&'a str>,
    from_balance: Option<&'a str>,
    to_balance: Option<&'a str>,
}

async fn naive_transfer(
    s: &Naive,
    t: &tokio_postgres::Transaction<'_>,
    block: i64,
    tx: &BlockTransaction,
    m: Move<'_>,
) {
    let at = ts(tx);
    let index = tx.index as i32;
    let row = t
        .query_one(
            &s.transfer,
            &[
                &CHANNEL,
                &tx.tx_id,
                &m.transfer_id,
                &m.kind,
                &m.from,
                &m.to,
                &m.amount,
                &m.memo,
                &m.proposal,
                &block,
                &index,
                &at,
            ],
        )
        .await
        .unwrap();
    let memo: Option<String> = row.get(0);
    if let Some(from) = m.from {
        t.execute(
            &s.history,
            &[
                &from,
                &CHANNEL,
                &tx.tx_id,
                &"debit",
                &Some(m.to),
                &m.amount,
                &memo,
                &block,
                &index,
                &at,
            ],
        )
        .await
        .unwrap();
    }
    t.execute(
        &s.history,
        &[
            &m.to, &CHANNEL, &tx.tx_id, &"credit", &m.from, &m.amount, &memo, &block, &index, &at,
        ],
    )
    .await
    .unwrap();
    // The GX ledger carries the balances after every transfer.
    if let (Some(from), Some(b)) = (m.from, m.from_balance) {
        assert_eq!(
            t.execute(&s.set_balance, &[&from, &b, &block, &at])
                .await
                .unwrap(),
            1
        );
    }
    let b = m.to_balance.expect("GX events carry the balances");
    assert_eq!(
        t.execute(&s.set_balance, &[&m.to, &b, &block, &at])
            .await
            .unwrap(),
        1
    );
}

async fn naive_event(
    s: &Naive,
    t: &tokio_postgres::Transaction<'_>,
    block: i64,
    tx: &BlockTransaction,
    name: &str,
    payload: &[u8],
) {
    let at = ts(tx);
    let msp = |m: &str| Some(m.to_owned());
    match GxEvent::decode(name, payload).unwrap() {
        GxEvent::SystemBootstrapped(e) => {
            t.execute(
                &s.wallet,
                &[
                    &e.treasury_wallet_id,
                    &"treasury",
                    &"0",
                    &None::<i32>,
                    &msp(&e.msp_id),
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            naive_transfer(
                s,
                t,
                block,
                tx,
                Move {
                    transfer_id: &e.treasury_wallet_id,
                    kind: "mint",
                    from: None,
                    to: &e.treasury_wallet_id,
                    amount: &e.initial_supply,
                    memo: None,
                    proposal: None,
                    from_balance: None,
                    to_balance: Some(&e.initial_supply),
                },
            )
            .await;
        }
        GxEvent::UserCreated(e) => {
            let country = e.profile.get("country").and_then(|v| v.as_str());
            let commitment = e.profile.get("commitment").and_then(|v| v.as_str());
            t.execute(
                &s.user,
                &[
                    &e.user_id,
                    &country,
                    &commitment,
                    &msp(&e.msp_id),
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            t.execute(
                &s.wallet,
                &[
                    &e.wallet_id,
                    &"user",
                    &"0",
                    &None::<i32>,
                    &msp(&e.msp_id),
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            t.execute(&s.owner, &[&e.wallet_id, &e.user_id])
                .await
                .unwrap();
        }
        GxEvent::TokensTransferred(e) => {
            let memo = (!e.memo.is_empty()).then_some(e.memo.as_str());
            naive_transfer(
                s,
                t,
                block,
                tx,
                Move {
                    transfer_id: &e.transfer_id,
                    kind: "transfer",
                    from: Some(&e.from_wallet_id),
                    to: &e.to_wallet_id,
                    amount: &e.amount,
                    memo,
                    proposal: None,
                    from_balance: Some(&e.from_balance),
                    to_balance: Some(&e.to_balance),
                },
            )
            .await;
        }
        GxEvent::MultisigWalletCreated(e) => {
            let threshold = Some(e.threshold as i32);
            t.execute(
                &s.wallet,
                &[
                    &e.wallet_id,
                    &"multisig",
                    &"0",
                    &threshold,
                    &msp(&e.msp_id),
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            for o in &e.owners {
                t.execute(&s.owner, &[&e.wallet_id, o]).await.unwrap();
            }
        }
        GxEvent::TransferProposed(e) => {
            let memo = (!e.memo.is_empty()).then_some(e.memo.as_str());
            t.execute(
                &s.proposal,
                &[
                    &e.proposal_id,
                    &e.from_wallet_id,
                    &e.to_wallet_id,
                    &e.amount,
                    &memo,
                    &(e.threshold as i32),
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
        }
        GxEvent::TransferApproved(e) => {
            t.execute(
                &s.decision,
                &[
                    &e.proposal_id,
                    &e.approver_id,
                    &"approve",
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            let state = status(e.status);
            let n = t
                .execute(
                    &s.decide,
                    &[
                        &e.proposal_id,
                        &Some(e.approvals.len() as i32),
                        &None::<i32>,
                        &state,
                        &tx.tx_id,
                        &block,
                        &at,
                    ],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
            if e.executed {
                naive_transfer(
                    s,
                    t,
                    block,
                    tx,
                    Move {
                        transfer_id: &e.proposal_id,
                        kind: "multisig",
                        from: Some(&e.from_wallet_id),
                        to: &e.to_wallet_id,
                        amount: &e.amount,
                        memo: None,
                        proposal: Some(&e.proposal_id),
                        from_balance: e.from_balance.as_deref(),
                        to_balance: e.to_balance.as_deref(),
                    },
                )
                .await;
            }
        }
        GxEvent::TransferRejected(e) => {
            t.execute(
                &s.decision,
                &[
                    &e.proposal_id,
                    &e.approver_id,
                    &"reject",
                    &CHANNEL,
                    &tx.tx_id,
                    &block,
                    &at,
                ],
            )
            .await
            .unwrap();
            let state = status(e.status);
            let n = t
                .execute(
                    &s.decide,
                    &[
                        &e.proposal_id,
                        &None::<i32>,
                        &Some(e.rejections.len() as i32),
                        &state,
                        &tx.tx_id,
                        &block,
                        &at,
                    ],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
    }
}

fn status(s: ProposalStatus) -> &'static str {
    match s {
        ProposalStatus::Pending => "pending",
        ProposalStatus::Executed => "executed",
        ProposalStatus::Rejected => "rejected",
    }
}

async fn naive_block(s: &Naive, client: &mut tokio_postgres::Client, b: &ParsedBlock) {
    let block = b.number as i64;
    let t = client.transaction().await.unwrap();
    for tx in &b.transactions {
        let event = tx.event.as_ref().filter(|e| !e.event_name.is_empty());
        let outcome = if tx.is_valid() { "applied" } else { "invalid" };
        if let (true, Some(ev)) = (tx.is_valid(), event)
            && ev.chaincode_id == "gx"
        {
            naive_event(s, &t, block, tx, &ev.event_name, &ev.payload).await;
        }
        let tx_id = (!tx.tx_id.is_empty()).then_some(tx.tx_id.as_str());
        let stamp = tx.system_time().map(|_| ts(tx));
        t.execute(
            &s.applied,
            &[
                &CHANNEL,
                &block,
                &tx_id,
                &(tx.index as i32),
                &tx.validation_code,
                &event.map(|e| e.event_name.as_str()),
                &stamp,
                &outcome,
            ],
        )
        .await
        .unwrap();
    }
    let hash = b.header_hash.to_vec();
    let n = if b.number == 0 {
        t.execute(&s.first_position, &[&CHANNEL, &block, &hash])
            .await
            .unwrap()
    } else {
        t.execute(&s.position, &[&CHANNEL, &block, &hash, &(block - 1)])
            .await
            .unwrap()
    };
    assert_eq!(n, 1);
    t.commit().await.unwrap();
}

// ---- runs ----

async fn applied(pool: &Pool) -> u64 {
    read_models::applied_transactions(pool, CHANNEL)
        .await
        .unwrap()
        .len() as u64
}

struct Run {
    name: &'static str,
    /// Transactions recorded in `applied_transactions`.
    txs: u64,
    seconds: f64,
    peak_rss_kb: u64,
    rss_before_kb: u64,
    digest: String,
}

async fn fresh_pool() -> (TestDb, Pool) {
    let db = TestDb::new().await.unwrap();
    let settings = PgSettings {
        host: db.host().to_owned(),
        port: db.port(),
        user: db.user().to_owned(),
        password: db.password().map(str::to_owned),
        dbname: db.dbname().to_owned(),
        pool_max_size: 4,
        connect_timeout: Duration::from_secs(10),
        application_name: "gxd-bench-projector".to_owned(),
    };
    let pool = pg::connect_pool(&settings).await.unwrap();
    pg::migrate::migrate_pool(&pool).await.unwrap();
    (db, pool)
}

async fn run_projector(
    name: &'static str,
    batched: bool,
    source: Arc<DeliverSource>,
    last: u64,
    dir: &std::path::Path,
) -> Run {
    let (_db, pool) = fresh_pool().await;
    let log = CheckpointLog::new(Db::open(dir.join(name), &DbOptions::default()).unwrap());
    let p = Projector::new(
        ProjectorConfig::new(CHANNEL).with_batch_writes(batched),
        pool.clone(),
        log,
        Arc::new(GxProjection::new("gx")),
        source,
    );
    let mut status = p.status();
    let stop = CancellationToken::new();
    let rss_before_kb = proc_status_kb("VmRSS:");
    reset_peak_rss();
    eprintln!("projector bench: projecting ({name})");
    let started = Instant::now();
    let task = tokio::spawn(p.run(stop.clone()));
    status
        .wait_for(|s| {
            assert!(
                !matches!(
                    s.state,
                    gxd_engine::projector::ProjectorState::Halted { .. }
                ),
                "{:?}",
                s.state
            );
            s.height == Some(last)
        })
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kb = proc_status_kb("VmHWM:");
    stop.cancel();
    task.await.unwrap().unwrap();
    let digest = read_models::read_model_digest(&pool).await.unwrap();
    let txs = applied(&pool).await;
    Run {
        name,
        txs,
        seconds,
        peak_rss_kb,
        rss_before_kb,
        digest,
    }
}

async fn run_naive(source: Arc<DeliverSource>, last: u64, dir: &std::path::Path) -> Run {
    let (db, pool) = fresh_pool().await;
    let mut client = db.connect().await.unwrap();
    let statements = Naive::prepare(&client).await;
    let log = CheckpointLog::new(Db::open(dir.join("naive"), &DbOptions::default()).unwrap());
    let stop = CancellationToken::new();
    let rss_before_kb = proc_status_kb("VmRSS:");
    reset_peak_rss();
    eprintln!("projector bench: projecting (naive)");
    let started = Instant::now();
    let mut blocks = source.open(CHANNEL, 0, None, stop.clone());
    while let Some(b) = blocks.next_block().await.unwrap() {
        naive_block(&statements, &mut client, &b).await;
        log.append(
            CHANNEL,
            NewCheckpoint {
                number: b.number,
                header_hash: b.header_hash.to_vec(),
                previous_hash: b.previous_hash.clone(),
                tx_count: b.transactions.len() as u64,
            },
        )
        .await
        .unwrap();
        if b.number == last {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kb = proc_status_kb("VmHWM:");
    stop.cancel();
    drop(blocks);
    let digest = read_models::read_model_digest(&pool).await.unwrap();
    let txs = applied(&pool).await;
    Run {
        name: "naive",
        txs,
        seconds,
        peak_rss_kb,
        rss_before_kb,
        digest,
    }
}

fn main() {
    let local_pg = std::env::var("GXD_BENCH_LOCAL_PG").is_ok_and(|v| v == "1");
    if !local_pg && std::env::var(TEST_DATABASE_URL_ENV).map_or(true, |v| v.trim().is_empty()) {
        eprintln!(
            "projector bench: needs PostgreSQL. Set {TEST_DATABASE_URL_ENV} to a server whose \
             user may CREATE DATABASE (e.g. postgres://gxd_test@127.0.0.1:5432/postgres; \
             scripts/test.sh shows how to start a throwaway one), or GXD_BENCH_LOCAL_PG=1 to \
             start a private throwaway cluster from the installed PostgreSQL binaries"
        );
        std::process::exit(2);
    }
    let quick = std::env::var("GXD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let txs = env_u64(
        "GXD_BENCH_PROJECTOR_TXS",
        if quick { 5_000 } else { 100_000 },
    );
    let in_flight = env_u64("GXD_BENCH_INFLIGHT", if quick { 64 } else { 256 }).max(1) as usize;
    let batch = env_u64("GXD_BENCH_BATCH", 500) as usize;
    let timeout = Duration::from_millis(env_u64("GXD_BENCH_TIMEOUT_MS", 200));
    let skip_direct = std::env::var("GXD_BENCH_SKIP_DIRECT").is_ok_and(|v| v == "1");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Held for the whole run: a private cluster (GXD_BENCH_LOCAL_PG) lives while one
        // of its databases does.
        let _keep = TestDb::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let devnet = DevnetProcess::start(&dir.path().join("devnet"), batch, timeout);
        let id = |name: &str| devnet.identity(name);
        let connector = || devnet.connector();
        let gateways: Vec<Gateway> = (0..in_flight.div_ceil(PER_CONNECTION))
            .map(|_| Gateway::new(connector(), id("User1"), CHANNEL))
            .collect();
        let admin = Gateway::new(connector(), id("Admin"), CHANNEL);

        let started = Instant::now();
        build_ledger(&gateways, &admin, txs, in_flight).await;
        let built = started.elapsed().as_secs_f64();
        let height = devnet.height().await;
        let last = height - 1;
        let source = Arc::new(DeliverSource { connector: connector(), signer: id("User1"), backoff: Backoff::default() });

        let mut runs = Vec::new();
        runs.push(run_projector("batched", true, source.clone(), last, dir.path()).await);
        if !skip_direct {
            runs.push(run_projector("direct", false, source.clone(), last, dir.path()).await);
        }
        runs.push(run_naive(source.clone(), last, dir.path()).await);

        let ledger_txs = runs[0].txs;
        assert!(runs.iter().all(|r| r.txs == ledger_txs));
        let blocks = height;
        println!(
            "projector bench: ledger of {ledger_txs} transactions in {blocks} blocks ({:.0} tx/block; devnet batch {batch} tx / {} ms), built in {built:.1} s ({:.0} tx/s) by {in_flight} submitters; {} cores",
            ledger_txs as f64 / blocks as f64,
            timeout.as_millis(),
            ledger_txs as f64 / built,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        println!("{:>8} {:>9} {:>7} {:>9} {:>10} {:>9} {:>12} {:>12}", "projector", "txs", "blocks", "seconds", "tx/s", "blocks/s", "peak RSS MB", "RSS before");
        for r in &runs {
            println!(
                "{:>9} {:>9} {:>7} {:>9.2} {:>10.0} {:>9.1} {:>12.1} {:>12.1}",
                r.name,
                ledger_txs,
                blocks,
                r.seconds,
                ledger_txs as f64 / r.seconds,
                blocks as f64 / r.seconds,
                r.peak_rss_kb as f64 / 1024.0,
                r.rss_before_kb as f64 / 1024.0,
            );
        }
        let naive = runs.iter().find(|r| r.name == "naive").map_or(f64::NAN, |r| r.seconds);
        for r in runs.iter().filter(|r| r.name != "naive") {
            println!("{} / naive: {:.1}x", r.name, naive / r.seconds);
        }
        let same = runs.windows(2).all(|w| w[0].digest == w[1].digest);
        println!("read models identical (digest): {}", if same { "yes" } else { "NO" });
        assert!(same, "the projections differ: {:?}", runs.iter().map(|r| (r.name, &r.digest)).collect::<Vec<_>>());
        drop(devnet);
    });
}
