//! Fidelity of the devnet to a Fabric 2.5 peer where the engine's tests rely on it: the
//! Deliver service's seek semantics and its ACL, the per-RPC answers of the Gateway to an
//! unknown channel, the channel's Readers/Writers policies, and the MSP's refusal of
//! certificates that are no valid NodeOU identity. All through gRPC (tonic), TLS on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::crypto::{DevnetPaths, ORDERER_ORG};
use super::msp::{MspError, MspManager};
use super::tests::{
    Mode, Net, ORG1, bootstrap, fast, in_mode, seek_envelope, signed_proposal, signer, start_net,
};
use super::*;
use gxd_fabric::identity::{Identity, P256Signer, SigningIdentity};
use gxd_fabric::proto::common::SignatureHeader;
use gxd_fabric::proto::common::{self, ChannelHeader, Envelope, Header, HeaderType, Payload};
use gxd_fabric::proto::deliver_response;
use gxd_fabric::proto::gateway::{
    ChaincodeEventsRequest, CommitStatusRequest, EndorseRequest, EvaluateRequest,
    SignedChaincodeEventsRequest, SignedCommitStatusRequest, SubmitRequest,
};
use gxd_fabric::proto::orderer::{
    SeekInfo, SeekNewest, SeekOldest, SeekPosition, SeekSpecified, seek_info, seek_position,
};
use gxd_fabric::proto::{DeliverResponse, error_details};
use gxd_fabric::tx::{compute_tx_id, new_nonce, now_timestamp};

use seek_info::SeekBehavior::{BlockUntilReady, FailIfNotReady};

const ORG2: &str = "org2.example.com";

// ---------------------------------------------------------------------------------------
// Seek envelopes and Deliver streams
// ---------------------------------------------------------------------------------------

fn spec(n: u64) -> Option<SeekPosition> {
    Some(SeekPosition {
        r#type: Some(seek_position::Type::Specified(SeekSpecified { number: n })),
    })
}
fn oldest() -> Option<SeekPosition> {
    Some(SeekPosition {
        r#type: Some(seek_position::Type::Oldest(SeekOldest {})),
    })
}
fn newest() -> Option<SeekPosition> {
    Some(SeekPosition {
        r#type: Some(seek_position::Type::Newest(SeekNewest {})),
    })
}
/// A position present but without a type.
fn untyped() -> Option<SeekPosition> {
    Some(SeekPosition { r#type: None })
}

/// A seek request. `clock_offset`: seconds added to now for the channel-header timestamp,
/// `None` for no timestamp at all.
#[derive(Debug, Clone, Copy)]
struct Seek {
    channel: &'static str,
    start: Option<SeekPosition>,
    stop: Option<SeekPosition>,
    behavior: seek_info::SeekBehavior,
    clock_offset: Option<i64>,
}

impl Seek {
    fn new(start: Option<SeekPosition>, stop: Option<SeekPosition>) -> Self {
        Self {
            channel: DEFAULT_CHANNEL,
            start,
            stop,
            behavior: BlockUntilReady,
            clock_offset: Some(0),
        }
    }
    fn behavior(mut self, b: seek_info::SeekBehavior) -> Self {
        self.behavior = b;
        self
    }
    fn signed(self, s: &SigningIdentity) -> Envelope {
        let nonce = new_nonce();
        let chdr = ChannelHeader {
            r#type: HeaderType::DeliverSeekInfo as i32,
            channel_id: self.channel.to_owned(),
            tx_id: compute_tx_id(&nonce, s.creator()),
            timestamp: self.clock_offset.map(|off| {
                let mut ts = now_timestamp();
                ts.seconds += off;
                ts
            }),
            ..Default::default()
        };
        let shdr = SignatureHeader {
            creator: s.creator().to_vec(),
            nonce,
        };
        let payload = Payload {
            header: Some(Header {
                channel_header: chdr.encode_to_vec(),
                signature_header: shdr.encode_to_vec(),
            }),
            data: SeekInfo {
                start: self.start,
                stop: self.stop,
                behavior: self.behavior as i32,
                ..Default::default()
            }
            .encode_to_vec(),
        }
        .encode_to_vec();
        Envelope {
            signature: s.sign(&payload).unwrap(),
            payload,
        }
    }
}

/// What a Deliver stream sent: a block (its number) or a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Block(u64),
    Status(common::Status),
}

fn got(msg: DeliverResponse) -> Got {
    match msg.r#type.unwrap() {
        deliver_response::Type::Block(b) => Got::Block(b.header.unwrap().number),
        deliver_response::Type::FilteredBlock(b) => Got::Block(b.number),
        deliver_response::Type::Status(s) => Got::Status(common::Status::try_from(s).unwrap()),
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends `envs` on one Deliver (or DeliverFiltered) stream, closes the client's side, and
/// collects everything the server sends until the stream ends.
async fn deliver_all(net: &mut Net, filtered: bool, envs: Vec<Envelope>) -> Vec<Got> {
    deliver_stream(net, filtered, envs, false).await
}

/// [`deliver_all`], but with `keep_open` the client's side stays open, so the stream can only
/// end because the server ended it. Panics if the stream is still open after 10 s.
async fn deliver_stream(
    net: &mut Net,
    filtered: bool,
    envs: Vec<Envelope>,
    keep_open: bool,
) -> Vec<Got> {
    let (tx, rx) = mpsc::channel(8);
    for e in envs {
        tx.send(e).await.unwrap();
    }
    let tx = keep_open.then_some(tx);
    let inbound = ReceiverStream::new(rx);
    let mut stream = if filtered {
        net.deliver.deliver_filtered(inbound).await
    } else {
        net.deliver.deliver(inbound).await
    }
    .unwrap()
    .into_inner();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the server did not end the stream");
        match next.unwrap() {
            Some(m) => out.push(got(m)),
            None => break,
        }
    }
    drop(tx);
    out
}

/// The final status of one request on its own stream (blocks before it are dropped).
async fn status_of(net: &mut Net, env: Envelope) -> common::Status {
    let out = deliver_all(net, false, vec![env]).await;
    match out.last() {
        Some(Got::Status(s)) => *s,
        other => panic!("no status: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------

fn peer_signer(paths: &DevnetPaths, domain: &str, msp_id: &str) -> SigningIdentity {
    SigningIdentity::from_msp_dir(msp_id, &paths.peer(domain).join("msp")).unwrap()
}

fn orderer_admin(paths: &DevnetPaths) -> SigningIdentity {
    SigningIdentity::from_msp_dir(
        ORDERER_ORG.msp_id,
        &paths.user_msp(ORDERER_ORG.domain, "Admin"),
    )
    .unwrap()
}

/// The org1 CA as an rcgen issuer (its key from `ca/priv_sk`, its subject as generated).
struct OrgCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl OrgCa {
    fn org1(paths: &DevnetPaths) -> Self {
        let key = KeyPair::from_pem(
            &std::fs::read_to_string(paths.org(ORG1).join("ca/priv_sk")).unwrap(),
        )
        .unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(Some(ORG1), &[], &format!("ca.{ORG1}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            params,
            key,
            cert_pem: std::fs::read_to_string(paths.ca_cert(ORG1)).unwrap(),
        }
    }

    /// Issues a certificate with the given OUs; `ca` makes it a CA certificate.
    fn issue(&self, ous: &[&str], ca: bool) -> SigningIdentity {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(None, ous, "test@org1.example.com");
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        signing(cert.pem().as_bytes(), &key.serialize_pem())
    }

    /// The CA's own certificate and key, presented as an identity.
    fn itself(&self) -> SigningIdentity {
        signing(self.cert_pem.as_bytes(), &self.key.serialize_pem())
    }
}

fn signing(cert_pem: &[u8], key_pem: &str) -> SigningIdentity {
    SigningIdentity::new(
        Identity::new("Org1MSP", cert_pem).unwrap(),
        Arc::new(P256Signer::from_pem(key_pem).unwrap()),
    )
}

/// The subject layout of the devnet's (cryptogen's) certificates.
fn dn(org: Option<&str>, ous: &[&str], cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::StateOrProvinceName, "California");
    dn.push(DnType::LocalityName, "San Francisco");
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    // rcgen keeps one value per attribute type: a second OU goes in as a custom type with the
    // same OID (2.5.4.11), which is how it reaches the certificate as a second OU.
    assert!(ous.len() <= 2);
    if let Some(ou) = ous.first() {
        dn.push(DnType::OrganizationalUnitName, *ou);
    }
    if let Some(ou) = ous.get(1) {
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 11]), *ou);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

// ---------------------------------------------------------------------------------------
// Gateway calls with arbitrary channels
// ---------------------------------------------------------------------------------------

async fn evaluate_on(
    net: &mut Net,
    s: &SigningIdentity,
    channel: &str,
    args: &[&str],
) -> Result<(), tonic::Status> {
    let (sp, tx_id) = signed_proposal(s, channel, "gx", args);
    net.gw
        .evaluate(EvaluateRequest {
            transaction_id: tx_id,
            channel_id: channel.to_owned(),
            proposed_transaction: Some(sp),
            target_organizations: vec![],
        })
        .await
        .map(|_| ())
}

async fn endorse_on(
    net: &mut Net,
    s: &SigningIdentity,
    channel: &str,
    args: &[&str],
) -> Result<(), tonic::Status> {
    let (sp, tx_id) = signed_proposal(s, channel, "gx", args);
    net.gw
        .endorse(EndorseRequest {
            transaction_id: tx_id,
            channel_id: channel.to_owned(),
            proposed_transaction: Some(sp),
            endorsing_organizations: vec![],
        })
        .await
        .map(|_| ())
}

async fn commit_status_on(
    net: &mut Net,
    s: &SigningIdentity,
    channel: &str,
    tx_id: &str,
) -> Result<(i32, u64), tonic::Status> {
    let req = CommitStatusRequest {
        transaction_id: tx_id.to_owned(),
        channel_id: channel.to_owned(),
        identity: s.creator().to_vec(),
    }
    .encode_to_vec();
    let mut request = tonic::Request::new(SignedCommitStatusRequest {
        signature: s.sign(&req).unwrap(),
        request: req,
    });
    request.set_timeout(Duration::from_secs(10));
    net.gw
        .commit_status(request)
        .await
        .map(|r| (r.get_ref().result, r.get_ref().block_number))
}

/// Opens a ChaincodeEvents stream; `Ok` once the server accepted it.
async fn events_on(net: &mut Net, s: &SigningIdentity, channel: &str) -> Result<(), tonic::Status> {
    let req = ChaincodeEventsRequest {
        channel_id: channel.to_owned(),
        chaincode_id: "gx".to_owned(),
        identity: s.creator().to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    net.gw
        .chaincode_events(SignedChaincodeEventsRequest {
            signature: s.sign(&req).unwrap(),
            request: req,
        })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Deliver
// ---------------------------------------------------------------------------------------

/// common/deliver/deliver.go `deliverBlocks` + fileledger `Iterator`: a Specified start above
/// the height is NOT_FOUND at once whatever the behaviour; start == height waits with
/// BLOCK_UNTIL_READY and is NOT_FOUND with FAIL_IF_NOT_READY.
#[tokio::test]
async fn deliver_start_beyond_height_and_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let h = net.handle.height();

    for behavior in [BlockUntilReady, FailIfNotReady] {
        let env = Seek::new(spec(h + 1), spec(h + 1))
            .behavior(behavior)
            .signed(&user);
        let t0 = std::time::Instant::now();
        assert_eq!(status_of(&mut net, env).await, common::Status::NotFound);
        assert!(t0.elapsed() < Duration::from_secs(5));
        let env = Seek::new(spec(h + 5), spec(h + 9))
            .behavior(behavior)
            .signed(&user);
        assert_eq!(status_of(&mut net, env).await, common::Status::NotFound);
    }
    let env = Seek::new(spec(h), spec(h))
        .behavior(FailIfNotReady)
        .signed(&user);
    assert_eq!(status_of(&mut net, env).await, common::Status::NotFound);
    // A range that runs past the height with FAIL_IF_NOT_READY: the blocks there, then NOT_FOUND.
    let env = Seek::new(spec(h - 1), spec(h + 3))
        .behavior(FailIfNotReady)
        .signed(&user);
    assert_eq!(
        deliver_all(&mut net, false, vec![env]).await,
        vec![Got::Block(h - 1), Got::Status(common::Status::NotFound)]
    );

    // start == height with BLOCK_UNTIL_READY waits for the next block.
    let (tx, rx) = mpsc::channel(1);
    tx.send(Seek::new(spec(h), spec(h)).signed(&user))
        .await
        .unwrap();
    let mut stream = net
        .deliver
        .deliver(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), stream.message())
            .await
            .is_err(),
        "start == height must wait"
    );
    let (_, code, block) = net
        .submit_and_wait(&user, &["CreateUser", "carol", "{}"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(block, h);
    for want in [Got::Block(h), Got::Status(common::Status::Success)] {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got(m), want);
    }
    drop(tx);
    net.handle.shutdown().await.unwrap();
}

/// deliverBlocks: no start or no stop → BAD_REQUEST; a position without a type → NOT_FOUND
/// (start) or stop 0 (stop); stop Oldest = the start; Newest/Newest = one block; start >
/// Specified stop → BAD_REQUEST.
#[tokio::test]
async fn deliver_seek_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let h = net.handle.height();
    assert!(h >= 4);

    let cases: Vec<(Seek, Vec<Got>)> = vec![
        (
            Seek::new(None, spec(1)),
            vec![Got::Status(common::Status::BadRequest)],
        ),
        (
            Seek::new(spec(1), None),
            vec![Got::Status(common::Status::BadRequest)],
        ),
        (
            Seek::new(None, None),
            vec![Got::Status(common::Status::BadRequest)],
        ),
        (
            Seek::new(untyped(), spec(1)),
            vec![Got::Status(common::Status::NotFound)],
        ),
        (
            Seek::new(untyped(), spec(1)).behavior(FailIfNotReady),
            vec![Got::Status(common::Status::NotFound)],
        ),
        // stop without a type is block 0: from block 0 that is one block.
        (
            Seek::new(spec(0), untyped()),
            vec![Got::Block(0), Got::Status(common::Status::Success)],
        ),
        (
            Seek::new(spec(2), oldest()),
            vec![Got::Block(2), Got::Status(common::Status::Success)],
        ),
        (
            Seek::new(oldest(), oldest()),
            vec![Got::Block(0), Got::Status(common::Status::Success)],
        ),
        (
            Seek::new(newest(), newest()),
            vec![Got::Block(h - 1), Got::Status(common::Status::Success)],
        ),
        (
            Seek::new(spec(h - 2), newest()),
            vec![
                Got::Block(h - 2),
                Got::Block(h - 1),
                Got::Status(common::Status::Success),
            ],
        ),
        (
            Seek::new(spec(3), spec(2)),
            vec![Got::Status(common::Status::BadRequest)],
        ),
        (
            Seek::new(newest(), spec(0)),
            vec![Got::Status(common::Status::BadRequest)],
        ),
        (
            Seek::new(spec(1), spec(2)),
            vec![
                Got::Block(1),
                Got::Block(2),
                Got::Status(common::Status::Success),
            ],
        ),
    ];
    for (i, (seek, want)) in cases.into_iter().enumerate() {
        for filtered in [false, true] {
            let env = seek.signed(&user);
            assert_eq!(
                deliver_all(&mut net, filtered, vec![env]).await,
                want,
                "case {i}, filtered {filtered}"
            );
        }
    }
    net.handle.shutdown().await.unwrap();
}

/// deliverBlocks → validateChannelHeader: no timestamp, or one more than the time window
/// (15 minutes) from the server's clock → BAD_REQUEST, checked before the channel.
#[tokio::test]
async fn deliver_timestamp_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let user = signer(&net.paths, ORG1, "User1");
    for (offset, want) in [
        (None, common::Status::BadRequest),
        (Some(-16 * 60), common::Status::BadRequest),
        (Some(16 * 60), common::Status::BadRequest),
        (Some(-14 * 60), common::Status::Success),
        (Some(14 * 60), common::Status::Success),
    ] {
        let mut seek = Seek::new(spec(0), spec(0));
        seek.clock_offset = offset;
        assert_eq!(
            status_of(&mut net, seek.signed(&user)).await,
            want,
            "{offset:?}"
        );
    }
    // The time window comes before the channel lookup.
    let mut seek = Seek::new(spec(0), spec(0));
    seek.channel = "otherchannel";
    assert_eq!(
        status_of(&mut net, seek.signed(&user)).await,
        common::Status::NotFound
    );
    seek.clock_offset = Some(-3600);
    assert_eq!(
        status_of(&mut net, seek.signed(&user)).await,
        common::Status::BadRequest
    );
    net.handle.shutdown().await.unwrap();
}

/// common/deliver Handler.Handle: after a non-SUCCESS status the handler returns, so the
/// stream ends and a request queued behind the failed one is never served. After SUCCESS
/// the next request on the stream is served.
#[tokio::test]
async fn deliver_stream_ends_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let user = signer(&net.paths, ORG1, "User1");
    let orderer = orderer_admin(&net.paths);
    let good = || Seek::new(spec(0), spec(0)).signed(&user);
    let ok = [Got::Block(0), Got::Status(common::Status::Success)];

    let both_ok: Vec<Got> = ok.iter().chain(ok.iter()).copied().collect();
    assert_eq!(
        deliver_all(&mut net, false, vec![good(), good()]).await,
        both_ok
    );
    for (bad, status) in [
        (
            Seek::new(None, spec(0)).signed(&user),
            common::Status::BadRequest,
        ),
        (
            Seek::new(spec(9), spec(9))
                .behavior(FailIfNotReady)
                .signed(&user),
            common::Status::NotFound,
        ),
        (
            Seek::new(spec(0), spec(0)).signed(&orderer),
            common::Status::Forbidden,
        ),
    ] {
        for filtered in [false, true] {
            let out = deliver_stream(&mut net, filtered, vec![bad.clone(), good()], true).await;
            assert_eq!(out, vec![Got::Status(status)], "filtered {filtered}");
        }
    }
    // A request after a successful one, then a failing one, then one that is never served.
    let out = deliver_stream(
        &mut net,
        false,
        // height 1: start 1 is the height (a valid start), stop 0 below it → BAD_REQUEST.
        vec![good(), Seek::new(spec(1), spec(0)).signed(&user), good()],
        true,
    )
    .await;
    assert_eq!(
        out,
        vec![
            Got::Block(0),
            Got::Status(common::Status::Success),
            Got::Status(common::Status::BadRequest)
        ]
    );
    net.handle.shutdown().await.unwrap();
}

/// core/peer/deliverevents.go: Deliver and DeliverFiltered check `event/Block` /
/// `event/FilteredBlock` = /Channel/Application/Readers: admins, peers and clients of the
/// application orgs are readers; the orderer org is not (FORBIDDEN), nor a forged signature.
#[tokio::test]
async fn deliver_needs_a_channel_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let p = net.paths.clone();
    let readers = [
        signer(&p, ORG1, "User1"),
        signer(&p, ORG1, "Admin"),
        signer(&p, ORG2, "User1"),
        signer(&p, ORG2, "Admin"),
        peer_signer(&p, ORG1, "Org1MSP"),
        peer_signer(&p, ORG2, "Org2MSP"),
    ];
    for s in &readers {
        for filtered in [false, true] {
            assert_eq!(
                deliver_all(
                    &mut net,
                    filtered,
                    vec![Seek::new(spec(0), spec(0)).signed(s)]
                )
                .await,
                vec![Got::Block(0), Got::Status(common::Status::Success)]
            );
        }
    }
    let forged = super::tests::mismatched(&p, "User1", "Admin");
    for s in [orderer_admin(&p), forged] {
        for filtered in [false, true] {
            assert_eq!(
                deliver_all(
                    &mut net,
                    filtered,
                    vec![Seek::new(spec(0), spec(0)).signed(&s)]
                )
                .await,
                vec![Got::Status(common::Status::Forbidden)]
            );
        }
    }
    // The tests' own helper still works (full blocks, Specified range).
    let user = signer(&p, ORG1, "User1");
    let env = seek_envelope(&user, 0, 0, BlockUntilReady);
    assert_eq!(status_of(&mut net, env).await, common::Status::Success);
    net.handle.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Gateway: unknown channel, ACLs
// ---------------------------------------------------------------------------------------

/// internal/pkg/gateway: Evaluate → connectChannelPeers fails → UNAVAILABLE; Endorse → no
/// endorsement plan → FAILED_PRECONDITION; Submit → registry.orderers fails →
/// FAILED_PRECONDITION; CommitStatus and ChaincodeEvents → CheckACL fails → PERMISSION_DENIED;
/// CommitStatus without a transaction id, channel or identity → INVALID_ARGUMENT.
#[tokio::test]
async fn unknown_channel_per_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let other = "otherchannel";

    let err = evaluate_on(&mut net, &user, other, &["GetWallet", "alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("failed to get config for channel [otherchannel]")
    );
    let err = endorse_on(&mut net, &user, other, &["CreateUser", "x", "{}"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let (env, tx_id) = net
        .endorse(&user, &["CreateUser", "dave", "{}"])
        .await
        .unwrap();
    let err = net
        .gw
        .submit(SubmitRequest {
            transaction_id: tx_id.clone(),
            channel_id: other.to_owned(),
            prepared_transaction: Some(env.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let err = commit_status_on(&mut net, &user, other, &tx_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = events_on(&mut net, &user, other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // CommitStatus request validation comes before the ACL.
    let err = commit_status_on(&mut net, &user, DEFAULT_CHANNEL, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(err.message(), "transaction ID should not be empty");
    let err = commit_status_on(&mut net, &user, "", &tx_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let req = CommitStatusRequest {
        transaction_id: tx_id.clone(),
        channel_id: DEFAULT_CHANNEL.to_owned(),
        identity: Vec::new(),
    }
    .encode_to_vec();
    let err = net
        .gw
        .commit_status(SignedCommitStatusRequest {
            signature: user.sign(&req).unwrap(),
            request: req,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Deliver on an unknown channel: NOT_FOUND.
    let mut seek = Seek::new(spec(0), spec(0));
    seek.channel = "otherchannel";
    assert_eq!(
        status_of(&mut net, seek.signed(&user)).await,
        common::Status::NotFound
    );

    // The transaction is still good on the devnet's channel.
    net.submit(&env, &tx_id).await.unwrap();
    assert_eq!(net.status(&user, &tx_id).await.0, 0);
    net.handle.shutdown().await.unwrap();
}

super::tests::both_modes!(roles_writers_and_readers);

/// core/endorser `preProcess` → `CheckACL(peer/Propose)` = /Channel/Application/Writers:
/// a peer identity and the orderer org are refused (the endorser's error: FAILED_PRECONDITION
/// on Evaluate, ABORTED with the detail on Endorse). CommitStatus / ChaincodeEvents need
/// /Channel/Application/Readers: a peer may, the orderer org may not.
async fn roles_writers_and_readers(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    let (admin, user) = bootstrap(&mut net).await;
    let p = net.paths.clone();
    let peer = peer_signer(&p, ORG1, "Org1MSP");
    let orderer = orderer_admin(&p);
    let org2_user = signer(&p, ORG2, "User1");

    // Writers pass the ACL (the chaincode may still refuse by its own rules: UNKNOWN).
    for s in [&user, &admin, &org2_user] {
        if let Err(e) = evaluate_on(&mut net, s, DEFAULT_CHANNEL, &["GetWallet", "alice"]).await {
            assert_eq!(e.code(), tonic::Code::Unknown, "{e:?}");
        }
    }
    for s in [&peer, &orderer] {
        let err = evaluate_on(&mut net, s, DEFAULT_CHANNEL, &["GetWallet", "alice"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message()
                .contains("check policy [/Channel/Application/Writers]"),
            "{err:?}"
        );
        let err = endorse_on(&mut net, s, DEFAULT_CHANNEL, &["CreateUser", "zed", "{}"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
        assert!(
            error_details(&err)[0]
                .message
                .contains("/Channel/Application/Writers"),
            "{err:?}"
        );
    }

    let (tx_id, code, block) = net
        .submit_and_wait(&user, &["CreateUser", "erin", "{}"])
        .await;
    assert_eq!(code, 0);
    for s in [&user, &admin, &peer, &org2_user] {
        assert_eq!(
            commit_status_on(&mut net, s, DEFAULT_CHANNEL, &tx_id)
                .await
                .unwrap(),
            (0, block)
        );
        events_on(&mut net, s, DEFAULT_CHANNEL).await.unwrap();
    }
    let err = commit_status_on(&mut net, &orderer, DEFAULT_CHANNEL, &tx_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("/Channel/Application/Readers"),
        "{err:?}"
    );
    let err = events_on(&mut net, &orderer, DEFAULT_CHANNEL)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    net.handle.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// MSP: NodeOUs and CA certificates
// ---------------------------------------------------------------------------------------

/// msp/mspimplvalidate.go `validateIdentityOUsV142` (exactly one of client/peer/admin/orderer)
/// and msp/mspimpl.go `getCertificationChainForBCCSPIdentity` (a CA certificate is no
/// identity), on certificates issued by the devnet's own Org1 CA.
#[test]
fn msp_refuses_bad_node_ous_and_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    crypto::ensure_material(dir.path()).unwrap();
    let paths = DevnetPaths::new(dir.path());
    let material = crypto::load_material(dir.path()).unwrap();
    let msp = MspManager::new(material.ca_certs()).unwrap();
    let ca = OrgCa::org1(&paths);

    // Control: a client certificate issued here is a valid Org1 client.
    let good = msp
        .deserialize(ca.issue(&["client"], false).creator())
        .unwrap();
    assert_eq!(good.role, msp::Role::Client);
    // Another OU besides the role OU is fine (cryptogen adds none, Fabric CA adds some).
    let extra = msp
        .deserialize(ca.issue(&["client", "department1"], false).creator())
        .unwrap();
    assert_eq!(extra.role, msp::Role::Client);

    for ous in [
        &[][..],
        &["department1"][..],
        &["client", "admin"][..],
        &["peer", "orderer"][..],
    ] {
        let err = msp.deserialize(ca.issue(ous, false).creator()).unwrap_err();
        assert!(matches!(err, MspError::NodeOu { .. }), "{ous:?}: {err:?}");
    }
    let err = msp
        .deserialize(ca.issue(&["client"], true).creator())
        .unwrap_err();
    assert_eq!(err, MspError::CaCertificate);
    let err = msp.deserialize(ca.itself().creator()).unwrap_err();
    assert_eq!(err, MspError::CaCertificate);
}

/// The same identities through the services: refused as proposal creators (the endorser's
/// "access denied"), as Deliver creators (FORBIDDEN) and as CommitStatus / ChaincodeEvents
/// identities (PERMISSION_DENIED).
#[tokio::test]
async fn services_refuse_bad_node_ous_and_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let (tx_id, _, _) = net
        .submit_and_wait(&user, &["CreateUser", "frank", "{}"])
        .await;
    let ca = OrgCa::org1(&net.paths);

    // Control: a freshly issued client certificate is served.
    let fresh = ca.issue(&["client"], false);
    evaluate_on(&mut net, &fresh, DEFAULT_CHANNEL, &["GetWallet", "alice"])
        .await
        .unwrap();
    assert_eq!(
        status_of(&mut net, Seek::new(spec(0), spec(0)).signed(&fresh)).await,
        common::Status::Success
    );

    let bad = [
        ("no role OU", ca.issue(&[], false)),
        ("two role OUs", ca.issue(&["client", "admin"], false)),
        ("CA certificate", ca.issue(&["client"], true)),
        ("the CA itself", ca.itself()),
    ];
    for (what, s) in &bad {
        let err = evaluate_on(&mut net, s, DEFAULT_CHANNEL, &["GetWallet", "alice"])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{what}: {err:?}"
        );
        assert!(
            err.message()
                .contains("access denied: channel [gxchannel] creator org [Org1MSP]"),
            "{what}: {err:?}"
        );
        let err = endorse_on(&mut net, s, DEFAULT_CHANNEL, &["CreateUser", "gus", "{}"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted, "{what}: {err:?}");
        assert_eq!(
            status_of(&mut net, Seek::new(spec(0), spec(0)).signed(s)).await,
            common::Status::Forbidden,
            "{what}"
        );
        let err = commit_status_on(&mut net, s, DEFAULT_CHANNEL, &tx_id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        let err = events_on(&mut net, s, DEFAULT_CHANNEL).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
    }
    net.handle.shutdown().await.unwrap();
}
