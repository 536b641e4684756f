//! Blocks: Fabric's header and data hashes, and a typed view of a committed block.
//!
//! Hashes, as Fabric's `protoutil` computes them:
//! - [`block_header_hash`] = SHA-256 of the ASN.1 DER encoding of
//!   `SEQUENCE { number INTEGER, previousHash OCTET STRING, dataHash OCTET STRING }`
//!   ([`block_header_bytes`]); block *n*'s `previous_hash` is this hash of block *n−1*'s header.
//! - [`block_data_hash`] = SHA-256 of the concatenation of the block's data entries.
//!
//! [`ParsedBlock::parse`] decodes a committed `common.Block` (as the peer's Deliver service
//! sends it) into its number, hashes and transactions (tx id, header type, creator MSP,
//! chaincode, arguments, chaincode event, timestamp, validation code from the
//! TRANSACTIONS_FILTER metadata). Decoding never panics: malformed input gives a [`BlockError`].

use std::time::{Duration, SystemTime};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::{common, google_protobuf, msp, protos};

/// Index of the TRANSACTIONS_FILTER entry in `BlockMetadata.metadata`.
pub const TRANSACTIONS_FILTER_INDEX: usize =
    common::BlockMetadataIndex::TransactionsFilter as usize;

/// Errors decoding or checking a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("malformed block: {0}")]
    Malformed(String),
    #[error("block has no header")]
    MissingHeader,
    #[error("block {0} has no TRANSACTIONS_FILTER metadata")]
    MissingTransactionsFilter(u64),
    #[error(
        "block {number}: TRANSACTIONS_FILTER has {filter} entries for {transactions} transactions"
    )]
    FilterLength {
        number: u64,
        filter: usize,
        transactions: usize,
    },
    #[error("block {number}: transaction {index} is marked VALID but cannot be decoded: {reason}")]
    MalformedValidTransaction {
        number: u64,
        index: usize,
        reason: String,
    },
    #[error("block {number}: data hash mismatch (header {expected}, computed {actual})")]
    DataHashMismatch {
        number: u64,
        expected: String,
        actual: String,
    },
    #[error("block {number}: previous_hash {actual} does not match the hash of block {} ({expected})", number.wrapping_sub(1))]
    ChainBroken {
        number: u64,
        expected: String,
        actual: String,
    },
    #[error("expected block {expected}, got block {actual}")]
    UnexpectedNumber { expected: u64, actual: u64 },
}

/// DER encoding of Fabric's block header (`protoutil.BlockHeaderBytes`).
pub fn block_header_bytes(number: u64, previous_hash: &[u8], data_hash: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(previous_hash.len() + data_hash.len() + 20);
    // INTEGER: minimal big-endian two's complement of a non-negative number.
    let be = number.to_be_bytes();
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
    let mut int = be[first..].to_vec();
    if int[0] & 0x80 != 0 {
        int.insert(0, 0);
    }
    der_tlv(&mut content, 0x02, &int);
    der_tlv(&mut content, 0x04, previous_hash);
    der_tlv(&mut content, 0x04, data_hash);
    let mut out = Vec::with_capacity(content.len() + 6);
    der_tlv(&mut out, 0x30, &content);
    out
}

fn der_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = (len as u64).to_be_bytes();
        let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
        out.push(0x80 | (be.len() - first) as u8);
        out.extend_from_slice(&be[first..]);
    }
    out.extend_from_slice(value);
}

/// Fabric's block header hash: SHA-256 of [`block_header_bytes`].
pub fn block_header_hash(header: &common::BlockHeader) -> [u8; 32] {
    Sha256::digest(block_header_bytes(
        header.number,
        &header.previous_hash,
        &header.data_hash,
    ))
    .into()
}

/// Fabric's block data hash: SHA-256 of the data entries concatenated.
pub fn block_data_hash(data: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in data {
        h.update(d);
    }
    h.finalize().into()
}

/// Checks a raw block's header data hash against its data (before decoding transactions).
pub fn verify_block_data_hash(block: &common::Block) -> Result<(), BlockError> {
    let header = block.header.as_ref().ok_or(BlockError::MissingHeader)?;
    let empty = Vec::new();
    let data = block.data.as_ref().map(|d| &d.data).unwrap_or(&empty);
    let actual = block_data_hash(data);
    if actual.as_slice() != header.data_hash.as_slice() {
        return Err(BlockError::DataHashMismatch {
            number: header.number,
            expected: hex::encode(&header.data_hash),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// Converts a protobuf timestamp to `SystemTime` (None if out of range).
pub fn timestamp_to_system_time(ts: &google_protobuf::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    if ts.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(u64::try_from(ts.seconds).ok()?, nanos))
    } else {
        let back = Duration::from_secs(ts.seconds.unsigned_abs());
        SystemTime::UNIX_EPOCH
            .checked_sub(back)?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// One transaction of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTransaction {
    /// Position in the block.
    pub index: usize,
    pub tx_id: String,
    pub channel: String,
    /// `common.HeaderType` as sent (ENDORSER_TRANSACTION = 3, CONFIG = 1, ...).
    pub header_type: i32,
    /// Client timestamp from the channel header.
    pub timestamp: Option<google_protobuf::Timestamp>,
    /// Serialized creator (`msp.SerializedIdentity`).
    pub creator: Vec<u8>,
    pub creator_msp_id: Option<String>,
    /// Chaincode the transaction invoked (endorser transactions).
    pub chaincode: Option<String>,
    /// Chaincode arguments, function name first (endorser transactions).
    pub args: Vec<Vec<u8>>,
    /// The chaincode event the transaction emitted, if any.
    pub event: Option<protos::ChaincodeEvent>,
    /// Chaincode response status and payload as endorsed.
    pub response: Option<protos::Response>,
    /// Validation code from TRANSACTIONS_FILTER (`protos.TxValidationCode`).
    pub validation_code: i32,
    /// Set when the envelope could not be decoded (only allowed for invalid transactions).
    pub decode_error: Option<String>,
}

impl BlockTransaction {
    pub fn is_valid(&self) -> bool {
        self.validation_code == protos::TxValidationCode::Valid as i32
    }

    /// The validation code as an enum (None for codes this build does not know).
    pub fn validation(&self) -> Option<protos::TxValidationCode> {
        protos::TxValidationCode::try_from(self.validation_code).ok()
    }

    pub fn header_type(&self) -> Option<common::HeaderType> {
        common::HeaderType::try_from(self.header_type).ok()
    }

    /// Function name (first chaincode argument) as UTF-8, if any.
    pub fn function(&self) -> Option<&str> {
        self.args.first().and_then(|a| std::str::from_utf8(a).ok())
    }

    pub fn system_time(&self) -> Option<SystemTime> {
        self.timestamp.as_ref().and_then(timestamp_to_system_time)
    }
}

/// A committed block, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBlock {
    pub number: u64,
    /// Fabric hash of this block's header (what block `number + 1` names as previous).
    pub header_hash: [u8; 32],
    pub previous_hash: Vec<u8>,
    pub data_hash: Vec<u8>,
    pub transactions: Vec<BlockTransaction>,
    /// The block as received.
    pub block: common::Block,
}

impl ParsedBlock {
    /// Decodes a serialized `common.Block`.
    pub fn decode(bytes: &[u8]) -> Result<Self, BlockError> {
        let block =
            common::Block::decode(bytes).map_err(|e| BlockError::Malformed(e.to_string()))?;
        Self::parse(block)
    }

    /// Decodes a committed block (one carrying TRANSACTIONS_FILTER metadata).
    pub fn parse(block: common::Block) -> Result<Self, BlockError> {
        let header = block.header.as_ref().ok_or(BlockError::MissingHeader)?;
        let number = header.number;
        let empty = Vec::new();
        let data = block.data.as_ref().map(|d| &d.data).unwrap_or(&empty);
        let filter = block
            .metadata
            .as_ref()
            .and_then(|m| m.metadata.get(TRANSACTIONS_FILTER_INDEX))
            .filter(|f| !f.is_empty())
            .cloned();
        let filter = match filter {
            Some(f) => f,
            // No filter: only acceptable for a config block (e.g. a genesis block written
            // as configtxgen produced it), whose transactions are valid by construction.
            None if data.iter().all(|d| is_config_envelope(d)) => vec![0u8; data.len()],
            None => return Err(BlockError::MissingTransactionsFilter(number)),
        };
        if filter.len() != data.len() {
            return Err(BlockError::FilterLength {
                number,
                filter: filter.len(),
                transactions: data.len(),
            });
        }
        let mut transactions = Vec::with_capacity(data.len());
        for (index, (entry, code)) in data.iter().zip(filter.iter()).enumerate() {
            let validation_code = i32::from(*code);
            match decode_transaction(index, entry, validation_code) {
                Ok(tx) => transactions.push(tx),
                Err(reason) if validation_code == protos::TxValidationCode::Valid as i32 => {
                    return Err(BlockError::MalformedValidTransaction {
                        number,
                        index,
                        reason,
                    });
                }
                Err(reason) => transactions.push(BlockTransaction {
                    index,
                    tx_id: String::new(),
                    channel: String::new(),
                    header_type: -1,
                    timestamp: None,
                    creator: Vec::new(),
                    creator_msp_id: None,
                    chaincode: None,
                    args: Vec::new(),
                    event: None,
                    response: None,
                    validation_code,
                    decode_error: Some(reason),
                }),
            }
        }
        Ok(Self {
            number,
            header_hash: block_header_hash(header),
            previous_hash: header.previous_hash.clone(),
            data_hash: header.data_hash.clone(),
            transactions,
            block,
        })
    }

    /// Checks the header's data hash against the block's data.
    pub fn verify_data_hash(&self) -> Result<(), BlockError> {
        verify_block_data_hash(&self.block)
    }

    /// Checks that this block follows a block whose header hash is `previous_header_hash`.
    pub fn verify_follows(&self, previous_header_hash: &[u8]) -> Result<(), BlockError> {
        if self.previous_hash.as_slice() != previous_header_hash {
            return Err(BlockError::ChainBroken {
                number: self.number,
                expected: hex::encode(previous_header_hash),
                actual: hex::encode(&self.previous_hash),
            });
        }
        Ok(())
    }

    /// Valid transactions only.
    pub fn valid_transactions(&self) -> impl Iterator<Item = &BlockTransaction> {
        self.transactions.iter().filter(|t| t.is_valid())
    }
}

fn is_config_envelope(entry: &[u8]) -> bool {
    let Ok(env) = common::Envelope::decode(entry) else {
        return false;
    };
    let Ok(payload) = common::Payload::decode(env.payload.as_slice()) else {
        return false;
    };
    let Some(header) = payload.header else {
        return false;
    };
    common::ChannelHeader::decode(header.channel_header.as_slice())
        .is_ok_and(|ch| ch.r#type == common::HeaderType::Config as i32)
}

fn decode_transaction(
    index: usize,
    entry: &[u8],
    validation_code: i32,
) -> Result<BlockTransaction, String> {
    let env = common::Envelope::decode(entry).map_err(|e| format!("envelope: {e}"))?;
    let payload =
        common::Payload::decode(env.payload.as_slice()).map_err(|e| format!("payload: {e}"))?;
    let header = payload.header.as_ref().ok_or("payload has no header")?;
    let ch = common::ChannelHeader::decode(header.channel_header.as_slice())
        .map_err(|e| format!("channel header: {e}"))?;
    let sh = common::SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| format!("signature header: {e}"))?;
    let creator_msp_id = if sh.creator.is_empty() {
        None
    } else {
        Some(
            msp::SerializedIdentity::decode(sh.creator.as_slice())
                .map_err(|e| format!("creator: {e}"))?
                .mspid,
        )
    };
    let mut tx = BlockTransaction {
        index,
        tx_id: ch.tx_id,
        channel: ch.channel_id,
        header_type: ch.r#type,
        timestamp: ch.timestamp,
        creator: sh.creator,
        creator_msp_id,
        chaincode: None,
        args: Vec::new(),
        event: None,
        response: None,
        validation_code,
        decode_error: None,
    };
    if ch.r#type == common::HeaderType::EndorserTransaction as i32 {
        if let Ok(ext) = protos::ChaincodeHeaderExtension::decode(ch.extension.as_slice()) {
            tx.chaincode = ext.chaincode_id.map(|c| c.name).filter(|n| !n.is_empty());
        }
        let transaction = protos::Transaction::decode(payload.data.as_slice())
            .map_err(|e| format!("transaction: {e}"))?;
        for action in &transaction.actions {
            let cap = protos::ChaincodeActionPayload::decode(action.payload.as_slice())
                .map_err(|e| format!("chaincode action payload: {e}"))?;
            if tx.args.is_empty() {
                let cpp = protos::ChaincodeProposalPayload::decode(
                    cap.chaincode_proposal_payload.as_slice(),
                )
                .map_err(|e| format!("chaincode proposal payload: {e}"))?;
                let cis = protos::ChaincodeInvocationSpec::decode(cpp.input.as_slice())
                    .map_err(|e| format!("invocation spec: {e}"))?;
                if let Some(spec) = cis.chaincode_spec {
                    if tx.chaincode.is_none() {
                        tx.chaincode = spec.chaincode_id.map(|c| c.name).filter(|n| !n.is_empty());
                    }
                    tx.args = spec.input.map(|i| i.args).unwrap_or_default();
                }
            }
            let endorsed = cap
                .action
                .ok_or("chaincode action payload has no endorsed action")?;
            let prp = protos::ProposalResponsePayload::decode(
                endorsed.proposal_response_payload.as_slice(),
            )
            .map_err(|e| format!("proposal response payload: {e}"))?;
            let cca = protos::ChaincodeAction::decode(prp.extension.as_slice())
                .map_err(|e| format!("chaincode action: {e}"))?;
            if tx.response.is_none() {
                tx.response = cca.response;
            }
            if tx.event.is_none() && !cca.events.is_empty() {
                let ev = protos::ChaincodeEvent::decode(cca.events.as_slice())
                    .map_err(|e| format!("chaincode event: {e}"))?;
                tx.event = Some(ev);
            }
            if tx.chaincode.is_none() {
                tx.chaincode = cca.chaincode_id.map(|c| c.name).filter(|n| !n.is_empty());
            }
        }
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_known_encodings() {
        // number 0, nil hashes: SEQUENCE { INTEGER 0, OCTET STRING '', OCTET STRING '' }
        assert_eq!(
            block_header_bytes(0, &[], &[]),
            vec![0x30, 0x07, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]
        );
        // 128 needs a leading zero byte to stay positive.
        assert_eq!(
            &block_header_bytes(128, &[], &[])[2..6],
            &[0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(
            &block_header_bytes(255, &[], &[])[2..6],
            &[0x02, 0x02, 0x00, 0xFF]
        );
        assert_eq!(
            &block_header_bytes(256, &[], &[])[2..6],
            &[0x02, 0x02, 0x01, 0x00]
        );
        let max = block_header_bytes(u64::MAX, &[], &[]);
        assert_eq!(
            &max[2..13],
            &[
                0x02, 0x09, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF
            ]
        );
        // two 32-byte hashes
        let b = block_header_bytes(1, &[0xAA; 32], &[0xBB; 32]);
        assert_eq!(b.len(), 2 + 3 + 34 + 34);
        assert_eq!(&b[..2], &[0x30, 71]);
        // long-form length for long content
        let long = block_header_bytes(1, &[0u8; 200], &[]);
        assert_eq!(&long[..3], &[0x30, 0x81, 3 + 3 + 200 + 2]);
        assert_eq!(&long[6..9], &[0x04, 0x81, 200]);
    }

    #[test]
    fn data_hash_is_hash_of_concatenation() {
        let d = vec![b"ab".to_vec(), b"c".to_vec()];
        let expected: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(block_data_hash(&d), expected);
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(block_data_hash(&[]), empty);
    }

    #[test]
    fn timestamps_convert() {
        let t = google_protobuf::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let st = timestamp_to_system_time(&t).unwrap();
        assert_eq!(
            st.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 5)
        );
        assert!(
            timestamp_to_system_time(&google_protobuf::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            timestamp_to_system_time(&google_protobuf::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            })
            .is_none()
        );
    }
}
