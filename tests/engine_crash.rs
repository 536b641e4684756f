#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd run` killed with SIGKILL at random moments while its engine works through the
//! outbox, again and again (`GXD_ENGINE_CRASH_ROUNDS`, default 30; `GXD_CRASH_SEED`), with
//! the devnet's commit-then-lose-the-reply fault in some rounds. Between kills more commands
//! are accepted into the outbox. At the end a last run drains everything, and the verdict
//! is read from the ledger itself:
//! - exactly one VALID transaction per accepted command (lost = 0, duplicated = 0);
//! - per partition (the paying wallet), the VALID transactions are in acceptance order;
//! - every command is COMMITTED in the outbox;
//! - the read models equal a rebuild from block 0 (digest), and every balance equals the
//!   ledger's.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gxd_devnet::{DevnetConfig, Fault, FaultRule, Rpc};
use gxd_engine::projector::{DeliverSource, Projector, ProjectorConfig, ProjectorState};
use gxd_fabric::block::ParsedBlock;
use gxd_fabric::client::Gateway;
use gxd_fabric::stream::{Backoff, BlockStream, BlockStreamConfig};
use gxd_gx::commands::command_type;
use gxd_storage::checkpoint::CheckpointLog;
use gxd_storage::outbox::{CommandId, NewCommand, Outbox, OutboxOptions};
use gxd_storage::pg::{self, read_models};
use gxd_storage::{Db, DbOptions};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// The paying wallets (one partition each).
const WALLETS: [&str; 5] = ["treasury", "u0", "u1", "u2", "u3"];
/// Each payer pays into its own sink, so no wallet is touched by two partitions: a wallet
/// credited from several partitions at once would see MVCC read conflicts (GX reads the
/// payee's wallet), which this test is not about.
fn sink(payer: &str) -> String {
    format!("sink-{payer}")
}

async fn ledger(gw: &Gateway, height: u64) -> Vec<ParsedBlock> {
    let cancel = CancellationToken::new();
    let mut s = BlockStream::new(
        gw.connector().clone(),
        gw.identity().clone(),
        BlockStreamConfig::new(gw.channel(), 0),
        cancel.clone(),
    );
    let mut out = Vec::new();
    while (out.len() as u64) < height {
        out.push(s.next().await.unwrap().unwrap());
    }
    cancel.cancel();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_at_random_keeps_exactly_once_and_order() {
    let rounds: u32 = std::env::var("GXD_ENGINE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("GXD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("engine crash test: rounds={rounds} seed={seed} (GXD_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(
        DevnetConfig::new(dir.path().join("devnet"))
            .with_listen("127.0.0.1:0".parse().unwrap())
            .with_batch(20, Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let connector = devnet.connector().unwrap();
    let id = |name: &str| devnet.identity(name).unwrap();
    let admin = devnet.gateway("Admin").unwrap();
    let client = devnet.gateway("User1").unwrap();
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000000000"]),
        )
        .await
        .unwrap();
    for w in WALLETS {
        admin
            .submit_transaction(
                &admin
                    .proposal("gx", "CreateUser")
                    .with_args([&sink(w), "{}"]),
            )
            .await
            .unwrap();
    }
    for (i, u) in WALLETS[1..].iter().enumerate() {
        admin
            .submit_transaction(&admin.proposal("gx", "CreateUser").with_args([*u, "{}"]))
            .await
            .unwrap();
        admin
            .submit_transaction(&admin.proposal("gx", "TransferTokens").with_args([
                &format!("fund-{i}"),
                "treasury",
                u,
                "1000000",
                "",
            ]))
            .await
            .unwrap();
    }

    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet)
        + "submit_timeout_seconds = 2
commit_status_timeout_seconds = 10

\
           [submitter]
backoff_base_milliseconds = 20
backoff_max_seconds = 1
";
    let config = write_config(dir.path(), &settings);
    let data = dir.path().join("data");
    let args = ["run", "--config", config.to_str().unwrap()];

    // (command id, partition) in acceptance order.
    let mut accepted: Vec<(CommandId, String)> = Vec::new();
    let mut kills = 0u32;
    let mut lost_reply_faults = 0u32;
    let started = Instant::now();
    for round in 0..rounds {
        {
            let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
            let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
            for k in 0..20 {
                let from = WALLETS[rng.gen_range(0..WALLETS.len())];
                let to = sink(from);
                let c = outbox
                    .enqueue(NewCommand {
                        tenant: "Org1MSP".into(),
                        command_type: command_type::TRANSFER_TOKENS.into(),
                        request_id: format!("r{round}-{k}"),
                        partition_key: from.into(),
                        payload: serde_json::to_vec(&serde_json::json!({
                            "fromWalletId": from, "toWalletId": to, "amount": "1",
                        }))
                        .unwrap(),
                    })
                    .await
                    .unwrap();
                accepted.push((c.command.id, from.to_owned()));
            }
        }
        if round % 5 == 2 {
            // The transaction is ordered and commits, but the reply is lost.
            devnet.faults().add(FaultRule {
                rpc: Rpc::Submit,
                fault: Fault::ProcessThenUnavailable,
                times: Some(2),
            });
            lost_reply_faults += 2;
        }
        let mut gxd = Gxd::spawn(&args, &[]);
        let alive = Duration::from_millis(rng.gen_range(150..1500));
        std::thread::sleep(alive);
        gxd.signal(nix::sys::signal::Signal::SIGKILL);
        let status = gxd
            .wait_exit(Duration::from_secs(30))
            .expect("killed gxd exits");
        assert!(
            !status.success(),
            "round {round}: expected a kill, got {status}"
        );
        kills += 1;
    }

    // The last run drains the outbox: wait until the read models hold every transfer.
    let mut gxd = Gxd::spawn_with_api(&args, &[], settings.api_port);
    gxd.wait_ready(Duration::from_secs(120)).unwrap();
    let pool = pg::connect_pool(&db.settings("gxd-crash-test"))
        .await
        .unwrap();
    let want = i64::try_from(accepted.len() + WALLETS.len() - 1).unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let c = pool.get().await.unwrap();
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM transfers WHERE kind = 'transfer'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n >= want {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "not drained:\n{}", gxd.logs());
    // The projector has seen every transfer; let the submitter record the last commits.
    let api = gxd.api.unwrap();
    let idle = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        http_get(api, "/metrics")
            .map(|(_, m)| m.lines().any(|l| l == "gxd_submitter_in_flight 0"))
            .unwrap_or(false)
    });
    assert!(idle, "submitter still busy:\n{}", gxd.logs());
    gxd.sigterm();
    assert!(
        gxd.wait_exit(Duration::from_secs(30)).unwrap().success(),
        "{}",
        gxd.logs()
    );

    // The outbox: every command committed.
    {
        let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        for (id, _) in &accepted {
            let c = outbox.get(*id).unwrap();
            assert!(c.status.is_committed(), "{c:#?}");
        }
        assert!(outbox.verify_integrity().unwrap().is_ok());
    }

    // The ledger's verdict.
    let blocks = ledger(&client, devnet.height()).await;
    let mut valid: HashMap<String, u32> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut duplicates_seen = 0u32;
    for t in blocks.iter().flat_map(|b| b.transactions.iter()) {
        if t.function() != Some("TransferTokens") {
            continue;
        }
        let transfer_id = String::from_utf8(t.args[1].clone()).unwrap();
        let from = String::from_utf8(t.args[2].clone()).unwrap();
        if t.is_valid() {
            *valid.entry(transfer_id.clone()).or_default() += 1;
            order.entry(from).or_default().push(transfer_id);
        } else {
            duplicates_seen += 1;
        }
    }
    let mut lost = 0;
    let mut duplicated = 0;
    for (id, _) in &accepted {
        match valid.get(&id.to_string()).copied().unwrap_or(0) {
            0 => lost += 1,
            1 => {}
            _ => duplicated += 1,
        }
    }
    for w in WALLETS {
        let expected: Vec<String> = accepted
            .iter()
            .filter(|(_, p)| p == w)
            .map(|(id, _)| id.to_string())
            .collect();
        let on_ledger: Vec<String> = order
            .get(w)
            .map(|v| {
                v.iter()
                    .filter(|id| !id.starts_with("fund-"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            on_ledger, expected,
            "partition {w}: ledger order = acceptance order"
        );
    }
    eprintln!(
        "engine crash test: rounds={rounds} kills={kills} commands={} lost-reply faults={lost_reply_faults} \
         invalid copies on the ledger={duplicates_seen} lost={lost} duplicated={duplicated} ({:.1}s)",
        accepted.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, duplicated), (0, 0));

    // The read models: every balance is the ledger's, and a rebuild from block 0 gives
    // the same digest.
    for w in WALLETS
        .iter()
        .map(|w| w.to_string())
        .chain(WALLETS.iter().map(|w| sink(w)))
    {
        let w = w.as_str();
        let on_ledger: serde_json::Value = serde_json::from_slice(
            &client
                .evaluate(&client.proposal("gx", "GetWallet").with_args([w]))
                .await
                .unwrap(),
        )
        .unwrap();
        let row = read_models::wallet(&pool, w).await.unwrap().unwrap();
        assert_eq!(row.balance, on_ledger["balance"].as_str().unwrap(), "{w}");
    }
    let digest = read_models::read_model_digest(&pool).await.unwrap();
    let fresh = TestDb::new().await.unwrap();
    let fresh_pool = pg::connect_pool(&fresh.settings("gxd-crash-test"))
        .await
        .unwrap();
    pg::migrate::migrate_pool(&fresh_pool).await.unwrap();
    let log = CheckpointLog::new(
        Db::open(dir.path().join("rebuild-log"), &DbOptions::default()).unwrap(),
    );
    let projector = Projector::new(
        ProjectorConfig::new(gxd_devnet::DEFAULT_CHANNEL),
        fresh_pool.clone(),
        log,
        Arc::new(gxd_gx::handlers::GxProjection::new("gx")),
        Arc::new(DeliverSource {
            connector,
            signer: id("User1"),
            backoff: Backoff::default(),
        }),
    );
    let mut status = projector.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    let height = devnet.height();
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| {
            s.state == ProjectorState::Running && s.height.is_some_and(|h| h + 1 >= height)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        read_models::read_model_digest(&fresh_pool).await.unwrap(),
        digest
    );
    devnet.shutdown().await.unwrap();
}
