//! The submitter: brings each accepted command to the ledger exactly once, in partition
//! order.
//!
//! # Dispatch
//! One dispatcher loop claims due commands — PENDING commands heading every one of their
//! partition queues ([`Outbox::next_due`]) — and runs each in its own task, at most
//! [`SubmitterConfig::max_in_flight`] at a time. A claim lasts as long as its task: a claimed
//! head is not handed out again while its task runs, and the outbox refuses a second
//! in-flight command per partition anyway. The loop sleeps until the earliest due time
//! ([`Outbox::next_due_at`]), or until [`Waker::wake`] says new work became due — called
//! after the durable write that made it due (an enqueue's reply, a commit that promotes the
//! next head) — with [`SubmitterConfig::idle_poll`] as a safety net, not as the mechanism.
//! A command's partitions are the wallets it touches (a transfer: payer and payee), so two
//! commands touching one wallet are never in flight together and gxd never races itself
//! into MVCC conflicts.
//!
//! # Per command
//! catalog → proposal → endorse → **store the prepared transaction (tx id + signed envelope)
//! in the outbox** → submit → commit status → COMMITTED (block number). If storing the
//! prepared transaction fails, nothing is submitted. Attempts, the last error and the next
//! attempt time are on disk, so a restart continues the same schedule.
//!
//! # Errors, by stage and code
//! - *Transient* — UNAVAILABLE, DEADLINE_EXCEEDED, connection loss at endorsement; MVCC and
//!   phantom read conflicts at commit (re-endorsed under a new tx id): retried after
//!   [`Backoff`] (exponential, full jitter, bounded) up to [`SubmitterConfig::max_attempts`].
//!   Except when *no peer was reached* (no endpoint answered, or the gateway answered
//!   UNAVAILABLE at endorsement: `GatewayError::is_peer_unreachable`): that says nothing
//!   about the command, so it is postponed without counting an attempt, on a submitter-wide
//!   outage backoff capped at a few seconds — a peer outage of any length dead-letters
//!   nothing, and commands resume within seconds of the peer's return.
//! - *Permanent* — the catalog cannot build the transaction, a chaincode error at
//!   endorsement, ENDORSEMENT_POLICY_FAILURE or another invalid code at commit, a bad
//!   signature: dead-lettered at once with the peer's message and stage. Nothing permanent is
//!   retried.
//!
//! # The resolution rule
//! A PREPARED or SUBMITTED command — after a crash, a timeout, a lost reply — is resolved
//! by **its stored tx id**: resubmit the same signed bytes if needed, then ask the commit
//! status of that tx id. Only a final code for *that* tx id decides what happens next:
//! - VALID → COMMITTED;
//! - MVCC_READ_CONFLICT / PHANTOM_READ_CONFLICT → re-endorse under a new tx id (an attempt);
//! - another invalid code → dead letter;
//! - DUPLICATE_TXID only says the id exists: it is not final; ask again (a Fabric peer's
//!   CommitStatus reports the first occurrence's code).
//!
//! A timeout, a commit-status error, a permanent error on a *re*-submission or a storage
//! error never dead-letters or re-endorses a command whose transaction might still commit:
//! the task keeps resolving it (resubmit, ask again, with backoff) until the ledger answers,
//! or the daemon stops — and the next start resolves it again from disk. Dead-lettering and
//! requeueing keep the tx ids an attempt used (in the command's history).
//!
//! # Late commits
//! Every tx id an attempt used is in the outbox's tx index from `mark_prepared` on (before
//! it can reach the orderer). When a transaction of an *earlier* attempt commits VALID
//! after all — seen by the projector in a block, or by this submitter's commit status —
//! the outbox records it on its command whatever the state (PENDING retry, FAILED, or a
//! later attempt in flight): the command becomes COMMITTED (PROJECTED) with that tx id and
//! block. By the rule above a retry is scheduled only when its tx id certainly did not
//! commit, so this is the safety net for what the rule cannot see (an orderer that took a
//! transaction whose first submission it reported refused, an operator's requeue of a
//! command whose outcome was in doubt). What keeps it exactly-once:
//! - the late commit takes the command out of its partition queue and the due index in the
//!   same batch, and `mark_prepared` refuses a COMMITTED command: a retry not yet prepared
//!   is never submitted (its endorsement is discarded);
//! - a retry already prepared when the late commit lands is superseded (its tx id goes to
//!   the history); this worker notices the command settled elsewhere (it re-reads it
//!   between resolution rounds, and its own transitions are refused) and stops. That tx
//!   may still reach a block, but it cannot commit VALID for a chaincode whose ids derive
//!   from the command id (GX's transfer and proposal ids): it read the id as unused, the
//!   earlier transaction wrote it → MVCC_READ_CONFLICT. A second VALID transaction of one
//!   command is logged as an error and not recorded.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use gxd_fabric::client::{ErrorClass, Gateway, GatewayError, PreparedTransaction};
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::tx::ProposalSpec;
use gxd_storage::StorageError;
use gxd_storage::outbox::{
    ChaincodeResult, Command, CommandError, CommandId, LedgerCommit, Outbox, Status,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::catalog::{CommandCatalog, Invocation};

/// Submitter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitterConfig {
    /// Chaincode the commands invoke.
    pub chaincode: String,
    /// Commands (hence partitions) in flight at once. Default 64.
    pub max_in_flight: usize,
    /// Attempts before a command is dead-lettered (transient errors only; permanent ones
    /// dead-letter at once). Default 5.
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Delay between rounds of resolving an ambiguous outcome (resubmit, commit status).
    pub resolve_backoff: Backoff,
    /// Longest sleep of the dispatcher without a wake-up (a safety net). Default 1 s.
    pub idle_poll: Duration,
}

impl SubmitterConfig {
    /// Defaults for `chaincode`.
    pub fn new(chaincode: impl Into<String>) -> Self {
        Self {
            chaincode: chaincode.into(),
            max_in_flight: 64,
            max_attempts: 5,
            backoff: Backoff::default(),
            resolve_backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
            idle_poll: Duration::from_secs(1),
        }
    }
}

/// Wakes the dispatcher: call after a durable write that made work due (an enqueue).
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// A fresh waker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the dispatcher (coalesced: many wakes before it runs count once).
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Why the submitter stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubmitterError {
    #[error("outbox: {0}")]
    Storage(#[from] StorageError),
    #[error("invalid submitter configuration: {0}")]
    Config(String),
}

/// Prometheus metrics of the submitter (`gxd_submitter_*`).
#[derive(Clone)]
struct Metrics {
    outcomes: prometheus::IntCounterVec,
    in_flight: prometheus::IntGauge,
    commit_seconds: prometheus::Histogram,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let outcomes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "gxd_submitter_attempts_total",
                "Ends of submission attempts, by outcome (committed, retried, dead_lettered, \
                 ambiguous).",
            ),
            &["outcome"],
        )?;
        let in_flight = prometheus::IntGauge::new(
            "gxd_submitter_in_flight",
            "Commands the submitter is working on.",
        )?;
        let commit_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "gxd_submitter_commit_latency_seconds",
                "From a command's acceptance to its commit on the ledger.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(Self {
            outcomes,
            in_flight,
            commit_seconds,
        })
    }

    fn outcome(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }
}

/// Everything a worker task needs.
struct Ctx {
    outbox: Outbox,
    gateway: Gateway,
    catalog: Arc<dyn CommandCatalog>,
    config: SubmitterConfig,
    metrics: Metrics,
    waker: Waker,
    shutdown: CancellationToken,
    /// Consecutive attempts that found no peer (see [`postpone`]); reset by an endorsement.
    outage_streak: AtomicU32,
}

/// The submitter. See the module documentation.
pub struct Submitter {
    ctx: Arc<Ctx>,
}

impl Submitter {
    /// A submitter over `outbox`, submitting through `gateway` what `catalog` makes of each
    /// command; its metrics go to `registry`; `waker` is the one the API wakes it with.
    pub fn new(
        outbox: Outbox,
        gateway: Gateway,
        catalog: Arc<dyn CommandCatalog>,
        config: SubmitterConfig,
        waker: Waker,
        registry: &prometheus::Registry,
    ) -> Result<Self, SubmitterError> {
        if config.max_in_flight == 0 || config.max_attempts == 0 || config.chaincode.is_empty() {
            return Err(SubmitterError::Config(
                "max_in_flight and max_attempts must be positive, chaincode non-empty".into(),
            ));
        }
        let metrics = Metrics::new(registry).map_err(|e| SubmitterError::Config(e.to_string()))?;
        Ok(Self {
            ctx: Arc::new(Ctx {
                outbox,
                gateway,
                catalog,
                config,
                metrics,
                waker,
                shutdown: CancellationToken::new(),
                outage_streak: AtomicU32::new(0),
            }),
        })
    }

    /// Runs until `shutdown` is cancelled. In-flight commands are left as they are on disk
    /// (PREPARED / SUBMITTED ones are resolved by the next start). `Err` only when the outbox
    /// cannot be read.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubmitterError> {
        let ctx = self.ctx;
        let mut tasks: JoinSet<CommandId> = JoinSet::new();
        let mut claimed: HashSet<CommandId> = HashSet::new();
        // Commands a previous run left in flight: resolved first, by their stored tx id.
        let mut recovered = in_flight_commands(&ctx.outbox)?;
        // After storage reopened its database (a sticky write error, a full disk), a write
        // that was answered "unavailable" may be on disk after all (its WAL record was
        // whole): look for commands in flight again, as at a start.
        let mut storage_recoveries = ctx.outbox.db().write_status().recoveries;
        if !recovered.is_empty() {
            tracing::info!(
                count = recovered.len(),
                "resolving commands left in flight by the previous run"
            );
        }

        // Claims since the due index was last compacted (its tombstones slow every poll).
        let mut claims_since_compaction: u64 = 0;
        let mut compaction: Option<tokio::task::JoinHandle<()>> = None;
        let result = loop {
            if claims_since_compaction >= DUE_COMPACTION_EVERY
                && compaction.as_ref().is_none_or(|c| c.is_finished())
            {
                claims_since_compaction = 0;
                let outbox = ctx.outbox.clone();
                compaction = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = outbox.compact_due_index() {
                        tracing::warn!(error = %e, "cannot compact the due index");
                    }
                }));
            }
            let recoveries = ctx.outbox.db().write_status().recoveries;
            if recoveries != storage_recoveries {
                match in_flight_commands(&ctx.outbox) {
                    Ok(found) => {
                        storage_recoveries = recoveries;
                        for c in found {
                            if !claimed.contains(&c.id) && !recovered.iter().any(|r| r.id == c.id) {
                                recovered.push_back(c);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list commands in flight; retrying")
                    }
                }
            }
            while tasks.len() < ctx.config.max_in_flight
                && let Some(cmd) = recovered.pop_front()
            {
                if claimed.insert(cmd.id) {
                    spawn(&mut tasks, &ctx, cmd);
                }
            }
            let mut sleep_for = ctx.config.idle_poll;
            if tasks.len() < ctx.config.max_in_flight && recovered.is_empty() {
                let now = Utc::now();
                // Claimed heads stay in the due index until prepared: skipped by id, not
                // loaded, so a poll costs a key comparison per command in flight.
                let want = ctx.config.max_in_flight - tasks.len();
                let mut found = 0;
                match ctx.outbox.next_due_excluding(want, now, &claimed) {
                    Ok(due) => {
                        found = due.len();
                        for cmd in due {
                            if tasks.len() >= ctx.config.max_in_flight {
                                break;
                            }
                            if claimed.insert(cmd.id) {
                                claims_since_compaction += 1;
                                spawn(&mut tasks, &ctx, cmd);
                            }
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "cannot read due commands; retrying");
                    }
                    Err(e) => break Err(e.into()),
                }
                // Nothing due now: sleep until the earliest retry (another seek, so only
                // then; while commands are found, completions wake the loop anyway).
                if found == 0
                    && let Ok(Some(at)) = ctx.outbox.next_due_at()
                    && let Ok(wait) = (at - Utc::now()).to_std()
                {
                    sleep_for = sleep_for.min(wait.max(Duration::from_millis(1)));
                }
            }
            ctx.metrics
                .in_flight
                .set(i64::try_from(tasks.len()).unwrap_or(i64::MAX));
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                Some(done) = tasks.join_next() => {
                    // Every other worker that finished meanwhile too: one poll for all of
                    // them (under load, completions arrive faster than polls are useful).
                    let mut finished = vec![done];
                    while let Some(more) = tasks.try_join_next() {
                        finished.push(more);
                    }
                    let mut panicked = None;
                    for done in finished {
                        match done {
                            Ok(id) => {
                                claimed.remove(&id);
                                // A worker that could not record its outcome (a storage
                                // error) leaves its command PREPARED or SUBMITTED: resolve
                                // it again by its tx id.
                                if let Ok(c) = ctx.outbox.get(id)
                                    && c.status.is_in_flight()
                                    && !shutdown.is_cancelled()
                                {
                                    recovered.push_back(c);
                                }
                            }
                            Err(e) => panicked = Some(e),
                        }
                    }
                    if let Some(e) = panicked {
                        // A worker panicked: its claim cannot be released safely (its command
                        // may be mid-flight); stop, so supervision restarts a clean process.
                        break Err(SubmitterError::Config(format!("submitter worker failed: {e}")));
                    }
                }
                () = ctx.waker.woken() => {}
                () = tokio::time::sleep(sleep_for) => {}
            }
        };
        ctx.shutdown.cancel();
        // Every state is on disk; a worker stopped between two steps is resolved next time.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Some(c) = compaction {
            let _ = c.await;
        }
        ctx.metrics.in_flight.set(0);
        result
    }
}

/// Claims between two compactions of the outbox's due index
/// ([`Outbox::compact_due_index`]).
const DUE_COMPACTION_EVERY: u64 = 2_048;

/// The PREPARED and SUBMITTED commands on disk.
fn in_flight_commands(outbox: &Outbox) -> Result<VecDeque<Command>, StorageError> {
    let mut found = VecDeque::new();
    for status in [Status::Prepared, Status::Submitted] {
        let mut cursor = None;
        loop {
            let page = outbox.list_by_status(status, cursor, 256)?;
            found.extend(page.commands);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(found)
}

fn spawn(tasks: &mut JoinSet<CommandId>, ctx: &Arc<Ctx>, cmd: Command) {
    let ctx = Arc::clone(ctx);
    let id = cmd.id;
    let span = tracing::info_span!("command", command_id = %id, partition = %cmd.partition_key);
    tasks.spawn(tracing::Instrument::instrument(
        async move {
            work(&ctx, cmd).await;
            id
        },
        span,
    ));
}

/// One command, from its state on disk to a decision.
async fn work(ctx: &Ctx, cmd: Command) {
    match cmd.status {
        Status::Pending => attempt(ctx, cmd).await,
        Status::Prepared | Status::Submitted => {
            let Some(bytes) = cmd.signed_tx.as_deref() else {
                tracing::error!(status = %cmd.status.as_str(), "in-flight command without its prepared transaction");
                let _ = pause(ctx, 8).await;
                return;
            };
            match PreparedTransaction::from_bytes(bytes) {
                Ok(tx) => {
                    // It may have been submitted before the crash: a resubmission, whose
                    // permanent refusal must not dead-letter it.
                    resolve(ctx, &cmd, &tx, Submission::Again).await;
                }
                Err(e) => {
                    // The stored envelope does not decode (disk corruption): nobody can say
                    // whether it committed. Leave it for an operator, loudly.
                    tracing::error!(error = %e, "stored prepared transaction does not decode");
                    let _ = pause(ctx, 8).await;
                }
            }
        }
        Status::Committed | Status::Failed | Status::Projected => {}
    }
}

/// Whether a submission is the first of its tx id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submission {
    First,
    Again,
}

/// A fresh attempt of a PENDING head: endorse, prepare, submit, resolve.
async fn attempt(ctx: &Ctx, cmd: Command) {
    let Invocation { function, args } =
        match ctx
            .catalog
            .invocation(&cmd.command_type, cmd.id, &cmd.payload)
        {
            Ok(inv) => inv,
            Err(e) => {
                let error = CommandError {
                    stage: "validate".into(),
                    code: "INVALID_COMMAND".into(),
                    message: e.0,
                };
                return dead_letter(ctx, &cmd, error).await;
            }
        };
    let spec = ProposalSpec::new(ctx.gateway.channel(), &ctx.config.chaincode, function)
        .with_bytes_args(args);
    let prepared = match ctx.gateway.new_proposal(&spec) {
        Ok(proposal) => ctx.gateway.endorse(&proposal).await,
        Err(e) => Err(e),
    };
    let prepared = match prepared {
        Ok(tx) => tx,
        Err(e) => return attempt_failed(ctx, &cmd, &e).await,
    };
    ctx.outage_streak.store(0, Ordering::Relaxed);
    crate::kill_point!(crate::failpoints::AFTER_ENDORSE);
    // The prepared transaction is on disk before it can reach the orderer.
    if let Err(e) = ctx
        .outbox
        .mark_prepared(cmd.id, prepared.tx_id().to_owned(), prepared.to_bytes())
        .await
    {
        if moved_on(&e) {
            // A late commit of an earlier attempt settled the command meanwhile.
            tracing::info!(error = %e, "command settled elsewhere; not submitting");
            return;
        }
        // Nothing was submitted: the command is still a PENDING head; the dispatcher
        // hands it out again (a fresh endorsement) once storage works.
        tracing::warn!(error = %e, "cannot store the prepared transaction; not submitting");
        return;
    }
    tracing::debug!(tx_id = prepared.tx_id(), "prepared");
    crate::kill_point!(crate::failpoints::AFTER_PREPARE);
    resolve(ctx, &cmd, &prepared, Submission::First).await;
}

/// The resolution rule (module documentation) for `tx`, the stored transaction of `cmd`.
async fn resolve(ctx: &Ctx, cmd: &Command, tx: &PreparedTransaction, mut submission: Submission) {
    let tx_id = tx.tx_id();
    // SUBMITTED: the orderer took it; ask first. PREPARED or fresh: (re)submit first.
    let mut need_submit = cmd.status != Status::Submitted;
    let mut round: u32 = 0;
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        if round > 0 && settled_elsewhere(ctx, cmd, tx_id) {
            return;
        }
        if need_submit {
            match ctx.gateway.submit(tx).await {
                Ok(()) => {
                    crate::kill_point!(crate::failpoints::AFTER_SUBMIT);
                    need_submit = false;
                    if let Err(e) = ctx.outbox.mark_submitted(cmd.id).await
                        && !matches!(e, StorageError::IllegalTransition { .. })
                    {
                        // Submitted or not on disk, the tx id decides: keep resolving.
                        tracing::warn!(error = %e, tx_id, "cannot record the submission");
                    }
                }
                Err(e) if submission == Submission::First && e.class() == ErrorClass::Permanent => {
                    // The orderer refused the first and only submission of this tx id: it
                    // cannot commit.
                    return dead_letter(ctx, cmd, command_error(&e)).await;
                }
                Err(e) => {
                    // Maybe ordered, maybe not: submit the same bytes again after a pause
                    // (a duplicate changes nothing), then ask the ledger.
                    tracing::info!(error = %e, tx_id, "submission outcome unknown");
                    ctx.metrics.outcome("ambiguous");
                    submission = Submission::Again;
                    round = round.saturating_add(1);
                    if !pause(ctx, round).await {
                        return;
                    }
                    continue;
                }
            }
            submission = Submission::Again;
        }
        match ctx.gateway.commit_status(tx_id).await {
            Ok(status) => {
                let code = TxValidationCode::try_from(status.code).ok();
                match code {
                    Some(TxValidationCode::Valid) => {
                        return committed(ctx, cmd, tx, status.block_number).await;
                    }
                    Some(
                        TxValidationCode::MvccReadConflict | TxValidationCode::PhantomReadConflict,
                    ) => {
                        let error = CommandError {
                            stage: "commit".into(),
                            code: code_name(status.code),
                            message: format!(
                                "transaction {tx_id} in block {} was invalidated by a concurrent \
                                 change; endorsing again",
                                status.block_number
                            ),
                        };
                        return retry_or_dead_letter(ctx, cmd, error).await;
                    }
                    Some(TxValidationCode::DuplicateTxid) => {
                        // Not final: says only that the id exists. Ask again.
                        tracing::info!(tx_id, "commit status DUPLICATE_TXID; asking again");
                    }
                    _ => {
                        let error = CommandError {
                            stage: "commit".into(),
                            code: code_name(status.code),
                            message: format!(
                                "transaction {tx_id} was marked {} in block {}",
                                code_name(status.code),
                                status.block_number
                            ),
                        };
                        return dead_letter(ctx, cmd, error).await;
                    }
                }
            }
            Err(e) => {
                // A timeout or an unreachable peer: the transaction may still commit. Resubmit
                // the same bytes (harmless if it was ordered) and ask again.
                tracing::info!(error = %e, tx_id, "commit status unknown; resolving again");
                ctx.metrics.outcome("ambiguous");
                need_submit = true;
            }
        }
        round = round.saturating_add(1);
        if !pause(ctx, round).await {
            return;
        }
    }
}

/// Whether the command no longer waits on `tx_id`: a late commit of another of its tx ids,
/// or the projector, recorded it (COMMITTED, PROJECTED, FAILED, or another tx id).
fn settled_elsewhere(ctx: &Ctx, cmd: &Command, tx_id: &str) -> bool {
    match ctx.outbox.get(cmd.id) {
        Ok(now) if !now.status.is_in_flight() || now.txid.as_deref() != Some(tx_id) => {
            tracing::info!(status = %now.status, txid = ?now.txid, "command settled elsewhere; stop resolving {tx_id}");
            true
        }
        _ => false,
    }
}

/// A transition refused because the command moved on meanwhile (a late commit recorded
/// by the projector): nothing to retry.
fn moved_on(e: &StorageError) -> bool {
    matches!(e, StorageError::IllegalTransition { .. })
}

/// Waits out round `round` of resolving; false when the submitter stops meanwhile.
async fn pause(ctx: &Ctx, round: u32) -> bool {
    let delay = ctx.config.resolve_backoff.delay(round);
    tokio::select! {
        () = ctx.shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// An attempt failed before anything could commit (endorsement, proposal building).
async fn attempt_failed(ctx: &Ctx, cmd: &Command, e: &GatewayError) {
    let error = command_error(e);
    if e.is_peer_unreachable() {
        return postpone(ctx, cmd, error).await;
    }
    match e.class() {
        ErrorClass::Transient | ErrorClass::Reendorse => {
            retry_or_dead_letter(ctx, cmd, error).await
        }
        ErrorClass::Permanent | ErrorClass::AlreadyCommitted => dead_letter(ctx, cmd, error).await,
    }
}

async fn retry_or_dead_letter(ctx: &Ctx, cmd: &Command, error: CommandError) {
    let attempt = cmd.attempts.saturating_add(1);
    if attempt >= ctx.config.max_attempts {
        let error = CommandError {
            message: format!(
                "{} (after {attempt} attempts; max_attempts = {})",
                error.message, ctx.config.max_attempts
            ),
            ..error
        };
        return dead_letter(ctx, cmd, error).await;
    }
    let delay = ctx.config.backoff.delay(attempt);
    let at =
        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::zero());
    tracing::info!(attempt, ?delay, stage = %error.stage, code = %error.code, "attempt failed; retrying");
    match ctx.outbox.schedule_retry(cmd.id, error, at).await {
        Ok(_) => {
            ctx.metrics.outcome("retried");
            // The dispatcher sleeps until the earliest due time; make it recompute that.
            ctx.waker.wake();
        }
        Err(e) if moved_on(&e) => {
            tracing::info!(error = %e, "command settled elsewhere; no retry");
        }
        Err(e) => {
            // The command keeps its state on disk; the dispatcher resolves it again.
            tracing::warn!(error = %e, "cannot schedule the retry");
            let _ = pause(ctx, 4).await;
        }
    }
}

/// The longest a command waits between two tries while no peer can be reached: short, so
/// commands resume within seconds of the peer's return (the load on a down peer is at most
/// `max_in_flight` connection attempts per this period).
const OUTAGE_MAX_DELAY: Duration = Duration::from_secs(5);

/// An attempt that reached no peer (the peer, or every endorser, is down) says nothing about
/// the command: it is tried again after a jittered backoff on the submitter-wide outage
/// streak, without counting an attempt, so an outage of any length dead-letters nothing.
async fn postpone(ctx: &Ctx, cmd: &Command, error: CommandError) {
    let streak = ctx
        .outage_streak
        .fetch_add(1, Ordering::Relaxed)
        .saturating_add(1);
    let delay = ctx.config.backoff.delay(streak).min(OUTAGE_MAX_DELAY);
    let at =
        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::zero());
    tracing::info!(?delay, stage = %error.stage, code = %error.code, "no peer reachable; postponing");
    match ctx.outbox.postpone(cmd.id, error, at).await {
        Ok(_) => {
            ctx.metrics.outcome("postponed");
            ctx.waker.wake();
        }
        Err(e) if moved_on(&e) => {
            tracing::info!(error = %e, "command settled elsewhere; not postponed");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot postpone the command");
            let _ = pause(ctx, 4).await;
        }
    }
}

async fn dead_letter(ctx: &Ctx, cmd: &Command, error: CommandError) {
    tracing::warn!(stage = %error.stage, code = %error.code, message = %error.message, "dead-lettering the command");
    match ctx.outbox.mark_failed(cmd.id, error).await {
        Ok(_) => {
            ctx.metrics.outcome("dead_lettered");
            // The partition's next command became due.
            ctx.waker.wake();
        }
        Err(e) if moved_on(&e) => {
            tracing::info!(error = %e, "command settled elsewhere; not dead-lettered");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot dead-letter the command");
            let _ = pause(ctx, 4).await;
        }
    }
}

async fn committed(ctx: &Ctx, cmd: &Command, tx: &PreparedTransaction, block: u64) {
    crate::kill_point!(crate::failpoints::BEFORE_MARK_COMMITTED);
    // Fabric's commit status says the block, not the index in it (the projector records
    // that); the chaincode's response is the endorsed one, carried in the envelope.
    let commit = LedgerCommit {
        txid: tx.tx_id().to_owned(),
        block_number: block,
        tx_index: None,
        result: Some(ChaincodeResult::new(None, tx.result())),
    };
    match ctx.outbox.mark_committed_tx(cmd.id, commit).await {
        Ok(c) => {
            ctx.metrics.outcome("committed");
            if let Ok(latency) = (Utc::now() - c.created_at).to_std() {
                ctx.metrics.commit_seconds.observe(latency.as_secs_f64());
            }
            tracing::debug!(block, "committed");
            // The partition's next command became due.
            ctx.waker.wake();
        }
        Err(e) => {
            // Committed on the ledger whatever the outbox says; the dispatcher resolves it
            // again by its tx id (after a pause, so a broken disk is not hammered).
            tracing::warn!(error = %e, block, "cannot record the commit");
            let _ = pause(ctx, 4).await;
        }
    }
}

/// The peer's message and stage, for the command's record.
fn command_error(e: &GatewayError) -> CommandError {
    let code = match (e.validation_code(), e.grpc_code()) {
        (Some(v), _) => code_name(v),
        (None, Some(c)) => format!("{c:?}").to_ascii_uppercase(),
        (None, None) => "ERROR".to_owned(),
    };
    let message = e
        .chaincode_message()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    CommandError {
        stage: e.stage().to_string().replace(' ', "_"),
        code,
        message,
    }
}

fn code_name(code: i32) -> String {
    TxValidationCode::try_from(code)
        .map(|c| c.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("CODE_{code}"))
}
