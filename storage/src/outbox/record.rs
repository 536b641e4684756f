//! On-disk encoding of outbox records.
//!
//! # Format and schema evolution
//! A stored value is one **format byte** followed by a **protobuf message** (prost, derived
//! by hand below; no .proto file or protoc needed):
//!
//! | format byte | message |
//! |---|---|
//! | `0x01` | [`CommandRecordPb`] (commands), [`IdempotencyPb`] (idempotency), [`TxIndexPb`] (txids) |
//!
//! Evolution rules, which keep "a newer gxd reads an older gxd's outbox" true:
//! - New information is a **new field with a new tag**. Its protobuf default (empty, 0,
//!   absent) must mean "not known / not applicable", which is what a record written before
//!   the field existed decodes to. Tags are never reused or renumbered; a removed field's
//!   tag is reserved in a comment.
//! - An older gxd reading a newer record skips the fields it does not know (protobuf
//!   semantics), so a downgrade can still read; it would drop those fields if it rewrote
//!   the record.
//! - A change protobuf cannot express compatibly (a different meaning for an existing tag,
//!   another encoding) takes a **new format byte**; decoders for every format byte ever
//!   written stay in this module.
//! - Frozen byte fixtures of every format version live in the tests
//!   (`storage/tests/encoding.rs`) and must keep decoding.
//!
//! Decoding never panics: truncated or garbled bytes, an unknown format byte, an unknown
//! status code or an invalid field give [`StorageError::Corrupt`] naming the key.

use chrono::{DateTime, Utc};
use prost::Message;

use super::{
    AttemptOutcome, AttemptRecord, ChaincodeResult, Command, CommandError, CommandId, Status,
};
use crate::error::{Result, StorageError};

/// The format byte written by this version.
pub const RECORD_FORMAT_V1: u8 = 0x01;

/// A command record (format 1).
#[derive(Clone, PartialEq, Message)]
pub struct CommandRecordPb {
    /// Command id, 16 bytes (UUIDv7).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Tenant.
    #[prost(string, tag = "2")]
    pub tenant: String,
    /// Command type (opaque to the engine).
    #[prost(string, tag = "3")]
    pub command_type: String,
    /// Client's request id (idempotency key within the tenant).
    #[prost(string, tag = "4")]
    pub request_id: String,
    /// Partition key (ordering scope).
    #[prost(string, tag = "5")]
    pub partition_key: String,
    /// Payload (opaque).
    #[prost(bytes = "vec", tag = "6")]
    pub payload: Vec<u8>,
    /// SHA-256 of (type, partition keys, payload) ([`super::payload_digest`]): what
    /// idempotent repeats are compared by.
    #[prost(bytes = "vec", tag = "7")]
    pub payload_digest: Vec<u8>,
    /// Status code, see [`Status::code`].
    #[prost(uint32, tag = "8")]
    pub status: u32,
    /// Attempts since acceptance or the last requeue.
    #[prost(uint32, tag = "9")]
    pub attempts: u32,
    /// When the command is due next, ms since the epoch.
    #[prost(int64, tag = "10")]
    pub next_attempt_at_ms: i64,
    /// Last error.
    #[prost(message, optional, tag = "11")]
    pub last_error: Option<ErrorPb>,
    /// Fabric transaction id once prepared.
    #[prost(string, optional, tag = "12")]
    pub txid: Option<String>,
    /// Signed transaction envelope once prepared (dropped at commit).
    #[prost(bytes = "vec", optional, tag = "13")]
    pub signed_tx: Option<Vec<u8>>,
    /// Block number once committed.
    #[prost(uint64, optional, tag = "14")]
    pub block_number: Option<u64>,
    /// Accepted at, ms.
    #[prost(int64, tag = "15")]
    pub created_at_ms: i64,
    /// Last change, ms.
    #[prost(int64, tag = "16")]
    pub updated_at_ms: i64,
    /// Prepared at, ms.
    #[prost(int64, optional, tag = "17")]
    pub prepared_at_ms: Option<i64>,
    /// Submitted at, ms.
    #[prost(int64, optional, tag = "18")]
    pub submitted_at_ms: Option<i64>,
    /// Committed at, ms.
    #[prost(int64, optional, tag = "19")]
    pub committed_at_ms: Option<i64>,
    /// Failed (dead-lettered) at, ms.
    #[prost(int64, optional, tag = "20")]
    pub failed_at_ms: Option<i64>,
    /// Position in the partition queue.
    #[prost(uint64, tag = "21")]
    pub queue_seq: u64,
    /// Times requeued from the dead letter.
    #[prost(uint32, tag = "22")]
    pub requeues: u32,
    /// Past attempts, oldest first (bounded).
    #[prost(message, repeated, tag = "23")]
    pub history: Vec<AttemptPb>,
    /// Index of the committed transaction in its block, once known (the projector learns
    /// it; Fabric's commit status does not say). Added after format 1's first release:
    /// absent = not known.
    #[prost(uint32, optional, tag = "24")]
    pub tx_index: Option<u32>,
    /// The chaincode's response to the committed transaction (bounded). Absent = not known.
    #[prost(message, optional, tag = "25")]
    pub result: Option<ChaincodeResultPb>,
    /// Projected (applied to the read models) at, ms. Absent = not projected.
    #[prost(int64, optional, tag = "26")]
    pub projected_at_ms: Option<i64>,
    /// Further partition keys (distinct, in byte order, none equal to `partition_key`); the
    /// command is in each of their queues at `queue_seq` while queued. Empty = the
    /// command's one partition is `partition_key` (every record written before the field).
    #[prost(string, repeated, tag = "27")]
    pub extra_partition_keys: Vec<String>,
}

/// A chaincode response as recorded.
#[derive(Clone, PartialEq, Message)]
pub struct ChaincodeResultPb {
    /// The response status (200 = OK), when known.
    #[prost(int32, optional, tag = "1")]
    pub status: Option<i32>,
    /// The response payload, at most [`super::MAX_RESULT_BYTES`].
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// The payload was longer and was cut.
    #[prost(bool, tag = "3")]
    pub truncated: bool,
}

/// A transaction-id index entry (format 1): which command used the tx id.
#[derive(Clone, PartialEq, Message)]
pub struct TxIndexPb {
    /// The command, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub command_id: Vec<u8>,
}

/// An error as recorded.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorPb {
    /// Stage (endorse, submit, commit status, commit, ...).
    #[prost(string, tag = "1")]
    pub stage: String,
    /// Code (gRPC status, validation code, ...).
    #[prost(string, tag = "2")]
    pub code: String,
    /// Message.
    #[prost(string, tag = "3")]
    pub message: String,
}

/// One past attempt.
#[derive(Clone, PartialEq, Message)]
pub struct AttemptPb {
    /// Attempt number it ended.
    #[prost(uint32, tag = "1")]
    pub attempt: u32,
    /// Outcome code, see [`AttemptOutcome::code`].
    #[prost(uint32, tag = "2")]
    pub outcome: u32,
    /// Transaction id the attempt used.
    #[prost(string, optional, tag = "3")]
    pub txid: Option<String>,
    /// Its error.
    #[prost(message, optional, tag = "4")]
    pub error: Option<ErrorPb>,
    /// When, ms.
    #[prost(int64, tag = "5")]
    pub at_ms: i64,
}

/// An idempotency entry (format 1).
#[derive(Clone, PartialEq, Message)]
pub struct IdempotencyPb {
    /// The command created by the first use of the key.
    #[prost(bytes = "vec", tag = "1")]
    pub command_id: Vec<u8>,
    /// Its payload digest.
    #[prost(bytes = "vec", tag = "2")]
    pub payload_digest: Vec<u8>,
    /// Created at, ms.
    #[prost(int64, tag = "3")]
    pub created_at_ms: i64,
}

/// Prefixes a message with the format byte.
pub fn encode_v1<M: Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(RECORD_FORMAT_V1);
    // Encoding into a Vec cannot run out of space.
    message.encode_raw(&mut out);
    out
}

/// Strips and checks the format byte and decodes the message.
pub fn decode_versioned<M: Message + Default>(
    cf: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<M> {
    match bytes.split_first() {
        None => Err(StorageError::corrupt(cf, key, "empty value")),
        Some((&RECORD_FORMAT_V1, body)) => M::decode(body)
            .map_err(|e| StorageError::corrupt(cf, key, format!("undecodable record: {e}"))),
        Some((other, _)) => Err(StorageError::corrupt(
            cf,
            key,
            format!("unknown record format byte {other:#04x}"),
        )),
    }
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(key: &[u8], field: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StorageError::corrupt("commands", key, format!("{field} out of range")))
}

fn opt_time(key: &[u8], field: &str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    ms.map(|v| time(key, field, v)).transpose()
}

impl From<&CommandError> for ErrorPb {
    fn from(e: &CommandError) -> Self {
        ErrorPb {
            stage: e.stage.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<ErrorPb> for CommandError {
    fn from(e: ErrorPb) -> Self {
        CommandError {
            stage: e.stage,
            code: e.code,
            message: e.message,
        }
    }
}

/// Encodes a command.
pub fn encode_command(c: &Command) -> Vec<u8> {
    encode_v1(&to_pb(c))
}

/// The protobuf form of a command.
pub fn to_pb(c: &Command) -> CommandRecordPb {
    CommandRecordPb {
        id: c.id.to_bytes().to_vec(),
        tenant: c.tenant.clone(),
        command_type: c.command_type.clone(),
        request_id: c.request_id.clone(),
        partition_key: c.partition_key.clone(),
        payload: c.payload.clone(),
        payload_digest: c.payload_digest.to_vec(),
        status: u32::from(c.status.code()),
        attempts: c.attempts,
        next_attempt_at_ms: ms(c.next_attempt_at),
        last_error: c.last_error.as_ref().map(ErrorPb::from),
        txid: c.txid.clone(),
        signed_tx: c.signed_tx.clone(),
        block_number: c.block_number,
        created_at_ms: ms(c.created_at),
        updated_at_ms: ms(c.updated_at),
        prepared_at_ms: c.prepared_at.map(ms),
        submitted_at_ms: c.submitted_at.map(ms),
        committed_at_ms: c.committed_at.map(ms),
        failed_at_ms: c.failed_at.map(ms),
        queue_seq: c.queue_seq,
        requeues: c.requeues,
        history: c
            .history
            .iter()
            .map(|h| AttemptPb {
                attempt: h.attempt,
                outcome: u32::from(h.outcome.code()),
                txid: h.txid.clone(),
                error: h.error.as_ref().map(ErrorPb::from),
                at_ms: ms(h.at),
            })
            .collect(),
        tx_index: c.tx_index,
        result: c.result.as_ref().map(|r| ChaincodeResultPb {
            status: r.status,
            payload: r.payload.clone(),
            truncated: r.truncated,
        }),
        projected_at_ms: c.projected_at.map(ms),
        extra_partition_keys: c.extra_partition_keys.clone(),
    }
}

/// Decodes a command stored under `key`; checks that the id in the record is the key.
pub fn decode_command(key: &[u8], bytes: &[u8]) -> Result<Command> {
    let pb: CommandRecordPb = decode_versioned("commands", key, bytes)?;
    from_pb(key, pb)
}

/// The command of a protobuf record stored under `key`.
pub fn from_pb(key: &[u8], pb: CommandRecordPb) -> Result<Command> {
    let bad = |why: String| StorageError::corrupt("commands", key, why);
    let id = CommandId::from_slice(&pb.id).ok_or_else(|| bad("id is not 16 bytes".into()))?;
    if pb.id.as_slice() != key {
        return Err(bad(format!("record id {id} does not match its key")));
    }
    let status = u8::try_from(pb.status)
        .ok()
        .and_then(Status::from_code)
        .ok_or_else(|| bad(format!("unknown status code {}", pb.status)))?;
    let payload_digest = <[u8; 32]>::try_from(pb.payload_digest.as_slice())
        .map_err(|_| bad("payload digest is not 32 bytes".into()))?;
    let history = pb
        .history
        .into_iter()
        .map(|h| {
            let outcome = u8::try_from(h.outcome)
                .ok()
                .and_then(AttemptOutcome::from_code)
                .ok_or_else(|| bad(format!("unknown attempt outcome {}", h.outcome)))?;
            Ok(AttemptRecord {
                attempt: h.attempt,
                outcome,
                txid: h.txid,
                error: h.error.map(CommandError::from),
                at: time(key, "history.at", h.at_ms)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The queues rely on it: each extra key once, in order, never the first key.
    let extras_ok = pb.extra_partition_keys.windows(2).all(|w| w[0] < w[1])
        && pb
            .extra_partition_keys
            .iter()
            .all(|k| !k.is_empty() && *k != pb.partition_key);
    if !extras_ok {
        return Err(bad(
            "extra partition keys are not distinct, ordered, non-empty keys other than the \
             partition key"
                .into(),
        ));
    }
    Ok(Command {
        id,
        tenant: pb.tenant,
        command_type: pb.command_type,
        request_id: pb.request_id,
        partition_key: pb.partition_key,
        extra_partition_keys: pb.extra_partition_keys,
        payload: pb.payload,
        payload_digest,
        status,
        attempts: pb.attempts,
        next_attempt_at: time(key, "next_attempt_at", pb.next_attempt_at_ms)?,
        last_error: pb.last_error.map(CommandError::from),
        txid: pb.txid,
        signed_tx: pb.signed_tx,
        block_number: pb.block_number,
        created_at: time(key, "created_at", pb.created_at_ms)?,
        updated_at: time(key, "updated_at", pb.updated_at_ms)?,
        prepared_at: opt_time(key, "prepared_at", pb.prepared_at_ms)?,
        submitted_at: opt_time(key, "submitted_at", pb.submitted_at_ms)?,
        committed_at: opt_time(key, "committed_at", pb.committed_at_ms)?,
        failed_at: opt_time(key, "failed_at", pb.failed_at_ms)?,
        queue_seq: pb.queue_seq,
        requeues: pb.requeues,
        history,
        tx_index: pb.tx_index,
        result: pb.result.map(|r| ChaincodeResult {
            status: r.status,
            payload: r.payload,
            truncated: r.truncated,
        }),
        projected_at: opt_time(key, "projected_at", pb.projected_at_ms)?,
    })
}

pub(crate) fn encode_tx_index(id: CommandId) -> Vec<u8> {
    encode_v1(&TxIndexPb {
        command_id: id.to_bytes().to_vec(),
    })
}

pub(crate) fn decode_tx_index(key: &[u8], bytes: &[u8]) -> Result<CommandId> {
    let pb: TxIndexPb = decode_versioned("txids", key, bytes)?;
    CommandId::from_slice(&pb.command_id)
        .ok_or_else(|| StorageError::corrupt("txids", key, "bad command id"))
}

/// An idempotency entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyEntry {
    pub(crate) command_id: CommandId,
    pub(crate) payload_digest: [u8; 32],
    pub(crate) created_at_ms: i64,
}

pub(crate) fn encode_idempotency(e: &IdempotencyEntry) -> Vec<u8> {
    encode_v1(&IdempotencyPb {
        command_id: e.command_id.to_bytes().to_vec(),
        payload_digest: e.payload_digest.to_vec(),
        created_at_ms: e.created_at_ms,
    })
}

pub(crate) fn decode_idempotency(key: &[u8], bytes: &[u8]) -> Result<IdempotencyEntry> {
    let pb: IdempotencyPb = decode_versioned("idempotency", key, bytes)?;
    let command_id = CommandId::from_slice(&pb.command_id)
        .ok_or_else(|| StorageError::corrupt("idempotency", key, "bad command id"))?;
    let payload_digest = <[u8; 32]>::try_from(pb.payload_digest.as_slice())
        .map_err(|_| StorageError::corrupt("idempotency", key, "digest is not 32 bytes"))?;
    Ok(IdempotencyEntry {
        command_id,
        payload_digest,
        created_at_ms: pb.created_at_ms,
    })
}
