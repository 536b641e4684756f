//! The peer side of the shim protocol: the devnet dials a chaincode service (as a Fabric
//! peer dials a chaincode-as-a-service from its `connection.json`), keeps one `Connect`
//! stream, and drives each transaction over it from the endorser's simulator.
//!
//! Like Fabric's `core/chaincode/handler.go`: REGISTER (with the expected chaincode id) →
//! REGISTERED, READY; per transaction TRANSACTION (ChaincodeInput, SignedProposal) and then
//! the chaincode's requests answered with RESPONSE or ERROR until COMPLETED or ERROR:
//! GET_STATE (committed state, recorded in the read set), PUT_STATE / DEL_STATE (write
//! set), GET_STATE_BY_RANGE + QUERY_STATE_NEXT / QUERY_STATE_CLOSE (results in batches of
//! [`RANGE_BATCH`]; the keys handed out recorded as the range query's raw reads, for
//! phantom-read validation at commit). Other requests (private data, rich queries, history,
//! chaincode-to-chaincode) get an ERROR naming them. A transaction that does not complete
//! within the execute timeout fails, as Fabric's `chaincode.executetimeout` (30 s).
//!
//! The stream is opened on the first transaction and re-opened after it breaks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    MAX_IN_FLIGHT, MAX_MESSAGE_BYTES, SEND_QUEUE, TX_QUEUE, TxKey, error_message, error_text,
    message, type_name,
};
use crate::gx::Stub;
use crate::ledger::VersionedValue;
use crate::peer::Simulator;
use gxd_fabric::proto::QueryResultKv as Kv;
use gxd_fabric::proto::protos::chaincode_client::ChaincodeClient;
use gxd_fabric::proto::protos::chaincode_message::Type;
use gxd_fabric::proto::protos::{
    ChaincodeId, ChaincodeInput, ChaincodeMessage, DelState, GetState, GetStateByRange, PutState,
    QueryResponse, QueryResultBytes, QueryStateClose, QueryStateNext, Response, SignedProposal,
};
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};

/// Entries per range-query batch (Fabric's `ledger.state.internalQueryLimit`/`maxResultLimit`: 100).
pub const RANGE_BATCH: usize = 100;
/// Most entries one range query may return; a larger range fails the transaction
/// (Fabric's `totalQueryLimit` is 100 000; the devnet keeps a query's results in memory).
pub const RANGE_LIMIT: usize = 10_000;
/// Most range-query iterators one transaction may hold open.
pub const MAX_ITERATORS: usize = 32;

/// TLS towards the chaincode: the CA its server certificate chains to, and the peer's
/// client certificate and key when the chaincode requires client authentication.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub root_cert_pem: Vec<u8>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

/// Where and how to reach a chaincode service (what a ccaas `connection.json` says).
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// `host:port`.
    pub address: String,
    /// The id the chaincode must register under (on Fabric: the package id).
    pub chaincode_id: String,
    pub tls: Option<ClientTls>,
    pub dial_timeout: Duration,
    /// How long one transaction may run (Fabric's `chaincode.executetimeout`, 30 s).
    pub execute_timeout: Duration,
}

impl ExternalConfig {
    /// A plaintext connection to `address`, default timeouts (dial 10 s, execute 30 s).
    pub fn new(address: impl Into<String>, chaincode_id: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            chaincode_id: chaincode_id.into(),
            tls: None,
            dial_timeout: Duration::from_secs(10),
            execute_timeout: Duration::from_secs(30),
        }
    }

    /// The connection a ccaas `connection.json` describes (see [`super::package::Connection`]).
    pub fn from_connection(
        connection: &super::package::Connection,
        chaincode_id: impl Into<String>,
    ) -> Result<Self, String> {
        let mut config = Self::new(connection.address.clone(), chaincode_id);
        config.dial_timeout = connection.dial_timeout()?;
        if connection.tls_required {
            let root = connection
                .root_cert
                .as_ref()
                .filter(|c| !c.is_empty())
                .ok_or("tls_required needs root_cert")?;
            let (cert, key) = if connection.client_auth_required {
                (
                    Some(
                        connection
                            .client_cert
                            .clone()
                            .ok_or("client_auth_required needs client_cert")?,
                    ),
                    Some(
                        connection
                            .client_key
                            .clone()
                            .ok_or("client_auth_required needs client_key")?,
                    ),
                )
            } else {
                (None, None)
            };
            config.tls = Some(ClientTls {
                root_cert_pem: root.clone().into_bytes(),
                client_cert_pem: cert.map(String::into_bytes),
                client_key_pem: key.map(String::into_bytes),
            });
        }
        Ok(config)
    }
}

/// A chaincode service the peer drives.
pub struct ExternalChaincode {
    config: ExternalConfig,
    connector: PeerConnector,
    runtime: tokio::runtime::Handle,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for ExternalChaincode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalChaincode")
            .field("address", &self.config.address)
            .field("chaincode_id", &self.config.chaincode_id)
            .finish_non_exhaustive()
    }
}

type Routes = Arc<Mutex<HashMap<TxKey, SyncSender<ChaincodeMessage>>>>;

fn lock(
    routes: &Routes,
) -> std::sync::MutexGuard<'_, HashMap<TxKey, SyncSender<ChaincodeMessage>>> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open `Connect` stream. The stream's request half ends when the session is dropped
/// (its `out` is the only sender): the dispatcher task holds only the routes and the flag.
struct Session {
    out: mpsc::Sender<ChaincodeMessage>,
    routes: Routes,
    alive: Arc<AtomicBool>,
}

impl Session {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<TxKey, SyncSender<ChaincodeMessage>>> {
        lock(&self.routes)
    }
}

/// Unregisters a transaction when its execution ends, however it ends.
struct Registration<'a> {
    session: &'a Session,
    key: TxKey,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.session.routes().remove(&self.key);
    }
}

impl ExternalChaincode {
    /// Validates the configuration (address, PEM material); connects on first use.
    /// Must be called within a Tokio runtime (the one the streams run on).
    pub fn new(config: ExternalConfig) -> Result<Self, String> {
        let tls = config.tls.as_ref().map(|t| TlsOptions {
            ca_pem: t.root_cert_pem.clone(),
            client_cert_pem: t.client_cert_pem.clone(),
            client_key_pem: t.client_key_pem.clone(),
        });
        let mut cc = ConnectionConfig::new(vec![PeerEndpoint::new(config.address.clone())], tls);
        cc.connect_timeout = config.dial_timeout;
        let connector = PeerConnector::new(cc).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the external chaincode needs a Tokio runtime".to_owned())?;
        Ok(Self {
            config,
            connector,
            runtime,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// The open session, or a new one (connect + handshake).
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && s.alive.load(Ordering::Acquire)
        {
            return Ok(Arc::clone(s));
        }
        *slot = None;
        let session = tokio::time::timeout(self.config.dial_timeout, self.connect())
            .await
            .map_err(|_| {
                format!(
                    "could not connect to chaincode {} at {} within {:?}",
                    self.config.chaincode_id, self.config.address, self.config.dial_timeout
                )
            })??;
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn connect(&self) -> Result<Arc<Session>, String> {
        let address = &self.config.address;
        let (idx, channel) = self
            .connector
            .channel()
            .await
            .map_err(|e| format!("could not connect to chaincode at {address}: {e}"))?;
        let mut client = ChaincodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (out, rx) = mpsc::channel(SEND_QUEUE);
        let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.connector.report_failure(idx).await;
                return Err(format!(
                    "chaincode at {address} refused the stream: {}",
                    status.message()
                ));
            }
        };
        // Handshake: the chaincode registers first.
        let first = inbound
            .message()
            .await
            .map_err(|s| format!("chaincode stream at {address}: {}", s.message()))?
            .ok_or_else(|| format!("chaincode at {address} closed the stream before REGISTER"))?;
        let registered = match handshake(&first, &self.config.chaincode_id) {
            Ok(id) => id,
            Err(e) => {
                // Drop the connection too: this chaincode is not the one to talk to.
                self.connector.report_failure(idx).await;
                return Err(e);
            }
        };
        let none = TxKey {
            channel_id: String::new(),
            txid: String::new(),
        };
        for ty in [Type::Registered, Type::Ready] {
            out.send(message(ty, &none, Vec::new()))
                .await
                .map_err(|_| format!("chaincode at {address} closed the stream"))?;
        }
        tracing::info!(%address, chaincode_id = %registered, "chaincode registered");
        let session = Arc::new(Session {
            out,
            routes: Routes::default(),
            alive: Arc::new(AtomicBool::new(true)),
        });
        let routes = Arc::clone(&session.routes);
        let alive = Arc::clone(&session.alive);
        let address = address.clone();
        tokio::spawn(async move {
            let end = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => dispatch(&routes, msg),
                    Ok(None) => break "closed by the chaincode".to_owned(),
                    Err(s) => break s.message().to_owned(),
                }
            };
            alive.store(false, Ordering::Release);
            lock(&routes).clear();
            tracing::info!(%address, reason = %end, "chaincode stream ended");
        });
        Ok(session)
    }

    /// Runs one transaction on the chaincode: `input` is the function name then the
    /// arguments, `signed` the proposal being endorsed. Call on a blocking thread (it waits
    /// for the chaincode). `Ok` is the chaincode's `Response` (whatever its status); `Err`
    /// a transaction the chaincode failed with ERROR, or a stream, protocol or timeout failure.
    pub(crate) fn execute(
        &self,
        sim: &mut Simulator<'_>,
        channel_id: &str,
        txid: &str,
        signed: &SignedProposal,
        input: Vec<Vec<u8>>,
    ) -> Result<Response, String> {
        let session = self.runtime.block_on(self.session())?;
        let key = TxKey {
            channel_id: channel_id.to_owned(),
            txid: txid.to_owned(),
        };
        let (tx, rx) = sync_channel(TX_QUEUE);
        {
            let mut routes = session.routes();
            if routes.contains_key(&key) {
                return Err(format!("[{txid}] duplicate transaction ID in flight"));
            }
            if routes.len() >= MAX_IN_FLIGHT {
                return Err(format!(
                    "too many transactions in flight to the chaincode (at most {MAX_IN_FLIGHT})"
                ));
            }
            routes.insert(key.clone(), tx);
        }
        let _registration = Registration {
            session: &session,
            key: key.clone(),
        };
        let start = ChaincodeMessage {
            proposal: Some(signed.clone()),
            ..message(
                Type::Transaction,
                &key,
                ChaincodeInput {
                    args: input,
                    ..ChaincodeInput::default()
                }
                .encode_to_vec(),
            )
        };
        session
            .out
            .blocking_send(start)
            .map_err(|_| "the chaincode stream is closed".to_owned())?;
        let deadline = Instant::now() + self.config.execute_timeout;
        let mut transport = ChannelTransport {
            replies: rx,
            out: &session.out,
            deadline,
        };
        drive(sim, &key, &mut transport)
    }
}

/// Checks the chaincode's first message: REGISTER with the expected id.
fn handshake(first: &ChaincodeMessage, expected: &str) -> Result<String, String> {
    if first.r#type != Type::Register as i32 {
        return Err(format!(
            "chaincode sent {} before REGISTER",
            type_name(first)
        ));
    }
    let id = ChaincodeId::decode(first.payload.as_slice())
        .map_err(|e| format!("chaincode REGISTER payload is not a ChaincodeID: {e}"))?;
    if id.name != expected {
        return Err(format!(
            "chaincode registered as {:?}, expected {expected:?}",
            id.name
        ));
    }
    Ok(id.name)
}

/// Routes a chaincode message to its transaction.
fn dispatch(routes: &Routes, msg: ChaincodeMessage) {
    if msg.r#type == Type::Keepalive as i32 {
        return;
    }
    let key = TxKey::of(&msg);
    let mut routes = lock(routes);
    match routes.get(&key) {
        Some(tx) => {
            if tx.try_send(msg).is_err() {
                // More messages than the protocol allows before an answer: fail it.
                tracing::warn!(txid = %key.txid, "chaincode sent requests without waiting for answers; transaction failed");
                routes.remove(&key);
            }
        }
        None => {
            tracing::warn!(txid = %key.txid, channel = %key.channel_id, kind = %type_name(&msg),
                "chaincode message for no transaction in flight; dropped");
        }
    }
}

/// How [`drive`] talks to the chaincode (a channel pair in production, a script in tests).
pub(crate) trait Transport {
    /// The chaincode's next message for this transaction.
    fn recv(&mut self) -> Result<ChaincodeMessage, String>;
    /// An answer to the chaincode.
    fn send(&mut self, msg: ChaincodeMessage) -> Result<(), String>;
}

struct ChannelTransport<'a> {
    replies: Receiver<ChaincodeMessage>,
    out: &'a mpsc::Sender<ChaincodeMessage>,
    deadline: Instant,
}

impl Transport for ChannelTransport<'_> {
    fn recv(&mut self) -> Result<ChaincodeMessage, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.replies.recv_timeout(left).map_err(|e| match e {
            RecvTimeoutError::Timeout => "timeout expired while executing transaction".to_owned(),
            RecvTimeoutError::Disconnected => {
                "the chaincode stream ended, or the chaincode broke the protocol, before the transaction completed"
                    .to_owned()
            }
        })
    }

    fn send(&mut self, msg: ChaincodeMessage) -> Result<(), String> {
        self.out
            .blocking_send(msg)
            .map_err(|_| "the chaincode stream is closed".to_owned())
    }
}

/// An open range query of one transaction.
struct RangeIter {
    /// Its record in the simulator's read set.
    info: usize,
    results: std::vec::IntoIter<(String, VersionedValue)>,
}

/// Answers the chaincode's requests for one transaction from `sim` until it completes.
pub(crate) fn drive(
    sim: &mut Simulator<'_>,
    key: &TxKey,
    transport: &mut dyn Transport,
) -> Result<Response, String> {
    let mut iters: HashMap<String, RangeIter> = HashMap::new();
    let mut next_iter = 0u64;
    loop {
        let msg = transport.recv()?;
        let ty = Type::try_from(msg.r#type).ok();
        let reply = match ty {
            Some(Type::Completed) => {
                let response = Response::decode(msg.payload.as_slice()).map_err(|e| {
                    format!("failed to unmarshal the chaincode's COMPLETED response: {e}")
                })?;
                if let Some(ev) = msg.chaincode_event {
                    sim.set_event_parts(ev.event_name, ev.payload);
                }
                return Ok(response);
            }
            Some(Type::Error) => {
                return Err(format!(
                    "transaction returned with failure: {}",
                    error_text(&msg)
                ));
            }
            Some(Type::GetState) => GetState::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal GET_STATE: {e}"))
                .and_then(|req| {
                    no_collection(&req.collection)?;
                    sim.get_state(&req.key).map(Option::unwrap_or_default)
                }),
            Some(Type::PutState) => PutState::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal PUT_STATE: {e}"))
                .and_then(|req| {
                    no_collection(&req.collection)?;
                    valid_key(&req.key)?;
                    sim.put_state(&req.key, req.value).map(|()| Vec::new())
                }),
            Some(Type::DelState) => DelState::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal DEL_STATE: {e}"))
                .and_then(|req| {
                    no_collection(&req.collection)?;
                    valid_key(&req.key)?;
                    sim.del_state(&req.key);
                    Ok(Vec::new())
                }),
            Some(Type::GetStateByRange) => GetStateByRange::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal GET_STATE_BY_RANGE: {e}"))
                .and_then(|req| {
                    no_collection(&req.collection)?;
                    if !req.metadata.is_empty() {
                        return Err(
                            "paginated range queries are not supported by the devnet peer"
                                .to_owned(),
                        );
                    }
                    if iters.len() >= MAX_ITERATORS {
                        return Err(format!(
                            "too many open query iterators (at most {MAX_ITERATORS})"
                        ));
                    }
                    let (info, results) =
                        sim.open_range(&req.start_key, &req.end_key, RANGE_LIMIT + 1)?;
                    if results.len() > RANGE_LIMIT {
                        return Err(format!(
                            "the range query returned more than {RANGE_LIMIT} entries"
                        ));
                    }
                    next_iter += 1;
                    let id = next_iter.to_string();
                    let mut iter = RangeIter {
                        info,
                        results: results.into_iter(),
                    };
                    let batch = next_batch(sim, &mut iter, &id);
                    if batch.has_more {
                        iters.insert(id, iter);
                    }
                    Ok(batch.encode_to_vec())
                }),
            Some(Type::QueryStateNext) => QueryStateNext::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal QUERY_STATE_NEXT: {e}"))
                .and_then(|req| {
                    let mut iter = iters
                        .remove(&req.id)
                        .ok_or_else(|| format!("query iterator not found: {:?}", req.id))?;
                    let batch = next_batch(sim, &mut iter, &req.id);
                    if batch.has_more {
                        iters.insert(req.id, iter);
                    }
                    Ok(batch.encode_to_vec())
                }),
            Some(Type::QueryStateClose) => QueryStateClose::decode(msg.payload.as_slice())
                .map_err(|e| format!("failed to unmarshal QUERY_STATE_CLOSE: {e}"))
                .map(|req| {
                    iters.remove(&req.id);
                    QueryResponse {
                        has_more: false,
                        id: req.id,
                        ..QueryResponse::default()
                    }
                    .encode_to_vec()
                }),
            _ => Err(format!(
                "[{}] {} is not supported by the devnet peer",
                key.txid.get(..8).unwrap_or(&key.txid),
                type_name(&msg)
            )),
        };
        let answer = match reply {
            Ok(payload) => message(Type::Response, key, payload),
            Err(text) => error_message(key, &text),
        };
        transport.send(answer)?;
    }
}

/// The next batch of a range query, recorded in the read set as handed out.
fn next_batch(sim: &mut Simulator<'_>, iter: &mut RangeIter, id: &str) -> QueryResponse {
    let batch: Vec<(String, VersionedValue)> = iter.results.by_ref().take(RANGE_BATCH).collect();
    let has_more = iter.results.len() > 0;
    sim.record_range_reads(iter.info, &batch, !has_more);
    let namespace = sim.namespace().to_owned();
    QueryResponse {
        results: batch
            .into_iter()
            .map(|(key, v)| QueryResultBytes {
                result_bytes: Kv {
                    namespace: namespace.clone(),
                    key,
                    value: v.value,
                }
                .encode_to_vec(),
            })
            .collect(),
        has_more,
        id: id.to_owned(),
        metadata: Vec::new(),
    }
}

fn no_collection(collection: &str) -> Result<(), String> {
    if collection.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "private data collections are not supported by the devnet peer (collection {collection:?})"
        ))
    }
}

fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        Err("key must not be an empty string".to_owned())
    } else {
        Ok(())
    }
}
