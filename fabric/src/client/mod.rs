//! Fabric Gateway client: evaluate, endorse, submit, commit status — each with its own deadline.
//!
//! The flow for a ledger update, as the official SDKs do it:
//! 1. [`Gateway::new_proposal`] builds and signs a proposal (new nonce → new tx id);
//! 2. [`Gateway::endorse`] has the Gateway collect endorsements; the Gateway returns the unsigned
//!    transaction envelope, which the client signs → [`PreparedTransaction`]. Its
//!    [`to_bytes`](PreparedTransaction::to_bytes) form can be stored and submitted again later
//!    under the same tx id (a second copy can only ever be marked DUPLICATE_TXID);
//! 3. [`Gateway::submit`] hands it to the ordering service;
//! 4. [`Gateway::commit_status`] waits for the validation code (signed request).
//!
//! Errors keep stage, tx id, gRPC status and per-peer details ([`GatewayError`]), and
//! [`GatewayError::class`] says whether to retry, re-endorse, treat as done, or give up.

mod error;

pub use error::{ErrorClass, ErrorDetail, GatewayError, Stage, classify_validation_code};

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::identity::SigningIdentity;
use crate::proto::{self, common, gateway, protos};
use crate::tls::{CallError, PeerConnector};
use crate::tx::{self, ProposalSpec, SignedProposalBundle};

/// Per-call deadlines. Defaults follow the official SDK samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub evaluate: Duration,
    pub endorse: Duration,
    pub submit: Duration,
    pub commit_status: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            evaluate: Duration::from_secs(5),
            endorse: Duration::from_secs(15),
            submit: Duration::from_secs(5),
            commit_status: Duration::from_secs(60),
        }
    }
}

/// An endorsed transaction, signed and ready to submit (and re-submit).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedTransaction {
    tx_id: String,
    channel: String,
    envelope: common::Envelope,
    result: Vec<u8>,
}

impl PreparedTransaction {
    /// From a signed transaction envelope; checks it is an endorser transaction and reads its
    /// tx id, channel and chaincode result.
    pub fn from_envelope(envelope: common::Envelope) -> Result<Self, tx::TxError> {
        let parts = tx::signed_envelope_payload(&envelope)?;
        if parts.channel_header.r#type != common::HeaderType::EndorserTransaction as i32 {
            return Err(tx::malformed(
                "prepared transaction",
                "not an ENDORSER_TRANSACTION envelope",
            ));
        }
        if parts.channel_header.tx_id.is_empty() {
            return Err(tx::TxError::Missing("transaction id"));
        }
        let result = transaction_result(&parts.payload.data)?;
        Ok(Self {
            tx_id: parts.channel_header.tx_id,
            channel: parts.channel_header.channel_id,
            envelope,
            result,
        })
    }

    /// Serialized form (`gateway.PreparedTransaction{transaction_id, envelope}`, as the official
    /// SDKs serialize a transaction for offline signing / later submission).
    pub fn to_bytes(&self) -> Vec<u8> {
        gateway::PreparedTransaction {
            transaction_id: self.tx_id.clone(),
            envelope: Some(self.envelope.clone()),
        }
        .encode_to_vec()
    }

    /// Restores a transaction serialized with [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, tx::TxError> {
        let p = gateway::PreparedTransaction::decode(bytes)
            .map_err(|e| tx::malformed("prepared transaction", e))?;
        let envelope = p.envelope.ok_or(tx::TxError::Missing("envelope"))?;
        let me = Self::from_envelope(envelope)?;
        if !p.transaction_id.is_empty() && p.transaction_id != me.tx_id {
            return Err(tx::malformed(
                "prepared transaction",
                "transaction id does not match the envelope",
            ));
        }
        Ok(me)
    }

    pub fn tx_id(&self) -> &str {
        &self.tx_id
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The signed envelope as submitted.
    pub fn envelope(&self) -> &common::Envelope {
        &self.envelope
    }

    /// The chaincode's response payload from the endorsement.
    pub fn result(&self) -> &[u8] {
        &self.result
    }

    pub fn is_signed(&self) -> bool {
        !self.envelope.signature.is_empty()
    }
}

/// Reads the chaincode response payload out of a transaction's `Payload.data`.
fn transaction_result(data: &[u8]) -> Result<Vec<u8>, tx::TxError> {
    let t = protos::Transaction::decode(data).map_err(|e| tx::malformed("transaction", e))?;
    let action = t
        .actions
        .first()
        .ok_or(tx::TxError::Missing("transaction action"))?;
    let cap = protos::ChaincodeActionPayload::decode(action.payload.as_slice())
        .map_err(|e| tx::malformed("chaincode action payload", e))?;
    let endorsed = cap.action.ok_or(tx::TxError::Missing("endorsed action"))?;
    let prp =
        protos::ProposalResponsePayload::decode(endorsed.proposal_response_payload.as_slice())
            .map_err(|e| tx::malformed("proposal response payload", e))?;
    let cca = protos::ChaincodeAction::decode(prp.extension.as_slice())
        .map_err(|e| tx::malformed("chaincode action", e))?;
    Ok(cca.response.map(|r| r.payload).unwrap_or_default())
}

/// Result of a commit status query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStatus {
    /// `protos.TxValidationCode`.
    pub code: i32,
    pub block_number: u64,
}

impl CommitStatus {
    pub fn is_valid(&self) -> bool {
        self.code == protos::TxValidationCode::Valid as i32
    }

    pub fn validation(&self) -> Option<protos::TxValidationCode> {
        protos::TxValidationCode::try_from(self.code).ok()
    }
}

/// A successfully committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub tx_id: String,
    pub block_number: u64,
    /// The chaincode's response payload.
    pub result: Vec<u8>,
}

/// Client of a peer's Gateway service, signing as one MSP identity on one channel.
#[derive(Clone)]
pub struct Gateway {
    connector: Arc<PeerConnector>,
    signer: SigningIdentity,
    channel: String,
    timeouts: Timeouts,
    endorsing_organizations: Vec<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("channel", &self.channel)
            .field("msp_id", &self.signer.msp_id())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        connector: Arc<PeerConnector>,
        signer: SigningIdentity,
        channel: impl Into<String>,
    ) -> Self {
        Self {
            connector,
            signer,
            channel: channel.into(),
            timeouts: Timeouts::default(),
            endorsing_organizations: Vec::new(),
        }
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Restrict endorsement (and evaluation) to these MSP ids (private data, SBE).
    pub fn with_endorsing_organizations(mut self, orgs: Vec<String>) -> Self {
        self.endorsing_organizations = orgs;
        self
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn identity(&self) -> &SigningIdentity {
        &self.signer
    }

    pub fn connector(&self) -> &Arc<PeerConnector> {
        &self.connector
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A [`ProposalSpec`] on this gateway's channel.
    pub fn proposal(
        &self,
        chaincode: impl Into<String>,
        function: impl Into<String>,
    ) -> ProposalSpec {
        ProposalSpec::new(self.channel.clone(), chaincode, function)
    }

    /// Builds and signs a proposal (fresh nonce and tx id).
    pub fn new_proposal(&self, spec: &ProposalSpec) -> Result<SignedProposalBundle, GatewayError> {
        tx::build_proposal(spec, &self.signer).map_err(|e| match e {
            tx::TxError::Sign(source) => GatewayError::Sign {
                stage: Stage::Endorse,
                tx_id: String::new(),
                source,
            },
            other => GatewayError::Protocol {
                stage: Stage::Endorse,
                tx_id: String::new(),
                message: other.to_string(),
            },
        })
    }

    /// Evaluates (queries) a transaction function; returns the chaincode's response payload.
    pub async fn evaluate(&self, spec: &ProposalSpec) -> Result<Vec<u8>, GatewayError> {
        let proposal = self
            .new_proposal(spec)
            .map_err(|e| with_stage(e, Stage::Evaluate))?;
        let response = self.evaluate_proposal(&proposal).await?;
        Ok(response.payload)
    }

    /// Evaluates an already-signed proposal; returns the chaincode response.
    pub async fn evaluate_proposal(
        &self,
        proposal: &SignedProposalBundle,
    ) -> Result<protos::Response, GatewayError> {
        let stage = Stage::Evaluate;
        let request = gateway::EvaluateRequest {
            transaction_id: proposal.tx_id.clone(),
            channel_id: proposal.channel.clone(),
            proposed_transaction: Some(proposal.signed.clone()),
            target_organizations: self.endorsing_organizations.clone(),
        };
        let deadline = self.timeouts.evaluate;
        let resp = self
            .rpc(stage, &proposal.tx_id, deadline, move |ch| {
                let request = request.clone();
                async move {
                    let mut client = gateway_client(ch);
                    client
                        .evaluate(grpc_request(request, deadline))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        resp.result.ok_or_else(|| GatewayError::Protocol {
            stage,
            tx_id: proposal.tx_id.clone(),
            message: "evaluate response carries no result".into(),
        })
    }

    /// Endorses a signed proposal and signs the transaction the Gateway assembled.
    pub async fn endorse(
        &self,
        proposal: &SignedProposalBundle,
    ) -> Result<PreparedTransaction, GatewayError> {
        let stage = Stage::Endorse;
        let tx_id = proposal.tx_id.clone();
        let request = gateway::EndorseRequest {
            transaction_id: tx_id.clone(),
            channel_id: proposal.channel.clone(),
            proposed_transaction: Some(proposal.signed.clone()),
            endorsing_organizations: self.endorsing_organizations.clone(),
        };
        let deadline = self.timeouts.endorse;
        let resp = self
            .rpc(stage, &tx_id, deadline, move |ch| {
                let request = request.clone();
                async move {
                    let mut client = gateway_client(ch);
                    client
                        .endorse(grpc_request(request, deadline))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        let protocol = |message: String| GatewayError::Protocol {
            stage,
            tx_id: tx_id.clone(),
            message,
        };
        let mut envelope = resp
            .prepared_transaction
            .ok_or_else(|| protocol("endorse response carries no prepared transaction".into()))?;
        // The Gateway must have assembled *our* transaction.
        let parts = tx::signed_envelope_payload(&envelope).map_err(|e| protocol(e.to_string()))?;
        if parts.channel_header.tx_id != tx_id
            || parts.signature_header.creator != self.signer.creator()
        {
            return Err(protocol(
                "prepared transaction does not match the proposal".into(),
            ));
        }
        envelope.signature =
            self.signer
                .sign(&envelope.payload)
                .map_err(|source| GatewayError::Sign {
                    stage,
                    tx_id: tx_id.clone(),
                    source,
                })?;
        PreparedTransaction::from_envelope(envelope).map_err(|e| protocol(e.to_string()))
    }

    /// Submits a prepared transaction to the ordering service. Safe to repeat with the same
    /// transaction: the ledger records a tx id once.
    pub async fn submit(&self, tx: &PreparedTransaction) -> Result<(), GatewayError> {
        let stage = Stage::Submit;
        if !tx.is_signed() {
            return Err(GatewayError::Protocol {
                stage,
                tx_id: tx.tx_id.clone(),
                message: "transaction is not signed".into(),
            });
        }
        let request = gateway::SubmitRequest {
            transaction_id: tx.tx_id.clone(),
            channel_id: tx.channel.clone(),
            prepared_transaction: Some(tx.envelope.clone()),
        };
        let deadline = self.timeouts.submit;
        self.rpc(stage, &tx.tx_id, deadline, move |ch| {
            let request = request.clone();
            async move {
                let mut client = gateway_client(ch);
                client
                    .submit(grpc_request(request, deadline))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Waits for the commit status of `tx_id` (signed `CommitStatusRequest`). Returns the
    /// validation code whatever it is; see [`Gateway::wait_for_commit`] for an error on invalid.
    pub async fn commit_status(&self, tx_id: &str) -> Result<CommitStatus, GatewayError> {
        let stage = Stage::CommitStatus;
        let request = gateway::CommitStatusRequest {
            transaction_id: tx_id.to_owned(),
            channel_id: self.channel.clone(),
            identity: self.signer.creator().to_vec(),
        }
        .encode_to_vec();
        let signature = self
            .signer
            .sign(&request)
            .map_err(|source| GatewayError::Sign {
                stage,
                tx_id: tx_id.to_owned(),
                source,
            })?;
        let signed = gateway::SignedCommitStatusRequest { request, signature };
        let deadline = self.timeouts.commit_status;
        let resp = self
            .rpc(stage, tx_id, deadline, move |ch| {
                let signed = signed.clone();
                async move {
                    let mut client = gateway_client(ch);
                    client
                        .commit_status(grpc_request(signed, deadline))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(CommitStatus {
            code: resp.result,
            block_number: resp.block_number,
        })
    }

    /// [`commit_status`](Self::commit_status), with an invalid validation code turned into
    /// [`GatewayError::Commit`].
    pub async fn wait_for_commit(&self, tx_id: &str) -> Result<CommitStatus, GatewayError> {
        let status = self.commit_status(tx_id).await?;
        if !status.is_valid() {
            return Err(GatewayError::Commit {
                tx_id: tx_id.to_owned(),
                code: status.code,
                block_number: status.block_number,
            });
        }
        Ok(status)
    }

    /// The whole flow: propose, endorse, submit, wait for a VALID commit.
    pub async fn submit_transaction(&self, spec: &ProposalSpec) -> Result<Committed, GatewayError> {
        let proposal = self.new_proposal(spec)?;
        let prepared = self.endorse(&proposal).await?;
        self.submit(&prepared).await?;
        let status = self.wait_for_commit(prepared.tx_id()).await?;
        Ok(Committed {
            tx_id: prepared.tx_id,
            block_number: status.block_number,
            result: prepared.result,
        })
    }

    /// Runs one RPC with failover and the stage's deadline.
    async fn rpc<T, F, Fut>(
        &self,
        stage: Stage,
        tx_id: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T, GatewayError>
    where
        F: FnMut(tonic::transport::Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        match tokio::time::timeout(deadline, self.connector.call(f)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(CallError::Connect(source))) => Err(GatewayError::Connect {
                stage,
                tx_id: tx_id.to_owned(),
                source,
            }),
            Ok(Err(CallError::Status { status, endpoint })) => Err(GatewayError::Rpc {
                stage,
                tx_id: tx_id.to_owned(),
                // The grpc-timeout we send makes some servers (tonic) answer CANCELLED
                // "Timeout expired" where Go servers answer DEADLINE_EXCEEDED: same thing.
                code: if status.code() == tonic::Code::Cancelled && started.elapsed() >= deadline {
                    tonic::Code::DeadlineExceeded
                } else {
                    status.code()
                },
                message: status.message().to_owned(),
                details: proto::error_details(&status)
                    .into_iter()
                    .map(ErrorDetail::from)
                    .collect(),
                endpoint: Some(endpoint),
            }),
            Err(_) => Err(GatewayError::Rpc {
                stage,
                tx_id: tx_id.to_owned(),
                code: tonic::Code::DeadlineExceeded,
                message: format!("{stage} deadline of {deadline:?} exceeded"),
                details: Vec::new(),
                endpoint: None,
            }),
        }
    }
}

/// Largest Gateway response accepted.
const MAX_GATEWAY_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

fn gateway_client(
    ch: tonic::transport::Channel,
) -> gateway::gateway_client::GatewayClient<tonic::transport::Channel> {
    gateway::gateway_client::GatewayClient::new(ch)
        .max_decoding_message_size(MAX_GATEWAY_MESSAGE_BYTES)
}

fn grpc_request<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

fn with_stage(e: GatewayError, stage: Stage) -> GatewayError {
    match e {
        GatewayError::Sign { tx_id, source, .. } => GatewayError::Sign {
            stage,
            tx_id,
            source,
        },
        GatewayError::Protocol { tx_id, message, .. } => GatewayError::Protocol {
            stage,
            tx_id,
            message,
        },
        other => other,
    }
}
