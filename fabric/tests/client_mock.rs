//! The Gateway client, TLS connector and block stream against a scripted in-process peer:
//! TLS with server-name override, mutual TLS, failover, deadlines, error details, prepared
//! transaction persistence, stream reconnection/resume and hash-chain verification.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use gxd_fabric::block::{BlockError, block_data_hash, block_header_hash};
use gxd_fabric::client::{ErrorClass, Gateway, GatewayError, PreparedTransaction, Stage, Timeouts};
use gxd_fabric::identity::{Identity, P256Signer, SigningIdentity, verify_signature};
use gxd_fabric::proto::{
    self, DeliverResponse, Message, common, deliver_response, deliver_server, gateway, orderer,
    protos,
};
use gxd_fabric::stream::{Backoff, BlockStream, BlockStreamConfig, StreamError};
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};
use gxd_fabric::tx;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};

const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Crypto material

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    user: SigningIdentity,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tlsca.org1.example.com");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let issue = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (server_cert, server_key) = issue(
        "peer0.org1.example.com",
        vec!["peer0.org1.example.com".into()],
    );
    let (client_cert, client_key) = issue("User1@org1.example.com", vec!["client".into()]);
    let (user_cert, user_key) = issue("User1@org1.example.com", vec![]);
    let user = SigningIdentity::from_pem("Org1MSP", user_cert.as_bytes(), &user_key).unwrap();
    Pki {
        ca_pem,
        server_cert,
        server_key,
        client_cert,
        client_key,
        user,
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted peer

#[derive(Default)]
struct Script {
    endorse_error: Option<tonic::Status>,
    endorse_delay: Duration,
    commit_code: i32,
    submitted: Vec<String>,
    /// Blocks served by Deliver.
    blocks: Vec<common::Block>,
    /// Close the first N deliver streams after this many blocks.
    drop_after: Option<usize>,
    drops_left: usize,
    /// Start numbers of every seek received.
    seeks: Vec<u64>,
}

#[derive(Clone)]
struct MockPeer {
    script: Arc<Mutex<Script>>,
    stop: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl gateway::gateway_server::Gateway for MockPeer {
    async fn endorse(
        &self,
        request: tonic::Request<gateway::EndorseRequest>,
    ) -> Result<tonic::Response<gateway::EndorseResponse>, tonic::Status> {
        let (err, delay) = {
            let s = self.script.lock().unwrap();
            (s.endorse_error.clone(), s.endorse_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(e) = err {
            return Err(e);
        }
        let req = request.into_inner();
        let signed = req
            .proposed_transaction
            .ok_or_else(|| tonic::Status::invalid_argument("no proposal"))?;
        let decoded = tx::decode_proposal(&signed.proposal_bytes)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let creator = Identity::from_creator(&decoded.signature_header.creator)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        creator
            .verify(&signed.proposal_bytes, &signed.signature)
            .map_err(|e| tonic::Status::permission_denied(e.to_string()))?;
        if decoded.channel_header.tx_id != req.transaction_id {
            return Err(tonic::Status::invalid_argument("tx id mismatch"));
        }
        let result = format!("ok:{}", String::from_utf8_lossy(&decoded.args[0]));
        let cca = protos::ChaincodeAction {
            response: Some(protos::Response {
                status: 200,
                message: String::new(),
                payload: result.clone().into_bytes(),
            }),
            ..Default::default()
        };
        let prp = protos::ProposalResponsePayload {
            proposal_hash: vec![0; 32],
            extension: cca.encode_to_vec(),
        }
        .encode_to_vec();
        let pr = protos::ProposalResponse {
            version: 1,
            response: Some(protos::Response {
                status: 200,
                message: String::new(),
                payload: result.into_bytes(),
            }),
            payload: prp,
            endorsement: Some(protos::Endorsement {
                endorser: b"peer0".to_vec(),
                signature: b"sig".to_vec(),
            }),
            ..Default::default()
        };
        let env = tx::assemble_transaction(&decoded.proposal, &[pr])
            .map_err(|e| tonic::Status::aborted(e.to_string()))?;
        Ok(tonic::Response::new(gateway::EndorseResponse {
            prepared_transaction: Some(env),
        }))
    }

    async fn submit(
        &self,
        request: tonic::Request<gateway::SubmitRequest>,
    ) -> Result<tonic::Response<gateway::SubmitResponse>, tonic::Status> {
        let req = request.into_inner();
        let env = req
            .prepared_transaction
            .ok_or_else(|| tonic::Status::invalid_argument("no tx"))?;
        let parts = tx::signed_envelope_payload(&env)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let creator = Identity::from_creator(&parts.signature_header.creator)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        creator
            .verify(&env.payload, &env.signature)
            .map_err(|e| tonic::Status::permission_denied(e.to_string()))?;
        self.script
            .lock()
            .unwrap()
            .submitted
            .push(parts.channel_header.tx_id);
        Ok(tonic::Response::new(gateway::SubmitResponse {}))
    }

    async fn commit_status(
        &self,
        request: tonic::Request<gateway::SignedCommitStatusRequest>,
    ) -> Result<tonic::Response<gateway::CommitStatusResponse>, tonic::Status> {
        let signed = request.into_inner();
        let req = gateway::CommitStatusRequest::decode(signed.request.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let creator = Identity::from_creator(&req.identity)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        creator
            .verify(&signed.request, &signed.signature)
            .map_err(|e| tonic::Status::permission_denied(e.to_string()))?;
        let s = self.script.lock().unwrap();
        if !s.submitted.contains(&req.transaction_id) {
            return Err(tonic::Status::not_found("unknown transaction"));
        }
        Ok(tonic::Response::new(gateway::CommitStatusResponse {
            result: s.commit_code,
            block_number: 5,
        }))
    }

    async fn evaluate(
        &self,
        request: tonic::Request<gateway::EvaluateRequest>,
    ) -> Result<tonic::Response<gateway::EvaluateResponse>, tonic::Status> {
        let signed = request
            .into_inner()
            .proposed_transaction
            .ok_or_else(|| tonic::Status::invalid_argument("no proposal"))?;
        let decoded = tx::decode_proposal(&signed.proposal_bytes)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let joined: Vec<String> = decoded
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Ok(tonic::Response::new(gateway::EvaluateResponse {
            result: Some(protos::Response {
                status: 200,
                message: String::new(),
                payload: joined.join(",").into_bytes(),
            }),
        }))
    }

    type ChaincodeEventsStream = BoxStream<gateway::ChaincodeEventsResponse>;

    async fn chaincode_events(
        &self,
        _request: tonic::Request<gateway::SignedChaincodeEventsRequest>,
    ) -> Result<tonic::Response<Self::ChaincodeEventsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the mock"))
    }
}

#[tonic::async_trait]
impl deliver_server::Deliver for MockPeer {
    type DeliverStream = BoxStream<DeliverResponse>;
    type DeliverFilteredStream = BoxStream<DeliverResponse>;
    type DeliverWithPrivateDataStream = BoxStream<DeliverResponse>;

    async fn deliver(
        &self,
        request: tonic::Request<tonic::Streaming<common::Envelope>>,
    ) -> Result<tonic::Response<Self::DeliverStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let env = requests
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("no seek"))?;
        let parts = tx::signed_envelope_payload(&env)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if parts.channel_header.r#type != common::HeaderType::DeliverSeekInfo as i32 {
            return Err(tonic::Status::invalid_argument("not a seek"));
        }
        let creator = Identity::from_creator(&parts.signature_header.creator)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if creator.verify(&env.payload, &env.signature).is_err() {
            // Fabric answers a failed access check with a FORBIDDEN status message.
            let resp = DeliverResponse {
                r#type: Some(deliver_response::Type::Status(
                    common::Status::Forbidden as i32,
                )),
            };
            return Ok(tonic::Response::new(Box::pin(futures::stream::iter(vec![
                Ok(resp),
            ]))));
        }
        let seek = orderer::SeekInfo::decode(parts.payload.data.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let start = match seek.start.and_then(|s| s.r#type) {
            Some(orderer::seek_position::Type::Specified(s)) => s.number,
            _ => 0,
        };
        let (blocks, limit) = {
            let mut s = self.script.lock().unwrap();
            s.seeks.push(start);
            let limit = if s.drops_left > 0 {
                s.drops_left -= 1;
                s.drop_after
            } else {
                None
            };
            (s.blocks.clone(), limit)
        };
        let (txs, rxs) = tokio::sync::mpsc::channel(4);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _requests = requests; // keep the request side alive while serving
            for (sent, b) in blocks
                .into_iter()
                .filter(|b| b.header.as_ref().is_some_and(|h| h.number >= start))
                .enumerate()
            {
                if limit.is_some_and(|l| sent >= l) {
                    return; // drop the stream: the client must reconnect and resume
                }
                let msg = DeliverResponse {
                    r#type: Some(deliver_response::Type::Block(b)),
                };
                if txs.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            // BLOCK_UNTIL_READY: hold the stream open until the client leaves or the peer stops.
            tokio::select! {
                () = txs.closed() => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rxs),
        )))
    }

    async fn deliver_filtered(
        &self,
        _request: tonic::Request<tonic::Streaming<common::Envelope>>,
    ) -> Result<tonic::Response<Self::DeliverFilteredStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the mock"))
    }

    async fn deliver_with_private_data(
        &self,
        _request: tonic::Request<tonic::Streaming<common::Envelope>>,
    ) -> Result<tonic::Response<Self::DeliverWithPrivateDataStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the mock"))
    }
}

enum Tls<'a> {
    Off,
    Server(&'a Pki),
    Mutual(&'a Pki),
}

async fn serve(peer: MockPeer, tls: Tls<'_>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    match tls {
        Tls::Off => {}
        Tls::Server(p) => {
            builder = builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(TlsIdentity::from_pem(&p.server_cert, &p.server_key)),
                )
                .unwrap();
        }
        Tls::Mutual(p) => {
            builder = builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(TlsIdentity::from_pem(&p.server_cert, &p.server_key))
                        .client_ca_root(Certificate::from_pem(&p.ca_pem)),
                )
                .unwrap();
        }
    }
    let stop = peer.stop.clone();
    let router = builder
        .add_service(gateway::gateway_server::GatewayServer::new(peer.clone()))
        .add_service(deliver_server::DeliverServer::new(peer));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled(),
            )
            .await
            .unwrap();
    });
    addr
}

fn mock(script: Script) -> MockPeer {
    MockPeer {
        script: Arc::new(Mutex::new(script)),
        stop: CancellationToken::new(),
    }
}

fn tls_opts(p: &Pki, mutual: bool) -> TlsOptions {
    TlsOptions {
        ca_pem: p.ca_pem.as_bytes().to_vec(),
        client_cert_pem: mutual.then(|| p.client_cert.as_bytes().to_vec()),
        client_key_pem: mutual.then(|| p.client_key.as_bytes().to_vec()),
    }
}

fn connector(endpoints: Vec<PeerEndpoint>, tls: Option<TlsOptions>) -> Arc<PeerConnector> {
    let mut cfg = ConnectionConfig::new(endpoints, tls);
    cfg.connect_timeout = Duration::from_secs(5);
    Arc::new(PeerConnector::new(cfg).unwrap())
}

fn peer_endpoint(addr: SocketAddr) -> PeerEndpoint {
    PeerEndpoint::new(addr.to_string()).with_server_name("peer0.org1.example.com")
}

fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Gateway client

#[tokio::test]
async fn full_flow_over_tls_with_server_name_override_and_resubmission() {
    let p = pki();
    let peer = mock(Script::default());
    let addr = serve(peer.clone(), Tls::Server(&p)).await;
    let gw = Gateway::new(
        connector(vec![peer_endpoint(addr)], Some(tls_opts(&p, false))),
        p.user.clone(),
        "gxchannel",
    );

    let spec = gw.proposal("gx", "CreateUser").with_args(["u1", "{}"]);
    let committed = tokio::time::timeout(LIMIT, gw.submit_transaction(&spec))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed.result, b"ok:CreateUser");
    assert_eq!(committed.block_number, 5);

    // Endorse, persist the prepared transaction, restore it, submit it twice: same tx id.
    let proposal = gw
        .new_proposal(
            &gw.proposal("gx", "TransferTokens")
                .with_args(["t1", "a", "b", "5", ""]),
        )
        .unwrap();
    let prepared = gw.endorse(&proposal).await.unwrap();
    assert_eq!(prepared.tx_id(), proposal.tx_id);
    assert_eq!(prepared.channel(), "gxchannel");
    assert_eq!(prepared.result(), b"ok:TransferTokens");
    verify_signature(
        p.user.identity().cert_pem(),
        &prepared.envelope().payload,
        &prepared.envelope().signature,
    )
    .unwrap();
    let bytes = prepared.to_bytes();
    let restored = PreparedTransaction::from_bytes(&bytes).unwrap();
    assert_eq!(restored, prepared);
    gw.submit(&restored).await.unwrap();
    gw.submit(&restored).await.unwrap();
    let status = gw.commit_status(restored.tx_id()).await.unwrap();
    assert!(status.is_valid());
    let submitted = peer.script.lock().unwrap().submitted.clone();
    assert_eq!(
        submitted.iter().filter(|t| *t == &proposal.tx_id).count(),
        2
    );

    // Evaluate passes function name first, then arguments.
    let out = gw
        .evaluate(&gw.proposal("gx", "GetWallet").with_args(["w1"]))
        .await
        .unwrap();
    assert_eq!(out, b"GetWallet,w1");
    peer.stop.cancel();
}

#[tokio::test]
async fn wrong_server_name_is_refused() {
    let p = pki();
    let peer = mock(Script::default());
    let addr = serve(peer.clone(), Tls::Server(&p)).await;
    let ep = PeerEndpoint::new(addr.to_string()).with_server_name("peer1.org2.example.com");
    let gw = Gateway::new(
        connector(vec![ep], Some(tls_opts(&p, false))),
        p.user.clone(),
        "gxchannel",
    );
    let err = gw
        .evaluate(&gw.proposal("gx", "GetWallet"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GatewayError::Connect {
                stage: Stage::Evaluate,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    peer.stop.cancel();
}

#[tokio::test]
async fn mutual_tls() {
    let p = pki();
    let peer = mock(Script::default());
    let addr = serve(peer.clone(), Tls::Mutual(&p)).await;
    let with_cert = Gateway::new(
        connector(vec![peer_endpoint(addr)], Some(tls_opts(&p, true))),
        p.user.clone(),
        "gxchannel",
    );
    assert_eq!(
        with_cert
            .evaluate(&with_cert.proposal("gx", "GetUser").with_args(["u"]))
            .await
            .unwrap(),
        b"GetUser,u"
    );
    assert_eq!(with_cert.connector().tls_cert_hash().len(), 32);
    let without = Gateway::new(
        connector(vec![peer_endpoint(addr)], Some(tls_opts(&p, false))),
        p.user.clone(),
        "gxchannel",
    );
    let err = without
        .evaluate(&without.proposal("gx", "GetUser"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(
        matches!(
            err.grpc_code(),
            Some(tonic::Code::Unavailable) | Some(tonic::Code::Unknown)
        ),
        "{err}"
    );
    peer.stop.cancel();
}

#[tokio::test]
async fn fails_over_to_the_next_endpoint() {
    let p = pki();
    let peer = mock(Script::default());
    let addr = serve(peer.clone(), Tls::Off).await;
    let c = connector(
        vec![
            PeerEndpoint::new(dead_addr().to_string()),
            PeerEndpoint::new(addr.to_string()),
        ],
        None,
    );
    let gw = Gateway::new(c.clone(), p.user.clone(), "gxchannel");
    assert_eq!(
        gw.evaluate(&gw.proposal("gx", "GetUser").with_args(["x"]))
            .await
            .unwrap(),
        b"GetUser,x"
    );
    let (idx, _) = c.channel().await.unwrap();
    assert_eq!(idx, 1);

    // Both down: a Connect error naming both.
    peer.stop.cancel();
    let c2 = connector(
        vec![
            PeerEndpoint::new(dead_addr().to_string()),
            PeerEndpoint::new(dead_addr().to_string()),
        ],
        None,
    );
    let gw2 = Gateway::new(c2, p.user.clone(), "gxchannel");
    let err = gw2
        .evaluate(&gw2.proposal("gx", "GetUser"))
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn endorsement_errors_keep_stage_tx_id_and_peer_details() {
    let p = pki();
    let detail = gateway::ErrorDetail {
        address: "peer0.org1.example.com:7051".into(),
        msp_id: "Org1MSP".into(),
        message: "chaincode response 500, insufficient funds".into(),
    };
    let peer = mock(Script {
        endorse_error: Some(proto::status_with_details(
            tonic::Code::Aborted,
            "failed to endorse transaction, see attached details for more info",
            &[detail],
        )),
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let gw = Gateway::new(
        connector(vec![PeerEndpoint::new(addr.to_string())], None),
        p.user.clone(),
        "gxchannel",
    );
    let proposal = gw
        .new_proposal(&gw.proposal("gx", "TransferTokens"))
        .unwrap();
    let err = gw.endorse(&proposal).await.unwrap_err();
    assert_eq!(err.stage(), Stage::Endorse);
    assert_eq!(err.tx_id(), proposal.tx_id);
    assert_eq!(err.grpc_code(), Some(tonic::Code::Aborted));
    assert_eq!(err.details().len(), 1);
    assert_eq!(err.details()[0].msp_id, "Org1MSP");
    assert!(err.is_chaincode_error());
    assert_eq!(err.chaincode_message(), Some("insufficient funds"));
    assert_eq!(err.class(), ErrorClass::Permanent);
    peer.stop.cancel();
}

#[tokio::test]
async fn deadlines_are_per_stage() {
    let p = pki();
    let peer = mock(Script {
        endorse_delay: Duration::from_secs(30),
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let timeouts = Timeouts {
        endorse: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let gw = Gateway::new(
        connector(vec![PeerEndpoint::new(addr.to_string())], None),
        p.user.clone(),
        "gxchannel",
    )
    .with_timeouts(timeouts);
    let proposal = gw.new_proposal(&gw.proposal("gx", "CreateUser")).unwrap();
    let err = tokio::time::timeout(LIMIT, gw.endorse(&proposal))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.grpc_code(),
        Some(tonic::Code::DeadlineExceeded),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    // Evaluate keeps its own (default) deadline and is unaffected.
    assert!(gw.evaluate(&gw.proposal("gx", "GetUser")).await.is_ok());
    peer.stop.cancel();
}

#[tokio::test]
async fn invalid_commit_codes_become_commit_errors() {
    let p = pki();
    let peer = mock(Script {
        commit_code: protos::TxValidationCode::MvccReadConflict as i32,
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let gw = Gateway::new(
        connector(vec![PeerEndpoint::new(addr.to_string())], None),
        p.user.clone(),
        "gxchannel",
    );
    let err = gw
        .submit_transaction(&gw.proposal("gx", "TransferTokens"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GatewayError::Commit {
                code: 11,
                block_number: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Reendorse);
    peer.script.lock().unwrap().commit_code = protos::TxValidationCode::DuplicateTxid as i32;
    let err = gw
        .submit_transaction(&gw.proposal("gx", "TransferTokens"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::AlreadyCommitted);
    peer.stop.cancel();
}

#[tokio::test]
async fn a_signature_from_the_wrong_key_is_refused_by_the_peer() {
    let p = pki();
    let peer = mock(Script::default());
    let addr = serve(peer.clone(), Tls::Off).await;
    let impostor =
        SigningIdentity::new(p.user.identity().clone(), Arc::new(P256Signer::generate()));
    let gw = Gateway::new(
        connector(vec![PeerEndpoint::new(addr.to_string())], None),
        impostor,
        "gxchannel",
    );
    let proposal = gw.new_proposal(&gw.proposal("gx", "CreateUser")).unwrap();
    let err = gw.endorse(&proposal).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::PermissionDenied));
    assert_eq!(err.class(), ErrorClass::Permanent);
    peer.stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// Block stream

fn chain(n: u64) -> Vec<common::Block> {
    let mut prev = Vec::new();
    let mut out = Vec::new();
    for number in 0..n {
        let data: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let ch = common::ChannelHeader {
                    r#type: common::HeaderType::Message as i32,
                    channel_id: "gxchannel".into(),
                    tx_id: format!("tx-{number}-{i}"),
                    ..Default::default()
                };
                let payload = common::Payload {
                    header: Some(common::Header {
                        channel_header: ch.encode_to_vec(),
                        signature_header: Vec::new(),
                    }),
                    data: vec![],
                };
                common::Envelope {
                    payload: payload.encode_to_vec(),
                    signature: vec![],
                }
                .encode_to_vec()
            })
            .collect();
        let header = common::BlockHeader {
            number,
            previous_hash: prev.clone(),
            data_hash: block_data_hash(&data).to_vec(),
        };
        prev = block_header_hash(&header).to_vec();
        out.push(common::Block {
            header: Some(header),
            data: Some(common::BlockData { data }),
            metadata: Some(common::BlockMetadata {
                metadata: vec![vec![], vec![], vec![0, 0], vec![], vec![]],
            }),
        });
    }
    out
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        max_attempts: Some(20),
        ..Backoff::default()
    }
}

#[tokio::test]
async fn stream_reconnects_resumes_and_verifies() {
    let p = pki();
    let peer = mock(Script {
        blocks: chain(8),
        drop_after: Some(3),
        drops_left: 2,
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Server(&p)).await;
    let c = connector(vec![peer_endpoint(addr)], Some(tls_opts(&p, false)));
    let mut cfg = BlockStreamConfig::new("gxchannel", 0);
    cfg.backoff = fast_backoff();
    let cancel = CancellationToken::new();
    let mut stream = BlockStream::new(c, p.user.clone(), cfg, cancel.clone());
    let mut numbers = Vec::new();
    while numbers.len() < 8 {
        let b = tokio::time::timeout(LIMIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.transactions.len(), 2);
        assert_eq!(b.transactions[0].tx_id, format!("tx-{}-0", b.number));
        numbers.push(b.number);
    }
    assert_eq!(numbers, (0..8).collect::<Vec<_>>());
    assert_eq!(stream.next_block_number(), 8);
    // Dropped after blocks 0..3 and 3..6: resumed exactly after the last block yielded.
    assert_eq!(peer.script.lock().unwrap().seeks, vec![0, 3, 6]);

    // Cancellation ends the stream cleanly while it waits for block 8.
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c2.cancel();
    });
    assert!(
        tokio::time::timeout(LIMIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    peer.stop.cancel();
}

#[tokio::test]
async fn stream_starts_from_a_checkpoint_and_checks_its_hash() {
    let p = pki();
    let blocks = chain(5);
    let hash2 = block_header_hash(blocks[2].header.as_ref().unwrap()).to_vec();
    let peer = mock(Script {
        blocks,
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let c = connector(vec![PeerEndpoint::new(addr.to_string())], None);

    let mut cfg = BlockStreamConfig::new("gxchannel", 3);
    cfg.previous_hash = Some(hash2);
    let mut s = BlockStream::new(c.clone(), p.user.clone(), cfg, CancellationToken::new());
    assert_eq!(s.next().await.unwrap().unwrap().number, 3);
    assert_eq!(s.next().await.unwrap().unwrap().number, 4);

    let mut cfg = BlockStreamConfig::new("gxchannel", 3);
    cfg.previous_hash = Some(vec![0; 32]);
    let mut s = BlockStream::new(c, p.user.clone(), cfg, CancellationToken::new());
    let err = s.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Block(BlockError::ChainBroken { number: 3, .. })
        ),
        "{err}"
    );
    assert!(matches!(
        s.next().await.unwrap_err(),
        StreamError::Terminated(_)
    ));
    peer.stop.cancel();
}

#[tokio::test]
async fn stream_detects_a_broken_chain_and_bad_data_hash() {
    let p = pki();
    let mut blocks = chain(4);
    blocks[2].header.as_mut().unwrap().previous_hash = vec![7; 32];
    let peer = mock(Script {
        blocks,
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let c = connector(vec![PeerEndpoint::new(addr.to_string())], None);
    let mut s = BlockStream::new(
        c.clone(),
        p.user.clone(),
        BlockStreamConfig::new("gxchannel", 0),
        CancellationToken::new(),
    );
    assert_eq!(s.next().await.unwrap().unwrap().number, 0);
    assert_eq!(s.next().await.unwrap().unwrap().number, 1);
    let err = s.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Block(BlockError::ChainBroken { number: 2, .. })
        ),
        "{err}"
    );
    peer.stop.cancel();

    let mut blocks = chain(2);
    blocks[1]
        .data
        .as_mut()
        .unwrap()
        .data
        .push(b"smuggled".to_vec());
    blocks[1].metadata.as_mut().unwrap().metadata[2].push(0);
    let peer = mock(Script {
        blocks,
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let c = connector(vec![PeerEndpoint::new(addr.to_string())], None);
    let mut s = BlockStream::new(
        c,
        p.user.clone(),
        BlockStreamConfig::new("gxchannel", 0),
        CancellationToken::new(),
    );
    assert_eq!(s.next().await.unwrap().unwrap().number, 0);
    let err = s.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Block(BlockError::DataHashMismatch { number: 1, .. })
        ),
        "{err}"
    );
    peer.stop.cancel();
}

#[tokio::test]
async fn stream_refusal_is_not_retried() {
    let p = pki();
    let peer = mock(Script {
        blocks: chain(2),
        ..Script::default()
    });
    let addr = serve(peer.clone(), Tls::Off).await;
    let c = connector(vec![PeerEndpoint::new(addr.to_string())], None);
    let impostor =
        SigningIdentity::new(p.user.identity().clone(), Arc::new(P256Signer::generate()));
    let mut cfg = BlockStreamConfig::new("gxchannel", 0);
    cfg.backoff = fast_backoff();
    let mut s = BlockStream::new(c, impostor, cfg, CancellationToken::new());
    let err = tokio::time::timeout(LIMIT, s.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StreamError::Refused(ref m) if m.contains("FORBIDDEN")),
        "{err}"
    );
    assert_eq!(peer.script.lock().unwrap().seeks.len(), 0);
    peer.stop.cancel();
}

#[tokio::test]
async fn stream_gives_up_after_bounded_attempts_when_no_peer_answers() {
    let p = pki();
    let c = connector(vec![PeerEndpoint::new(dead_addr().to_string())], None);
    let mut cfg = BlockStreamConfig::new("gxchannel", 0);
    cfg.backoff = Backoff {
        max_attempts: Some(3),
        ..fast_backoff()
    };
    let mut s = BlockStream::new(c, p.user.clone(), cfg, CancellationToken::new());
    let err = tokio::time::timeout(LIMIT, s.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StreamError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
}
