//! Transaction ids, proposals and transaction envelopes, byte-for-byte as Fabric builds them.
//!
//! - [`new_nonce`] / [`compute_tx_id`]: tx id = hex(SHA-256(nonce ‖ creator)), 24-byte nonce
//!   (Fabric's `protoutil.ComputeTxID`, the SDKs' transaction context).
//! - [`ProposalSpec`] → [`build_proposal`] → [`SignedProposalBundle`]: an ENDORSER_TRANSACTION
//!   proposal (`ChannelHeader` with a `ChaincodeHeaderExtension`, `SignatureHeader{creator,
//!   nonce}`, `ChaincodeProposalPayload` holding a `ChaincodeInvocationSpec` whose args are the
//!   function name followed by the arguments) and its signature.
//! - [`assemble_transaction`]: the unsigned transaction envelope built from a proposal and its
//!   endorsements (Fabric's `protoutil.CreateSignedTx` / the Gateway's `prepareTransaction`):
//!   what a Gateway returns in `EndorseResponse.prepared_transaction`.
//! - [`sign_envelope`], [`signed_envelope_payload`]: sign and inspect envelopes.
//! - [`seek_envelope`]: the signed DELIVER_SEEK_INFO envelope that opens a Deliver stream.
//! - [`decode_proposal`]: unpacks a (signed) proposal into its parts — what a peer does first.

use std::collections::HashMap;
use std::time::SystemTime;

use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::identity::{SignError, SigningIdentity};
use crate::proto::{common, google_protobuf, orderer, protos};

/// Length of the random nonce in signature headers (as the SDKs use).
pub const NONCE_LEN: usize = 24;

/// Errors while building or decoding transactions.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("no endorsements to assemble a transaction from")]
    NoEndorsements,
    #[error("endorsement {index} returned status {status}: {message}")]
    EndorsementFailed {
        index: usize,
        status: i32,
        message: String,
    },
    #[error("proposal responses differ (endorsement {0} has a different payload)")]
    ResponsesDiffer(usize),
    #[error(transparent)]
    Sign(#[from] SignError),
}

pub(crate) fn malformed(what: &'static str, e: impl std::fmt::Display) -> TxError {
    TxError::Malformed {
        what,
        reason: e.to_string(),
    }
}

/// A fresh random 24-byte nonce.
pub fn new_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Fabric's transaction id: lowercase hex of SHA-256(nonce ‖ creator).
pub fn compute_tx_id(nonce: &[u8], creator: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(creator);
    hex::encode(h.finalize())
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> google_protobuf::Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    google_protobuf::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// What to invoke.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProposalSpec {
    pub channel: String,
    pub chaincode: String,
    /// Transaction function name (first chaincode argument).
    pub function: String,
    /// Arguments after the function name.
    pub args: Vec<Vec<u8>>,
    /// Private (transient) data: sent to endorsers, never recorded in the transaction.
    pub transient: HashMap<String, Vec<u8>>,
}

impl ProposalSpec {
    pub fn new(
        channel: impl Into<String>,
        chaincode: impl Into<String>,
        function: impl Into<String>,
    ) -> Self {
        Self {
            channel: channel.into(),
            chaincode: chaincode.into(),
            function: function.into(),
            args: Vec::new(),
            transient: HashMap::new(),
        }
    }

    /// Appends string arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().as_bytes().to_vec()));
        self
    }

    /// Appends byte arguments.
    pub fn with_bytes_args(mut self, args: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.args.extend(args);
        self
    }

    /// All chaincode arguments: the function name first, then the arguments.
    pub fn chaincode_args(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::with_capacity(self.args.len() + 1);
        v.push(self.function.as_bytes().to_vec());
        v.extend(self.args.iter().cloned());
        v
    }
}

/// A built, signed proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedProposalBundle {
    pub tx_id: String,
    pub channel: String,
    pub nonce: Vec<u8>,
    /// The proposal (its `header` and `payload` bytes are what the transaction reuses).
    pub proposal: protos::Proposal,
    /// The proposal as signed (`proposal_bytes`) with its signature.
    pub signed: protos::SignedProposal,
}

/// Builds the unsigned proposal for `spec` with `creator` and `nonce`; returns it with its tx id.
pub fn build_proposal_unsigned(
    spec: &ProposalSpec,
    creator: &[u8],
    nonce: &[u8],
    timestamp: google_protobuf::Timestamp,
) -> (protos::Proposal, String) {
    let tx_id = compute_tx_id(nonce, creator);
    let chaincode_id = protos::ChaincodeId {
        name: spec.chaincode.clone(),
        ..Default::default()
    };
    let invocation = protos::ChaincodeInvocationSpec {
        chaincode_spec: Some(protos::ChaincodeSpec {
            // The SDKs send NODE; peers ignore the type for invocations.
            r#type: protos::chaincode_spec::Type::Node as i32,
            chaincode_id: Some(chaincode_id.clone()),
            input: Some(protos::ChaincodeInput {
                args: spec.chaincode_args(),
                ..Default::default()
            }),
            timeout: 0,
        }),
    };
    let extension = protos::ChaincodeHeaderExtension {
        chaincode_id: Some(chaincode_id),
    };
    let channel_header = common::ChannelHeader {
        r#type: common::HeaderType::EndorserTransaction as i32,
        version: 0,
        timestamp: Some(timestamp),
        channel_id: spec.channel.clone(),
        tx_id: tx_id.clone(),
        epoch: 0,
        extension: extension.encode_to_vec(),
        tls_cert_hash: Vec::new(),
    };
    let signature_header = common::SignatureHeader {
        creator: creator.to_vec(),
        nonce: nonce.to_vec(),
    };
    let header = common::Header {
        channel_header: channel_header.encode_to_vec(),
        signature_header: signature_header.encode_to_vec(),
    };
    let payload = protos::ChaincodeProposalPayload {
        input: invocation.encode_to_vec(),
        transient_map: spec.transient.clone(),
    };
    let proposal = protos::Proposal {
        header: header.encode_to_vec(),
        payload: payload.encode_to_vec(),
        extension: Vec::new(),
    };
    (proposal, tx_id)
}

/// Builds and signs a proposal with a fresh nonce.
pub fn build_proposal(
    spec: &ProposalSpec,
    signer: &SigningIdentity,
) -> Result<SignedProposalBundle, TxError> {
    let nonce = new_nonce();
    let (proposal, tx_id) =
        build_proposal_unsigned(spec, signer.creator(), &nonce, now_timestamp());
    let proposal_bytes = proposal.encode_to_vec();
    let signature = signer.sign(&proposal_bytes)?;
    Ok(SignedProposalBundle {
        tx_id,
        channel: spec.channel.clone(),
        nonce,
        proposal,
        signed: protos::SignedProposal {
            proposal_bytes,
            signature,
        },
    })
}

/// A proposal unpacked into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedProposal {
    pub proposal: protos::Proposal,
    pub header: common::Header,
    pub channel_header: common::ChannelHeader,
    pub signature_header: common::SignatureHeader,
    pub payload: protos::ChaincodeProposalPayload,
    pub invocation: protos::ChaincodeInvocationSpec,
    /// Chaincode name from the invocation spec.
    pub chaincode: String,
    /// Chaincode arguments (function name first).
    pub args: Vec<Vec<u8>>,
}

/// Decodes `proposal_bytes` (as in `SignedProposal.proposal_bytes`). Never panics.
pub fn decode_proposal(proposal_bytes: &[u8]) -> Result<DecodedProposal, TxError> {
    let proposal =
        protos::Proposal::decode(proposal_bytes).map_err(|e| malformed("proposal", e))?;
    let header = common::Header::decode(proposal.header.as_slice())
        .map_err(|e| malformed("proposal header", e))?;
    let channel_header = common::ChannelHeader::decode(header.channel_header.as_slice())
        .map_err(|e| malformed("channel header", e))?;
    let signature_header = common::SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| malformed("signature header", e))?;
    let payload = protos::ChaincodeProposalPayload::decode(proposal.payload.as_slice())
        .map_err(|e| malformed("chaincode proposal payload", e))?;
    let invocation = protos::ChaincodeInvocationSpec::decode(payload.input.as_slice())
        .map_err(|e| malformed("chaincode invocation spec", e))?;
    let spec = invocation
        .chaincode_spec
        .as_ref()
        .ok_or(TxError::Missing("chaincode spec"))?;
    let chaincode = spec
        .chaincode_id
        .as_ref()
        .map(|c| c.name.clone())
        .filter(|n| !n.is_empty())
        .ok_or(TxError::Missing("chaincode name"))?;
    let args = spec
        .input
        .as_ref()
        .map(|i| i.args.clone())
        .unwrap_or_default();
    Ok(DecodedProposal {
        proposal,
        header,
        channel_header,
        signature_header,
        payload,
        invocation,
        chaincode,
        args,
    })
}

/// Assembles the unsigned transaction envelope from a proposal and its endorsements, as
/// Fabric's Gateway does (`prepareTransaction`) and `protoutil.CreateSignedTx` checks:
/// every response must be successful (status 200..400) and carry the same payload; the
/// transient map is stripped from the recorded proposal payload. Returns an `Envelope` with the
/// payload set and an empty signature — sign it with [`sign_envelope`].
pub fn assemble_transaction(
    proposal: &protos::Proposal,
    responses: &[protos::ProposalResponse],
) -> Result<common::Envelope, TxError> {
    let first = responses.first().ok_or(TxError::NoEndorsements)?;
    for (index, r) in responses.iter().enumerate() {
        let (status, message) = r
            .response
            .as_ref()
            .map(|x| (x.status, x.message.clone()))
            .unwrap_or((0, String::new()));
        if !(200..400).contains(&status) {
            return Err(TxError::EndorsementFailed {
                index,
                status,
                message,
            });
        }
        if r.payload != first.payload {
            return Err(TxError::ResponsesDiffer(index));
        }
    }
    let endorsements = responses
        .iter()
        .map(|r| r.endorsement.clone().ok_or(TxError::Missing("endorsement")))
        .collect::<Result<Vec<_>, _>>()?;
    let action = protos::ChaincodeEndorsedAction {
        proposal_response_payload: first.payload.clone(),
        endorsements,
    };
    assemble_transaction_from_action(proposal, action)
}

/// [`assemble_transaction`] from an already-collected endorsed action.
pub fn assemble_transaction_from_action(
    proposal: &protos::Proposal,
    action: protos::ChaincodeEndorsedAction,
) -> Result<common::Envelope, TxError> {
    let header = common::Header::decode(proposal.header.as_slice())
        .map_err(|e| malformed("proposal header", e))?;
    let cpp = protos::ChaincodeProposalPayload::decode(proposal.payload.as_slice())
        .map_err(|e| malformed("chaincode proposal payload", e))?;
    let cpp_no_transient = protos::ChaincodeProposalPayload {
        input: cpp.input,
        transient_map: HashMap::new(),
    };
    let cap = protos::ChaincodeActionPayload {
        chaincode_proposal_payload: cpp_no_transient.encode_to_vec(),
        action: Some(action),
    };
    let tx = protos::Transaction {
        actions: vec![protos::TransactionAction {
            header: header.signature_header.clone(),
            payload: cap.encode_to_vec(),
        }],
    };
    let payload = common::Payload {
        header: Some(header),
        data: tx.encode_to_vec(),
    };
    Ok(common::Envelope {
        payload: payload.encode_to_vec(),
        signature: Vec::new(),
    })
}

/// Signs an envelope's payload in place.
pub fn sign_envelope(
    envelope: &mut common::Envelope,
    signer: &SigningIdentity,
) -> Result<(), TxError> {
    envelope.signature = signer.sign(&envelope.payload)?;
    Ok(())
}

/// An envelope's payload with its decoded headers.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeParts {
    pub payload: common::Payload,
    pub channel_header: common::ChannelHeader,
    pub signature_header: common::SignatureHeader,
}

/// Decodes an envelope's payload and headers. Never panics.
pub fn signed_envelope_payload(envelope: &common::Envelope) -> Result<EnvelopeParts, TxError> {
    let payload = common::Payload::decode(envelope.payload.as_slice())
        .map_err(|e| malformed("payload", e))?;
    let header = payload
        .header
        .as_ref()
        .ok_or(TxError::Missing("payload header"))?;
    let channel_header = common::ChannelHeader::decode(header.channel_header.as_slice())
        .map_err(|e| malformed("channel header", e))?;
    let signature_header = common::SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| malformed("signature header", e))?;
    Ok(EnvelopeParts {
        payload,
        channel_header,
        signature_header,
    })
}

/// Builds the signed DELIVER_SEEK_INFO envelope that opens a Deliver stream: deliver blocks
/// from `start` on, without end (`stop` = u64::MAX), blocking until each is ready.
/// `tls_cert_hash` is SHA-256 of the client's TLS certificate when mutual TLS is used (peers
/// check it when they require client authentication), else empty.
pub fn seek_envelope(
    channel: &str,
    start: u64,
    signer: &SigningIdentity,
    tls_cert_hash: &[u8],
) -> Result<common::Envelope, TxError> {
    let seek = orderer::SeekInfo {
        start: Some(seek_specified(start)),
        stop: Some(seek_specified(u64::MAX)),
        behavior: orderer::seek_info::SeekBehavior::BlockUntilReady as i32,
        ..Default::default()
    };
    seek_info_envelope(channel, seek, signer, tls_cert_hash)
}

/// The signed DELIVER_SEEK_INFO envelope asking for the newest block only (start = stop
/// = Newest, FAIL_IF_NOT_READY): what a ledger-height probe sends.
pub fn seek_newest_envelope(
    channel: &str,
    signer: &SigningIdentity,
    tls_cert_hash: &[u8],
) -> Result<common::Envelope, TxError> {
    let newest = || orderer::SeekPosition {
        r#type: Some(orderer::seek_position::Type::Newest(
            orderer::SeekNewest::default(),
        )),
    };
    let seek = orderer::SeekInfo {
        start: Some(newest()),
        stop: Some(newest()),
        behavior: orderer::seek_info::SeekBehavior::FailIfNotReady as i32,
        ..Default::default()
    };
    seek_info_envelope(channel, seek, signer, tls_cert_hash)
}

fn seek_info_envelope(
    channel: &str,
    seek: orderer::SeekInfo,
    signer: &SigningIdentity,
    tls_cert_hash: &[u8],
) -> Result<common::Envelope, TxError> {
    let nonce = new_nonce();
    let tx_id = compute_tx_id(&nonce, signer.creator());
    let channel_header = common::ChannelHeader {
        r#type: common::HeaderType::DeliverSeekInfo as i32,
        version: 0,
        timestamp: Some(now_timestamp()),
        channel_id: channel.to_owned(),
        tx_id,
        epoch: 0,
        extension: Vec::new(),
        tls_cert_hash: tls_cert_hash.to_vec(),
    };
    let signature_header = common::SignatureHeader {
        creator: signer.creator().to_vec(),
        nonce,
    };
    let payload = common::Payload {
        header: Some(common::Header {
            channel_header: channel_header.encode_to_vec(),
            signature_header: signature_header.encode_to_vec(),
        }),
        data: seek.encode_to_vec(),
    };
    let payload = payload.encode_to_vec();
    let signature = signer.sign(&payload)?;
    Ok(common::Envelope { payload, signature })
}

/// `SeekPosition::Specified(number)`.
pub fn seek_specified(number: u64) -> orderer::SeekPosition {
    orderer::SeekPosition {
        r#type: Some(orderer::seek_position::Type::Specified(
            orderer::SeekSpecified { number },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    #[test]
    fn tx_id_is_sha256_of_nonce_and_creator() {
        let nonce = [7u8; NONCE_LEN];
        let creator = b"creator-bytes";
        let mut concat = nonce.to_vec();
        concat.extend_from_slice(creator);
        assert_eq!(
            compute_tx_id(&nonce, creator),
            hex::encode(Sha256::digest(&concat))
        );
        assert_eq!(new_nonce().len(), NONCE_LEN);
        assert_ne!(new_nonce(), new_nonce());
    }

    #[test]
    fn proposal_has_fabrics_shape() {
        let (id, _) = test_support::identity("Org1MSP", "User1@org1.example.com");
        let mut spec = ProposalSpec::new("gxchannel", "gx", "TransferTokens")
            .with_args(["t1", "a", "b", "10", "memo"]);
        spec.transient.insert("secret".into(), b"s".to_vec());
        let bundle = build_proposal(&spec, &id).unwrap();
        assert_eq!(bundle.tx_id, compute_tx_id(&bundle.nonce, id.creator()));
        id.identity()
            .verify(&bundle.signed.proposal_bytes, &bundle.signed.signature)
            .unwrap();

        let d = decode_proposal(&bundle.signed.proposal_bytes).unwrap();
        assert_eq!(
            d.channel_header.r#type,
            common::HeaderType::EndorserTransaction as i32
        );
        assert_eq!(d.channel_header.channel_id, "gxchannel");
        assert_eq!(d.channel_header.tx_id, bundle.tx_id);
        assert_eq!(d.channel_header.epoch, 0);
        assert!(d.channel_header.timestamp.is_some());
        let ext = protos::ChaincodeHeaderExtension::decode(d.channel_header.extension.as_slice())
            .unwrap();
        assert_eq!(ext.chaincode_id.unwrap().name, "gx");
        assert_eq!(d.signature_header.creator, id.creator());
        assert_eq!(d.signature_header.nonce, bundle.nonce);
        assert_eq!(d.chaincode, "gx");
        let args: Vec<&[u8]> = d.args.iter().map(|a| a.as_slice()).collect();
        assert_eq!(
            args,
            vec![&b"TransferTokens"[..], b"t1", b"a", b"b", b"10", b"memo"]
        );
        assert_eq!(
            d.payload.transient_map.get("secret").map(|v| v.as_slice()),
            Some(&b"s"[..])
        );
    }

    fn response(payload: &[u8], status: i32, endorser: &[u8]) -> protos::ProposalResponse {
        protos::ProposalResponse {
            version: 1,
            timestamp: None,
            response: Some(protos::Response {
                status,
                message: String::new(),
                payload: b"result".to_vec(),
            }),
            payload: payload.to_vec(),
            endorsement: Some(protos::Endorsement {
                endorser: endorser.to_vec(),
                signature: b"sig".to_vec(),
            }),
            interest: None,
        }
    }

    #[test]
    fn assembles_transaction_like_the_gateway() {
        let (id, _) = test_support::identity("Org1MSP", "User1@org1.example.com");
        let mut spec = ProposalSpec::new("gxchannel", "gx", "CreateUser").with_args(["u1", "{}"]);
        spec.transient.insert("k".into(), b"v".to_vec());
        let bundle = build_proposal(&spec, &id).unwrap();
        let prp = protos::ProposalResponsePayload {
            proposal_hash: vec![1; 32],
            extension: b"ext".to_vec(),
        }
        .encode_to_vec();
        let responses = vec![response(&prp, 200, b"peer0"), response(&prp, 200, b"peer1")];
        let mut env = assemble_transaction(&bundle.proposal, &responses).unwrap();
        assert!(env.signature.is_empty());
        sign_envelope(&mut env, &id).unwrap();
        id.identity().verify(&env.payload, &env.signature).unwrap();

        let parts = signed_envelope_payload(&env).unwrap();
        let proposal_header = common::Header::decode(bundle.proposal.header.as_slice()).unwrap();
        assert_eq!(parts.payload.header.as_ref(), Some(&proposal_header));
        assert_eq!(parts.channel_header.tx_id, bundle.tx_id);
        let t = protos::Transaction::decode(parts.payload.data.as_slice()).unwrap();
        assert_eq!(t.actions.len(), 1);
        assert_eq!(t.actions[0].header, proposal_header.signature_header);
        let cap = protos::ChaincodeActionPayload::decode(t.actions[0].payload.as_slice()).unwrap();
        let cpp =
            protos::ChaincodeProposalPayload::decode(cap.chaincode_proposal_payload.as_slice())
                .unwrap();
        assert!(
            cpp.transient_map.is_empty(),
            "transient data must not reach the ledger"
        );
        let original =
            protos::ChaincodeProposalPayload::decode(bundle.proposal.payload.as_slice()).unwrap();
        assert_eq!(cpp.input, original.input);
        let action = cap.action.unwrap();
        assert_eq!(action.proposal_response_payload, prp);
        assert_eq!(action.endorsements.len(), 2);

        assert!(matches!(
            assemble_transaction(&bundle.proposal, &[]),
            Err(TxError::NoEndorsements)
        ));
        assert!(matches!(
            assemble_transaction(&bundle.proposal, &[response(&prp, 500, b"p")]),
            Err(TxError::EndorsementFailed { status: 500, .. })
        ));
        assert!(matches!(
            assemble_transaction(
                &bundle.proposal,
                &[response(&prp, 200, b"p"), response(b"other", 200, b"q")]
            ),
            Err(TxError::ResponsesDiffer(1))
        ));
    }

    #[test]
    fn seek_envelope_is_signed_deliver_seek_info() {
        let (id, _) = test_support::identity("Org1MSP", "User1@org1.example.com");
        let env = seek_envelope("gxchannel", 42, &id, &[9; 32]).unwrap();
        id.identity().verify(&env.payload, &env.signature).unwrap();
        let parts = signed_envelope_payload(&env).unwrap();
        assert_eq!(
            parts.channel_header.r#type,
            common::HeaderType::DeliverSeekInfo as i32
        );
        assert_eq!(parts.channel_header.channel_id, "gxchannel");
        assert_eq!(parts.channel_header.tls_cert_hash, vec![9; 32]);
        assert_eq!(parts.signature_header.creator, id.creator());
        let seek = orderer::SeekInfo::decode(parts.payload.data.as_slice()).unwrap();
        assert_eq!(seek.start, Some(seek_specified(42)));
        assert_eq!(seek.stop, Some(seek_specified(u64::MAX)));
        assert_eq!(
            seek.behavior,
            orderer::seek_info::SeekBehavior::BlockUntilReady as i32
        );
    }

    #[test]
    fn malformed_proposals_are_errors() {
        assert!(decode_proposal(b"\xff\xff\xff").is_err());
        let empty = protos::Proposal::default().encode_to_vec();
        assert!(matches!(
            decode_proposal(&empty),
            Err(TxError::Missing("chaincode spec"))
        ));
    }
}
