#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd projections rebuild`, through the binary, against the devnet and a real PostgreSQL:
//!
//! - beside a running `gxd run` while the ledger keeps moving: the rebuilt read models equal
//!   the incremental ones at the same block, are swapped in, and the live projector goes on
//!   writing into them (every later transfer projected once, balances the ledger's);
//! - on damaged read models: `--verify` finds the tables that differ and changes nothing
//!   (exit 1); the rebuild repairs them, and keeps the API's `user_profiles`;
//! - refusals: nothing projected yet; another rebuild running.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gxd_storage::pg::{self, rebuild};

fn rebuild_json(config: &Path, verify: bool) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "projections",
        "rebuild",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ];
    if verify {
        args.push("--verify");
    }
    let out = run_gxd(&args, &[], Duration::from_secs(180));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, stderr)
}

/// [`rebuild_json`] on a blocking thread, so that the test's own load keeps running.
async fn rebuild_json_beside(
    config: &Path,
    verify: bool,
) -> (Option<i32>, serde_json::Value, String) {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || rebuild_json(&config, verify))
        .await
        .unwrap()
}

async fn leftover_schemas(pool: &pg::Pool) -> Vec<String> {
    let c = pool.get().await.unwrap();
    c.query(
        "SELECT nspname FROM pg_namespace WHERE nspname IN ($1, $2)",
        &[&rebuild::SHADOW_SCHEMA, &rebuild::RETIRED_SCHEMA],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn transfer(admin: &gxd_fabric::client::Gateway, id: String, from: &str) {
    let args = vec![
        id,
        from.to_owned(),
        verdict::sink(from),
        "1".to_owned(),
        String::new(),
    ];
    admin
        .submit_transaction(&admin.proposal("gx", "TransferTokens").with_args(args))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_beside_a_running_gxd_under_load_swaps_identical_read_models() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(local_devnet(dir.path())).await.unwrap();
    // Four payers, one stream of transfers each (a wallet paid from by one stream only:
    // no MVCC conflicts); the three funded by the treasury make three transfers already.
    let payers: Vec<String> = ["treasury", "p1", "p2", "p3"].map(String::from).to_vec();
    verdict::setup(&devnet, &payers).await;
    let funding = 3;
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let pool = pg::connect_pool(&db.settings("gxd-rebuild-test"))
        .await
        .unwrap();

    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(90)).unwrap();

    // The ledger keeps moving (transfers by another client of the org) for the whole test.
    let admin = devnet.gateway("Admin").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (admin, stop, submitted) = (admin.clone(), stop.clone(), submitted.clone());
        let payers = payers.clone();
        async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Four in flight at a time, one per payer: a few transactions per block.
                let batch: Vec<_> = payers
                    .iter()
                    .map(|p| transfer(&admin, format!("load-{k}-{p}"), p))
                    .collect();
                futures::future::join_all(batch).await;
                submitted.fetch_add(4, Ordering::Relaxed);
                k += 1;
            }
        }
    });
    let got = verdict::wait_projected_transfers(&pool, 40, Duration::from_secs(90)).await;
    assert!(got.is_ok(), "{got:?}\n{}", gxd.logs());
    let position_before = pg::projection::position(&pool, devnet.channel())
        .await
        .unwrap()
        .unwrap()
        .block_number;

    let (code, report, stderr) = rebuild_json_beside(&config, false).await;
    assert_eq!(code, Some(0), "{stderr}\n{report}");
    assert_eq!(report["identical"], true, "{report}");
    assert_eq!(report["swapped"], true, "{report}");
    assert!(
        report["position"].as_u64().unwrap() >= position_before,
        "{report}"
    );
    assert!(report["transactions"].as_u64().unwrap() >= 40, "{report}");
    assert!(
        stderr.contains("rebuild: block "),
        "progress on stderr: {stderr}"
    );
    let swapped_at = report["position"].as_u64().unwrap();

    // The load goes on a little after the swap, then stops; the live projector projects
    // every transfer into the swapped-in tables.
    let after = submitted.load(Ordering::Relaxed) + 20;
    while submitted.load(Ordering::Relaxed) < after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let want = i64::try_from(submitted.load(Ordering::Relaxed)).unwrap() + funding;
    let got = verdict::wait_projected_transfers(&pool, want, Duration::from_secs(90)).await;
    assert_eq!(got, Ok(want), "{}", gxd.logs());
    let position = pg::projection::position(&pool, devnet.channel())
        .await
        .unwrap()
        .unwrap()
        .block_number;
    assert!(
        position > swapped_at,
        "the live projector went on after the swap"
    );
    assert!(gxd.error_lines().is_empty(), "{:?}", gxd.error_lines());

    let client = devnet.gateway("User1").unwrap();
    let height = devnet.height();
    let blocks = verdict::ledger_blocks(&client, height).await;
    verdict::check_read_models(&pool, &client, &blocks, &verdict::all_wallets(&payers)).await;
    assert!(leftover_schemas(&pool).await.is_empty());

    // And once more, compare only: identical, exit 0.
    let (code, report, stderr) = rebuild_json_beside(&config, true).await;
    assert_eq!(code, Some(0), "{stderr}\n{report}");
    assert_eq!(report["identical"], true, "{report}");
    assert_eq!(report["swapped"], false, "{report}");
    assert_eq!(report["position"].as_u64(), Some(position), "{report}");

    gxd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_damaged_read_models_and_rebuild_repairs_them() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(local_devnet(dir.path())).await.unwrap();
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let pool = pg::connect_pool(&db.settings("gxd-rebuild-test"))
        .await
        .unwrap();
    // The migrations, and nothing projected yet: nothing to rebuild.
    pg::migrate::migrate_pool(&pool).await.unwrap();
    let (code, _, stderr) = rebuild_json(&config, false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing to rebuild"), "{stderr}");

    let payers = vec!["treasury".to_owned()];
    verdict::setup(&devnet, &payers).await;
    let admin = devnet.gateway("Admin").unwrap();
    for k in 0..5 {
        transfer(&admin, format!("t-{k}"), "treasury").await;
    }
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let got = verdict::wait_projected_transfers(&pool, 5, Duration::from_secs(90)).await;
    assert_eq!(got, Ok(5), "{}", gxd.logs());
    gxd.stop();

    // Damage: a balance off by one, a history row gone; and a profile the API wrote.
    let c = pool.get().await.unwrap();
    c.batch_execute(
        "UPDATE wallets SET balance = balance + 1 WHERE wallet_id = 'treasury';
         DELETE FROM wallet_history WHERE ctid = (SELECT ctid FROM wallet_history LIMIT 1);
         INSERT INTO user_profiles (user_id, profile, salt, commitment, command_id)
         VALUES ('alice', '{\"name\": \"Alice\"}', '\\x00', 'c', gen_random_uuid());",
    )
    .await
    .unwrap();
    let damaged = pg::read_models::read_model_digest(&pool).await.unwrap();

    // A second rebuild while one holds the lock is refused.
    let held = rebuild::Rebuild::begin(&db.settings("gxd-rebuild-test"), devnet.channel())
        .await
        .unwrap();
    let (code, _, stderr) = rebuild_json(&config, true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another `gxd projections rebuild` is running"),
        "{stderr}"
    );
    held.finish().await.unwrap();

    let (code, report, stderr) = rebuild_json(&config, true);
    assert_eq!(
        code,
        Some(1),
        "--verify exits 1 when they differ: {stderr}\n{report}"
    );
    assert_eq!(report["identical"], false, "{report}");
    assert_eq!(
        report["differingTables"],
        serde_json::json!(["wallets", "wallet_history"]),
        "{report}"
    );
    assert_eq!(
        pg::read_models::read_model_digest(&pool).await.unwrap(),
        damaged,
        "--verify changed nothing"
    );

    let (code, report, stderr) = rebuild_json(&config, false);
    assert_eq!(code, Some(0), "{stderr}\n{report}");
    assert_eq!(report["identical"], false, "{report}");
    assert_eq!(report["swapped"], true, "{report}");
    let client = devnet.gateway("User1").unwrap();
    let blocks = verdict::ledger_blocks(&client, devnet.height()).await;
    verdict::check_read_models(&pool, &client, &blocks, &verdict::all_wallets(&payers)).await;
    let profiles: i64 = c
        .query_one(
            "SELECT count(*) FROM user_profiles WHERE user_id = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(profiles, 1, "user_profiles is not a projection: kept");
    assert!(leftover_schemas(&pool).await.is_empty());
    let (code, report, _) = rebuild_json(&config, true);
    assert_eq!(
        (code, &report["identical"]),
        (Some(0), &serde_json::json!(true))
    );
}
