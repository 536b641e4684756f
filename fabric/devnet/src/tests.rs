//! End-to-end tests of the devnet through its gRPC services (TLS on), with a minimal
//! hand-rolled Fabric client: proposals, endorsement, submission, commit status, Deliver,
//! chaincode events, validation codes, faults, persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::crypto::{DevnetPaths, PEER_ORGS};
use super::*;
use gxd_fabric::identity::{Identity, P256Signer, SigningIdentity};
use gxd_fabric::proto::common::{
    self, Block, ChannelHeader, Envelope, Header, HeaderType, Payload, SignatureHeader,
};
use gxd_fabric::proto::deliver_client::DeliverClient;
use gxd_fabric::proto::gateway::gateway_client::GatewayClient;
use gxd_fabric::proto::gateway::{
    ChaincodeEventsRequest, CommitStatusRequest, EndorseRequest, EvaluateRequest,
    SignedChaincodeEventsRequest, SignedCommitStatusRequest, SubmitRequest,
};
use gxd_fabric::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified, seek_info, seek_position};
use gxd_fabric::proto::protos::{
    ChaincodeHeaderExtension, ChaincodeId, ChaincodeInput, ChaincodeInvocationSpec,
    ChaincodeProposalPayload, ChaincodeSpec, Proposal, SignedProposal, TxValidationCode,
};
use gxd_fabric::proto::{deliver_response, error_details};
use gxd_fabric::tx::{compute_tx_id, new_nonce, now_timestamp};

pub(crate) const ORG1: &str = "org1.example.com";

pub(crate) fn signer(paths: &DevnetPaths, domain: &str, user: &str) -> SigningIdentity {
    let msp = PEER_ORGS
        .iter()
        .find(|o| o.domain == domain)
        .unwrap()
        .msp_id;
    SigningIdentity::from_msp_dir(msp, &paths.user_msp(domain, user)).unwrap()
}

/// A signer with `cert_of`'s certificate but `key_of`'s key (a wrong-key signature).
pub(crate) fn mismatched(paths: &DevnetPaths, cert_of: &str, key_of: &str) -> SigningIdentity {
    let cert = std::fs::read(paths.user_cert(ORG1, cert_of)).unwrap();
    let key = std::fs::read_to_string(paths.user_key(ORG1, key_of)).unwrap();
    SigningIdentity::new(
        Identity::new("Org1MSP", &cert).unwrap(),
        std::sync::Arc::new(P256Signer::from_pem(&key).unwrap()),
    )
}

pub(crate) struct Net {
    pub(crate) handle: DevnetHandle,
    pub(crate) paths: DevnetPaths,
    pub(crate) gw: GatewayClient<Channel>,
    pub(crate) deliver: DeliverClient<Channel>,
}

pub(crate) async fn connect(
    handle: &DevnetHandle,
) -> (GatewayClient<Channel>, DeliverClient<Channel>) {
    let ca = std::fs::read(handle.paths().peer_tls_ca(ORG1)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(PEER_HOST);
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", handle.local_addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        GatewayClient::new(channel.clone()),
        DeliverClient::new(channel),
    )
}

pub(crate) async fn start_net(config: DevnetConfig) -> Net {
    let handle = start(config).await.unwrap();
    let (gw, deliver) = connect(&handle).await;
    Net {
        paths: handle.paths().clone(),
        handle,
        gw,
        deliver,
    }
}

/// A devnet in `dir` on a free port.
pub(crate) fn local(dir: &std::path::Path) -> DevnetConfig {
    DevnetConfig::new(dir).with_listen("127.0.0.1:0".parse().unwrap())
}

/// [`local`] cutting blocks after 20 ms.
pub(crate) fn fast(dir: &std::path::Path) -> DevnetConfig {
    local(dir).with_batch(100, Duration::from_millis(20))
}

/// Where a test's devnet runs its chaincode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// GX in-process (the default).
    InProcess,
    /// GX served by the shim server (`gxd chaincode serve`'s code) on a free port, driven by
    /// the devnet over the shim protocol.
    Service,
}

/// The chaincode id the test chaincode services register under.
pub(crate) const TEST_CCID: &str = "gx_1.0:0000";

/// `config` with its chaincode in `mode`: for [`Mode::Service`] a GX chaincode server is
/// started on this test's runtime (it stops with the runtime).
pub(crate) async fn in_mode(mode: Mode, config: DevnetConfig) -> DevnetConfig {
    match mode {
        Mode::InProcess => config,
        Mode::Service => {
            let server = shim::server::start(shim::server::ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                chaincode_id: TEST_CCID.to_owned(),
                tls: None,
            })
            .await
            .unwrap();
            let addr = server.local_addr();
            // Keep serving until the test's runtime ends.
            tokio::spawn(server.run_until(std::future::pending()));
            config.with_external_chaincode(shim::client::ExternalConfig::new(
                addr.to_string(),
                TEST_CCID,
            ))
        }
    }
}

/// Runs the async test function `$name(mode: Mode)` once per chaincode mode, as
/// `$name::in_process` and `$name::as_service`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn in_process() {
                super::$name(super::Mode::InProcess).await
            }
            #[tokio::test]
            async fn as_service() {
                super::$name(super::Mode::Service).await
            }
        }
    )*};
}
pub(crate) use both_modes;

pub(crate) fn signed_proposal(
    s: &SigningIdentity,
    channel: &str,
    cc: &str,
    args: &[&str],
) -> (SignedProposal, String) {
    let nonce = new_nonce();
    let tx_id = compute_tx_id(&nonce, s.creator());
    let chdr = ChannelHeader {
        r#type: HeaderType::EndorserTransaction as i32,
        version: 0,
        timestamp: Some(now_timestamp()),
        channel_id: channel.to_owned(),
        tx_id: tx_id.clone(),
        epoch: 0,
        extension: ChaincodeHeaderExtension {
            chaincode_id: Some(ChaincodeId {
                name: cc.to_owned(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        tls_cert_hash: Vec::new(),
    };
    let shdr = SignatureHeader {
        creator: s.creator().to_vec(),
        nonce,
    };
    let input = ChaincodeInvocationSpec {
        chaincode_spec: Some(ChaincodeSpec {
            r#type: 1,
            chaincode_id: Some(ChaincodeId {
                name: cc.to_owned(),
                ..Default::default()
            }),
            input: Some(ChaincodeInput {
                args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
            timeout: 0,
        }),
    };
    let proposal = Proposal {
        header: Header {
            channel_header: chdr.encode_to_vec(),
            signature_header: shdr.encode_to_vec(),
        }
        .encode_to_vec(),
        payload: ChaincodeProposalPayload {
            input: input.encode_to_vec(),
            transient_map: Default::default(),
        }
        .encode_to_vec(),
        extension: Vec::new(),
    };
    let bytes = proposal.encode_to_vec();
    (
        SignedProposal {
            signature: s.sign(&bytes).unwrap(),
            proposal_bytes: bytes,
        },
        tx_id,
    )
}

impl Net {
    pub(crate) async fn endorse(
        &mut self,
        s: &SigningIdentity,
        args: &[&str],
    ) -> Result<(Envelope, String), tonic::Status> {
        let (sp, tx_id) = signed_proposal(s, DEFAULT_CHANNEL, "gx", args);
        let resp = self
            .gw
            .endorse(EndorseRequest {
                transaction_id: tx_id.clone(),
                channel_id: DEFAULT_CHANNEL.to_owned(),
                proposed_transaction: Some(sp),
                endorsing_organizations: Vec::new(),
            })
            .await?
            .into_inner();
        let mut env = resp.prepared_transaction.unwrap();
        env.signature = s.sign(&env.payload).unwrap();
        Ok((env, tx_id))
    }

    pub(crate) async fn submit(
        &mut self,
        env: &Envelope,
        tx_id: &str,
    ) -> Result<(), tonic::Status> {
        self.gw
            .submit(SubmitRequest {
                transaction_id: tx_id.to_owned(),
                channel_id: DEFAULT_CHANNEL.to_owned(),
                prepared_transaction: Some(env.clone()),
            })
            .await
            .map(|_| ())
    }

    pub(crate) async fn status(&mut self, s: &SigningIdentity, tx_id: &str) -> (i32, u64) {
        let req = CommitStatusRequest {
            transaction_id: tx_id.to_owned(),
            channel_id: DEFAULT_CHANNEL.to_owned(),
            identity: s.creator().to_vec(),
        }
        .encode_to_vec();
        let mut request = tonic::Request::new(SignedCommitStatusRequest {
            signature: s.sign(&req).unwrap(),
            request: req,
        });
        request.set_timeout(Duration::from_secs(30));
        let r = self.gw.commit_status(request).await.unwrap().into_inner();
        (r.result, r.block_number)
    }

    pub(crate) async fn submit_and_wait(
        &mut self,
        s: &SigningIdentity,
        args: &[&str],
    ) -> (String, i32, u64) {
        let (env, tx_id) = self.endorse(s, args).await.unwrap();
        self.submit(&env, &tx_id).await.unwrap();
        let (code, block) = self.status(s, &tx_id).await;
        (tx_id, code, block)
    }

    pub(crate) async fn evaluate(
        &mut self,
        s: &SigningIdentity,
        args: &[&str],
    ) -> Result<serde_json::Value, tonic::Status> {
        let (sp, tx_id) = signed_proposal(s, DEFAULT_CHANNEL, "gx", args);
        let r = self
            .gw
            .evaluate(EvaluateRequest {
                transaction_id: tx_id,
                channel_id: DEFAULT_CHANNEL.to_owned(),
                proposed_transaction: Some(sp),
                target_organizations: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(serde_json::from_slice(&r.result.unwrap().payload).unwrap())
    }

    pub(crate) async fn balance(&mut self, s: &SigningIdentity, wallet: &str) -> String {
        let w = self.evaluate(s, &["GetWallet", wallet]).await.unwrap();
        w["balance"].as_str().unwrap().to_owned()
    }

    /// Blocks `from..=to` through Deliver (full blocks).
    pub(crate) async fn blocks(&mut self, s: &SigningIdentity, from: u64, to: u64) -> Vec<Block> {
        let env = seek_envelope(s, from, to, seek_info::SeekBehavior::BlockUntilReady);
        let mut stream = self
            .deliver
            .deliver(futures::stream::iter(vec![env]))
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match msg.r#type.unwrap() {
                deliver_response::Type::Block(b) => out.push(b),
                deliver_response::Type::Status(st) => {
                    assert_eq!(st, common::Status::Success as i32);
                    return out;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

pub(crate) fn seek_envelope(
    s: &SigningIdentity,
    from: u64,
    to: u64,
    behavior: seek_info::SeekBehavior,
) -> Envelope {
    let nonce = new_nonce();
    let chdr = ChannelHeader {
        r#type: HeaderType::DeliverSeekInfo as i32,
        channel_id: DEFAULT_CHANNEL.to_owned(),
        tx_id: compute_tx_id(&nonce, s.creator()),
        timestamp: Some(now_timestamp()),
        ..Default::default()
    };
    let shdr = SignatureHeader {
        creator: s.creator().to_vec(),
        nonce,
    };
    let pos = |n| SeekPosition {
        r#type: Some(seek_position::Type::Specified(SeekSpecified { number: n })),
    };
    let payload = Payload {
        header: Some(Header {
            channel_header: chdr.encode_to_vec(),
            signature_header: shdr.encode_to_vec(),
        }),
        data: SeekInfo {
            start: Some(pos(from)),
            stop: Some(pos(to)),
            behavior: behavior as i32,
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

pub(crate) fn filter_of(block: &Block) -> Vec<u8> {
    block.metadata.as_ref().unwrap().metadata
        [common::BlockMetadataIndex::TransactionsFilter as usize]
        .clone()
}

pub(crate) async fn bootstrap(net: &mut Net) -> (SigningIdentity, SigningIdentity) {
    let admin = signer(&net.paths, ORG1, "Admin");
    let user = signer(&net.paths, ORG1, "User1");
    let (_, code, _) = net
        .submit_and_wait(&admin, &["Bootstrap", "treasury", "1000"])
        .await;
    assert_eq!(code, TxValidationCode::Valid as i32);
    for u in ["alice", "bob"] {
        let (_, code, _) = net.submit_and_wait(&user, &["CreateUser", u, "{}"]).await;
        assert_eq!(code, TxValidationCode::Valid as i32);
    }
    (admin, user)
}

both_modes!(
    gx_flow_commits_and_blocks_chain,
    errors_match_fabric_gateway,
    mvcc_conflict_and_duplicate_txid,
    events_and_filtered_blocks,
);

async fn gx_flow_commits_and_blocks_chain(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    assert_eq!(net.handle.height(), 1, "genesis block only");
    let (_, user) = bootstrap(&mut net).await;
    let (tx_id, code, block) = net
        .submit_and_wait(
            &user,
            &["TransferTokens", "t1", "treasury", "alice", "300", "hi"],
        )
        .await;
    assert_eq!(code, TxValidationCode::Valid as i32);
    assert_eq!(net.balance(&user, "alice").await, "300");
    assert_eq!(net.balance(&user, "treasury").await, "700");

    let height = net.handle.height();
    let blocks = net.blocks(&user, 0, height - 1).await;
    assert_eq!(blocks.len() as u64, height);
    // Block 0 is a config block; every block follows its predecessor's header hash.
    let parsed: Vec<_> = blocks
        .iter()
        .map(|b| gxd_fabric::block::ParsedBlock::parse(b.clone()).unwrap())
        .collect();
    assert_eq!(
        blocks::summarize(&blocks[0])[0].header_type,
        HeaderType::Config as i32,
        "block 0 is the config block"
    );
    for w in parsed.windows(2) {
        let prev = gxd_fabric::block::block_header_hash(
            blocks[w[0].number as usize].header.as_ref().unwrap(),
        );
        w[1].verify_follows(&prev).unwrap();
        w[1].verify_data_hash().unwrap();
    }
    // The transfer's block carries its event and a VALID filter entry.
    let b = &blocks[block as usize];
    let tx = parsed[block as usize]
        .transactions
        .iter()
        .find(|t| t.tx_id == tx_id)
        .unwrap();
    assert!(tx.is_valid());
    assert_eq!(filter_of(b).len(), b.data.as_ref().unwrap().data.len());
    let event = tx.event.as_ref().unwrap();
    assert_eq!(event.event_name, "TokensTransferred");
    let payload: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(payload["amount"], "300");
    net.handle.shutdown().await.unwrap();
}

async fn errors_match_fabric_gateway(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    let (_, user) = bootstrap(&mut net).await;
    let height = net.handle.height();

    // Chaincode error: ABORTED at endorse, UNKNOWN at evaluate, message in the details.
    let err = net
        .endorse(&user, &["TransferTokens", "t1", "alice", "bob", "5", ""])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    let details = error_details(&err);
    assert_eq!(details.len(), 1);
    assert!(
        details[0]
            .message
            .starts_with("chaincode response 500, insufficient funds"),
        "{details:?}"
    );
    assert_eq!(details[0].msp_id, "Org1MSP");
    let err = net
        .evaluate(&user, &["GetWallet", "nobody"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert!(
        err.message()
            .contains("chaincode response 500, wallet nobody does not exist")
    );

    // Signature from the wrong key.
    let forged = mismatched(&net.paths, "User1", "Admin");
    let err = net
        .endorse(&forged, &["GetWallet", "alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        error_details(&err)[0].message.contains("access denied"),
        "{err:?}"
    );
    let err = net
        .evaluate(&forged, &["GetWallet", "alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // A certificate from an unknown CA (another devnet's User1, claiming Org1MSP).
    let other = tempfile::tempdir().unwrap();
    crypto::ensure_material(other.path()).unwrap();
    let stranger = signer(&DevnetPaths::new(other.path()), ORG1, "User1");
    let err = net
        .endorse(&stranger, &["GetWallet", "alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        error_details(&err)[0]
            .message
            .contains("access denied: channel [gxchannel] creator org [Org1MSP]")
    );

    // Wrong channel, unknown chaincode, malformed proposal.
    let (sp, tx_id) = signed_proposal(&user, "otherchannel", "gx", &["GetWallet", "alice"]);
    let err = net
        .gw
        .evaluate(EvaluateRequest {
            transaction_id: tx_id,
            channel_id: "otherchannel".into(),
            proposed_transaction: Some(sp),
            target_organizations: vec![],
        })
        .await
        .unwrap_err();
    // Fabric's Evaluate: connectChannelPeers fails for a channel the peer has not joined.
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let (sp, tx_id) = signed_proposal(&user, DEFAULT_CHANNEL, "nope", &["GetWallet", "alice"]);
    let err = net
        .gw
        .endorse(EndorseRequest {
            transaction_id: tx_id,
            channel_id: DEFAULT_CHANNEL.into(),
            proposed_transaction: Some(sp),
            endorsing_organizations: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = net
        .gw
        .evaluate(EvaluateRequest {
            proposed_transaction: Some(SignedProposal {
                proposal_bytes: vec![0xff, 0x01, 0x02],
                signature: vec![1],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Submit: unsigned envelope, and one signed by the wrong key.
    let (mut env, tx_id) = net
        .endorse(&user, &["CreateUser", "carol", "{}"])
        .await
        .unwrap();
    let signature = std::mem::take(&mut env.signature);
    assert_eq!(
        net.submit(&env, &tx_id).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    env.signature = forged.sign(&env.payload).unwrap();
    let err = net.submit(&env, &tx_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(err.message().contains("status=FORBIDDEN"), "{err:?}");
    // Nothing reached a block.
    assert_eq!(net.handle.height(), height);
    // CommitStatus with a bad signature is refused.
    let req = CommitStatusRequest {
        transaction_id: tx_id.clone(),
        channel_id: DEFAULT_CHANNEL.into(),
        identity: user.creator().to_vec(),
    }
    .encode_to_vec();
    let err = net
        .gw
        .commit_status(SignedCommitStatusRequest {
            signature: forged.sign(&req).unwrap(),
            request: req,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The properly signed envelope still goes through.
    env.signature = signature;
    net.submit(&env, &tx_id).await.unwrap();
    assert_eq!(
        net.status(&user, &tx_id).await.0,
        TxValidationCode::Valid as i32
    );
    net.handle.shutdown().await.unwrap();
}

async fn mvcc_conflict_and_duplicate_txid(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    let (_, user) = bootstrap(&mut net).await;

    // Two transfers endorsed against the same treasury state: the second to commit conflicts.
    let (a, a_id) = net
        .endorse(
            &user,
            &["TransferTokens", "ta", "treasury", "alice", "100", ""],
        )
        .await
        .unwrap();
    let (b, b_id) = net
        .endorse(
            &user,
            &["TransferTokens", "tb", "treasury", "bob", "100", ""],
        )
        .await
        .unwrap();
    net.submit(&a, &a_id).await.unwrap();
    net.submit(&b, &b_id).await.unwrap();
    assert_eq!(
        net.status(&user, &a_id).await.0,
        TxValidationCode::Valid as i32
    );
    assert_eq!(
        net.status(&user, &b_id).await.0,
        TxValidationCode::MvccReadConflict as i32
    );
    assert_eq!(
        net.balance(&user, "bob").await,
        "0",
        "an invalid transaction changes nothing"
    );
    assert_eq!(net.balance(&user, "treasury").await, "900");

    // The same signed envelope again: DUPLICATE_TXID in a later block, state unchanged,
    // CommitStatus keeps the original's VALID.
    let (original_code, original_block) = net.status(&user, &a_id).await;
    let height = net.handle.height();
    net.submit(&a, &a_id).await.unwrap();
    assert!(
        net.handle
            .wait_for_height(height + 1, Duration::from_secs(30))
            .await
    );
    let blocks = net.blocks(&user, height, height).await;
    let summary = super::blocks::summarize(&blocks[0]);
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].tx_id, a_id);
    assert_eq!(summary[0].code, TxValidationCode::DuplicateTxid as i32);
    assert_eq!(
        net.status(&user, &a_id).await,
        (original_code, original_block)
    );
    assert_eq!(net.balance(&user, "alice").await, "100");
    net.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn blocks_are_cut_by_count_and_by_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A long timeout: only the count can cut the 3-transaction block.
    let mut net = start_net(local(dir.path()).with_batch(3, Duration::from_secs(3600))).await;
    let admin = signer(&net.paths, ORG1, "Admin");
    let user = signer(&net.paths, ORG1, "User1");
    let (env, id) = net
        .endorse(&admin, &["Bootstrap", "treasury", "1000"])
        .await
        .unwrap();
    net.submit(&env, &id).await.unwrap();
    let mut ids = vec![id];
    for u in ["u1", "u2"] {
        let (env, id) = net.endorse(&user, &["CreateUser", u, "{}"]).await.unwrap();
        net.submit(&env, &id).await.unwrap();
        ids.push(id);
    }
    assert!(net.handle.wait_for_height(2, Duration::from_secs(30)).await);
    let blocks = net.blocks(&user, 1, 1).await;
    let got: Vec<_> = super::blocks::summarize(&blocks[0])
        .into_iter()
        .map(|t| t.tx_id)
        .collect();
    assert_eq!(
        got, ids,
        "one block of exactly max_message_count transactions"
    );
    net.handle.shutdown().await.unwrap();

    // A short timeout: a lone transaction is cut into its own block.
    let mut net = start_net(local(dir.path()).with_batch(100, Duration::from_millis(10))).await;
    assert_eq!(
        net.handle.height(),
        2,
        "ledger height persists across restarts"
    );
    let (_, code, block) = net
        .submit_and_wait(&user, &["CreateUser", "u3", "{}"])
        .await;
    assert_eq!((code, block), (TxValidationCode::Valid as i32, 2));
    net.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_and_chain_persist_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    net.submit_and_wait(
        &user,
        &["TransferTokens", "t1", "treasury", "alice", "42", ""],
    )
    .await;
    let height = net.handle.height();
    net.handle.shutdown().await.unwrap();

    let mut net = start_net(fast(dir.path())).await;
    assert_eq!(net.handle.height(), height);
    assert_eq!(net.balance(&user, "alice").await, "42");
    let (_, code, block) = net
        .submit_and_wait(
            &user,
            &["TransferTokens", "t2", "treasury", "alice", "8", ""],
        )
        .await;
    assert_eq!(code, TxValidationCode::Valid as i32);
    assert_eq!(block, height);
    let blocks = net.blocks(&user, 0, block).await;
    for w in blocks.windows(2) {
        let prev = gxd_fabric::block::block_header_hash(w[0].header.as_ref().unwrap());
        assert_eq!(w[1].header.as_ref().unwrap().previous_hash, prev.to_vec());
    }
    net.handle.shutdown().await.unwrap();

    // The ledger belongs to its channel: starting it under another name is refused.
    let err = start(fast(dir.path()).with_channel("otherchannel"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DevnetError::Node(node::NodeError::ChannelMismatch { .. })
        ),
        "{err}"
    );
}

async fn events_and_filtered_blocks(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    let (admin, user) = bootstrap(&mut net).await;
    let req = ChaincodeEventsRequest {
        channel_id: DEFAULT_CHANNEL.into(),
        chaincode_id: "gx".into(),
        identity: user.creator().to_vec(),
        start_position: Some(SeekPosition {
            r#type: Some(seek_position::Type::Specified(SeekSpecified { number: 0 })),
        }),
        after_transaction_id: String::new(),
    }
    .encode_to_vec();
    let mut stream = net
        .gw
        .chaincode_events(SignedChaincodeEventsRequest {
            signature: user.sign(&req).unwrap(),
            request: req,
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while names.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        names.extend(resp.events.into_iter().map(|e| e.event_name));
    }
    assert_eq!(names, ["SystemBootstrapped", "UserCreated", "UserCreated"]);

    let env = seek_envelope(&admin, 0, 1, seek_info::SeekBehavior::BlockUntilReady);
    let mut stream = net
        .deliver
        .deliver_filtered(futures::stream::iter(vec![env]))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let second = stream.message().await.unwrap().unwrap();
    let Some(deliver_response::Type::FilteredBlock(fb)) = second.r#type else {
        panic!("expected a filtered block, got {first:?} {second:?}");
    };
    assert_eq!(fb.number, 1);
    assert_eq!(fb.filtered_transactions[0].tx_validation_code, 0);
    let done = stream.message().await.unwrap().unwrap();
    assert_eq!(
        done.r#type,
        Some(deliver_response::Type::Status(
            common::Status::Success as i32
        ))
    );

    // A seek beyond the height with FAIL_IF_NOT_READY answers NOT_FOUND.
    let env = seek_envelope(&admin, 1000, 1000, seek_info::SeekBehavior::FailIfNotReady);
    let mut stream = net
        .deliver
        .deliver(futures::stream::iter(vec![env]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(
        msg.r#type,
        Some(deliver_response::Type::Status(
            common::Status::NotFound as i32
        ))
    );
    net.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn faults_lose_replies_but_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;

    net.handle
        .faults()
        .times(Rpc::Evaluate, Fault::Unavailable, 1);
    let err = net
        .evaluate(&user, &["GetWallet", "alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        net.evaluate(&user, &["GetWallet", "alice"]).await.is_ok(),
        "counted rule expired"
    );

    // The reply to Submit is lost, but the transaction was ordered and commits.
    net.handle
        .faults()
        .times(Rpc::Submit, Fault::ProcessThenUnavailable, 1);
    let (env, id) = net
        .endorse(
            &user,
            &["TransferTokens", "t1", "treasury", "alice", "5", ""],
        )
        .await
        .unwrap();
    assert_eq!(
        net.submit(&env, &id).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    assert_eq!(
        net.status(&user, &id).await.0,
        TxValidationCode::Valid as i32
    );

    // Dropped reply: the client's deadline expires, the transaction still commits.
    net.handle
        .faults()
        .times(Rpc::Submit, Fault::ProcessThenDrop, 1);
    let (env, id) = net
        .endorse(
            &user,
            &["TransferTokens", "t2", "treasury", "alice", "5", ""],
        )
        .await
        .unwrap();
    let mut req = tonic::Request::new(SubmitRequest {
        transaction_id: id.clone(),
        channel_id: DEFAULT_CHANNEL.into(),
        prepared_transaction: Some(env),
    });
    req.set_timeout(Duration::from_millis(300));
    let err = net.gw.submit(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    assert_eq!(
        net.status(&user, &id).await.0,
        TxValidationCode::Valid as i32
    );
    assert_eq!(net.balance(&user, "alice").await, "10");

    // Rules from DIR/faults.json.
    std::fs::write(
        net.paths.faults_file(),
        br#"{"rules":[{"rpc":"evaluate","fault":"unavailable"}]}"#,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while net.handle.faults().rules().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        net.evaluate(&user, &["GetWallet", "alice"])
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unavailable
    );
    net.handle.shutdown().await.unwrap();
}

#[test]
fn crypto_layout_roles_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    crypto::ensure_material(dir.path()).unwrap();
    let paths = DevnetPaths::new(dir.path());
    for org in PEER_ORGS {
        let d = org.domain;
        for f in [
            paths.ca_cert(d),
            paths.org(d).join("ca/priv_sk"),
            paths.tls_ca_cert(d),
            paths.org(d).join("msp/config.yaml"),
            paths.org(d).join(format!("msp/cacerts/ca.{d}-cert.pem")),
            paths
                .org(d)
                .join(format!("msp/tlscacerts/tlsca.{d}-cert.pem")),
            paths.peer(d).join("tls/server.crt"),
            paths.peer(d).join("tls/server.key"),
            paths.peer_tls_ca(d),
            paths
                .peer(d)
                .join(format!("msp/signcerts/peer0.{d}-cert.pem")),
            paths.user_cert(d, "Admin"),
            paths.user_key(d, "User1"),
            paths.user(d, "User1").join("tls/client.crt"),
        ] {
            assert!(f.is_file(), "missing {}", f.display());
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.user_key(d, "User1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = std::fs::read_to_string(paths.user_key(d, "User1")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    }
    let yaml = std::fs::read_to_string(paths.org(ORG1).join("msp/config.yaml")).unwrap();
    assert!(yaml.contains("OrganizationalUnitIdentifier: admin"));

    let material = crypto::load_material(dir.path()).unwrap();
    let mgr = msp::MspManager::new(material.ca_certs()).unwrap();
    let admin = signer(&paths, ORG1, "Admin");
    let user = signer(&paths, ORG1, "User1");
    let org2_user = signer(&paths, "org2.example.com", "User1");
    assert_eq!(
        mgr.deserialize(admin.creator()).unwrap().role,
        msp::Role::Admin
    );
    let id = mgr.deserialize(user.creator()).unwrap();
    assert_eq!(id.role, msp::Role::Client);
    assert_eq!(id.common_name().unwrap(), "User1@org1.example.com");
    assert_eq!(
        mgr.deserialize(material.peer_signers[1].creator())
            .unwrap()
            .msp_id(),
        "Org2MSP"
    );
    assert_eq!(
        mgr.deserialize(material.peer_signers[0].creator())
            .unwrap()
            .role,
        msp::Role::Peer
    );
    assert_eq!(
        mgr.deserialize(material.orderer_signer.creator())
            .unwrap()
            .role,
        msp::Role::Orderer
    );
    // Org2's certificate presented as Org1MSP does not chain to Org1's CA.
    let claim = gxd_fabric::proto::msp::SerializedIdentity {
        mspid: "Org1MSP".into(),
        id_bytes: org2_user.identity().cert_pem().to_vec(),
    }
    .encode_to_vec();
    assert!(matches!(
        mgr.deserialize(&claim),
        Err(msp::MspError::UntrustedCertificate(_))
    ));
    assert!(matches!(
        mgr.deserialize(b"\x0a\x03Xyz"),
        Err(msp::MspError::UnknownMsp(_))
    ));
    assert!(mgr.deserialize(&[0xff, 0xff]).is_err());
    // Signatures: valid, tampered, wrong key, high-S.
    let sig = user.sign(b"hello").unwrap();
    id.verify(b"hello", &sig).unwrap();
    assert_eq!(id.verify(b"hellO", &sig), Err(msp::MspError::BadSignature));
    assert_eq!(
        id.verify(b"hello", &admin.sign(b"hello").unwrap()),
        Err(msp::MspError::BadSignature)
    );
    assert_eq!(
        id.verify(b"hello", b"junk"),
        Err(msp::MspError::MalformedSignature)
    );
    let parsed = p256::ecdsa::Signature::from_der(&sig).unwrap();
    let (r, s) = parsed.split_scalars();
    let high = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
    assert_eq!(
        id.verify(b"hello", high.to_der().as_bytes()),
        Err(msp::MspError::HighS)
    );
    // Initialization is idempotent: a second call keeps the material.
    crypto::ensure_material(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(paths.user_cert(ORG1, "User1")).unwrap(),
        user.identity().cert_pem()
    );
}

#[test]
fn config_defaults() {
    let c = DevnetConfig::new("/d");
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert!(c.tls);
    assert_eq!(c.channel, DEFAULT_CHANNEL);
    assert_eq!(c.chaincode, DEFAULT_CHAINCODE);
    assert_eq!(c.batch, BatchConfig::default());
    let c = c.with_batch(0, Duration::from_secs(1)).with_tls(false);
    assert_eq!(
        c.batch.max_message_count, 1,
        "at least one transaction a block"
    );
    assert!(!c.tls);
}

#[tokio::test]
async fn run_until_stops_on_the_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let handle = start(fast(dir.path())).await.unwrap();
    let addr = handle.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(handle.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(!run.is_finished());
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The ledger is closed: the same directory starts again.
    let again = start(fast(dir.path())).await.unwrap();
    assert_eq!(again.height(), 1);
    again.shutdown().await.unwrap();
}

mod decoding {
    use proptest::prelude::*;

    use super::super::blocks::{chaincode_event, filtered_block, summarize};
    use super::super::peer::unpack;
    use gxd_fabric::proto::common::{Block, BlockData, BlockMetadata};
    use gxd_fabric::proto::protos::SignedProposal;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Malformed proposals, envelopes and blocks from the network never panic the peer.
        #[test]
        fn malformed_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                        sig in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = unpack(&SignedProposal { proposal_bytes: bytes.clone(), signature: sig.clone() });
            let _ = chaincode_event(&bytes);
            let block = Block {
                header: None,
                data: Some(BlockData { data: vec![bytes.clone(), sig.clone()] }),
                metadata: Some(BlockMetadata { metadata: vec![sig.clone(), bytes.clone(), sig] }),
            };
            let _ = summarize(&block);
            let _ = filtered_block("gxchannel", &block);
        }
    }
}

/// One block validated in parallel gives the sequential validation's codes: an in-block read
/// conflict and an in-block duplicate among independent transactions.
#[tokio::test]
async fn parallel_validation_keeps_in_block_conflicts_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(local(dir.path()).with_batch(12, Duration::from_millis(500))).await;
    let (_, user) = bootstrap(&mut net).await;
    let height = net.handle.height();
    let mut envs = Vec::new();
    for (id, to) in [("ta", "alice"), ("tb", "bob")] {
        envs.push(
            net.endorse(&user, &["TransferTokens", id, "treasury", to, "1", ""])
                .await
                .unwrap(),
        );
    }
    envs.push(envs[0].clone());
    for i in 0..9 {
        let u = format!("p{i}");
        envs.push(net.endorse(&user, &["CreateUser", &u, "{}"]).await.unwrap());
    }
    for (env, tx_id) in &envs {
        net.submit(env, tx_id).await.unwrap();
    }
    assert!(
        net.handle
            .wait_for_height(height + 1, Duration::from_secs(30))
            .await
    );
    let blocks = net.blocks(&user, height, height).await;
    use TxValidationCode as C;
    let mut expected = vec![
        C::Valid as u8,
        C::MvccReadConflict as u8,
        C::DuplicateTxid as u8,
    ];
    expected.extend([C::Valid as u8; 9]);
    assert_eq!(filter_of(&blocks[0]), expected);
    assert_eq!(
        net.status(&user, &envs[0].1).await,
        (C::Valid as i32, height)
    );
    assert_eq!(net.balance(&user, "bob").await, "0");
    net.handle.shutdown().await.unwrap();
}

/// gxd's connector opens `connections` HTTP/2 connections to the peer and spreads calls
/// over them in turn (one connection is one task doing all of its streams' TLS and
/// framing). Seen from a TCP proxy in front of the devnet: three connections, each
/// carrying its share of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_spreads_calls_over_its_connections() {
    use gxd_fabric::client::Gateway;
    use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};

    let dir = tempfile::tempdir().unwrap();
    let handle = start(local(dir.path())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let target = handle.local_addr();
    // Bytes each proxied connection carried from the client, sent when it closes.
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<u64>();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let up = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .map_or(0, |(up, _)| up);
                closed_tx.send(up).ok();
            });
        }
    });
    let ca_pem = std::fs::read(handle.paths().peer_tls_ca(ORG1)).unwrap();
    let endpoint = PeerEndpoint::new(proxy.to_string()).with_server_name(PEER_HOST);
    let tls = TlsOptions {
        ca_pem,
        ..TlsOptions::default()
    };
    let connector = std::sync::Arc::new(
        PeerConnector::new(ConnectionConfig::new(vec![endpoint], Some(tls)).with_connections(3))
            .unwrap(),
    );
    let gw = Gateway::new(
        connector.clone(),
        signer(handle.paths(), ORG1, "User1"),
        DEFAULT_CHANNEL,
    );
    for i in 0..12 {
        let spec = gw
            .proposal("gx", "GetWallet")
            .with_args([format!("nobody-{i}")]);
        // The chaincode's answer (no such wallet) does not matter: the call went through.
        let _ = gw.evaluate(&spec).await;
    }
    assert_eq!(connector.open_connections().await, 3);
    drop(gw);
    drop(connector);
    let mut up = Vec::new();
    for _ in 0..3 {
        let bytes = tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .expect("the connector's connections close when it is dropped")
            .unwrap();
        up.push(bytes);
    }
    // Four signed proposals each (a certificate apiece, ~1 KiB) against a TLS ClientHello
    // and the HTTP/2 preface: an unused connection would carry a fraction of the others.
    let (min, max) = (*up.iter().min().unwrap(), *up.iter().max().unwrap());
    assert!(min * 2 > max, "calls unevenly spread: {up:?}");
    assert!(min > 4 * 1024, "each connection carried calls: {up:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), closed.recv())
            .await
            .is_err(),
        "no more than 3 connections"
    );
    handle.shutdown().await.unwrap();
}
