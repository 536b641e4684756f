//! The GX suite through the devnet in both chaincode modes — in-process and as a service
//! over the shim protocol — compared outcome by outcome: every transaction and query, the
//! results, the events in the blocks, the endorsement errors (gRPC code, message, per-peer
//! details) and the authorization refusals of two organizations' identities.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::tests::{Mode, Net, ORG1, fast, in_mode, signer, start_net};
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::proto::error_details;

const ORG2: &str = "org2.example.com";

#[derive(Debug, Clone, Copy)]
enum Who {
    Org1Admin,
    Org1User,
    Org2User,
    Org2Admin,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Submit,
    Evaluate,
}

use Kind::{Evaluate, Submit};
use Who::{Org1Admin, Org1User, Org2Admin, Org2User};

/// Every GX function, its errors and its authorization rules, in order.
const SCRIPT: &[(Who, Kind, &[&str])] = &[
    (Org1User, Submit, &["Bootstrap", "treasury", "1000000"]),
    (Org1Admin, Submit, &["Bootstrap", "treasury", "1000000"]),
    (Org1Admin, Submit, &["Bootstrap", "treasury", "5"]),
    (
        Org1User,
        Submit,
        &["CreateUser", "alice", r#"{"country":"DE"}"#],
    ),
    (Org1User, Submit, &["CreateUser", "bob", "{}"]),
    (Org1User, Submit, &["CreateUser", "alice", "{}"]),
    (Org1User, Submit, &["CreateUser", "dora", "[]"]),
    (Org2User, Submit, &["CreateUser", "carol", "{}"]),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t1", "treasury", "alice", "500", "hello"],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t1", "treasury", "alice", "500", "again"],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t2", "alice", "bob", "501", ""],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t3", "alice", "bob", "01", ""],
    ),
    (Org1User, Submit, &["TransferTokens", "t4", "alice", "bob"]),
    (
        Org2User,
        Submit,
        &["TransferTokens", "t5", "alice", "carol", "1", ""],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t6", "treasury", "carol", "40", "to org2"],
    ),
    (
        Org2User,
        Submit,
        &["TransferTokens", "t7", "carol", "alice", "15", "back"],
    ),
    (
        Org2Admin,
        Submit,
        &["TransferTokens", "t8", "carol", "bob", "5", "admin"],
    ),
    (
        Org1User,
        Submit,
        &["CreateMultisigWallet", "vault", r#"["alice","bob"]"#, "2"],
    ),
    (
        Org1User,
        Submit,
        &["CreateMultisigWallet", "vault2", r#"["alice"]"#, "3"],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t9", "treasury", "vault", "100", ""],
    ),
    (
        Org1User,
        Submit,
        &["TransferTokens", "t10", "vault", "bob", "1", ""],
    ),
    (
        Org1User,
        Submit,
        &["ProposeTransfer", "p1", "vault", "alice", "60", "rent"],
    ),
    (
        Org1User,
        Submit,
        &["ProposeTransfer", "p1", "vault", "alice", "1", ""],
    ),
    (
        Org1User,
        Submit,
        &["ProposeTransfer", "p2", "vault", "bob", "101", ""],
    ),
    (
        Org2User,
        Submit,
        &["ProposeTransfer", "p3", "vault", "carol", "1", ""],
    ),
    (Org2User, Submit, &["ApproveTransfer", "p1", "alice"]),
    (Org1User, Submit, &["ApproveTransfer", "p1", "carol"]),
    (Org1User, Submit, &["ApproveTransfer", "p1", "alice"]),
    (Org1User, Submit, &["ApproveTransfer", "p1", "alice"]),
    (Org1User, Submit, &["ApproveTransfer", "p1", "bob"]),
    (Org1User, Submit, &["RejectTransfer", "p1", "bob"]),
    (
        Org1User,
        Submit,
        &["ProposeTransfer", "p4", "vault", "bob", "10", ""],
    ),
    (Org1User, Submit, &["RejectTransfer", "p4", "alice"]),
    (Org1User, Submit, &["ApproveTransfer", "p4", "bob"]),
    (Org1User, Evaluate, &["GetUser", "alice"]),
    (Org2User, Evaluate, &["GetUser", "carol"]),
    (Org1User, Evaluate, &["GetUser", "nobody"]),
    (Org1User, Evaluate, &["GetWallet", "alice"]),
    (Org1User, Evaluate, &["GetWallet", "vault"]),
    (Org2User, Evaluate, &["GetWallet", "treasury"]),
    (Org1User, Evaluate, &["GetWallet", "nowhere"]),
    (Org1User, Evaluate, &["GetProposal", "p1"]),
    (Org1User, Evaluate, &["GetProposal", "p4"]),
    (Org1User, Evaluate, &["GetProposal", "p9"]),
    (Org1User, Evaluate, &["NoSuchFunction"]),
    (Org1User, Evaluate, &["GetWallet"]),
];

fn identity(net: &Net, who: Who) -> SigningIdentity {
    match who {
        Org1Admin => signer(&net.paths, ORG1, "Admin"),
        Org1User => signer(&net.paths, ORG1, "User1"),
        Org2User => signer(&net.paths, ORG2, "User1"),
        Org2Admin => signer(&net.paths, ORG2, "Admin"),
    }
}

fn refusal(e: &tonic::Status) -> String {
    let details: Vec<String> = error_details(e).into_iter().map(|d| d.message).collect();
    format!("{:?}: {} {details:?}", e.code(), e.message())
}

/// Runs the script; returns one line per step, then the events of the blocks in order.
async fn run(mode: Mode) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_net(in_mode(mode, fast(dir.path())).await).await;
    let mut out = Vec::new();
    for (who, kind, args) in SCRIPT {
        let s = identity(&net, *who);
        let line = match kind {
            Submit => match net.endorse(&s, args).await {
                Ok((env, tx_id)) => {
                    net.submit(&env, &tx_id).await.unwrap();
                    let (code, _) = net.status(&s, &tx_id).await;
                    format!("committed with code {code}")
                }
                Err(e) => format!("refused at endorsement: {}", refusal(&e)),
            },
            Evaluate => match net.evaluate(&s, args).await {
                Ok(v) => format!("result {v}"),
                Err(e) => format!("refused: {}", refusal(&e)),
            },
        };
        out.push(format!("{who:?} {args:?}: {line}"));
    }
    let user = identity(&net, Org1User);
    let height = net.handle.height();
    for block in net.blocks(&user, 1, height - 1).await {
        let parsed = gxd_fabric::block::ParsedBlock::parse(block).unwrap();
        for tx in &parsed.transactions {
            let event = tx
                .event
                .as_ref()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e.chaincode_id,
                        e.event_name,
                        String::from_utf8_lossy(&e.payload)
                    )
                })
                .unwrap_or_default();
            out.push(format!("valid={} event={event}", tx.is_valid()));
        }
    }
    net.handle.shutdown().await.unwrap();
    out
}

#[tokio::test]
async fn the_gx_suite_is_identical_in_process_and_as_a_service() {
    let t = std::time::Instant::now();
    let in_process = run(Mode::InProcess).await;
    let t_in = t.elapsed();
    let t = std::time::Instant::now();
    let as_service = run(Mode::Service).await;
    let t_service = t.elapsed();
    eprintln!(
        "{} steps: in-process {t_in:?}, as a service {t_service:?} (each with a devnet start)",
        SCRIPT.len()
    );
    assert_eq!(in_process.len(), as_service.len());
    for (a, b) in in_process.iter().zip(&as_service) {
        assert_eq!(a, b, "in-process vs service");
    }
    // The script exercises what it claims: successes, refusals and the org rule.
    let all = in_process.join("\n");
    for needle in [
        "committed with code 0",
        "refused at endorsement",
        "requires an admin identity",
        "Org2MSP",
        "TransferApproved",
        "TransferRejected",
        "MultisigWalletCreated",
        "SystemBootstrapped",
        "UserCreated",
        "TokensTransferred",
        "TransferProposed",
    ] {
        assert!(all.contains(needle), "{needle} missing from:\n{all}");
    }
}

/// Many transactions at once over the one chaincode stream: each is answered on its own
/// (keyed by channel + txid), none waits for another to complete.
#[tokio::test]
async fn concurrent_transactions_share_one_stream() {
    use gxd_fabric::proto::gateway::EndorseRequest;
    let dir = tempfile::tempdir().unwrap();
    let net = start_net(in_mode(Mode::Service, fast(dir.path())).await).await;
    let user = identity(&net, Org1User);
    const N: usize = 48;
    let calls = (0..N).map(|i| {
        let mut gw = net.gw.clone();
        let user = user.clone();
        async move {
            let id = format!("user{i}");
            let (sp, tx_id) = super::tests::signed_proposal(
                &user,
                crate::DEFAULT_CHANNEL,
                "gx",
                &["CreateUser", &id, "{}"],
            );
            let r = gw
                .endorse(EndorseRequest {
                    transaction_id: tx_id,
                    channel_id: crate::DEFAULT_CHANNEL.to_owned(),
                    proposed_transaction: Some(sp),
                    endorsing_organizations: Vec::new(),
                })
                .await
                .unwrap()
                .into_inner();
            let payload = r
                .prepared_transaction
                .map(|e| e.payload)
                .unwrap_or_default();
            (id, payload)
        }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.len(), N);
    for (id, payload) in &results {
        // Each endorsement carries its own user's result.
        let text = String::from_utf8_lossy(payload);
        assert!(text.contains(&format!("\"userId\":\"{id}\"")), "{id}");
    }
    net.handle.shutdown().await.unwrap();
}
