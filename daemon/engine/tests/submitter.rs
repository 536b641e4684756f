//! The submitter against the devnet, in process, with a real RocksDB outbox: partition
//! order and one VALID transaction per command, a chaincode error dead-lettered after one
//! attempt, an MVCC conflict retried to success under a new tx id, an endorsement-policy
//! failure dead-lettered, a lost Submit reply resolved by the stored tx id, and commands a
//! previous run left PREPARED or SUBMITTED resolved at start without a second transaction,
//! and many payers paying one shared payee at once: with the payee as a second partition
//! key, not one MVCC conflict of gxd's own making, the payee's order = acceptance order.
//!
//! The catalog here is a test catalog, not GX's: the command type is the chaincode function
//! and the payload a JSON array of its arguments (`$ID` stands for the command id), so the
//! engine is exercised without knowing GX.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gxd_devnet::{DevnetConfig, DevnetHandle, Fault, FaultRule, Rpc};
use gxd_engine::backoff::Backoff;
use gxd_engine::catalog::{CommandCatalog, InvalidCommand, Invocation};
use gxd_engine::submitter::{Submitter, SubmitterConfig, Waker};
use gxd_fabric::block::ParsedBlock;
use gxd_fabric::client::Gateway;
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::stream::{BlockStream, BlockStreamConfig};
use gxd_storage::outbox::{Command, CommandId, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(90);

struct TestCatalog;

impl CommandCatalog for TestCatalog {
    fn invocation(
        &self,
        command_type: &str,
        command_id: CommandId,
        payload: &[u8],
    ) -> Result<Invocation, InvalidCommand> {
        let args: Vec<String> = serde_json::from_slice(payload)
            .map_err(|e| InvalidCommand(format!("payload is not a JSON array of strings: {e}")))?;
        Ok(Invocation {
            function: command_type.to_owned(),
            args: args
                .into_iter()
                .map(|a| a.replace("$ID", &command_id.to_string()).into_bytes())
                .collect(),
        })
    }
}

struct Env {
    _dir: tempfile::TempDir,
    devnet: DevnetHandle,
    outbox: Outbox,
    /// User1 of Org1 (what gxd signs with).
    client: Gateway,
    admin: Gateway,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let devnet = gxd_devnet::start(
        DevnetConfig::new(dir.path().join("devnet"))
            .with_listen("127.0.0.1:0".parse().unwrap())
            .with_batch(50, Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let client = devnet.gateway("User1").unwrap();
    let admin = devnet.gateway("Admin").unwrap();
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000000"]),
        )
        .await
        .unwrap();
    // A wallet to pay into.
    client
        .submit_transaction(&client.proposal("gx", "CreateUser").with_args(["r", "{}"]))
        .await
        .unwrap();
    let db = Db::open(dir.path().join("outbox"), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    Env {
        _dir: dir,
        devnet,
        outbox,
        client,
        admin,
    }
}

fn config() -> SubmitterConfig {
    let mut c = SubmitterConfig::new("gx");
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c.resolve_backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    c
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    waker: Waker,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn run(e: &Env, gateway: Gateway, config: SubmitterConfig) -> Running {
    let waker = Waker::new();
    let submitter = Submitter::new(
        e.outbox.clone(),
        gateway,
        Arc::new(TestCatalog),
        config,
        waker.clone(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { submitter.run(token).await.unwrap() });
    Running { stop, task, waker }
}

async fn enqueue(
    outbox: &Outbox,
    request: &str,
    partition: &str,
    function: &str,
    args: &[&str],
) -> CommandId {
    enqueue_keyed(outbox, request, &[partition], function, args).await
}

/// A command with partition keys `keys` (the first is `partition_key`).
async fn enqueue_keyed(
    outbox: &Outbox,
    request: &str,
    keys: &[&str],
    function: &str,
    args: &[&str],
) -> CommandId {
    outbox
        .enqueue(NewCommand {
            tenant: "test".into(),
            command_type: function.into(),
            request_id: request.into(),
            partition_key: keys[0].into(),
            extra_partition_keys: keys[1..].iter().map(|k| (*k).to_owned()).collect(),
            payload: serde_json::to_vec(args).unwrap(),
        })
        .await
        .unwrap()
        .command
        .id
}

/// Waits until every command in `ids` is COMMITTED or FAILED.
async fn settled(outbox: &Outbox, ids: &[CommandId]) -> Vec<Command> {
    tokio::time::timeout(LIMIT, async {
        loop {
            let cmds: Vec<Command> = ids.iter().map(|id| outbox.get(*id).unwrap()).collect();
            if cmds
                .iter()
                .all(|c| matches!(c.status, Status::Committed | Status::Failed))
            {
                return cmds;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("commands settle")
}

async fn wait_status(outbox: &Outbox, id: CommandId, status: Status) {
    tokio::time::timeout(LIMIT, async {
        while outbox.get(id).unwrap().status != status {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("status reached");
}

/// Every transaction of the ledger, blocks 0..height.
async fn ledger(e: &Env) -> Vec<ParsedBlock> {
    let height = e.devnet.height();
    let cancel = CancellationToken::new();
    let mut s = BlockStream::new(
        e.client.connector().clone(),
        e.client.identity().clone(),
        BlockStreamConfig::new(e.client.channel(), 0),
        cancel.clone(),
    );
    let mut out = Vec::new();
    while (out.len() as u64) < height {
        out.push(s.next().await.unwrap().unwrap());
    }
    cancel.cancel();
    out
}

/// Validation codes of the transactions whose second chaincode argument (the first after
/// the function: a user id, a transfer id) is `needle`, in ledger order.
fn codes_of(blocks: &[ParsedBlock], needle: &str) -> Vec<TxValidationCode> {
    blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.args.get(1).is_some_and(|a| a == needle.as_bytes()))
        .map(|t| t.validation().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_ledger_once_in_partition_order() {
    let e = env().await;
    let r = run(&e, e.client.clone(), config());
    // 4 users, then per user 5 transfers from the treasury... the treasury is one partition,
    // so those 20 transfers go one after another; CreateUser commands run in parallel.
    let mut ids = Vec::new();
    for u in 0..4 {
        let user = format!("u{u}");
        ids.push(
            enqueue(
                &e.outbox,
                &format!("create-{u}"),
                &user,
                "CreateUser",
                &[&user, "{}"],
            )
            .await,
        );
    }
    r.waker.wake();
    let created = settled(&e.outbox, &ids).await;
    assert!(
        created.iter().all(|c| c.status == Status::Committed),
        "{created:#?}"
    );
    let mut transfers = Vec::new();
    for i in 0..20 {
        let to = format!("u{}", i % 4);
        transfers.push(
            enqueue(
                &e.outbox,
                &format!("t-{i}"),
                "treasury",
                "TransferTokens",
                &["$ID", "treasury", &to, &(i + 1).to_string(), ""],
            )
            .await,
        );
        r.waker.wake();
    }
    let done = settled(&e.outbox, &transfers).await;
    assert!(
        done.iter().all(|c| c.status == Status::Committed),
        "{done:#?}"
    );
    // Partition order: the treasury's commands committed in acceptance order.
    let blocks: Vec<u64> = done.iter().map(|c| c.block_number.unwrap()).collect();
    assert!(
        blocks.windows(2).all(|w| w[0] < w[1]),
        "one at a time, in order: {blocks:?}"
    );
    r.stop().await;

    let ledger = ledger(&e).await;
    for c in created.iter().chain(done.iter()) {
        let needle = if c.command_type == "CreateUser" {
            serde_json::from_slice::<Vec<String>>(&c.payload).unwrap()[0].clone()
        } else {
            c.id.to_string()
        };
        assert_eq!(
            codes_of(&ledger, &needle),
            [TxValidationCode::Valid],
            "{needle}"
        );
        assert_eq!(c.attempts, 0);
    }
    // The ledger's order of the treasury's transfers is the acceptance order.
    let on_ledger: Vec<String> = ledger
        .iter()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.function() == Some("TransferTokens"))
        .map(|t| String::from_utf8(t.args[1].clone()).unwrap())
        .collect();
    let accepted: Vec<String> = transfers.iter().map(ToString::to_string).collect();
    assert_eq!(on_ledger, accepted);
    let balance: serde_json::Value = serde_json::from_slice(
        &e.client
            .evaluate(&e.client.proposal("gx", "GetWallet").with_args(["treasury"]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        balance["balance"],
        (1_000_000 - (1..=20).sum::<u32>()).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_dead_lettered_at_once() {
    let e = env().await;
    let r = run(&e, e.client.clone(), config());
    // A chaincode error at endorsement: not enough funds.
    let broke = enqueue(
        &e.outbox,
        "broke",
        "treasury",
        "TransferTokens",
        &["$ID", "treasury", "r", "999999999", ""],
    )
    .await;
    // The catalog cannot read the payload.
    let garbled = e
        .outbox
        .enqueue(NewCommand {
            tenant: "test".into(),
            command_type: "CreateUser".into(),
            request_id: "garbled".into(),
            partition_key: "g".into(),
            extra_partition_keys: Vec::new(),
            payload: b"{not json".to_vec(),
        })
        .await
        .unwrap()
        .command
        .id;
    // And behind the dead one in the treasury's partition, a good command still goes.
    let after = enqueue(
        &e.outbox,
        "after",
        "treasury",
        "TransferTokens",
        &["$ID", "treasury", "r", "1", ""],
    )
    .await;
    r.waker.wake();
    let cmds = settled(&e.outbox, &[broke, garbled, after]).await;
    r.stop().await;
    let (broke, garbled, after) = (&cmds[0], &cmds[1], &cmds[2]);
    assert_eq!(broke.status, Status::Failed);
    assert_eq!(broke.attempts, 1, "dead-lettered after one attempt");
    let err = broke.last_error.as_ref().unwrap();
    assert_eq!(err.stage, "endorse");
    assert!(err.message.contains("insufficient funds"), "{err:?}");
    assert_eq!(garbled.status, Status::Failed);
    let err = garbled.last_error.as_ref().unwrap();
    assert_eq!(
        (err.stage.as_str(), err.code.as_str()),
        ("validate", "INVALID_COMMAND")
    );
    assert_eq!(after.status, Status::Committed);
    // Nothing of the failed ones reached a block.
    let ledger = ledger(&e).await;
    assert!(codes_of(&ledger, &broke.id.to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endorsement_policy_failure_is_dead_lettered() {
    let e = env().await;
    // Endorsed by Org1 only where the policy needs both organizations.
    let one_org = e
        .client
        .clone()
        .with_endorsing_organizations(vec!["Org1MSP".into()]);
    let r = run(&e, one_org, config());
    let id = enqueue(&e.outbox, "one-org", "w1", "CreateUser", &["w1", "{}"]).await;
    r.waker.wake();
    let cmd = settled(&e.outbox, &[id]).await.remove(0);
    r.stop().await;
    assert_eq!(cmd.status, Status::Failed, "{cmd:#?}");
    let err = cmd.last_error.unwrap();
    assert_eq!(
        (err.stage.as_str(), err.code.as_str()),
        ("commit", "ENDORSEMENT_POLICY_FAILURE")
    );
    assert_eq!(cmd.history.len(), 1);
    let ledger = ledger(&e).await;
    assert_eq!(
        codes_of(&ledger, "w1"),
        [TxValidationCode::EndorsementPolicyFailure]
    );
    let on_ledger = ledger
        .iter()
        .flat_map(|b| b.transactions.iter())
        .find(|t| t.args.get(1).is_some_and(|a| a == b"w1"))
        .map(|t| t.tx_id.clone());
    assert_eq!(
        cmd.history[0].txid, on_ledger,
        "the dead letter keeps the attempt's tx id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mvcc_conflict_is_endorsed_again_and_commits() {
    let e = env().await;
    let r = run(&e, e.client.clone(), config());
    // Hold the submitter's Submit for a moment, and meanwhile change the treasury.
    e.devnet.faults().add(FaultRule {
        rpc: Rpc::Submit,
        fault: Fault::Delay { delay_ms: 1500 },
        times: Some(1),
    });
    let id = enqueue(
        &e.outbox,
        "mvcc",
        "treasury",
        "TransferTokens",
        &["$ID", "treasury", "r", "5", ""],
    )
    .await;
    r.waker.wake();
    wait_status(&e.outbox, id, Status::Prepared).await;
    let first_tx = e.outbox.get(id).unwrap().txid.unwrap();
    e.admin
        .submit_transaction(
            &e.admin
                .proposal("gx", "TransferTokens")
                .with_args(["outside", "treasury", "r", "1", ""]),
        )
        .await
        .unwrap();
    let cmd = settled(&e.outbox, &[id]).await.remove(0);
    r.stop().await;
    assert_eq!(cmd.status, Status::Committed, "{cmd:#?}");
    assert_eq!(cmd.attempts, 1);
    assert_eq!(cmd.history[0].txid.as_deref(), Some(first_tx.as_str()));
    assert_eq!(
        cmd.history[0].error.as_ref().unwrap().code,
        "MVCC_READ_CONFLICT"
    );
    assert_ne!(cmd.txid.as_deref(), Some(first_tx.as_str()), "a new tx id");
    let ledger = ledger(&e).await;
    assert_eq!(
        codes_of(&ledger, &cmd.id.to_string()),
        [TxValidationCode::MvccReadConflict, TxValidationCode::Valid]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_submit_reply_is_resolved_by_the_stored_tx_id() {
    let e = env().await;
    let r = run(&e, e.client.clone(), config());
    // The transaction is ordered and commits, but the reply is lost: UNAVAILABLE.
    e.devnet.faults().add(FaultRule {
        rpc: Rpc::Submit,
        fault: Fault::ProcessThenUnavailable,
        times: Some(1),
    });
    let id = enqueue(
        &e.outbox,
        "lost",
        "treasury",
        "TransferTokens",
        &["$ID", "treasury", "r", "7", ""],
    )
    .await;
    r.waker.wake();
    let cmd = settled(&e.outbox, &[id]).await.remove(0);
    r.stop().await;
    assert_eq!(cmd.status, Status::Committed, "{cmd:#?}");
    assert_eq!(
        cmd.attempts, 0,
        "an ambiguous outcome is not a failed attempt"
    );
    let ledger = ledger(&e).await;
    let codes = codes_of(&ledger, &cmd.id.to_string());
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == TxValidationCode::Valid)
            .count(),
        1,
        "{codes:?}"
    );
    // The resubmission of the same bytes, if it reached a block, is a duplicate.
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, TxValidationCode::Valid | TxValidationCode::DuplicateTxid))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_left_in_flight_are_resolved_at_start() {
    let e = env().await;
    let prepare = |request: &'static str, user: &'static str| {
        let e = &e;
        async move {
            let id = enqueue(&e.outbox, request, user, "CreateUser", &[user, "{}"]).await;
            let proposal = e
                .client
                .new_proposal(
                    &e.client
                        .proposal("gx", "CreateUser")
                        .with_args([user, "{}"]),
                )
                .unwrap();
            let tx = e.client.endorse(&proposal).await.unwrap();
            e.outbox
                .mark_prepared(id, tx.tx_id().to_owned(), tx.to_bytes())
                .await
                .unwrap();
            (id, tx)
        }
    };
    // Crashed after storing the prepared transaction, before submitting it.
    let (never_sent, _) = prepare("p1", "p1").await;
    // Crashed after the submission, which committed, before recording the commit.
    let (sent, tx) = prepare("p2", "p2").await;
    e.client.submit(&tx).await.unwrap();
    e.outbox.mark_submitted(sent).await.unwrap();
    e.client.wait_for_commit(tx.tx_id()).await.unwrap();

    let r = run(&e, e.client.clone(), config());
    let cmds = settled(&e.outbox, &[never_sent, sent]).await;
    r.stop().await;
    let mut by_user = HashMap::new();
    for c in &cmds {
        assert_eq!(c.status, Status::Committed, "{c:#?}");
        by_user.insert(c.request_id.clone(), c.clone());
    }
    assert_eq!(by_user["p2"].txid.as_deref(), Some(tx.tx_id()));
    let ledger = ledger(&e).await;
    for user in ["p1", "p2"] {
        assert_eq!(codes_of(&ledger, user), [TxValidationCode::Valid], "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_partitions_run_concurrently_without_conflicts() {
    let e = env().await;
    for u in ["a", "b", "c", "sa", "sb", "sc"] {
        e.admin
            .submit_transaction(&e.admin.proposal("gx", "CreateUser").with_args([u, "{}"]))
            .await
            .unwrap();
    }
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        e.admin
            .submit_transaction(&e.admin.proposal("gx", "TransferTokens").with_args([
                &format!("f{i}"),
                "treasury",
                u,
                "1000",
                "",
            ]))
            .await
            .unwrap();
    }
    let r = run(&e, e.client.clone(), config());
    let mut ids = Vec::new();
    for i in 0..10 {
        for u in ["a", "b", "c"] {
            let sink = format!("s{u}");
            ids.push(
                enqueue(
                    &e.outbox,
                    &format!("{u}-{i}"),
                    u,
                    "TransferTokens",
                    &["$ID", u, &sink, "1", ""],
                )
                .await,
            );
        }
        r.waker.wake();
    }
    let done = settled(&e.outbox, &ids).await;
    r.stop().await;
    let retried: Vec<_> = done.iter().filter(|c| c.attempts > 0).collect();
    assert!(
        retried.is_empty(),
        "no wallet is shared, so no conflicts: {retried:#?}"
    );
    assert!(done.iter().all(|c| c.status == Status::Committed));
}

/// Every transaction with its validation code, in ledger order: (function, args after the
/// function, code).
fn transactions(blocks: &[ParsedBlock]) -> Vec<(String, Vec<String>, TxValidationCode)> {
    blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .map(|t| {
            let args = t
                .args
                .get(1..)
                .unwrap_or_default()
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (
                t.function().unwrap_or_default().to_owned(),
                args,
                t.validation().unwrap(),
            )
        })
        .collect()
}

async fn balance(e: &Env, wallet: &str) -> u128 {
    let w: serde_json::Value = serde_json::from_slice(
        &e.client
            .evaluate(&e.client.proposal("gx", "GetWallet").with_args([wallet]))
            .await
            .unwrap(),
    )
    .unwrap();
    w["balance"].as_str().unwrap().parse().unwrap()
}

/// Payers `0..n` of a run (`{tag}-p{i}`), each funded with 10 000, and the one merchant
/// they all pay (`{tag}-m`): created and funded through the gateway, not the outbox.
async fn payers_and_merchant(e: &Env, tag: &str, n: usize) -> (Vec<String>, String) {
    let merchant = format!("{tag}-m");
    let payers: Vec<String> = (0..n).map(|i| format!("{tag}-p{i}")).collect();
    for u in payers.iter().chain([&merchant]) {
        e.admin
            .submit_transaction(&e.admin.proposal("gx", "CreateUser").with_args([u, "{}"]))
            .await
            .unwrap();
    }
    for (i, p) in payers.iter().enumerate() {
        e.admin
            .submit_transaction(&e.admin.proposal("gx", "TransferTokens").with_args([
                &format!("{tag}-fund-{i}"),
                "treasury",
                p,
                "10000",
                "",
            ]))
            .await
            .unwrap();
    }
    (payers, merchant)
}

/// `rounds` transfers from each payer to the merchant, interleaved (round by round), the
/// amount of the k-th accepted one k + 1; keyed by the payer alone or by payer and payee.
/// Returns the commands in acceptance order.
async fn pay_merchant(
    e: &Env,
    r: &Running,
    payers: &[String],
    merchant: &str,
    rounds: usize,
    payee_keyed: bool,
) -> Vec<CommandId> {
    let mut ids = Vec::new();
    for round in 0..rounds {
        for p in payers {
            let amount = (ids.len() + 1).to_string();
            let keys: Vec<&str> = if payee_keyed {
                vec![p, merchant]
            } else {
                vec![p]
            };
            ids.push(
                enqueue_keyed(
                    &e.outbox,
                    &format!("{p}-{round}"),
                    &keys,
                    "TransferTokens",
                    &["$ID", p, merchant, &amount, ""],
                )
                .await,
            );
        }
        r.waker.wake();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payers_sharing_a_payee_cause_no_mvcc_conflicts_and_keep_its_order() {
    const PAYERS: usize = 8;
    const ROUNDS: usize = 5;
    let e = env().await;
    let (payers, merchant) = payers_and_merchant(&e, "k", PAYERS).await;
    let mut cfg = config();
    cfg.max_in_flight = 16;
    let r = run(&e, e.client.clone(), cfg);
    let started = std::time::Instant::now();
    let ids = pay_merchant(&e, &r, &payers, &merchant, ROUNDS, true).await;
    let done = settled(&e.outbox, &ids).await;
    let took = started.elapsed();
    let blocks = ledger(&e).await;

    // All committed at the first attempt; not one MVCC conflict on the whole ledger.
    assert!(
        done.iter()
            .all(|c| c.status == Status::Committed && c.attempts == 0),
        "{:#?}",
        done.iter()
            .filter(|c| c.status != Status::Committed || c.attempts > 0)
            .collect::<Vec<_>>()
    );
    let txs = transactions(&blocks);
    let conflicts = txs
        .iter()
        .filter(|(_, _, code)| *code == TxValidationCode::MvccReadConflict)
        .count();
    assert_eq!(conflicts, 0, "gxd made its own MVCC conflicts");
    // The merchant's payments on the ledger, in acceptance order, each once.
    let into_merchant: Vec<String> = txs
        .iter()
        .filter(|(f, args, code)| {
            f == "TransferTokens"
                && args.get(2) == Some(&merchant)
                && *code == TxValidationCode::Valid
        })
        .map(|(_, args, _)| args[0].clone())
        .collect();
    let accepted: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        into_merchant, accepted,
        "the payee's order is acceptance order"
    );
    // Balances: the merchant got 1 + 2 + ... + n; each payer paid its own amounts.
    let n = PAYERS * ROUNDS;
    assert_eq!(balance(&e, &merchant).await, (n * (n + 1) / 2) as u128);
    for (i, p) in payers.iter().enumerate() {
        let paid: usize = (0..ROUNDS).map(|round| round * PAYERS + i + 1).sum();
        assert_eq!(balance(&e, p).await, 10_000 - paid as u128, "{p}");
    }
    eprintln!(
        "shared payee, payer+payee keys: {n} transfers from {PAYERS} payers, {} committed at \
         the first attempt, {conflicts} MVCC conflicts, {:.2}s",
        done.len(),
        took.as_secs_f64()
    );

    // The same load keyed by the payer alone (the old partitioning), measured for
    // comparison: its transfers race on the merchant's wallet.
    let (payers, merchant) = payers_and_merchant(&e, "old", PAYERS).await;
    let before = e.devnet.height();
    let started = std::time::Instant::now();
    let ids = pay_merchant(&e, &r, &payers, &merchant, ROUNDS, false).await;
    let done = settled(&e.outbox, &ids).await;
    let took = started.elapsed();
    r.stop().await;
    let blocks = ledger(&e).await;
    let conflicts = transactions(&blocks[before as usize..])
        .iter()
        .filter(|(_, _, code)| *code == TxValidationCode::MvccReadConflict)
        .count();
    let committed = done.iter().filter(|c| c.status == Status::Committed);
    eprintln!(
        "shared payee, payer key only: {n} transfers, {} committed ({} of them after \
         retries), {} dead-lettered, {conflicts} MVCC conflicts, {:.2}s",
        committed.clone().count(),
        committed.filter(|c| c.attempts > 0).count(),
        done.iter().filter(|c| c.status == Status::Failed).count(),
        took.as_secs_f64()
    );
    // The control: without the payee's key the same load does race (so the zero above is
    // the partitioning's doing, not a quiet devnet).
    assert!(
        conflicts > 0,
        "the payer-keyed control made no MVCC conflict"
    );
}
