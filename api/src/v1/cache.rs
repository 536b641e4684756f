//! The wallet read cache: `GET /api/v1/wallets/{id}` (and every route that checks a
//! wallet's owners) served from memory between blocks.
//!
//! The read models change only when the projector commits a block. The projector calls
//! [`ReadCache::invalidate`] right after each block's PostgreSQL commit and **before** the
//! block's checkpoint append marks its commands PROJECTED, so a client that saw its
//! command PROJECTED never reads a row cached before that block.
//!
//! Entries carry the generation read *before* their query; an entry is served only while
//! that is still the current generation (and it is younger than the TTL). A query that
//! raced with a commit is therefore stored under the old generation and never served: no
//! stale row outlives the invalidation. The TTL bounds what the projector cannot signal —
//! a change made outside it (`gxd projections rebuild` swapping tables, an operator's SQL).
//! Capacity is bounded: a full cache is emptied (cheap, and rare between two blocks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gxd_storage::pg::Pool;
use gxd_storage::pg::projection::ProjectionError;
use gxd_storage::pg::read_models::{self, WalletRow};
use prometheus::{IntCounterVec, Opts, Registry};

/// Default entry lifetime (the bound on staleness after an out-of-band change).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);
/// Default capacity (wallets, found or not).
pub const DEFAULT_CAPACITY: usize = 65_536;

struct Entry {
    generation: u64,
    at: Instant,
    row: Option<Arc<WalletRow>>,
}

/// The cache (module docs). Shared by the API and the projector's hook.
pub struct ReadCache {
    generation: AtomicU64,
    ttl: Duration,
    capacity: usize,
    wallets: Mutex<HashMap<String, Entry>>,
    lookups: IntCounterVec,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ReadCache {
    /// A cache with `ttl` and `capacity`, its `gxd_api_read_cache_lookups_total{result}`
    /// counter registered in `registry`.
    pub fn new(
        registry: &Registry,
        ttl: Duration,
        capacity: usize,
    ) -> Result<ReadCache, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "gxd_api_read_cache_lookups_total",
                "Wallet reads by the API, by result: hit (served from memory) or miss (read from PostgreSQL)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        Ok(ReadCache {
            generation: AtomicU64::new(0),
            ttl,
            capacity: capacity.max(1),
            wallets: Mutex::new(HashMap::new()),
            lookups,
        })
    }

    /// Forgets everything cached so far (the projector committed a block).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The wallet, from memory when the entry is current, else from PostgreSQL.
    pub async fn wallet(
        &self,
        pool: &Pool,
        id: &str,
    ) -> Result<Option<Arc<WalletRow>>, ProjectionError> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Ok(map) = self.wallets.lock()
            && let Some(e) = map.get(id)
            && e.generation == generation
            && e.at.elapsed() < self.ttl
        {
            self.lookups.with_label_values(&["hit"]).inc();
            return Ok(e.row.clone());
        }
        self.lookups.with_label_values(&["miss"]).inc();
        let at = Instant::now();
        let row = read_models::wallet(pool, id).await?.map(Arc::new);
        if let Ok(mut map) = self.wallets.lock() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(
                id.to_owned(),
                Entry {
                    generation,
                    at,
                    row: row.clone(),
                },
            );
        }
        Ok(row)
    }

    /// A hook for the projector: invalidates after every committed block.
    pub fn invalidator(self: &Arc<Self>) -> Arc<dyn Fn(u64) + Send + Sync> {
        let cache = self.clone();
        Arc::new(move |_block| cache.invalidate())
    }
}
