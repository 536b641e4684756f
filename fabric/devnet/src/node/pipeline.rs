//! Commit-time validation of a block in two phases, as Fabric's v20 validator and its state
//! validator split it:
//!
//! 1. **Speculate, in parallel**: every transaction is validated by the peer's own
//!    [`Validator::validate`] on its own, with an empty per-block overlay (signatures,
//!    tx id, proposal hash, endorsement policy, read-write set, ledger duplicates and
//!    versions) — the expensive, independent part.
//! 2. **Resolve, in order**: the per-block effects the speculation could not see — a
//!    transaction id repeated earlier in the block, a read of a key an earlier valid
//!    transaction of the block wrote, and the block written concurrently with phase 1
//!    ([`Written`]) — give the same codes the sequential validation gives. A transaction whose
//!    reads touch the concurrently written block is validated again (the ledger now holds
//!    it); a case whose sequential outcome depends on the order of the read-write set checks
//!    (a malformed read-write set after a read of a key written in the block) falls back to
//!    validating the whole block sequentially.

use std::collections::HashSet;

use prost::Message;

use super::Written;
use crate::ledger::{LedgerError, StateWrite, TxRecord};
use crate::peer::{BlockState, Validator};
use gxd_fabric::proto::common::{Envelope, Payload};
use gxd_fabric::proto::kvrwset::KvrwSet;
use gxd_fabric::proto::protos::{
    ChaincodeAction, ChaincodeActionPayload, ProposalResponsePayload, Transaction, TxValidationCode,
};
use gxd_fabric::proto::rwset::TxReadWriteSet;

/// One transaction validated on its own.
#[derive(Debug)]
pub(crate) struct Speculated {
    code: TxValidationCode,
    /// The transaction id, when validation got far enough to index it.
    tx_id: Option<String>,
    writes: Vec<StateWrite>,
    /// `(namespace, key)` of every read (when the code depends on reads).
    reads: Vec<(String, String)>,
}

/// Blocks smaller than this are validated on the calling thread.
const PARALLEL_MIN: usize = 8;

/// Codes decided before the duplicate check: the block overlay cannot change them.
fn decided_before_duplicates(code: TxValidationCode, tx_id: Option<&String>) -> bool {
    use TxValidationCode as C;
    match code {
        C::NilEnvelope
        | C::BadCreatorSignature
        | C::BadChannelHeader
        | C::BadCommonHeader
        | C::UnknownTxType
        | C::TargetChainNotFound
        | C::BadProposalTxid => true,
        // Undecodable envelope or payload; a BadPayload with a tx id comes after the check.
        C::BadPayload => tx_id.is_none(),
        _ => false,
    }
}

/// Codes decided inside the read-write set loop, where reads and other checks interleave.
fn decided_in_rwset_loop(code: TxValidationCode) -> bool {
    use TxValidationCode as C;
    matches!(
        code,
        C::BadRwset | C::IllegalWriteset | C::PhantomReadConflict | C::InvalidWriteset
    )
}

fn needs_reads(code: TxValidationCode) -> bool {
    matches!(
        code,
        TxValidationCode::Valid | TxValidationCode::MvccReadConflict
    ) || decided_in_rwset_loop(code)
}

/// The keys a transaction read, in every namespace whose read-write set decodes.
fn read_keys(envelope_bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rwset = (|| {
        let env = Envelope::decode(envelope_bytes).ok()?;
        let payload = Payload::decode(env.payload.as_slice()).ok()?;
        let tx = Transaction::decode(payload.data.as_slice()).ok()?;
        let cap = ChaincodeActionPayload::decode(tx.actions.first()?.payload.as_slice()).ok()?;
        let prp = ProposalResponsePayload::decode(cap.action?.proposal_response_payload.as_slice())
            .ok()?;
        let cca = ChaincodeAction::decode(prp.extension.as_slice()).ok()?;
        TxReadWriteSet::decode(cca.results.as_slice()).ok()
    })();
    for ns in rwset.map(|r| r.ns_rwset).unwrap_or_default() {
        if let Ok(kv) = KvrwSet::decode(ns.rwset.as_slice()) {
            out.extend(kv.reads.into_iter().map(|r| (ns.namespace.clone(), r.key)));
        }
    }
    out
}

fn speculate_one(
    v: &Validator<'_>,
    number: u64,
    tx_num: usize,
    envelope: &[u8],
) -> Result<Speculated, LedgerError> {
    let mut state = BlockState::default();
    let code = v.validate(number, tx_num as u64, envelope, &mut state)?;
    let tx_id = state.index.pop().map(|(id, _)| id);
    let reads = if needs_reads(code) {
        read_keys(envelope)
    } else {
        Vec::new()
    };
    Ok(Speculated {
        code,
        tx_id,
        writes: state.writes,
        reads,
    })
}

/// Phase 1: validates every envelope on its own, on all cores.
pub(crate) fn speculate(
    v: &Validator<'_>,
    number: u64,
    envelopes: &[Vec<u8>],
) -> Result<Vec<Speculated>, LedgerError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || envelopes.len() < PARALLEL_MIN {
        return envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| speculate_one(v, number, i, e))
            .collect();
    }
    let chunk = envelopes.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Speculated>, LedgerError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = envelopes
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, e)| speculate_one(v, number, c * chunk + i, e))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(envelopes.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Filter, tx index and state writes of a block.
pub(crate) type Resolved = (Vec<u8>, Vec<(String, TxRecord)>, Vec<StateWrite>);

fn filter_code(code: TxValidationCode) -> u8 {
    u8::try_from(code as i32).unwrap_or(u8::MAX)
}

/// The sequential validation, for the cases [`resolve`] leaves to it.
fn sequential(
    v: &Validator<'_>,
    number: u64,
    envelopes: &[Vec<u8>],
) -> Result<Resolved, LedgerError> {
    let mut state = BlockState::default();
    let mut filter = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.iter().enumerate() {
        filter.push(filter_code(v.validate(number, i as u64, env, &mut state)?));
    }
    Ok((filter, state.index, state.writes))
}

/// Phase 2: the block's codes in order. Must run once `previous` is in the ledger.
pub(crate) fn resolve(
    v: &Validator<'_>,
    number: u64,
    envelopes: &[Vec<u8>],
    speculated: Vec<Speculated>,
    previous: Option<&Written>,
) -> Result<Resolved, LedgerError> {
    use TxValidationCode as C;
    let mut seen: HashSet<String> = HashSet::new();
    let mut updated: HashSet<(String, String)> = HashSet::new();
    let mut filter = Vec::with_capacity(envelopes.len());
    let mut index = Vec::with_capacity(envelopes.len());
    let mut writes = Vec::new();
    for (i, mut s) in speculated.into_iter().enumerate() {
        let speculated_code = s.code;
        let code = if decided_before_duplicates(s.code, s.tx_id.as_ref()) {
            s.code
        } else if s.code == C::DuplicateTxid
            || s.tx_id.as_ref().is_some_and(|id| {
                seen.contains(id) || previous.is_some_and(|p| p.tx_ids.contains(id))
            })
        {
            C::DuplicateTxid
        } else {
            if let Some(p) = previous
                && s.reads.iter().any(|k| p.keys.contains(k))
            {
                // Read a key of the block written meanwhile: validate again against it.
                s = speculate_one(v, number, i, &envelopes[i])?;
            }
            let conflict = s.reads.iter().any(|k| updated.contains(k));
            match s.code {
                C::Valid | C::MvccReadConflict if conflict => C::MvccReadConflict,
                code if conflict && decided_in_rwset_loop(code) => {
                    return sequential(v, number, envelopes);
                }
                code => code,
            }
        };
        if code != C::DuplicateTxid
            && let Some(id) = &s.tx_id
        {
            seen.insert(id.clone());
            index.push((
                id.clone(),
                TxRecord {
                    block: number,
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    code: code as i32,
                },
            ));
        }
        if code == C::Valid {
            for w in s.writes {
                updated.insert((w.namespace.clone(), w.key.clone()));
                writes.push(w);
            }
        } else if code != speculated_code {
            tracing::info!(
                tx_id = s.tx_id.as_deref().unwrap_or(""),
                code = code.as_str_name(),
                block = number,
                "transaction invalidated"
            );
        }
        filter.push(filter_code(code));
    }
    Ok((filter, index, writes))
}
