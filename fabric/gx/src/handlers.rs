//! GX's projection: each contract event → the read-model writes of
//! [`gxd_storage::pg::read_models`], inside the projector's block transaction.
//!
//! Exactly once by construction: the projector commits a block with its position as a
//! compare-and-set, and every row written here has a unique key derived from the
//! ledger (user id, wallet id, (channel, tx id) of a transfer, (proposal, approver) of
//! a decision), so a replay fails instead of doubling. Balances come from the event's
//! `fromBalance` / `toBalance` when present — the ledger's truth — and are computed
//! only where the event has none (the initial mint sets the supply). Every transfer
//! writes both history sides.
//!
//! An event of another chaincode is not GX's and is ignored; an unknown GX event name
//! or a malformed payload is [`HandlerError::Poison`].

use gxd_storage::pg::projection::{
    BlockTx, ChaincodeEvent, HandlerError, ProjectionHandler, TxContext,
};
use gxd_storage::pg::read_models::{
    Decision, NewDecision, NewProposal, NewTransfer, NewUser, NewWallet, ProposalState,
    TransferKind, WalletKind,
};

use crate::contract::{GxEvent, ProposalStatus};

/// The GX projection handler for events of chaincode `chaincode`.
#[derive(Debug, Clone)]
pub struct GxProjection {
    chaincode: String,
}

impl GxProjection {
    pub fn new(chaincode: impl Into<String>) -> Self {
        GxProjection {
            chaincode: chaincode.into(),
        }
    }
}

fn state(status: ProposalStatus) -> ProposalState {
    match status {
        ProposalStatus::Pending => ProposalState::Pending,
        ProposalStatus::Executed => ProposalState::Executed,
        ProposalStatus::Rejected => ProposalState::Rejected,
    }
}

fn memo(m: &str) -> Option<&str> {
    (!m.is_empty()).then_some(m)
}

fn count(what: &str, n: usize) -> Result<u32, HandlerError> {
    u32::try_from(n).map_err(|_| HandlerError::Poison(format!("{what} count {n} out of range")))
}

#[async_trait::async_trait]
impl ProjectionHandler for GxProjection {
    async fn apply(
        &self,
        tx: &mut BlockTx<'_>,
        ctx: &TxContext,
        event: &ChaincodeEvent,
    ) -> Result<(), HandlerError> {
        if event.chaincode_id != self.chaincode {
            return Ok(());
        }
        let decoded = GxEvent::decode(&event.name, &event.payload)
            .map_err(|e| HandlerError::Poison(e.to_string()))?;
        match decoded {
            GxEvent::SystemBootstrapped(e) => {
                tx.create_wallet(
                    ctx,
                    &NewWallet {
                        wallet_id: &e.treasury_wallet_id,
                        kind: WalletKind::Treasury,
                        balance: "0",
                        threshold: None,
                        msp_id: Some(&e.msp_id),
                        owners: &[],
                    },
                )
                .await?;
                tx.apply_transfer(
                    ctx,
                    &NewTransfer {
                        transfer_id: &e.treasury_wallet_id,
                        kind: TransferKind::Mint,
                        from_wallet_id: None,
                        to_wallet_id: &e.treasury_wallet_id,
                        amount: &e.initial_supply,
                        memo: None,
                        proposal_id: None,
                        from_balance: None,
                        to_balance: Some(&e.initial_supply),
                    },
                )
                .await?;
            }
            GxEvent::UserCreated(e) => {
                tx.insert_user(
                    ctx,
                    &NewUser {
                        user_id: &e.user_id,
                        country: e.profile.get("country").and_then(|v| v.as_str()),
                        profile_commitment: e.profile.get("commitment").and_then(|v| v.as_str()),
                        msp_id: Some(&e.msp_id),
                    },
                )
                .await?;
                tx.create_wallet(
                    ctx,
                    &NewWallet {
                        wallet_id: &e.wallet_id,
                        kind: WalletKind::User,
                        balance: "0",
                        threshold: None,
                        msp_id: Some(&e.msp_id),
                        owners: std::slice::from_ref(&e.user_id),
                    },
                )
                .await?;
            }
            GxEvent::TokensTransferred(e) => {
                tx.apply_transfer(
                    ctx,
                    &NewTransfer {
                        transfer_id: &e.transfer_id,
                        kind: TransferKind::Transfer,
                        from_wallet_id: Some(&e.from_wallet_id),
                        to_wallet_id: &e.to_wallet_id,
                        amount: &e.amount,
                        memo: memo(&e.memo),
                        proposal_id: None,
                        from_balance: Some(&e.from_balance),
                        to_balance: Some(&e.to_balance),
                    },
                )
                .await?;
            }
            GxEvent::MultisigWalletCreated(e) => {
                tx.create_wallet(
                    ctx,
                    &NewWallet {
                        wallet_id: &e.wallet_id,
                        kind: WalletKind::Multisig,
                        balance: "0",
                        threshold: Some(e.threshold),
                        msp_id: Some(&e.msp_id),
                        owners: &e.owners,
                    },
                )
                .await?;
            }
            GxEvent::TransferProposed(e) => {
                tx.insert_proposal(
                    ctx,
                    &NewProposal {
                        proposal_id: &e.proposal_id,
                        wallet_id: &e.from_wallet_id,
                        to_wallet_id: &e.to_wallet_id,
                        amount: &e.amount,
                        memo: memo(&e.memo),
                        threshold: e.threshold,
                    },
                )
                .await?;
            }
            GxEvent::TransferApproved(e) => {
                tx.record_decision(
                    ctx,
                    &NewDecision {
                        proposal_id: &e.proposal_id,
                        approver_id: &e.approver_id,
                        decision: Decision::Approve,
                        approval_count: Some(count("approval", e.approvals.len())?),
                        rejection_count: None,
                        state: state(e.status),
                    },
                )
                .await?;
                if e.executed {
                    tx.apply_transfer(
                        ctx,
                        &NewTransfer {
                            transfer_id: &e.proposal_id,
                            kind: TransferKind::Multisig,
                            from_wallet_id: Some(&e.from_wallet_id),
                            to_wallet_id: &e.to_wallet_id,
                            amount: &e.amount,
                            memo: None,
                            proposal_id: Some(&e.proposal_id),
                            from_balance: e.from_balance.as_deref(),
                            to_balance: e.to_balance.as_deref(),
                        },
                    )
                    .await?;
                }
            }
            GxEvent::TransferRejected(e) => {
                tx.record_decision(
                    ctx,
                    &NewDecision {
                        proposal_id: &e.proposal_id,
                        approver_id: &e.approver_id,
                        decision: Decision::Reject,
                        approval_count: None,
                        rejection_count: Some(count("rejection", e.rejections.len())?),
                        state: state(e.status),
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}
