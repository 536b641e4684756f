//! The shim protocol's own tests: the package layout, mutual TLS, the peer side's range
//! queries and refusals, and property tests of both ends' message handling (arbitrary and
//! malformed ChaincodeMessages: no panic, bounded output, every session ends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::client::{self, RANGE_BATCH, Transport};
use super::package::{self, Connection};
use super::{TxKey, message, server};
use crate::ledger::{Height, LedgerError, VersionedValue};
use crate::msp::Member;
use crate::peer::{Simulator, StateReader};
use crate::tests::{ORG1, fast, signer, start_net};
use gxd_fabric::proto::protos::chaincode_message::Type;
use gxd_fabric::proto::protos::{
    ChaincodeMessage, GetState, GetStateByRange, PutState, QueryResponse, QueryStateClose,
    QueryStateNext, Response, SignedProposal,
};

fn connection(tls: bool) -> Connection {
    Connection {
        address: "gx-chaincode.org1.example.com:9999".to_owned(),
        dial_timeout: "10s".to_owned(),
        tls_required: tls,
        client_auth_required: tls,
        client_key: tls
            .then(|| "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n".to_owned()),
        client_cert: tls
            .then(|| "-----BEGIN CERTIFICATE-----\nc\n-----END CERTIFICATE-----\n".to_owned()),
        root_cert: tls
            .then(|| "-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n".to_owned()),
    }
}

#[test]
fn the_package_has_fabrics_ccaas_layout_and_id() {
    for tls in [false, true] {
        let bytes = package::build("gx_1.0", &connection(tls)).unwrap();
        // Outer archive: exactly metadata.json then code.tar.gz, regular files 0100644.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let headers: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            headers,
            vec![
                ("metadata.json".to_owned(), 0o100644, 0),
                ("code.tar.gz".to_owned(), 0o100644, 0)
            ]
        );
        let entries = package::read_tar_gz(&bytes).unwrap();
        let metadata: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
        assert_eq!(
            metadata,
            serde_json::json!({"type": "ccaas", "label": "gx_1.0"})
        );
        let code = package::read_tar_gz(&entries[1].1).unwrap();
        assert_eq!(code.len(), 1);
        assert_eq!(code[0].0, "connection.json");
        let conn: serde_json::Value = serde_json::from_slice(&code[0].1).unwrap();
        assert_eq!(conn["address"], "gx-chaincode.org1.example.com:9999");
        assert_eq!(conn["dial_timeout"], "10s");
        assert_eq!(conn["tls_required"], tls);
        assert_eq!(conn["client_auth_required"], tls);
        for field in ["client_key", "client_cert", "root_cert"] {
            assert_eq!(conn.get(field).is_some(), tls, "{field}");
        }
        if tls {
            assert!(
                conn["root_cert"]
                    .as_str()
                    .unwrap()
                    .starts_with("-----BEGIN CERTIFICATE-----")
            );
        }
        // Round trip, and the id is label:sha256(file), the same for the same inputs.
        let (meta, parsed) = package::read(&bytes).unwrap();
        assert_eq!(
            (meta.kind.as_str(), meta.label.as_str()),
            ("ccaas", "gx_1.0")
        );
        assert_eq!(parsed, connection(tls));
        let again = package::build("gx_1.0", &connection(tls)).unwrap();
        assert_eq!(bytes, again, "deterministic bytes");
        let id = package::package_id("gx_1.0", &bytes);
        assert_eq!(
            id,
            format!("gx_1.0:{}", hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(id.len(), "gx_1.0:".len() + 64);
    }
    for bad in ["", "-gx", "gx 1", "gx/1", "gx:1"] {
        assert!(package::build(bad, &connection(false)).is_err(), "{bad:?}");
    }
    let mut c = connection(false);
    c.tls_required = true;
    assert!(package::build("gx", &c).is_err(), "TLS without a root cert");
    c = connection(false);
    c.dial_timeout = "ten".into();
    assert!(package::build("gx", &c).is_err(), "bad duration");
    assert!(package::read(b"not a package").is_err());
    assert_eq!(
        connection(false).dial_timeout().unwrap(),
        Duration::from_secs(10)
    );
}

/// Test PKI: a CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    other_client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |names: Vec<String>, issuer: &Issuer<'_, &KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer);
    let client = leaf(vec!["peer0.org1.example.com".into()], &issuer);
    // A client certificate from a CA the chaincode does not trust.
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_issuer = Issuer::from_params(&other_params, &other_key);
    let other_client = leaf(vec!["intruder".into()], &other_issuer);
    Pki {
        ca_pem: ca.pem(),
        server,
        client,
        other_client,
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_peers_with_a_trusted_client_certificate() {
    let pki = pki();
    let server = server::start(server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        chaincode_id: "gx_1.0:tls".into(),
        tls: Some(server::ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        }),
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    let external = |client: Option<&(String, String)>| {
        let mut c = client::ExternalConfig::new(addr.to_string(), "gx_1.0:tls");
        c.dial_timeout = Duration::from_secs(5);
        c.tls = Some(client::ClientTls {
            root_cert_pem: pki.ca_pem.clone().into_bytes(),
            client_cert_pem: client.map(|c| c.0.clone().into_bytes()),
            client_key_pem: client.map(|c| c.1.clone().into_bytes()),
        });
        c
    };
    for (client, admitted) in [
        (Some(&pki.client), true),
        (None, false),
        (Some(&pki.other_client), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut net = start_net(fast(dir.path()).with_external_chaincode(external(client))).await;
        let admin = signer(&net.paths, ORG1, "Admin");
        let result = net.endorse(&admin, &["Bootstrap", "treasury", "10"]).await;
        match (admitted, result) {
            (true, Ok((env, tx_id))) => {
                net.submit(&env, &tx_id).await.unwrap();
                assert_eq!(net.status(&admin, &tx_id).await.0, 0);
                assert_eq!(net.balance(&admin, "treasury").await, "10");
            }
            (false, Err(e)) => {
                let text = format!("{e:?}");
                assert!(text.contains("chaincode"), "{text}");
            }
            (admitted, other) => panic!("admitted={admitted}: {other:?}"),
        }
        net.handle.shutdown().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_chaincode_that_is_down_fails_endorsement_clearly_then_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ext = client::ExternalConfig::new(addr.to_string(), "gx_1.0:x");
    ext.dial_timeout = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path()).with_external_chaincode(ext)).await;
    let admin = signer(&net.paths, ORG1, "Admin");
    let err = net
        .endorse(&admin, &["Bootstrap", "treasury", "10"])
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("could not connect to chaincode"),
        "{err:?}"
    );
    // A chaincode registering under another id is refused, naming both.
    let wrong = server::start(server::ServerConfig {
        listen: addr,
        chaincode_id: "gx_2.0:y".into(),
        tls: None,
    })
    .await
    .unwrap();
    let err = net
        .endorse(&admin, &["Bootstrap", "treasury", "10"])
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("gx_2.0:y") && text.contains("gx_1.0:x"),
        "{text}"
    );
    wrong.shutdown().await.unwrap();
    let right = server::start(server::ServerConfig {
        listen: addr,
        chaincode_id: "gx_1.0:x".into(),
        tls: None,
    })
    .await
    .unwrap();
    let (env, tx_id) = net
        .endorse(&admin, &["Bootstrap", "treasury", "10"])
        .await
        .unwrap();
    net.submit(&env, &tx_id).await.unwrap();
    assert_eq!(net.status(&admin, &tx_id).await.0, 0);
    // The chaincode restarts: the peer re-opens the stream on the next transaction.
    right.shutdown().await.unwrap();
    let again = server::start(server::ServerConfig {
        listen: addr,
        chaincode_id: "gx_1.0:x".into(),
        tls: None,
    })
    .await
    .unwrap();
    let mut ok = false;
    for _ in 0..3 {
        if net
            .evaluate(&admin, &["GetWallet", "treasury"])
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the peer reconnects after the chaincode restarted");
    net.handle.shutdown().await.unwrap();
    again.shutdown().await.unwrap();
}

/// World state in memory.
#[derive(Default)]
struct MemState(BTreeMap<String, VersionedValue>);

impl StateReader for MemState {
    fn read(&self, _: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError> {
        Ok(self.0.get(key).cloned())
    }
    fn range(
        &self,
        _: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
        Ok(self
            .0
            .range(start.to_owned()..)
            .take_while(|(k, _)| end.is_empty() || k.as_str() < end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// User1@org1 of a devnet's material: its validated member and a TRANSACTION it signed
/// (`CreateUser`, txid `tx1`) that really runs GX on the chaincode side.
fn fixture() -> &'static (tempfile::TempDir, Member, ChaincodeMessage) {
    static FIXTURE: OnceLock<(tempfile::TempDir, Member, ChaincodeMessage)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        crate::crypto::ensure_material(dir.path()).unwrap();
        let material = crate::crypto::load_material(dir.path()).unwrap();
        let msp = crate::msp::MspManager::new(material.ca_certs()).unwrap();
        let paths = crate::crypto::DevnetPaths::new(dir.path());
        let user = signer(&paths, ORG1, "User1");
        let m = msp.deserialize(user.creator()).unwrap();
        let args = ["CreateUser", "zoe", "{}"];
        let (sp, _) = crate::tests::signed_proposal(&user, "gxchannel", "gx", &args);
        let input = gxd_fabric::proto::protos::ChaincodeInput {
            args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            ..Default::default()
        };
        let tx = ChaincodeMessage {
            proposal: Some(sp),
            ..message(Type::Transaction, &key(), input.encode_to_vec())
        };
        (dir, m, tx)
    })
}

fn member() -> &'static Member {
    &fixture().1
}

/// A chaincode that says what its script says, and records the peer's answers.
struct Script {
    inbound: VecDeque<ChaincodeMessage>,
    answers: Vec<ChaincodeMessage>,
}

impl Transport for Script {
    fn recv(&mut self) -> Result<ChaincodeMessage, String> {
        self.inbound
            .pop_front()
            .ok_or_else(|| "script ended".to_owned())
    }
    fn send(&mut self, msg: ChaincodeMessage) -> Result<(), String> {
        self.answers.push(msg);
        Ok(())
    }
}

fn key() -> TxKey {
    TxKey {
        channel_id: "gxchannel".into(),
        txid: "tx1".into(),
    }
}

fn request(ty: Type, payload: impl Message) -> ChaincodeMessage {
    message(ty, &key(), payload.encode_to_vec())
}

fn state(n: usize) -> MemState {
    let mut s = MemState::default();
    for i in 0..n {
        s.0.insert(
            format!("k{i:04}"),
            VersionedValue {
                version: Height {
                    block: 1,
                    tx: i as u64,
                },
                value: format!("v{i}").into_bytes(),
            },
        );
    }
    s
}

#[test]
fn the_peer_side_pages_range_queries_and_records_reads_writes_and_deletes() {
    let st = state(250);
    let mut sim = Simulator::new(&st, "gx".into(), member());
    let completed = ChaincodeMessage {
        chaincode_event: Some(gxd_fabric::proto::protos::ChaincodeEvent {
            event_name: "Done".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }),
        ..request(
            Type::Completed,
            Response {
                status: 200,
                message: String::new(),
                payload: b"ok".to_vec(),
            },
        )
    };
    let mut script = Script {
        inbound: VecDeque::from(vec![
            request(
                Type::GetState,
                GetState {
                    key: "k0001".into(),
                    collection: String::new(),
                },
            ),
            request(
                Type::GetState,
                GetState {
                    key: "absent".into(),
                    collection: String::new(),
                },
            ),
            request(
                Type::GetStateByRange,
                GetStateByRange {
                    start_key: "k".into(),
                    end_key: String::new(),
                    ..Default::default()
                },
            ),
            request(Type::QueryStateNext, QueryStateNext { id: "1".into() }),
            request(Type::QueryStateNext, QueryStateNext { id: "1".into() }),
            request(Type::QueryStateNext, QueryStateNext { id: "1".into() }),
            request(Type::QueryStateClose, QueryStateClose { id: "1".into() }),
            request(
                Type::PutState,
                PutState {
                    key: "new".into(),
                    value: b"x".to_vec(),
                    collection: String::new(),
                },
            ),
            request(
                Type::PutState,
                PutState {
                    key: String::new(),
                    value: b"x".to_vec(),
                    collection: String::new(),
                },
            ),
            request(
                Type::GetState,
                GetState {
                    key: "k1".into(),
                    collection: "private".into(),
                },
            ),
            request(
                Type::DelState,
                gxd_fabric::proto::protos::DelState {
                    key: "k0002".into(),
                    collection: String::new(),
                },
            ),
            message(Type::GetQueryResult, &key(), Vec::new()),
            message(Type::GetState, &key(), vec![0xff, 0xff, 0xff]),
            completed,
        ]),
        answers: Vec::new(),
    };
    let response = client::drive(&mut sim, &key(), &mut script).unwrap();
    assert_eq!(response.payload, b"ok");
    let a = &script.answers;
    assert_eq!(a.len(), 13);
    assert_eq!(
        (a[0].r#type, a[0].payload.as_slice()),
        (Type::Response as i32, &b"v1"[..])
    );
    assert_eq!(
        (a[1].r#type, a[1].payload.len()),
        (Type::Response as i32, 0),
        "absent: empty"
    );
    let page = |m: &ChaincodeMessage| QueryResponse::decode(m.payload.as_slice()).unwrap();
    let (p1, p2, p3) = (page(&a[2]), page(&a[3]), page(&a[4]));
    assert_eq!((p1.results.len(), p1.has_more), (RANGE_BATCH, true));
    assert_eq!((p2.results.len(), p2.has_more), (RANGE_BATCH, true));
    assert_eq!((p3.results.len(), p3.has_more), (50, false));
    let kv =
        gxd_fabric::proto::QueryResultKv::decode(p1.results[0].result_bytes.as_slice()).unwrap();
    assert_eq!(
        (kv.namespace.as_str(), kv.key.as_str(), kv.value.as_slice()),
        ("gx", "k0000", &b"v0"[..])
    );
    assert_eq!(
        a[5].r#type,
        Type::Error as i32,
        "the exhausted iterator is gone"
    );
    assert_eq!(
        a[6].r#type,
        Type::Response as i32,
        "closing an unknown iterator is fine"
    );
    assert_eq!(a[7].r#type, Type::Response as i32);
    for (i, needle) in [
        (8, "empty"),
        (9, "private data"),
        (11, "GET_QUERY_RESULT"),
        (12, "GET_STATE"),
    ] {
        assert_eq!(a[i].r#type, Type::Error as i32, "{i}");
        let text = String::from_utf8_lossy(&a[i].payload).into_owned();
        assert!(text.contains(needle), "{i}: {text}");
    }
    assert_eq!(a[10].r#type, Type::Response as i32);
    // The read-write set: two reads, one exhausted range of 250 raw reads, a write and a delete.
    let rw =
        gxd_fabric::proto::rwset::TxReadWriteSet::decode(sim.rwset_bytes().as_slice()).unwrap();
    let kv = gxd_fabric::proto::kvrwset::KvrwSet::decode(rw.ns_rwset[0].rwset.as_slice()).unwrap();
    assert_eq!(kv.reads.len(), 2);
    assert!(
        kv.reads
            .iter()
            .any(|r| r.key == "absent" && r.version.is_none())
    );
    assert_eq!(kv.range_queries_info.len(), 1);
    let rq = &kv.range_queries_info[0];
    assert!(rq.itr_exhausted);
    match &rq.reads_info {
        Some(gxd_fabric::proto::kvrwset::range_query_info::ReadsInfo::RawReads(r)) => {
            assert_eq!(r.kv_reads.len(), 250)
        }
        other => panic!("{other:?}"),
    }
    let writes: Vec<(&str, bool)> = kv
        .writes
        .iter()
        .map(|w| (w.key.as_str(), w.is_delete))
        .collect();
    assert_eq!(writes, vec![("k0002", true), ("new", false)]);
}

fn arb_message() -> impl Strategy<Value = ChaincodeMessage> {
    let ty = prop_oneof![0i32..26, Just(-1), Just(99)];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        Just(
            GetState {
                key: "k0001".into(),
                collection: String::new()
            }
            .encode_to_vec()
        ),
        Just(
            GetStateByRange {
                start_key: "k".into(),
                end_key: String::new(),
                ..Default::default()
            }
            .encode_to_vec()
        ),
        Just(QueryStateNext { id: "1".into() }.encode_to_vec()),
        Just(
            PutState {
                key: "a".into(),
                value: vec![1],
                collection: String::new()
            }
            .encode_to_vec()
        ),
    ];
    let txid = prop_oneof![
        Just(String::new()),
        Just("tx1".to_owned()),
        Just("tx2".to_owned())
    ];
    let proposal = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32));
    let arbitrary =
        (ty, payload, txid, proposal).prop_map(|(ty, payload, txid, proposal)| ChaincodeMessage {
            r#type: ty,
            payload,
            txid,
            channel_id: "gxchannel".into(),
            proposal: proposal.map(|p| SignedProposal {
                proposal_bytes: p,
                signature: Vec::new(),
            }),
            ..Default::default()
        });
    // Now and then a real signed transaction (txid tx1), so GX runs and the arbitrary
    // RESPONSE/ERROR messages that follow answer its GET_STATE/PUT_STATE requests.
    prop_oneof![6 => arbitrary, 1 => Just(fixture().2.clone())]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Peer side: whatever a chaincode sends for a transaction, the peer answers at most
    /// once per message, never panics, and the transaction ends.
    #[test]
    fn the_peer_side_survives_any_chaincode(msgs in proptest::collection::vec(arb_message(), 0..40)) {
        let st = state(300);
        let mut sim = Simulator::new(&st, "gx".into(), member());
        let n = msgs.len();
        let mut script = Script { inbound: msgs.into(), answers: Vec::new() };
        let _ = client::drive(&mut sim, &key(), &mut script);
        prop_assert!(script.answers.len() <= n);
        prop_assert!(script.answers.iter().all(|a| a.r#type == Type::Response as i32 || a.r#type == Type::Error as i32));
    }

    /// Chaincode side: any message sequence from a "peer" — with or without the handshake —
    /// ends the session without a panic, with output bounded by the input.
    #[test]
    fn the_chaincode_side_survives_any_peer(
        handshake in any::<bool>(),
        msgs in proptest::collection::vec(arb_message(), 0..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut inbound = Vec::new();
        if handshake {
            let none = TxKey { channel_id: String::new(), txid: String::new() };
            inbound.push(message(Type::Registered, &none, Vec::new()));
            inbound.push(message(Type::Ready, &none, Vec::new()));
        }
        inbound.extend(msgs);
        let n = inbound.len();
        let sent = rt.block_on(async move {
            let (out, mut rx) = mpsc::channel(super::SEND_QUEUE);
            let drain = tokio::spawn(async move {
                let mut sent = Vec::new();
                while let Some(m) = rx.recv().await {
                    sent.push(m);
                }
                sent
            });
            let stream = futures::stream::iter(inbound.into_iter().map(Ok)).boxed();
            tokio::time::timeout(Duration::from_secs(20), server::run_session("cc".into(), stream, out, tokio_util::sync::CancellationToken::new()))
                .await
                .expect("the session ends");
            tokio::time::timeout(Duration::from_secs(20), drain).await.expect("transactions end").unwrap()
        });
        prop_assert_eq!(sent[0].r#type, Type::Register as i32);
        prop_assert!(sent.len() <= 1 + 2 * n, "{} messages out for {} in", sent.len(), n);
    }
}

/// The chaincode side, message by message: the handshake, clear ERRORs for malformed
/// transactions, a duplicate in flight and an unknown type, and a real transaction's round
/// trip (GET_STATE → RESPONSE → COMPLETED with GX's status-500 error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaincode_side_answers_each_message_as_the_shims_do() {
    use gxd_fabric::proto::protos::{ChaincodeId, ChaincodeInput};
    use tokio_stream::wrappers::ReceiverStream;
    let dir = tempfile::tempdir().unwrap();
    crate::crypto::ensure_material(dir.path()).unwrap();
    let paths = crate::crypto::DevnetPaths::new(dir.path());
    let user = signer(&paths, ORG1, "User1");

    let (peer, inbound) = mpsc::channel::<ChaincodeMessage>(16);
    let (out, mut from_cc) = mpsc::channel(64);
    let session = tokio::spawn(server::run_session(
        "gx_1.0:abc".into(),
        ReceiverStream::new(inbound).map(Ok),
        out,
        tokio_util::sync::CancellationToken::new(),
    ));
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), from_cc.recv())
            .await
            .unwrap()
            .unwrap()
    };
    let register = next().await;
    assert_eq!(register.r#type, Type::Register as i32);
    assert_eq!(
        ChaincodeId::decode(register.payload.as_slice())
            .unwrap()
            .name,
        "gx_1.0:abc"
    );
    let none = TxKey {
        channel_id: String::new(),
        txid: String::new(),
    };
    peer.send(message(Type::Registered, &none, Vec::new()))
        .await
        .unwrap();
    peer.send(message(Type::Ready, &none, Vec::new()))
        .await
        .unwrap();

    let tx = |txid: &str| TxKey {
        channel_id: "gxchannel".into(),
        txid: txid.into(),
    };
    let text = |m: &ChaincodeMessage| String::from_utf8_lossy(&m.payload).into_owned();
    peer.send(message(Type::Transaction, &tx("t1"), vec![0xff, 0xff]))
        .await
        .unwrap();
    let m = next().await;
    assert_eq!((m.r#type, m.txid.as_str()), (Type::Error as i32, "t1"));
    assert!(
        text(&m).contains("failed to unmarshal input"),
        "{}",
        text(&m)
    );

    let input = |args: &[&str]| {
        ChaincodeInput {
            args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    peer.send(message(
        Type::Transaction,
        &tx("t2"),
        input(&["GetWallet", "x"]),
    ))
    .await
    .unwrap();
    let m = next().await;
    assert_eq!((m.r#type, m.txid.as_str()), (Type::Error as i32, "t2"));
    assert!(text(&m).contains("no signed proposal"), "{}", text(&m));

    peer.send(message(Type::Transaction, &tx("t3"), Vec::new()).clone())
        .await
        .unwrap();
    let m = next().await;
    assert!(
        m.r#type == Type::Error as i32,
        "an empty input has no function name"
    );

    peer.send(ChaincodeMessage {
        r#type: 99,
        ..message(Type::Undefined, &tx("t5"), Vec::new())
    })
    .await
    .unwrap();
    let m = next().await;
    assert_eq!(m.r#type, Type::Error as i32);
    assert!(
        text(&m).contains("unknown type 99") && text(&m).contains("ready"),
        "{}",
        text(&m)
    );

    // A real transaction: the creator from the signed proposal, state over the stream.
    let (sp, _) = crate::tests::signed_proposal(&user, "gxchannel", "gx", &["GetWallet", "alice"]);
    let real = ChaincodeMessage {
        proposal: Some(sp),
        ..message(Type::Transaction, &tx("t4"), input(&["GetWallet", "alice"]))
    };
    peer.send(real.clone()).await.unwrap();
    let get = next().await;
    assert_eq!(
        (get.r#type, get.txid.as_str()),
        (Type::GetState as i32, "t4")
    );
    assert!(
        GetState::decode(get.payload.as_slice())
            .unwrap()
            .key
            .contains("alice")
    );
    // The same key again while t4 is in flight: refused, t4 goes on.
    peer.send(real).await.unwrap();
    let m = next().await;
    assert_eq!((m.r#type, m.txid.as_str()), (Type::Error as i32, "t4"));
    assert!(
        text(&m).contains("duplicate transaction ID"),
        "{}",
        text(&m)
    );
    peer.send(message(Type::Response, &tx("t4"), Vec::new()))
        .await
        .unwrap();
    let done = next().await;
    assert_eq!(
        (done.r#type, done.txid.as_str()),
        (Type::Completed as i32, "t4")
    );
    let r = Response::decode(done.payload.as_slice()).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.message.contains("alice"), "{}", r.message);

    drop(peer);
    let end = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .unwrap()
        .unwrap();
    assert!(end.contains("closed"), "{end}");
}
