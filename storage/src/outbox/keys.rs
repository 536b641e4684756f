//! Key layouts of the outbox column families. All integers are big-endian so that the
//! byte order of keys is their numeric (time) order; variable-length strings are prefixed
//! by their length (u16) so that one string's keys never interleave with another's.

use super::{CommandId, Status};
use crate::error::{Result, StorageError};

/// Meta key of the next partition-queue sequence number.
pub(crate) const META_NEXT_SEQ: &[u8] = b"outbox/next_seq";

/// Meta key of the counter of a status.
pub(crate) fn meta_count(status: Status) -> Vec<u8> {
    let mut k = b"outbox/count/".to_vec();
    k.push(status.code());
    k
}

/// `commands`: the id.
pub(crate) fn command(id: CommandId) -> [u8; 16] {
    id.to_bytes()
}

/// Length-prefixed string (strings are validated to be < 64 KiB before they get here).
fn push_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `idempotency`: (tenant, request id).
pub(crate) fn idempotency(tenant: &str, request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + tenant.len() + request_id.len());
    push_str(&mut k, tenant);
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// `idempotency_expiry`: (created ms, idempotency key).
pub(crate) fn idem_expiry(created_ms: u64, idem_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + idem_key.len());
    k.extend_from_slice(&created_ms.to_be_bytes());
    k.extend_from_slice(idem_key);
    k
}

/// Splits an `idempotency_expiry` key.
pub(crate) fn split_idem_expiry(key: &[u8]) -> Result<(u64, &[u8])> {
    if key.len() < 8 {
        return Err(StorageError::corrupt(
            "idempotency_expiry",
            key,
            "key too short",
        ));
    }
    let (ms, rest) = key.split_at(8);
    let ms = <[u8; 8]>::try_from(ms)
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::corrupt("idempotency_expiry", key, "bad time"))?;
    Ok((ms, rest))
}

/// `status_index`: (status, id).
pub(crate) fn status(status: Status, id: CommandId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = status.code();
    k[1..].copy_from_slice(&id.to_bytes());
    k
}

/// The range of `status_index` keys of one status: [lower, upper).
pub(crate) fn status_range(status: Status) -> ([u8; 1], [u8; 1]) {
    ([status.code()], [status.code() + 1])
}

/// The command id of a `status_index` key.
pub(crate) fn status_id(key: &[u8]) -> Result<CommandId> {
    if key.len() != 17 {
        return Err(StorageError::corrupt(
            "status_index",
            key,
            "key is not 17 bytes",
        ));
    }
    CommandId::from_slice(&key[1..])
        .ok_or_else(|| StorageError::corrupt("status_index", key, "bad command id"))
}

/// The `partition_queue` prefix of a partition.
pub(crate) fn partition_prefix(partition: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + partition.len() + 8);
    push_str(&mut k, partition);
    k
}

/// The range of one partition's `partition_queue` keys: [lower, upper).
pub(crate) fn partition_range(partition: &str) -> (Vec<u8>, Vec<u8>) {
    let lower = partition_prefix(partition);
    let mut upper = lower.clone();
    upper.extend_from_slice(&[0xff; 9]);
    (lower, upper)
}

/// `partition_queue`: (partition, sequence).
pub(crate) fn partition_queue(partition: &str, seq: u64) -> Vec<u8> {
    let mut k = partition_prefix(partition);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a `partition_queue` key into (partition, sequence).
pub(crate) fn split_partition_queue(key: &[u8]) -> Result<(String, u64)> {
    let bad = |why: &str| StorageError::corrupt("partition_queue", key, why);
    if key.len() < 2 + 8 {
        return Err(bad("key too short"));
    }
    let len = usize::from(u16::from_be_bytes([key[0], key[1]]));
    if key.len() != 2 + len + 8 {
        return Err(bad("length prefix does not match"));
    }
    let partition = std::str::from_utf8(&key[2..2 + len])
        .map_err(|_| bad("partition is not UTF-8"))?
        .to_owned();
    let seq = <[u8; 8]>::try_from(&key[2 + len..])
        .map(u64::from_be_bytes)
        .map_err(|_| bad("bad sequence"))?;
    Ok((partition, seq))
}

/// `due_index`: (due ms, id).
pub(crate) fn due(due_ms: u64, id: CommandId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&due_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_bytes());
    k
}

/// Splits a `due_index` key into (due ms, id).
pub(crate) fn split_due(key: &[u8]) -> Result<(u64, CommandId)> {
    let bad = |why: &str| StorageError::corrupt("due_index", key, why);
    if key.len() != 24 {
        return Err(bad("key is not 24 bytes"));
    }
    let ms = <[u8; 8]>::try_from(&key[..8])
        .map(u64::from_be_bytes)
        .map_err(|_| bad("bad time"))?;
    let id = CommandId::from_slice(&key[8..]).ok_or_else(|| bad("bad command id"))?;
    Ok((ms, id))
}

/// `txids`: the transaction id's bytes (non-empty, at most 256 bytes).
pub(crate) fn txid(txid: &str) -> Vec<u8> {
    txid.as_bytes().to_vec()
}

/// `command_txids`: (command id, transaction id).
pub(crate) fn command_txid(id: CommandId, txid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + txid.len());
    k.extend_from_slice(&id.to_bytes());
    k.extend_from_slice(txid.as_bytes());
    k
}

/// The range of a command's `command_txids` keys: [lower, upper).
pub(crate) fn command_txids_range(id: CommandId) -> (Vec<u8>, Vec<u8>) {
    let lower = id.to_bytes().to_vec();
    // The next id's prefix; the all-ones id has no successor, so pad instead.
    let upper = match u128::from_be_bytes(id.to_bytes()).checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => {
            let mut u = lower.clone();
            u.extend_from_slice(&[0xff; 257]);
            u
        }
    };
    (lower, upper)
}

/// Splits a `command_txids` key into (command id, transaction id).
pub(crate) fn split_command_txid(key: &[u8]) -> Result<(CommandId, String)> {
    let bad = |why: &str| StorageError::corrupt("command_txids", key, why.to_owned());
    if key.len() <= 16 {
        return Err(bad("key too short"));
    }
    let (id, txid) = key.split_at(16);
    let id = CommandId::from_slice(id).ok_or_else(|| bad("bad command id"))?;
    let txid = std::str::from_utf8(txid).map_err(|_| bad("transaction id is not UTF-8"))?;
    Ok((id, txid.to_owned()))
}
