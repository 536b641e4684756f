//! Block construction for the devnet's ordering service and committer: the genesis
//! (channel configuration) block, block headers and hashes, metadata (orderer signature,
//! last config, transactions filter), and reading transactions and chaincode events back
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
/// chaincode events without their payloads.
pub fn filtered_block(channel_id: &str, block: &Block) -> FilteredBlock {
    let number = block.header.as_ref().map(|h| h.number).unwrap_or(0);
    let filtered_transactions = summarize(block)
        .into_iter()
        .map(|tx| {
            let data = (tx.header_type == HeaderType::EndorserTransaction as i32).then(|| {
                filtered_transaction::Data::TransactionActions(FilteredTransactionActions {
                    chaincode_actions: vec![FilteredChaincodeAction {
                        chaincode_event: tx.event.map(|e| ChaincodeEvent {
                            payload: Vec::new(),
                            ..e
                        }),
                    }],
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
