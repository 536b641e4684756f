//! Block construction for the devnet's ordering service and committer: the genesis
//! (channel configuration) block, block headers and hashes, metadata (orderer signature,
//! last config, transactions filter, commit hash), and reading transactions and chaincode events back
//! out of blocks (for CommitStatus, ChaincodeEvents and DeliverFiltered).

use gxd_fabric::block::{block_data_hash, block_header_bytes};
use gxd_fabric::identity::{SignError, SigningIdentity};
use gxd_fabric::proto::common::{
    self, Block, BlockData, BlockHeader, BlockMetadata, ChannelHeader, Envelope, Header,
    HeaderType, LastConfig, Metadata, MetadataSignature, OrdererBlockMetadata, Payload,
    SignatureHeader,
};
use gxd_fabric::proto::google_protobuf::Timestamp;
use gxd_fabric::proto::protos::{
    ChaincodeAction, ChaincodeActionPayload, ChaincodeEvent, ProposalResponsePayload, Transaction,
    TxValidationCode,
};
use gxd_fabric::proto::{
    FilteredBlock, FilteredChaincodeAction, FilteredTransaction, FilteredTransactionActions,
    filtered_transaction,
};
use gxd_fabric::tx::new_nonce;
use prost::Message;

/// Number of entries in `BlockMetadata.metadata` (SIGNATURES, LAST_CONFIG,
/// TRANSACTIONS_FILTER, ORDERER, COMMIT_HASH).
pub const METADATA_ENTRIES: usize = 5;

const LAST_CONFIG_INDEX: usize = 1;

/// Builds a block from envelopes (header number, previous hash and data hash set; metadata
/// entries present but empty).
pub fn new_block(number: u64, previous_hash: Vec<u8>, envelopes: Vec<Vec<u8>>) -> Block {
    let data = BlockData { data: envelopes };
    let header = BlockHeader {
        number,
        previous_hash,
        data_hash: block_data_hash(&data.data).to_vec(),
    };
    Block {
        header: Some(header),
        data: Some(data),
        metadata: Some(BlockMetadata {
            metadata: vec![Vec::new(); METADATA_ENTRIES],
        }),
    }
}

/// Sets the orderer's SIGNATURES and LAST_CONFIG metadata (Fabric 2.x layout: the
/// SIGNATURES value is an `OrdererBlockMetadata` naming the last config block, signed over
/// value ‖ signature header ‖ DER block header), and the TRANSACTIONS_FILTER.
pub fn finish_block(
    block: &mut Block,
    orderer: &SigningIdentity,
    filter: Vec<u8>,
) -> Result<(), SignError> {
    let header_der = block
        .header
        .as_ref()
        .map(|h| block_header_bytes(h.number, &h.previous_hash, &h.data_hash))
        .unwrap_or_default();
    let value = OrdererBlockMetadata {
        last_config: Some(LastConfig { index: 0 }),
        consenter_metadata: Vec::new(),
    }
    .encode_to_vec();
    let sig_header = SignatureHeader {
        creator: orderer.creator().to_vec(),
        nonce: new_nonce(),
    }
    .encode_to_vec();
    let mut signed = Vec::with_capacity(value.len() + sig_header.len() + header_der.len());
    signed.extend_from_slice(&value);
    signed.extend_from_slice(&sig_header);
    signed.extend_from_slice(&header_der);
    let signature = orderer.sign(&signed)?;
    let signatures = Metadata {
        value,
        signatures: vec![MetadataSignature {
            signature_header: sig_header,
            signature,
            identifier_header: Vec::new(),
        }],
    }
    .encode_to_vec();
    let last_config = Metadata {
        value: LastConfig { index: 0 }.encode_to_vec(),
        signatures: Vec::new(),
    }
    .encode_to_vec();
    let md = block.metadata.get_or_insert_with(BlockMetadata::default);
    md.metadata.resize(METADATA_ENTRIES, Vec::new());
    md.metadata[common::BlockMetadataIndex::Signatures as usize] = signatures;
    // LAST_CONFIG (index 1) is deprecated in Fabric 2.x but orderers still write it.
    md.metadata[LAST_CONFIG_INDEX] = last_config;
    md.metadata[common::BlockMetadataIndex::TransactionsFilter as usize] = filter;
    Ok(())
}

/// One entry of Fabric's commit-hash update batch (`core/ledger/kvledger/txmgmt/txmgr`
/// `updates.proto`, message `KVWrite`).
#[derive(Clone, PartialEq, prost::Message)]
struct CommitHashKvWrite {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    collection: String,
    #[prost(bytes = "vec", tag = "3")]
    key: Vec<u8>,
    #[prost(bool, tag = "4")]
    is_delete: bool,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    version_bytes: Vec<u8>,
}

/// Fabric's `Updates` message (`updates.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct CommitHashUpdates {
    #[prost(message, repeated, tag = "1")]
    kvwrites: Vec<CommitHashKvWrite>,
}

/// Fabric's `util.EncodeOrderPreservingVarUint64`: one length byte, then the big-endian
/// bytes without leading zeros (0 → `[0]`).
fn order_preserving_varint(n: u64) -> Vec<u8> {
    let be = n.to_be_bytes();
    let skip = be.iter().take_while(|b| **b == 0).count();
    let mut out = Vec::with_capacity(1 + be.len() - skip);
    out.push(u8::try_from(be.len() - skip).unwrap_or(0));
    out.extend_from_slice(&be[skip..]);
    out
}

/// Fabric's `deterministicBytesForPubAndHashUpdates` for public writes only: the block's
/// update batch (the last write of each key by a valid transaction) sorted by namespace and
/// key, the namespace named only on its first entry, each with its version
/// (`version.Height.ToBytes`: block and tx number, order-preserving varints).
pub fn update_batch_bytes(writes: &[super::ledger::StateWrite]) -> Vec<u8> {
    use std::collections::BTreeMap;
    let mut batch: BTreeMap<&str, BTreeMap<&str, &super::ledger::StateWrite>> = BTreeMap::new();
    for w in writes {
        batch
            .entry(w.namespace.as_str())
            .or_default()
            .insert(w.key.as_str(), w);
    }
    let mut kvwrites = Vec::new();
    for (ns, keys) in batch {
        if ns.is_empty() {
            continue;
        }
        for (i, (key, w)) in keys.into_iter().enumerate() {
            let mut version_bytes = order_preserving_varint(w.version.block);
            version_bytes.extend(order_preserving_varint(w.version.tx));
            kvwrites.push(CommitHashKvWrite {
                namespace: if i == 0 { ns.to_owned() } else { String::new() },
                collection: String::new(),
                key: key.as_bytes().to_vec(),
                is_delete: w.value.is_none(),
                value: w.value.clone().unwrap_or_default(),
                version_bytes,
            });
        }
    }
    CommitHashUpdates { kvwrites }.encode_to_vec()
}

/// Fabric's `kvLedger.addBlockCommitHash`: SHA-256 over varint(len(filter)) ‖ the
/// TRANSACTIONS_FILTER ‖ the update batch bytes ‖ the previous block's commit hash.
/// The block's COMMIT_HASH metadata is `common.Metadata{value: hash}`.
pub fn commit_hash(filter: &[u8], update_batch: &[u8], previous: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut len = Vec::new();
    prost::encoding::encode_varint(filter.len() as u64, &mut len);
    h.update(len);
    h.update(filter);
    h.update(update_batch);
    h.update(previous);
    h.finalize().to_vec()
}

/// Sets COMMIT_HASH metadata to `common.Metadata{value: hash}`.
pub fn set_commit_hash(block: &mut Block, hash: &[u8]) {
    let md = block.metadata.get_or_insert_with(BlockMetadata::default);
    md.metadata.resize(METADATA_ENTRIES, Vec::new());
    md.metadata[common::BlockMetadataIndex::CommitHash as usize] = Metadata {
        value: hash.to_vec(),
        signatures: Vec::new(),
    }
    .encode_to_vec();
}

/// The hash in a block's COMMIT_HASH metadata (empty if it has none, as the genesis block).
pub fn commit_hash_of(block: &Block) -> Vec<u8> {
    block
        .metadata
        .as_ref()
        .and_then(|m| {
            m.metadata
                .get(common::BlockMetadataIndex::CommitHash as usize)
        })
        .and_then(|b| Metadata::decode(b.as_slice()).ok())
        .map(|m| m.value)
        .unwrap_or_default()
}

/// What the committer and the event services need to know about one transaction of a block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxSummary {
    pub tx_id: String,
    pub header_type: i32,
    pub code: i32,
    pub timestamp: Option<Timestamp>,
    /// The chaincode event of the transaction's action, if any (full payload).
    pub event: Option<ChaincodeEvent>,
}

/// The channel header of an envelope, if it decodes.
pub fn envelope_channel_header(envelope_bytes: &[u8]) -> Option<(Payload, ChannelHeader)> {
    let env = Envelope::decode(envelope_bytes).ok()?;
    let payload = Payload::decode(env.payload.as_slice()).ok()?;
    let header = payload.header.as_ref()?;
    let chdr = ChannelHeader::decode(header.channel_header.as_slice()).ok()?;
    Some((payload, chdr))
}

/// The chaincode event carried by an endorser transaction's payload data, if any.
pub fn chaincode_event(payload_data: &[u8]) -> Option<ChaincodeEvent> {
    let tx = Transaction::decode(payload_data).ok()?;
    let action = tx.actions.first()?;
    let cap = ChaincodeActionPayload::decode(action.payload.as_slice()).ok()?;
    let prp =
        ProposalResponsePayload::decode(cap.action.as_ref()?.proposal_response_payload.as_slice())
            .ok()?;
    let cca = ChaincodeAction::decode(prp.extension.as_slice()).ok()?;
    let event = ChaincodeEvent::decode(cca.events.as_slice()).ok()?;
    let valid =
        !event.chaincode_id.is_empty() && !event.event_name.is_empty() && !event.tx_id.is_empty();
    valid.then_some(event)
}

/// Summaries of every transaction in a block, with codes from its TRANSACTIONS_FILTER.
pub fn summarize(block: &Block) -> Vec<TxSummary> {
    let filter = block
        .metadata
        .as_ref()
        .and_then(|m| {
            m.metadata
                .get(common::BlockMetadataIndex::TransactionsFilter as usize)
        })
        .cloned()
        .unwrap_or_default();
    let data = block
        .data
        .as_ref()
        .map(|d| d.data.as_slice())
        .unwrap_or(&[]);
    data.iter()
        .enumerate()
        .map(|(i, env)| {
            let code = filter
                .get(i)
                .map(|c| i32::from(*c))
                .unwrap_or(TxValidationCode::InvalidOtherReason as i32);
            match envelope_channel_header(env) {
                Some((payload, chdr)) => {
                    let event = if chdr.r#type == HeaderType::EndorserTransaction as i32 {
                        chaincode_event(&payload.data)
                    } else {
                        None
                    };
                    TxSummary {
                        tx_id: chdr.tx_id,
                        header_type: chdr.r#type,
                        code,
                        timestamp: chdr.timestamp,
                        event,
                    }
                }
                None => TxSummary {
                    code,
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// The DeliverFiltered view of a block: transaction ids, types, validation codes and
/// chaincode events without their payloads. As Fabric's `toFilteredActions`
/// (`core/peer/deliverevents.go`), an endorser transaction's `TransactionActions` holds a
/// `FilteredChaincodeAction` only for an action that has a chaincode event: a transaction
/// without an event has empty `chaincode_actions`.
pub fn filtered_block(channel_id: &str, block: &Block) -> FilteredBlock {
    let number = block.header.as_ref().map(|h| h.number).unwrap_or(0);
    let filtered_transactions = summarize(block)
        .into_iter()
        .map(|tx| {
            let data = (tx.header_type == HeaderType::EndorserTransaction as i32).then(|| {
                filtered_transaction::Data::TransactionActions(FilteredTransactionActions {
                    chaincode_actions: tx
                        .event
                        .map(|e| FilteredChaincodeAction {
                            chaincode_event: Some(ChaincodeEvent {
                                payload: Vec::new(),
                                ..e
                            }),
                        })
                        .into_iter()
                        .collect(),
                })
            });
            FilteredTransaction {
                txid: tx.tx_id,
                r#type: tx.header_type,
                tx_validation_code: tx.code,
                data,
            }
        })
        .collect();
    FilteredBlock {
        channel_id: channel_id.to_owned(),
        number,
        filtered_transactions,
    }
}

/// A `common.Header` with the given channel header and signature header.
pub fn make_header(chdr: &ChannelHeader, shdr: &SignatureHeader) -> Header {
    Header {
        channel_header: chdr.encode_to_vec(),
        signature_header: shdr.encode_to_vec(),
    }
}
