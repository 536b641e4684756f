//! Commit-time validation and block construction against a Fabric 2.5 peer's behaviour:
//! duplicate tx ids within a block, creators that expire between endorsement and commit,
//! malformed endorser transactions and headers sent through Submit, the COMMIT_HASH chain,
//! filtered blocks, and Endorse with `endorsing_organizations`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use prost::Message;

use super::tests::{
    Net, ORG1, bootstrap, fast, filter_of, local, seek_envelope, signed_proposal, start_net,
};
use super::*;
use gxd_fabric::identity::{Identity, P256Signer, SigningIdentity};
use gxd_fabric::proto::common::{
    self, Block, ChannelHeader, Envelope, Metadata, Payload, SignatureHeader,
};
use gxd_fabric::proto::gateway::EndorseRequest;
use gxd_fabric::proto::kvrwset::KvrwSet;
use gxd_fabric::proto::orderer::seek_info;
use gxd_fabric::proto::protos::{
    ChaincodeAction, ChaincodeActionPayload, ChaincodeProposalPayload, Proposal,
    ProposalResponsePayload, SignedProposal, Transaction, TxValidationCode,
};
use gxd_fabric::proto::rwset::TxReadWriteSet;
use gxd_fabric::proto::{deliver_response, filtered_transaction};

const V: i32 = TxValidationCode::Valid as i32;

impl Net {
    /// Endorses `sp` (an already signed proposal) by `orgs` (all when empty); the prepared
    /// transaction signed by `s`.
    async fn endorse_by(
        &mut self,
        s: &SigningIdentity,
        sp: SignedProposal,
        tx_id: &str,
        orgs: &[&str],
    ) -> Result<Envelope, tonic::Status> {
        let resp = self
            .gw
            .endorse(EndorseRequest {
                transaction_id: tx_id.to_owned(),
                channel_id: DEFAULT_CHANNEL.to_owned(),
                proposed_transaction: Some(sp),
                endorsing_organizations: orgs.iter().map(|o| (*o).to_owned()).collect(),
            })
            .await?
            .into_inner();
        let mut env = resp.prepared_transaction.unwrap();
        env.signature = s.sign(&env.payload).unwrap();
        Ok(env)
    }
}

/// The MSP ids of the endorsers of a prepared transaction.
fn endorser_msps(env: &Envelope) -> Vec<String> {
    let payload = Payload::decode(env.payload.as_slice()).unwrap();
    let tx = Transaction::decode(payload.data.as_slice()).unwrap();
    let cap = ChaincodeActionPayload::decode(tx.actions[0].payload.as_slice()).unwrap();
    cap.action
        .unwrap()
        .endorsements
        .iter()
        .map(|e| {
            gxd_fabric::proto::msp::SerializedIdentity::decode(e.endorser.as_slice())
                .unwrap()
                .mspid
        })
        .collect()
}

/// Rewrites an envelope's payload with `f` and signs it again with `s`.
fn resign(s: &SigningIdentity, env: &Envelope, f: impl FnOnce(&mut Payload)) -> Envelope {
    let mut payload = Payload::decode(env.payload.as_slice()).unwrap();
    f(&mut payload);
    let payload = payload.encode_to_vec();
    Envelope {
        signature: s.sign(&payload).unwrap(),
        payload,
    }
}

/// Rewrites the transaction inside an envelope's payload.
fn with_tx(payload: &mut Payload, f: impl FnOnce(&mut Transaction)) {
    let mut tx = Transaction::decode(payload.data.as_slice()).unwrap();
    f(&mut tx);
    payload.data = tx.encode_to_vec();
}

#[tokio::test]
async fn duplicate_tx_ids_in_a_block_count_only_valid_transactions() {
    let dir = tempfile::tempdir().unwrap();
    // Blocks cut 1 s after their first transaction: everything submitted at once shares a block.
    let mut net = start_net(local(dir.path()).with_batch(100, Duration::from_secs(1))).await;
    let (_, user) = bootstrap(&mut net).await;

    // Block: [A, A again, P endorsed by Org1 only, P endorsed by both orgs].
    let (a, a_id) = net
        .endorse(
            &user,
            &["TransferTokens", "ta", "treasury", "alice", "10", ""],
        )
        .await
        .unwrap();
    let (sp, p_id) = signed_proposal(&user, DEFAULT_CHANNEL, "gx", &["CreateUser", "carol", "{}"]);
    let p_org1 = net
        .endorse_by(&user, sp.clone(), &p_id, &["Org1MSP"])
        .await
        .unwrap();
    let p_both = net.endorse_by(&user, sp, &p_id, &[]).await.unwrap();
    let height = net.handle.height();
    for (env, id) in [(&a, &a_id), (&a, &a_id), (&p_org1, &p_id), (&p_both, &p_id)] {
        net.submit(env, id).await.unwrap();
    }
    assert!(
        net.handle
            .wait_for_height(height + 1, Duration::from_secs(30))
            .await
    );
    let block = net.blocks(&user, height, height).await.remove(0);
    assert_eq!(
        filter_of(&block),
        [
            V as u8,
            TxValidationCode::DuplicateTxid as u8,
            TxValidationCode::EndorsementPolicyFailure as u8,
            // An invalid first occurrence does not make the second a duplicate.
            V as u8,
        ]
    );
    assert_eq!(net.balance(&user, "alice").await, "10", "A applied once");
    assert!(net.evaluate(&user, &["GetUser", "carol"]).await.is_ok());
    // CommitStatus answers with an id's first occurrence, as Fabric's block index.
    assert_eq!(
        net.status(&user, &p_id).await,
        (TxValidationCode::EndorsementPolicyFailure as i32, height)
    );

    // Block: [X, Y, Y again], X and Y both spending the treasury: Y conflicts with X, and the
    // copy of Y is a duplicate — Y was valid when duplicates were marked (before MVCC).
    let (x, x_id) = net
        .endorse(
            &user,
            &["TransferTokens", "tx", "treasury", "bob", "10", ""],
        )
        .await
        .unwrap();
    let (y, y_id) = net
        .endorse(
            &user,
            &["TransferTokens", "ty", "treasury", "bob", "20", ""],
        )
        .await
        .unwrap();
    let height = net.handle.height();
    for (env, id) in [(&x, &x_id), (&y, &y_id), (&y, &y_id)] {
        net.submit(env, id).await.unwrap();
    }
    assert!(
        net.handle
            .wait_for_height(height + 1, Duration::from_secs(30))
            .await
    );
    let block = net.blocks(&user, height, height).await.remove(0);
    assert_eq!(
        filter_of(&block),
        [
            V as u8,
            TxValidationCode::MvccReadConflict as u8,
            TxValidationCode::DuplicateTxid as u8,
        ]
    );
    assert_eq!(
        net.status(&user, &y_id).await,
        (TxValidationCode::MvccReadConflict as i32, height)
    );
    assert_eq!(net.balance(&user, "bob").await, "10");
    net.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn endorsing_organizations_choose_the_endorsers() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let args = ["CreateUser", "dave", "{}"];

    for (orgs, expected) in [
        (&["Org1MSP"][..], &["Org1MSP"][..]),
        (&["Org2MSP"][..], &["Org2MSP"][..]),
        (&["Org2MSP", "Org1MSP"][..], &["Org1MSP", "Org2MSP"][..]),
        (&[][..], &["Org1MSP", "Org2MSP"][..]),
    ] {
        let (sp, tx_id) = signed_proposal(&user, DEFAULT_CHANNEL, "gx", &args);
        let env = net.endorse_by(&user, sp, &tx_id, orgs).await.unwrap();
        assert_eq!(
            endorser_msps(&env),
            expected,
            "endorsing organizations {orgs:?}"
        );
    }

    // An organization without peers: UNAVAILABLE, as Fabric's planForOrgs.
    for orgs in [&["Org3MSP"][..], &["Org1MSP", "OrdererMSP", "Nope"][..]] {
        let (sp, tx_id) = signed_proposal(&user, DEFAULT_CHANNEL, "gx", &args);
        let err = net.endorse_by(&user, sp, &tx_id, orgs).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let missing: Vec<&str> = orgs.iter().copied().filter(|o| *o != "Org1MSP").collect();
        assert_eq!(
            err.message(),
            format!(
                "failed to find any endorsing peers for org(s): {}",
                missing.join(", ")
            )
        );
    }

    // Endorsed by Org1 only, where MAJORITY of two orgs needs both: committed, invalid.
    let (sp, tx_id) = signed_proposal(&user, DEFAULT_CHANNEL, "gx", &args);
    let env = net
        .endorse_by(&user, sp, &tx_id, &["Org1MSP"])
        .await
        .unwrap();
    net.submit(&env, &tx_id).await.unwrap();
    assert_eq!(
        net.status(&user, &tx_id).await.0,
        TxValidationCode::EndorsementPolicyFailure as i32
    );
    assert!(
        net.evaluate(&user, &["GetUser", "dave"]).await.is_err(),
        "nothing written"
    );
    net.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_transactions_get_fabric_validation_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    let read = ["GetWallet", "treasury"];

    type Mutation = Box<dyn FnOnce(&mut Payload)>;
    type HeaderEdit = Box<dyn Fn(&mut ChannelHeader, &mut SignatureHeader)>;
    let header_mut = |f: HeaderEdit| -> Mutation {
        Box::new(move |p: &mut Payload| {
            let h = p.header.as_mut().unwrap();
            let mut chdr = ChannelHeader::decode(h.channel_header.as_slice()).unwrap();
            let mut shdr = SignatureHeader::decode(h.signature_header.as_slice()).unwrap();
            f(&mut chdr, &mut shdr);
            h.channel_header = chdr.encode_to_vec();
            h.signature_header = shdr.encode_to_vec();
        })
    };
    let cases: Vec<(&str, Mutation, TxValidationCode)> = vec![
        (
            "two actions",
            Box::new(|p| with_tx(p, |tx| tx.actions.push(tx.actions[0].clone()))),
            TxValidationCode::InvalidEndorserTransaction,
        ),
        (
            "no action",
            Box::new(|p| with_tx(p, |tx| tx.actions.clear())),
            TxValidationCode::InvalidEndorserTransaction,
        ),
        (
            "proposal hash mismatch",
            Box::new(|p| {
                with_tx(p, |tx| {
                    let mut cap =
                        ChaincodeActionPayload::decode(tx.actions[0].payload.as_slice()).unwrap();
                    let mut cpp =
                        ChaincodeProposalPayload::decode(cap.chaincode_proposal_payload.as_slice())
                            .unwrap();
                    cpp.transient_map.insert("k".into(), b"v".to_vec());
                    cap.chaincode_proposal_payload = cpp.encode_to_vec();
                    tx.actions[0].payload = cap.encode_to_vec();
                })
            }),
            TxValidationCode::InvalidEndorserTransaction,
        ),
        (
            "action without a nonce",
            Box::new(|p| {
                with_tx(p, |tx| {
                    let mut shdr =
                        SignatureHeader::decode(tx.actions[0].header.as_slice()).unwrap();
                    shdr.nonce.clear();
                    tx.actions[0].header = shdr.encode_to_vec();
                })
            }),
            TxValidationCode::InvalidEndorserTransaction,
        ),
        (
            "empty nonce",
            header_mut(Box::new(|_, shdr| shdr.nonce.clear())),
            TxValidationCode::BadCommonHeader,
        ),
        (
            "non-zero epoch",
            header_mut(Box::new(|chdr, _| chdr.epoch = 1)),
            TxValidationCode::BadCommonHeader,
        ),
        (
            "wrong tx id",
            header_mut(Box::new(|chdr, _| chdr.tx_id = "00".repeat(32))),
            TxValidationCode::BadProposalTxid,
        ),
        ("unchanged", Box::new(|_| {}), TxValidationCode::Valid),
    ];
    for (what, mutation, expected) in cases {
        let (env, _) = net.endorse(&user, &read).await.unwrap();
        let env = resign(&user, &env, mutation);
        let payload = Payload::decode(env.payload.as_slice()).unwrap();
        let chdr =
            ChannelHeader::decode(payload.header.unwrap().channel_header.as_slice()).unwrap();
        // The orderer accepts them all (it checks the creator's signature, not the content).
        net.submit(&env, &chdr.tx_id).await.unwrap();
        assert_eq!(
            net.status(&user, &chdr.tx_id).await.0,
            expected as i32,
            "{what}"
        );
    }

    // A transient map is not part of the proposal hash (GetProposalHash1): a proposal with
    // transient data commits VALID.
    let (sp, tx_id) = signed_proposal(&user, DEFAULT_CHANNEL, "gx", &read);
    let mut prop = Proposal::decode(sp.proposal_bytes.as_slice()).unwrap();
    let mut cpp = ChaincodeProposalPayload::decode(prop.payload.as_slice()).unwrap();
    cpp.transient_map
        .insert("secret".into(), b"s3cr3t".to_vec());
    prop.payload = cpp.encode_to_vec();
    let proposal_bytes = prop.encode_to_vec();
    let sp = SignedProposal {
        signature: user.sign(&proposal_bytes).unwrap(),
        proposal_bytes,
    };
    let env = net.endorse_by(&user, sp, &tx_id, &[]).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&env.payload).contains("s3cr3t"),
        "transient data stays out of the transaction"
    );
    net.submit(&env, &tx_id).await.unwrap();
    assert_eq!(net.status(&user, &tx_id).await.0, V);
    net.handle.shutdown().await.unwrap();
}

/// An Org1 admin whose certificate expires `secs` seconds from now, issued by the devnet's
/// Org1 CA.
fn short_lived_admin(paths: &DevnetPaths, secs: u64) -> SigningIdentity {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };
    let ca_key_pem = std::fs::read_to_string(paths.org(ORG1).join("ca").join("priv_sk")).unwrap();
    let ca_key = KeyPair::from_pem(&ca_key_pem).unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.distinguished_name = super::crypto::dn(ORG1, &format!("ca.{ORG1}"), None, true);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name =
        super::crypto::dn(ORG1, &format!("Ephemeral@{ORG1}"), Some("admin"), false);
    params.not_before = epoch + (now - Duration::from_secs(3600));
    params.not_after = epoch + (now + Duration::from_secs(secs));
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).unwrap();
    SigningIdentity::new(
        Identity::new("Org1MSP", cert.pem().as_bytes()).unwrap(),
        std::sync::Arc::new(P256Signer::from_pem(&key.serialize_pem()).unwrap()),
    )
}

#[tokio::test]
async fn creator_expired_before_commit_still_commits_valid() {
    let dir = tempfile::tempdir().unwrap();
    // The block is cut 6 s after the transaction arrives; the creator expires after 3 s.
    let mut net = start_net(local(dir.path()).with_batch(100, Duration::from_secs(6))).await;
    let admin = short_lived_admin(&net.paths, 3);
    let (env, tx_id) = net
        .endorse(&admin, &["Bootstrap", "treasury", "1000"])
        .await
        .unwrap();
    net.submit(&env, &tx_id).await.unwrap();
    let user = super::tests::signer(&net.paths, ORG1, "User1");
    assert_eq!(
        net.status(&user, &tx_id).await.0,
        V,
        "not re-checked for expiry at commit"
    );
    assert_eq!(net.balance(&user, "treasury").await, "1000");
    // The certificate really had expired by then: the endorser refuses it now.
    let err = net
        .endorse(&admin, &["CreateUser", "erin", "{}"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    net.handle.shutdown().await.unwrap();
}

/// The writes of a block's valid transactions (for recomputing the commit hash).
fn valid_writes(block: &Block) -> Vec<super::ledger::StateWrite> {
    let number = block.header.as_ref().unwrap().number;
    let filter = filter_of(block);
    let mut out = Vec::new();
    for (i, env) in block.data.as_ref().unwrap().data.iter().enumerate() {
        if filter[i] != V as u8 {
            continue;
        }
        let env = Envelope::decode(env.as_slice()).unwrap();
        let payload = Payload::decode(env.payload.as_slice()).unwrap();
        let tx = Transaction::decode(payload.data.as_slice()).unwrap();
        let cap = ChaincodeActionPayload::decode(tx.actions[0].payload.as_slice()).unwrap();
        let prp = ProposalResponsePayload::decode(
            cap.action.unwrap().proposal_response_payload.as_slice(),
        )
        .unwrap();
        let cca = ChaincodeAction::decode(prp.extension.as_slice()).unwrap();
        let rwset = TxReadWriteSet::decode(cca.results.as_slice()).unwrap();
        for ns in rwset.ns_rwset {
            for w in KvrwSet::decode(ns.rwset.as_slice()).unwrap().writes {
                out.push(super::ledger::StateWrite {
                    namespace: ns.namespace.clone(),
                    key: w.key,
                    value: Some(w.value),
                    version: super::ledger::Height {
                        block: number,
                        tx: i as u64,
                    },
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn commit_hash_chains_across_blocks_and_restarts() {
    use super::blocks::{commit_hash, commit_hash_of, update_batch_bytes};
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    // A block with an invalid transaction too (its writes are not in the batch).
    let (a, a_id) = net
        .endorse(
            &user,
            &["TransferTokens", "ta", "treasury", "alice", "1", ""],
        )
        .await
        .unwrap();
    let (b, b_id) = net
        .endorse(&user, &["TransferTokens", "tb", "treasury", "bob", "1", ""])
        .await
        .unwrap();
    net.submit(&a, &a_id).await.unwrap();
    net.submit(&b, &b_id).await.unwrap();
    net.status(&user, &b_id).await;
    net.handle.shutdown().await.unwrap();
    let mut net = start_net(fast(dir.path())).await;
    net.submit_and_wait(&user, &["CreateUser", "carol", "{}"])
        .await;
    let top = net.handle.height() - 1;
    let blocks = net.blocks(&user, 0, top).await;

    assert!(
        commit_hash_of(&blocks[0]).is_empty(),
        "the genesis block has none"
    );
    let mut previous = Vec::new();
    for block in &blocks[1..] {
        let md = &block.metadata.as_ref().unwrap().metadata
            [common::BlockMetadataIndex::CommitHash as usize];
        let value = Metadata::decode(md.as_slice()).unwrap().value;
        let expected = commit_hash(
            &filter_of(block),
            &update_batch_bytes(&valid_writes(block)),
            &previous,
        );
        assert_eq!(value.len(), 32);
        assert_eq!(
            value,
            expected,
            "block {}",
            block.header.as_ref().unwrap().number
        );
        previous = value;
    }
    net.handle.shutdown().await.unwrap();
}

#[test]
fn commit_hash_encodings_match_fabric() {
    use super::blocks::{commit_hash, update_batch_bytes};
    use super::ledger::{Height, StateWrite};
    let w = |ns: &str, key: &str, value: Option<&[u8]>, block, tx| StateWrite {
        namespace: ns.into(),
        key: key.into(),
        value: value.map(<[u8]>::to_vec),
        version: Height { block, tx },
    };
    // Fabric's TestUpdateBatchBytesBuilderOnlyPublicWrites shape: namespaces sorted, the
    // namespace named on its first entry only, the last write of a key wins, a delete has
    // no value.
    let bytes = update_batch_bytes(&[
        w("ns2", "key3", Some(b"value3"), 1, 3),
        w("ns1", "key2", Some(b"old"), 1, 0),
        w("ns1", "key1", Some(b"value1"), 1, 1),
        w("ns1", "key2", Some(b"value2"), 1, 2),
        w("ns3", "key6", None, 256, 0),
    ]);
    let expected: Vec<u8> = [
        // kvwrites { namespace "ns1" key "key1" value "value1" version_bytes [1,1,1,1] }
        &[0x0a, 25, 0x0a, 3][..],
        b"ns1",
        &[0x1a, 4],
        b"key1",
        &[0x2a, 6],
        b"value1",
        &[0x32, 4, 1, 1, 1, 1],
        // kvwrites { key "key2" value "value2" version_bytes [1,1,1,2] }
        &[0x0a, 20, 0x1a, 4],
        b"key2",
        &[0x2a, 6],
        b"value2",
        &[0x32, 4, 1, 1, 1, 2],
        &[0x0a, 25, 0x0a, 3],
        b"ns2",
        &[0x1a, 4],
        b"key3",
        &[0x2a, 6],
        b"value3",
        &[0x32, 4, 1, 1, 1, 3],
        // kvwrites { namespace "ns3" key "key6" isDelete true version_bytes [2,1,0,0] }
        &[0x0a, 19, 0x0a, 3],
        b"ns3",
        &[0x1a, 4],
        b"key6",
        &[0x20, 1, 0x32, 4, 2, 1, 0, 0],
    ]
    .concat();
    assert_eq!(bytes, expected);
    assert!(update_batch_bytes(&[]).is_empty());

    use sha2::{Digest, Sha256};
    let filter = [0u8, 11];
    let mut h = Sha256::new();
    h.update([2u8, 0, 11]);
    h.update(&bytes);
    h.update(b"prev");
    assert_eq!(commit_hash(&filter, &bytes, b"prev"), h.finalize().to_vec());
}

#[tokio::test]
async fn filtered_blocks_leave_out_actions_without_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(fast(dir.path())).await;
    let (_, user) = bootstrap(&mut net).await;
    // A query submitted as a transaction: valid, no event.
    let (_, code, quiet) = net.submit_and_wait(&user, &["GetWallet", "treasury"]).await;
    assert_eq!(code, V);
    let (_, _, loud) = net
        .submit_and_wait(&user, &["CreateUser", "carol", "{}"])
        .await;

    let env = seek_envelope(&user, quiet, loud, seek_info::SeekBehavior::BlockUntilReady);
    let mut stream = net
        .deliver
        .deliver_filtered(futures::stream::iter(vec![env]))
        .await
        .unwrap()
        .into_inner();
    let mut actions = Vec::new();
    for _ in quiet..=loud {
        let msg = stream.message().await.unwrap().unwrap();
        let Some(deliver_response::Type::FilteredBlock(fb)) = msg.r#type else {
            panic!("expected a filtered block, got {msg:?}");
        };
        for ftx in fb.filtered_transactions {
            let Some(filtered_transaction::Data::TransactionActions(ta)) = ftx.data else {
                panic!("an endorser transaction carries TransactionActions");
            };
            actions.push((fb.number, ta.chaincode_actions));
        }
    }
    let (number, first) = &actions[0];
    assert_eq!(*number, quiet);
    assert!(
        first.is_empty(),
        "no FilteredChaincodeAction without an event: {first:?}"
    );
    let (number, last) = actions.last().unwrap();
    assert_eq!(*number, loud);
    assert_eq!(last.len(), 1);
    let event = last[0].chaincode_event.as_ref().unwrap();
    assert_eq!(event.event_name, "UserCreated");
    assert!(event.payload.is_empty(), "filtered events have no payload");
    net.handle.shutdown().await.unwrap();
}

/// Blocks cut back to back (one transaction each), so that block N+1 is validated while N is
/// being written: a read of a key N wrote is an MVCC conflict, a copy of N's transaction
/// (VALID or not) is DUPLICATE_TXID, CommitStatus reports the first occurrence, and the
/// commit hashes still chain.
#[tokio::test]
async fn pipelined_blocks_see_the_block_in_flight() {
    use super::blocks::{commit_hash, update_batch_bytes};
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(local(dir.path()).with_batch(1, Duration::from_millis(20))).await;
    let (_, user) = bootstrap(&mut net).await;
    let height = net.handle.height();
    let (a, a_id) = net
        .endorse(
            &user,
            &["TransferTokens", "ta", "treasury", "alice", "1", ""],
        )
        .await
        .unwrap();
    let (b, b_id) = net
        .endorse(&user, &["TransferTokens", "tb", "treasury", "bob", "1", ""])
        .await
        .unwrap();
    for (env, id) in [(&a, &a_id), (&a, &a_id), (&b, &b_id), (&b, &b_id)] {
        net.submit(env, id).await.unwrap();
    }
    assert!(
        net.handle
            .wait_for_height(height + 4, Duration::from_secs(30))
            .await
    );
    use TxValidationCode as C;
    let blocks = net.blocks(&user, 0, height + 3).await;
    let filters: Vec<Vec<u8>> = blocks[height as usize..].iter().map(filter_of).collect();
    assert_eq!(
        filters,
        vec![
            vec![C::Valid as u8],
            vec![C::DuplicateTxid as u8],
            vec![C::MvccReadConflict as u8],
            vec![C::DuplicateTxid as u8],
        ]
    );
    assert_eq!(net.status(&user, &a_id).await, (V, height));
    assert_eq!(
        net.status(&user, &b_id).await,
        (C::MvccReadConflict as i32, height + 2)
    );
    let mut previous = Vec::new();
    for block in &blocks[1..] {
        let expected = commit_hash(
            &filter_of(block),
            &update_batch_bytes(&valid_writes(block)),
            &previous,
        );
        assert_eq!(super::blocks::commit_hash_of(block), expected);
        previous = expected;
    }
    net.handle.shutdown().await.unwrap();
}
