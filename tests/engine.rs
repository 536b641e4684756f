#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd run` with the engine, through the real binary: commands already in the outbox are
//! submitted to the devnet through GX's catalog and committed once, the projector brings the
//! ledger into PostgreSQL's read models, `/readyz` names the outbox and projector checks,
//! and `/metrics` counts the submitter's outcomes. The config is the one an operator writes:
//! peer endpoint, TLS CA, MSP id and MSP directory in the cryptogen layout.

mod common;

use std::time::Duration;

use common::*;
use gxd_gx::commands::command_type;
use gxd_storage::outbox::{NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions};

fn enqueue_payload(
    command_type: &str,
    partition: &str,
    request: &str,
    payload: serde_json::Value,
) -> NewCommand {
    NewCommand {
        tenant: "Org1MSP".into(),
        command_type: command_type.into(),
        request_id: request.into(),
        partition_key: partition.into(),
        extra_partition_keys: Vec::new(),
        payload: serde_json::to_vec(&payload).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_submits_the_outbox_and_projects_the_ledger() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet =
        gxd_devnet::start(local_devnet(dir.path()).with_batch(20, Duration::from_millis(20)))
            .await
            .unwrap();

    // The organization's admin bootstraps the system (gxd signs as a client: not an admin).
    let admin = devnet.gateway("Admin").unwrap();
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "Bootstrap")
                .with_args(["treasury", "1000"]),
        )
        .await
        .unwrap();
    admin
        .submit_transaction(
            &admin
                .proposal("gx", "CreateUser")
                .with_args(["alice", "{}"]),
        )
        .await
        .unwrap();

    // Commands accepted while the daemon was down (two partitions: they run concurrently).
    let data = dir.path().join("data");
    let ids = {
        let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        let mut ids = Vec::new();
        for new in [
            enqueue_payload(
                command_type::CREATE_USER,
                "bob",
                "r1",
                serde_json::json!({"userId": "bob", "country": "DE", "profileCommitment": "00ff"}),
            ),
            enqueue_payload(
                command_type::TRANSFER_TOKENS,
                "treasury",
                "r2",
                serde_json::json!({"fromWalletId": "treasury", "toWalletId": "alice", "amount": "25"}),
            ),
        ] {
            ids.push(outbox.enqueue(new).await.unwrap().command.id);
        }
        ids
    };

    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let check = run_gxd(
        &["config", "check", config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    let body = gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = readiness["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "postgres",
            "migrations",
            "outbox",
            "projector",
            "projector_lag"
        ]
    );

    // The read models show both commands' effects (the projector follows the ledger).
    let client = db.connect().await.unwrap();
    let balance = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let row = client
                .query_opt(
                    "SELECT balance::text FROM wallets WHERE wallet_id = 'alice'",
                    &[],
                )
                .await
                .unwrap();
            // bob's command is in another partition: it may land in a later block.
            let bob = client
                .query_opt("SELECT 1 FROM users WHERE user_id = 'bob'", &[])
                .await
                .unwrap();
            if let Some(row) = row {
                let b: String = row.get(0);
                if b == "25" && bob.is_some() {
                    return b;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("alice's wallet or bob not projected:\n{}", gxd.logs()));
    assert_eq!(balance, "25");
    let treasury: String = client
        .query_one(
            "SELECT balance::text FROM wallets WHERE wallet_id = 'treasury'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(treasury, "975");
    let bob = client
        .query_opt("SELECT 1 FROM users WHERE user_id = 'bob'", &[])
        .await
        .unwrap();
    assert!(bob.is_some(), "bob projected");

    // The submitter records each commit once the peer reports it (the projector may have
    // seen the block first).
    let api = gxd.api.unwrap();
    let want = r#"gxd_submitter_attempts_total{outcome="committed"} 2"#;
    let mut metrics = String::new();
    for _ in 0..300 {
        let (code, m) = http_get(api, "/metrics").unwrap();
        assert_eq!(code, 200);
        metrics = m;
        if metrics.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metrics.contains(want), "{metrics}");
    assert!(metrics.contains("gxd_projector_running 1"), "{metrics}");
    assert!(!metrics.contains("gxd_projector_block -1"), "{metrics}");
    // The ledger height is known (genesis, bootstrap and the two commands' blocks at least)
    // and the projector is not behind it.
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(gauge("gxd_projector_ledger_height") >= 3.0, "{metrics}");
    assert!(gauge("gxd_projector_lag_blocks") >= 0.0, "{metrics}");
    assert!(gauge("gxd_projector_lag_seconds") < 60.0, "{metrics}");
    assert!(
        gauge("gxd_outbox_oldest_in_flight_age_seconds") >= 0.0,
        "{metrics}"
    );

    // `gxd projections status` while the daemon holds the data dir: PostgreSQL only.
    let cfg = config.to_str().unwrap();
    let out = run_gxd(
        &["projections", "status", "--config", cfg],
        &[],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("locked by a running gxd"), "{text}");
    assert!(text.contains("position:"), "{text}");

    gxd.stop();
    // No ERROR lines (the 503s of /readyz while the daemon starts are WARN).
    let errors = gxd.error_lines();
    assert!(errors.is_empty(), "{errors:?}");

    let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    // The projector moved each command on to PROJECTED with its block, index and result.
    for id in ids {
        let c = outbox.get(id).unwrap();
        assert_eq!(c.status, Status::Projected, "{c:#?}");
        assert_eq!(c.attempts, 0);
        assert!(c.block_number.is_some() && c.tx_index.is_some(), "{c:#?}");
        assert_eq!(
            c.result.as_ref().and_then(|r| r.status),
            Some(200),
            "{c:#?}"
        );
        let txid = c.txid.clone().unwrap();
        assert_eq!(outbox.command_by_txid(&txid).unwrap().unwrap().id, id);
    }
    drop(outbox);

    // With the daemon stopped, the data dir is read too; the peer says its height.
    let out = run_gxd(
        &["projections", "status", "--json", "--config", cfg],
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let height = devnet.height();
    assert_eq!(st["position"], serde_json::json!(height - 1), "{st}");
    assert_eq!(st["checkpointHeight"], st["position"], "{st}");
    assert_eq!(st["projectedCommands"], 2, "{st}");
    assert_eq!(st["ledgerHeight"], serde_json::json!(height), "{st}");
    assert_eq!(st["lagBlocks"], 0, "{st}");
    assert!(st["dataDirNote"].is_null(), "{st}");
    devnet.shutdown().await.unwrap();
}
