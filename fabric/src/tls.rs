//! gRPC connections to Fabric peers: TLS (rustls) with the organization's TLS CA, optional
//! mutual TLS, server-name override, and failover across several peer endpoints.
//!
//! [`PeerConnector`] keeps [`ConnectionConfig::connections`] HTTP/2 connections (tonic
//! [`Channel`]s) to the endpoint in use and spreads calls over them in turn: one HTTP/2
//! connection is one task doing all its streams' TLS and framing, which caps a busy
//! client at one core. When connecting fails or a call reports `UNAVAILABLE`,
//! [`PeerConnector::call`] moves on to the next endpoint (round robin) and retries, at
//! most once per endpoint, within the caller's deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::identity::parse_certificate;

/// One peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEndpoint {
    /// `host:port` (e.g. `127.0.0.1:7051` or `peer0.org1.example.com:7051`).
    pub address: String,
    /// TLS server name to verify instead of the host, e.g. `peer0.org1.example.com` while
    /// dialing `127.0.0.1` (Fabric's `ssl-target-name-override`).
    pub server_name: Option<String>,
}

impl PeerEndpoint {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            server_name: None,
        }
    }

    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// TLS settings shared by all endpoints of an organization.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM root certificate(s) of the organization's TLS CA.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("mutual", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// How to reach the peers.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Tried in order; the first that connects is used until it fails.
    pub endpoints: Vec<PeerEndpoint>,
    /// `None` = plaintext (only for tests against a plaintext server).
    pub tls: Option<TlsOptions>,
    /// Limit for establishing one connection (TCP + TLS handshake).
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 connections to the endpoint in use (at least 1; default 1). Calls take them
    /// in turn.
    pub connections: usize,
}

impl ConnectionConfig {
    pub fn new(endpoints: Vec<PeerEndpoint>, tls: Option<TlsOptions>) -> Self {
        Self {
            endpoints,
            tls,
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(60),
            connections: 1,
        }
    }

    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }
}

/// Connection errors.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no peer endpoints configured")]
    NoEndpoints,
    #[error("invalid endpoint {address}: {reason}")]
    InvalidEndpoint { address: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("could not connect to any peer: {0}")]
    AllFailed(String),
}

/// The outcome of [`PeerConnector::call`] when it does not succeed.
#[derive(Debug)]
pub enum CallError {
    /// No endpoint could be connected.
    Connect(ConnectError),
    /// The last call's gRPC status (after failing over on UNAVAILABLE where possible).
    Status {
        status: tonic::Status,
        endpoint: String,
    },
}

#[derive(Default)]
struct State {
    current: usize,
    /// The endpoint in use and its connections (never empty).
    channels: Option<(usize, Vec<Channel>)>,
}

/// Connections to a set of peer endpoints with failover.
pub struct PeerConnector {
    endpoints: Vec<(PeerEndpoint, Endpoint)>,
    tls_cert_hash: Vec<u8>,
    connections: usize,
    /// Which connection the next call takes.
    turn: AtomicUsize,
    state: Mutex<State>,
}

impl std::fmt::Debug for PeerConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnector")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|(p, _)| &p.address)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PeerConnector {
    /// Validates the configuration (endpoint syntax, PEM material). Does not connect.
    pub fn new(config: ConnectionConfig) -> Result<Self, ConnectError> {
        if config.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        let mut tls_cert_hash = Vec::new();
        if let Some(tls) = &config.tls {
            if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
                return Err(ConnectError::Tls(
                    "client certificate and key must be given together".into(),
                ));
            }
            if let Some(cert) = &tls.client_cert_pem {
                let parsed = parse_certificate(cert)
                    .map_err(|e| ConnectError::Tls(format!("client certificate: {e}")))?;
                let der =
                    der::Encode::to_der(&parsed).map_err(|e| ConnectError::Tls(e.to_string()))?;
                tls_cert_hash = Sha256::digest(der).to_vec();
            }
            if crate::identity::parse_certificates(&tls.ca_pem)
                .map(|v| v.is_empty())
                .unwrap_or(true)
            {
                return Err(ConnectError::Tls(
                    "TLS CA bundle holds no PEM certificate".into(),
                ));
            }
        }
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for peer in &config.endpoints {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let invalid = |reason: String| ConnectError::InvalidEndpoint {
                address: peer.address.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{}", peer.address))
                .map_err(|e| invalid(e.to_string()))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(config.keepalive_interval)
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            if let Some(tls) = &config.tls {
                let mut tc =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some(name) = &peer.server_name {
                    tc = tc.domain_name(name.clone());
                }
                if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
                    tc = tc.identity(TlsIdentity::from_pem(cert, key));
                }
                ep = ep
                    .tls_config(tc)
                    .map_err(|e| ConnectError::Tls(format!("{}: {e}", peer.address)))?;
            }
            endpoints.push((peer.clone(), ep));
        }
        Ok(Self {
            endpoints,
            tls_cert_hash,
            connections: config.connections.max(1),
            turn: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        })
    }

    /// SHA-256 of the client TLS certificate (DER) when mutual TLS is configured, else empty.
    /// Fabric puts it in `ChannelHeader.tls_cert_hash` of Deliver requests.
    pub fn tls_cert_hash(&self) -> &[u8] {
        &self.tls_cert_hash
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &PeerEndpoint> {
        self.endpoints.iter().map(|(p, _)| p)
    }

    /// A connected channel: the next of the endpoint's connections, or (when none is open)
    /// the first endpoint, starting at the current one, that accepts a connection — then
    /// the rest of its connections (those that fail are left out).
    pub async fn channel(&self) -> Result<(usize, Channel), ConnectError> {
        let mut state = self.state.lock().await;
        if let Some((idx, channels)) = &state.channels {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            return Ok((*idx, channels[turn % channels.len()].clone()));
        }
        let n = self.endpoints.len();
        let mut errors = Vec::new();
        for step in 0..n {
            let idx = (state.current + step) % n;
            let (peer, ep) = &self.endpoints[idx];
            match ep.connect().await {
                Ok(ch) => {
                    let mut channels = vec![ch.clone()];
                    for _ in 1..self.connections {
                        match ep.connect().await {
                            Ok(c) => channels.push(c),
                            Err(e) => {
                                tracing::warn!(endpoint = %peer.address, error = %error_chain(&e), "extra peer connection failed; using fewer");
                            }
                        }
                    }
                    state.current = idx;
                    state.channels = Some((idx, channels));
                    return Ok((idx, ch));
                }
                Err(e) => {
                    tracing::warn!(endpoint = %peer.address, error = %error_chain(&e), "peer connection failed");
                    errors.push(format!("{}: {}", peer.address, error_chain(&e)));
                }
            }
        }
        Err(ConnectError::AllFailed(errors.join("; ")))
    }

    /// Forgets the connections to endpoint `idx` and makes the next endpoint current.
    pub async fn report_failure(&self, idx: usize) {
        let mut state = self.state.lock().await;
        if state.channels.as_ref().is_some_and(|(i, _)| *i == idx) {
            state.channels = None;
            state.current = (idx + 1) % self.endpoints.len();
        }
    }

    /// How many connections are open (to the endpoint in use).
    pub async fn open_connections(&self) -> usize {
        self.state
            .lock()
            .await
            .channels
            .as_ref()
            .map_or(0, |(_, c)| c.len())
    }

    /// Address of endpoint `idx`.
    pub fn address(&self, idx: usize) -> &str {
        self.endpoints
            .get(idx)
            .map(|(p, _)| p.address.as_str())
            .unwrap_or("")
    }

    /// Runs `f` on a channel, failing over to the next endpoint when connecting fails or the
    /// call returns UNAVAILABLE; at most one attempt per endpoint. The caller bounds the whole
    /// thing with its deadline.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let attempts = self.endpoints.len();
        let mut last = None;
        for _ in 0..attempts {
            let (idx, ch) = match self.channel().await {
                Ok(c) => c,
                Err(e) => return Err(last.unwrap_or(CallError::Connect(e))),
            };
            match f(ch).await {
                Ok(v) => return Ok(v),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tracing::warn!(endpoint = %self.address(idx), message = %status.message(), "peer unavailable; failing over");
                    self.report_failure(idx).await;
                    last = Some(CallError::Status {
                        status,
                        endpoint: self.address(idx).to_owned(),
                    });
                }
                Err(status) => {
                    return Err(CallError::Status {
                        status,
                        endpoint: self.address(idx).to_owned(),
                    });
                }
            }
        }
        Err(last.unwrap_or(CallError::Connect(ConnectError::NoEndpoints)))
    }
}

/// An error with its sources, joined by ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(matches!(
            PeerConnector::new(ConnectionConfig::new(vec![], None)),
            Err(ConnectError::NoEndpoints)
        ));
        let bad_tls = TlsOptions {
            ca_pem: b"not a pem".to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            PeerConnector::new(ConnectionConfig::new(
                vec![PeerEndpoint::new("127.0.0.1:1")],
                Some(bad_tls)
            )),
            Err(ConnectError::Tls(_))
        ));
        let half = TlsOptions {
            ca_pem: Vec::new(),
            client_cert_pem: Some(b"x".to_vec()),
            client_key_pem: None,
        };
        assert!(matches!(
            PeerConnector::new(ConnectionConfig::new(
                vec![PeerEndpoint::new("127.0.0.1:1")],
                Some(half)
            )),
            Err(ConnectError::Tls(_))
        ));
        assert!(
            PeerConnector::new(ConnectionConfig::new(
                vec![PeerEndpoint::new("127.0.0.1:1")],
                None
            ))
            .is_ok()
        );
    }

    #[tokio::test]
    async fn all_endpoints_down_reports_each() {
        // Ports from listeners we bind and drop: nothing listens there.
        let a = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = PeerConnector::new(ConnectionConfig::new(
            vec![
                PeerEndpoint::new(a.to_string()),
                PeerEndpoint::new(b.to_string()),
            ],
            None,
        ))
        .unwrap();
        match c.channel().await {
            Err(ConnectError::AllFailed(msg)) => {
                assert!(
                    msg.contains(&a.to_string()) && msg.contains(&b.to_string()),
                    "{msg}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
