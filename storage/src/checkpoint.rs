//! The checkpoint log: per channel, the chain of blocks the projector has applied.
//!
//! Append-only per channel: block `n + 1` may follow block `n` only if its previous hash is
//! block `n`'s header hash; a gap or a mismatch is refused with
//! [`StorageError::CheckpointRefused`] saying which. An empty log accepts block 0 (the
//! genesis block). Appending the last block again, identically, is a no-op (a projector
//! that crashed after appending may repeat itself). [`CheckpointLog::truncate_after`] and
//! [`CheckpointLog::reset`] support projection rebuilds.
//!
//! Appends go through the database's group-committing writer: a checkpoint is fsync'd
//! before `append` returns, and the continuity check and the append are one atomic step.
//!
//! Key: (channel, block number big-endian); value: format byte `0x01` + protobuf
//! [`CheckpointPb`] (evolution rules as in [`crate::outbox::record`]).

use chrono::{DateTime, Utc};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::db::{Cf, Db, Round, Schema, Usage, cf_handle};
use crate::error::{CheckpointRefusal, Result, StorageError};
use crate::outbox::record::{decode_versioned, encode_v1};

/// (channel, block number) → checkpoint record.
const CHECKPOINTS: Cf = Cf::new("checkpoints", Usage::Small { compress: true });

/// What the checkpoint log keeps in the database: one column family.
pub(crate) const SCHEMA: Schema = Schema {
    families: &[CHECKPOINTS],
    extensions: &[],
};

/// Longest channel name (bytes).
const MAX_CHANNEL_BYTES: usize = 249;

/// A block to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckpoint {
    /// Block number.
    pub number: u64,
    /// Hash of the block header.
    pub header_hash: Vec<u8>,
    /// The previous block's header hash, as carried by this block's header.
    pub previous_hash: Vec<u8>,
    /// Transactions in the block.
    pub tx_count: u64,
}

/// A recorded block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Channel.
    pub channel: String,
    /// Block number.
    pub number: u64,
    /// Header hash.
    #[serde(with = "crate::db::hex_bytes")]
    pub header_hash: Vec<u8>,
    /// Previous block's header hash.
    #[serde(with = "crate::db::hex_bytes")]
    pub previous_hash: Vec<u8>,
    /// Transactions in the block.
    pub tx_count: u64,
    /// When the projector applied it.
    pub applied_at: DateTime<Utc>,
}

/// Result of [`CheckpointLog::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Appended.
    Appended(Checkpoint),
    /// The same block was already the last one; nothing changed.
    AlreadyPresent(Checkpoint),
}

impl AppendOutcome {
    /// The checkpoint in the log.
    pub fn checkpoint(&self) -> &Checkpoint {
        match self {
            AppendOutcome::Appended(c) | AppendOutcome::AlreadyPresent(c) => c,
        }
    }
}

/// A checkpoint record (format 1).
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointPb {
    /// Block number (also in the key).
    #[prost(uint64, tag = "1")]
    pub number: u64,
    /// Header hash.
    #[prost(bytes = "vec", tag = "2")]
    pub header_hash: Vec<u8>,
    /// Previous hash.
    #[prost(bytes = "vec", tag = "3")]
    pub previous_hash: Vec<u8>,
    /// Transaction count.
    #[prost(uint64, tag = "4")]
    pub tx_count: u64,
    /// Applied at, ms since the epoch.
    #[prost(int64, tag = "5")]
    pub applied_at_ms: i64,
}

fn channel_prefix(channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + channel.len() + 8);
    let len = u16::try_from(channel.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(channel.as_bytes());
    k
}

fn key(channel: &str, number: u64) -> Vec<u8> {
    let mut k = channel_prefix(channel);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

fn decode(channel: &str, key: &[u8], bytes: &[u8]) -> Result<Checkpoint> {
    let pb: CheckpointPb = decode_versioned("checkpoints", key, bytes)?;
    let from_key = key
        .len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map(u64::from_be_bytes);
    if from_key != Some(pb.number) {
        return Err(StorageError::corrupt(
            "checkpoints",
            key,
            format!("record says block {} but the key differs", pb.number),
        ));
    }
    let applied_at = DateTime::from_timestamp_millis(pb.applied_at_ms)
        .ok_or_else(|| StorageError::corrupt("checkpoints", key, "applied_at out of range"))?;
    Ok(Checkpoint {
        channel: channel.to_owned(),
        number: pb.number,
        header_hash: pb.header_hash,
        previous_hash: pb.previous_hash,
        tx_count: pb.tx_count,
        applied_at,
    })
}

pub(crate) fn validate_channel(channel: &str) -> Result<()> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
        return Err(StorageError::InvalidInput(format!(
            "channel name must be 1..={MAX_CHANNEL_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The checkpoint log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckpointLog {
    db: Db,
}

impl CheckpointLog {
    /// The log in `db` (shared with the outbox).
    pub fn new(db: Db) -> Self {
        CheckpointLog { db }
    }

    /// Appends a block after checking continuity; durable when it returns.
    pub async fn append(&self, channel: &str, block: NewCheckpoint) -> Result<AppendOutcome> {
        validate_channel(channel)?;
        let channel = channel.to_owned();
        self.db
            .write(move |round| stage_append(round, &channel, block))
            .await
    }

    /// The last block of a channel.
    pub fn last(&self, channel: &str) -> Result<Option<Checkpoint>> {
        let raw = &*self.db.raw()?;
        let prefix = channel_prefix(channel);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.clone());
        let mut it = raw.raw_iterator_cf_opt(cf_handle(raw, CHECKPOINTS)?, ro);
        it.seek_for_prev(key(channel, u64::MAX));
        let out = match it.item() {
            Some((k, v)) if k.starts_with(&prefix) && k.len() == prefix.len() + 8 => {
                Some(decode(channel, k, v)?)
            }
            _ => None,
        };
        it.status()?;
        Ok(out)
    }

    /// Block `number` of a channel.
    pub fn get(&self, channel: &str, number: u64) -> Result<Option<Checkpoint>> {
        let raw = &*self.db.raw()?;
        let k = key(channel, number);
        match raw.get_pinned_cf(cf_handle(raw, CHECKPOINTS)?, &k)? {
            Some(v) => decode(channel, &k, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Blocks `from..=to` of a channel, at most `limit`, in order.
    pub fn range(
        &self,
        channel: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>> {
        let raw = &*self.db.raw()?;
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let mut ro = rocksdb::ReadOptions::default();
        let mut upper = channel_prefix(channel);
        match to.checked_add(1) {
            Some(end) => upper.extend_from_slice(&end.to_be_bytes()),
            None => upper.extend_from_slice(&[0xff; 9]),
        }
        ro.set_iterate_upper_bound(upper);
        let mut it = raw.raw_iterator_cf_opt(cf_handle(raw, CHECKPOINTS)?, ro);
        it.seek(key(channel, from));
        while let Some((k, v)) = it.item() {
            if out.len() >= limit {
                break;
            }
            out.push(decode(channel, k, v)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Removes the blocks after `number` (for a rebuild that restarts there). Returns how
    /// many were removed.
    pub async fn truncate_after(&self, channel: &str, number: u64) -> Result<u64> {
        validate_channel(channel)?;
        match number.checked_add(1) {
            Some(from) => self.remove_from(channel, from).await,
            None => Ok(0),
        }
    }

    /// Empties a channel's log (for a rebuild from block 0). Returns how many were removed.
    pub async fn reset(&self, channel: &str) -> Result<u64> {
        validate_channel(channel)?;
        self.remove_from(channel, 0).await
    }

    /// Removes blocks `from..` **from the top down**, a bounded chunk per durable round:
    /// whatever round a crash interrupts, what is left is a contiguous chain ending lower
    /// (never a hole under the tip), and running it again finishes the job.
    async fn remove_from(&self, channel: &str, from: u64) -> Result<u64> {
        const CHUNK: usize = 4096;
        let mut removed = 0;
        loop {
            let n = self.remove_top_chunk(channel, from, CHUNK).await?;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }

    /// One round: deletes the highest `chunk` blocks at or above `from`.
    async fn remove_top_chunk(&self, channel: &str, from: u64, chunk: usize) -> Result<u64> {
        let channel = channel.to_owned();
        self.db
            .write(move |round| {
                let lower = key(&channel, from);
                let mut upper = channel_prefix(&channel);
                upper.extend_from_slice(&[0xff; 9]);
                let Some((last_key, _)) = round.last_in_range(CHECKPOINTS, &lower, &upper)? else {
                    return Ok(0);
                };
                let last = number_of(&last_key)?;
                let span = u64::try_from(chunk.saturating_sub(1)).unwrap_or(u64::MAX);
                let low = last.saturating_sub(span).max(from);
                let end = match last.checked_add(1) {
                    Some(next) => key(&channel, next),
                    None => upper,
                };
                let entries = round.scan_range(CHECKPOINTS, &key(&channel, low), &end, chunk)?;
                let n = entries.len() as u64;
                for (k, _) in entries {
                    round.delete(CHECKPOINTS, k);
                }
                Ok(n)
            })
            .await
    }
}

/// The block number at the end of a checkpoint key.
fn number_of(key: &[u8]) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::corrupt("checkpoints", key, "key too short"))
}

pub(crate) fn stage_append(
    round: &mut Round<'_>,
    channel: &str,
    block: NewCheckpoint,
) -> Result<AppendOutcome> {
    let refuse = |reason| StorageError::CheckpointRefused {
        channel: channel.to_owned(),
        reason,
    };
    let prefix = channel_prefix(channel);
    let mut upper = prefix.clone();
    upper.extend_from_slice(&[0xff; 9]);
    let last = round
        .last_in_range(CHECKPOINTS, &prefix, &upper)?
        .map(|(k, v)| decode(channel, &k, &v))
        .transpose()?;
    match &last {
        Some(l) if block.number <= l.number => {
            // Offered again: the same block is a no-op, another one a conflict.
            let k = key(channel, block.number);
            if let Some(bytes) = round.get(CHECKPOINTS, &k)? {
                let stored = decode(channel, &k, &bytes)?;
                if stored.header_hash == block.header_hash
                    && stored.previous_hash == block.previous_hash
                    && stored.tx_count == block.tx_count
                {
                    return Ok(AppendOutcome::AlreadyPresent(stored));
                }
            }
            return Err(refuse(CheckpointRefusal::Conflict {
                number: block.number,
            }));
        }
        _ => {}
    }
    let expected = last.as_ref().map_or(0, |l| l.number + 1);
    if block.number != expected {
        return Err(refuse(CheckpointRefusal::Gap {
            expected,
            got: block.number,
        }));
    }
    if let Some(last) = &last
        && last.header_hash != block.previous_hash
    {
        return Err(refuse(CheckpointRefusal::PreviousHashMismatch {
            number: block.number,
            expected: hex::encode(&last.header_hash),
            got: hex::encode(&block.previous_hash),
        }));
    }
    let ms = Utc::now().timestamp_millis();
    let checkpoint = Checkpoint {
        channel: channel.to_owned(),
        number: block.number,
        header_hash: block.header_hash,
        previous_hash: block.previous_hash,
        tx_count: block.tx_count,
        applied_at: DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now),
    };
    let pb = CheckpointPb {
        number: checkpoint.number,
        header_hash: checkpoint.header_hash.clone(),
        previous_hash: checkpoint.previous_hash.clone(),
        tx_count: checkpoint.tx_count,
        applied_at_ms: ms,
    };
    failpoint_append()?;
    round.put(CHECKPOINTS, key(channel, checkpoint.number), encode_v1(&pb));
    Ok(AppendOutcome::Appended(checkpoint))
}

/// Simulated failure before an append is staged (feature `failpoints`).
fn failpoint_append() -> Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("storage::checkpoint::append", |_| Err(
        StorageError::Unavailable {
            message: "failpoint storage::checkpoint::append".to_owned(),
            source: None,
        }
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::DbOptions;

    fn block(number: u64) -> NewCheckpoint {
        let hash = |n: u64| vec![u8::try_from(n % 251).unwrap() + 1; 32];
        NewCheckpoint {
            number,
            header_hash: hash(number),
            previous_hash: if number == 0 {
                Vec::new()
            } else {
                hash(number - 1)
            },
            tx_count: 0,
        }
    }

    fn numbers(log: &CheckpointLog) -> Vec<u64> {
        log.range("ch", 0, u64::MAX, 1000)
            .unwrap()
            .into_iter()
            .map(|c| c.number)
            .collect()
    }

    #[tokio::test]
    async fn truncation_deletes_from_the_top_down_leaving_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let log = CheckpointLog::new(Db::open(dir.path(), &DbOptions::default()).unwrap());
        for n in 0..10 {
            log.append("ch", block(n)).await.unwrap();
        }
        // One round of a truncation to block 1 (a crash after it): the top three went,
        // the rest is still a chain from 0.
        assert_eq!(log.remove_top_chunk("ch", 2, 3).await.unwrap(), 3);
        assert_eq!(numbers(&log), (0..7).collect::<Vec<_>>());
        // The log still accepts the next block of what is left.
        assert_eq!(log.last("ch").unwrap().unwrap().number, 6);
        // Running it again finishes the job.
        while log.remove_top_chunk("ch", 2, 3).await.unwrap() > 0 {
            let left = numbers(&log);
            assert_eq!(left, (0..=*left.last().unwrap()).collect::<Vec<_>>());
        }
        assert_eq!(numbers(&log), vec![0, 1]);
        assert_eq!(log.reset("ch").await.unwrap(), 2);
        assert!(numbers(&log).is_empty());
        log.append("ch", block(0)).await.unwrap();
    }
}
