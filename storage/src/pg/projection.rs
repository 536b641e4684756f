//! The projector's PostgreSQL side: one block = one PostgreSQL transaction.
//!
//! [`BlockTx::begin`] opens the transaction on a pooled connection. For every
//! transaction of the block — valid or not — the projector calls
//! [`BlockTx::record_transaction`]; a valid transaction's chaincode event goes to a
//! [`ProjectionHandler`], whose writes are the typed methods of
//! [`read_models`](super::read_models) on the same `BlockTx`. A poison transaction may
//! be recorded with [`BlockTx::dead_letter`]. [`BlockTx::commit`] writes the position
//! as a compare-and-set on the previous block and hash: if the position is not the one
//! the projector started from (a replayed block, a second projector), nothing of the
//! block is kept and [`ProjectionError::PositionConflict`] says so. The exactly-once
//! rule rests on that CAS, and is backed by the unique keys of the read models
//! (`applied_transactions` is keyed by (channel, block, tx index)).
//!
//! The recorded transactions are written at commit as one multi-row `INSERT … SELECT
//! FROM unnest(…)`; statements are prepared once per connection (`prepare_cached`).
//!
//! [`BlockTx::begin_batched`] opens a block in batched mode: the typed writes check their
//! input and buffer their rows, and `commit` writes them in a few multi-row statements
//! (`pg::batch`), pipelined with the recorded transactions and the position. The read
//! models end as in direct mode; a batch that fails on the data keeps nothing, and the
//! caller applies the block again in direct mode ([`BlockTx::begin`]).
//!
//! The handler seam lives here (and not in the engine) so that a domain crate (GX) can
//! implement it knowing only storage; the engine drives it and knows no domain.

use chrono::{DateTime, Utc};

use super::Pool;
use super::batch::{Batch, Marks};

/// Errors of the projection writer and the read models.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The position was not the expected one: the block was not applied (rolled back).
    #[error(
        "projector position of channel {channel:?} is not {expected} (block {block} refused): \
         a replayed block or a second projector"
    )]
    PositionConflict {
        channel: String,
        /// The block the commit tried to record.
        block: u64,
        /// The position the commit expected, as text.
        expected: String,
    },
    /// Input the read models refuse (a malformed amount, a number out of range).
    #[error("invalid projection input: {0}")]
    InvalidInput(String),
    /// No connection from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A PostgreSQL error.
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A batched block that must be applied one transaction at a time instead (see
    /// [`BlockTx::begin_batched`]); nothing of it was kept.
    #[error("block not batched: {0}")]
    BatchRefused(String),
}

impl ProjectionError {
    /// Whether the error is about the data, not the database: retrying the same write
    /// gives the same error (an integrity-constraint violation, SQLSTATE class 23; a
    /// data exception, class 22; input refused before PostgreSQL).
    pub fn is_data_error(&self) -> bool {
        match self {
            ProjectionError::InvalidInput(_) | ProjectionError::BatchRefused(_) => true,
            ProjectionError::Postgres(e) => e.code().is_some_and(|c| {
                let code = c.code();
                code.starts_with("23") || code.starts_with("22")
            }),
            ProjectionError::PositionConflict { .. } | ProjectionError::Pool(_) => false,
        }
    }
}

/// Result of the projection layer.
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;

/// Where a transaction is and what the ledger says of it; passed to handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxContext {
    pub channel: String,
    pub block_number: u64,
    /// Position in the block.
    pub tx_index: u32,
    /// Empty when the envelope could not be decoded.
    pub tx_id: String,
    /// The channel header's timestamp (the block's time if absent).
    pub timestamp: DateTime<Utc>,
    /// MSP id of the submitting identity.
    pub creator_msp_id: Option<String>,
    /// Fabric `TxValidationCode` (0 = VALID).
    pub validation_code: i32,
}

/// A chaincode event, as the projector hands it to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaincodeEvent {
    pub chaincode_id: String,
    pub name: String,
    pub payload: Vec<u8>,
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (unknown name, malformed payload, inconsistent
    /// with the read models): the projector's poison policy decides.
    #[error("poison event: {0}")]
    Poison(String),
    /// A storage error. Data errors ([`ProjectionError::is_data_error`]) are treated
    /// as poison; others are transient and the block is retried.
    #[error(transparent)]
    Storage(#[from] ProjectionError),
}

/// Maps a chaincode event to read-model writes, inside the block's transaction.
#[async_trait::async_trait]
pub trait ProjectionHandler: Send + Sync {
    /// Applies one event of a VALID transaction.
    async fn apply(
        &self,
        tx: &mut BlockTx<'_>,
        ctx: &TxContext,
        event: &ChaincodeEvent,
    ) -> Result<(), HandlerError>;
}

/// What the projector did with a transaction (`applied_transactions.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// Valid; its event (if any) was applied.
    Applied,
    /// Marked invalid by the peer (MVCC conflict, DUPLICATE_TXID, ...): nothing changed.
    Invalid,
    /// Valid but poison; recorded in `projection_dead_letters`.
    DeadLettered,
}

impl TxOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TxOutcome::Applied => "applied",
            TxOutcome::Invalid => "invalid",
            TxOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The projector's position on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub block_number: u64,
    pub block_hash: Vec<u8>,
}

pub(crate) fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| ProjectionError::InvalidInput(format!("{what} {v} out of range")))
}

pub(crate) fn to_i32(what: &str, v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|_| ProjectionError::InvalidInput(format!("{what} {v} out of range")))
}

fn to_u64(what: &str, v: i64) -> Result<u64> {
    u64::try_from(v)
        .map_err(|_| ProjectionError::InvalidInput(format!("stored {what} {v} is negative")))
}

/// The projector's position on `channel` (None: nothing projected yet), in the schema the
/// pool's connections write into.
pub async fn position(pool: &Pool, channel: &str) -> Result<Option<Position>> {
    let client = pool.get().await?;
    read_position(&**client, "projector_checkpoints", channel).await
}

/// The position on `channel` in `schema` (a rebuild's shadow, or `public`).
pub async fn position_in(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    channel: &str,
) -> Result<Option<Position>> {
    let table = format!("\"{}\".projector_checkpoints", schema.replace('"', "\"\""));
    read_position(client, &table, channel).await
}

async fn read_position(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    channel: &str,
) -> Result<Option<Position>> {
    let row = client
        .query_opt(
            &format!("SELECT block_number, block_hash FROM {table} WHERE channel = $1"),
            &[&channel],
        )
        .await?;
    row.map(|r| {
        Ok(Position {
            block_number: to_u64("block_number", r.get(0))?,
            block_hash: r.get(1),
        })
    })
    .transpose()
}

/// One recorded transaction, buffered until commit.
struct Recorded {
    tx_id: Option<String>,
    tx_index: i32,
    validation_code: i32,
    event_name: Option<String>,
    timestamp: Option<DateTime<Utc>>,
    outcome: &'static str,
}

/// One block's PostgreSQL transaction.
pub struct BlockTx<'a> {
    pub(crate) tx: deadpool_postgres::Transaction<'a>,
    channel: String,
    block_number: u64,
    recorded: Vec<Recorded>,
    in_savepoint: bool,
    /// Batched mode: the typed writes, buffered until commit.
    pub(crate) batch: Option<Box<Batch>>,
    /// Batched mode: the buffers' fill at the savepoint.
    batch_mark: Option<Marks>,
}

impl std::fmt::Debug for BlockTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockTx")
            .field("channel", &self.channel)
            .field("block_number", &self.block_number)
            .field("recorded", &self.recorded.len())
            .field("batched", &self.batch.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> BlockTx<'a> {
    /// Opens the PostgreSQL transaction for block `block_number` of `channel`.
    pub async fn begin(
        client: &'a mut deadpool_postgres::Object,
        channel: &str,
        block_number: u64,
    ) -> Result<BlockTx<'a>> {
        to_i64("block number", block_number)?;
        let tx = client.transaction().await?;
        // The block lock of the schema written into (shared): a rebuild's swap takes it
        // exclusively to hold the read models still (`pg::rebuild`).
        let lock = tx.prepare_cached(super::rebuild::BLOCK_LOCK_SQL).await?;
        tx.execute(&lock, &[&super::rebuild::LOCK_CLASS]).await?;
        Ok(BlockTx {
            tx,
            channel: channel.to_owned(),
            block_number,
            recorded: Vec::new(),
            in_savepoint: false,
            batch: None,
            batch_mark: None,
        })
    }

    /// Like [`begin`](Self::begin), in batched mode: the typed writes of
    /// [`read_models`](super::read_models) check their input as in direct mode but are
    /// buffered and written at [`commit`](Self::commit) in a few multi-row statements
    /// (`pg::batch`); savepoints are marks in the buffers. The read models end exactly
    /// as in direct mode. A commit that fails with a data error
    /// ([`ProjectionError::is_data_error`], including [`ProjectionError::BatchRefused`])
    /// kept nothing: apply the block again in direct mode, where the offending
    /// transaction is identified.
    pub async fn begin_batched(
        client: &'a mut deadpool_postgres::Object,
        channel: &str,
        block_number: u64,
    ) -> Result<BlockTx<'a>> {
        let mut tx = Self::begin(client, channel, block_number).await?;
        tx.batch = Some(Box::default());
        Ok(tx)
    }

    /// Whether the typed writes are buffered until commit.
    pub fn is_batched(&self) -> bool {
        self.batch.is_some()
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn block_number(&self) -> u64 {
        self.block_number
    }

    /// Records a transaction of this block (every one, valid or not). Written at commit.
    pub fn record_transaction(
        &mut self,
        ctx: &TxContext,
        event_name: Option<&str>,
        outcome: TxOutcome,
        has_timestamp: bool,
    ) -> Result<()> {
        self.check_ctx(ctx)?;
        self.recorded.push(Recorded {
            tx_id: (!ctx.tx_id.is_empty()).then(|| ctx.tx_id.clone()),
            tx_index: to_i32("tx index", ctx.tx_index)?,
            validation_code: ctx.validation_code,
            event_name: event_name.map(str::to_owned),
            timestamp: has_timestamp.then_some(ctx.timestamp),
            outcome: outcome.as_str(),
        });
        Ok(())
    }

    fn check_ctx(&self, ctx: &TxContext) -> Result<()> {
        if ctx.channel != self.channel || ctx.block_number != self.block_number {
            return Err(ProjectionError::InvalidInput(format!(
                "transaction of {}/{} recorded in the transaction of block {}/{}",
                ctx.channel, ctx.block_number, self.channel, self.block_number
            )));
        }
        Ok(())
    }

    /// Marks a point the next handler's writes can be undone to
    /// ([`rollback_to_savepoint`](Self::rollback_to_savepoint)).
    pub async fn savepoint(&mut self) -> Result<()> {
        if let Some(b) = &self.batch {
            self.batch_mark = Some(b.mark());
            self.in_savepoint = true;
            return Ok(());
        }
        self.tx.batch_execute("SAVEPOINT gxd_handler").await?;
        self.in_savepoint = true;
        Ok(())
    }

    /// Keeps the writes since [`savepoint`](Self::savepoint).
    pub async fn release_savepoint(&mut self) -> Result<()> {
        if self.batch.is_some() {
            self.in_savepoint = false;
            self.batch_mark = None;
            return Ok(());
        }
        if self.in_savepoint {
            self.tx
                .batch_execute("RELEASE SAVEPOINT gxd_handler")
                .await?;
            self.in_savepoint = false;
        }
        Ok(())
    }

    /// Undoes the writes since [`savepoint`](Self::savepoint) (also after a failed
    /// statement, which aborts the transaction until then).
    pub async fn rollback_to_savepoint(&mut self) -> Result<()> {
        if let Some(b) = &mut self.batch {
            if let Some(m) = self.batch_mark.take() {
                b.truncate(m);
            }
            self.in_savepoint = false;
            return Ok(());
        }
        if self.in_savepoint {
            self.tx
                .batch_execute("ROLLBACK TO SAVEPOINT gxd_handler; RELEASE SAVEPOINT gxd_handler")
                .await?;
            self.in_savepoint = false;
        }
        Ok(())
    }

    /// Records a poison transaction in `projection_dead_letters`.
    pub async fn dead_letter(
        &mut self,
        ctx: &TxContext,
        event_name: Option<&str>,
        error: &str,
        payload: Option<&[u8]>,
    ) -> Result<()> {
        self.check_ctx(ctx)?;
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO projection_dead_letters \
                 (channel, block_number, tx_index, tx_id, event_name, error, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        let tx_id = (!ctx.tx_id.is_empty()).then_some(ctx.tx_id.as_str());
        self.tx
            .execute(
                &stmt,
                &[
                    &self.channel,
                    &to_i64("block number", self.block_number)?,
                    &to_i32("tx index", ctx.tx_index)?,
                    &tx_id,
                    &event_name,
                    &error,
                    &payload,
                ],
            )
            .await?;
        Ok(())
    }

    /// Writes the recorded transactions and the position (compare-and-set on
    /// `previous`: the block and hash the position must hold now, None for "no position
    /// yet"), then commits. On a conflict nothing of the block is kept.
    pub async fn commit(self, block_hash: &[u8], previous: Option<(u64, &[u8])>) -> Result<()> {
        let number = to_i64("block number", self.block_number)?;
        if let Some((prev, _)) = previous
            && prev.checked_add(1) != Some(self.block_number)
        {
            return Err(ProjectionError::InvalidInput(format!(
                "block {} cannot follow block {prev}",
                self.block_number
            )));
        }
        let n = self.recorded.len();
        let mut tx_ids = Vec::with_capacity(n);
        let mut indexes = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut stamps = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(n);
        for r in &self.recorded {
            tx_ids.push(r.tx_id.as_deref());
            indexes.push(r.tx_index);
            codes.push(r.validation_code);
            names.push(r.event_name.as_deref());
            stamps.push(r.timestamp);
            outcomes.push(r.outcome);
        }
        let record = if n > 0 {
            Some(
                self.tx
                    .prepare_cached(
                        "INSERT INTO applied_transactions \
                         (channel, block_number, tx_id, tx_index, validation_code, event_name, \
                          tx_timestamp, outcome) \
                         SELECT $1, $2, u.tx_id, u.tx_index, u.code, u.event_name, u.ts, u.outcome \
                         FROM unnest($3::text[], $4::int4[], $5::int4[], $6::text[], \
                                     $7::timestamptz[], $8::text[]) \
                              AS u(tx_id, tx_index, code, event_name, ts, outcome)",
                    )
                    .await?,
            )
        } else {
            None
        };
        let position = match previous {
            None => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO projector_checkpoints (channel, block_number, block_hash) \
                         VALUES ($1, $2, $3) ON CONFLICT (channel) DO NOTHING",
                    )
                    .await?
            }
            Some(_) => {
                self.tx
                    .prepare_cached(
                        "UPDATE projector_checkpoints \
                         SET block_number = $2, block_hash = $3, updated_at = now() \
                         WHERE channel = $1 AND block_number = $4 AND block_hash = $5",
                    )
                    .await?
            }
        };
        let prev_number = previous
            .map(|(prev, _)| to_i64("block number", prev))
            .transpose()?;
        let prev_hash = previous.map(|(_, h)| h);
        let tx = &self.tx;
        let channel = self.channel.as_str();
        // The recorded transactions, then the position (a CAS on the previous block).
        let mut tail: Vec<super::batch::Pending<'_>> = Vec::with_capacity(2);
        if let Some(stmt) = &record {
            tail.push(Box::pin(async move {
                tx.execute(
                    stmt,
                    &[
                        &channel, &number, &tx_ids, &indexes, &codes, &names, &stamps, &outcomes,
                    ],
                )
                .await
            }));
        }
        let position = &position;
        tail.push(match (prev_number, prev_hash) {
            (Some(prev), Some(prev_hash)) => Box::pin(async move {
                tx.execute(
                    position,
                    &[&channel, &number, &block_hash, &prev, &prev_hash],
                )
                .await
            }),
            _ => Box::pin(async move {
                tx.execute(position, &[&channel, &number, &block_hash])
                    .await
            }),
        });
        let updated = match &self.batch {
            // Batched: the read-model statements and these, pipelined.
            Some(batch) => super::batch::flush(tx, channel, number, batch, tail).await?,
            None => {
                let mut out = Vec::with_capacity(tail.len());
                for pending in tail {
                    out.push(pending.await?);
                }
                out
            }
        };
        let updated = updated.last().copied().unwrap_or(0);
        if updated != 1 {
            let expected = match previous {
                None => "empty".to_owned(),
                Some((n, h)) => format!("block {n} ({})", hex::encode(h)),
            };
            let err = ProjectionError::PositionConflict {
                channel: self.channel.clone(),
                block: self.block_number,
                expected,
            };
            self.tx.rollback().await?;
            return Err(err);
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Abandons the block: nothing of it is kept.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}
