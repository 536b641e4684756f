//! Commit-time validation of a block in two phases, as Fabric's v20 validator and its state
//! validator split it:
//!
//! 1. **Check ahead, in parallel**: every transaction is checked on its own by the peer's
//!    [`Validator::check_ahead`] (`ValidateTransaction`, the ledger duplicate check, the
//!    chaincode's validation with the endorsement policy, and MVCC against the ledger alone)
//!    — the expensive, independent part. It may run while the previous block is still being
//!    written.
//! 2. **Settle, in order**: [`Validator::settle`] applies what depends on the rest of the
//!    block: the ledger duplicate check for the ids of the block written meanwhile
//!    ([`Written`]), `markTXIdDuplicates` among the transactions still valid, MVCC (redone
//!    when a read is of a key written by an earlier valid transaction of the block or by the
//!    block written meanwhile) and the block index (an id's first occurrence). The codes are
//!    therefore those of the sequential validation.

use super::Written;
use crate::ledger::{LedgerError, StateWrite, TxRecord};
use crate::peer::{BlockState, Checked, Validator};

/// One transaction checked on its own.
pub(crate) type Speculated = Checked;

/// Blocks smaller than this are checked on the calling thread.
const PARALLEL_MIN: usize = 8;

/// Phase 1: checks every envelope on its own, on all cores.
pub(crate) fn speculate(
    v: &Validator<'_>,
    envelopes: &[Vec<u8>],
) -> Result<Vec<Speculated>, LedgerError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || envelopes.len() < PARALLEL_MIN {
        return envelopes.iter().map(|e| v.check_ahead(e)).collect();
    }
    let chunk = envelopes.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Speculated>, LedgerError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = envelopes
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|e| v.check_ahead(e))
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

/// Phase 2: the block's codes in order. Must run once `previous` is in the ledger.
pub(crate) fn resolve(
    v: &Validator<'_>,
    number: u64,
    speculated: Vec<Speculated>,
    previous: Option<&Written>,
) -> Result<Resolved, LedgerError> {
    let mut state = BlockState::default();
    let mut filter = Vec::with_capacity(speculated.len());
    for (i, checked) in speculated.into_iter().enumerate() {
        let code = v.settle(number, i as u64, checked, &mut state, previous)?;
        filter.push(u8::try_from(code as i32).unwrap_or(u8::MAX));
    }
    Ok((filter, state.index, state.writes))
}
