//! Builds the engine from the configuration: the peer connection and signing identity, the
//! submitter (with GX's command catalog) and the projector (with GX's projection handler).
//! GX is plugged in here, in the composition root; the engine itself knows no GX.

use std::sync::Arc;

use anyhow::Context;
use gxd_engine::backoff::Backoff;
use gxd_engine::projector::{DeliverSource, PoisonPolicy, Projector, ProjectorConfig};
use gxd_engine::submitter::{Submitter, SubmitterConfig, Waker};
use gxd_fabric::client::{Gateway, Timeouts};
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::Outbox;
use gxd_storage::pg::Pool;

use crate::config::{Config, FabricConfig, PoisonPolicySetting};

/// The engine's two halves, ready to run.
pub struct Engine {
    pub submitter: Submitter,
    pub projector: Projector,
    /// Wakes the submitter after an enqueue.
    pub waker: Waker,
    /// The peer connection the submitter and projector share (the daemon waits for it
    /// before telling systemd it is ready).
    pub connector: Arc<PeerConnector>,
}

fn read(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))
}

/// The peer connector (TLS, failover over the configured endpoints).
pub fn connector(fabric: &FabricConfig) -> anyhow::Result<Arc<PeerConnector>> {
    let endpoints = fabric
        .peer_endpoints
        .iter()
        .map(|e| {
            let endpoint = PeerEndpoint::new(e.clone());
            match &fabric.peer_tls_server_name {
                Some(name) => endpoint.with_server_name(name.clone()),
                None => endpoint,
            }
        })
        .collect();
    let tls = match &fabric.tls {
        None => None,
        Some(files) => Some(TlsOptions {
            ca_pem: read("fabric.tls_ca_file", &files.ca)?,
            client_cert_pem: files
                .client_cert
                .as_deref()
                .map(|p| read("fabric.tls_client_cert_file", p))
                .transpose()?,
            client_key_pem: files
                .client_key
                .as_deref()
                .map(|p| read("fabric.tls_client_key_file", p))
                .transpose()?,
        }),
    };
    let connector = PeerConnector::new(
        ConnectionConfig::new(endpoints, tls).with_connections(fabric.connections),
    )
    .context("set up the connection to fabric.peer_endpoints")?;
    Ok(Arc::new(connector))
}

/// Builds the submitter and the projector.
pub fn build(
    config: &Config,
    fabric: &FabricConfig,
    outbox: Outbox,
    checkpoints: CheckpointLog,
    pool: Pool,
    registry: &prometheus::Registry,
) -> anyhow::Result<Engine> {
    let connector = connector(fabric)?;
    let identity = SigningIdentity::from_msp_dir(fabric.msp_id.clone(), &fabric.msp_dir)
        .with_context(|| {
            format!(
                "load the signing identity from fabric.msp_dir {}",
                fabric.msp_dir.display()
            )
        })?;
    let gateway = Gateway::new(connector.clone(), identity.clone(), fabric.channel.clone())
        .with_timeouts(Timeouts {
            evaluate: fabric.evaluate_timeout,
            endorse: fabric.endorse_timeout,
            submit: fabric.submit_timeout,
            commit_status: fabric.commit_status_timeout,
        });

    let mut submitter_config = SubmitterConfig::new(fabric.chaincode.clone());
    submitter_config.max_in_flight = config.submitter.max_in_flight;
    submitter_config.max_attempts = config.submitter.max_attempts;
    submitter_config.backoff = Backoff {
        base: config.submitter.backoff_base,
        max: config.submitter.backoff_max,
    };
    let waker = Waker::new();
    let outbox_for_projector = outbox.clone();
    let submitter = Submitter::new(
        outbox,
        gateway,
        Arc::new(gxd_gx::commands::GxCatalog),
        submitter_config,
        waker.clone(),
        registry,
    )
    .context("set up the submitter")?;

    let poison = match config.projector.poison_policy {
        PoisonPolicySetting::Halt => PoisonPolicy::Halt,
        PoisonPolicySetting::DeadLetter => PoisonPolicy::DeadLetter,
    };
    let projector_config = ProjectorConfig::new(fabric.channel.clone()).with_poison_policy(poison);
    let source = DeliverSource {
        connector: connector.clone(),
        signer: identity,
        backoff: gxd_fabric::stream::Backoff::default(),
    };
    let projector = Projector::new(
        projector_config,
        pool,
        checkpoints,
        Arc::new(gxd_gx::handlers::GxProjection::new(
            fabric.chaincode.clone(),
        )),
        Arc::new(source),
    )
    .with_outbox(outbox_for_projector);
    Ok(Engine {
        submitter,
        projector,
        waker,
        connector,
    })
}
