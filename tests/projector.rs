//! The block projector (gxd-engine) with GX's handler (gxd-gx) over a real devnet ledger
//! into real PostgreSQL databases (TestDb) and a real RocksDB checkpoint log.
//!
//! Lives in the `gxd` package because only the composition root may know the engine,
//! GX and the devnet together (tests/architecture.rs: the engine knows no GX, GX knows
//! only storage).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gxd_devnet::{self as devnet, DevnetConfig, DevnetHandle};
use gxd_engine::projector::{
    BlockTx, ChaincodeEvent, DeliverSource, HandlerError, PoisonPolicy, ProjectionHandler,
    Projector, ProjectorConfig, ProjectorError, ProjectorState, ProjectorStatus, TxContext,
};
use gxd_fabric::client::Gateway;
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::stream::Backoff;
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};
use gxd_fabric::tx::ProposalSpec;
use gxd_gx::handlers::GxProjection;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::pg::projection::{self, ProjectionError};
use gxd_storage::pg::read_models;
use gxd_storage::pg::testing::TestDb;
use gxd_storage::pg::{self, PgSettings, Pool};
use gxd_storage::{Db, DbOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const ORG1: &str = "org1.example.com";
const CHANNEL: &str = devnet::DEFAULT_CHANNEL;
const LIMIT: Duration = Duration::from_secs(60);

struct Net {
    _dir: tempfile::TempDir,
    handle: DevnetHandle,
    admin: Gateway,
    client: Gateway,
    source: Arc<DeliverSource>,
}

async fn net() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let config = DevnetConfig::new(dir.path())
        .with_listen("127.0.0.1:0".parse().unwrap())
        .with_batch(10, Duration::from_millis(50));
    let handle = devnet::start(config).await.unwrap();
    let paths = handle.paths().clone();
    let ca_pem = std::fs::read(paths.tls_ca_cert(ORG1)).unwrap();
    let endpoint =
        PeerEndpoint::new(handle.local_addr().to_string()).with_server_name(devnet::PEER_HOST);
    let tls = TlsOptions {
        ca_pem,
        ..TlsOptions::default()
    };
    let connector =
        Arc::new(PeerConnector::new(ConnectionConfig::new(vec![endpoint], Some(tls))).unwrap());
    let id =
        |name: &str| SigningIdentity::from_msp_dir("Org1MSP", &paths.user(ORG1, name)).unwrap();
    let admin = Gateway::new(connector.clone(), id("Admin"), CHANNEL);
    let client = Gateway::new(connector.clone(), id("User1"), CHANNEL);
    let source = Arc::new(DeliverSource {
        connector,
        signer: id("User1"),
        backoff: Backoff::default(),
    });
    Net {
        _dir: dir,
        handle,
        admin,
        client,
        source,
    }
}

async fn pg_pool(db: &TestDb) -> Pool {
    let settings = PgSettings {
        host: db.host().to_owned(),
        port: db.port(),
        user: db.user().to_owned(),
        password: db.password().map(str::to_owned),
        dbname: db.dbname().to_owned(),
        pool_max_size: 4,
        connect_timeout: Duration::from_secs(10),
        application_name: "gxd-projector-test".to_owned(),
    };
    let pool = pg::connect_pool(&settings).await.unwrap();
    pg::migrate::migrate_pool(&pool).await.unwrap();
    pool
}

fn open_log(dir: &Path) -> CheckpointLog {
    CheckpointLog::new(Db::open(dir, &DbOptions::default()).unwrap())
}

fn transfer(gw: &Gateway, id: &str, from: &str, to: &str, amount: &str) -> ProposalSpec {
    gw.proposal("gx", "TransferTokens")
        .with_args([id, from, to, amount, "memo"])
}

/// Every GX transaction, plus an MVCC conflict and a DUPLICATE_TXID copy. Returns the
/// tx ids of the two invalid transactions.
async fn ledger_with_everything(n: &Net) -> (String, String) {
    let (admin, gw) = (&n.admin, &n.client);
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000000"]),
        )
        .await
        .unwrap();
    for u in ["u1", "u2", "u3"] {
        gw.submit_transaction(
            &gw.proposal("gx", "CreateUser")
                .with_args([u, r#"{"country":"DE","commitment":"abc"}"#]),
        )
        .await
        .unwrap();
    }
    gw.submit_transaction(&transfer(gw, "t1", "treasury", "u1", "100"))
        .await
        .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "CreateMultisigWallet").with_args([
        "ms1",
        r#"["u1","u2","u3"]"#,
        "2",
    ]))
    .await
    .unwrap();
    gw.submit_transaction(&transfer(gw, "t2", "treasury", "ms1", "500"))
        .await
        .unwrap();
    gw.submit_transaction(
        &gw.proposal("gx", "ProposeTransfer")
            .with_args(["p1", "ms1", "u3", "200", "rent"]),
    )
    .await
    .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "ApproveTransfer").with_args(["p1", "u1"]))
        .await
        .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "RejectTransfer").with_args(["p1", "u2"]))
        .await
        .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "ApproveTransfer").with_args(["p1", "u3"]))
        .await
        .unwrap();

    // MVCC conflict: two endorsements against the same treasury state.
    let a = gw
        .new_proposal(&transfer(gw, "ta", "treasury", "u2", "10"))
        .unwrap();
    let b = gw
        .new_proposal(&transfer(gw, "tb", "treasury", "u2", "20"))
        .unwrap();
    let pa = gw.endorse(&a).await.unwrap();
    let pb = gw.endorse(&b).await.unwrap();
    gw.submit(&pa).await.unwrap();
    gw.submit(&pb).await.unwrap();
    assert!(gw.wait_for_commit(pa.tx_id()).await.unwrap().is_valid());
    assert!(gw.wait_for_commit(pb.tx_id()).await.is_err());

    // DUPLICATE_TXID: the same signed envelope again.
    let c = gw
        .new_proposal(&transfer(gw, "tc", "treasury", "u3", "7"))
        .unwrap();
    let pc = gw.endorse(&c).await.unwrap();
    let stored = pc.to_bytes();
    gw.submit(&pc).await.unwrap();
    gw.wait_for_commit(pc.tx_id()).await.unwrap();
    let again = gxd_fabric::client::PreparedTransaction::from_bytes(&stored).unwrap();
    gw.submit(&again).await.unwrap();
    // A marker after the duplicate so its block is certainly committed.
    gw.submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["u4", "{}"]))
        .await
        .unwrap();
    (pb.tx_id().to_owned(), pc.tx_id().to_owned())
}

fn spawn(
    config: ProjectorConfig,
    pool: &Pool,
    log: &CheckpointLog,
    handler: Arc<dyn ProjectionHandler>,
    n: &Net,
) -> (
    watch::Receiver<ProjectorStatus>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ProjectorError>>,
) {
    let p = Projector::new(config, pool.clone(), log.clone(), handler, n.source.clone());
    let status = p.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(p.run(stop.clone()));
    (status, stop, task)
}

/// Runs a projector until it has projected block `height - 1`, then stops it.
async fn project_to(
    pool: &Pool,
    log: &CheckpointLog,
    handler: Arc<dyn ProjectionHandler>,
    n: &Net,
    height: u64,
) {
    let (mut status, stop, task) = spawn(ProjectorConfig::new(CHANNEL), pool, log, handler, n);
    tokio::time::timeout(
        LIMIT,
        status.wait_for(|s| {
            assert!(
                !matches!(s.state, ProjectorState::Halted { .. }),
                "{:?}",
                s.state
            );
            s.state == ProjectorState::Running
                && s.height.is_some_and(|h| h + 1 >= height)
                && s.checkpoint_height == s.height
        }),
    )
    .await
    .unwrap()
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(status.borrow().state, ProjectorState::Stopped);
}

fn gx() -> Arc<dyn ProjectionHandler> {
    Arc::new(GxProjection::new("gx"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_every_gx_transaction_exactly_once_and_rebuilds_identically() {
    let n = net().await;
    let (mvcc_tx, dup_tx) = ledger_with_everything(&n).await;
    let height = n.handle.height();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir.path().join("a"));
    let db = TestDb::new().await.unwrap();
    let pool = pg_pool(&db).await;
    project_to(&pool, &log, gx(), &n, height).await;

    // Positions: PostgreSQL and the checkpoint log agree.
    let pos = projection::position(&pool, CHANNEL).await.unwrap().unwrap();
    assert_eq!(pos.block_number, height - 1);
    let last = log.last(CHANNEL).unwrap().unwrap();
    assert_eq!(
        (last.number, &last.header_hash),
        (pos.block_number, &pos.block_hash)
    );

    // Balances: the ledger's.
    let bal = |id: &'static str| {
        let pool = pool.clone();
        async move {
            read_models::wallet(&pool, id)
                .await
                .unwrap()
                .unwrap()
                .balance
        }
    };
    assert_eq!(
        bal("treasury").await,
        (1_000_000 - 100 - 500 - 10 - 7).to_string()
    );
    assert_eq!(bal("u1").await, "100");
    assert_eq!(bal("u2").await, "10");
    assert_eq!(bal("u3").await, "207");
    assert_eq!(bal("ms1").await, "300");
    for id in ["treasury", "u1", "u2", "u3", "ms1"] {
        let ledger: serde_json::Value = serde_json::from_slice(
            &n.client
                .evaluate(&n.client.proposal("gx", "GetWallet").with_args([id]))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ledger["balance"], bal(id).await.as_str(), "{id}");
    }
    let ms1 = read_models::wallet(&pool, "ms1").await.unwrap().unwrap();
    assert_eq!(ms1.kind, "multisig");
    assert_eq!(ms1.threshold, Some(2));
    assert_eq!(ms1.owners, ["u1", "u2", "u3"]);
    assert_eq!(ms1.msp_id.as_deref(), Some("Org1MSP"));

    // Proposal: executed by the second approval, after one rejection.
    let p1 = read_models::proposal(&pool, "p1").await.unwrap().unwrap();
    assert_eq!(p1.state, "executed");
    assert_eq!((p1.approval_count, p1.rejection_count), (2, 1));
    assert_eq!(
        p1.decisions,
        [
            ("u1".to_owned(), "approve".to_owned()),
            ("u2".to_owned(), "reject".to_owned()),
            ("u3".to_owned(), "approve".to_owned())
        ]
    );

    // History: both sides; ms1 credited then debited (newest first).
    let h = read_models::wallet_history(&pool, "ms1").await.unwrap();
    let dirs: Vec<_> = h
        .iter()
        .map(|r| (r.direction.as_str(), r.amount.as_str()))
        .collect();
    assert_eq!(dirs, [("debit", "200"), ("credit", "500")]);
    assert_eq!(h[0].memo.as_deref(), Some("rent"));
    let u1 = read_models::wallet_history(&pool, "u1").await.unwrap();
    assert_eq!(u1.len(), 1);
    assert_eq!(u1[0].counterparty_wallet_id.as_deref(), Some("treasury"));
    let treasury = read_models::wallet_history(&pool, "treasury")
        .await
        .unwrap();
    assert_eq!(treasury.last().unwrap().direction, "credit");
    assert_eq!(treasury.last().unwrap().counterparty_wallet_id, None);

    // Every transaction recorded; the invalid ones changed nothing.
    let applied = read_models::applied_transactions(&pool, CHANNEL)
        .await
        .unwrap();
    let mvcc: Vec<_> = applied
        .iter()
        .filter(|a| a.tx_id.as_deref() == Some(mvcc_tx.as_str()))
        .collect();
    assert_eq!(mvcc.len(), 1);
    assert_eq!(
        mvcc[0].validation_code,
        TxValidationCode::MvccReadConflict as i32
    );
    assert_eq!(mvcc[0].outcome, "invalid");
    let dup: Vec<_> = applied
        .iter()
        .filter(|a| a.tx_id.as_deref() == Some(dup_tx.as_str()))
        .collect();
    assert_eq!(dup.len(), 2, "both copies recorded, at their own positions");
    assert_eq!(dup[0].outcome, "applied");
    assert_eq!(
        dup[1].validation_code,
        TxValidationCode::DuplicateTxid as i32
    );
    assert_eq!(dup[1].outcome, "invalid");
    assert_eq!(
        read_models::wallet_history(&pool, "u3")
            .await
            .unwrap()
            .iter()
            .filter(|r| r.tx_id == dup_tx)
            .count(),
        1
    );
    let events = applied
        .iter()
        .filter(|a| a.event_name.is_some() && a.outcome == "applied")
        .count();
    // Bootstrap, 4 users, t1, ms1, t2, propose, 3 decisions, ta, tc.
    assert_eq!(events, 1 + 4 + 1 + 1 + 1 + 1 + 3 + 1 + 1);

    // A replayed block is refused by the position CAS and changes nothing.
    let digest = read_models::read_model_digest(&pool).await.unwrap();
    let block1 = log.get(CHANNEL, 1).unwrap().unwrap();
    let genesis = log.get(CHANNEL, 0).unwrap().unwrap();
    let mut conn = pool.get().await.unwrap();
    let btx = BlockTx::begin(&mut conn, CHANNEL, 1).await.unwrap();
    let err = btx
        .commit(&block1.header_hash, Some((0, &genesis.header_hash)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProjectionError::PositionConflict { block: 1, .. }),
        "{err}"
    );
    drop(conn);
    assert_eq!(read_models::read_model_digest(&pool).await.unwrap(), digest);

    // A restarted projector with nothing new does nothing.
    project_to(&pool, &log, gx(), &n, height).await;
    assert_eq!(read_models::read_model_digest(&pool).await.unwrap(), digest);

    // Rebuild from block 0 into a fresh database and log: the same read models.
    let db2 = TestDb::new().await.unwrap();
    let pool2 = pg_pool(&db2).await;
    let log2 = open_log(&dir.path().join("b"));
    project_to(&pool2, &log2, gx(), &n, height).await;
    assert_eq!(
        read_models::read_model_digest(&pool2).await.unwrap(),
        digest
    );
    n.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_pg_commit_and_checkpoint_append_is_reconciled() {
    let n = net().await;
    ledger_with_everything(&n).await;
    let height = n.handle.height();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let db = TestDb::new().await.unwrap();
    let pool = pg_pool(&db).await;
    project_to(&pool, &log, gx(), &n, height).await;
    let digest = read_models::read_model_digest(&pool).await.unwrap();
    let full = log.range(CHANNEL, 0, u64::MAX, 10_000).unwrap();

    // The PG commits of the last blocks happened, their appends did not.
    let keep = height / 2;
    log.truncate_after(CHANNEL, keep).await.unwrap();
    assert_eq!(log.last(CHANNEL).unwrap().unwrap().number, keep);
    project_to(&pool, &log, gx(), &n, height).await;
    assert_eq!(log.range(CHANNEL, 0, u64::MAX, 10_000).unwrap(), {
        // applied_at differs for re-appended entries: compare the chain only.
        let again = log.range(CHANNEL, 0, u64::MAX, 10_000).unwrap();
        assert_eq!(again.len(), full.len());
        for (a, b) in again.iter().zip(&full) {
            assert_eq!(
                (a.number, &a.header_hash, &a.previous_hash, a.tx_count),
                (b.number, &b.header_hash, &b.previous_hash, b.tx_count)
            );
        }
        again
    });
    assert_eq!(
        read_models::read_model_digest(&pool).await.unwrap(),
        digest,
        "nothing applied twice"
    );

    // An empty log (lost RocksDB) is rebuilt from the stream too.
    log.reset(CHANNEL).await.unwrap();
    project_to(&pool, &log, gx(), &n, height).await;
    assert_eq!(log.last(CHANNEL).unwrap().unwrap().number, height - 1);
    assert_eq!(read_models::read_model_digest(&pool).await.unwrap(), digest);
    n.handle.shutdown().await.unwrap();
}

/// A handler that refuses every event.
struct AlwaysPoison;

#[async_trait::async_trait]
impl ProjectionHandler for AlwaysPoison {
    async fn apply(
        &self,
        tx: &mut BlockTx<'_>,
        ctx: &TxContext,
        event: &ChaincodeEvent,
    ) -> Result<(), HandlerError> {
        // Write first, so a dead-letter must undo it.
        GxProjection::new("gx").apply(tx, ctx, event).await.ok();
        Err(HandlerError::Poison(format!("refusing {}", event.name)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_halts_by_default_and_is_dead_lettered_under_the_other_policy() {
    let n = net().await;
    ledger_with_everything(&n).await;
    let height = n.handle.height();
    let dir = tempfile::tempdir().unwrap();

    // Halt: stops before the first block with an event; position stays before it.
    let db = TestDb::new().await.unwrap();
    let pool_a = pg_pool(&db).await;
    let log = open_log(&dir.path().join("a"));
    let (status, _stop, task) = spawn(
        ProjectorConfig::new(CHANNEL),
        &pool_a,
        &log,
        Arc::new(AlwaysPoison),
        &n,
    );
    let err = tokio::time::timeout(LIMIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let ProjectorError::Poison { block, event, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(event, "SystemBootstrapped");
    let ProjectorState::Halted { reason } = &status.borrow().state else {
        panic!("{:?}", status.borrow().state)
    };
    assert!(reason.contains("refusing SystemBootstrapped"), "{reason}");
    let pos = projection::position(&pool_a, CHANNEL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pos.block_number, block - 1);
    assert_eq!(status.borrow().height, Some(block - 1));
    assert!(
        read_models::wallet(&pool_a, "treasury")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(log.last(CHANNEL).unwrap().unwrap().number, block - 1);

    // DeadLetter: every event transaction dead-lettered, nothing else written, goes on.
    let db = TestDb::new().await.unwrap();
    let pool_b = pg_pool(&db).await;
    let log = open_log(&dir.path().join("b"));
    let (mut status, stop, task) = spawn(
        ProjectorConfig::new(CHANNEL).with_poison_policy(PoisonPolicy::DeadLetter),
        &pool_b,
        &log,
        Arc::new(AlwaysPoison),
        &n,
    );
    tokio::time::timeout(LIMIT, status.wait_for(|s| s.height == Some(height - 1)))
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    let dead = read_models::dead_letters(&pool_b, CHANNEL).await.unwrap();
    let applied = read_models::applied_transactions(&pool_b, CHANNEL)
        .await
        .unwrap();
    let valid_events = applied
        .iter()
        .filter(|a| a.validation_code == 0 && a.event_name.is_some())
        .count();
    assert_eq!(dead.len(), valid_events);
    assert_eq!(status.borrow().dead_lettered, dead.len() as u64);
    assert!(dead.iter().all(|d| d.error.starts_with("refusing ")));
    assert_eq!(dead[0].event_name.as_deref(), Some("SystemBootstrapped"));
    assert!(dead[0].payload.as_ref().is_some_and(|p| !p.is_empty()));
    let counts = read_models::row_counts(&pool_b).await.unwrap();
    for (table, rows) in counts {
        if [
            "users",
            "wallets",
            "wallet_owners",
            "transfers",
            "wallet_history",
            "proposals",
        ]
        .contains(&table.as_str())
        {
            assert_eq!(rows, 0, "{table}: the handler's writes were undone");
        }
    }
    n.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_applies_on_a_v1_database_with_data() {
    let db = TestDb::new().await.unwrap();
    let client = db.connect().await.unwrap();
    client
        .batch_execute(include_str!("../migrations/V1__read_models.sql"))
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO projector_checkpoints VALUES ('ch', 3, '\\x01', now());
             INSERT INTO applied_transactions (channel, tx_id, block_number, tx_index,
                 validation_code, event_name, tx_timestamp)
                 VALUES ('ch', 'tx1', 1, 0, 0, 'UserCreated', now());
             INSERT INTO wallets (wallet_id, kind, balance, channel, created_tx_id,
                 created_block, created_at, updated_block, updated_at)
                 VALUES ('w1', 'user', 5, 'ch', 'tx1', 1, now(), 1, now()),
                        ('w2', 'user', 0, 'ch', 'tx0', 1, now(), 1, now());
             INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id,
                 to_wallet_id, amount, block_number, tx_index, tx_timestamp)
                 VALUES ('ch', 'tx2', 't', 'transfer', 'w1', 'w2', 1, 2, 0, now());
             INSERT INTO wallet_history (wallet_id, channel, tx_id, direction, amount,
                 block_number, tx_index, tx_timestamp)
                 VALUES ('w1', 'ch', 'tx2', 'debit', 1, 2, 0, now()),
                        ('w2', 'ch', 'tx2', 'credit', 1, 2, 0, now());",
        )
        .await
        .unwrap();
    client
        .batch_execute(include_str!("../migrations/V2__projection_keys.sql"))
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT tx_id, outcome FROM applied_transactions WHERE channel = 'ch'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("tx1"));
    assert_eq!(row.get::<_, String>(1), "applied");
    // Now keyed by position: the same tx id at another position (a DUPLICATE_TXID copy)
    // and a transaction without id are accepted; the same position twice is not.
    client
        .batch_execute(
            "INSERT INTO applied_transactions (channel, tx_id, block_number, tx_index,
                 validation_code, outcome) VALUES ('ch', 'tx1', 4, 0, 30, 'invalid'),
                 ('ch', NULL, 4, 1, 254, 'invalid')",
        )
        .await
        .unwrap();
    assert!(
        client
            .batch_execute(
                "INSERT INTO applied_transactions (channel, tx_id, block_number, tx_index,
                     validation_code) VALUES ('ch', 'other', 4, 0, 0)",
            )
            .await
            .is_err()
    );
}

/// Submits `specs` at once (so they share blocks).
async fn submit_together(
    gw: &Gateway,
    specs: Vec<ProposalSpec>,
) -> Vec<Result<gxd_fabric::client::Committed, gxd_fabric::client::GatewayError>> {
    futures::future::join_all(specs.iter().map(|s| gw.submit_transaction(s))).await
}

/// `ledger_with_everything`, then blocks of several transactions: users, transfers, a
/// transfer to a wallet created in the same block, a wallet paid and paying in one block.
/// (No self-transfer: the chaincode refuses them.)
async fn ledger_with_full_blocks(n: &Net) {
    ledger_with_everything(n).await;
    let gw = &n.client;
    let users = (1..=6)
        .map(|i| {
            gw.proposal("gx", "CreateUser")
                .with_args([format!("v{i}"), r#"{"country":"FR"}"#.to_owned()])
        })
        .collect();
    let users: Vec<_> = submit_together(gw, users)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let blocks: std::collections::BTreeSet<u64> = users.iter().map(|c| c.block_number).collect();
    assert!(
        blocks.len() < users.len(),
        "some users share a block: {blocks:?}"
    );
    submit_together(
        gw,
        vec![
            transfer(gw, "s1", "u1", "v3", "40"),
            transfer(gw, "s2", "u3", "v1", "5"),
            transfer(gw, "s3", "u2", "v2", "3"),
            gw.proposal("gx", "CreateUser").with_args(["v7", "{}"]),
        ],
    )
    .await;
    submit_together(
        gw,
        vec![
            transfer(gw, "s4", "v1", "v3", "2"),
            transfer(gw, "s5", "u1", "v7", "1"),
            // Reads v1 as s4 does: one of the two is an MVCC conflict in a full block.
            transfer(gw, "s6", "v2", "v1", "3"),
        ],
    )
    .await;
    gw.submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["marker", "{}"]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_one_at_a_time_projections_are_identical() {
    let n = net().await;
    ledger_with_full_blocks(&n).await;
    let height = n.handle.height();
    let dir = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for (name, batched) in [("batched", true), ("direct", false)] {
        let db = TestDb::new().await.unwrap();
        let pool = pg_pool(&db).await;
        let log = open_log(&dir.path().join(name));
        let (mut status, stop, task) = spawn(
            ProjectorConfig::new(CHANNEL).with_batch_writes(batched),
            &pool,
            &log,
            gx(),
            &n,
        );
        tokio::time::timeout(LIMIT, status.wait_for(|s| s.height == Some(height - 1)))
            .await
            .unwrap()
            .unwrap();
        stop.cancel();
        task.await.unwrap().unwrap();
        // The ledger's balances, both ways.
        for id in ["treasury", "u1", "u2", "u3", "ms1", "v1", "v2", "v3", "v7"] {
            let ledger: serde_json::Value = serde_json::from_slice(
                &n.client
                    .evaluate(&n.client.proposal("gx", "GetWallet").with_args([id]))
                    .await
                    .unwrap(),
            )
            .unwrap();
            let ours = read_models::wallet(&pool, id).await.unwrap().unwrap();
            assert_eq!(ledger["balance"], ours.balance.as_str(), "{name}: {id}");
        }
        let counts = read_models::row_counts(&pool).await.unwrap();
        assert!(
            counts
                .iter()
                .all(|(t, c)| *c > 0 || t == "projection_dead_letters"),
            "{counts:?}"
        );
        digests.push(read_models::read_model_digest(&pool).await.unwrap());
    }
    assert_eq!(
        digests[0], digests[1],
        "batched and one-at-a-time read models differ"
    );
    n.handle.shutdown().await.unwrap();
}

/// GX's handler, except that transfer `ghost-t` also credits a wallet that does not
/// exist: a data error that a batched block meets only at commit.
struct GhostWallet;

#[async_trait::async_trait]
impl ProjectionHandler for GhostWallet {
    async fn apply(
        &self,
        tx: &mut BlockTx<'_>,
        ctx: &TxContext,
        event: &ChaincodeEvent,
    ) -> Result<(), HandlerError> {
        GxProjection::new("gx").apply(tx, ctx, event).await?;
        let payload: serde_json::Value = serde_json::from_slice(&event.payload).unwrap_or_default();
        if payload["transferId"] == "ghost-t" {
            // Under another tx id, so the transfer rows are accepted and only the balance
            // of "nowhere" fails.
            let mut ghost = ctx.clone();
            ghost.tx_id = format!("{}-ghost", ctx.tx_id);
            tx.apply_transfer(
                &ghost,
                &read_models::NewTransfer {
                    transfer_id: "ghost-t2",
                    kind: read_models::TransferKind::Mint,
                    from_wallet_id: None,
                    to_wallet_id: "nowhere",
                    amount: "1",
                    memo: None,
                    proposal_id: None,
                    from_balance: None,
                    to_balance: None,
                },
            )
            .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_transaction_found_at_a_batched_commit_is_still_identified() {
    let n = net().await;
    ledger_with_everything(&n).await;
    let gw = &n.client;
    let committed = submit_together(
        gw,
        vec![
            gw.proposal("gx", "CreateUser").with_args(["w1", "{}"]),
            transfer(gw, "ghost-t", "u1", "u2", "1"),
            gw.proposal("gx", "CreateUser").with_args(["w2", "{}"]),
            gw.proposal("gx", "CreateUser").with_args(["w3", "{}"]),
        ],
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect::<Vec<_>>();
    gw.submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["marker", "{}"]))
        .await
        .unwrap();
    let height = n.handle.height();
    let ghost = &committed[1];
    let mates: Vec<&str> = committed
        .iter()
        .filter(|c| c.block_number == ghost.block_number && c.tx_id != ghost.tx_id)
        .map(|c| c.tx_id.as_str())
        .collect();
    assert!(
        !mates.is_empty(),
        "the poison shares its block: {committed:?}"
    );
    let dir = tempfile::tempdir().unwrap();

    // Halt: the error names the transaction; the position stays before its block.
    let db = TestDb::new().await.unwrap();
    let pool = pg_pool(&db).await;
    let log = open_log(&dir.path().join("halt"));
    let (status, _stop, task) = spawn(
        ProjectorConfig::new(CHANNEL),
        &pool,
        &log,
        Arc::new(GhostWallet),
        &n,
    );
    let err = tokio::time::timeout(LIMIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let ProjectorError::Poison {
        block,
        tx_id,
        event,
        reason,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (*block, tx_id.as_str(), event.as_str()),
        (
            ghost.block_number,
            ghost.tx_id.as_str(),
            "TokensTransferred"
        )
    );
    assert!(reason.contains("\"nowhere\" does not exist"), "{reason}");
    assert!(matches!(
        status.borrow().state,
        ProjectorState::Halted { .. }
    ));
    let pos = projection::position(&pool, CHANNEL).await.unwrap().unwrap();
    assert_eq!(pos.block_number, ghost.block_number - 1);

    // DeadLetter: exactly the poison is dead-lettered, the rest of its block applied; the
    // same read models as a projector that never batches.
    let mut digests = Vec::new();
    for (name, batched) in [("dl-batched", true), ("dl-direct", false)] {
        let db = TestDb::new().await.unwrap();
        let pool = pg_pool(&db).await;
        let log = open_log(&dir.path().join(name));
        let (mut status, stop, task) = spawn(
            ProjectorConfig::new(CHANNEL)
                .with_poison_policy(PoisonPolicy::DeadLetter)
                .with_batch_writes(batched),
            &pool,
            &log,
            Arc::new(GhostWallet),
            &n,
        );
        tokio::time::timeout(LIMIT, status.wait_for(|s| s.height == Some(height - 1)))
            .await
            .unwrap()
            .unwrap();
        stop.cancel();
        task.await.unwrap().unwrap();
        let dead = read_models::dead_letters(&pool, CHANNEL).await.unwrap();
        assert_eq!(dead.len(), 1, "{name}: {dead:?}");
        assert_eq!(dead[0].tx_id.as_deref(), Some(ghost.tx_id.as_str()));
        assert_eq!(dead[0].block_number as u64, ghost.block_number);
        assert_eq!(status.borrow().dead_lettered, 1);
        let applied = read_models::applied_transactions(&pool, CHANNEL)
            .await
            .unwrap();
        for mate in &mates {
            let a = applied
                .iter()
                .find(|a| a.tx_id.as_deref() == Some(*mate))
                .unwrap();
            assert_eq!(a.outcome, "applied", "{name}");
        }
        for w in ["w1", "w2", "w3"] {
            assert!(
                read_models::wallet(&pool, w).await.unwrap().is_some(),
                "{name}: {w}"
            );
        }
        // The poison's writes were undone: u2 has what it had before ghost-t.
        assert_eq!(
            read_models::wallet(&pool, "u2")
                .await
                .unwrap()
                .unwrap()
                .balance,
            "10"
        );
        assert!(
            read_models::wallet(&pool, "nowhere")
                .await
                .unwrap()
                .is_none()
        );
        digests.push(read_models::read_model_digest(&pool).await.unwrap());
    }
    assert_eq!(digests[0], digests[1]);
    n.handle.shutdown().await.unwrap();
}
