#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The wallet read cache against a real PostgreSQL: served from memory until the
//! projector's invalidation (or the TTL), never a row read before an invalidation after
//! it, negative results included, and the hit/miss counter.

use std::sync::Arc;
use std::time::Duration;

use gxd_api::ReadCache;
use gxd_storage::pg::{self, testing::TestDb};

const SEED: &str = r#"
INSERT INTO wallets (wallet_id, kind, balance, threshold, channel, created_tx_id, created_block, created_at, updated_block, updated_at) VALUES
  ('alice', 'user', 50, NULL, 'gxchannel', 't1', 2, '2026-01-01T00:00:01Z', 5, '2026-01-01T00:00:05Z');
INSERT INTO wallet_owners (wallet_id, owner_id) VALUES ('alice', 'alice');
"#;

async fn setup() -> (TestDb, pg::Pool) {
    let db = TestDb::new().await.unwrap();
    let pool = pg::connect_pool(&db.settings("gxd-cache-test"))
        .await
        .unwrap();
    pg::migrate::migrate_pool(&pool).await.unwrap();
    pool.get().await.unwrap().batch_execute(SEED).await.unwrap();
    (db, pool)
}

async fn set_balance(pool: &pg::Pool, balance: i64) {
    pool.get()
        .await
        .unwrap()
        .execute(
            "UPDATE wallets SET balance = $1::int8 WHERE wallet_id = 'alice'",
            &[&balance],
        )
        .await
        .unwrap();
}

fn lookups(registry: &prometheus::Registry, result: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "gxd_api_read_cache_lookups_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == result))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn rows_are_served_from_memory_until_the_projector_invalidates() {
    let (_db, pool) = setup().await;
    let registry = prometheus::Registry::new();
    let cache = Arc::new(ReadCache::new(&registry, Duration::from_secs(3600), 16).unwrap());

    let w = cache.wallet(&pool, "alice").await.unwrap().unwrap();
    assert_eq!(w.balance, "50");
    assert_eq!(w.owners, vec!["alice".to_owned()]);
    // A block changes the row: until the hook runs, the cached row is served…
    set_balance(&pool, 70).await;
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "50"
    );
    assert_eq!(
        (lookups(&registry, "miss"), lookups(&registry, "hit")),
        (1, 1)
    );
    // …and after it (the projector calls it between its commit and PROJECTED), never again.
    (cache.invalidator())(7);
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "70"
    );
    assert_eq!(lookups(&registry, "miss"), 2);

    // Not found is cached too, and forgotten on invalidation (the wallet was created).
    assert!(cache.wallet(&pool, "bob").await.unwrap().is_none());
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO wallets (wallet_id, kind, balance, threshold, channel, created_tx_id, created_block, created_at, updated_block, updated_at) \
             VALUES ('bob', 'user', 5, NULL, 'gxchannel', 't2', 8, now(), 8, now())",
        )
        .await
        .unwrap();
    assert!(cache.wallet(&pool, "bob").await.unwrap().is_none());
    cache.invalidate();
    assert_eq!(
        cache.wallet(&pool, "bob").await.unwrap().unwrap().balance,
        "5"
    );
}

#[tokio::test]
async fn the_ttl_bounds_changes_the_projector_does_not_signal_and_capacity_is_bounded() {
    let (_db, pool) = setup().await;
    let registry = prometheus::Registry::new();
    let cache = ReadCache::new(&registry, Duration::from_millis(200), 2).unwrap();
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "50"
    );
    set_balance(&pool, 90).await; // e.g. a rebuild's swap, or an operator's SQL
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "50"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "90"
    );

    // Capacity 2: a third id empties the map rather than growing it; reads stay right.
    for id in ["x", "y", "z", "alice"] {
        let _ = cache.wallet(&pool, id).await.unwrap();
    }
    let misses = lookups(&registry, "miss");
    assert_eq!(
        cache.wallet(&pool, "alice").await.unwrap().unwrap().balance,
        "90"
    );
    assert_eq!(
        lookups(&registry, "miss"),
        misses,
        "alice was cached again after the clear"
    );
}
