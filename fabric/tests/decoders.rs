//! Decoders never panic on malformed bytes, and well-formed blocks round-trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gxd_fabric::block::{ParsedBlock, block_data_hash, block_header_bytes, block_header_hash};
use gxd_fabric::client::PreparedTransaction;
use gxd_fabric::identity::{Identity, parse_certificate, parse_certificates, verify_signature};
use gxd_fabric::proto::{self, Message, common, msp, protos};
use gxd_fabric::tx::{decode_proposal, signed_envelope_payload};
use proptest::prelude::*;

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in arb_bytes()) {
        let _ = ParsedBlock::decode(&bytes);
        let _ = decode_proposal(&bytes);
        let _ = PreparedTransaction::from_bytes(&bytes);
        let _ = Identity::from_creator(&bytes);
        let _ = parse_certificate(&bytes);
        let _ = parse_certificates(&bytes);
        let _ = proto::DeliverResponse::decode(bytes.as_slice());
        let _ = proto::FilteredBlock::decode(bytes.as_slice());
        let _ = signed_envelope_payload(&common::Envelope { payload: bytes.clone(), signature: Vec::new() });
        let _ = PreparedTransaction::from_envelope(common::Envelope { payload: bytes.clone(), signature: vec![1] });
        let _ = gxd_fabric::proto::error_details(&tonic::Status::with_details(tonic::Code::Aborted, "x", bytes.clone().into()));
    }

    #[test]
    fn random_signatures_never_panic(sig in arb_bytes(), msg in arb_bytes()) {
        let _ = verify_signature(cert_pem().as_bytes(), &msg, &sig);
    }

    /// Blocks whose data entries are random bytes: parsing either fails cleanly or, for
    /// transactions marked invalid, records the decode error.
    #[test]
    fn blocks_with_garbage_transactions(entries in prop::collection::vec(arb_bytes(), 0..8), valid in any::<bool>(), number in any::<u64>()) {
        let code = if valid { 0u8 } else { protos::TxValidationCode::BadPayload as u8 };
        let block = block_of(number, vec![1; 32], entries.clone(), vec![code; entries.len()]);
        match ParsedBlock::parse(block) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.transactions.len(), entries.len());
                parsed.verify_data_hash().unwrap();
            }
            Err(_) => prop_assert!(valid && !entries.is_empty()),
        }
    }

    /// Well-formed endorser transactions round-trip through encode → decode → parse.
    #[test]
    fn blocks_roundtrip(
        number in any::<u64>(),
        prev in prop::collection::vec(any::<u8>(), 0..64),
        txs in prop::collection::vec(("[0-9a-f]{64}", "[A-Za-z]{1,12}", prop::collection::vec(arb_bytes(), 0..4), prop::option::of(("[A-Za-z]{1,16}", arb_bytes())), 0u8..30), 0..6),
    ) {
        let mut data = Vec::new();
        let mut filter = Vec::new();
        for (tx_id, function, args, event, code) in &txs {
            data.push(endorser_tx(tx_id, "gxchannel", "gx", function, args, event.as_ref()));
            filter.push(*code);
        }
        let block = block_of(number, prev.clone(), data.clone(), filter.clone());
        let bytes = block.encode_to_vec();
        let parsed = ParsedBlock::decode(&bytes).unwrap();
        prop_assert_eq!(parsed.number, number);
        prop_assert_eq!(&parsed.previous_hash, &prev);
        prop_assert_eq!(parsed.header_hash, block_header_hash(block.header.as_ref().unwrap()));
        parsed.verify_data_hash().unwrap();
        prop_assert_eq!(parsed.transactions.len(), txs.len());
        for (t, (tx_id, function, args, event, code)) in parsed.transactions.iter().zip(txs.iter()) {
            prop_assert_eq!(&t.tx_id, tx_id);
            prop_assert_eq!(t.channel.as_str(), "gxchannel");
            prop_assert_eq!(t.chaincode.as_deref(), Some("gx"));
            prop_assert_eq!(t.function(), Some(function.as_str()));
            prop_assert_eq!(&t.args[1..], &args[..]);
            prop_assert_eq!(t.validation_code, i32::from(*code));
            prop_assert_eq!(t.creator_msp_id.as_deref(), Some("Org1MSP"));
            match event {
                Some((name, payload)) => {
                    let ev = t.event.as_ref().unwrap();
                    prop_assert_eq!(&ev.event_name, name);
                    prop_assert_eq!(&ev.payload, payload);
                    prop_assert_eq!(&ev.tx_id, tx_id);
                }
                None => prop_assert!(t.event.is_none()),
            }
        }
        // The next block links to this one.
        let next = block_of(number.wrapping_add(1), parsed.header_hash.to_vec(), vec![], vec![]);
        let next = ParsedBlock::parse(next).unwrap();
        next.verify_follows(&parsed.header_hash).unwrap();
        prop_assert!(next.verify_follows(&[0; 32]).is_err() || parsed.header_hash == [0; 32]);
    }

    #[test]
    fn header_bytes_are_der(number in any::<u64>(), prev in prop::collection::vec(any::<u8>(), 0..300), data in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = block_header_bytes(number, &prev, &data);
        // Parse back with the der crate: SEQUENCE { INTEGER, OCTET STRING, OCTET STRING }.
        use der::{Decode, Reader, SliceReader};
        let mut r = SliceReader::new(&b).unwrap();
        let (n, p, d) = r.sequence(|seq| {
            let n = der::asn1::UintRef::decode(seq)?;
            let p = der::asn1::OctetStringRef::decode(seq)?;
            let d = der::asn1::OctetStringRef::decode(seq)?;
            Ok((n.as_bytes().to_vec(), p.as_bytes().to_vec(), d.as_bytes().to_vec()))
        }).unwrap();
        r.finish(()).unwrap();
        let mut be = [0u8; 8];
        be[8 - n.len()..].copy_from_slice(&n);
        prop_assert_eq!(u64::from_be_bytes(be), number);
        prop_assert_eq!(p, prev);
        prop_assert_eq!(d, data);
    }
}

#[test]
fn data_hash_and_filter_errors() {
    let block = block_of(3, vec![], vec![b"a".to_vec()], vec![0, 0]);
    assert!(matches!(
        ParsedBlock::parse(block),
        Err(gxd_fabric::block::BlockError::FilterLength { .. })
    ));
    let block = block_of(3, vec![], vec![b"a".to_vec()], vec![]);
    assert!(matches!(
        ParsedBlock::parse(block),
        Err(gxd_fabric::block::BlockError::MissingTransactionsFilter(3))
    ));
    let mut block = block_of(3, vec![], vec![b"a".to_vec()], vec![0]);
    block.metadata = None;
    assert!(matches!(
        ParsedBlock::parse(block),
        Err(gxd_fabric::block::BlockError::MissingTransactionsFilter(3))
    ));
    let mut block = block_of(
        3,
        vec![],
        vec![b"a".to_vec()],
        vec![protos::TxValidationCode::BadPayload as u8],
    );
    block.header.as_mut().unwrap().data_hash = vec![0; 32];
    let parsed = ParsedBlock::parse(block).unwrap();
    assert!(parsed.transactions[0].decode_error.is_some());
    assert!(matches!(
        parsed.verify_data_hash(),
        Err(gxd_fabric::block::BlockError::DataHashMismatch { .. })
    ));
    assert!(matches!(
        ParsedBlock::parse(common::Block::default()),
        Err(gxd_fabric::block::BlockError::MissingHeader)
    ));
}

fn block_of(
    number: u64,
    previous_hash: Vec<u8>,
    data: Vec<Vec<u8>>,
    filter: Vec<u8>,
) -> common::Block {
    common::Block {
        header: Some(common::BlockHeader {
            number,
            previous_hash,
            data_hash: block_data_hash(&data).to_vec(),
        }),
        data: Some(common::BlockData { data }),
        metadata: Some(common::BlockMetadata {
            metadata: vec![vec![], vec![], filter, vec![], vec![]],
        }),
    }
}

fn endorser_tx(
    tx_id: &str,
    channel: &str,
    chaincode: &str,
    function: &str,
    args: &[Vec<u8>],
    event: Option<&(String, Vec<u8>)>,
) -> Vec<u8> {
    let cc_id = protos::ChaincodeId {
        name: chaincode.into(),
        ..Default::default()
    };
    let creator = msp::SerializedIdentity {
        mspid: "Org1MSP".into(),
        id_bytes: cert_pem().as_bytes().to_vec(),
    }
    .encode_to_vec();
    let ch = common::ChannelHeader {
        r#type: common::HeaderType::EndorserTransaction as i32,
        channel_id: channel.into(),
        tx_id: tx_id.into(),
        extension: protos::ChaincodeHeaderExtension {
            chaincode_id: Some(cc_id.clone()),
        }
        .encode_to_vec(),
        ..Default::default()
    };
    let sh = common::SignatureHeader {
        creator,
        nonce: vec![1; 24],
    }
    .encode_to_vec();
    let mut all_args = vec![function.as_bytes().to_vec()];
    all_args.extend(args.iter().cloned());
    let cis = protos::ChaincodeInvocationSpec {
        chaincode_spec: Some(protos::ChaincodeSpec {
            chaincode_id: Some(cc_id.clone()),
            input: Some(protos::ChaincodeInput {
                args: all_args,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let cpp = protos::ChaincodeProposalPayload {
        input: cis.encode_to_vec(),
        ..Default::default()
    };
    let events = event
        .map(|(name, payload)| {
            protos::ChaincodeEvent {
                chaincode_id: chaincode.into(),
                tx_id: tx_id.into(),
                event_name: name.clone(),
                payload: payload.clone(),
            }
            .encode_to_vec()
        })
        .unwrap_or_default();
    let cca = protos::ChaincodeAction {
        results: vec![],
        events,
        response: Some(protos::Response {
            status: 200,
            message: String::new(),
            payload: b"{}".to_vec(),
        }),
        chaincode_id: Some(cc_id),
    };
    let prp = protos::ProposalResponsePayload {
        proposal_hash: vec![0; 32],
        extension: cca.encode_to_vec(),
    };
    let cap = protos::ChaincodeActionPayload {
        chaincode_proposal_payload: cpp.encode_to_vec(),
        action: Some(protos::ChaincodeEndorsedAction {
            proposal_response_payload: prp.encode_to_vec(),
            endorsements: vec![protos::Endorsement {
                endorser: vec![1],
                signature: vec![2],
            }],
        }),
    };
    let tx = protos::Transaction {
        actions: vec![protos::TransactionAction {
            header: sh.clone(),
            payload: cap.encode_to_vec(),
        }],
    };
    let payload = common::Payload {
        header: Some(common::Header {
            channel_header: ch.encode_to_vec(),
            signature_header: sh,
        }),
        data: tx.encode_to_vec(),
    };
    common::Envelope {
        payload: payload.encode_to_vec(),
        signature: vec![3],
    }
    .encode_to_vec()
}

/// A real P-256 certificate (self-signed, generated once per run).
fn cert_pem() -> &'static str {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::new(vec!["test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    })
}
