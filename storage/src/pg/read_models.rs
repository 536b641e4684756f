//! The read models' typed writes (inside a block's [`BlockTx`]) and reads.
//!
//! Storage owns the schema (`migrations/`), so every statement on the read-model
//! tables is here; a projection handler (GX's, in `gxd-gx`) calls these methods and
//! never writes SQL. Amounts and balances are decimal strings of non-negative
//! integers, checked here and cast to `NUMERIC` by PostgreSQL; never floating point.
//! Every write is keyed so that applying the same transaction twice fails on a unique
//! key instead of doubling (the position CAS in [`BlockTx::commit`] is the first line).

use chrono::{DateTime, Utc};

use super::Pool;
use super::batch::{self, BalanceChange, Batch};
use super::projection::{BlockTx, ProjectionError, Result, TxContext, to_i32, to_i64};
use crate::types::CommandId;

/// A wallet's kind (`wallets.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletKind {
    Treasury,
    User,
    Multisig,
}

impl WalletKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WalletKind::Treasury => "treasury",
            WalletKind::User => "user",
            WalletKind::Multisig => "multisig",
        }
    }
}

/// A transfer's kind (`transfers.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// The initial supply (no source wallet).
    Mint,
    /// A direct transfer.
    Transfer,
    /// The execution of a multisig proposal.
    Multisig,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Mint => "mint",
            TransferKind::Transfer => "transfer",
            TransferKind::Multisig => "multisig",
        }
    }
}

/// A proposal's state (`proposals.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalState {
    Pending,
    Executed,
    Rejected,
}

impl ProposalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Pending => "pending",
            ProposalState::Executed => "executed",
            ProposalState::Rejected => "rejected",
        }
    }
}

/// An approval or a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// A user created on the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser<'a> {
    pub user_id: &'a str,
    pub country: Option<&'a str>,
    pub profile_commitment: Option<&'a str>,
    pub msp_id: Option<&'a str>,
}

/// A wallet created on the ledger, with its owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWallet<'a> {
    pub wallet_id: &'a str,
    pub kind: WalletKind,
    /// Opening balance (decimal string).
    pub balance: &'a str,
    /// Multisig wallets only.
    pub threshold: Option<u32>,
    pub msp_id: Option<&'a str>,
    pub owners: &'a [String],
}

/// Funds moved by a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer<'a> {
    /// Client transfer id, proposal id (multisig) or treasury wallet id (mint).
    pub transfer_id: &'a str,
    pub kind: TransferKind,
    /// None for a mint.
    pub from_wallet_id: Option<&'a str>,
    pub to_wallet_id: &'a str,
    pub amount: &'a str,
    /// For a multisig transfer, None takes the proposal's memo.
    pub memo: Option<&'a str>,
    pub proposal_id: Option<&'a str>,
    /// The source's balance after the transfer, as the ledger says (else computed).
    pub from_balance: Option<&'a str>,
    /// The destination's balance after the transfer, as the ledger says (else computed).
    pub to_balance: Option<&'a str>,
}

/// A multisig proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProposal<'a> {
    pub proposal_id: &'a str,
    pub wallet_id: &'a str,
    pub to_wallet_id: &'a str,
    pub amount: &'a str,
    pub memo: Option<&'a str>,
    pub threshold: u32,
}

/// A decision on a proposal and the proposal's counts and state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDecision<'a> {
    pub proposal_id: &'a str,
    pub approver_id: &'a str,
    pub decision: Decision,
    /// Approvals so far (None: unchanged).
    pub approval_count: Option<u32>,
    /// Rejections so far (None: unchanged).
    pub rejection_count: Option<u32>,
    pub state: ProposalState,
}

/// Checks a decimal amount: 1 to 78 ASCII digits.
pub fn check_amount<'s>(what: &str, s: &'s str) -> Result<&'s str> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProjectionError::InvalidInput(format!(
            "{what} {s:?} is not a non-negative decimal integer"
        )));
    }
    Ok(s)
}

fn missing(what: &str, id: &str) -> ProjectionError {
    ProjectionError::InvalidInput(format!("{what} {id:?} does not exist in the read models"))
}

impl BlockTx<'_> {
    /// In batched mode, the buffers for `ctx`'s writes (a context of another block or
    /// channel refuses the batch: the direct path writes what the context says).
    fn batch_for(&mut self, ctx: &TxContext) -> Option<&mut Batch> {
        let other = ctx.channel != self.channel() || ctx.block_number != self.block_number();
        let b = self.batch.as_deref_mut()?;
        if other {
            b.refuse("a write for another block".to_owned());
        }
        Some(b)
    }

    /// `UserCreated`: the user row (its wallet is [`create_wallet`](Self::create_wallet)).
    pub async fn insert_user(&mut self, ctx: &TxContext, user: &NewUser<'_>) -> Result<()> {
        if let Some(b) = self.batch_for(ctx) {
            to_i64("block number", ctx.block_number)?;
            b.users.push(batch::User {
                user_id: user.user_id.to_owned(),
                country: user.country.map(str::to_owned),
                commitment: user.profile_commitment.map(str::to_owned),
                msp_id: user.msp_id.map(str::to_owned),
                tx_id: ctx.tx_id.clone(),
                at: ctx.timestamp,
            });
            return Ok(());
        }
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO users (user_id, country, profile_commitment, msp_id, channel, \
                 created_tx_id, created_block, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        self.tx
            .execute(
                &stmt,
                &[
                    &user.user_id,
                    &user.country,
                    &user.profile_commitment,
                    &user.msp_id,
                    &ctx.channel,
                    &ctx.tx_id,
                    &to_i64("block number", ctx.block_number)?,
                    &ctx.timestamp,
                ],
            )
            .await?;
        Ok(())
    }

    /// A new wallet and its owners.
    pub async fn create_wallet(&mut self, ctx: &TxContext, w: &NewWallet<'_>) -> Result<()> {
        let balance = check_amount("balance", w.balance)?;
        let threshold = w.threshold.map(|t| to_i32("threshold", t)).transpose()?;
        let block = to_i64("block number", ctx.block_number)?;
        if let Some(b) = self.batch_for(ctx) {
            b.push_wallet(
                batch::Wallet {
                    wallet_id: w.wallet_id.to_owned(),
                    kind: w.kind.as_str(),
                    balance: balance.to_owned(),
                    threshold,
                    msp_id: w.msp_id.map(str::to_owned),
                    tx_id: ctx.tx_id.clone(),
                    at: ctx.timestamp,
                },
                w.owners,
            );
            return Ok(());
        }
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO wallets (wallet_id, kind, balance, threshold, msp_id, channel, \
                 created_tx_id, created_block, created_at, updated_block, updated_at) \
                 VALUES ($1, $2, $3::text::numeric, $4, $5, $6, $7, $8, $9, $8, $9)",
            )
            .await?;
        self.tx
            .execute(
                &stmt,
                &[
                    &w.wallet_id,
                    &w.kind.as_str(),
                    &balance,
                    &threshold,
                    &w.msp_id,
                    &ctx.channel,
                    &ctx.tx_id,
                    &block,
                    &ctx.timestamp,
                ],
            )
            .await?;
        if !w.owners.is_empty() {
            let stmt = self
                .tx
                .prepare_cached(
                    "INSERT INTO wallet_owners (wallet_id, owner_id) \
                     SELECT $1, o FROM unnest($2::text[]) AS o",
                )
                .await?;
            self.tx.execute(&stmt, &[&w.wallet_id, &w.owners]).await?;
        }
        Ok(())
    }

    /// Funds moved: the transfer, both history rows, both balances.
    pub async fn apply_transfer(&mut self, ctx: &TxContext, t: &NewTransfer<'_>) -> Result<()> {
        let amount = check_amount("amount", t.amount)?;
        let from_balance = t
            .from_balance
            .map(|b| check_amount("fromBalance", b))
            .transpose()?;
        let to_balance = t
            .to_balance
            .map(|b| check_amount("toBalance", b))
            .transpose()?;
        let block = to_i64("block number", ctx.block_number)?;
        let index = to_i32("tx index", ctx.tx_index)?;
        if let Some(b) = self.batch_for(ctx) {
            if let Some(p) = t.proposal_id {
                b.use_proposal(p);
            }
            b.transfers.push(batch::Transfer {
                tx_id: ctx.tx_id.clone(),
                transfer_id: t.transfer_id.to_owned(),
                kind: t.kind.as_str(),
                from_wallet_id: t.from_wallet_id.map(str::to_owned),
                to_wallet_id: t.to_wallet_id.to_owned(),
                amount: amount.to_owned(),
                memo: t.memo.map(str::to_owned),
                proposal_id: t.proposal_id.map(str::to_owned),
                tx_index: index,
                at: ctx.timestamp,
            });
            if let Some(from) = t.from_wallet_id {
                b.history.push(batch::History {
                    wallet_id: from.to_owned(),
                    tx_id: ctx.tx_id.clone(),
                    direction: "debit",
                    counterparty: Some(t.to_wallet_id.to_owned()),
                    amount: amount.to_owned(),
                    tx_index: index,
                    at: ctx.timestamp,
                });
            }
            b.history.push(batch::History {
                wallet_id: t.to_wallet_id.to_owned(),
                tx_id: ctx.tx_id.clone(),
                direction: "credit",
                counterparty: t.from_wallet_id.map(str::to_owned),
                amount: amount.to_owned(),
                tx_index: index,
                at: ctx.timestamp,
            });
            if let Some(from) = t.from_wallet_id {
                b.push_balance(batch::BalanceOp {
                    wallet_id: from.to_owned(),
                    change: match from_balance {
                        Some(v) => BalanceChange::Set(v.to_owned()),
                        None => BalanceChange::Debit,
                    },
                    at: ctx.timestamp,
                });
            }
            b.push_balance(batch::BalanceOp {
                wallet_id: t.to_wallet_id.to_owned(),
                change: match to_balance {
                    Some(v) => BalanceChange::Set(v.to_owned()),
                    None => BalanceChange::Credit(amount.to_owned()),
                },
                at: ctx.timestamp,
            });
            return Ok(());
        }
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, \
                 to_wallet_id, amount, memo, proposal_id, block_number, tx_index, tx_timestamp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, \
                         COALESCE($8, (SELECT memo FROM proposals WHERE proposal_id = $9)), \
                         $9, $10, $11, $12) \
                 RETURNING memo",
            )
            .await?;
        let row = self
            .tx
            .query_one(
                &stmt,
                &[
                    &ctx.channel,
                    &ctx.tx_id,
                    &t.transfer_id,
                    &t.kind.as_str(),
                    &t.from_wallet_id,
                    &t.to_wallet_id,
                    &amount,
                    &t.memo,
                    &t.proposal_id,
                    &block,
                    &index,
                    &ctx.timestamp,
                ],
            )
            .await?;
        let memo: Option<String> = row.get(0);
        // Both sides: (wallet, direction, counterparty).
        let mut wallets: Vec<&str> = Vec::with_capacity(2);
        let mut directions: Vec<&str> = Vec::with_capacity(2);
        let mut counterparties: Vec<Option<&str>> = Vec::with_capacity(2);
        if let Some(from) = t.from_wallet_id {
            wallets.push(from);
            directions.push("debit");
            counterparties.push(Some(t.to_wallet_id));
        }
        wallets.push(t.to_wallet_id);
        directions.push("credit");
        counterparties.push(t.from_wallet_id);
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO wallet_history (wallet_id, channel, tx_id, direction, \
                 counterparty_wallet_id, amount, memo, block_number, tx_index, tx_timestamp) \
                 SELECT u.w, $1, $2, u.d, u.c, $3::text::numeric, $4, $5, $6, $7 \
                 FROM unnest($8::text[], $9::text[], $10::text[]) AS u(w, d, c)",
            )
            .await?;
        self.tx
            .execute(
                &stmt,
                &[
                    &ctx.channel,
                    &ctx.tx_id,
                    &amount,
                    &memo,
                    &block,
                    &index,
                    &ctx.timestamp,
                    &wallets,
                    &directions,
                    &counterparties,
                ],
            )
            .await?;
        if let Some(from) = t.from_wallet_id {
            self.set_balance(ctx, from, from_balance, amount, false)
                .await?;
        }
        self.set_balance(ctx, t.to_wallet_id, to_balance, amount, true)
            .await?;
        Ok(())
    }

    async fn set_balance(
        &mut self,
        ctx: &TxContext,
        wallet_id: &str,
        balance: Option<&str>,
        amount: &str,
        credit: bool,
    ) -> Result<()> {
        let block = to_i64("block number", ctx.block_number)?;
        let updated = match balance {
            Some(b) => {
                let stmt = self
                    .tx
                    .prepare_cached(
                        "UPDATE wallets SET balance = $2::text::numeric, updated_block = $3, \
                         updated_at = $4 WHERE wallet_id = $1",
                    )
                    .await?;
                self.tx
                    .execute(&stmt, &[&wallet_id, &b, &block, &ctx.timestamp])
                    .await?
            }
            None => {
                let sql = if credit {
                    "UPDATE wallets SET balance = balance + $2::text::numeric, updated_block = $3, \
                     updated_at = $4 WHERE wallet_id = $1"
                } else {
                    "UPDATE wallets SET balance = balance - $2::text::numeric, updated_block = $3, \
                     updated_at = $4 WHERE wallet_id = $1"
                };
                let stmt = self.tx.prepare_cached(sql).await?;
                self.tx
                    .execute(&stmt, &[&wallet_id, &amount, &block, &ctx.timestamp])
                    .await?
            }
        };
        if updated != 1 {
            return Err(missing("wallet", wallet_id));
        }
        Ok(())
    }

    /// `TransferProposed`: a pending proposal.
    pub async fn insert_proposal(&mut self, ctx: &TxContext, p: &NewProposal<'_>) -> Result<()> {
        let amount = check_amount("amount", p.amount)?;
        if let Some(b) = self.batch_for(ctx) {
            let threshold = to_i32("threshold", p.threshold)?;
            to_i64("block number", ctx.block_number)?;
            b.push_proposal(batch::Proposal {
                proposal_id: p.proposal_id.to_owned(),
                wallet_id: p.wallet_id.to_owned(),
                to_wallet_id: p.to_wallet_id.to_owned(),
                amount: amount.to_owned(),
                memo: p.memo.map(str::to_owned),
                threshold,
                tx_id: ctx.tx_id.clone(),
                at: ctx.timestamp,
            });
            return Ok(());
        }
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, state, \
                 threshold, channel, created_tx_id, created_block, created_at) \
                 SELECT $1, $2, $3, $4::text::numeric, $5, 'pending', $6, $7, $8, $9, $10 \
                 WHERE EXISTS (SELECT 1 FROM wallets WHERE wallet_id = $2)",
            )
            .await?;
        let inserted = self
            .tx
            .execute(
                &stmt,
                &[
                    &p.proposal_id,
                    &p.wallet_id,
                    &p.to_wallet_id,
                    &amount,
                    &p.memo,
                    &to_i32("threshold", p.threshold)?,
                    &ctx.channel,
                    &ctx.tx_id,
                    &to_i64("block number", ctx.block_number)?,
                    &ctx.timestamp,
                ],
            )
            .await?;
        if inserted != 1 {
            return Err(missing("wallet", p.wallet_id));
        }
        Ok(())
    }

    /// `TransferApproved` / `TransferRejected`: the decision and the proposal's state.
    pub async fn record_decision(&mut self, ctx: &TxContext, d: &NewDecision<'_>) -> Result<()> {
        let block = to_i64("block number", ctx.block_number)?;
        if let Some(b) = self.batch_for(ctx) {
            let approvals = d
                .approval_count
                .map(|n| to_i32("approval count", n))
                .transpose()?;
            let rejections = d
                .rejection_count
                .map(|n| to_i32("rejection count", n))
                .transpose()?;
            b.use_proposal(d.proposal_id);
            b.decisions.push(batch::DecisionRow {
                proposal_id: d.proposal_id.to_owned(),
                approver_id: d.approver_id.to_owned(),
                decision: d.decision.as_str(),
                tx_id: ctx.tx_id.clone(),
                at: ctx.timestamp,
            });
            b.proposal_updates.push(batch::ProposalUpdate {
                proposal_id: d.proposal_id.to_owned(),
                approvals,
                rejections,
                state: d.state.as_str(),
                tx_id: ctx.tx_id.clone(),
                at: ctx.timestamp,
            });
            return Ok(());
        }
        let stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO proposal_decisions (proposal_id, approver_id, decision, channel, \
                 tx_id, block_number, tx_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        self.tx
            .execute(
                &stmt,
                &[
                    &d.proposal_id,
                    &d.approver_id,
                    &d.decision.as_str(),
                    &ctx.channel,
                    &ctx.tx_id,
                    &block,
                    &ctx.timestamp,
                ],
            )
            .await?;
        let stmt = self
            .tx
            .prepare_cached(
                "UPDATE proposals SET approval_count = COALESCE($2, approval_count), \
                 rejection_count = COALESCE($3, rejection_count), state = $4, \
                 closed_tx_id = CASE WHEN $4 = 'pending' THEN NULL ELSE $5 END, \
                 closed_block = CASE WHEN $4 = 'pending' THEN NULL ELSE $6::int8 END, \
                 closed_at = CASE WHEN $4 = 'pending' THEN NULL ELSE $7::timestamptz END \
                 WHERE proposal_id = $1 AND state = 'pending'",
            )
            .await?;
        let updated = self
            .tx
            .execute(
                &stmt,
                &[
                    &d.proposal_id,
                    &d.approval_count
                        .map(|n| to_i32("approval count", n))
                        .transpose()?,
                    &d.rejection_count
                        .map(|n| to_i32("rejection count", n))
                        .transpose()?,
                    &d.state.as_str(),
                    &ctx.tx_id,
                    &block,
                    &ctx.timestamp,
                ],
            )
            .await?;
        if updated != 1 {
            return Err(missing("pending proposal", d.proposal_id));
        }
        Ok(())
    }
}

// ---- reads ----

/// A wallet row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRow {
    pub wallet_id: String,
    pub kind: String,
    pub balance: String,
    pub threshold: Option<i32>,
    pub msp_id: Option<String>,
    pub owners: Vec<String>,
    pub updated_block: i64,
    pub updated_at: DateTime<Utc>,
}

/// A wallet and its owners.
pub async fn wallet(pool: &Pool, wallet_id: &str) -> Result<Option<WalletRow>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT w.wallet_id, w.kind, w.balance::text, w.threshold, w.msp_id, \
             COALESCE(array_agg(o.owner_id ORDER BY o.owner_id) \
                      FILTER (WHERE o.owner_id IS NOT NULL), '{}'), w.updated_block, \
             w.updated_at \
             FROM wallets w LEFT JOIN wallet_owners o ON o.wallet_id = w.wallet_id \
             WHERE w.wallet_id = $1 GROUP BY w.wallet_id",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&wallet_id]).await?;
    Ok(row.map(|r| WalletRow {
        wallet_id: r.get(0),
        kind: r.get(1),
        balance: r.get(2),
        threshold: r.get(3),
        msp_id: r.get(4),
        owners: r.get(5),
        updated_block: r.get(6),
        updated_at: r.get(7),
    }))
}

/// A wallet history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub tx_id: String,
    pub direction: String,
    pub counterparty_wallet_id: Option<String>,
    pub amount: String,
    pub memo: Option<String>,
    pub block_number: i64,
    pub tx_index: i32,
    pub tx_timestamp: DateTime<Utc>,
}

/// A wallet's history, newest first (the API's order).
pub async fn wallet_history(pool: &Pool, wallet_id: &str) -> Result<Vec<HistoryRow>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT tx_id, direction, counterparty_wallet_id, amount::text, memo, block_number, \
             tx_index, tx_timestamp FROM wallet_history WHERE wallet_id = $1 \
             ORDER BY block_number DESC, tx_index DESC, direction DESC",
            &[&wallet_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            tx_id: r.get(0),
            direction: r.get(1),
            counterparty_wallet_id: r.get(2),
            amount: r.get(3),
            memo: r.get(4),
            block_number: r.get(5),
            tx_index: r.get(6),
            tx_timestamp: r.get(7),
        })
        .collect())
}

/// A proposal's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRow {
    pub proposal_id: String,
    pub wallet_id: String,
    pub state: String,
    pub approval_count: i32,
    pub rejection_count: i32,
    /// (approver, decision) in approver order.
    pub decisions: Vec<(String, String)>,
}

pub async fn proposal(pool: &Pool, proposal_id: &str) -> Result<Option<ProposalRow>> {
    let client = pool.get().await?;
    let Some(r) = client
        .query_opt(
            "SELECT proposal_id, wallet_id, state, approval_count, rejection_count \
             FROM proposals WHERE proposal_id = $1",
            &[&proposal_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let decisions = client
        .query(
            "SELECT approver_id, decision FROM proposal_decisions WHERE proposal_id = $1 \
             ORDER BY approver_id",
            &[&proposal_id],
        )
        .await?
        .iter()
        .map(|d| (d.get(0), d.get(1)))
        .collect();
    Ok(Some(ProposalRow {
        proposal_id: r.get(0),
        wallet_id: r.get(1),
        state: r.get(2),
        approval_count: r.get(3),
        rejection_count: r.get(4),
        decisions,
    }))
}

/// A row of `applied_transactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedTransaction {
    pub block_number: i64,
    pub tx_index: i32,
    pub tx_id: Option<String>,
    pub validation_code: i32,
    pub event_name: Option<String>,
    pub outcome: String,
}

/// Every recorded transaction of a channel, in block order.
pub async fn applied_transactions(pool: &Pool, channel: &str) -> Result<Vec<AppliedTransaction>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT block_number, tx_index, tx_id, validation_code, event_name, outcome \
             FROM applied_transactions WHERE channel = $1 ORDER BY block_number, tx_index",
            &[&channel],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AppliedTransaction {
            block_number: r.get(0),
            tx_index: r.get(1),
            tx_id: r.get(2),
            validation_code: r.get(3),
            event_name: r.get(4),
            outcome: r.get(5),
        })
        .collect())
}

/// A row of `projection_dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub block_number: i64,
    pub tx_index: i32,
    pub tx_id: Option<String>,
    pub event_name: Option<String>,
    pub error: String,
    pub payload: Option<Vec<u8>>,
}

/// The dead-lettered transactions of a channel, in block order.
pub async fn dead_letters(pool: &Pool, channel: &str) -> Result<Vec<DeadLetter>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT block_number, tx_index, tx_id, event_name, error, payload \
             FROM projection_dead_letters WHERE channel = $1 ORDER BY block_number, tx_index",
            &[&channel],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            block_number: r.get(0),
            tx_index: r.get(1),
            tx_id: r.get(2),
            event_name: r.get(3),
            error: r.get(4),
            payload: r.get(5),
        })
        .collect())
}

/// Row counts of the projected tables, by name (for tests and diagnostics).
pub async fn row_counts(pool: &Pool) -> Result<Vec<(String, i64)>> {
    let client = pool.get().await?;
    let mut out = Vec::new();
    for table in super::rebuild::PROJECTION_TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", table.name), &[])
            .await?
            .get(0);
        out.push((table.name.to_owned(), n));
    }
    Ok(out)
}

/// SHA-256 (hex) of every projected table of the schema the pool's connections use
/// ([`rebuild::digest`](super::rebuild::digest), combined): equal digests mean equal read
/// models (for rebuild-equals-incremental checks).
pub async fn read_model_digest(pool: &Pool) -> Result<String> {
    let client = pool.get().await?;
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .await?
        .get(0);
    super::rebuild::digest(&**client, &schema)
        .await
        .map(|d| d.combined())
        .map_err(|e| match e {
            super::rebuild::RebuildError::Postgres(e) => ProjectionError::Postgres(e),
            other => ProjectionError::InvalidInput(other.to_string()),
        })
}

// ---- the REST API's reads (and the profile table, written by the API) ----

/// A position in a wallet's history: the keyset cursor of
/// [`wallet_transactions`], a total order (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    pub block_number: i64,
    pub tx_index: i32,
    /// `debit` or `credit` (a self-transfer has both for one wallet).
    pub direction: String,
}

/// A wallet history row with its transfer's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletTransaction {
    pub tx_id: String,
    pub block_number: i64,
    pub tx_index: i32,
    pub tx_timestamp: DateTime<Utc>,
    /// `debit` or `credit`.
    pub direction: String,
    pub counterparty_wallet_id: Option<String>,
    pub amount: String,
    pub memo: Option<String>,
    pub transfer_id: String,
    /// `transfer`, `multisig` or `mint`.
    pub kind: String,
}

impl WalletTransaction {
    /// The cursor that continues after this row.
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor {
            block_number: self.block_number,
            tx_index: self.tx_index,
            direction: self.direction.clone(),
        }
    }
}

/// Up to `limit` rows of a wallet's history, newest first, strictly after `after`
/// (one index range scan on `wallet_history_by_wallet_newest`).
pub async fn wallet_transactions(
    pool: &Pool,
    wallet_id: &str,
    after: Option<&HistoryCursor>,
    limit: u32,
) -> Result<Vec<WalletTransaction>> {
    let client = pool.get().await?;
    let limit = i64::from(limit);
    const COLUMNS: &str = "h.tx_id, h.block_number, h.tx_index, h.tx_timestamp, h.direction, \
         h.counterparty_wallet_id, h.amount::text, h.memo, t.transfer_id, t.kind \
         FROM wallet_history h JOIN transfers t ON t.channel = h.channel AND t.tx_id = h.tx_id";
    let rows = match after {
        None => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} WHERE h.wallet_id = $1 \
                     ORDER BY h.block_number DESC, h.tx_index DESC, h.direction DESC LIMIT $2"
                ))
                .await?;
            client.query(&stmt, &[&wallet_id, &limit]).await?
        }
        Some(c) => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} WHERE h.wallet_id = $1 \
                     AND (h.block_number, h.tx_index, h.direction) < ($2, $3, $4) \
                     ORDER BY h.block_number DESC, h.tx_index DESC, h.direction DESC LIMIT $5"
                ))
                .await?;
            client
                .query(
                    &stmt,
                    &[
                        &wallet_id,
                        &c.block_number,
                        &c.tx_index,
                        &c.direction,
                        &limit,
                    ],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| WalletTransaction {
            tx_id: r.get(0),
            block_number: r.get(1),
            tx_index: r.get(2),
            tx_timestamp: r.get(3),
            direction: r.get(4),
            counterparty_wallet_id: r.get(5),
            amount: r.get(6),
            memo: r.get(7),
            transfer_id: r.get(8),
            kind: r.get(9),
        })
        .collect())
}

/// A user: the ledger's row (projection) joined with the organization's profile row.
/// Either side may be missing (a profile accepted but not yet on the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub user_id: String,
    /// On the ledger (the `users` projection has the row).
    pub on_ledger: bool,
    pub country: Option<String>,
    pub profile_commitment: Option<String>,
    pub msp_id: Option<String>,
    pub created_block: Option<i64>,
    pub created_at: Option<DateTime<Utc>>,
    /// The profile as JSON text (from `user_profiles`).
    pub profile_json: Option<String>,
}

/// A user and its profile, joined on the user id.
pub async fn user_view(pool: &Pool, user_id: &str) -> Result<Option<UserView>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT COALESCE(u.user_id, p.user_id), u.user_id IS NOT NULL, u.country, \
             COALESCE(u.profile_commitment, p.commitment), u.msp_id, u.created_block, \
             u.created_at, p.profile::text \
             FROM (SELECT * FROM users WHERE user_id = $1) u \
             FULL OUTER JOIN (SELECT * FROM user_profiles WHERE user_id = $1) p \
             ON p.user_id = u.user_id",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&user_id]).await?;
    Ok(row.map(|r| UserView {
        user_id: r.get(0),
        on_ledger: r.get(1),
        country: r.get(2),
        profile_commitment: r.get(3),
        msp_id: r.get(4),
        created_block: r.get(5),
        created_at: r.get(6),
        profile_json: r.get(7),
    }))
}

/// Which of `user_ids` are users on the ledger.
pub async fn existing_users(pool: &Pool, user_ids: &[String]) -> Result<Vec<String>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT user_id FROM users WHERE user_id = ANY($1::text[]) ORDER BY 1")
        .await?;
    Ok(client
        .query(&stmt, &[&user_ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A proposal with its wallet's owners and every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalView {
    pub proposal_id: String,
    pub wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: Option<String>,
    /// `pending`, `executed` or `rejected`.
    pub state: String,
    pub threshold: i32,
    pub approval_count: i32,
    pub rejection_count: i32,
    pub created_tx_id: String,
    pub created_block: i64,
    pub created_at: DateTime<Utc>,
    pub closed_tx_id: Option<String>,
    pub closed_block: Option<i64>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The owners of the proposal's wallet (who may decide).
    pub owners: Vec<String>,
    /// Decisions in the order they were made.
    pub decisions: Vec<DecisionView>,
}

/// One decision on a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionView {
    pub approver_id: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub tx_id: String,
    pub block_number: i64,
    pub tx_timestamp: DateTime<Utc>,
}

const PROPOSAL_COLUMNS: &str = "p.proposal_id, p.wallet_id, p.to_wallet_id, p.amount::text, \
     p.memo, p.state, p.threshold, p.approval_count, p.rejection_count, p.created_tx_id, \
     p.created_block, p.created_at, p.closed_tx_id, p.closed_block, p.closed_at, \
     COALESCE((SELECT array_agg(o.owner_id ORDER BY o.owner_id) FROM wallet_owners o \
               WHERE o.wallet_id = p.wallet_id), '{}')";

fn proposal_from_row(r: &tokio_postgres::Row) -> ProposalView {
    ProposalView {
        proposal_id: r.get(0),
        wallet_id: r.get(1),
        to_wallet_id: r.get(2),
        amount: r.get(3),
        memo: r.get(4),
        state: r.get(5),
        threshold: r.get(6),
        approval_count: r.get(7),
        rejection_count: r.get(8),
        created_tx_id: r.get(9),
        created_block: r.get(10),
        created_at: r.get(11),
        closed_tx_id: r.get(12),
        closed_block: r.get(13),
        closed_at: r.get(14),
        owners: r.get(15),
        decisions: Vec::new(),
    }
}

/// A proposal, its wallet's owners and its decisions.
pub async fn proposal_view(pool: &Pool, proposal_id: &str) -> Result<Option<ProposalView>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals p WHERE p.proposal_id = $1"
        ))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&proposal_id]).await? else {
        return Ok(None);
    };
    let mut view = proposal_from_row(&row);
    let stmt = client
        .prepare_cached(
            "SELECT approver_id, decision, tx_id, block_number, tx_timestamp \
             FROM proposal_decisions WHERE proposal_id = $1 ORDER BY block_number, tx_id",
        )
        .await?;
    view.decisions = client
        .query(&stmt, &[&proposal_id])
        .await?
        .iter()
        .map(|d| DecisionView {
            approver_id: d.get(0),
            decision: d.get(1),
            tx_id: d.get(2),
            block_number: d.get(3),
            tx_timestamp: d.get(4),
        })
        .collect();
    Ok(Some(view))
}

/// Proposals on the wallets `approver` owns, newest first, at most `limit`; `state`
/// filters (`pending`, `executed`, `rejected`); `undecided` keeps only those `approver`
/// has not decided on. Decisions are not loaded (see [`proposal_view`]).
pub async fn proposals_for_approver(
    pool: &Pool,
    approver: &str,
    state: Option<&str>,
    undecided: bool,
    limit: u32,
) -> Result<Vec<ProposalView>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals p \
             JOIN wallet_owners w ON w.wallet_id = p.wallet_id AND w.owner_id = $1 \
             WHERE ($2::text IS NULL OR p.state = $2) \
             AND (NOT $3 OR NOT EXISTS (SELECT 1 FROM proposal_decisions d \
                  WHERE d.proposal_id = p.proposal_id AND d.approver_id = $1)) \
             ORDER BY p.created_block DESC, p.proposal_id DESC LIMIT $4"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&approver, &state, &undecided, &i64::from(limit)])
        .await?
        .iter()
        .map(proposal_from_row)
        .collect())
}

/// Whether a valid transaction `tx_id` of `channel` has been applied to the read models.
pub async fn transaction_projected(pool: &Pool, channel: &str, tx_id: &str) -> Result<bool> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM applied_transactions \
             WHERE channel = $1 AND tx_id = $2 AND validation_code = 0)",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&channel, &tx_id]).await?.get(0))
}

/// A row of `user_profiles`: personal data, never on the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRow {
    pub user_id: String,
    /// The profile as JSON text.
    pub profile_json: String,
    pub salt: Vec<u8>,
    /// Hex SHA-256(salt ‖ profile).
    pub commitment: String,
    /// The outbox command that creates the user on the ledger — or, until that command
    /// is accepted, a reservation id (see [`reserve_profile`]).
    pub command_id: CommandId,
}

const PROFILE_COLUMNS: &str = "user_id, profile::text, salt, commitment, command_id";

fn profile_from_row(r: &tokio_postgres::Row) -> ProfileRow {
    ProfileRow {
        user_id: r.get(0),
        profile_json: r.get(1),
        salt: r.get(2),
        commitment: r.get(3),
        command_id: CommandId::from(r.get::<_, uuid::Uuid>(4)),
    }
}

/// A user's profile row.
pub async fn profile(pool: &Pool, user_id: &str) -> Result<Option<ProfileRow>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE user_id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&user_id])
        .await?
        .as_ref()
        .map(profile_from_row))
}

/// Stores `row` unless the user already has a profile; returns the row that is stored
/// (the existing one if there was one: a concurrent or repeated request keeps the first
/// salt, so its commitment — and the command's payload — stay the same).
pub async fn reserve_profile(pool: &Pool, row: &ProfileRow) -> Result<ProfileRow> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "WITH ins AS (INSERT INTO user_profiles \
                 (user_id, profile, salt, commitment, command_id) \
                 VALUES ($1, $2::text::jsonb, $3, $4, $5) \
                 ON CONFLICT (user_id) DO NOTHING RETURNING {PROFILE_COLUMNS}) \
             SELECT * FROM ins UNION ALL \
             SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE user_id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM ins)"
        ))
        .await?;
    let r = client
        .query_opt(
            &stmt,
            &[
                &row.user_id,
                &row.profile_json,
                &row.salt,
                &row.commitment,
                row.command_id.as_uuid(),
            ],
        )
        .await?;
    if let Some(r) = r {
        return Ok(profile_from_row(&r));
    }
    // A concurrent insert committed after this statement's snapshot: read it now.
    drop(client);
    profile(pool, &row.user_id)
        .await?
        .ok_or_else(|| missing("profile", &row.user_id))
}

/// Replaces the profile of `row.user_id` if its `command_id` is still `expected`
/// (an abandoned reservation or a failed creation); returns whether it did.
pub async fn replace_profile(pool: &Pool, expected: CommandId, row: &ProfileRow) -> Result<bool> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE user_profiles SET profile = $2::text::jsonb, salt = $3, commitment = $4, \
             command_id = $5, updated_at = now() WHERE user_id = $1 AND command_id = $6",
        )
        .await?;
    let n = client
        .execute(
            &stmt,
            &[
                &row.user_id,
                &row.profile_json,
                &row.salt,
                &row.commitment,
                row.command_id.as_uuid(),
                expected.as_uuid(),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Links a profile to the command that creates its user (idempotent).
pub async fn link_profile_command(
    pool: &Pool,
    user_id: &str,
    commitment: &str,
    command_id: CommandId,
) -> Result<()> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE user_profiles SET command_id = $3, updated_at = now() \
             WHERE user_id = $1 AND commitment = $2 AND command_id <> $3",
        )
        .await?;
    client
        .execute(&stmt, &[&user_id, &commitment, command_id.as_uuid()])
        .await?;
    Ok(())
}
