//! Recovery from a sticky write error, without an operator.
//!
//! When a WAL write fails (disk full, I/O error), RocksDB keeps the error as a sticky
//! background error: every later write fails the same way, reads still work. The C API has
//! no `DB::Resume`; RocksDB's own automatic recovery (its `ErrorHandler`, with the default
//! `SstFileManager` polling free space) is attempted only for a no-space error, not for
//! other I/O errors (`EIO`, `EFBIG`), and on a full tmpfs under the daemon it was not seen
//! to recover within 30 s. So the writer recovers the way a restart would — the path the
//! crash tests already prove — in-process:
//!
//! 1. it stops its rounds ([`super::writer`]): no round is in flight, the sync thread is
//!    joined, and from now on every queued change is refused at once with
//!    [`StorageError::Unavailable`] (the API's 503 + Retry-After; readiness is off);
//! 2. every attempt (after 1 s, then doubling up to 30 s) first probes the directory by
//!    writing, syncing and removing a 4 MiB file, so a disk that is still full does not
//!    cost the readers their database;
//! 3. it takes the handle out of the [`Db`](super::Db) (readers get `Unavailable` for the
//!    moment of the reopen), waits a bounded time for the readers' handles to go, closes
//!    RocksDB (releasing its LOCK) and opens it again the same way ([`Opener`]: same path,
//!    column families and options). RocksDB replays the WAL up to its last whole record:
//!    a failed batch whose record was whole is found again (its callers were told
//!    "unavailable"; an idempotent retry finds it), a torn one is dropped;
//! 4. the writer-side state is reloaded from the reopened database, not kept: the
//!    overlay is emptied and every registered extension is opened again
//!    ([`super::Extension::open`]), because the failed round may or may not be on disk after
//!    the replay, and memory must say what the disk says;
//! 5. the new handle goes in, writes are accepted again, readiness comes back.
//!
//! Every attempt and the recovery are logged and counted ([`super::Db::write_status`]).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::writer::{Op, WriterState};
use super::{Opener, RawDb, Shared};
use crate::error::{Result, StorageError};

/// First wait before a reopen attempt.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long an attempt waits for readers to drop their handles of the old database.
const READERS_WAIT: Duration = Duration::from_secs(5);
/// How often the queue is looked at while waiting (changes are refused within this).
const POLL: Duration = Duration::from_millis(10);
/// Bytes the probe writes before an attempt: room for a fresh WAL, MANIFEST and OPTIONS
/// file, and a sign that the disk is not just one block short of full.
const PROBE_BYTES: usize = 4 << 20;
/// The probe's file in the RocksDB directory (RocksDB leaves files it does not know alone).
const PROBE_FILE: &str = "gxd-write-probe";

/// The wait before attempt `attempt` (1-based): 1 s, 2 s, 4 s, ... at most 30 s.
pub(super) fn retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
}

/// Refuses writes and reopens the database until it succeeds (`true`: the database is open
/// again, `state` reloaded from it) or the queue is closed (`false`: every `Db` is gone).
pub(super) fn recover(
    shared: &Shared,
    opener: &Opener,
    receiver: &mut mpsc::Receiver<Op>,
    state: &mut WriterState,
    cause: &StorageError,
) -> bool {
    shared.write_blocked.store(true, Ordering::Relaxed);
    shared.last_write_ok.store(false, Ordering::Relaxed);
    let started = Instant::now();
    tracing::error!(
        error = %cause,
        "storage writes suspended after a write error (disk full or I/O error); \
         refusing writes and reopening the database once it can be written"
    );
    let reason = match cause {
        StorageError::Unavailable { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let refusal = StorageError::Unavailable {
        message: format!("writes are suspended until the database is reopened after: {reason}"),
        source: None,
    };
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let delay = retry_delay(attempt);
        if !refuse_for(receiver, delay, &refusal) {
            return false;
        }
        shared.recovery_attempts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(attempt, "reopening the database after a write error");
        match reopen(shared, opener, state) {
            Ok(()) => {
                shared.last_write_ok.store(true, Ordering::Relaxed);
                shared.write_blocked.store(false, Ordering::Relaxed);
                shared.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    attempt,
                    blocked_seconds = started.elapsed().as_secs_f64(),
                    "storage recovered: the database was reopened; writes are accepted again"
                );
                return true;
            }
            Err(e) => tracing::warn!(
                attempt,
                error = %e,
                next_attempt_in_seconds = retry_delay(attempt.saturating_add(1)).as_secs(),
                "cannot reopen the database yet; writes stay suspended"
            ),
        }
    }
}

/// Refuses every change queued during `wait`. `false` when the queue is closed.
fn refuse_for(receiver: &mut mpsc::Receiver<Op>, wait: Duration, refusal: &StorageError) -> bool {
    let until = Instant::now() + wait;
    loop {
        loop {
            match receiver.try_recv() {
                Ok(op) => op.refuse(refusal.clone()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(POLL.min(until - now));
    }
}

/// One attempt: probe, close the old database, open it again, reload the writer's state.
fn reopen(shared: &Shared, opener: &Opener, state: &mut WriterState) -> Result<()> {
    probe(&opener.path)?;
    if let Some(old) = shared.take() {
        match sole_owner(old, READERS_WAIT) {
            // Dropping the last handle closes RocksDB and releases its LOCK.
            Ok(old) => drop(old),
            Err(old) => {
                shared.put(old);
                return Err(StorageError::Unavailable {
                    message: format!(
                        "readers still hold the database after {READERS_WAIT:?}; not reopened"
                    ),
                    source: None,
                });
            }
        }
    }
    // From here until `put`, readers get "unavailable"; if the open fails, they do until an
    // attempt succeeds.
    let (raw, extensions) = opener.open()?;
    state.overlay.clear();
    state.extensions = extensions;
    shared.put(Arc::new(raw));
    Ok(())
}

/// The database, once `handle` is its last handle; `handle` back after `wait`.
fn sole_owner(mut handle: Arc<RawDb>, wait: Duration) -> Result<RawDb, Arc<RawDb>> {
    let until = Instant::now() + wait;
    loop {
        match Arc::try_unwrap(handle) {
            Ok(raw) => return Ok(raw),
            Err(h) if Instant::now() >= until => return Err(h),
            Err(h) => {
                handle = h;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Writes, syncs and removes [`PROBE_FILE`] of [`PROBE_BYTES`] in `dir`: whether the disk
/// takes writes again.
fn probe(dir: &Path) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed).map_err(|e| StorageError::Unavailable {
        message: format!("the database directory does not take writes yet: {e}"),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_from_one_second_up_to_thirty() {
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(0), FIRST_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
