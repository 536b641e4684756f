#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backup and restore as README's "Backup and restore" says: stop gxd, copy `/var/lib/gxd`
//! (the outbox and the checkpoint log), `pg_dump` the database. Then the ledger moves on
//! and gxd projects more (PostgreSQL and the checkpoint log get ahead of the backup); then
//! both are restored — the database into a fresh one with `pg_restore`, the state directory
//! from the copy — and gxd is started on them. It must re-project the blocks after the
//! backup from the ledger exactly once (PostgreSQL's position is authoritative, the
//! checkpoint log is reconciled to it), leave the outbox's committed commands committed
//! (none resubmitted), and end with read models equal to the ledger. Once more with the
//! old database beside the newer state directory (the checkpoint log ahead of PostgreSQL).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::pg;
use gxd_storage::{Db, DbOptions};

fn pg_tool(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("GXD_PG_BINDIR") {
        return Path::new(&dir).join(name);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join(name).exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("PostgreSQL client binaries").join(name)
}

fn pg_cmd(tool: &str, db: &TestDb) -> Command {
    let mut c = Command::new(pg_tool(tool));
    c.args([
        "-h",
        db.host(),
        "-p",
        &db.port().to_string(),
        "-U",
        db.user(),
    ]);
    if let Some(pw) = db.password() {
        c.env("PGPASSWORD", pw);
    }
    c
}

fn run_ok(mut c: Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `gxd run` on `config` until `want` transfers are projected in `pool`, then stops it.
async fn run_until_projected(config: &Path, api_port: u16, pool: &pg::Pool, want: i64) {
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        api_port,
    );
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let got = common::verdict::wait_projected_transfers(pool, want, Duration::from_secs(90)).await;
    assert_eq!(got, Ok(want), "{}", gxd.logs());
    gxd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_state_and_an_older_database_keeps_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(local_devnet(dir.path())).await.unwrap();
    let payers = vec!["treasury".to_owned()];
    common::verdict::setup(&devnet, &payers).await;
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    let data = dir.path().join("data");
    let pool = pg::connect_pool(&db.settings("gxd-restore-test"))
        .await
        .unwrap();

    // Three commands through gxd's outbox, committed and projected.
    let mut accepted = Vec::new();
    {
        let rdb = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(rdb, OutboxOptions::default()).unwrap();
        for k in 0..3 {
            let c = outbox
                .enqueue(common::verdict::transfer(format!("r-{k}"), "treasury"))
                .await
                .unwrap();
            accepted.push((c.command.id, "treasury".to_owned()));
        }
    }
    run_until_projected(&config, settings.api_port, &pool, 3).await;

    // The backup, gxd stopped: the state directory, then the database.
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-a").arg(&data).arg(backup.join("data"));
        c
    });
    let dump = backup.join("gxd.dump");
    run_ok({
        let mut c = pg_cmd("pg_dump", &db);
        c.args(["-Fc", "-f", dump.to_str().unwrap(), db.dbname()]);
        c
    });
    let height_at_backup = devnet.height();

    // The ledger moves on (transfers by another client of the org), and gxd projects them:
    // PostgreSQL and the checkpoint log are now ahead of the backup.
    let admin = devnet.gateway("Admin").unwrap();
    for k in 0..2 {
        let args = vec![
            format!("later-{k}"),
            "treasury".to_owned(),
            common::verdict::sink("treasury"),
            "5".to_owned(),
            String::new(),
        ];
        admin
            .submit_transaction(&admin.proposal("gx", "TransferTokens").with_args(args))
            .await
            .unwrap();
    }
    run_until_projected(&config, settings.api_port, &pool, 5).await;
    assert!(devnet.height() > height_at_backup);

    // The restore: the database into a fresh one, the state directory from the copy.
    pool.close();
    let restored = TestDb::new().await.unwrap();
    run_ok({
        let mut c = pg_cmd("pg_restore", &restored);
        c.args([
            "--no-owner",
            "-d",
            restored.dbname(),
            dump.to_str().unwrap(),
        ]);
        c
    });
    std::fs::remove_dir_all(&data).unwrap();
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-a").arg(backup.join("data")).arg(&data);
        c
    });
    let rpool = pg::connect_pool(&restored.settings("gxd-restore-test"))
        .await
        .unwrap();
    assert_eq!(
        common::verdict::wait_projected_transfers(&rpool, 0, Duration::ZERO).await,
        Ok(3),
        "the restored database is the backup's"
    );
    let mut rsettings = Settings::new(&restored, free_port());
    rsettings.extra_toml = devnet_fabric_toml(&devnet);
    let rconfig = write_config(dir.path(), &rsettings);
    run_until_projected(&rconfig, rsettings.api_port, &rpool, 5).await;

    // The verdict: the outbox's commands committed once each (none resubmitted), every
    // ledger transaction applied exactly once, balances equal to the ledger's.
    {
        let rdb = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(rdb, OutboxOptions::default()).unwrap();
        for (id, _) in &accepted {
            let status = outbox.get(*id).unwrap().status;
            assert!(status.is_committed(), "{status:?}");
        }
    }
    let client = devnet.gateway("User1").unwrap();
    let blocks = common::verdict::ledger_blocks(&client, devnet.height()).await;
    let v = common::verdict::exactly_once(&blocks, &accepted);
    // (Not its per-partition order check: the later transfers, not gxd's, share the payer.)
    assert!(
        v.lost.is_empty() && v.duplicated.is_empty() && v.invalid_copies == 0,
        "{v:#?}"
    );
    assert_eq!(v.commands, 3);
    common::verdict::check_read_models(
        &rpool,
        &client,
        &blocks,
        &common::verdict::all_wallets(&payers),
    )
    .await;

    // A database backup older than the state directory (the checkpoint log is ahead of
    // PostgreSQL's position): restored once more from the old dump, beside today's state.
    rpool.close();
    let older = TestDb::new().await.unwrap();
    run_ok({
        let mut c = pg_cmd("pg_restore", &older);
        c.args(["--no-owner", "-d", older.dbname(), dump.to_str().unwrap()]);
        c
    });
    let opool = pg::connect_pool(&older.settings("gxd-restore-test"))
        .await
        .unwrap();
    let mut osettings = Settings::new(&older, free_port());
    osettings.extra_toml = devnet_fabric_toml(&devnet);
    let oconfig = write_config(dir.path(), &osettings);
    run_until_projected(&oconfig, osettings.api_port, &opool, 5).await;
    common::verdict::check_read_models(
        &opool,
        &client,
        &blocks,
        &common::verdict::all_wallets(&payers),
    )
    .await;
    println!(
        "restore: backup at height {height_at_backup}, ledger now {}; the blocks after the backup re-projected exactly once, with the state copy of the backup and with a newer one",
        devnet.height()
    );
    devnet.shutdown().await.unwrap();
}
