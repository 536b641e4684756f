//! The submitter: brings each accepted command to the ledger exactly once, in partition
//! order.
//!
//! # Dispatch
//! One dispatcher loop claims due commands — per partition only the PENDING head
//! ([`Outbox::next_due`]) — and runs each in its own task, at most
//! [`SubmitterConfig::max_in_flight`] at a time. A claim lasts as long as its task: a claimed
//! head is not handed out again while its task runs, and the outbox refuses a second
//! in-flight command per partition anyway. The loop sleeps until the earliest due time
//! ([`Outbox::next_due_at`]), or until [`Waker::wake`] says new work became due — called
//! after the durable write that made it due (an enqueue's reply, a commit that promotes the
//! next head) — with [`SubmitterConfig::idle_poll`] as a safety net, not as the mechanism.
//! A wallet's commands are one partition, so gxd never races itself into MVCC conflicts.
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

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gxd_fabric::client::{ErrorClass, Gateway, GatewayError, PreparedTransaction};
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::tx::ProposalSpec;
use gxd_storage::StorageError;
use gxd_storage::outbox::{Command, CommandError, CommandId, Outbox, Status};
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

        let result = loop {
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
                // Claimed heads stay in the due index until prepared: ask for that many more.
                let want = ctx.config.max_in_flight - tasks.len() + claimed.len();
                match ctx.outbox.next_due(want, now) {
                    Ok(due) => {
                        for cmd in due {
                            if tasks.len() >= ctx.config.max_in_flight {
                                break;
                            }
                            if claimed.insert(cmd.id) {
                                spawn(&mut tasks, &ctx, cmd);
                            }
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "cannot read due commands; retrying");
                    }
                    Err(e) => break Err(e.into()),
                }
                if let Ok(Some(at)) = ctx.outbox.next_due_at()
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
                Some(done) = tasks.join_next() => match done {
                    Ok(id) => {
                        claimed.remove(&id);
                        // A worker that could not record its outcome (a storage error) leaves
                        // its command PREPARED or SUBMITTED: resolve it again by its tx id.
                        if let Ok(c) = ctx.outbox.get(id)
                            && c.status.is_in_flight()
                            && !shutdown.is_cancelled()
                        {
                            recovered.push_back(c);
                        }
                    }
                    Err(e) => {
                        // A worker panicked: its claim cannot be released safely (its command
                        // may be mid-flight); stop, so supervision restarts a clean process.
                        break Err(SubmitterError::Config(format!("submitter worker failed: {e}")));
                    }
                },
                () = ctx.waker.woken() => {}
                () = tokio::time::sleep(sleep_for) => {}
            }
        };
        ctx.shutdown.cancel();
        // Every state is on disk; a worker stopped between two steps is resolved next time.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        ctx.metrics.in_flight.set(0);
        result
    }
}

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
        Status::Committed | Status::Failed => {}
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
    crate::kill_point!(crate::failpoints::AFTER_ENDORSE);
    // The prepared transaction is on disk before it can reach the orderer.
    if let Err(e) = ctx
        .outbox
        .mark_prepared(cmd.id, prepared.tx_id().to_owned(), prepared.to_bytes())
        .await
    {
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
                        return committed(ctx, cmd, status.block_number).await;
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
        Err(e) => {
            // The command keeps its state on disk; the dispatcher resolves it again.
            tracing::warn!(error = %e, "cannot schedule the retry");
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
        Err(e) => {
            tracing::warn!(error = %e, "cannot dead-letter the command");
            let _ = pause(ctx, 4).await;
        }
    }
}

async fn committed(ctx: &Ctx, cmd: &Command, block: u64) {
    crate::kill_point!(crate::failpoints::BEFORE_MARK_COMMITTED);
    match ctx.outbox.mark_committed(cmd.id, block).await {
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
