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

mod batched {
    use chrono::{DateTime, Utc};
    use gxd_storage::pg::Pool;
    use gxd_storage::pg::projection::{BlockTx, ProjectionError, TxContext};
    use gxd_storage::pg::read_models::{
        self, Decision, NewDecision, NewProposal, NewTransfer, NewUser, NewWallet, ProposalState,
        TransferKind, WalletKind,
    };
    use gxd_storage::pg::testing::TestDb;

    const CH: &str = "ch";

    async fn pool() -> (TestDb, Pool) {
        let db = TestDb::new().await.unwrap();
        let pool = gxd_storage::pg::connect_pool(&super::settings(&db))
            .await
            .unwrap();
        gxd_storage::pg::migrate::migrate_pool(&pool).await.unwrap();
        (db, pool)
    }

    fn ctx(block: u64, index: u32) -> TxContext {
        TxContext {
            channel: CH.to_owned(),
            block_number: block,
            tx_index: index,
            tx_id: format!("tx-{block}-{index}"),
            timestamp: DateTime::<Utc>::from_timestamp(1_700_000_000 + i64::from(index), 0)
                .unwrap(),
            creator_msp_id: Some("Org1MSP".to_owned()),
            validation_code: 0,
        }
    }

    fn hash(block: u64) -> Vec<u8> {
        vec![u8::try_from(block).unwrap(); 4]
    }

    fn tr<'a>(
        id: &'a str,
        from: &'a str,
        to: &'a str,
        amount: &'a str,
        balances: Option<(&'a str, &'a str)>,
    ) -> NewTransfer<'a> {
        NewTransfer {
            transfer_id: id,
            kind: TransferKind::Transfer,
            from_wallet_id: Some(from),
            to_wallet_id: to,
            amount,
            memo: Some("m"),
            proposal_id: None,
            from_balance: balances.map(|b| b.0),
            to_balance: balances.map(|b| b.1),
        }
    }

    fn user_wallet(id: &str) -> (NewUser<'_>, [String; 1]) {
        (
            NewUser {
                user_id: id,
                country: Some("DE"),
                profile_commitment: None,
                msp_id: Some("Org1MSP"),
            },
            [id.to_owned()],
        )
    }

    /// Writes block `n` with `f` and commits it (batched or direct).
    async fn block<F>(pool: &Pool, batched: bool, n: u64, f: F) -> Result<(), ProjectionError>
    where
        F: AsyncFnOnce(&mut BlockTx<'_>) -> Result<(), ProjectionError>,
    {
        let mut conn = pool.get().await.unwrap();
        let mut tx = if batched {
            BlockTx::begin_batched(&mut conn, CH, n).await.unwrap()
        } else {
            BlockTx::begin(&mut conn, CH, n).await.unwrap()
        };
        assert_eq!(tx.is_batched(), batched);
        f(&mut tx).await?;
        let prev = n.checked_sub(1).map(hash);
        tx.commit(&hash(n), prev.as_deref().map(|h| (n - 1, h)))
            .await
    }

    /// Three blocks of every write, in the orders a batch must get right.
    async fn ledger(pool: &Pool, batched: bool) {
        block(pool, batched, 0, async |tx| {
            let c = ctx(0, 0);
            tx.create_wallet(
                &c,
                &NewWallet {
                    wallet_id: "treasury",
                    kind: WalletKind::Treasury,
                    balance: "0",
                    threshold: None,
                    msp_id: Some("Org1MSP"),
                    owners: &[],
                },
            )
            .await?;
            tx.apply_transfer(
                &c,
                &NewTransfer {
                    transfer_id: "treasury",
                    kind: TransferKind::Mint,
                    from_wallet_id: None,
                    to_wallet_id: "treasury",
                    amount: "1000",
                    memo: None,
                    proposal_id: None,
                    from_balance: None,
                    to_balance: Some("1000"),
                },
            )
            .await?;
            for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
                let c = ctx(0, 1 + i as u32);
                let (u, owners) = user_wallet(id);
                tx.insert_user(&c, &u).await?;
                tx.create_wallet(
                    &c,
                    &NewWallet {
                        wallet_id: id,
                        kind: WalletKind::User,
                        balance: "0",
                        threshold: None,
                        msp_id: Some("Org1MSP"),
                        owners: &owners,
                    },
                )
                .await?;
            }
            // Paid in the block that created it, paying on, and a self-transfer.
            tx.apply_transfer(
                &ctx(0, 4),
                &tr("t1", "treasury", "a", "100", Some(("900", "100"))),
            )
            .await?;
            tx.apply_transfer(&ctx(0, 5), &tr("t2", "a", "b", "30", Some(("70", "30"))))
                .await?;
            tx.apply_transfer(&ctx(0, 6), &tr("t3", "a", "a", "5", Some(("70", "70"))))
                .await?;
            let owners = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
            tx.create_wallet(
                &ctx(0, 7),
                &NewWallet {
                    wallet_id: "ms",
                    kind: WalletKind::Multisig,
                    balance: "0",
                    threshold: Some(2),
                    msp_id: Some("Org1MSP"),
                    owners: &owners,
                },
            )
            .await?;
            tx.apply_transfer(
                &ctx(0, 8),
                &tr("t4", "treasury", "ms", "500", Some(("400", "500"))),
            )
            .await
        })
        .await
        .unwrap();
        block(pool, batched, 1, async |tx| {
            // Proposed, approved, rejected and executed in one block; credits without the
            // ledger's balance, summed.
            for (i, p) in ["p1", "p2"].into_iter().enumerate() {
                tx.insert_proposal(
                    &ctx(1, i as u32),
                    &NewProposal {
                        proposal_id: p,
                        wallet_id: "ms",
                        to_wallet_id: "c",
                        amount: "50",
                        memo: (p == "p1").then_some("rent"),
                        threshold: 2,
                    },
                )
                .await?;
            }
            let decide = |p, who, d, a, r, s| NewDecision {
                proposal_id: p,
                approver_id: who,
                decision: d,
                approval_count: a,
                rejection_count: r,
                state: s,
            };
            tx.record_decision(
                &ctx(1, 2),
                &decide(
                    "p1",
                    "a",
                    Decision::Approve,
                    Some(1),
                    None,
                    ProposalState::Pending,
                ),
            )
            .await?;
            tx.record_decision(
                &ctx(1, 3),
                &decide(
                    "p2",
                    "b",
                    Decision::Reject,
                    None,
                    Some(1),
                    ProposalState::Pending,
                ),
            )
            .await?;
            let c4 = ctx(1, 4);
            tx.record_decision(
                &c4,
                &decide(
                    "p1",
                    "b",
                    Decision::Approve,
                    Some(2),
                    None,
                    ProposalState::Executed,
                ),
            )
            .await?;
            tx.apply_transfer(
                &c4,
                &NewTransfer {
                    transfer_id: "p1",
                    kind: TransferKind::Multisig,
                    from_wallet_id: Some("ms"),
                    to_wallet_id: "c",
                    amount: "50",
                    memo: None,
                    proposal_id: Some("p1"),
                    from_balance: Some("450"),
                    to_balance: Some("50"),
                },
            )
            .await?;
            tx.apply_transfer(&ctx(1, 5), &tr("t5", "b", "c", "7", None).with_from("23"))
                .await?;
            tx.apply_transfer(&ctx(1, 6), &tr("t6", "a", "c", "3", None).with_from("67"))
                .await
        })
        .await
        .unwrap();
        block(pool, batched, 2, async |tx| {
            tx.record_decision(
                &ctx(2, 0),
                &NewDecision {
                    proposal_id: "p2",
                    approver_id: "c",
                    decision: Decision::Reject,
                    approval_count: None,
                    rejection_count: Some(2),
                    state: ProposalState::Rejected,
                },
            )
            .await
        })
        .await
        .unwrap();
    }

    trait WithFrom<'a> {
        fn with_from(self, from_balance: &'a str) -> Self;
    }

    impl<'a> WithFrom<'a> for NewTransfer<'a> {
        fn with_from(mut self, from_balance: &'a str) -> Self {
            self.from_balance = Some(from_balance);
            self
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_batched_blocks_write_what_direct_blocks_write() {
        let (_a, direct) = pool().await;
        let (_b, batched) = pool().await;
        ledger(&direct, false).await;
        ledger(&batched, true).await;
        let c = read_models::wallet(&batched, "c").await.unwrap().unwrap();
        assert_eq!(c.balance, "60");
        let p1 = read_models::proposal(&batched, "p1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((p1.state.as_str(), p1.approval_count), ("executed", 2));
        let h = read_models::wallet_history(&batched, "c").await.unwrap();
        assert_eq!(
            h.iter()
                .find(|r| r.tx_id == "tx-1-4")
                .unwrap()
                .memo
                .as_deref(),
            Some("rent")
        );
        assert_eq!(
            read_models::read_model_digest(&direct).await.unwrap(),
            read_models::read_model_digest(&batched).await.unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_batched_blocks_refuse_what_only_the_direct_path_can_judge() {
        let (_db, pool) = pool().await;
        ledger(&pool, true).await;
        let digest = read_models::read_model_digest(&pool).await.unwrap();
        // A debit without the ledger's balance: the direct path's running balance decides.
        let err = block(&pool, true, 3, async |tx| {
            tx.apply_transfer(&ctx(3, 0), &tr("t7", "a", "b", "1", None))
                .await
        })
        .await
        .unwrap_err();
        assert!(matches!(err, ProjectionError::BatchRefused(_)), "{err}");
        assert!(err.is_data_error());
        // A wallet used before the transaction that creates it.
        let err = block(&pool, true, 3, async |tx| {
            tx.apply_transfer(&ctx(3, 0), &tr("t7", "a", "new", "1", Some(("66", "1"))))
                .await?;
            let (u, owners) = user_wallet("new");
            tx.create_wallet(
                &ctx(3, 1),
                &NewWallet {
                    wallet_id: u.user_id,
                    kind: WalletKind::User,
                    balance: "0",
                    threshold: None,
                    msp_id: None,
                    owners: &owners,
                },
            )
            .await
        })
        .await
        .unwrap_err();
        assert!(matches!(err, ProjectionError::BatchRefused(_)), "{err}");
        // A missing wallet, found by the balance update's row count.
        let err = block(&pool, true, 3, async |tx| {
            tx.apply_transfer(&ctx(3, 0), &tr("t7", "a", "ghost", "1", Some(("66", "1"))))
                .await
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ProjectionError::InvalidInput(m) if m.contains("does not exist")),
            "{err}"
        );
        // A proposal on a wallet that does not exist, in both paths (no foreign key
        // says so since V3: the insert's row count does).
        for batched in [true, false] {
            let err = block(&pool, batched, 3, async |tx| {
                tx.insert_proposal(
                    &ctx(3, 0),
                    &NewProposal {
                        proposal_id: "p9",
                        wallet_id: "ghost",
                        to_wallet_id: "c",
                        amount: "1",
                        memo: None,
                        threshold: 2,
                    },
                )
                .await
            })
            .await
            .unwrap_err();
            assert!(
                matches!(&err, ProjectionError::InvalidInput(m) if m.contains("does not exist")),
                "batched {batched}: {err}"
            );
        }
        // A unique key (a transfer id used before).
        let err = block(&pool, true, 3, async |tx| {
            tx.apply_transfer(&ctx(3, 0), &tr("t1", "a", "b", "1", Some(("66", "31"))))
                .await
        })
        .await
        .unwrap_err();
        assert!(err.is_data_error(), "{err}");
        // A decision after the one that closed its proposal.
        let err = block(&pool, true, 3, async |tx| {
            for (i, who) in ["a", "b"].into_iter().enumerate() {
                tx.record_decision(
                    &ctx(3, i as u32),
                    &NewDecision {
                        proposal_id: "p1",
                        approver_id: who,
                        decision: Decision::Reject,
                        approval_count: None,
                        rejection_count: Some(1),
                        state: ProposalState::Rejected,
                    },
                )
                .await?;
            }
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, ProjectionError::BatchRefused(_)), "{err}");
        // Nothing of the refused blocks was kept.
        assert_eq!(read_models::read_model_digest(&pool).await.unwrap(), digest);
    }
}
