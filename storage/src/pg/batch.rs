//! Batched read-model writes: a block's typed writes buffered in memory and written at
//! commit in a few multi-row statements.
//!
//! A [`BlockTx`](super::projection::BlockTx) opened with
//! [`begin_batched`](super::projection::BlockTx::begin_batched) checks each typed write's
//! input as the direct path does (same checks, same order, same errors) and pushes the
//! row here instead of sending a statement. [`Batch::flush`] writes them before the
//! recorded transactions and the position, in dependency order, one statement per table:
//! users, wallets, owners, proposals, transfers with their history rows (one statement: a
//! data-modifying CTE whose `RETURNING memo` feeds the history), decisions, the proposals'
//! counts and states (one `UPDATE … FROM unnest`, the last decision's state per
//! proposal), and the balances (one `UPDATE … FROM unnest`: the last ledger balance per
//! wallet, plus the credits after it).
//!
//! The result is the direct path's, row for row, whenever the direct path would succeed.
//! Where it could differ the batch refuses instead, and the projector re-applies the block
//! one transaction at a time (where the offending transaction is identified):
//! - a data error at flush (a unique key, a missing wallet or pending proposal: the
//!   updated-row count is not the number of distinct wallets or proposals);
//! - an order the direct path would refuse that a batch cannot see: a wallet or proposal
//!   used before the transaction that creates it, a decision after one that closed its
//!   proposal, a debit without the ledger's balance (the direct path's intermediate
//!   balance could go negative), a credit without it before a ledger balance (an
//!   intermediate overflow). Those are [`Batch::refused`], checked before any statement.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::projection::{ProjectionError, Result};

pub(crate) struct User {
    pub user_id: String,
    pub country: Option<String>,
    pub commitment: Option<String>,
    pub msp_id: Option<String>,
    pub tx_id: String,
    pub at: DateTime<Utc>,
}

pub(crate) struct Wallet {
    pub wallet_id: String,
    pub kind: &'static str,
    pub balance: String,
    pub threshold: Option<i32>,
    pub msp_id: Option<String>,
    pub tx_id: String,
    pub at: DateTime<Utc>,
}

pub(crate) struct Proposal {
    pub proposal_id: String,
    pub wallet_id: String,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: Option<String>,
    pub threshold: i32,
    pub tx_id: String,
    pub at: DateTime<Utc>,
}

pub(crate) struct Transfer {
    pub tx_id: String,
    pub transfer_id: String,
    pub kind: &'static str,
    pub from_wallet_id: Option<String>,
    pub to_wallet_id: String,
    pub amount: String,
    pub memo: Option<String>,
    pub proposal_id: Option<String>,
    pub tx_index: i32,
    pub at: DateTime<Utc>,
}

pub(crate) struct History {
    pub wallet_id: String,
    pub tx_id: String,
    pub direction: &'static str,
    pub counterparty: Option<String>,
    pub amount: String,
    pub tx_index: i32,
    pub at: DateTime<Utc>,
}

pub(crate) struct DecisionRow {
    pub proposal_id: String,
    pub approver_id: String,
    pub decision: &'static str,
    pub tx_id: String,
    pub at: DateTime<Utc>,
}

pub(crate) struct ProposalUpdate {
    pub proposal_id: String,
    pub approvals: Option<i32>,
    pub rejections: Option<i32>,
    pub state: &'static str,
    pub tx_id: String,
    pub at: DateTime<Utc>,
}

/// A balance change, in ledger order.
pub(crate) enum BalanceChange {
    /// The ledger's balance after the transaction.
    Set(String),
    Credit(String),
    /// A debit without the ledger's balance: refused (see `Batch::refused`).
    Debit,
}

pub(crate) struct BalanceOp {
    pub wallet_id: String,
    pub change: BalanceChange,
    pub at: DateTime<Utc>,
}

/// How far each buffer was filled at a savepoint.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Marks {
    users: usize,
    wallets: usize,
    owners: usize,
    proposals: usize,
    transfers: usize,
    history: usize,
    decisions: usize,
    proposal_updates: usize,
    balances: usize,
}

/// One block's buffered read-model writes.
#[derive(Default)]
pub(crate) struct Batch {
    pub users: Vec<User>,
    pub wallets: Vec<Wallet>,
    /// (wallet, owner)
    pub owners: Vec<(String, String)>,
    pub proposals: Vec<Proposal>,
    pub transfers: Vec<Transfer>,
    pub history: Vec<History>,
    pub decisions: Vec<DecisionRow>,
    pub proposal_updates: Vec<ProposalUpdate>,
    pub balances: Vec<BalanceOp>,
    /// Wallets and proposals used so far (a later creation in the block is refused).
    used_wallets: HashSet<String>,
    used_proposals: HashSet<String>,
    /// Why this block cannot be batched (checked at flush).
    refusal: Option<String>,
}

impl Batch {
    pub fn mark(&self) -> Marks {
        Marks {
            users: self.users.len(),
            wallets: self.wallets.len(),
            owners: self.owners.len(),
            proposals: self.proposals.len(),
            transfers: self.transfers.len(),
            history: self.history.len(),
            decisions: self.decisions.len(),
            proposal_updates: self.proposal_updates.len(),
            balances: self.balances.len(),
        }
    }

    /// Drops what was buffered after `m`. (What it marked as used stays so: at worst a
    /// needless refusal, never a wrong batch.)
    pub fn truncate(&mut self, m: Marks) {
        self.users.truncate(m.users);
        self.wallets.truncate(m.wallets);
        self.owners.truncate(m.owners);
        self.proposals.truncate(m.proposals);
        self.transfers.truncate(m.transfers);
        self.history.truncate(m.history);
        self.decisions.truncate(m.decisions);
        self.proposal_updates.truncate(m.proposal_updates);
        self.balances.truncate(m.balances);
    }

    pub fn refuse(&mut self, why: String) {
        if self.refusal.is_none() {
            self.refusal = Some(why);
        }
    }

    pub fn use_wallet(&mut self, wallet_id: &str) {
        if !self.used_wallets.contains(wallet_id) {
            self.used_wallets.insert(wallet_id.to_owned());
        }
    }

    pub fn use_proposal(&mut self, proposal_id: &str) {
        if !self.used_proposals.contains(proposal_id) {
            self.used_proposals.insert(proposal_id.to_owned());
        }
    }

    pub fn push_wallet(&mut self, w: Wallet, owners: &[String]) {
        if self.used_wallets.contains(&w.wallet_id) {
            let why = format!("wallet {:?} used before its creation", w.wallet_id);
            self.refuse(why);
        }
        for o in owners {
            self.owners.push((w.wallet_id.clone(), o.clone()));
        }
        self.wallets.push(w);
    }

    pub fn push_proposal(&mut self, p: Proposal) {
        if self.used_proposals.contains(&p.proposal_id) {
            let why = format!("proposal {:?} used before its creation", p.proposal_id);
            self.refuse(why);
        }
        self.use_wallet(&p.wallet_id);
        self.proposals.push(p);
    }

    pub fn push_balance(&mut self, op: BalanceOp) {
        self.use_wallet(&op.wallet_id);
        self.balances.push(op);
    }

    /// Why the block must be applied one transaction at a time, if it must: a refusal
    /// met while buffering, or an order of decisions or balance changes that only the
    /// direct path can judge.
    pub fn refused(&self) -> Option<String> {
        if let Some(r) = &self.refusal {
            return Some(r.clone());
        }
        let mut closed: HashSet<&str> = HashSet::new();
        for u in &self.proposal_updates {
            if closed.contains(u.proposal_id.as_str()) {
                return Some(format!(
                    "proposal {:?} decided on after it closed",
                    u.proposal_id
                ));
            }
            if u.state != "pending" {
                closed.insert(&u.proposal_id);
            }
        }
        let mut credited: HashSet<&str> = HashSet::new();
        for op in &self.balances {
            match &op.change {
                BalanceChange::Debit => {
                    return Some(format!(
                        "debit of wallet {:?} without the ledger's balance",
                        op.wallet_id
                    ));
                }
                BalanceChange::Credit(_) => {
                    credited.insert(&op.wallet_id);
                }
                BalanceChange::Set(_) => {
                    if credited.contains(op.wallet_id.as_str()) {
                        return Some(format!(
                            "credit of wallet {:?} without the ledger's balance before one with it",
                            op.wallet_id
                        ));
                    }
                }
            }
        }
        None
    }

    /// Per wallet: (wallet, last ledger balance, credits after it (flattened with
    /// their wallet), time of the last change). Call only when [`refused`](Self::refused)
    /// is None.
    #[allow(clippy::type_complexity)]
    pub fn balance_updates(
        &self,
    ) -> (
        Vec<&str>,
        Vec<Option<&str>>,
        Vec<DateTime<Utc>>,
        Vec<&str>,
        Vec<&str>,
    ) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut ids: Vec<&str> = Vec::new();
        let mut bases: Vec<Option<&str>> = Vec::new();
        let mut ats: Vec<DateTime<Utc>> = Vec::new();
        let mut credit_ids: Vec<&str> = Vec::new();
        let mut credits: Vec<&str> = Vec::new();
        for op in &self.balances {
            let i = *index.entry(op.wallet_id.as_str()).or_insert_with(|| {
                ids.push(op.wallet_id.as_str());
                bases.push(None);
                ats.push(op.at);
                ids.len() - 1
            });
            ats[i] = op.at;
            match &op.change {
                BalanceChange::Set(b) => bases[i] = Some(b.as_str()),
                BalanceChange::Credit(a) => {
                    credit_ids.push(op.wallet_id.as_str());
                    credits.push(a.as_str());
                }
                // Refused before (see `refused`).
                BalanceChange::Debit => {}
            }
        }
        (ids, bases, ats, credit_ids, credits)
    }

    /// Per proposal, the counts and state after its last decision of the block.
    pub fn proposal_finals(&self) -> Vec<ProposalUpdateRef<'_>> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<ProposalUpdateRef<'_>> = Vec::new();
        for u in &self.proposal_updates {
            let i = *index.entry(u.proposal_id.as_str()).or_insert_with(|| {
                out.push(ProposalUpdateRef {
                    proposal_id: &u.proposal_id,
                    approvals: None,
                    rejections: None,
                    state: u.state,
                    tx_id: &u.tx_id,
                    at: u.at,
                });
                out.len() - 1
            });
            let f = &mut out[i];
            if u.approvals.is_some() {
                f.approvals = u.approvals;
            }
            if u.rejections.is_some() {
                f.rejections = u.rejections;
            }
            f.state = u.state;
            f.tx_id = &u.tx_id;
            f.at = u.at;
        }
        out
    }
}

pub(crate) struct ProposalUpdateRef<'a> {
    pub proposal_id: &'a str,
    pub approvals: Option<i32>,
    pub rejections: Option<i32>,
    pub state: &'static str,
    pub tx_id: &'a str,
    pub at: DateTime<Utc>,
}

/// A statement on its way, borrowing its parameters.
pub(crate) type Pending<'a> = BoxFuture<'a, Result<u64, tokio_postgres::Error>>;

const USERS: &str = "INSERT INTO users (user_id, country, profile_commitment, msp_id, channel, \
     created_tx_id, created_block, created_at) \
     SELECT u.id, u.country, u.commitment, u.msp, $1, u.tx, $2, u.at \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::timestamptz[]) AS u(id, country, commitment, msp, tx, at)";

const WALLETS: &str = "INSERT INTO wallets (wallet_id, kind, balance, threshold, msp_id, channel, \
     created_tx_id, created_block, created_at, updated_block, updated_at) \
     SELECT u.id, u.kind, u.balance::numeric, u.threshold, u.msp, $1, u.tx, $2, \
            u.at, $2, u.at \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], \
                 $8::text[], $9::timestamptz[]) \
          AS u(id, kind, balance, threshold, msp, tx, at)";

const OWNERS: &str = "INSERT INTO wallet_owners (wallet_id, owner_id) \
     SELECT u.w, u.o FROM unnest($1::text[], $2::text[]) AS u(w, o)";

const PROPOSALS: &str = "INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, \
     state, threshold, channel, created_tx_id, created_block, created_at) \
     SELECT u.id, u.w, u.to_w, u.amount::numeric, u.memo, 'pending', u.threshold, \
            $1, u.tx, $2, u.at \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::int4[], $9::text[], $10::timestamptz[]) \
          AS u(id, w, to_w, amount, memo, threshold, tx, at) \
     WHERE EXISTS (SELECT 1 FROM wallets w WHERE w.wallet_id = u.w)";

/// The transfers, and their history rows with the memo each transfer got (a multisig
/// transfer takes its proposal's): one statement, the CTE's `RETURNING` feeding the rows.
const TRANSFERS: &str = "WITH t AS ( \
       INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, \
         to_wallet_id, amount, memo, proposal_id, block_number, tx_index, tx_timestamp) \
       SELECT $1, u.tx, u.id, u.kind, u.from_w, u.to_w, u.amount::numeric, \
              COALESCE(u.memo, (SELECT p.memo FROM proposals p \
                                WHERE p.proposal_id = u.proposal)), \
              u.proposal, $2, u.idx, u.at \
       FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                   $8::text[], $9::text[], $10::text[], $11::int4[], $12::timestamptz[]) \
            AS u(tx, id, kind, from_w, to_w, amount, memo, proposal, idx, at) \
       RETURNING tx_id, memo) \
     INSERT INTO wallet_history (wallet_id, channel, tx_id, direction, \
       counterparty_wallet_id, amount, memo, block_number, tx_index, tx_timestamp) \
     SELECT h.w, $1, h.tx, h.d, h.c, h.amount::numeric, t.memo, $2, h.idx, h.at \
     FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
                 $18::int4[], $19::timestamptz[]) AS h(w, tx, d, c, amount, idx, at) \
     JOIN t ON t.tx_id = h.tx";

const DECISIONS: &str = "INSERT INTO proposal_decisions (proposal_id, approver_id, decision, channel, \
     tx_id, block_number, tx_timestamp) \
     SELECT u.p, u.a, u.d, $1, u.tx, $2, u.at \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) \
          AS u(p, a, d, tx, at)";

const DECIDE: &str = "UPDATE proposals p SET \
       approval_count = COALESCE(u.approvals, p.approval_count), \
       rejection_count = COALESCE(u.rejections, p.rejection_count), \
       state = u.state, \
       closed_tx_id = CASE WHEN u.state = 'pending' THEN NULL ELSE u.tx END, \
       closed_block = CASE WHEN u.state = 'pending' THEN NULL ELSE $1::int8 END, \
       closed_at = CASE WHEN u.state = 'pending' THEN NULL ELSE u.at END \
     FROM unnest($2::text[], $3::int4[], $4::int4[], $5::text[], $6::text[], \
                 $7::timestamptz[]) AS u(id, approvals, rejections, state, tx, at) \
     WHERE p.proposal_id = u.id AND p.state = 'pending'";

/// The last ledger balance per wallet, plus the credits after it.
const BALANCES: &str = "WITH c AS (SELECT c.w, sum(c.amount::numeric) AS s \
                FROM unnest($5::text[], $6::text[]) AS c(w, amount) GROUP BY c.w) \
     UPDATE wallets w SET \
       balance = COALESCE(u.base::numeric, w.balance) + COALESCE(c.s, 0), \
       updated_block = $1, updated_at = u.at \
     FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u(id, base, at) \
          LEFT JOIN c ON c.w = u.id \
     WHERE w.wallet_id = u.id";

/// Writes a batch inside `tx` (the block's transaction), then the statements of `tail`
/// (the recorded transactions and the position), all pipelined: every statement is sent
/// before the first reply is awaited, and PostgreSQL runs them in the order sent (the
/// dependency order above). The first failing statement's error is returned (those
/// after it fail only because the transaction is aborted). Returns the results of `tail`.
pub(crate) async fn flush<'f>(
    tx: &'f deadpool_postgres::Transaction<'_>,
    channel: &'f str,
    block: i64,
    b: &'f Batch,
    tail: Vec<Pending<'f>>,
) -> Result<Vec<u64>> {
    if let Some(why) = b.refused() {
        return Err(ProjectionError::BatchRefused(why));
    }
    // Prepared before anything is sent (a first prepare would otherwise reorder the pipe).
    let mut sql = Vec::new();
    for (nonempty, text) in [
        (!b.users.is_empty(), USERS),
        (!b.wallets.is_empty(), WALLETS),
        (!b.owners.is_empty(), OWNERS),
        (!b.proposals.is_empty(), PROPOSALS),
        (!b.transfers.is_empty(), TRANSFERS),
        (!b.decisions.is_empty(), DECISIONS),
        (!b.proposal_updates.is_empty(), DECIDE),
        (!b.balances.is_empty(), BALANCES),
    ] {
        if nonempty {
            sql.push(text);
        }
    }
    let prepared = futures::future::try_join_all(sql.iter().map(|s| tx.prepare_cached(s))).await?;
    let mut stmt = prepared.into_iter();
    let mut next = || {
        stmt.next()
            .ok_or_else(|| ProjectionError::InvalidInput("batch statements out of step".to_owned()))
    };

    let u = &b.users;
    let u_ids: Vec<&str> = u.iter().map(|u| u.user_id.as_str()).collect();
    let u_countries: Vec<Option<&str>> = u.iter().map(|u| u.country.as_deref()).collect();
    let u_commitments: Vec<Option<&str>> = u.iter().map(|u| u.commitment.as_deref()).collect();
    let u_msps: Vec<Option<&str>> = u.iter().map(|u| u.msp_id.as_deref()).collect();
    let u_txs: Vec<&str> = u.iter().map(|u| u.tx_id.as_str()).collect();
    let u_ats: Vec<DateTime<Utc>> = u.iter().map(|u| u.at).collect();

    let w = &b.wallets;
    let w_ids: Vec<&str> = w.iter().map(|w| w.wallet_id.as_str()).collect();
    let w_kinds: Vec<&str> = w.iter().map(|w| w.kind).collect();
    let w_balances: Vec<&str> = w.iter().map(|w| w.balance.as_str()).collect();
    let w_thresholds: Vec<Option<i32>> = w.iter().map(|w| w.threshold).collect();
    let w_msps: Vec<Option<&str>> = w.iter().map(|w| w.msp_id.as_deref()).collect();
    let w_txs: Vec<&str> = w.iter().map(|w| w.tx_id.as_str()).collect();
    let w_ats: Vec<DateTime<Utc>> = w.iter().map(|w| w.at).collect();

    let o_wallets: Vec<&str> = b.owners.iter().map(|(w, _)| w.as_str()).collect();
    let o_owners: Vec<&str> = b.owners.iter().map(|(_, o)| o.as_str()).collect();

    let p = &b.proposals;
    let p_ids: Vec<&str> = p.iter().map(|p| p.proposal_id.as_str()).collect();
    let p_wallets: Vec<&str> = p.iter().map(|p| p.wallet_id.as_str()).collect();
    let p_to: Vec<&str> = p.iter().map(|p| p.to_wallet_id.as_str()).collect();
    let p_amounts: Vec<&str> = p.iter().map(|p| p.amount.as_str()).collect();
    let p_memos: Vec<Option<&str>> = p.iter().map(|p| p.memo.as_deref()).collect();
    let p_thresholds: Vec<i32> = p.iter().map(|p| p.threshold).collect();
    let p_txs: Vec<&str> = p.iter().map(|p| p.tx_id.as_str()).collect();
    let p_ats: Vec<DateTime<Utc>> = p.iter().map(|p| p.at).collect();

    let t = &b.transfers;
    let t_txs: Vec<&str> = t.iter().map(|t| t.tx_id.as_str()).collect();
    let t_ids: Vec<&str> = t.iter().map(|t| t.transfer_id.as_str()).collect();
    let t_kinds: Vec<&str> = t.iter().map(|t| t.kind).collect();
    let t_from: Vec<Option<&str>> = t.iter().map(|t| t.from_wallet_id.as_deref()).collect();
    let t_to: Vec<&str> = t.iter().map(|t| t.to_wallet_id.as_str()).collect();
    let t_amounts: Vec<&str> = t.iter().map(|t| t.amount.as_str()).collect();
    let t_memos: Vec<Option<&str>> = t.iter().map(|t| t.memo.as_deref()).collect();
    let t_proposals: Vec<Option<&str>> = t.iter().map(|t| t.proposal_id.as_deref()).collect();
    let t_idxs: Vec<i32> = t.iter().map(|t| t.tx_index).collect();
    let t_ats: Vec<DateTime<Utc>> = t.iter().map(|t| t.at).collect();
    let h = &b.history;
    let h_wallets: Vec<&str> = h.iter().map(|h| h.wallet_id.as_str()).collect();
    let h_txs: Vec<&str> = h.iter().map(|h| h.tx_id.as_str()).collect();
    let h_dirs: Vec<&str> = h.iter().map(|h| h.direction).collect();
    let h_counter: Vec<Option<&str>> = h.iter().map(|h| h.counterparty.as_deref()).collect();
    let h_amounts: Vec<&str> = h.iter().map(|h| h.amount.as_str()).collect();
    let h_idxs: Vec<i32> = h.iter().map(|h| h.tx_index).collect();
    let h_ats: Vec<DateTime<Utc>> = h.iter().map(|h| h.at).collect();

    let d = &b.decisions;
    let d_ps: Vec<&str> = d.iter().map(|d| d.proposal_id.as_str()).collect();
    let d_approvers: Vec<&str> = d.iter().map(|d| d.approver_id.as_str()).collect();
    let d_decisions: Vec<&str> = d.iter().map(|d| d.decision).collect();
    let d_txs: Vec<&str> = d.iter().map(|d| d.tx_id.as_str()).collect();
    let d_ats: Vec<DateTime<Utc>> = d.iter().map(|d| d.at).collect();

    let finals = b.proposal_finals();
    let f_ids: Vec<&str> = finals.iter().map(|f| f.proposal_id).collect();
    let f_approvals: Vec<Option<i32>> = finals.iter().map(|f| f.approvals).collect();
    let f_rejections: Vec<Option<i32>> = finals.iter().map(|f| f.rejections).collect();
    let f_states: Vec<&str> = finals.iter().map(|f| f.state).collect();
    let f_txs: Vec<&str> = finals.iter().map(|f| f.tx_id).collect();
    let f_ats: Vec<DateTime<Utc>> = finals.iter().map(|f| f.at).collect();

    let (b_ids, b_bases, b_ats, c_ids, c_amounts) = b.balance_updates();

    // (statement, rows it must change, what they are) in dependency order.
    let mut pipe: Vec<(Pending<'_>, Option<(u64, &str)>)> = Vec::new();
    if !u.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &channel,
                        &block,
                        &u_ids,
                        &u_countries,
                        &u_commitments,
                        &u_msps,
                        &u_txs,
                        &u_ats,
                    ],
                )
                .await
            }),
            None,
        ));
    }
    if !w.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &channel,
                        &block,
                        &w_ids,
                        &w_kinds,
                        &w_balances,
                        &w_thresholds,
                        &w_msps,
                        &w_txs,
                        &w_ats,
                    ],
                )
                .await
            }),
            None,
        ));
    }
    if !b.owners.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move { tx.execute(&s, &[&o_wallets, &o_owners]).await }),
            None,
        ));
    }
    if !p.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &channel,
                        &block,
                        &p_ids,
                        &p_wallets,
                        &p_to,
                        &p_amounts,
                        &p_memos,
                        &p_thresholds,
                        &p_txs,
                        &p_ats,
                    ],
                )
                .await
            }),
            Some((
                p.len() as u64,
                "a proposal's wallet does not exist in the read models",
            )),
        ));
    }
    if !t.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &channel,
                        &block,
                        &t_txs,
                        &t_ids,
                        &t_kinds,
                        &t_from,
                        &t_to,
                        &t_amounts,
                        &t_memos,
                        &t_proposals,
                        &t_idxs,
                        &t_ats,
                        &h_wallets,
                        &h_txs,
                        &h_dirs,
                        &h_counter,
                        &h_amounts,
                        &h_idxs,
                        &h_ats,
                    ],
                )
                .await
            }),
            Some((
                h.len() as u64,
                "history rows lost (two transfers with one tx id)",
            )),
        ));
    }
    if !d.is_empty() {
        let s = next()?;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &channel,
                        &block,
                        &d_ps,
                        &d_approvers,
                        &d_decisions,
                        &d_txs,
                        &d_ats,
                    ],
                )
                .await
            }),
            None,
        ));
    }
    if !finals.is_empty() {
        let s = next()?;
        let n = finals.len() as u64;
        pipe.push((
            Box::pin(async move {
                tx.execute(
                    &s,
                    &[
                        &block,
                        &f_ids,
                        &f_approvals,
                        &f_rejections,
                        &f_states,
                        &f_txs,
                        &f_ats,
                    ],
                )
                .await
            }),
            Some((
                n,
                "a proposal decided on does not exist or is not pending in the read models",
            )),
        ));
    }
    if !b_ids.is_empty() {
        let s = next()?;
        let n = b_ids.len() as u64;
        pipe.push((
            Box::pin(async move {
                tx.execute(&s, &[&block, &b_ids, &b_bases, &b_ats, &c_ids, &c_amounts])
                    .await
            }),
            Some((
                n,
                "a wallet whose balance changes does not exist in the read models",
            )),
        ));
    }
    let ours = pipe.len();
    let (futures, expected): (Vec<_>, Vec<_>) = pipe.into_iter().unzip();
    let results = futures::future::join_all(futures.into_iter().chain(tail)).await;
    let mut out = Vec::with_capacity(results.len() - ours);
    for (i, r) in results.into_iter().enumerate() {
        let n = r?;
        if let Some(Some((want, what))) = expected.get(i)
            && n != *want
        {
            return Err(ProjectionError::InvalidInput(format!(
                "block {block}: {what} ({n} rows changed, {want} expected)"
            )));
        }
        if i >= ours {
            out.push(n);
        }
    }
    Ok(out)
}
