//! The writer: one thread, group commit.
//!
//! Every change goes through [`Db::write`]: the caller hands a closure to a dedicated writer
//! thread over a bounded queue and awaits a oneshot reply. The writer drains whatever is
//! queued (up to [`DbOptions::max_batch`]), runs the closures one after another against a
//! [`Round`] — an in-memory overlay over the database, so each closure sees the effects of
//! the closures before it in the same round — then writes the whole round as **one
//! `WriteBatch` with `sync = true`** (the WAL is fsync'd) and only then answers every caller.
//! So:
//! - many concurrent callers cost one fsync, not one each;
//! - read-check-write sequences (idempotency check and insert, partition head checks) are
//!   race-free: there is exactly one writer and it sees its own pending writes;
//! - a change is either wholly in the batch or not at all (a closure that fails is rolled
//!   back to its savepoint), and the batch is atomic on disk, indexes included;
//! - nobody is answered before the batch holding their change is durable, including callers
//!   that were answered from another caller's not-yet-durable change (an idempotent repeat
//!   in the same round).
//!
//! If the write fails (I/O error, disk full), every caller of the round gets
//! [`StorageError::Unavailable`] and nothing of the round is known to be on disk (a batch
//! whose WAL record was whole when the sync failed may still be found after a reopen: its
//! callers were told "unavailable", and an idempotent retry finds it). A failed write is
//! RocksDB's sticky background error: the writer then ends its rounds and recovers by
//! reopening the database ([`super::recovery`]), refusing writes until it has.
//!
//! The fsync is done by a second thread: while round *k* is being synced, the writer
//! already runs the changes of round *k+1*, reading through round *k*'s pending writes
//! (CPU and disk overlap). Round *k+1* is handed to RocksDB only once round *k* is durable,
//! and if round *k* fails, round *k+1* fails with it (it was computed on top of it).
//!
//! Modules may keep state beside the database on the writer thread (the outbox's partition
//! lengths): a round changes it through its own delta, which the writer commits only once
//! the round's batch is durable and drops when it fails. See [`super::extension`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::extension::Extensions;
use super::round::{Overlay, Round};
use super::{Db, Opener, RawDb, Shared, recovery};
use crate::error::{Result, StorageError};

/// What the writer calls back once the round's batch is written (or failed).
pub(super) type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// A change queued for the writer thread.
pub(super) trait Change: Send {
    /// Runs the change in `round`; returns how to answer its caller once the round is
    /// written (`None` only when the change panicked and was rolled back).
    fn run(self: Box<Self>, round: &mut Round<'_>) -> Option<Completion>;
    /// Answers the caller with `error` without running the change (writes are blocked).
    fn refuse(self: Box<Self>, error: StorageError);
}

/// A change as queued.
pub(super) type Op = Box<dyn Change>;

/// The change of one [`Db::write`] call and where to send its result.
struct WriteOp<T, F> {
    change: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Change for WriteOp<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
{
    fn run(self: Box<Self>, round: &mut Round<'_>) -> Option<Completion> {
        let WriteOp { change, reply } = *self;
        let savepoint = round.savepoint();
        match change(round) {
            Ok(value) => Some(Box::new(move |written: Result<()>| {
                let _ = reply.send(written.map(|()| value));
            }) as Completion),
            // A refusal is answered with the round too: it may rest on writes of the
            // round in flight, and if those fail, the answer is "unavailable" instead.
            Err(e) => {
                round.rollback(savepoint);
                Some(Box::new(move |written: Result<()>| {
                    let _ = reply.send(written.and(Err(e)));
                }) as Completion)
            }
        }
    }

    fn refuse(self: Box<Self>, error: StorageError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Starts the writer thread over the database in `shared` (opened by `opener`, whose
/// extensions' committed state is `extensions`): its queue and its handle.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    opener: Opener,
    extensions: Extensions,
) -> Result<(mpsc::Sender<Op>, JoinHandle<()>)> {
    let (sender, mut receiver) = mpsc::channel::<Op>(opener.options.queue_capacity);
    let shared = Arc::clone(shared);
    let writer = std::thread::Builder::new()
        .name("gxd-storage-writer".to_owned())
        .spawn(move || {
            let mut state = WriterState {
                overlay: Overlay::new(&opener.families),
                extensions,
            };
            let max_batch = opener.options.max_batch;
            loop {
                let ended = match shared.current() {
                    Some(raw) => writer_loop(raw, &mut receiver, max_batch, &mut state, &shared),
                    // A reopen that failed half-way (not reached: recovery returns only
                    // with a database open).
                    None => Ended::Sticky(StorageError::Unavailable {
                        message: "the database is not open".to_owned(),
                        source: None,
                    }),
                };
                match ended {
                    Ended::Closed => break,
                    Ended::Sticky(cause) => {
                        if !recovery::recover(&shared, &opener, &mut receiver, &mut state, &cause) {
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| StorageError::Unavailable {
            message: format!("cannot start the storage writer thread: {e}"),
            source: None,
        })?;
    Ok((sender, writer))
}

/// Why [`writer_loop`] returned.
enum Ended {
    /// The queue is closed (every `Db` handle dropped) and drained.
    Closed,
    /// A write failed with a sticky error (this one): the database must be reopened.
    Sticky(StorageError),
}

impl Db {
    /// Runs `change` on the writer thread inside a round and returns its result once the
    /// round's batch is durable. If `change` fails, its writes are rolled back and its error
    /// returned; if the batch write fails, [`StorageError::Unavailable`].
    ///
    /// `change` must not capture a `Db` (it would be dropped on the writer thread).
    pub(crate) async fn write<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(WriteOp { change, reply });
        let sender = self
            .inner
            .sender
            .as_ref()
            .ok_or_else(StorageError::writer_stopped)?;
        sender
            .send(op)
            .await
            .map_err(|_| StorageError::writer_stopped())?;
        answer.await.map_err(|_| StorageError::writer_stopped())?
    }
}

/// Outcome of writing one batch: the result for the callers, and whether the batch is on
/// disk (an error reported after the write leaves it durable).
type WriteOutcome = (Result<()>, bool);

/// A round whose batch is being written and synced by the sync thread.
struct InFlight {
    tag: u64,
    completions: Vec<Completion>,
    result: std::sync::mpsc::Receiver<WriteOutcome>,
}

/// What the writer keeps between rounds: what the round in flight and the round being
/// prepared have changed, not yet known to be on disk.
pub(super) struct WriterState {
    /// Their writes.
    pub(super) overlay: Overlay,
    /// Their changes to the modules' writer-side state.
    pub(super) extensions: Extensions,
}

impl WriterState {
    /// The round `tag` (the round in flight) is on disk: its writes are now the database's,
    /// its extension deltas are committed.
    pub(super) fn settle(&mut self, tag: u64) {
        self.overlay.settle(tag);
        self.extensions.settle();
    }

    /// A write failed: forget everything not known to be on disk.
    pub(super) fn reset(&mut self) {
        self.overlay.clear();
        self.extensions.reset();
    }
}

/// Joins the sync thread when the writer stops, also when it unwinds, so that the RocksDB
/// handle is released by the time the writer thread is joined.
struct SyncThread {
    sender: Option<std::sync::mpsc::Sender<(WriteBatch, std::sync::mpsc::Sender<WriteOutcome>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn start_sync_thread(raw: Arc<RawDb>) -> std::io::Result<SyncThread> {
    let (sender, receiver) =
        std::sync::mpsc::channel::<(WriteBatch, std::sync::mpsc::Sender<WriteOutcome>)>();
    let handle = std::thread::Builder::new()
        .name("gxd-storage-sync".to_owned())
        .spawn(move || {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            while let Ok((batch, reply)) = receiver.recv() {
                let _ = reply.send(write_synced(&raw, batch, &sync));
            }
        })?;
    Ok(SyncThread {
        sender: Some(sender),
        handle: Some(handle),
    })
}

/// Writes one batch with `sync = true`.
pub(super) fn write_synced(raw: &RawDb, batch: WriteBatch, sync: &WriteOptions) -> WriteOutcome {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("storage::writer::before_write", |_| (
        Err(StorageError::Unavailable {
            message: "failpoint storage::writer::before_write".to_owned(),
            source: None,
        }),
        false
    ));
    if let Err(e) = raw.write_opt(batch, sync) {
        return (Err(StorageError::from(e)), false);
    }
    #[cfg(feature = "failpoints")]
    fail::fail_point!("storage::writer::after_write", |_| (
        Err(StorageError::Unavailable {
            message: "failpoint storage::writer::after_write".to_owned(),
            source: None,
        }),
        true
    ));
    (Ok(()), true)
}

/// Waits for the round in flight and answers its callers. Returns whether it is durable;
/// a failure that RocksDB keeps as a sticky background error goes to `sticky`.
fn finish(
    state: &mut WriterState,
    in_flight: InFlight,
    last_write_ok: &AtomicBool,
    sticky: &mut Option<StorageError>,
) -> bool {
    let (result, durable) = in_flight
        .result
        .recv()
        .unwrap_or_else(|_| (Err(StorageError::writer_stopped()), false));
    last_write_ok.store(durable, Ordering::Relaxed);
    if durable {
        state.settle(in_flight.tag);
    } else {
        state.reset();
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, changes = in_flight.completions.len(), "storage write failed");
        if !durable && e.is_sticky_write_error() {
            *sticky = Some(e.clone());
        }
    }
    for done in in_flight.completions {
        done(result.clone());
    }
    durable
}

/// The writer's rounds over one open database: drains the queue into rounds, runs each
/// round's changes, and hands the round's batch to the sync thread. While one round is
/// being synced, the next one is prepared (reading through the first one's pending
/// writes); it is written only after the first is durable, and fails with it if the first
/// fails. Returns when the queue is closed, or after a sticky write error (with no round in
/// flight and the sync thread stopped, so `raw` is no longer used here).
fn writer_loop(
    raw: Arc<RawDb>,
    receiver: &mut mpsc::Receiver<Op>,
    max_batch: usize,
    state: &mut WriterState,
    shared: &Shared,
) -> Ended {
    let last_write_ok = &shared.last_write_ok;
    let syncer = match start_sync_thread(Arc::clone(&raw)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the storage sync thread");
            return Ended::Closed;
        }
    };
    let mut in_flight: Option<InFlight> = None;
    let mut next_tag: u64 = 1;
    let mut ops: Vec<Op> = Vec::with_capacity(max_batch);
    let mut sticky: Option<StorageError> = None;
    loop {
        // After a sticky error no round is in flight (the failed one was finished, and a
        // round prepared on top of it failed with it): leave, to reopen.
        if in_flight.is_none()
            && let Some(cause) = sticky.take()
        {
            return Ended::Sticky(cause);
        }
        // Wait for work; with a round in flight, finish it first when there is none.
        match in_flight.take() {
            None => match receiver.blocking_recv() {
                Some(op) => ops.push(op),
                None => break,
            },
            Some(f) => match receiver.try_recv() {
                Ok(op) => {
                    ops.push(op);
                    in_flight = Some(f);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    finish(state, f, last_write_ok, &mut sticky);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    finish(state, f, last_write_ok, &mut sticky);
                    break;
                }
            },
        }
        while ops.len() < max_batch {
            match receiver.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        #[cfg(feature = "failpoints")]
        fail::fail_point!("storage::writer::round");

        let tag = next_tag;
        next_tag += 1;
        let mut completions: Vec<Completion> = Vec::with_capacity(ops.len());
        let batch = {
            let mut round = Round::new(&raw, state, tag);
            for op in ops.drain(..) {
                let savepoint = round.savepoint();
                match std::panic::catch_unwind(AssertUnwindSafe(|| op.run(&mut round))) {
                    Ok(Some(done)) => completions.push(done),
                    Ok(None) => {}
                    Err(_) => {
                        // A bug in one change must not poison the others: undo it; its
                        // caller gets "unavailable" (its reply sender was dropped).
                        round.rollback(savepoint);
                        tracing::error!("a storage change panicked; it was rolled back");
                    }
                }
            }
            round.batch()
        };

        // This round was prepared on top of the round in flight: that one must be on disk
        // before this one is written.
        if let Some(prev) = in_flight.take()
            && !finish(state, prev, last_write_ok, &mut sticky)
        {
            let e = StorageError::Unavailable {
                message: "an earlier write of the same moment failed".to_owned(),
                source: None,
            };
            for done in completions {
                done(Err(e.clone()));
            }
            continue;
        }
        match batch {
            Err(e) => {
                state.reset();
                for done in completions {
                    done(Err(e.clone()));
                }
            }
            // Nothing to write (idempotent repeats, refused changes): answer now; what
            // they read is on disk.
            Ok(None) => {
                state.extensions.discard_round();
                for done in completions {
                    done(Ok(()));
                }
            }
            Ok(Some(batch)) => {
                let (reply, result) = std::sync::mpsc::channel();
                let sent = syncer
                    .sender
                    .as_ref()
                    .is_some_and(|s| s.send((batch, reply)).is_ok());
                if sent {
                    state.extensions.launch();
                    in_flight = Some(InFlight {
                        tag,
                        completions,
                        result,
                    });
                } else {
                    state.reset();
                    for done in completions {
                        done(Err(StorageError::writer_stopped()));
                    }
                }
            }
        }
    }
    drop(syncer);
    Ended::Closed
}
