#![allow(clippy::unwrap_used, clippy::expect_used)]
//! PostgreSQL: local clusters, the per-test database harness, the pool and the
//! migrations, against real servers. Run: `cargo test -p gxd-storage --features test-support pg`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gxd_storage::pg::cluster::{ClusterError, ClusterOptions, LocalCluster};
use gxd_storage::pg::testing::TestDb;
use gxd_storage::pg::{self, PgSettings};

fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cluster_initializes_restarts_with_its_data_and_stops() {
    let dir = traversable_tempdir();
    let data = dir.path().join("pg");
    let opts = ClusterOptions::throwaway();
    let cluster = {
        let data = data.clone();
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || LocalCluster::start_with(&data, opts))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(cluster.host(), "127.0.0.1");
    let password = cluster.superuser_password().to_owned();
    cluster.create_database("keep").await.unwrap();
    let client = cluster.connect("keep").await.unwrap();
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(!data.join("postmaster.pid").exists(), "server stopped");

    // Restart on the same directory: no initdb, same password, same data.
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start_with(&data, opts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cluster.superuser_password(), password);
    let client = cluster.connect("keep").await.unwrap();
    let v: i32 = client
        .query_one("SELECT v FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);

    // The superuser password is required (scram-sha-256), not trusted.
    let mut wrong = cluster.pg_config("keep");
    wrong.password("not-the-password");
    assert!(wrong.connect(tokio_postgres::NoTls).await.is_err());
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[test]
fn pg_cluster_refuses_a_directory_that_is_not_a_cluster() {
    let dir = traversable_tempdir();
    std::fs::write(dir.path().join("somefile"), "x").unwrap();
    match LocalCluster::start(dir.path()) {
        Err(ClusterError::NotADataDir { path }) => {
            assert_eq!(path, dir.path().canonicalize().unwrap())
        }
        other => panic!("expected NotADataDir, got {other:?}"),
    }
}

#[test]
fn pg_cluster_start_temp_removes_its_directory() {
    let cluster = LocalCluster::start_temp().unwrap();
    let data = cluster.data_dir().to_path_buf();
    assert!(data.join("PG_VERSION").exists());
    drop(cluster);
    assert!(!data.exists(), "temporary cluster directory removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_testdb_gives_each_test_its_own_database() {
    let (a, b) = tokio::join!(TestDb::new(), TestDb::new());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.dbname(), b.dbname());
    let ca = a.connect().await.unwrap();
    let cb = b.connect().await.unwrap();
    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    let n: i64 = cb
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

fn settings(db: &TestDb) -> PgSettings {
    PgSettings {
        host: db.host().to_owned(),
        port: db.port(),
        user: db.user().to_owned(),
        password: db.password().map(str::to_owned),
        dbname: db.dbname().to_owned(),
        pool_max_size: 4,
        connect_timeout: Duration::from_secs(10),
        application_name: "gxd-test".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_migrate_applies_once_and_status_follows() {
    let db = TestDb::new().await.unwrap();
    let pool = pg::connect_pool(&settings(&db)).await.unwrap();
    let client = pool.get().await.unwrap();
    let st = pg::migrate::status(&client).await.unwrap();
    assert_eq!(st.pending, pg::migrate::embedded_names());
    assert!(!st.is_current());
    drop(client);

    // Two concurrent migrators: the advisory lock makes one apply, the other no-op.
    let (mut c1, mut c2) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let (r1, r2) = tokio::join!(pg::migrate::migrate(&mut c1), pg::migrate::migrate(&mut c2));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.len() + r2.len(), pg::migrate::embedded_names().len());

    let st = pg::migrate::status(&c1).await.unwrap();
    assert!(st.is_current(), "{st:?}");
    assert_eq!(st.applied, pg::migrate::embedded_names());
    assert!(pg::migrate::migrate(&mut c1).await.unwrap().is_empty());

    // Unknown and divergent migrations are reported by name, and migrate refuses.
    c1.batch_execute(
        "INSERT INTO refinery_schema_history VALUES (7, 'later', '2030-01-01T00:00:00Z', '1'); \
         UPDATE refinery_schema_history SET checksum = '2' WHERE version = 1",
    )
    .await
    .unwrap();
    let st = pg::migrate::status(&c1).await.unwrap();
    assert!(st.is_diverged());
    let text = st.describe_divergence();
    assert!(
        text.contains("V7__later") && text.contains("V1__read_models"),
        "{text}"
    );
    match pg::migrate::migrate(&mut c1).await {
        Err(pg::MigrationError::Diverged(_)) => {}
        other => panic!("expected Diverged, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_schema_rejects_double_applied_transfers_and_negative_balances() {
    let db = TestDb::new().await.unwrap();
    let mut client = db.connect().await.unwrap();
    pg::migrate::migrate(&mut client).await.unwrap();
    const MAX_U256: &str =
        "115792089237316195423570985008687907853269984665640564039457584007913129639935";
    client
        .batch_execute(&format!(
            "INSERT INTO wallets (wallet_id, kind, balance, channel, created_tx_id, created_block, \
                                  created_at, updated_block, updated_at) \
             VALUES ('w1', 'user', {MAX_U256}, 'gxchannel', 'tx0', 0, now(), 0, now()); \
             INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, to_wallet_id, \
                                    amount, block_number, tx_index, tx_timestamp) \
             VALUES ('gxchannel', 'tx1', 't1', 'transfer', 'w1', 'w2', 10, 5, 0, now())"
        ))
        .await
        .unwrap();
    // 2^256-1 is stored exactly.
    let balance: String = client
        .query_one(
            "SELECT balance::text FROM wallets WHERE wallet_id = 'w1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, MAX_U256);
    let replay = client
        .batch_execute(
            "INSERT INTO transfers (channel, tx_id, transfer_id, kind, from_wallet_id, to_wallet_id, \
                                    amount, block_number, tx_index, tx_timestamp) \
             VALUES ('gxchannel', 'tx1', 't1', 'transfer', 'w1', 'w2', 10, 5, 0, now())",
        )
        .await;
    assert!(
        replay.is_err(),
        "a replayed transaction is rejected by the unique key"
    );
    let negative = client
        .batch_execute("UPDATE wallets SET balance = -1 WHERE wallet_id = 'w1'")
        .await;
    assert!(negative.is_err(), "balances cannot go negative");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pool_connects_with_a_special_character_password() {
    const PASSWORD: &str = "p/a=s@s:w?o#rd&%20+;' \"\\x";
    let db = TestDb::new().await.unwrap();
    let role = format!("r_{}", db.dbname());
    db.connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD '{}'",
            PASSWORD.replace('\'', "''")
        ))
        .await
        .unwrap();
    let mut s = settings(&db);
    s.user = role;
    s.password = Some(PASSWORD.to_owned());
    let pool = pg::connect_pool(&s).await.unwrap();
    let client = pool.get().await.unwrap();
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, s.user);
    assert!(
        !format!("{s:?}").contains("s@s"),
        "Debug redacts the password"
    );

    let mut wrong = s.clone();
    wrong.password = Some("p/a=s@s".to_owned());
    if db.cluster().is_some() {
        assert!(
            pg::connect_pool(&wrong).await.is_err(),
            "the password is checked"
        );
    }

    // Roles are server-wide: remove it (matters on a shared GXD_TEST_DATABASE_URL).
    drop(client);
    pool.close();
    db.connect()
        .await
        .unwrap()
        .batch_execute(&format!("DROP ROLE \"{}\"", s.user))
        .await
        .unwrap();
}
