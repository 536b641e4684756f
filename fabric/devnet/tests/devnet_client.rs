//! gxd's own Fabric client against the devnet peer, in process: every GX transaction and
//! query, the error cases (chaincode error at endorsement, MVCC conflict at commit, duplicate
//! transaction id, wrong signing key, unknown CA), and the block stream resuming across a
//! devnet restart with a verified hash chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gxd_devnet::{self as devnet, DevnetConfig, DevnetHandle, DevnetPaths};
use gxd_fabric::block::ParsedBlock;
use gxd_fabric::client::{ErrorClass, Gateway, GatewayError, Stage};
use gxd_fabric::identity::{P256Signer, SigningIdentity};
use gxd_fabric::proto::protos::TxValidationCode;
use gxd_fabric::stream::{Backoff, BlockStream, BlockStreamConfig};
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};
use gxd_fabric::tx::ProposalSpec;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ORG1: &str = "org1.example.com";
const LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path, listen: SocketAddr) -> DevnetHandle {
    let config = DevnetConfig::new(dir)
        .with_listen(listen)
        .with_batch(10, Duration::from_millis(50));
    devnet::start(config).await.unwrap()
}

fn connector(paths: &DevnetPaths, addr: SocketAddr) -> Arc<PeerConnector> {
    let ca_pem = std::fs::read(paths.tls_ca_cert(ORG1)).unwrap();
    let endpoint = PeerEndpoint::new(addr.to_string()).with_server_name(devnet::PEER_HOST);
    let tls = TlsOptions {
        ca_pem,
        ..TlsOptions::default()
    };
    Arc::new(PeerConnector::new(ConnectionConfig::new(vec![endpoint], Some(tls))).unwrap())
}

fn user(paths: &DevnetPaths, name: &str) -> SigningIdentity {
    SigningIdentity::from_msp_dir("Org1MSP", &paths.user(ORG1, name)).unwrap()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

async fn wallet_balance(gw: &Gateway, id: &str) -> String {
    let w = json(
        &gw.evaluate(&gw.proposal("gx", "GetWallet").with_args([id]))
            .await
            .unwrap(),
    );
    w["balance"].as_str().unwrap().to_owned()
}

struct Net {
    _dir: tempfile::TempDir,
    paths: DevnetPaths,
    handle: DevnetHandle,
    admin: Gateway,
    client: Gateway,
}

async fn net() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let handle = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let paths = handle.paths().clone();
    let c = connector(&paths, handle.local_addr());
    let admin = Gateway::new(c.clone(), user(&paths, "Admin"), devnet::DEFAULT_CHANNEL);
    let client = Gateway::new(c, user(&paths, "User1"), devnet::DEFAULT_CHANNEL);
    Net {
        _dir: dir,
        paths,
        handle,
        admin,
        client,
    }
}

/// Bootstraps the `treasury` wallet with `amount` (as `admin`) and creates `users` (as `gw`).
async fn seed(admin: &Gateway, gw: &Gateway, amount: &str, users: &[&str]) {
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", amount]),
        )
        .await
        .unwrap();
    for u in users {
        gw.submit_transaction(&gw.proposal("gx", "CreateUser").with_args([*u, "{}"]))
            .await
            .unwrap();
    }
}

/// `TransferTokens` `id`: `amount` from the treasury to `to`.
fn transfer(gw: &Gateway, id: &str, to: &str, amount: &str) -> ProposalSpec {
    gw.proposal("gx", "TransferTokens")
        .with_args([id, "treasury", to, amount, ""])
}

/// Reads blocks from `from` until `until` returns true for a block (bounded by LIMIT).
async fn read_blocks_until(
    gw: &Gateway,
    from: u64,
    mut until: impl FnMut(&ParsedBlock) -> bool,
) -> Vec<ParsedBlock> {
    let cancel = CancellationToken::new();
    let mut s = BlockStream::new(
        gw.connector().clone(),
        gw.identity().clone(),
        BlockStreamConfig::new(gw.channel(), from),
        cancel.clone(),
    );
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, async {
        loop {
            let b = s.next().await.unwrap().unwrap();
            let done = until(&b);
            out.push(b);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap();
    cancel.cancel();
    out
}

#[tokio::test]
async fn every_gx_transaction_and_query() {
    let n = net().await;
    let (admin, gw) = (&n.admin, &n.client);

    // Bootstrap needs an admin: refused for User1 at endorsement, accepted for Admin@org1.
    let err = gw
        .submit_transaction(
            &gw.proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000000"]),
        )
        .await
        .unwrap_err();
    assert!(err.is_chaincode_error(), "{err}");
    let boot = admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000000"]),
        )
        .await
        .unwrap();
    assert_eq!(json(&boot.result)["treasuryWalletId"], "treasury");

    for u in ["u1", "u2", "u3"] {
        gw.submit_transaction(
            &gw.proposal("gx", "CreateUser")
                .with_args([u, r#"{"country":"DE","commitment":"abc"}"#]),
        )
        .await
        .unwrap();
    }
    let user = json(
        &gw.evaluate(&gw.proposal("gx", "GetUser").with_args(["u1"]))
            .await
            .unwrap(),
    );
    assert_eq!(user["userId"], "u1");
    assert_eq!(user["walletId"], "u1");

    gw.submit_transaction(
        &gw.proposal("gx", "TransferTokens")
            .with_args(["t1", "treasury", "u1", "100", "first"]),
    )
    .await
    .unwrap();
    assert_eq!(wallet_balance(gw, "u1").await, "100");
    assert_eq!(wallet_balance(gw, "treasury").await, "999900");

    gw.submit_transaction(&gw.proposal("gx", "CreateMultisigWallet").with_args([
        "ms1",
        r#"["u1","u2","u3"]"#,
        "2",
    ]))
    .await
    .unwrap();
    gw.submit_transaction(&transfer(gw, "t2", "ms1", "500"))
        .await
        .unwrap();
    gw.submit_transaction(
        &gw.proposal("gx", "ProposeTransfer")
            .with_args(["p1", "ms1", "u3", "200", "rent"]),
    )
    .await
    .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "ApproveTransfer").with_args(["p1", "u1"]))
        .await
        .unwrap();
    gw.submit_transaction(&gw.proposal("gx", "RejectTransfer").with_args(["p1", "u2"]))
        .await
        .unwrap();
    let pending = json(
        &gw.evaluate(&gw.proposal("gx", "GetProposal").with_args(["p1"]))
            .await
            .unwrap(),
    );
    assert_eq!(pending["status"], "PENDING");
    let last = gw
        .submit_transaction(&gw.proposal("gx", "ApproveTransfer").with_args(["p1", "u3"]))
        .await
        .unwrap();
    assert_eq!(json(&last.result)["executed"], true);
    let done = json(
        &gw.evaluate(&gw.proposal("gx", "GetProposal").with_args(["p1"]))
            .await
            .unwrap(),
    );
    assert_eq!(done["status"], "EXECUTED");
    assert_eq!(wallet_balance(gw, "ms1").await, "300");
    assert_eq!(wallet_balance(gw, "u3").await, "200");

    // Query errors come back as chaincode errors at evaluation.
    let err = gw
        .evaluate(&gw.proposal("gx", "GetWallet").with_args(["nobody"]))
        .await
        .unwrap_err();
    assert_eq!(err.stage(), Stage::Evaluate);
    assert!(err.is_chaincode_error(), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);

    // The blocks carry each transaction once, valid, with its chaincode event.
    let expected = [
        "SystemBootstrapped",
        "UserCreated",
        "UserCreated",
        "UserCreated",
        "TokensTransferred",
        "MultisigWalletCreated",
        "TokensTransferred",
        "TransferProposed",
        "TransferApproved",
        "TransferRejected",
        "TransferApproved",
    ];
    let last_tx = last.tx_id.clone();
    let blocks =
        read_blocks_until(gw, 0, |b| b.transactions.iter().any(|t| t.tx_id == last_tx)).await;
    assert_eq!(blocks[0].number, 0);
    for w in blocks.windows(2) {
        assert_eq!(w[1].previous_hash, w[0].header_hash.to_vec());
    }
    let events: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.chaincode.as_deref() == Some("gx"))
        .map(|t| {
            assert!(t.is_valid(), "tx {} code {}", t.tx_id, t.validation_code);
            assert_eq!(t.creator_msp_id.as_deref(), Some("Org1MSP"));
            assert!(t.timestamp.is_some());
            let ev = t
                .event
                .as_ref()
                .expect("every GX transaction emits one event");
            assert_eq!(ev.tx_id, t.tx_id);
            let _: Value = serde_json::from_slice(&ev.payload).unwrap();
            ev.event_name.clone()
        })
        .collect();
    assert_eq!(events, expected);
    n.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn chaincode_error_fails_at_endorsement_and_reaches_no_block() {
    let n = net().await;
    seed(&n.admin, &n.client, "50", &["u1"]).await;
    let height = n.handle.height();
    let gw = &n.client;
    let proposal = gw.new_proposal(&transfer(gw, "t1", "u1", "51")).unwrap();
    let err = gw.endorse(&proposal).await.unwrap_err();
    assert_eq!(err.stage(), Stage::Endorse);
    assert_eq!(err.tx_id(), proposal.tx_id);
    assert!(err.is_chaincode_error(), "{err}");
    assert!(
        err.chaincode_message()
            .unwrap()
            .contains("insufficient funds"),
        "{err}"
    );
    assert!(!err.details().is_empty());
    assert_eq!(err.class(), ErrorClass::Permanent);
    // Nothing was ordered: a later transaction lands in the very next block.
    let ok = gw
        .submit_transaction(&transfer(gw, "t2", "u1", "50"))
        .await
        .unwrap();
    assert_eq!(ok.block_number, height);
    assert_eq!(wallet_balance(gw, "u1").await, "50");
    n.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn mvcc_conflict_at_commit() {
    let n = net().await;
    seed(&n.admin, &n.client, "1000", &["u1", "u2"]).await;
    let gw = &n.client;
    // Two endorsements against the same state (both read the treasury wallet) ...
    let a = gw.new_proposal(&transfer(gw, "ta", "u1", "10")).unwrap();
    let b = gw.new_proposal(&transfer(gw, "tb", "u2", "20")).unwrap();
    let pa = gw.endorse(&a).await.unwrap();
    let pb = gw.endorse(&b).await.unwrap();
    // ... both submitted: the first commits, the second is invalidated and changes nothing.
    gw.submit(&pa).await.unwrap();
    gw.submit(&pb).await.unwrap();
    let sa = gw.wait_for_commit(pa.tx_id()).await.unwrap();
    assert!(sa.is_valid());
    let err = gw.wait_for_commit(pb.tx_id()).await.unwrap_err();
    match &err {
        GatewayError::Commit { code, tx_id, .. } => {
            assert_eq!(*code, TxValidationCode::MvccReadConflict as i32);
            assert_eq!(tx_id, pb.tx_id());
        }
        other => panic!("expected a commit error, got {other}"),
    }
    assert_eq!(err.class(), ErrorClass::Reendorse);
    assert_eq!(wallet_balance(gw, "u1").await, "10");
    assert_eq!(wallet_balance(gw, "u2").await, "0");
    assert_eq!(wallet_balance(gw, "treasury").await, "990");
    // The block says the same.
    let tb = pb.tx_id().to_owned();
    let blocks =
        read_blocks_until(gw, 0, |blk| blk.transactions.iter().any(|t| t.tx_id == tb)).await;
    let t = blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .find(|t| t.tx_id == tb)
        .unwrap();
    assert_eq!(t.validation(), Some(TxValidationCode::MvccReadConflict));
    // Re-endorsing gives a fresh transaction that commits.
    gw.submit_transaction(&transfer(gw, "tb", "u2", "20"))
        .await
        .unwrap();
    assert_eq!(wallet_balance(gw, "u2").await, "20");
    n.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicate_transaction_id_is_recognised_as_done() {
    let n = net().await;
    seed(&n.admin, &n.client, "1000", &["u1"]).await;
    let gw = &n.client;
    let proposal = gw.new_proposal(&transfer(gw, "t1", "u1", "7")).unwrap();
    let prepared = gw.endorse(&proposal).await.unwrap();
    // Persist and restore, as the outbox does.
    let stored = prepared.to_bytes();
    gw.submit(&prepared).await.unwrap();
    let first = gw.wait_for_commit(prepared.tx_id()).await.unwrap();

    let again = gxd_fabric::client::PreparedTransaction::from_bytes(&stored).unwrap();
    assert_eq!(again.tx_id(), prepared.tx_id());
    gw.submit(&again).await.unwrap();
    // Push a later transaction through so the duplicate's block is certainly committed.
    let marker = gw
        .submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["u2", "{}"]))
        .await
        .unwrap();
    let status = gw.commit_status(prepared.tx_id()).await.unwrap();
    assert!(
        status.is_valid(),
        "CommitStatus keeps reporting the original"
    );
    assert_eq!(status.block_number, first.block_number);
    assert_eq!(wallet_balance(gw, "u1").await, "7");

    let blocks = read_blocks_until(gw, 0, |b| b.number >= marker.block_number).await;
    let copies: Vec<_> = blocks
        .iter()
        .flat_map(|b| b.transactions.iter())
        .filter(|t| t.tx_id == prepared.tx_id())
        .collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].validation(), Some(TxValidationCode::Valid));
    assert_eq!(
        copies[1].validation(),
        Some(TxValidationCode::DuplicateTxid)
    );
    assert_eq!(
        gxd_fabric::client::classify_validation_code(copies[1].validation_code),
        ErrorClass::AlreadyCommitted
    );
    n.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_key_and_unknown_ca_are_refused() {
    let n = net().await;
    let height = n.handle.height();
    let c = n.client.connector().clone();

    // The right certificate, signatures from another key.
    let real = user(&n.paths, "User1");
    let wrong_key = SigningIdentity::new(real.identity().clone(), Arc::new(P256Signer::generate()));
    let gw = Gateway::new(c.clone(), wrong_key, devnet::DEFAULT_CHANNEL);
    let err = gw
        .submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["u9", "{}"]))
        .await
        .unwrap_err();
    assert_eq!(err.stage(), Stage::Endorse, "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let err = gw
        .evaluate(&gw.proposal("gx", "GetWallet").with_args(["treasury"]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");

    // A certificate from a CA that is not a member of the channel, claiming Org1MSP.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ca.org1.example.com");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "User1@org1.example.com");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "client");
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let stranger =
        SigningIdentity::from_pem("Org1MSP", cert.pem().as_bytes(), &key.serialize_pem()).unwrap();
    let gw = Gateway::new(c, stranger, devnet::DEFAULT_CHANNEL);
    let err = gw
        .submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["u8", "{}"]))
        .await
        .unwrap_err();
    assert_eq!(err.stage(), Stage::Endorse, "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let err = gw.commit_status("0000").await.unwrap_err();
    assert_eq!(err.stage(), Stage::CommitStatus);
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");

    // Nothing reached the ledger.
    assert_eq!(n.handle.height(), height);
    n.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn block_stream_resumes_across_a_devnet_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = first.local_addr();
    let paths = first.paths().clone();
    let c = connector(&paths, addr);
    let admin = Gateway::new(c.clone(), user(&paths, "Admin"), devnet::DEFAULT_CHANNEL);
    let gw = Gateway::new(c.clone(), user(&paths, "User1"), devnet::DEFAULT_CHANNEL);
    seed(&admin, &gw, "1000", &["u1"]).await;

    let cancel = CancellationToken::new();
    let mut cfg = BlockStreamConfig::new(devnet::DEFAULT_CHANNEL, 0);
    cfg.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        ..Backoff::default()
    };
    let mut stream = BlockStream::new(c.clone(), gw.identity().clone(), cfg, cancel.clone());
    let height = first.height();
    let mut seen = Vec::new();
    while seen.len() < usize::try_from(height).unwrap() {
        let b = tokio::time::timeout(LIMIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(b);
    }

    // Restart the devnet on the same directory and port while the stream is open.
    first.shutdown().await.unwrap();
    let second = start(dir.path(), addr).await;
    assert_eq!(
        second.height(),
        height,
        "the ledger persists across restarts"
    );
    let committed = gw
        .submit_transaction(&gw.proposal("gx", "CreateUser").with_args(["u2", "{}"]))
        .await
        .unwrap();
    assert_eq!(committed.block_number, height);

    let next = tokio::time::timeout(LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.number, height,
        "resumes right after the last block yielded"
    );
    assert_eq!(
        next.previous_hash,
        seen.last().unwrap().header_hash.to_vec(),
        "chain verified across the restart"
    );
    assert!(
        next.transactions
            .iter()
            .any(|t| t.tx_id == committed.tx_id && t.is_valid())
    );
    cancel.cancel();
    assert!(stream.next().await.unwrap().is_none());
    second.shutdown().await.unwrap();
}
