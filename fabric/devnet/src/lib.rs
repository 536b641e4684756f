//! The devnet: a Fabric-compatible peer for development and tests.
//!
//! One process plays a Fabric 2.5 channel `gxchannel` with two application organizations
//! (Org1MSP, Org2MSP — both peers endorse every transaction, as the test network's default
//! MAJORITY endorsement policy requires), a solo ordering service (OrdererMSP) and the GX
//! chaincode built in. It serves Fabric's Gateway and Deliver gRPC services on one port, TLS
//! on by default, so the official Fabric Gateway SDKs and gxd's own client work against it
//! unchanged.
//!
//! The whole surface: [`DevnetConfig`] → [`start`] → [`DevnetHandle`].
//! - [`start`]: initializes `DIR` on first start (crypto material in the cryptogen layout —
//!   see [`DevnetPaths`] — and a ledger with the genesis block), then serves; returns once
//!   the port is bound.
//! - [`DevnetHandle`]: the listening address, the ledger height, runtime fault knobs
//!   ([`Faults`], also switchable out of process through `DIR/faults.json`), and stopping:
//!   [`DevnetHandle::shutdown`], [`DevnetHandle::join`], [`DevnetHandle::run_until`].
//! - Blocks are cut by count, size or timeout ([`BatchConfig`], defaults 100 tx / 2 MiB / 100 ms).
//! - Ledger, world state and height persist in RocksDB under `DIR/ledger`. This crate is the
//!   one place besides `gxd-storage` that uses RocksDB.
//!
//! Identities, signatures, transaction ids and block hashes are gxd-fabric's
//! ([`gxd_fabric::identity`], [`gxd_fabric::tx`], [`gxd_fabric::block`]), the same code the
//! daemon's client uses.
//!
//! Internal modules: `crypto` (material generation and loading), `msp` (identity
//! validation), `gx` (the chaincode), `peer` (endorsement and commit validation), `node`
//! (shared state, ordering and committing), `genesis` and `blocks` (block construction),
//! `gateway` and `deliver` (the gRPC services), `faults`, `ledger`.
//!
//! Public besides: [`shim`], Fabric's chaincode shim protocol both ends — the GX chaincode
//! as a service (`gxd chaincode serve`), the peer side that drives an external chaincode
//! ([`DevnetConfig::with_external_chaincode`]), and the ccaas package (`gxd chaincode
//! package`).

mod blocks;
mod crypto;
mod deliver;
mod faults;
mod gateway;
mod genesis;
mod gx;
mod ledger;
mod msp;
mod node;
mod peer;
pub mod shim;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crypto::{CryptoError, DevnetPaths};
pub use faults::{Fault, FaultRule, Faults, Rpc};
/// The GX chaincode's contract (function and event names, event payload and query result
/// types): what the projector and deployments on a real network depend on.
pub use gx::contract as gx_contract;
pub use ledger::LedgerError;
pub use msp::MspError;
pub use node::{BatchConfig, NodeError};

use gxd_fabric::proto::deliver_server::DeliverServer;
use gxd_fabric::proto::gateway::gateway_server::GatewayServer;

/// Default channel name.
pub const DEFAULT_CHANNEL: &str = "gxchannel";
/// Default chaincode name.
pub const DEFAULT_CHAINCODE: &str = gx::CHAINCODE_NAME;
/// Default listen address (a Fabric peer's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7051";
/// The peer's TLS host name (the server certificate's subject; clients override to it).
pub const PEER_HOST: &str = "peer0.org1.example.com";

/// Everything the devnet runs with: `gxd devnet --dir DIR [--listen ADDR] ...`. Only the
/// directory is required; the rest has defaults ([`DevnetConfig::new`]) and builder setters.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// State directory: crypto material, ledger, world state. Initialized on first start.
    pub dir: PathBuf,
    /// gRPC listen address (default [`DEFAULT_LISTEN`]; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Serve TLS with peer0.org1.example.com's certificate (default true).
    pub tls: bool,
    /// Channel name (default [`DEFAULT_CHANNEL`]). Fixed by the genesis block on first start.
    pub channel: String,
    /// Name the GX chaincode is installed under (default [`DEFAULT_CHAINCODE`]).
    pub chaincode: String,
    /// Block cutting (default 100 transactions / 2 MiB / 100 ms).
    pub batch: BatchConfig,
    /// Where the chaincode runs: `None` (default) in-process; `Some` as an external
    /// service the peer dials and drives over the shim protocol (a chaincode-as-a-service,
    /// e.g. `gxd chaincode serve`).
    pub external_chaincode: Option<shim::client::ExternalConfig>,
}

impl DevnetConfig {
    /// `dir` with the defaults: listen on 127.0.0.1:7051, TLS on, channel `gxchannel`,
    /// chaincode `gx`, default block cutting.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7051)),
            tls: true,
            channel: DEFAULT_CHANNEL.to_owned(),
            chaincode: DEFAULT_CHAINCODE.to_owned(),
            batch: BatchConfig::default(),
            external_chaincode: None,
        }
    }

    /// Runs the chaincode as an external service at `config.address` instead of in-process.
    pub fn with_external_chaincode(mut self, config: shim::client::ExternalConfig) -> Self {
        self.external_chaincode = Some(config);
        self
    }

    /// Sets the listen address.
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Turns TLS on or off.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the channel name.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Sets the name the GX chaincode is installed under.
    pub fn with_chaincode(mut self, chaincode: impl Into<String>) -> Self {
        self.chaincode = chaincode.into();
        self
    }

    /// Sets the block cutting count (at least 1) and timeout.
    pub fn with_batch(mut self, max_message_count: usize, timeout: Duration) -> Self {
        self.batch.max_message_count = max_message_count.max(1);
        self.batch.timeout = timeout;
        self
    }
}

/// Errors from the devnet.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("crypto material: {0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("MSP setup: {0}")]
    Msp(#[from] msp::MspError),
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("node: {0}")]
    Node(#[from] node::NodeError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("external chaincode: {0}")]
    Chaincode(String),
    #[error("gRPC server: {0}")]
    Server(String),
    #[error("devnet task failed: {0}")]
    Task(String),
}

/// A running devnet.
#[derive(Debug)]
pub struct DevnetHandle {
    addr: SocketAddr,
    tls: bool,
    paths: DevnetPaths,
    node: Arc<node::Node>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), DevnetError>>,
}

impl DevnetHandle {
    /// A connector to this devnet as its clients reach it: TLS with
    /// `peer0.org1.example.com`'s TLS CA and server name (plaintext if TLS is off).
    pub fn connector(&self) -> Result<Arc<gxd_fabric::tls::PeerConnector>, DevnetError> {
        use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};
        let endpoint = PeerEndpoint::new(self.addr.to_string()).with_server_name(PEER_HOST);
        let tls = if self.tls {
            let path = self.paths.peer_tls_ca(crypto::PEER_ORGS[0].domain);
            let ca_pem =
                std::fs::read(&path).map_err(|source| DevnetError::Dir { path, source })?;
            Some(TlsOptions {
                ca_pem,
                ..TlsOptions::default()
            })
        } else {
            None
        };
        PeerConnector::new(ConnectionConfig::new(vec![endpoint], tls))
            .map(Arc::new)
            .map_err(|e| DevnetError::Tls(e.to_string()))
    }

    /// The signing identity of `user` (`Admin`, `User1`) of Org1MSP, from the devnet's
    /// cryptogen-layout material.
    pub fn identity(
        &self,
        user: &str,
    ) -> Result<gxd_fabric::identity::SigningIdentity, gxd_fabric::identity::IdentityError> {
        let org = &crypto::PEER_ORGS[0];
        gxd_fabric::identity::SigningIdentity::from_msp_dir(
            org.msp_id,
            &self.paths.user(org.domain, user),
        )
    }

    /// A Gateway client of this devnet's channel, signing as `user` of Org1MSP.
    pub fn gateway(&self, user: &str) -> Result<gxd_fabric::client::Gateway, DevnetError> {
        let identity = self
            .identity(user)
            .map_err(|e| DevnetError::Tls(format!("identity {user}: {e}")))?;
        Ok(gxd_fabric::client::Gateway::new(
            self.connector()?,
            identity,
            self.channel().to_owned(),
        ))
    }

    /// The address the devnet listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Paths into the devnet directory (crypto material).
    pub fn paths(&self) -> &DevnetPaths {
        &self.paths
    }

    /// The fault knobs (shared with the running services).
    pub fn faults(&self) -> &Faults {
        &self.node.faults
    }

    /// Number of committed blocks (the genesis block counts).
    pub fn height(&self) -> u64 {
        self.node.height()
    }

    /// Channel name.
    pub fn channel(&self) -> &str {
        &self.node.channel.channel_id
    }

    /// Waits until at least `height` blocks are committed, or `timeout` passes.
    pub async fn wait_for_height(&self, height: u64, timeout: Duration) -> bool {
        if height == 0 {
            return true;
        }
        tokio::time::timeout(timeout, self.node.wait_for_block(height - 1))
            .await
            .unwrap_or(false)
    }

    /// Whether the devnet has stopped (shut down or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops serving, commits what was already ordered, closes the ledger.
    pub async fn shutdown(self) -> Result<(), DevnetError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for the devnet to stop by itself (a fatal error) or through [`shutdown`](Self::shutdown).
    pub async fn join(self) -> Result<(), DevnetError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(DevnetError::Task(e.to_string())),
        }
    }

    /// Serves until `shutdown` resolves (then stops as [`shutdown`](Self::shutdown) does) or
    /// the devnet stops by itself (a fatal error, returned).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), DevnetError> {
        tokio::select! {
            () = shutdown => self.shutdown.cancel(),
            () = self.shutdown.cancelled() => {}
        }
        self.join().await
    }
}

/// Initializes `config.dir` if needed and starts serving; returns once the port is bound.
pub async fn start(config: DevnetConfig) -> Result<DevnetHandle, DevnetError> {
    let shutdown = CancellationToken::new();
    std::fs::create_dir_all(&config.dir).map_err(|source| DevnetError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    let dir = config.dir.clone();
    let paths = DevnetPaths::new(&dir);
    let material = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            crypto::ensure_material(&dir)?;
            crypto::load_material(&dir)
        })
        .await
        .map_err(|e| DevnetError::Task(e.to_string()))??
    };
    let msp = msp::MspManager::new(material.ca_certs())?;
    let ledger = ledger::Ledger::open(&paths.ledger())?;
    let runtime = match &config.external_chaincode {
        None => peer::ChaincodeRuntime::InProcess,
        Some(external) => peer::ChaincodeRuntime::External(Arc::new(
            shim::client::ExternalChaincode::new(external.clone())
                .map_err(DevnetError::Chaincode)?,
        )),
    };
    let channel = peer::ChannelInfo {
        channel_id: config.channel.clone(),
        chaincode: config.chaincode.clone(),
        runtime,
    };
    let config_org = |(id, ca, tls): &(String, Vec<u8>, Vec<u8>), anchor: Option<(String, i32)>| {
        genesis::ConfigOrg {
            msp_id: id.clone(),
            ca_pem: ca.clone(),
            tls_ca_pem: tls.clone(),
            anchor_peer: anchor,
        }
    };
    let n_peer_orgs = crypto::PEER_ORGS.len();
    let genesis_cfg = genesis::ChannelConfig {
        channel_id: config.channel.clone(),
        application_orgs: material.orgs[..n_peer_orgs]
            .iter()
            .zip(crypto::PEER_ORGS.iter())
            .map(|(o, spec)| config_org(o, Some((format!("peer0.{}", spec.domain), 7051))))
            .collect(),
        orderer_org: config_org(&material.orgs[n_peer_orgs], None),
        orderer_address: "orderer.example.com:7050".to_owned(),
        max_message_count: u32::try_from(config.batch.max_message_count).unwrap_or(u32::MAX),
        preferred_max_bytes: u32::try_from(config.batch.preferred_max_bytes).unwrap_or(u32::MAX),
        absolute_max_bytes: u32::try_from(config.batch.absolute_max_bytes).unwrap_or(u32::MAX),
        batch_timeout: config.batch.timeout,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DevnetError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DevnetError::Bind {
        addr: config.listen,
        source,
    })?;
    let faults = Faults::default();
    let (node, orderer_parts) = node::Node::open(
        channel,
        msp,
        material.peer_signers.clone(),
        material.orderer_signer.clone(),
        ledger,
        &genesis_cfg,
        format!("{PEER_HOST}:{}", addr.port()),
        config.batch,
        faults.clone(),
        shutdown.clone(),
    )?;

    let mut builder = tonic::transport::Server::builder();
    if config.tls {
        let identity =
            tonic::transport::Identity::from_pem(&material.tls_cert_pem, &material.tls_key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| DevnetError::Tls(e.to_string()))?;
    }
    let max_msg = config.batch.absolute_max_bytes.max(4 * 1024 * 1024) + 1024 * 1024;
    // A Fabric peer (grpc-go) does not cap concurrent streams per connection; hyper's
    // default (200) would queue a client's CommitStatus waits behind each other on its one
    // connection, which no real peer does. A large bound instead of none.
    builder = builder.max_concurrent_streams(Some(10_000));
    let router = builder
        .add_service(
            GatewayServer::new(gateway::GatewayService::new(Arc::clone(&node)))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            DeliverServer::new(deliver::DeliverService::new(Arc::clone(&node)))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        );
    tracing::info!(%addr, tls = config.tls, dir = %dir.display(), height = node.height(), "devnet peer listening");

    let orderer = tokio::spawn(node::run_orderer(Arc::clone(&node), orderer_parts));
    let fault_file = tokio::spawn(faults::watch_file(
        paths.faults_file(),
        faults,
        shutdown.clone(),
    ));
    let server_token = shutdown.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, server_token.cancelled_owned())
            .await
    });
    let task_token = shutdown.clone();
    let task = tokio::spawn(async move {
        let mut server = server;
        let mut orderer = orderer;
        // Either part ending early is fatal: stop the other. `biased`: the server also
        // returns when the token is cancelled, which is a normal stop, not a failure.
        let early = tokio::select! {
            biased;
            _ = task_token.cancelled() => None,
            r = &mut server => Some(Err::<(), _>(match r {
                Ok(Ok(())) => DevnetError::Server("gRPC server stopped".to_owned()),
                Ok(Err(e)) => DevnetError::Server(e.to_string()),
                Err(e) => DevnetError::Task(e.to_string()),
            })),
            r = &mut orderer => Some(match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(DevnetError::Node(e)),
                Err(e) => Err(DevnetError::Task(e.to_string())),
            }),
        };
        task_token.cancel();
        let mut result = Ok(());
        if let Some(Err(e)) = early {
            tracing::error!(error = %e, "devnet failed");
            result = Err(e);
        }
        if !server.is_finished() {
            // Long-lived streams end on the token; bound the graceful drain anyway.
            if tokio::time::timeout(Duration::from_secs(10), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        if !orderer.is_finished() {
            match orderer.await {
                Ok(Err(e)) if result.is_ok() => result = Err(DevnetError::Node(e)),
                Err(e) if result.is_ok() => result = Err(DevnetError::Task(e.to_string())),
                _ => {}
            }
        }
        let _ = fault_file.await;
        tracing::info!("devnet stopped");
        result
    });
    Ok(DevnetHandle {
        addr,
        tls: config.tls,
        paths,
        node,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_commit;
#[cfg(test)]
mod tests_fidelity;
#[cfg(test)]
mod tests_shim;
