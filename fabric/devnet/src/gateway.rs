//! Fabric's Gateway service (`gateway.Gateway`) on the devnet: Evaluate, Endorse, Submit,
//! CommitStatus and ChaincodeEvents, with the status codes, messages and `ErrorDetail`s a
//! Fabric 2.5 gateway peer returns (see `internal/pkg/gateway` in Fabric):
//!
//! | situation | Evaluate | Endorse |
//! |---|---|---|
//! | proposal does not unpack | INVALID_ARGUMENT | INVALID_ARGUMENT |
//! | channel is not the devnet's | UNAVAILABLE (`connectChannelPeers`) | FAILED_PRECONDITION (no endorsement plan) |
//! | chaincode not on the channel | FAILED_PRECONDITION | FAILED_PRECONDITION |
//! | endorser refuses (bad signature, unknown CA, bad tx id, duplicate tx id, creator not a Writer) | FAILED_PRECONDITION + detail | ABORTED + detail |
//! | chaincode error | UNKNOWN + detail `chaincode response 500, <message>` | ABORTED + detail `chaincode response 500, <message>` |
//!
//! Endorse with `endorsing_organizations`: only those orgs' peers endorse; an org without a
//! peer for the channel and chaincode → UNAVAILABLE `failed to find any endorsing peers for
//! org(s): …` (Fabric's `registry.planForOrgs`).
//!
//! Submit: unsigned → INVALID_ARGUMENT; channel not the devnet's → FAILED_PRECONDITION (no
//! orderers for it); refused by the orderer (bad signature or creator:
//! FORBIDDEN; malformed: BAD_REQUEST; wrong channel: NOT_FOUND; too large:
//! REQUEST_ENTITY_TOO_LARGE) → ABORTED `received unsuccessful response from orderer: status=…, info=…`.
//! CommitStatus: no identity, channel or transaction id → INVALID_ARGUMENT. CommitStatus and
//! ChaincodeEvents: the ACL (`/Channel/Application/Readers`) is checked first, so an unknown
//! channel, a bad signature, an invalid identity or one that is not a reader of the channel
//! (the orderer org) → PERMISSION_DENIED.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::blocks::summarize;
use super::faults::{self, Disposition, Rpc};
use super::node::Node;
use super::peer::{Endorsed, Endorser, ProposalError, check_envelope, unpack};
use gxd_fabric::proto::common::HeaderType;
use gxd_fabric::proto::gateway::gateway_server::Gateway;
use gxd_fabric::proto::gateway::{
    ChaincodeEventsRequest, ChaincodeEventsResponse, CommitStatusRequest, CommitStatusResponse,
    EndorseRequest, EndorseResponse, ErrorDetail, EvaluateRequest, EvaluateResponse,
    SignedChaincodeEventsRequest, SignedCommitStatusRequest, SubmitRequest, SubmitResponse,
};
use gxd_fabric::proto::orderer::seek_position;
use gxd_fabric::proto::protos::{SignedProposal, TxValidationCode};
use gxd_fabric::proto::status_with_details;

/// The Gateway service implementation.
#[derive(Debug, Clone)]
pub struct GatewayService {
    node: Arc<Node>,
}

impl GatewayService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn detail(&self, message: String) -> ErrorDetail {
        ErrorDetail {
            address: self.node.peer_address.clone(),
            msp_id: self
                .node
                .peer_signers
                .first()
                .map(|s| s.msp_id().to_owned())
                .unwrap_or_default(),
            message,
        }
    }

    async fn process(&self, signed: SignedProposal) -> Result<Endorsed, ProposalError> {
        self.process_by(signed, Vec::new()).await
    }

    /// [`Self::process`] endorsed by the peers of `orgs` only (all peers if empty).
    async fn process_by(
        &self,
        signed: SignedProposal,
        orgs: Vec<String>,
    ) -> Result<Endorsed, ProposalError> {
        let node = Arc::clone(&self.node);
        tokio::task::spawn_blocking(move || {
            let signers: Vec<_> = node
                .peer_signers
                .iter()
                .filter(|s| orgs.is_empty() || orgs.iter().any(|o| o == s.msp_id()))
                .cloned()
                .collect();
            let endorser = Endorser {
                channel: &node.channel,
                msp: &node.msp,
                signers: &signers,
                ledger: &node.ledger,
            };
            let snapshot = node.ledger.snapshot();
            endorser.process(&signed, &snapshot)
        })
        .await
        .map_err(|e| ProposalError::Internal(e.to_string()))?
    }

    fn proposal_status(&self, err: ProposalError, evaluate: bool) -> Status {
        let channel = &self.node.channel;
        match err {
            ProposalError::Malformed(m) => {
                if evaluate {
                    Status::invalid_argument(format!("failed to unpack transaction proposal: {m}"))
                } else {
                    Status::invalid_argument(m)
                }
            }
            ProposalError::ChannelNotFound(ch) => {
                if evaluate {
                    Status::unavailable(channel_config_error(&ch))
                } else {
                    Status::failed_precondition(format!(
                        "no peers available to endorse chaincode in channel {ch}: {}",
                        channel_config_error(&ch)
                    ))
                }
            }
            ProposalError::ChaincodeNotFound(cc) => Status::failed_precondition(format!(
                "no peers available to {} chaincode {cc} in channel {}",
                if evaluate { "evaluate" } else { "endorse" },
                channel.channel_id
            )),
            ProposalError::Refused(m) => {
                tracing::warn!(error = %m, "proposal refused");
                self.endorser_error(evaluate, tonic::Code::FailedPrecondition, m)
            }
            ProposalError::Chaincode { status, message } => {
                let m = format!("chaincode response {status}, {message}");
                self.endorser_error(evaluate, tonic::Code::Unknown, m)
            }
            ProposalError::Internal(m) => {
                tracing::error!(error = %m, "endorsement failed inside the peer");
                let detail = self.detail(m);
                status_with_details(
                    tonic::Code::Aborted,
                    if evaluate {
                        "failed to evaluate transaction, see attached details for more info"
                    } else {
                        "failed to endorse transaction, see attached details for more info"
                    },
                    &[detail],
                )
            }
        }
    }

    /// The ACL check of a signed CommitStatus / ChaincodeEvents request (Fabric's
    /// `CheckACL(Gateway_CommitStatus | Gateway_ChaincodeEvents)`, policy
    /// `/Channel/Application/Readers`): an unknown channel, an invalid identity, a bad
    /// signature or an identity that is not a reader of the channel → PERMISSION_DENIED.
    fn authenticate(
        &self,
        channel_id: &str,
        request: &[u8],
        identity: &[u8],
        signature: &[u8],
    ) -> Result<(), Status> {
        if channel_id != self.node.channel.channel_id {
            return Err(Status::permission_denied(format!(
                "failed to get policy manager for channel [{channel_id}]"
            )));
        }
        let denied = || {
            Status::permission_denied(format!(
                "failed evaluating policy on signed data during check policy on channel [{channel_id}] with policy [/Channel/Application/Readers]: [implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the 'Readers' sub-policies to be satisfied]"
            ))
        };
        let id = self.node.msp.deserialize(identity).map_err(|e| {
            tracing::warn!(error = %e, "access denied: identity is not valid");
            denied()
        })?;
        id.verify(request, signature).map_err(|e| {
            tracing::warn!(error = %e, "access denied: signature is not valid");
            denied()
        })?;
        if !id.is_channel_reader() {
            tracing::warn!(
                msp_id = id.msp_id(),
                role = id.role.as_str(),
                "access denied: not a reader of the channel"
            );
            return Err(denied());
        }
        Ok(())
    }

    /// Submit's channel check (Fabric's `registry.orderers` fails for an unknown channel).
    fn check_channel(&self, channel_id: &str) -> Result<(), Status> {
        if channel_id == self.node.channel.channel_id {
            Ok(())
        } else {
            Err(Status::failed_precondition(channel_config_error(
                channel_id,
            )))
        }
    }

    /// An endorser's refusal as a Fabric gateway reports it: on Evaluate, `evaluate_code`
    /// with the message; on Endorse, ABORTED with the message in the per-peer detail.
    fn endorser_error(&self, evaluate: bool, evaluate_code: tonic::Code, m: String) -> Status {
        let detail = self.detail(m.clone());
        if evaluate {
            status_with_details(
                evaluate_code,
                format!("evaluate call to endorser returned error: {m}"),
                &[detail],
            )
        } else {
            status_with_details(
                tonic::Code::Aborted,
                "failed to endorse transaction, see attached details for more info",
                &[detail],
            )
        }
    }

    /// The organizations whose peers endorse (Fabric's `registry.planForOrgs`): the listed
    /// ones, each of which must have a peer of the channel with the chaincode, else
    /// UNAVAILABLE `failed to find any endorsing peers for org(s): …`; all peer orgs when
    /// the list is empty (the devnet's plan: every org endorses, which the MAJORITY policy
    /// of two orgs needs). A client naming too few orgs gets ENDORSEMENT_POLICY_FAILURE at
    /// commit, as on Fabric.
    fn endorsing_orgs(
        &self,
        signed: &SignedProposal,
        requested: Vec<String>,
    ) -> Result<Vec<String>, Status> {
        if requested.is_empty() {
            return Ok(requested);
        }
        let up =
            unpack(signed).map_err(|m| self.proposal_status(ProposalError::Malformed(m), false))?;
        let channel = &self.node.channel;
        let serves = up.channel_header.channel_id == channel.channel_id
            && up.chaincode_name == channel.chaincode;
        let missing: Vec<&str> = requested
            .iter()
            .filter(|org| {
                !serves
                    || !self
                        .node
                        .peer_signers
                        .iter()
                        .any(|s| s.msp_id() == org.as_str())
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Status::unavailable(format!(
                "failed to find any endorsing peers for org(s): {}",
                missing.join(", ")
            )));
        }
        Ok(requested)
    }

    async fn drop_reply<T>(&self) -> Result<T, Status> {
        self.node.shutdown.cancelled().await;
        Err(Status::unavailable("devnet is shutting down"))
    }

    /// Applies the faults that act before an RPC is processed; returns the disposition
    /// for [`Self::reply_after`] when the call goes on.
    async fn fault_before(&self, rpc: Rpc) -> Result<Disposition, Status> {
        let disposition = faults::before(&self.node.faults, rpc).await;
        match disposition {
            Disposition::Unavailable => Err(unavailable()),
            Disposition::Drop => self.drop_reply().await,
            _ => Ok(disposition),
        }
    }

    /// The reply to a processed RPC, unless a fault loses it.
    async fn reply_after<T>(
        &self,
        disposition: Disposition,
        reply: T,
    ) -> Result<Response<T>, Status> {
        match disposition {
            Disposition::ProcessThenUnavailable => Err(unavailable()),
            Disposition::ProcessThenDrop => self.drop_reply().await,
            _ => Ok(Response::new(reply)),
        }
    }
}

/// Fabric's gateway registry failing on a channel the peer has not joined.
fn channel_config_error(channel_id: &str) -> String {
    format!(
        "failed to get config for channel [{channel_id}]: could not get last config block for channel {channel_id}"
    )
}

fn unavailable() -> Status {
    Status::unavailable("devnet fault injection: peer unavailable")
}

fn orderer_refusal(status: &str, info: &str) -> Status {
    Status::aborted(format!(
        "received unsuccessful response from orderer: status={status}, info={info}"
    ))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ChaincodeEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn endorse(
        &self,
        request: Request<EndorseRequest>,
    ) -> Result<Response<EndorseResponse>, Status> {
        let disposition = self.fault_before(Rpc::Endorse).await?;
        let req = request.into_inner();
        let signed = req.proposed_transaction.unwrap_or_default();
        if signed.proposal_bytes.is_empty() {
            return Err(Status::invalid_argument(
                "the proposed transaction must contain a signed proposal",
            ));
        }
        let orgs = self.endorsing_orgs(&signed, req.endorsing_organizations)?;
        let endorsed = self
            .process_by(signed, orgs)
            .await
            .map_err(|e| self.proposal_status(e, false))?;
        let tx_id = endorsed.unpacked.channel_header.tx_id.clone();
        tracing::debug!(tx_id = %tx_id, "endorsed");
        let reply = EndorseResponse {
            prepared_transaction: Some(endorsed.prepared_transaction()),
        };
        self.reply_after(disposition, reply).await
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let disposition = self.fault_before(Rpc::Submit).await?;
        let req = request.into_inner();
        let Some(envelope) = req.prepared_transaction else {
            return Err(Status::invalid_argument(
                "a prepared transaction is required",
            ));
        };
        if envelope.signature.is_empty() {
            return Err(Status::invalid_argument(
                "prepared transaction must be signed",
            ));
        }
        self.check_channel(&req.channel_id)?;
        let bytes = envelope.encode_to_vec();
        if bytes.len() > self.node.batch.absolute_max_bytes {
            return Err(orderer_refusal(
                "REQUEST_ENTITY_TOO_LARGE",
                &format!(
                    "message payload is {} bytes and exceeds maximum allowed {} bytes",
                    bytes.len(),
                    self.node.batch.absolute_max_bytes
                ),
            ));
        }
        let node = Arc::clone(&self.node);
        let checked = tokio::task::spawn_blocking(move || check_envelope(&node.msp, &envelope))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (chdr, _, _) = checked.map_err(|(code, info)| {
            tracing::warn!(tx_id = %req.transaction_id, %info, "orderer refused transaction");
            let status = if code == TxValidationCode::BadCreatorSignature {
                "FORBIDDEN"
            } else {
                "BAD_REQUEST"
            };
            orderer_refusal(status, &info)
        })?;
        if chdr.channel_id != self.node.channel.channel_id {
            return Err(orderer_refusal(
                "NOT_FOUND",
                &format!("channel {} not found", chdr.channel_id),
            ));
        }
        if chdr.r#type != HeaderType::EndorserTransaction as i32 {
            return Err(orderer_refusal(
                "BAD_REQUEST",
                &format!("unsupported header type {}", chdr.r#type),
            ));
        }
        self.node.order(bytes).await.map_err(|()| {
            Status::unavailable("no orderers could successfully process transaction")
        })?;
        tracing::debug!(tx_id = %chdr.tx_id, "transaction ordered");
        self.reply_after(disposition, SubmitResponse {}).await
    }

    async fn commit_status(
        &self,
        request: Request<SignedCommitStatusRequest>,
    ) -> Result<Response<CommitStatusResponse>, Status> {
        let disposition = self.fault_before(Rpc::CommitStatus).await?;
        let signed = request.into_inner();
        if signed.request.is_empty() {
            return Err(Status::invalid_argument(
                "a commit status request is required",
            ));
        }
        let req = CommitStatusRequest::decode(signed.request.as_slice())
            .map_err(|e| Status::invalid_argument(format!("invalid status request: {e}")))?;
        if req.identity.is_empty() {
            return Err(Status::invalid_argument("no identity provided"));
        }
        if req.channel_id.is_empty() {
            return Err(Status::invalid_argument("no channel ID provided"));
        }
        if req.transaction_id.is_empty() {
            return Err(Status::invalid_argument(
                "transaction ID should not be empty",
            ));
        }
        self.authenticate(
            &req.channel_id,
            &signed.request,
            &req.identity,
            &signed.signature,
        )?;
        let rec = self
            .node
            .wait_for_tx(&req.transaction_id)
            .await
            .map_err(|e| Status::aborted(e.to_string()))?
            .ok_or_else(|| Status::unavailable("devnet is shutting down"))?;
        let reply = CommitStatusResponse {
            result: rec.code,
            block_number: rec.block,
        };
        self.reply_after(disposition, reply).await
    }

    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let disposition = self.fault_before(Rpc::Evaluate).await?;
        let req = request.into_inner();
        let signed = req.proposed_transaction.unwrap_or_default();
        let endorsed = self
            .process(signed)
            .await
            .map_err(|e| self.proposal_status(e, true))?;
        let reply = EvaluateResponse {
            result: Some(endorsed.response),
        };
        self.reply_after(disposition, reply).await
    }

    type ChaincodeEventsStream = EventStream;

    async fn chaincode_events(
        &self,
        request: Request<SignedChaincodeEventsRequest>,
    ) -> Result<Response<Self::ChaincodeEventsStream>, Status> {
        match faults::before(&self.node.faults, Rpc::ChaincodeEvents).await {
            Disposition::Unavailable => return Err(unavailable()),
            Disposition::Drop | Disposition::ProcessThenDrop => return self.drop_reply().await,
            Disposition::ProcessThenUnavailable => return Err(unavailable()),
            Disposition::Normal => {}
        }
        let signed = request.into_inner();
        if signed.request.is_empty() {
            return Err(Status::invalid_argument(
                "a chaincode events request is required",
            ));
        }
        let req = ChaincodeEventsRequest::decode(signed.request.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("invalid chaincode events request: {e}"))
        })?;
        self.authenticate(
            &req.channel_id,
            &signed.request,
            &req.identity,
            &signed.signature,
        )?;
        let start = self.events_start_block(&req)?;
        let (tx, rx) = mpsc::channel(16);
        let node = Arc::clone(&self.node);
        tokio::spawn(stream_chaincode_events(node, req, start, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl GatewayService {
    fn events_start_block(&self, req: &ChaincodeEventsRequest) -> Result<u64, Status> {
        if !req.after_transaction_id.is_empty()
            && let Ok(Some(rec)) = self.node.ledger.tx(&req.after_transaction_id)
        {
            return Ok(rec.block);
        }
        match req.start_position.as_ref().and_then(|p| p.r#type.as_ref()) {
            None | Some(seek_position::Type::NextCommit(_)) => Ok(self.node.height()),
            Some(seek_position::Type::Specified(s)) => Ok(s.number),
            Some(other) => Err(Status::invalid_argument(format!(
                "invalid start position type: {}",
                match other {
                    seek_position::Type::Newest(_) => "Newest",
                    seek_position::Type::Oldest(_) => "Oldest",
                    _ => "unknown",
                }
            ))),
        }
    }
}

async fn stream_chaincode_events(
    node: Arc<Node>,
    req: ChaincodeEventsRequest,
    start: u64,
    tx: mpsc::Sender<Result<ChaincodeEventsResponse, Status>>,
) {
    let mut passed_after = req.after_transaction_id.is_empty();
    let mut number = start;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            ready = node.wait_for_block(number) => if !ready {
                let _ = tx.send(Err(Status::unavailable("devnet is shutting down"))).await;
                return;
            },
        }
        let block = match node.read_block(number) {
            Ok(Some(b)) => b,
            Ok(None) => {
                let _ = tx
                    .send(Err(Status::aborted(format!("block {number} not found"))))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::aborted(e.to_string()))).await;
                return;
            }
        };
        let mut events = Vec::new();
        for t in summarize(&block) {
            if t.header_type != HeaderType::EndorserTransaction as i32
                || t.code != TxValidationCode::Valid as i32
            {
                continue;
            }
            let Some(event) = t.event else { continue };
            if !passed_after {
                if event.tx_id == req.after_transaction_id {
                    passed_after = true;
                }
                continue;
            }
            if event.chaincode_id == req.chaincode_id {
                events.push(event);
            }
        }
        if !events.is_empty() {
            let resp = ChaincodeEventsResponse {
                events,
                block_number: number,
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
        number += 1;
    }
}
