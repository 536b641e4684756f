//! The peer's core: endorsement (unpack and validate a signed proposal, simulate the
//! chaincode into a read-write set, sign the proposal response) and commit-time
//! validation (creator signature, transaction id, duplicates, endorsement policy, MVCC),
//! following Fabric's `core/endorser` and `core/committer/txvalidator` where it matters.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use sha2::{Digest, Sha256};

use super::gx;
use super::ledger::{Height, Ledger, LedgerError, StateWrite, TxRecord, VersionedValue};
use super::msp::{Member, MspManager, Role};
use super::node::Written;
use gxd_fabric::identity::{SignError, SigningIdentity};
use gxd_fabric::proto::common::{
    ChannelHeader, Envelope, Header, HeaderType, Payload, SignatureHeader,
};
use gxd_fabric::proto::kvrwset::{
    KvRead, KvWrite, KvrwSet, QueryReads, RangeQueryInfo, Version, range_query_info,
};
use gxd_fabric::proto::protos::{
    ChaincodeAction, ChaincodeActionPayload, ChaincodeEndorsedAction, ChaincodeEvent,
    ChaincodeHeaderExtension, ChaincodeId, ChaincodeInvocationSpec, ChaincodeProposalPayload,
    Endorsement, Proposal, ProposalResponsePayload, Response, SignedProposal, Transaction,
    TransactionAction, TxValidationCode,
};
use gxd_fabric::proto::rwset::{NsReadWriteSet, TxReadWriteSet, tx_read_write_set};
use gxd_fabric::tx::compute_tx_id;

/// Static facts of the devnet channel.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub channel_id: String,
    pub chaincode: String,
    /// Where the chaincode runs: in this process, or as a service over the shim protocol.
    pub runtime: ChaincodeRuntime,
}

/// How the peer runs its chaincode.
#[derive(Debug, Clone)]
pub enum ChaincodeRuntime {
    /// GX called in-process through [`gx::Stub`] (the default).
    InProcess,
    /// A chaincode service the peer dials and drives with ChaincodeMessages, as a Fabric
    /// peer drives a chaincode-as-a-service.
    External(std::sync::Arc<super::shim::client::ExternalChaincode>),
}

/// A proposal, unpacked (Fabric's `UnpackedProposal`).
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub header: Header,
    pub channel_header: ChannelHeader,
    pub signature_header: SignatureHeader,
    pub chaincode_name: String,
    pub function: String,
    pub args: Vec<Vec<u8>>,
    /// The chaincode proposal payload without its transient map, as it goes into the transaction.
    pub cpp_no_transient: ChaincodeProposalPayload,
    pub proposal_hash: Vec<u8>,
}

/// Unpacks a signed proposal; the error text is what Fabric's gateway would report.
pub fn unpack(signed: &SignedProposal) -> Result<Unpacked, String> {
    if signed.proposal_bytes.is_empty() {
        return Err("a signed proposal is required".to_owned());
    }
    let prop = Proposal::decode(signed.proposal_bytes.as_slice())
        .map_err(|e| format!("error unmarshalling Proposal: {e}"))?;
    let header = Header::decode(prop.header.as_slice())
        .map_err(|e| format!("error unmarshalling Header: {e}"))?;
    let channel_header = ChannelHeader::decode(header.channel_header.as_slice())
        .map_err(|e| format!("error unmarshalling ChannelHeader: {e}"))?;
    let signature_header = SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| format!("error unmarshalling SignatureHeader: {e}"))?;
    let ext = ChaincodeHeaderExtension::decode(channel_header.extension.as_slice())
        .map_err(|e| format!("error unmarshalling ChaincodeHeaderExtension: {e}"))?;
    let ext_name = ext
        .chaincode_id
        .map(|c| c.name)
        .ok_or_else(|| "ChaincodeHeaderExtension.ChaincodeId is nil".to_owned())?;
    if ext_name.is_empty() {
        return Err("ChaincodeHeaderExtension.ChaincodeId.Name is empty".to_owned());
    }
    let cpp = ChaincodeProposalPayload::decode(prop.payload.as_slice())
        .map_err(|e| format!("error unmarshalling ChaincodeProposalPayload: {e}"))?;
    let cis = ChaincodeInvocationSpec::decode(cpp.input.as_slice())
        .map_err(|e| format!("error unmarshalling ChaincodeInvocationSpec: {e}"))?;
    let spec = cis
        .chaincode_spec
        .ok_or_else(|| "chaincode invocation spec did not contain chaincode spec".to_owned())?;
    if channel_header.channel_id.is_empty() {
        return Err("no channel id provided".to_owned());
    }
    let spec_name = spec.chaincode_id.map(|c| c.name).unwrap_or_default();
    if spec_name.is_empty() {
        return Err(format!(
            "no chaincode name is provided, channel id [{}]",
            channel_header.channel_id
        ));
    }
    let input = spec
        .input
        .ok_or_else(|| "chaincode input did not contain any input".to_owned())?;
    let mut args = input.args;
    if args.is_empty() {
        return Err("chaincode input did not contain a function name".to_owned());
    }
    let function = String::from_utf8(args.remove(0))
        .map_err(|_| "the function name is not valid UTF-8".to_owned())?;
    let cpp_no_transient = ChaincodeProposalPayload {
        input: cpp.input.clone(),
        transient_map: Default::default(),
    };
    let mut h = Sha256::new();
    h.update(&header.channel_header);
    h.update(&header.signature_header);
    h.update(cpp_no_transient.encode_to_vec());
    Ok(Unpacked {
        header,
        channel_header,
        signature_header,
        chaincode_name: spec_name,
        function,
        args,
        cpp_no_transient,
        proposal_hash: h.finalize().to_vec(),
    })
}

/// Why a proposal was not endorsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalError {
    /// The proposal could not be unpacked (gateway: INVALID_ARGUMENT).
    Malformed(String),
    /// The channel is not the devnet's.
    ChannelNotFound(String),
    /// No such chaincode on the channel.
    ChaincodeNotFound(String),
    /// The endorser refused it before simulation (signature, creator, duplicate tx id…).
    Refused(String),
    /// The chaincode returned an error (status 500).
    Chaincode { status: i32, message: String },
    /// A peer-side failure (ledger I/O, signing).
    Internal(String),
}

/// A successfully simulated and endorsed proposal.
#[derive(Debug, Clone)]
pub struct Endorsed {
    pub unpacked: Unpacked,
    pub response: Response,
    pub prp_bytes: Vec<u8>,
    pub endorsements: Vec<Endorsement>,
}

impl Endorsed {
    /// The unsigned transaction envelope, assembled exactly as Fabric's gateway does
    /// (`prepareTransaction`): the proposal's header, one action whose header is the
    /// signature header, and a ChaincodeActionPayload without transient data.
    pub fn prepared_transaction(&self) -> Envelope {
        let cap = ChaincodeActionPayload {
            chaincode_proposal_payload: self.unpacked.cpp_no_transient.encode_to_vec(),
            action: Some(ChaincodeEndorsedAction {
                proposal_response_payload: self.prp_bytes.clone(),
                endorsements: self.endorsements.clone(),
            }),
        };
        let tx = Transaction {
            actions: vec![TransactionAction {
                header: self.unpacked.header.signature_header.clone(),
                payload: cap.encode_to_vec(),
            }],
        };
        let payload = Payload {
            header: Some(self.unpacked.header.clone()),
            data: tx.encode_to_vec(),
        };
        Envelope {
            payload: payload.encode_to_vec(),
            signature: Vec::new(),
        }
    }
}

/// Simulation of one transaction against a consistent snapshot of the world state: the
/// read set (first version read of each key), the range queries with the keys they
/// returned, the write set (`None` deletes) and the event — Fabric's `TxSimulator`.
pub(crate) struct Simulator<'a> {
    reader: &'a dyn StateReader,
    namespace: String,
    reads: BTreeMap<String, Option<Height>>,
    range_queries: Vec<RangeQueryInfo>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    event: Option<(String, Vec<u8>)>,
    creator: &'a Member,
}

/// Read access to committed state (a RocksDB snapshot during simulation).
pub trait StateReader {
    fn read(&self, namespace: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError>;
    /// At most `limit` entries with `start <= key < end` (`end` empty: unbounded), in order.
    fn range(
        &self,
        namespace: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError>;
}

impl StateReader for Ledger {
    fn read(&self, namespace: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError> {
        self.state(namespace, key)
    }
    fn range(
        &self,
        namespace: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
        Ledger::range(self, namespace, start, end, limit)
    }
}

impl StateReader for super::ledger::LedgerSnapshot<'_> {
    fn read(&self, namespace: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError> {
        self.state(namespace, key)
    }
    fn range(
        &self,
        namespace: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
        super::ledger::LedgerSnapshot::range(self, namespace, start, end, limit)
    }
}

fn kv_read(key: &str, version: Option<Height>) -> KvRead {
    KvRead {
        key: key.to_owned(),
        version: version.map(|h| Version {
            block_num: h.block,
            tx_num: h.tx,
        }),
    }
}

impl<'a> Simulator<'a> {
    pub(crate) fn new(reader: &'a dyn StateReader, namespace: String, creator: &'a Member) -> Self {
        Self {
            reader,
            namespace,
            reads: BTreeMap::new(),
            range_queries: Vec::new(),
            writes: BTreeMap::new(),
            event: None,
            creator,
        }
    }

    /// The chaincode's namespace in the world state.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Records a delete (Fabric's `DeleteState`).
    pub(crate) fn del_state(&mut self, key: &str) {
        self.writes.insert(key.to_owned(), None);
    }

    /// Runs a range query `[start, end)` over the committed state (at most `limit` entries)
    /// and opens its record in the read set; returns the record's index for
    /// [`Self::record_range_reads`].
    pub(crate) fn open_range(
        &mut self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<(usize, Vec<(String, VersionedValue)>), String> {
        let results = self
            .reader
            .range(&self.namespace, start, end, limit)
            .map_err(|e| format!("failed to read state: {e}"))?;
        self.range_queries.push(RangeQueryInfo {
            start_key: start.to_owned(),
            end_key: end.to_owned(),
            itr_exhausted: false,
            reads_info: Some(range_query_info::ReadsInfo::RawReads(QueryReads {
                kv_reads: Vec::new(),
            })),
        });
        Ok((self.range_queries.len() - 1, results))
    }

    /// Records the entries a range query handed to the chaincode (`exhausted`: and there
    /// are no more), as Fabric's `RangeQueryResultsHelper` records what its iterator returned.
    pub(crate) fn record_range_reads(
        &mut self,
        index: usize,
        entries: &[(String, VersionedValue)],
        exhausted: bool,
    ) {
        if let Some(info) = self.range_queries.get_mut(index) {
            if let Some(range_query_info::ReadsInfo::RawReads(reads)) = &mut info.reads_info {
                reads
                    .kv_reads
                    .extend(entries.iter().map(|(k, v)| kv_read(k, Some(v.version))));
            }
            info.itr_exhausted |= exhausted;
        }
    }

    /// The transaction's chaincode event, if one was set.
    pub(crate) fn set_event_parts(&mut self, name: String, payload: Vec<u8>) {
        self.event = Some((name, payload));
    }
}

impl gx::Stub for Simulator<'_> {
    fn get_state(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let v = self
            .reader
            .read(&self.namespace, key)
            .map_err(|e| format!("failed to read state: {e}"))?;
        self.reads
            .entry(key.to_owned())
            .or_insert(v.as_ref().map(|v| v.version));
        Ok(v.map(|v| v.value))
    }
    fn put_state(&mut self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.writes.insert(key.to_owned(), Some(value));
        Ok(())
    }
    fn set_event(&mut self, name: &str, payload: Vec<u8>) {
        self.event = Some((name.to_owned(), payload));
    }
    fn creator_msp_id(&self) -> &str {
        self.creator.msp_id()
    }
    fn creator_role(&self) -> Role {
        self.creator.role
    }
}

impl Simulator<'_> {
    pub(crate) fn rwset_bytes(&self) -> Vec<u8> {
        let kv = KvrwSet {
            reads: self.reads.iter().map(|(k, v)| kv_read(k, *v)).collect(),
            range_queries_info: self.range_queries.clone(),
            writes: self
                .writes
                .iter()
                .map(|(k, v)| KvWrite {
                    key: k.clone(),
                    is_delete: v.is_none(),
                    value: v.clone().unwrap_or_default(),
                })
                .collect(),
            metadata_writes: Vec::new(),
        };
        TxReadWriteSet {
            data_model: tx_read_write_set::DataModel::Kv as i32,
            ns_rwset: vec![NsReadWriteSet {
                namespace: self.namespace.clone(),
                rwset: kv.encode_to_vec(),
                collection_hashed_rwset: Vec::new(),
            }],
        }
        .encode_to_vec()
    }
}

/// The endorsing side of the peer.
pub struct Endorser<'a> {
    pub channel: &'a ChannelInfo,
    pub msp: &'a MspManager,
    pub signers: &'a [SigningIdentity],
    pub ledger: &'a Ledger,
}

impl Endorser<'_> {
    /// Validates the proposal like Fabric's `UnpackedProposal.Validate` + `preProcess`.
    fn validate(&self, signed: &SignedProposal, up: &Unpacked) -> Result<Member, ProposalError> {
        let refuse = |m: String| ProposalError::Refused(format!("error validating proposal: {m}"));
        let ch = &up.channel_header;
        match HeaderType::try_from(ch.r#type) {
            Ok(HeaderType::EndorserTransaction) => {}
            _ => return Err(refuse(format!("invalid header type {}", ch.r#type))),
        }
        if ch.epoch != 0 {
            return Err(refuse("epoch is non-zero".to_owned()));
        }
        let shdr = &up.signature_header;
        if shdr.nonce.is_empty() {
            return Err(refuse("nonce is empty".to_owned()));
        }
        if shdr.creator.is_empty() {
            return Err(refuse("creator is empty".to_owned()));
        }
        let expected = compute_tx_id(&shdr.nonce, &shdr.creator);
        if ch.tx_id != expected {
            return Err(refuse(format!(
                "incorrectly computed txid '{}' -- expected '{expected}'",
                ch.tx_id
            )));
        }
        if signed.signature.is_empty() {
            return Err(refuse("empty signature bytes".to_owned()));
        }
        let creator = self.msp.deserialize(&shdr.creator).map_err(|e| {
            tracing::warn!(error = %e, "access denied: creator identity is not valid");
            match e {
                super::msp::MspError::MalformedIdentity | super::msp::MspError::UnknownMsp(_) => {
                    refuse(format!(
                        "access denied: channel [{}] creator org unknown, creator is malformed",
                        ch.channel_id
                    ))
                }
                _ => refuse(format!(
                    "access denied: channel [{}] creator org [{}]",
                    ch.channel_id,
                    msp_id_of(&shdr.creator)
                )),
            }
        })?;
        creator
            .verify(&signed.proposal_bytes, &signed.signature)
            .map_err(|e| {
                tracing::warn!(error = %e, "access denied: creator's signature over the proposal is not valid");
                refuse(format!(
                    "access denied: channel [{}] creator org [{}]",
                    ch.channel_id,
                    creator.msp_id()
                ))
            })?;
        match self.ledger.tx(&ch.tx_id) {
            Ok(Some(_)) => {
                return Err(ProposalError::Refused(format!(
                    "duplicate transaction found [{}]. Creator [{}]",
                    ch.tx_id,
                    hex::encode(&shdr.creator)
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(ProposalError::Internal(e.to_string())),
        }
        // The ACL of `peer/Propose` (`preProcess` → `CheckACL`): /Channel/Application/Writers,
        // which a peer, an orderer or an orderer-org identity does not satisfy.
        if !creator.is_channel_writer() {
            tracing::warn!(
                msp_id = creator.msp_id(),
                role = creator.role.as_str(),
                "access denied: creator does not satisfy /Channel/Application/Writers"
            );
            return Err(ProposalError::Refused(policy_failure(
                "/Channel/Application/Writers",
                "Writers",
            )));
        }
        Ok(creator)
    }

    /// Processes a signed proposal: validate, simulate, endorse.
    pub fn process(
        &self,
        signed: &SignedProposal,
        reader: &dyn StateReader,
    ) -> Result<Endorsed, ProposalError> {
        let up = unpack(signed).map_err(ProposalError::Malformed)?;
        if up.channel_header.channel_id != self.channel.channel_id {
            return Err(ProposalError::ChannelNotFound(
                up.channel_header.channel_id.clone(),
            ));
        }
        if up.chaincode_name != self.channel.chaincode {
            return Err(ProposalError::ChaincodeNotFound(up.chaincode_name.clone()));
        }
        let creator = self.validate(signed, &up)?;
        let mut sim = Simulator::new(reader, self.channel.chaincode.clone(), &creator);
        let response = match &self.channel.runtime {
            ChaincodeRuntime::InProcess => {
                let args: Vec<String> = up
                    .args
                    .iter()
                    .map(|a| String::from_utf8(a.clone()))
                    .collect::<Result<_, _>>()
                    .map_err(|_| ProposalError::Chaincode {
                        status: 500,
                        message: "arguments must be valid UTF-8 strings".to_owned(),
                    })?;
                match gx::invoke(&mut sim, &up.function, &args) {
                    Ok(payload) => Response {
                        status: 200,
                        message: String::new(),
                        payload,
                    },
                    Err(message) => {
                        return Err(ProposalError::Chaincode {
                            status: 500,
                            message,
                        });
                    }
                }
            }
            ChaincodeRuntime::External(cc) => {
                let mut input = Vec::with_capacity(up.args.len() + 1);
                input.push(up.function.clone().into_bytes());
                input.extend(up.args.iter().cloned());
                let response = cc
                    .execute(
                        &mut sim,
                        &up.channel_header.channel_id,
                        &up.channel_header.tx_id,
                        signed,
                        input,
                    )
                    .map_err(|message| ProposalError::Chaincode {
                        status: 500,
                        message,
                    })?;
                // Fabric's endorser: a response status at or above shim.ERRORTHRESHOLD (400)
                // fails the endorsement with the chaincode's status and message.
                if response.status >= 400 {
                    return Err(ProposalError::Chaincode {
                        status: response.status,
                        message: response.message,
                    });
                }
                response
            }
        };
        let events = sim
            .event
            .as_ref()
            .map(|(name, payload)| {
                ChaincodeEvent {
                    chaincode_id: self.channel.chaincode.clone(),
                    tx_id: up.channel_header.tx_id.clone(),
                    event_name: name.clone(),
                    payload: payload.clone(),
                }
                .encode_to_vec()
            })
            .unwrap_or_default();
        let action = ChaincodeAction {
            results: sim.rwset_bytes(),
            events,
            response: Some(response.clone()),
            chaincode_id: Some(ChaincodeId {
                path: String::new(),
                name: self.channel.chaincode.clone(),
                version: gx::CHAINCODE_VERSION.to_owned(),
            }),
        };
        let prp_bytes = ProposalResponsePayload {
            proposal_hash: up.proposal_hash.clone(),
            extension: action.encode_to_vec(),
        }
        .encode_to_vec();
        let endorsements = self
            .signers
            .iter()
            .map(|s| {
                let mut msg = prp_bytes.clone();
                msg.extend_from_slice(s.creator());
                Ok(Endorsement {
                    endorser: s.creator().to_vec(),
                    signature: s.sign(&msg)?,
                })
            })
            .collect::<Result<_, SignError>>()
            .map_err(|e| ProposalError::Internal(e.to_string()))?;
        Ok(Endorsed {
            unpacked: up,
            response,
            prp_bytes,
            endorsements,
        })
    }
}

/// The error of Fabric's `aclmgmtPolicyProviderImpl.CheckACL` when a channel policy
/// (an implicit ANY over the application orgs' `sub` policies) is not satisfied.
pub fn policy_failure(policy: &str, sub: &str) -> String {
    format!(
        "failed evaluating policy on signed data during check policy [{policy}]: [implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the '{sub}' sub-policies to be satisfied]"
    )
}

fn msp_id_of(serialized: &[u8]) -> String {
    gxd_fabric::proto::msp::SerializedIdentity::decode(serialized)
        .map(|s| s.mspid)
        .unwrap_or_default()
}

/// Checks an envelope's creator and signature (the orderer's Writers check at broadcast and
/// the committer's first step). Returns the channel header and the creator.
pub fn check_envelope(
    msp: &MspManager,
    env: &Envelope,
) -> Result<(ChannelHeader, SignatureHeader, Payload), (TxValidationCode, String)> {
    let payload = Payload::decode(env.payload.as_slice())
        .map_err(|e| (TxValidationCode::BadPayload, format!("bad payload: {e}")))?;
    let header = payload.header.as_ref().ok_or((
        TxValidationCode::BadCommonHeader,
        "missing header".to_owned(),
    ))?;
    let chdr = ChannelHeader::decode(header.channel_header.as_slice()).map_err(|e| {
        (
            TxValidationCode::BadChannelHeader,
            format!("bad channel header: {e}"),
        )
    })?;
    let shdr = SignatureHeader::decode(header.signature_header.as_slice()).map_err(|e| {
        (
            TxValidationCode::BadCommonHeader,
            format!("bad signature header: {e}"),
        )
    })?;
    let creator = msp.deserialize(&shdr.creator).map_err(|e| {
        (
            TxValidationCode::BadCreatorSignature,
            format!("creator is not valid: {e}"),
        )
    })?;
    creator.verify(&env.payload, &env.signature).map_err(|e| {
        (
            TxValidationCode::BadCreatorSignature,
            format!("signature is not valid: {e}"),
        )
    })?;
    Ok((chdr, shdr, payload))
}

/// Commit-time validation of the transactions of one block, in the order of Fabric's
/// committer (`core/committer/txvalidator/v20/validator.go`): per transaction
/// `ValidateTransaction` (`core/common/validation/msgvalidation.go`), the ledger duplicate
/// check (`checkTxIdDupsLedger`) and the chaincode's validation (endorsement policy); then
/// `markTXIdDuplicates` among the transactions still valid; then MVCC (`core/ledger`).
pub struct Validator<'a> {
    pub channel: &'a ChannelInfo,
    pub msp: &'a MspManager,
    pub ledger: &'a Ledger,
    /// MSP ids of the application orgs (the Endorsement policy is MAJORITY of them).
    pub endorsing_orgs: &'a [String],
}

/// Per-block overlay: transaction ids and keys of earlier transactions of the block.
#[derive(Default)]
pub struct BlockState {
    /// Ids of the transactions that passed validation up to MVCC (`markTXIdDuplicates`'s map).
    valid_tx_ids: BTreeSet<String>,
    /// Ids indexed by this block (the first occurrence of an id is the one indexed).
    indexed: BTreeSet<String>,
    updated: HashMap<(String, String), Height>,
    pub writes: Vec<StateWrite>,
    pub index: Vec<(String, TxRecord)>,
}

/// The writes of a transaction that passed MVCC, or the MVCC code.
/// A write is `(namespace, key, value)`; a `None` value deletes the key.
pub(crate) type MvccOutcome = Result<Vec<(String, String, Option<Vec<u8>>)>, TxValidationCode>;

/// One transaction after the checks before the in-block duplicate check and MVCC (the part
/// that does not depend on the other transactions of the block).
pub(crate) struct Checked {
    code: TxValidationCode,
    /// The channel header's transaction id, when the channel header decodes.
    tx_id: Option<String>,
    /// The ledger's index was consulted and holds no transaction with this id.
    not_in_ledger: bool,
    /// The read-write sets per namespace (when `code` is VALID).
    rwsets: Vec<(String, KvrwSet)>,
    /// MVCC against the ledger alone (no block overlay), computed ahead by
    /// [`Validator::check_ahead`]; used only if no read touches a key written since.
    mvcc_ahead: Option<MvccOutcome>,
}

impl Checked {
    fn new(code: TxValidationCode, tx_id: Option<String>) -> Self {
        Self {
            code,
            tx_id,
            not_in_ledger: false,
            rwsets: Vec::new(),
            mvcc_ahead: None,
        }
    }

    /// Whether no read of this transaction is of a key in `keys`.
    fn reads_none_of(&self, keys: impl Fn(&(String, String)) -> bool) -> bool {
        self.rwsets
            .iter()
            .all(|(ns, kv)| kv.reads.iter().all(|r| !keys(&(ns.clone(), r.key.clone()))))
    }
}

/// Fabric's `protoutil.GetProposalHash2`: SHA-256 over the channel header bytes, the
/// signature header bytes and the chaincode proposal payload bytes as they are (the gateway
/// puts the payload without its transient map into the transaction, so this equals the
/// endorser's `GetProposalHash1`).
pub fn proposal_hash(channel_header: &[u8], signature_header: &[u8], cpp: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(channel_header);
    h.update(signature_header);
    h.update(cpp);
    h.finalize().to_vec()
}

impl Validator<'_> {
    /// [`Self::check`] and, for a transaction valid so far, its MVCC against the ledger
    /// alone: the part of the validation that can run for all transactions of a block at
    /// once, before [`Self::settle`] takes them in order.
    pub(crate) fn check_ahead(&self, envelope_bytes: &[u8]) -> Result<Checked, LedgerError> {
        let mut checked = self.check(envelope_bytes)?;
        // A range query is validated against the block's earlier writes too: leave it to
        // `settle`, which sees them.
        let has_ranges = checked
            .rwsets
            .iter()
            .any(|(_, kv)| !kv.range_queries_info.is_empty());
        if checked.code == TxValidationCode::Valid && !has_ranges {
            checked.mvcc_ahead = Some(self.mvcc(&checked.rwsets, &BlockState::default())?);
        }
        Ok(checked)
    }

    /// The ordered part of the validation of transaction `tx_num`, once checked: the ledger
    /// duplicate check against `in_flight` (the block written meanwhile, whose ids the
    /// ledger lookup of [`Self::check`] may not have seen), `markTXIdDuplicates`, MVCC, the
    /// block index and `state`. The ledger must hold `in_flight` by now.
    pub(crate) fn settle(
        &self,
        block_num: u64,
        tx_num: u64,
        mut checked: Checked,
        state: &mut BlockState,
        in_flight: Option<&Written>,
    ) -> Result<TxValidationCode, LedgerError> {
        // checkTxIdDupsLedger, for the transactions of the block written meanwhile.
        if checked.not_in_ledger
            && let Some(f) = in_flight
            && let Some(tx_id) = &checked.tx_id
            && f.tx_ids.contains(tx_id)
        {
            checked = Checked::new(TxValidationCode::DuplicateTxid, checked.tx_id.take());
        }
        // markTXIdDuplicates: duplicates within a block are counted among the transactions
        // valid so far only; an invalid first occurrence does not make a later one DUPLICATE.
        if checked.code == TxValidationCode::Valid
            && let Some(tx_id) = &checked.tx_id
            && !tx_id.is_empty()
            && !state.valid_tx_ids.insert(tx_id.clone())
        {
            checked.code = TxValidationCode::DuplicateTxid;
        }
        let mut writes = Vec::new();
        if checked.code == TxValidationCode::Valid {
            // The MVCC computed ahead holds unless a read is of a key written since: by an
            // earlier valid transaction of this block or by the block written meanwhile.
            let ahead = checked.mvcc_ahead.take().filter(|_| {
                checked.reads_none_of(|k| {
                    state.updated.contains_key(k) || in_flight.is_some_and(|f| f.keys.contains(k))
                })
            });
            let outcome = match ahead {
                Some(outcome) => outcome,
                None => self.mvcc(&checked.rwsets, state)?,
            };
            match outcome {
                Ok(w) => writes = w,
                Err(code) => checked.code = code,
            }
        }
        let code = checked.code;
        // The block index records an id's first occurrence in the ledger (Fabric's block
        // index answers a tx id lookup with the first transaction that carries it).
        if let Some(tx_id) = &checked.tx_id
            && !tx_id.is_empty()
            && code != TxValidationCode::DuplicateTxid
            && !state.indexed.contains(tx_id)
            && (checked.not_in_ledger || self.ledger.tx(tx_id)?.is_none())
        {
            state.indexed.insert(tx_id.clone());
            state.index.push((
                tx_id.clone(),
                TxRecord {
                    block: block_num,
                    index: u32::try_from(tx_num).unwrap_or(u32::MAX),
                    code: code as i32,
                },
            ));
        }
        if code == TxValidationCode::Valid {
            let version = Height {
                block: block_num,
                tx: tx_num,
            };
            for (ns, key, value) in writes {
                state.updated.insert((ns.clone(), key.clone()), version);
                state.writes.push(StateWrite {
                    namespace: ns,
                    key,
                    value,
                    version,
                });
            }
        } else {
            tracing::info!(
                tx_id = checked.tx_id.as_deref().unwrap_or(""),
                code = code.as_str_name(),
                block = block_num,
                "transaction invalidated"
            );
        }
        Ok(code)
    }

    /// Everything before the in-block duplicate check and MVCC.
    pub(crate) fn check(&self, envelope_bytes: &[u8]) -> Result<Checked, LedgerError> {
        use TxValidationCode as C;
        if envelope_bytes.is_empty() {
            return Ok(Checked::new(C::NilEnvelope, None));
        }
        // validateTx: an envelope that does not unmarshal is INVALID_OTHER_REASON.
        let Ok(env) = Envelope::decode(envelope_bytes) else {
            return Ok(Checked::new(C::InvalidOtherReason, None));
        };
        // ValidateTransaction.
        let Ok(payload) = Payload::decode(env.payload.as_slice()) else {
            return Ok(Checked::new(C::BadPayload, None));
        };
        let Some(header) = payload.header.as_ref() else {
            return Ok(Checked::new(C::BadCommonHeader, None));
        };
        let Ok(chdr) = ChannelHeader::decode(header.channel_header.as_slice()) else {
            return Ok(Checked::new(C::BadCommonHeader, None));
        };
        let tx_id = chdr.tx_id.clone();
        let with_id = |c: C| Ok(Checked::new(c, Some(tx_id.clone())));
        let Ok(shdr) = SignatureHeader::decode(header.signature_header.as_slice()) else {
            return with_id(C::BadCommonHeader);
        };
        // validateCommonHeader: validateChannelHeader, then validateSignatureHeader.
        let header_type = HeaderType::try_from(chdr.r#type);
        if !matches!(
            header_type,
            Ok(HeaderType::EndorserTransaction | HeaderType::ConfigUpdate | HeaderType::Config)
        ) || chdr.epoch != 0
            || shdr.nonce.is_empty()
            || shdr.creator.is_empty()
        {
            return with_id(C::BadCommonHeader);
        }
        // checkSignatureFromCreator: the creator as of its certificate's issuance (an
        // identity that expired after signing is still valid), then its signature.
        let signed_by_creator = self
            .msp
            .deserialize_ignoring_expiry(&shdr.creator)
            .and_then(|creator| creator.verify(&env.payload, &env.signature));
        if signed_by_creator.is_err() {
            return with_id(C::BadCreatorSignature);
        }
        match header_type {
            Ok(HeaderType::EndorserTransaction) => {}
            // The devnet's channel configuration is fixed: it orders no config transactions.
            Ok(HeaderType::Config) => return with_id(C::InvalidConfigTransaction),
            _ => return with_id(C::UnsupportedTxPayload),
        }
        if tx_id != compute_tx_id(&shdr.nonce, &shdr.creator) {
            return with_id(C::BadProposalTxid);
        }
        let Some(cap) = validate_endorser_transaction(&payload.data, &header.channel_header) else {
            return with_id(C::InvalidEndorserTransaction);
        };
        // validateTx.
        if chdr.channel_id != self.channel.channel_id {
            return with_id(C::TargetChainNotFound);
        }
        // checkTxIdDupsLedger: any transaction in the ledger with this id, valid or not.
        if self.ledger.tx(&tx_id)?.is_some() {
            return with_id(C::DuplicateTxid);
        }
        let mut out = Checked {
            not_in_ledger: true,
            ..Checked::new(C::Valid, Some(tx_id.clone()))
        };
        match self.dispatch(&chdr, cap) {
            Ok(rwsets) => out.rwsets = rwsets,
            Err(code) => out.code = code,
        }
        Ok(out)
    }

    /// The chaincode's validation (Fabric's plugin dispatcher and the default VSCC): the
    /// chaincode action, the endorsement policy, the write set. Returns the read-write sets.
    fn dispatch(
        &self,
        chdr: &ChannelHeader,
        cap: ChaincodeActionPayload,
    ) -> Result<Vec<(String, KvrwSet)>, TxValidationCode> {
        use TxValidationCode as C;
        let endorsed = cap.action.ok_or(C::InvalidEndorserTransaction)?;
        let ext = ChaincodeHeaderExtension::decode(chdr.extension.as_slice())
            .map_err(|_| C::BadHeaderExtension)?;
        let cc_name = ext.chaincode_id.map(|c| c.name).unwrap_or_default();
        if cc_name != self.channel.chaincode {
            return Err(C::InvalidChaincode);
        }
        let prp = ProposalResponsePayload::decode(endorsed.proposal_response_payload.as_slice())
            .map_err(|_| C::BadResponsePayload)?;
        let cca =
            ChaincodeAction::decode(prp.extension.as_slice()).map_err(|_| C::BadResponsePayload)?;
        if cca.chaincode_id.as_ref().map(|c| c.name.as_str()) != Some(cc_name.as_str()) {
            return Err(C::InvalidChaincode);
        }
        let rwset = TxReadWriteSet::decode(cca.results.as_slice()).map_err(|_| C::BadRwset)?;
        let mut rwsets = Vec::new();
        for ns in rwset.ns_rwset {
            let kv = KvrwSet::decode(ns.rwset.as_slice()).map_err(|_| C::BadRwset)?;
            if ns.namespace != cc_name && !kv.writes.is_empty() {
                return Err(C::IllegalWriteset);
            }
            rwsets.push((ns.namespace, kv));
        }
        // Endorsement policy: MAJORITY of the application orgs' Endorsement policies, each
        // satisfied by a valid signature from a peer of that org (as of its certificate's
        // issuance, like the creator).
        let mut orgs = BTreeSet::new();
        for e in &endorsed.endorsements {
            let Ok(id) = self.msp.deserialize_ignoring_expiry(&e.endorser) else {
                continue;
            };
            if id.role != Role::Peer || !self.endorsing_orgs.iter().any(|o| o == id.msp_id()) {
                continue;
            }
            let mut msg = endorsed.proposal_response_payload.clone();
            msg.extend_from_slice(&e.endorser);
            if id.verify(&msg, &e.signature).is_ok() {
                orgs.insert(id.msp_id().to_owned());
            }
        }
        if orgs.len() * 2 <= self.endorsing_orgs.len() {
            return Err(C::EndorsementPolicyFailure);
        }
        Ok(rwsets)
    }

    /// MVCC: every read must see the committed version, and no earlier valid transaction of
    /// the block may have written a key this one read. Returns the writes on success.
    fn mvcc(
        &self,
        rwsets: &[(String, KvrwSet)],
        state: &BlockState,
    ) -> Result<MvccOutcome, LedgerError> {
        use TxValidationCode as C;
        let mut writes = Vec::new();
        for (ns, kv) in rwsets {
            for rq in &kv.range_queries_info {
                if !self.range_unchanged(ns, rq, state)? {
                    return Ok(Err(C::PhantomReadConflict));
                }
            }
            for read in &kv.reads {
                if state.updated.contains_key(&(ns.clone(), read.key.clone())) {
                    return Ok(Err(C::MvccReadConflict));
                }
                let read_version = read.version.as_ref().map(|v| Height {
                    block: v.block_num,
                    tx: v.tx_num,
                });
                let committed = self.ledger.state(ns, &read.key)?.map(|v| v.version);
                if committed != read_version {
                    return Ok(Err(C::MvccReadConflict));
                }
            }
            for w in &kv.writes {
                let value = (!w.is_delete).then(|| w.value.clone());
                writes.push((ns.clone(), w.key.clone(), value));
            }
        }
        Ok(Ok(writes))
    }

    /// Fabric's `rangeQueryResultsValidator` for raw reads: the range, re-run over the
    /// committed state, returns the same keys at the same versions (up to the last key read
    /// if the chaincode closed the iterator early), and no earlier valid transaction of the
    /// block wrote a key in it. A Merkle summary (which the devnet never produces) is refused.
    fn range_unchanged(
        &self,
        ns: &str,
        rq: &RangeQueryInfo,
        state: &BlockState,
    ) -> Result<bool, LedgerError> {
        let Some(range_query_info::ReadsInfo::RawReads(reads)) = &rq.reads_info else {
            return Ok(false);
        };
        let last = reads.kv_reads.last().map(|r| r.key.as_str());
        let in_range = |key: &str| {
            key >= rq.start_key.as_str()
                && if rq.itr_exhausted {
                    rq.end_key.is_empty() || key < rq.end_key.as_str()
                } else {
                    last.is_some_and(|l| key <= l)
                }
        };
        if state
            .updated
            .keys()
            .any(|(n, k)| n == ns && in_range(k.as_str()))
        {
            return Ok(false);
        }
        let expected = reads.kv_reads.len();
        let fetched = if rq.itr_exhausted {
            self.ledger
                .range(ns, &rq.start_key, &rq.end_key, expected.saturating_add(1))?
        } else if let Some(last) = last {
            // [start, last] = [start, last + "\0").
            let end = format!("{last}\u{0}");
            self.ledger
                .range(ns, &rq.start_key, &end, expected.saturating_add(1))?
        } else {
            Vec::new()
        };
        if fetched.len() != expected {
            return Ok(false);
        }
        Ok(fetched.iter().zip(&reads.kv_reads).all(|((k, v), r)| {
            *k == r.key
                && r.version.as_ref().map(|x| (x.block_num, x.tx_num))
                    == Some((v.version.block, v.version.tx))
        }))
    }
}

/// Fabric's `validateEndorserTransaction`: exactly one action, whose signature header has a
/// nonce and a creator, whose payload and proposal response payload unmarshal, and whose
/// proposal hash is the hash of the channel header, the action's signature header and the
/// chaincode proposal payload. `None` → INVALID_ENDORSER_TRANSACTION.
fn validate_endorser_transaction(
    data: &[u8],
    channel_header: &[u8],
) -> Option<ChaincodeActionPayload> {
    let tx = Transaction::decode(data).ok()?;
    let [action] = tx.actions.as_slice() else {
        return None;
    };
    let shdr = SignatureHeader::decode(action.header.as_slice()).ok()?;
    if shdr.nonce.is_empty() || shdr.creator.is_empty() {
        return None;
    }
    let cap = ChaincodeActionPayload::decode(action.payload.as_slice()).ok()?;
    let prp_bytes = cap
        .action
        .as_ref()
        .map(|a| a.proposal_response_payload.as_slice())
        .unwrap_or_default();
    let prp = ProposalResponsePayload::decode(prp_bytes).ok()?;
    let hash = proposal_hash(
        channel_header,
        &action.header,
        &cap.chaincode_proposal_payload,
    );
    (prp.proposal_hash == hash).then_some(cap)
}

#[cfg(test)]
mod range_validation_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use gxd_fabric::proto::kvrwset::QueryReadsMerkleSummary;

    fn ledger_with(keys: &[&str]) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let writes = keys
            .iter()
            .enumerate()
            .map(|(i, k)| StateWrite {
                namespace: "gx".into(),
                key: (*k).into(),
                value: Some(b"v".to_vec()),
                version: Height {
                    block: 0,
                    tx: i as u64,
                },
            })
            .collect();
        ledger
            .commit(&super::super::ledger::BlockCommit {
                number: 0,
                block_bytes: Vec::new(),
                txs: Vec::new(),
                writes,
            })
            .unwrap();
        (dir, ledger)
    }

    fn range(start: &str, end: &str, exhausted: bool, reads: &[(&str, u64)]) -> RangeQueryInfo {
        RangeQueryInfo {
            start_key: start.into(),
            end_key: end.into(),
            itr_exhausted: exhausted,
            reads_info: Some(range_query_info::ReadsInfo::RawReads(QueryReads {
                kv_reads: reads
                    .iter()
                    .map(|(k, tx)| kv_read(k, Some(Height { block: 0, tx: *tx })))
                    .collect(),
            })),
        }
    }

    fn updated(keys: &[&str]) -> BlockState {
        let mut state = BlockState::default();
        for k in keys {
            state
                .updated
                .insert(("gx".into(), (*k).into()), Height { block: 1, tx: 0 });
        }
        state
    }

    /// Fabric's `rangeQueryResultsValidator` for raw reads: same keys at the same versions,
    /// nothing written into the range by an earlier transaction of the block; an iterator
    /// closed early is validated up to its last key.
    #[test]
    fn range_queries_are_validated_for_phantoms() {
        let (_dir, ledger) = ledger_with(&["a1", "a2", "b1"]);
        let channel = ChannelInfo {
            channel_id: "gxchannel".into(),
            chaincode: "gx".into(),
            runtime: ChaincodeRuntime::InProcess,
        };
        let msp = MspManager::new(std::iter::empty()).unwrap();
        let v = Validator {
            channel: &channel,
            msp: &msp,
            ledger: &ledger,
            endorsing_orgs: &[],
        };
        let full = range("a", "b", true, &[("a1", 0), ("a2", 1)]);
        let ok =
            |rq: &RangeQueryInfo, state: &BlockState| v.range_unchanged("gx", rq, state).unwrap();
        assert!(ok(&full, &BlockState::default()));
        assert!(
            !ok(&full, &updated(&["a5"])),
            "a key written into the range by an earlier tx"
        );
        assert!(
            !ok(&full, &updated(&["a1"])),
            "a key of the range rewritten"
        );
        assert!(ok(&full, &updated(&["b0", "0"])), "writes outside [a, b)");
        assert!(
            !ok(&full, &updated(&["a"])),
            "the start key is in the range"
        );
        assert!(ok(&full, &updated(&["b"])), "the end key is not");
        // Versions and membership against the committed state.
        assert!(
            !ok(
                &range("a", "b", true, &[("a1", 0), ("a2", 7)]),
                &BlockState::default()
            ),
            "version changed"
        );
        assert!(
            !ok(&range("a", "b", true, &[("a1", 0)]), &BlockState::default()),
            "a key appeared"
        );
        assert!(
            !ok(
                &range("a", "b", true, &[("a1", 0), ("a2", 1), ("a3", 2)]),
                &BlockState::default()
            ),
            "a key vanished"
        );
        assert!(
            ok(
                &range("", "", true, &[("a1", 0), ("a2", 1), ("b1", 2)]),
                &BlockState::default()
            ),
            "unbounded"
        );
        // Closed after a1: only [a, a1] matters.
        let early = range("a", "b", false, &[("a1", 0)]);
        assert!(ok(&early, &BlockState::default()));
        assert!(ok(&early, &updated(&["a2"])), "beyond the last key read");
        assert!(!ok(&early, &updated(&["a1"])));
        assert!(
            ok(&range("a", "b", false, &[]), &updated(&["a1"])),
            "nothing read, nothing to validate"
        );
        // The devnet never writes Merkle summaries; one is refused.
        let merkle = RangeQueryInfo {
            reads_info: Some(range_query_info::ReadsInfo::ReadsMerkleHashes(
                QueryReadsMerkleSummary::default(),
            )),
            ..full.clone()
        };
        assert!(!ok(&merkle, &BlockState::default()));
    }
}
