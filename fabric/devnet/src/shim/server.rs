//! The chaincode side of the shim protocol: a `protos.Chaincode` gRPC server (what Fabric's
//! ccaas builder connects the peer to) running the GX chaincode.
//!
//! Per `Connect` stream, as Fabric's Go and Node shims do: send REGISTER with the chaincode
//! id, expect REGISTERED then READY, then run every TRANSACTION/INIT concurrently (keyed by
//! channel + txid) on a blocking thread, where `gx::invoke` sees a `Stub` whose
//! every state access is a round trip to the peer; the transaction ends with COMPLETED
//! (the `Response` and the chaincode event; a GX error is a status-500 `Response`, as a
//! shim's `shim.Error`) or, for a message the chaincode cannot run at all, ERROR.
//!
//! The creator's MSP id and NodeOU role come from the signed proposal in the TRANSACTION
//! message (its SignatureHeader's SerializedIdentity and certificate OUs); the chaincode
//! does not re-validate the certificate chain — the peer did before simulating.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    MAX_IN_FLIGHT, MAX_MESSAGE_BYTES, SEND_QUEUE, TX_QUEUE, TxKey, error_message, error_text,
    message, type_name,
};
use crate::gx::{self, Stub};
use crate::msp::Role;
use gxd_fabric::proto::common::{Header, SignatureHeader};
use gxd_fabric::proto::protos::chaincode_message::Type;
use gxd_fabric::proto::protos::chaincode_server::{Chaincode, ChaincodeServer};
use gxd_fabric::proto::protos::{
    ChaincodeEvent, ChaincodeId, ChaincodeInput, ChaincodeMessage, GetState, Proposal, PutState,
    Response as CcResponse, SignedProposal,
};

/// How long a transaction waits for the peer's answer to one request.
const PEER_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// TLS of the chaincode server: its certificate and key, and with `client_ca_pem` mutual
/// TLS — only peers presenting a certificate from that CA may connect (the ccaas
/// `connection.json`'s `client_auth_required`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

/// `gxd chaincode serve --listen ADDR --id CHAINCODE_ID [--tls-cert --tls-key [--client-ca]]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The id the chaincode registers under (on Fabric: the package id, `label:hash`).
    pub chaincode_id: String,
    pub tls: Option<ServerTls>,
}

/// Why the chaincode server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("chaincode id must not be empty")]
    EmptyId,
    #[error("gRPC server: {0}")]
    Server(String),
}

/// A running chaincode server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the streams, waits for the server to stop.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for the server task; after a shutdown request the streams end at once and the
    /// drain is bounded (10 s), so a peer that keeps its connection cannot hold the stop.
    async fn join(mut self) -> Result<(), ServerError> {
        let result = tokio::select! {
            r = &mut self.task => r,
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => {
                self.task.abort();
                return Ok(());
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Server(e.to_string())),
            Err(e) => Err(ServerError::Server(e.to_string())),
        }
    }

    /// Serves until `shutdown` resolves (then stops) or the server fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let token = self.shutdown.clone();
        tokio::select! {
            () = shutdown => token.cancel(),
            () = token.cancelled() => {}
        }
        self.join().await
    }
}

/// Binds `config.listen` and serves the GX chaincode; returns once the port is bound.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    if config.chaincode_id.is_empty() {
        return Err(ServerError::EmptyId);
    }
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(64));
    if let Some(tls) = &config.tls {
        let mut tc = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            tc = tc.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(tc)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    let service = ChaincodeServer::new(GxChaincode {
        chaincode_id: config.chaincode_id.clone(),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = builder.add_service(service);
    let token = shutdown.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!(%addr, chaincode_id = %config.chaincode_id, tls = config.tls.is_some(),
        mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        "chaincode server listening");
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await
    });
    Ok(ServerHandle {
        addr,
        shutdown,
        task,
    })
}

/// The `protos.Chaincode` service running GX.
struct GxChaincode {
    chaincode_id: String,
    /// Ends every stream when the server stops.
    shutdown: CancellationToken,
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<ChaincodeMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Chaincode for GxChaincode {
    type ConnectStream = MessageStream;

    async fn connect(
        &self,
        request: Request<Streaming<ChaincodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(SEND_QUEUE);
        let id = self.chaincode_id.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            tracing::info!(?peer, "peer connected");
            let end = run_session(id, inbound, out, stop).await;
            tracing::info!(?peer, reason = %end, "chaincode stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Established,
    Ready,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Established => "established",
            State::Ready => "ready",
        }
    }
}

/// The transactions in flight on one stream: where each one's replies go.
type Routes = Arc<Mutex<HashMap<TxKey, SyncSender<ChaincodeMessage>>>>;

fn lock(
    routes: &Routes,
) -> std::sync::MutexGuard<'_, HashMap<TxKey, SyncSender<ChaincodeMessage>>> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `Connect` stream, chaincode side, until the peer closes it, breaks the handshake or
/// `stop` is cancelled. Returns why it ended.
pub(crate) async fn run_session<S>(
    chaincode_id: String,
    mut inbound: S,
    out: mpsc::Sender<ChaincodeMessage>,
    stop: CancellationToken,
) -> String
where
    S: Stream<Item = Result<ChaincodeMessage, Status>> + Unpin,
{
    let register = ChaincodeMessage {
        r#type: Type::Register as i32,
        payload: ChaincodeId {
            name: chaincode_id,
            ..ChaincodeId::default()
        }
        .encode_to_vec(),
        ..ChaincodeMessage::default()
    };
    if out.send(register).await.is_err() {
        return "the peer closed the stream before REGISTER".to_owned();
    }
    let routes: Routes = Arc::default();
    let mut state = State::Created;
    let end = loop {
        let next = tokio::select! {
            next = inbound.next() => next,
            () = stop.cancelled() => break "the chaincode server is stopping".to_owned(),
        };
        let msg = match next {
            None => break "the peer closed the stream".to_owned(),
            Some(Err(status)) => break format!("stream error: {status}"),
            Some(Ok(msg)) => msg,
        };
        let ty = Type::try_from(msg.r#type).ok();
        let key = TxKey::of(&msg);
        match (state, ty) {
            (State::Created, Some(Type::Registered)) => state = State::Established,
            (State::Established, Some(Type::Ready)) => state = State::Ready,
            (State::Ready, Some(Type::Transaction | Type::Init)) => {
                if let Err(text) = start_transaction(msg, &routes, &out) {
                    tracing::warn!(txid = %key.txid, channel = %key.channel_id, error = %text, "transaction refused");
                    if out.send(error_message(&key, &text)).await.is_err() {
                        break "the peer closed the stream".to_owned();
                    }
                }
            }
            (State::Ready, Some(Type::Response | Type::Error)) => route(msg, &routes),
            (_, Some(Type::Keepalive)) => {
                // The Go shim echoes a keepalive; a full queue means replies are pending anyway.
                let _ = out.try_send(message(Type::Keepalive, &key, Vec::new()));
            }
            (State::Ready, _) => {
                let text = format!(
                    "[{}] chaincode cannot handle message ({}) while in state: ready",
                    short(&key.txid),
                    type_name(&msg)
                );
                tracing::warn!(error = %text, "unexpected message");
                if out.send(error_message(&key, &text)).await.is_err() {
                    break "the peer closed the stream".to_owned();
                }
            }
            (s, _) => {
                // The handshake was broken: say so and end the stream, as the shims do.
                let text = format!(
                    "[{}] chaincode cannot handle message ({}) while in state: {}",
                    short(&key.txid),
                    type_name(&msg),
                    s.as_str()
                );
                let _ = out.send(error_message(&key, &text)).await;
                break text;
            }
        }
    };
    // Disconnects every transaction still waiting for a reply: they fail and finish.
    lock(&routes).clear();
    end
}

fn short(txid: &str) -> &str {
    txid.get(..8).unwrap_or(txid)
}

/// A reply from the peer to the transaction it belongs to.
fn route(msg: ChaincodeMessage, routes: &Routes) {
    let key = TxKey::of(&msg);
    let mut routes = lock(routes);
    let Some(tx) = routes.get(&key) else {
        tracing::warn!(txid = %key.txid, channel = %key.channel_id, kind = %type_name(&msg),
            "reply for no transaction in flight; dropped");
        return;
    };
    if tx.try_send(msg).is_err() {
        // More replies than requests: the peer broke the protocol for this transaction.
        tracing::warn!(txid = %key.txid, "unrequested reply; the transaction is failed");
        routes.remove(&key);
    }
}

/// Registers the transaction and runs it on a blocking thread.
fn start_transaction(
    msg: ChaincodeMessage,
    routes: &Routes,
    out: &mpsc::Sender<ChaincodeMessage>,
) -> Result<(), String> {
    let key = TxKey::of(&msg);
    let (tx, rx) = sync_channel(TX_QUEUE);
    {
        let mut routes = lock(routes);
        if routes.contains_key(&key) {
            return Err(format!("[{}] duplicate transaction ID", short(&key.txid)));
        }
        if routes.len() >= MAX_IN_FLIGHT {
            return Err(format!(
                "[{}] too many transactions in flight on this stream (at most {MAX_IN_FLIGHT})",
                short(&key.txid)
            ));
        }
        routes.insert(key.clone(), tx);
    }
    let routes = Arc::clone(routes);
    let out = out.clone();
    tokio::task::spawn_blocking(move || {
        let reply = run_transaction(&key, msg, &out, rx);
        // Unregister before answering, so the peer may reuse the key once it has the answer.
        lock(&routes).remove(&key);
        let _ = out.blocking_send(reply);
    });
    Ok(())
}

/// The creator's MSP id and role, from the signed proposal.
fn creator(proposal: Option<&SignedProposal>) -> Result<(String, Role), String> {
    let signed = proposal.ok_or("the transaction carries no signed proposal")?;
    let prop = Proposal::decode(signed.proposal_bytes.as_slice())
        .map_err(|e| format!("failed to unmarshal the proposal: {e}"))?;
    let header = Header::decode(prop.header.as_slice())
        .map_err(|e| format!("failed to unmarshal the proposal header: {e}"))?;
    let shdr = SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| format!("failed to unmarshal the signature header: {e}"))?;
    crate::msp::creator_of(&shdr.creator).map_err(|e| format!("creator: {e}"))
}

/// Runs one transaction; returns the message that ends it (COMPLETED or ERROR).
pub(crate) fn run_transaction(
    key: &TxKey,
    msg: ChaincodeMessage,
    out: &mpsc::Sender<ChaincodeMessage>,
    replies: Receiver<ChaincodeMessage>,
) -> ChaincodeMessage {
    let completed = |response: CcResponse, event: Option<ChaincodeEvent>| ChaincodeMessage {
        chaincode_event: event,
        ..message(Type::Completed, key, response.encode_to_vec())
    };
    let input = match ChaincodeInput::decode(msg.payload.as_slice()) {
        Ok(input) => input,
        Err(e) => return error_message(key, &format!("failed to unmarshal input: {e}")),
    };
    if msg.r#type == Type::Init as i32 {
        // GX keeps no state it must initialize (it is committed without --init-required).
        return completed(
            CcResponse {
                status: 200,
                ..CcResponse::default()
            },
            None,
        );
    }
    let (msp_id, role) = match creator(msg.proposal.as_ref()) {
        Ok(c) => c,
        Err(text) => return error_message(key, &text),
    };
    let mut args = input.args.into_iter();
    let Some(function) = args.next() else {
        return error_message(key, "chaincode input did not contain a function name");
    };
    let Ok(function) = String::from_utf8(function) else {
        return error_message(key, "the function name is not valid UTF-8");
    };
    let Ok(args) = args.map(String::from_utf8).collect::<Result<Vec<_>, _>>() else {
        return completed(
            CcResponse {
                status: 500,
                message: "arguments must be valid UTF-8 strings".to_owned(),
                payload: Vec::new(),
            },
            None,
        );
    };
    let mut stub = ShimStub {
        key,
        out,
        replies,
        msp_id,
        role,
        event: None,
    };
    match gx::invoke(&mut stub, &function, &args) {
        Ok(payload) => {
            let event = stub.event.take().map(|(name, payload)| ChaincodeEvent {
                chaincode_id: String::new(),
                tx_id: key.txid.clone(),
                event_name: name,
                payload,
            });
            completed(
                CcResponse {
                    status: 200,
                    message: String::new(),
                    payload,
                },
                event,
            )
        }
        Err(message) => completed(
            CcResponse {
                status: 500,
                message,
                payload: Vec::new(),
            },
            None,
        ),
    }
}

/// The GX chaincode's view of the peer over the shim protocol: every state access is a
/// request on the stream and a wait for the peer's RESPONSE (or ERROR).
struct ShimStub<'a> {
    key: &'a TxKey,
    out: &'a mpsc::Sender<ChaincodeMessage>,
    replies: Receiver<ChaincodeMessage>,
    msp_id: String,
    role: Role,
    event: Option<(String, Vec<u8>)>,
}

impl ShimStub<'_> {
    fn request(&mut self, ty: Type, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        self.out
            .blocking_send(message(ty, self.key, payload))
            .map_err(|_| "the peer closed the chaincode stream".to_owned())?;
        match self.replies.recv_timeout(PEER_REPLY_TIMEOUT) {
            Ok(reply) => match Type::try_from(reply.r#type) {
                Ok(Type::Response) => Ok(reply.payload),
                Ok(Type::Error) => Err(error_text(&reply)),
                _ => Err(format!(
                    "[{}] incorrect chaincode message {} received in response to {}",
                    short(&self.key.txid),
                    type_name(&reply),
                    ty.as_str_name()
                )),
            },
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "timed out waiting for the peer's response to {}",
                ty.as_str_name()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err("the chaincode stream ended before the peer responded".to_owned())
            }
        }
    }
}

impl Stub for ShimStub<'_> {
    fn get_state(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let payload = GetState {
            key: key.to_owned(),
            collection: String::new(),
        }
        .encode_to_vec();
        // Fabric answers a missing key with an empty payload.
        let value = self.request(Type::GetState, payload)?;
        Ok((!value.is_empty()).then_some(value))
    }

    fn put_state(&mut self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let payload = PutState {
            key: key.to_owned(),
            value,
            collection: String::new(),
        }
        .encode_to_vec();
        self.request(Type::PutState, payload).map(|_| ())
    }

    fn set_event(&mut self, name: &str, payload: Vec<u8>) {
        self.event = Some((name.to_owned(), payload));
    }

    fn creator_msp_id(&self) -> &str {
        &self.msp_id
    }

    fn creator_role(&self) -> Role {
        self.role
    }
}
