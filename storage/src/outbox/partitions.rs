//! The length of every partition queue, mirrored in memory, so that an enqueue (or a
//! requeue) learns whether its partitions are all empty — whether it heads them all, hence
//! is due at once — without an iterator seek per key.
//!
//! A writer-side [`Extension`] of the database: loaded at open from the `partition_queue`
//! family, changed by the changes that put or delete a queue entry ([`adjust`], always
//! paired with that put or delete), and committed only when their batch is durable; a
//! failed round's changes are dropped. So it always counts what is on disk, plus what the
//! rounds not yet durable have changed.

use std::collections::HashMap;

use super::cf;
use crate::db::{Extension, RawDb, Round, cf_handle};
use crate::error::{Result, StorageError};

/// Queued commands per partition (key: the partition's queue-key prefix,
/// [`super::keys::partition_prefix`]) as on disk. Partitions with none are absent.
pub(crate) struct PartitionLengths(HashMap<Vec<u8>, u64>);

impl Extension for PartitionLengths {
    /// Changes per partition.
    type Delta = HashMap<Vec<u8>, i64>;
    /// (partition prefix, +1 entered or -1 left).
    type Change = (Vec<u8>, i64);

    /// Counts the queued commands per partition (keys of `partition_queue` are a u16
    /// length, the partition, then a sequence number; the prefix is everything but the
    /// sequence).
    fn open(raw: &RawDb) -> Result<Self> {
        let mut lengths: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut it = raw.raw_iterator_cf(cf_handle(raw, cf::PARTITION_QUEUE)?);
        it.seek_to_first();
        while let Some(key) = it.key() {
            if key.len() < 2 + 8 {
                return Err(StorageError::corrupt(
                    "partition_queue",
                    key,
                    "key too short",
                ));
            }
            let prefix = &key[..key.len() - 8];
            *lengths.entry(prefix.to_vec()).or_insert(0) += 1;
            it.next();
        }
        it.status()?;
        Ok(PartitionLengths(lengths))
    }

    fn apply(delta: &mut Self::Delta, (prefix, n): &Self::Change) {
        *delta.entry(prefix.clone()).or_insert(0) += n;
    }

    fn revert(delta: &mut Self::Delta, (prefix, n): Self::Change) {
        if let Some(d) = delta.get_mut(&prefix) {
            *d -= n;
        }
    }

    fn commit(&mut self, delta: Self::Delta) {
        for (prefix, d) in delta {
            let n = self
                .0
                .get(&prefix)
                .copied()
                .unwrap_or(0)
                .saturating_add_signed(d);
            if n == 0 {
                self.0.remove(&prefix);
            } else {
                self.0.insert(prefix, n);
            }
        }
    }
}

/// Queued commands in a partition (by its queue-key prefix), the rounds not yet durable
/// included.
pub(super) fn len(round: &Round<'_>, prefix: &[u8]) -> Result<u64> {
    let view = round.extension::<PartitionLengths>()?;
    let base = view.committed.0.get(prefix).copied().unwrap_or(0);
    let in_flight = view.in_flight.get(prefix).copied().unwrap_or(0);
    let mine = view.round.get(prefix).copied().unwrap_or(0);
    Ok(base
        .saturating_add_signed(in_flight)
        .saturating_add_signed(mine))
}

/// Records that a command entered (+1) or left (-1) one partition's queue (a command with
/// several keys: once per key). Callers pair it with the matching put/delete in
/// `partition_queue`.
pub(super) fn adjust(round: &mut Round<'_>, prefix: Vec<u8>, delta: i64) -> Result<()> {
    round.change::<PartitionLengths>((prefix, delta))
}
