//! Command statuses past COMMITTED, against the devnet, a real PostgreSQL (TestDb) and a
//! real RocksDB outbox + checkpoint log (one database, as in the daemon):
//! - a late commit: an earlier attempt's transaction, submitted with the devnet's
//!   process-then-UNAVAILABLE fault and then believed lost (a retry scheduled, or the
//!   command dead-lettered), commits; the projector finds its command through the tx index
//!   and records it (PROJECTED with that tx id and block); the retry is never submitted and
//!   the partition moves on;
//! - commands reach PROJECTED once their block is projected (index, result recorded);
//! - the lag: a projector held back while the ledger moves is reported behind (ledger
//!   height from the height probe, lag in blocks and seconds, the readiness reason), and
//!   not behind once it caught up.
//!
//! The projection handler here does nothing (the engine knows no GX); the catalog is the
//! submitter tests' one: the command type is the function, the payload its arguments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gxd_devnet::{DevnetConfig, DevnetHandle, Fault, FaultRule, Rpc};
use gxd_engine::backoff::Backoff;
use gxd_engine::catalog::{CommandCatalog, InvalidCommand, Invocation};
use gxd_engine::projector::{
    BlockSource, BlockSourceFactory, BlockTx, ChaincodeEvent, DeliverSource, HandlerError,
    ProjectionHandler, Projector, ProjectorConfig, ProjectorState, ProjectorStatus, TxContext,
};
use gxd_engine::submitter::{Submitter, SubmitterConfig, Waker};
use gxd_fabric::block::ParsedBlock;
use gxd_fabric::client::{Gateway, PreparedTransaction};
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::stream::{BlockStream, BlockStreamConfig, StreamError};
use gxd_fabric::tx::ProposalSpec;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::{
    AttemptOutcome, Command, CommandError, CommandId, NewCommand, Outbox, OutboxOptions, Status,
};
use gxd_storage::pg::testing::TestDb;
use gxd_storage::pg::{self, Pool};
use gxd_storage::{Db, DbOptions};
use tokio::sync::watch;
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

struct NoHandler;

#[async_trait::async_trait]
impl ProjectionHandler for NoHandler {
    async fn apply(
        &self,
        _tx: &mut BlockTx<'_>,
        _ctx: &TxContext,
        _event: &ChaincodeEvent,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    _pg: TestDb,
    devnet: DevnetHandle,
    db: Db,
    outbox: Outbox,
    pool: Pool,
    client: Gateway,
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
    client
        .submit_transaction(&client.proposal("gx", "CreateUser").with_args(["r", "{}"]))
        .await
        .unwrap();
    let testdb = TestDb::new().await.unwrap();
    let pool = pg::connect_pool(&testdb.settings("gxd-engine-test"))
        .await
        .unwrap();
    pg::migrate::migrate_pool(&pool).await.unwrap();
    let db = Db::open(dir.path().join("rocksdb"), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
    Env {
        _dir: dir,
        _pg: testdb,
        devnet,
        db,
        outbox,
        pool,
        client,
    }
}

fn deliver(e: &Env) -> DeliverSource {
    DeliverSource {
        connector: e.client.connector().clone(),
        signer: e.client.identity().clone(),
        backoff: gxd_fabric::stream::Backoff::default(),
    }
}

struct Task<T> {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Task<T> {
    async fn stop(self) -> T {
        self.stop.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .unwrap()
            .unwrap()
    }
}

fn projector(
    e: &Env,
    source: Arc<dyn BlockSourceFactory>,
) -> (Task<()>, watch::Receiver<ProjectorStatus>) {
    let mut config = ProjectorConfig::new(e.client.channel());
    config.height_probe_interval = Duration::from_millis(100);
    let p = Projector::new(
        config,
        e.pool.clone(),
        CheckpointLog::new(e.db.clone()),
        Arc::new(NoHandler),
        source,
    )
    .with_outbox(e.outbox.clone());
    let status = p.status();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { p.run(token).await.unwrap() });
    (Task { stop, task }, status)
}

fn submitter(e: &Env) -> (Task<()>, Waker) {
    let mut c = SubmitterConfig::new("gx");
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c.resolve_backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let waker = Waker::new();
    let s = Submitter::new(
        e.outbox.clone(),
        e.client.clone(),
        Arc::new(TestCatalog),
        c,
        waker.clone(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { s.run(token).await.unwrap() });
    (Task { stop, task }, waker)
}

async fn enqueue(outbox: &Outbox, request: &str, partition: &str, args: &[&str]) -> CommandId {
    outbox
        .enqueue(NewCommand {
            tenant: "test".into(),
            command_type: "TransferTokens".into(),
            request_id: request.into(),
            partition_key: partition.into(),
            extra_partition_keys: Vec::new(),
            payload: serde_json::to_vec(args).unwrap(),
        })
        .await
        .unwrap()
        .command
        .id
}

async fn wait_status(outbox: &Outbox, id: CommandId, status: Status) -> Command {
    tokio::time::timeout(LIMIT, async {
        loop {
            let c = outbox.get(id).unwrap();
            if c.status == status {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never reached {status}: {:#?}", outbox.get(id)))
}

async fn wait_for(
    status: &mut watch::Receiver<ProjectorStatus>,
    what: &str,
    pred: impl Fn(&ProjectorStatus) -> bool,
) -> ProjectorStatus {
    tokio::time::timeout(LIMIT, async {
        loop {
            let s = status.borrow_and_update().clone();
            if pred(&s) {
                return s;
            }
            // The lag grows with the clock, not only with changes: poll as well.
            let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("projector never {what}: {:#?}", status.borrow()))
}

/// Every block of the ledger.
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

/// Validation codes of the transactions whose first argument is `needle`.
fn codes_of(blocks: &[ParsedBlock], needle: &str) -> Vec<TxValidationCode> {
    blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.args.get(1).is_some_and(|a| a == needle.as_bytes()))
        .map(|t| t.validation().unwrap())
        .collect()
}

/// Endorses command `id`'s transaction as the submitter would, and stores it PREPARED.
async fn prepare(e: &Env, id: CommandId) -> PreparedTransaction {
    let cmd = e.outbox.get(id).unwrap();
    let inv = TestCatalog
        .invocation(&cmd.command_type, id, &cmd.payload)
        .unwrap();
    let spec = ProposalSpec::new(e.client.channel(), "gx", inv.function).with_bytes_args(inv.args);
    let tx = e
        .client
        .endorse(&e.client.new_proposal(&spec).unwrap())
        .await
        .unwrap();
    e.outbox
        .mark_prepared(id, tx.tx_id().to_owned(), tx.to_bytes())
        .await
        .unwrap();
    tx
}

/// Submits `tx` with the reply lost (the devnet orders it, then answers UNAVAILABLE) and
/// waits for it to commit.
async fn submit_reply_lost(e: &Env, tx: &PreparedTransaction) -> u64 {
    e.devnet.faults().add(FaultRule {
        rpc: Rpc::Submit,
        fault: Fault::ProcessThenUnavailable,
        times: Some(1),
    });
    assert!(e.client.submit(tx).await.is_err(), "the reply is lost");
    let status = e.client.wait_for_commit(tx.tx_id()).await.unwrap();
    assert!(status.is_valid(), "{status:?}");
    status.block_number
}

fn lost() -> CommandError {
    CommandError {
        stage: "submit".into(),
        code: "UNAVAILABLE".into(),
        message: "reply lost; believed not ordered".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_settles_a_pending_retry_which_is_never_submitted() {
    let e = env().await;
    let (p, _status) = projector(&e, Arc::new(deliver(&e)));
    let a = enqueue(
        &e.outbox,
        "a",
        "treasury",
        &["$ID", "treasury", "r", "5", ""],
    )
    .await;
    let b = enqueue(
        &e.outbox,
        "b",
        "treasury",
        &["$ID", "treasury", "r", "6", ""],
    )
    .await;
    // An attempt of `a` (endorsed and stored as the submitter does)...
    let tx = prepare(&e, a).await;
    // ...believed lost: a retry an hour away blocks the partition.
    e.outbox
        .schedule_retry(a, lost(), chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    // The submitter runs meanwhile; it has nothing due.
    let (s, waker) = submitter(&e);
    // ...but it was ordered after all.
    let block = submit_reply_lost(&e, &tx).await;

    let settled = wait_status(&e.outbox, a, Status::Projected).await;
    assert_eq!(settled.txid.as_deref(), Some(tx.tx_id()));
    assert_eq!(settled.block_number, Some(block));
    assert!(settled.tx_index.is_some(), "{settled:#?}");
    assert_eq!(
        settled
            .history
            .last()
            .map(|h| (h.outcome, h.txid.as_deref())),
        Some((AttemptOutcome::Retried, Some(tx.tx_id())))
    );
    assert_eq!(e.outbox.command_by_txid(tx.tx_id()).unwrap().unwrap().id, a);
    // The partition moved on: b is submitted and projected.
    waker.wake();
    let b_done = wait_status(&e.outbox, b, Status::Projected).await;
    assert_eq!(b_done.attempts, 0);
    s.stop().await;
    p.stop().await;

    // The ledger: exactly one VALID transaction per command; the retry never went out.
    let blocks = ledger(&e).await;
    assert_eq!(
        codes_of(&blocks, &a.to_string()),
        vec![TxValidationCode::Valid]
    );
    assert_eq!(
        codes_of(&blocks, &b.to_string()),
        vec![TxValidationCode::Valid]
    );
    assert_eq!(settled.txid, e.outbox.get(a).unwrap().txid);
    let report = e.outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_transaction_commits_late_becomes_projected() {
    let e = env().await;
    let id = enqueue(
        &e.outbox,
        "f",
        "treasury",
        &["$ID", "treasury", "r", "9", ""],
    )
    .await;
    let tx = prepare(&e, id).await;
    e.outbox.mark_failed(id, lost()).await.unwrap();
    assert_eq!(e.outbox.counts().unwrap().failed, 1);
    let block = submit_reply_lost(&e, &tx).await;
    // The projector starts afterwards: it reads the block from the ledger.
    let (p, _status) = projector(&e, Arc::new(deliver(&e)));
    let c = wait_status(&e.outbox, id, Status::Projected).await;
    p.stop().await;
    assert_eq!(
        (c.txid.as_deref(), c.block_number),
        (Some(tx.tx_id()), Some(block))
    );
    // The chaincode's response as the block carries it.
    assert_eq!(
        c.result.as_ref().and_then(|r| r.status),
        Some(200),
        "{c:#?}"
    );
    let counts = e.outbox.counts().unwrap();
    assert_eq!((counts.failed, counts.projected), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_commands_reach_projected_after_their_block() {
    let e = env().await;
    let (p, mut status) = projector(&e, Arc::new(deliver(&e)));
    let (s, waker) = submitter(&e);
    let mut changes = e.outbox.subscribe();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            enqueue(
                &e.outbox,
                &format!("c{i}"),
                "treasury",
                &["$ID", "treasury", "r", "1", ""],
            )
            .await,
        );
    }
    waker.wake();
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_status(&e.outbox, *id, Status::Projected).await);
    }
    // Each command's block is at or below the projector's position; the notifications
    // said PROJECTED for each.
    let st = wait_for(&mut status, "caught up", |s| s.lag_blocks == Some(0)).await;
    for c in &done {
        assert!(c.block_number.unwrap() <= st.height.unwrap(), "{c:#?}");
        assert!(c.tx_index.is_some() && c.projected_at.is_some(), "{c:#?}");
    }
    let mut projected = std::collections::HashSet::new();
    while let Ok(change) = changes.try_recv() {
        if change.status == Status::Projected {
            projected.insert(change.id);
        }
    }
    assert_eq!(projected, ids.iter().copied().collect());
    s.stop().await;
    p.stop().await;
    assert_eq!(e.outbox.counts().unwrap().projected, 6);
}

/// A block source whose blocks wait for an open gate; the height probe is the real one.
struct Gated {
    inner: DeliverSource,
    gate: watch::Receiver<bool>,
}

struct GatedSource {
    inner: Box<dyn BlockSource>,
    gate: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl BlockSource for GatedSource {
    async fn next_block(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        let block = self.inner.next_block().await?;
        if self.gate.wait_for(|open| *open).await.is_err() {
            return Ok(None);
        }
        Ok(block)
    }
}

impl BlockSourceFactory for Gated {
    fn open(
        &self,
        channel: &str,
        start: u64,
        previous_hash: Option<Vec<u8>>,
        cancel: CancellationToken,
    ) -> Box<dyn BlockSource> {
        Box::new(GatedSource {
            inner: self.inner.open(channel, start, previous_hash, cancel),
            gate: self.gate.clone(),
        })
    }

    fn ledger_height<'a>(
        &'a self,
        channel: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + 'a>> {
        self.inner.ledger_height(channel)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_while_the_projector_is_held_back_and_clears_after_catch_up() {
    let e = env().await;
    let (open, gate) = watch::channel(true);
    let (p, mut status) = projector(
        &e,
        Arc::new(Gated {
            inner: deliver(&e),
            gate,
        }),
    );
    let max_lag = Duration::from_secs(1);
    let start = e.devnet.height();
    let st = wait_for(&mut status, "caught up", |s| {
        s.state == ProjectorState::Running && s.height.is_some_and(|h| h + 1 >= start)
    })
    .await;
    assert_eq!(st.ledger_height, Some(start), "{st:#?}");
    assert_eq!(st.lag_problem(max_lag, chrono::Utc::now()), None);

    // Hold the projector back; the ledger moves on by three transactions.
    open.send(false).unwrap();
    for i in 0..3 {
        e.client
            .submit_transaction(&e.client.proposal("gx", "TransferTokens").with_args([
                format!("lag-{i}").as_str(),
                "treasury",
                "r",
                "1",
                "",
            ]))
            .await
            .unwrap_or_else(|err| panic!("transfer {i}: {err}"));
    }
    let height = e.devnet.height();
    assert!(height > start);
    // The probe learns the height; the lag then grows past the threshold.
    let behind = wait_for(&mut status, "reported behind", |s| {
        s.ledger_height == Some(height) && s.lag_problem(max_lag, chrono::Utc::now()).is_some()
    })
    .await;
    assert!(behind.lag_blocks.unwrap() >= 1, "{behind:#?}");
    assert!(behind.behind_since.is_some());
    let reason = behind.lag_problem(max_lag, chrono::Utc::now()).unwrap();
    assert!(reason.contains("behind the ledger"), "{reason}");
    assert!(
        reason.contains(&format!("ledger height {height}")),
        "{reason}"
    );

    // Let it go: it catches up, and the lag clears.
    open.send(true).unwrap();
    let caught = wait_for(&mut status, "caught up again", |s| {
        s.height == Some(height - 1) && s.lag_blocks == Some(0)
    })
    .await;
    assert_eq!(caught.behind_since, None);
    assert_eq!(caught.lag_problem(max_lag, chrono::Utc::now()), None);
    assert_eq!(caught.lag_now(), Duration::ZERO);
    p.stop().await;
}
