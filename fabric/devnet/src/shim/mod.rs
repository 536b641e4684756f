//! Fabric's chaincode shim protocol (`peer/chaincode_shim.proto`), both ends.
//!
//! A chaincode-as-a-service (CCaaS) is a gRPC server of `protos.Chaincode`; the peer dials
//! it and opens one `Connect` bidi stream, over which both sides exchange
//! `ChaincodeMessage`s:
//!
//! ```text
//! chaincode → REGISTER(ChaincodeID)      peer → REGISTERED, READY
//! peer → TRANSACTION/INIT(ChaincodeInput, SignedProposal)   (many at once, keyed by channel+txid)
//!   chaincode → GET_STATE / PUT_STATE / DEL_STATE / GET_STATE_BY_RANGE / QUERY_STATE_NEXT / QUERY_STATE_CLOSE
//!   peer → RESPONSE(payload) or ERROR(message)
//! chaincode → COMPLETED(Response, ChaincodeEvent) or ERROR(message)
//! ```
//!
//! - [`server`]: the chaincode side — the GX chaincode (`gx::invoke`, the code the
//!   devnet runs in-process) behind the same `gx::Stub`, each call a round trip;
//!   `gxd chaincode serve` runs it.
//! - [`client`]: the peer side — the devnet dials a chaincode service and answers its
//!   requests from the transaction's simulator (read set, range queries, write set, event:
//!   exactly what the in-process path records).
//! - [`package`]: the `ccaas` chaincode package (`metadata.json`, `code.tar.gz` with
//!   `connection.json`) that Fabric's ccaas builder installs, and its package id.
//!
//! Everything decoded from the stream is untrusted: a malformed message gets an ERROR
//! naming what was wrong, never a panic; message sizes, queues and in-flight transactions
//! per stream are bounded ([`MAX_MESSAGE_BYTES`], [`MAX_IN_FLIGHT`]).

pub mod client;
pub mod package;
pub mod server;

#[cfg(test)]
mod tests;

use gxd_fabric::proto::protos::ChaincodeMessage;
use gxd_fabric::proto::protos::chaincode_message::Type;

/// Largest ChaincodeMessage either side decodes (Fabric's peer allows 100 MiB; GX values
/// are a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most transactions one stream runs at once; more are refused with an ERROR.
pub const MAX_IN_FLIGHT: usize = 256;
/// Outgoing messages queued per stream before a sender waits.
pub const SEND_QUEUE: usize = 256;
/// Replies queued per transaction: the protocol has at most one request outstanding per
/// transaction, so more is a peer that does not follow it.
const TX_QUEUE: usize = 4;

/// `(channel id, transaction id)`: what a message belongs to (Fabric's transaction context id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    pub channel_id: String,
    pub txid: String,
}

impl TxKey {
    fn of(msg: &ChaincodeMessage) -> Self {
        Self {
            channel_id: msg.channel_id.clone(),
            txid: msg.txid.clone(),
        }
    }
}

/// The message type's name, or its number when it is not one of the protocol's.
pub fn type_name(msg: &ChaincodeMessage) -> String {
    Type::try_from(msg.r#type)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown type {}", msg.r#type))
}

/// A message of `ty` for the transaction `key`.
fn message(ty: Type, key: &TxKey, payload: Vec<u8>) -> ChaincodeMessage {
    ChaincodeMessage {
        r#type: ty as i32,
        payload,
        txid: key.txid.clone(),
        channel_id: key.channel_id.clone(),
        ..ChaincodeMessage::default()
    }
}

/// An ERROR carrying `text` (Fabric puts the error string in the payload).
fn error_message(key: &TxKey, text: &str) -> ChaincodeMessage {
    message(Type::Error, key, text.as_bytes().to_vec())
}

/// The text of an ERROR's payload (bounded: a payload is at most [`MAX_MESSAGE_BYTES`]).
fn error_text(msg: &ChaincodeMessage) -> String {
    String::from_utf8_lossy(&msg.payload).into_owned()
}
