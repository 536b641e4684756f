//! The outbox's column families (their key layouts are in [`super::keys`]); the outbox's
//! counters and sequence numbers live in the database's [`crate::db::META`] family under
//! `outbox/` keys.

use crate::db::{Cf, Usage};

/// Command id (16 bytes, UUIDv7 big-endian) → command record.
pub(crate) const COMMANDS: Cf = Cf::new("commands", Usage::Records);

/// (tenant, request id) → idempotency record.
pub(crate) const IDEMPOTENCY: Cf = Cf::new("idempotency", Usage::Lookups);

/// (created ms, tenant, request id) → empty: idempotency keys in age order, for expiry.
pub(crate) const IDEM_EXPIRY: Cf = Cf::new("idempotency_expiry", Usage::Queue);

/// (status, command id) → empty: commands by status in id (= time) order.
pub(crate) const STATUS: Cf = Cf::new("status_index", Usage::Queue);

/// (partition, queue sequence) → command id: the queued (not yet committed or failed)
/// commands of each partition, in acceptance order. A command with several partition keys
/// is in each of their queues, under its one sequence number.
pub(crate) const PARTITION_QUEUE: Cf = Cf::new("partition_queue", Usage::Queue);

/// (due ms, command id) → empty: the dispatchable commands — PENDING and heading every
/// one of their partition queues.
pub(crate) const DUE: Cf = Cf::new("due_index", Usage::Queue);

/// Transaction id → command id (record [`super::record::TxIndexPb`]): every tx id any
/// attempt of a command used, written with `mark_prepared`, removed with the command.
/// Late commits and the projector find a transaction's command through it.
pub(crate) const TXIDS: Cf = Cf::new("txids", Usage::Lookups);

/// (command id, tx id) → empty: the same index from the command's side, so that
/// retention finds every tx id of a command it purges (the history is bounded; this is not).
pub(crate) const COMMAND_TXIDS: Cf = Cf::new("command_txids", Usage::Queue);

/// The outbox's families, in the order they are registered.
pub(super) const ALL: &[Cf] = &[
    COMMANDS,
    IDEMPOTENCY,
    IDEM_EXPIRY,
    STATUS,
    PARTITION_QUEUE,
    DUE,
    TXIDS,
    COMMAND_TXIDS,
];
