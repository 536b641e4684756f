//! Gateway errors: stage, transaction id, gRPC status and per-peer details, and the retry
//! classification the submitter relies on.
//!
//! # Classification ([`GatewayError::class`])
//!
//! | stage | condition | class | what the caller does |
//! |---|---|---|---|
//! | any | cannot connect to any endpoint | `Transient` | retry later |
//! | any | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `CANCELLED`, `INTERNAL` | `Transient` | retry the same request; for Submit, re-submit the *same signed envelope* (same tx id: a second copy can only be DUPLICATE_TXID) |
//! | Evaluate, Endorse | `ABORTED` / `UNKNOWN` whose message or a peer detail says `chaincode response …` (the chaincode refused: insufficient funds, bad payload, …) | `Permanent` | dead-letter now |
//! | any | other `UNKNOWN` (tonic's client-side "transport error", e.g. a TLS handshake the peer aborted) | `Transient` | retry |
//! | Evaluate, Endorse | `ABORTED` where every peer detail reports an unreachable peer or a terminated chaincode stream | `Transient` | retry |
//! | Evaluate, Endorse | other `ABORTED` (signature, ACL, endorsement mismatch) | `Permanent` | dead-letter |
//! | Submit | `ABORTED` from an orderer answering `SERVICE_UNAVAILABLE` | `Transient` | re-submit same envelope |
//! | Submit | other `ABORTED` (e.g. `BAD_REQUEST`) | `Permanent` | dead-letter |
//! | CommitStatus | `ABORTED` (ledger lookup failed on the peer) | `Transient` | ask again |
//! | any | `INVALID_ARGUMENT`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `UNAUTHENTICATED`, `NOT_FOUND`, `UNIMPLEMENTED`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `DATA_LOSS` | `Permanent` | dead-letter |
//! | Commit | `MVCC_READ_CONFLICT`, `PHANTOM_READ_CONFLICT` | `Reendorse` | build a fresh proposal (new tx id), endorse and submit again |
//! | Commit | `DUPLICATE_TXID` | `AlreadyCommitted` | the tx id is already on the ledger: done; CommitStatus reports the original's code |
//! | Commit | any other validation code (`ENDORSEMENT_POLICY_FAILURE`, `BAD_*`, …) | `Permanent` | dead-letter |
//! | any | signing failed, malformed response | `Permanent` | dead-letter (and alert) |

use std::fmt;

use crate::identity::SignError;
use crate::proto::protos::TxValidationCode;
use crate::tls::ConnectError;

/// Which step of a transaction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Evaluate,
    Endorse,
    Submit,
    CommitStatus,
    /// The transaction reached a block but was marked invalid.
    Commit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Evaluate => "evaluate",
            Stage::Endorse => "endorse",
            Stage::Submit => "submit",
            Stage::CommitStatus => "commit status",
            Stage::Commit => "commit",
        })
    }
}

/// An error reported by one peer or orderer behind the Gateway (`gateway.ErrorDetail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    pub address: String,
    pub msp_id: String,
    pub message: String,
}

impl From<crate::proto::gateway::ErrorDetail> for ErrorDetail {
    fn from(d: crate::proto::gateway::ErrorDetail) -> Self {
        Self {
            address: d.address,
            msp_id: d.msp_id,
            message: d.message,
        }
    }
}

/// What a caller should do about an error (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry the same request later (for Submit: the same signed envelope).
    Transient,
    /// Endorse again with a fresh proposal: the state read at endorsement changed.
    Reendorse,
    /// The transaction id is already on the ledger: treat as done.
    AlreadyCommitted,
    /// Retrying cannot succeed.
    Permanent,
}

fn fmt_details(details: &[ErrorDetail]) -> String {
    if details.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = details
        .iter()
        .map(|d| format!("{} ({}): {}", d.address, d.msp_id, d.message))
        .collect();
    format!(" [{}]", parts.join("; "))
}

fn code_name(code: i32) -> &'static str {
    TxValidationCode::try_from(code)
        .map(|c| c.as_str_name())
        .unwrap_or("UNKNOWN_CODE")
}

/// Errors from the Gateway client.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The Gateway (or the connection) answered with a gRPC error.
    #[error(
        "{stage} failed for transaction {tx_id}: {code:?}: {message}{}",
        fmt_details(details)
    )]
    Rpc {
        stage: Stage,
        tx_id: String,
        code: tonic::Code,
        message: String,
        details: Vec<ErrorDetail>,
        /// The endpoint that answered, if known.
        endpoint: Option<String>,
    },
    /// The transaction was committed to a block but marked invalid.
    #[error("transaction {tx_id} was committed invalid: {} ({code}) in block {block_number}", code_name(*code))]
    Commit {
        tx_id: String,
        code: i32,
        block_number: u64,
    },
    /// No endpoint could be reached.
    #[error("{stage} failed for transaction {tx_id}: {source}")]
    Connect {
        stage: Stage,
        tx_id: String,
        #[source]
        source: ConnectError,
    },
    /// Signing failed (e.g. the HSM refused).
    #[error("{stage} failed for transaction {tx_id}: {source}")]
    Sign {
        stage: Stage,
        tx_id: String,
        #[source]
        source: SignError,
    },
    /// A request could not be built or a response was malformed.
    #[error("{stage} failed for transaction {tx_id}: {message}")]
    Protocol {
        stage: Stage,
        tx_id: String,
        message: String,
    },
}

impl GatewayError {
    pub fn stage(&self) -> Stage {
        match self {
            GatewayError::Rpc { stage, .. }
            | GatewayError::Connect { stage, .. }
            | GatewayError::Sign { stage, .. }
            | GatewayError::Protocol { stage, .. } => *stage,
            GatewayError::Commit { .. } => Stage::Commit,
        }
    }

    pub fn tx_id(&self) -> &str {
        match self {
            GatewayError::Rpc { tx_id, .. }
            | GatewayError::Commit { tx_id, .. }
            | GatewayError::Connect { tx_id, .. }
            | GatewayError::Sign { tx_id, .. }
            | GatewayError::Protocol { tx_id, .. } => tx_id,
        }
    }

    /// The gRPC code, for RPC errors (connection failures count as UNAVAILABLE).
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            GatewayError::Rpc { code, .. } => Some(*code),
            GatewayError::Connect { .. } => Some(tonic::Code::Unavailable),
            _ => None,
        }
    }

    /// Per-peer details decoded from the status.
    pub fn details(&self) -> &[ErrorDetail] {
        match self {
            GatewayError::Rpc { details, .. } => details,
            _ => &[],
        }
    }

    /// The validation code of a commit failure.
    pub fn validation_code(&self) -> Option<i32> {
        match self {
            GatewayError::Commit { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the chaincode itself refused the transaction (an error response from the
    /// chaincode at evaluation or endorsement).
    pub fn is_chaincode_error(&self) -> bool {
        match self {
            GatewayError::Rpc {
                stage: Stage::Endorse | Stage::Evaluate,
                code,
                message,
                details,
                ..
            } => {
                matches!(code, tonic::Code::Aborted | tonic::Code::Unknown)
                    && (message.contains("chaincode response")
                        || details
                            .iter()
                            .any(|d| d.message.contains("chaincode response")))
            }
            _ => false,
        }
    }

    /// The chaincode's error message (from `chaincode response <status>, <message>`), if any.
    pub fn chaincode_message(&self) -> Option<&str> {
        if !self.is_chaincode_error() {
            return None;
        }
        let GatewayError::Rpc {
            message, details, ..
        } = self
        else {
            return None;
        };
        details
            .iter()
            .map(|d| d.message.as_str())
            .chain(std::iter::once(message.as_str()))
            .find_map(|m| {
                let rest = &m[m.find("chaincode response ")? + "chaincode response ".len()..];
                Some(rest.split_once(", ").map(|(_, msg)| msg).unwrap_or(rest))
            })
    }

    /// No peer processed the request: no endpoint could be reached, or the gateway answered
    /// UNAVAILABLE (or ABORTED with every endorsing peer unreachable) at evaluation or
    /// endorsement. Such an error says nothing about the command — the peer is down, not
    /// the transaction wrong — so a caller need not count it against the command's attempts.
    pub fn is_peer_unreachable(&self) -> bool {
        match self {
            GatewayError::Connect { .. } => true,
            GatewayError::Rpc {
                stage: Stage::Evaluate | Stage::Endorse,
                code,
                message,
                details,
                ..
            } => match code {
                tonic::Code::Unavailable => true,
                tonic::Code::Aborted if !self.is_chaincode_error() => {
                    (!details.is_empty() && details.iter().all(|d| peer_unreachable(&d.message)))
                        || (details.is_empty() && peer_unreachable(message))
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// What to do about this error; see the module documentation for the table.
    pub fn class(&self) -> ErrorClass {
        use tonic::Code;
        match self {
            GatewayError::Connect { .. } => ErrorClass::Transient,
            GatewayError::Sign { .. } | GatewayError::Protocol { .. } => ErrorClass::Permanent,
            GatewayError::Commit { code, .. } => classify_validation_code(*code),
            GatewayError::Rpc {
                stage,
                code,
                message,
                details,
                ..
            } => match code {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Internal => ErrorClass::Transient,
                // Gateways send UNKNOWN for chaincode errors at evaluation; tonic also reports
                // client-side transport failures (e.g. a TLS handshake the peer aborted) as
                // UNKNOWN "transport error".
                Code::Unknown if self.is_chaincode_error() => ErrorClass::Permanent,
                Code::Unknown => ErrorClass::Transient,
                Code::Aborted => match stage {
                    Stage::Evaluate | Stage::Endorse => {
                        if self.is_chaincode_error() {
                            ErrorClass::Permanent
                        } else if (!details.is_empty()
                            && details.iter().all(|d| peer_unreachable(&d.message)))
                            || (details.is_empty() && peer_unreachable(message))
                        {
                            ErrorClass::Transient
                        } else {
                            ErrorClass::Permanent
                        }
                    }
                    Stage::Submit => {
                        let unavailable =
                            |m: &str| m.contains("SERVICE_UNAVAILABLE") || peer_unreachable(m);
                        if unavailable(message)
                            || (!details.is_empty()
                                && details.iter().all(|d| unavailable(&d.message)))
                        {
                            ErrorClass::Transient
                        } else {
                            ErrorClass::Permanent
                        }
                    }
                    Stage::CommitStatus | Stage::Commit => ErrorClass::Transient,
                },
                _ => ErrorClass::Permanent,
            },
        }
    }
}

fn peer_unreachable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("code = unavailable")
        || m.contains("connection refused")
        || m.contains("transport is closing")
        || m.contains("error reading from server")
        || m.contains("stream terminated")
        || m.contains("deadline exceeded")
}

/// Classification of a commit validation code (`protos.TxValidationCode`).
pub fn classify_validation_code(code: i32) -> ErrorClass {
    match TxValidationCode::try_from(code) {
        Ok(TxValidationCode::MvccReadConflict | TxValidationCode::PhantomReadConflict) => {
            ErrorClass::Reendorse
        }
        Ok(TxValidationCode::DuplicateTxid) => ErrorClass::AlreadyCommitted,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(stage: Stage, code: tonic::Code, message: &str, details: &[&str]) -> GatewayError {
        GatewayError::Rpc {
            stage,
            tx_id: "t".into(),
            code,
            message: message.into(),
            details: details
                .iter()
                .map(|m| ErrorDetail {
                    address: "p:7051".into(),
                    msp_id: "Org1MSP".into(),
                    message: (*m).into(),
                })
                .collect(),
            endpoint: None,
        }
    }

    #[test]
    fn classification_table() {
        use tonic::Code;
        assert_eq!(
            rpc(Stage::Endorse, Code::Unknown, "transport error", &[]).class(),
            ErrorClass::Transient
        );
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            for stage in [
                Stage::Evaluate,
                Stage::Endorse,
                Stage::Submit,
                Stage::CommitStatus,
            ] {
                assert_eq!(
                    rpc(stage, code, "x", &[]).class(),
                    ErrorClass::Transient,
                    "{stage} {code:?}"
                );
            }
        }
        let cc = rpc(
            Stage::Endorse,
            Code::Aborted,
            "failed to endorse transaction, see attached details for more info",
            &["chaincode response 500, insufficient funds in wallet w1"],
        );
        assert_eq!(cc.class(), ErrorClass::Permanent);
        assert!(cc.is_chaincode_error());
        assert_eq!(
            cc.chaincode_message(),
            Some("insufficient funds in wallet w1")
        );
        let ev = rpc(
            Stage::Evaluate,
            Code::Unknown,
            "evaluate call to endorser returned error: chaincode response 500, user u1 not found",
            &["chaincode response 500, user u1 not found"],
        );
        assert_eq!(ev.class(), ErrorClass::Permanent);
        assert_eq!(ev.chaincode_message(), Some("user u1 not found"));
        let down = rpc(
            Stage::Endorse,
            Code::Aborted,
            "failed to endorse transaction",
            &["rpc error: code = Unavailable desc = connection refused"],
        );
        assert_eq!(down.class(), ErrorClass::Transient);
        assert!(!down.is_chaincode_error());
        // Peer-down errors at endorsement say nothing about the command; others do.
        assert!(down.is_peer_unreachable());
        assert!(rpc(Stage::Endorse, Code::Unavailable, "x", &[]).is_peer_unreachable());
        assert!(!cc.is_peer_unreachable());
        assert!(!rpc(Stage::Endorse, Code::DeadlineExceeded, "x", &[]).is_peer_unreachable());
        assert!(!rpc(Stage::Submit, Code::Unavailable, "x", &[]).is_peer_unreachable());
        let acl = rpc(
            Stage::Endorse,
            Code::Aborted,
            "failed",
            &["access denied: creator certificate is not valid"],
        );
        assert_eq!(acl.class(), ErrorClass::Permanent);
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
        ] {
            assert_eq!(
                rpc(Stage::Submit, code, "x", &[]).class(),
                ErrorClass::Permanent
            );
        }
        let orderer_busy = rpc(
            Stage::Submit,
            Code::Aborted,
            "received unsuccessful response from orderer: SERVICE_UNAVAILABLE",
            &[],
        );
        assert_eq!(orderer_busy.class(), ErrorClass::Transient);
        let bad = rpc(
            Stage::Submit,
            Code::Aborted,
            "received unsuccessful response from orderer: BAD_REQUEST",
            &[],
        );
        assert_eq!(bad.class(), ErrorClass::Permanent);
        assert_eq!(
            rpc(Stage::CommitStatus, Code::Aborted, "ledger", &[]).class(),
            ErrorClass::Transient
        );

        let commit = |code: TxValidationCode| GatewayError::Commit {
            tx_id: "t".into(),
            code: code as i32,
            block_number: 3,
        };
        assert_eq!(
            commit(TxValidationCode::MvccReadConflict).class(),
            ErrorClass::Reendorse
        );
        assert_eq!(
            commit(TxValidationCode::PhantomReadConflict).class(),
            ErrorClass::Reendorse
        );
        assert_eq!(
            commit(TxValidationCode::DuplicateTxid).class(),
            ErrorClass::AlreadyCommitted
        );
        assert_eq!(
            commit(TxValidationCode::EndorsementPolicyFailure).class(),
            ErrorClass::Permanent
        );
        assert_eq!(classify_validation_code(9999), ErrorClass::Permanent);
        let msg = commit(TxValidationCode::MvccReadConflict).to_string();
        assert!(
            msg.contains("MVCC_READ_CONFLICT") && msg.contains("block 3"),
            "{msg}"
        );
    }

    #[test]
    fn display_keeps_stage_txid_and_details() {
        let e = rpc(
            Stage::Endorse,
            tonic::Code::Aborted,
            "failed",
            &["chaincode response 500, boom"],
        );
        let s = e.to_string();
        assert!(
            s.contains("endorse")
                && s.contains("transaction t")
                && s.contains("Org1MSP")
                && s.contains("boom"),
            "{s}"
        );
    }
}
