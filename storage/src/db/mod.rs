//! The one RocksDB instance of a gxd data directory (`<data_dir>/rocksdb`), shared by the
//! outbox and the checkpoint log, and its single group-committing writer.
//!
//! # Writes
//! Every change goes through [`Db::write`] and the one writer thread, which group-commits
//! the changes of a moment as one synced `WriteBatch` and answers nobody before that batch
//! is durable: the durability contract is spelt out in [`writer`], the overlay a round
//! reads through in [`round`].
//!
//! # Reads
//! Readers use the RocksDB handle directly (from any thread), usually under a snapshot so
//! that an index and the records it points to are read at one point in time.
//!
//! # Column families
//! Each module owns its column families ([`Cf`]) and registers them, through its
//! [`Schema`], when the database is opened; how a family is used sets its RocksDB options.
//! The database's own family, [`META`], holds the format version ([`FORMAT_VERSION`]) and
//! small values of the modules (the outbox counters).
//!
//! # Layout
//! - this file: the [`Db`] handle, open and lock, the format version, column families
//!   and their RocksDB options;
//! - [`writer`]: the writer thread, its group-commit rounds and the sync thread;
//! - [`recovery`]: what the writer does after a sticky write error (disk full): refuse
//!   writes, and reopen the database in-process once it can;
//! - [`round`]: a round's overlay of pending writes, read through and turned into one
//!   `WriteBatch`;
//! - [`extension`]: modules' writer-side state, committed only with durable rounds.

mod extension;
mod recovery;
mod round;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, LogLevel,
    Options, WriteBatch, WriteOptions,
};
use tokio::sync::mpsc;

pub(crate) use extension::{Extension, Registration};
pub(crate) use round::Round;
use writer::Op;

use crate::error::{Result, StorageError};

/// The RocksDB handle type used throughout (column families are all created at open, so
/// the single-threaded-CF-management mode suffices; reads and writes are thread-safe).
pub(crate) type RawDb = rocksdb::DB;

/// The on-disk format version this build writes and the highest it reads.
///
/// Version 1: the column families registered by the outbox (`crate::outbox::cf`) and the
/// checkpoint log, records as described in [`crate::outbox::record`] and
/// [`crate::checkpoint`].
pub const FORMAT_VERSION: u32 = 1;

/// Key of the format version in the meta column family.
const META_FORMAT_VERSION: &[u8] = b"format_version";

/// A column family: its name on disk and how it is used, which sets its RocksDB tuning.
///
/// Each module owns its families (and documents their keys and values) and registers them
/// with the [`Db`] at open through its [`Schema`]; this module knows none of them but
/// [`META`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cf {
    name: &'static str,
    usage: Usage,
}

impl Cf {
    /// A family named `name` (on disk), used as `usage`.
    pub(crate) const fn new(name: &'static str, usage: Usage) -> Cf {
        Cf { name, usage }
    }

    /// The column family's name on disk.
    pub(crate) fn name(self) -> &'static str {
        self.name
    }
}

/// How a column family is used, which sets its RocksDB options (see [`rocksdb_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    /// Large records read by key: bloom filter, LZ4, a memtable of
    /// [`DbOptions::commands_write_buffer_bytes`].
    Records,
    /// Small values read by key, written often: bloom filter, no compression, a memtable of
    /// [`DbOptions::index_write_buffer_bytes`].
    Lookups,
    /// Index entries inserted and deleted soon after, iterated and never read by key: no
    /// bloom filter, no compression, a memtable of [`DbOptions::index_write_buffer_bytes`],
    /// and SST files dense with tombstones compacted early.
    Queue,
    /// Small and rarely written, read by key: bloom filter, a 4 MiB memtable; `compress`:
    /// LZ4 (else none).
    Small {
        /// LZ4 compression.
        compress: bool,
    },
}

/// The database's own family: the format version ([`FORMAT_VERSION`]). Modules keep small
/// values there too (counters, sequence numbers), each under its own key prefix.
pub(crate) const META: Cf = Cf::new("meta", Usage::Small { compress: false });

/// What one module keeps in the database, registered with the [`Db`] at open (the list is
/// `crate::SCHEMAS`).
#[derive(Debug)]
pub(crate) struct Schema {
    /// Its column families.
    pub(crate) families: &'static [Cf],
    /// Its state on the writer thread ([`Extension`]s), opened after the families.
    pub(crate) extensions: &'static [Registration],
}

/// The database's own part: [`META`].
pub(crate) const SCHEMA: Schema = Schema {
    families: &[META],
    extensions: &[],
};

/// Tuning of the RocksDB instance and its writer. The defaults suit a sidecar on a small
/// machine.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Shared block cache, bytes. Default 64 MiB.
    pub block_cache_bytes: usize,
    /// Memtable size of the record families (the outbox's `commands`), bytes. Default
    /// 64 MiB.
    pub commands_write_buffer_bytes: usize,
    /// Memtable size of the small index families, bytes. Default 8 MiB: index entries are
    /// written and deleted quickly (queues), small memtables flush their tombstones early.
    pub index_write_buffer_bytes: usize,
    /// Most changes the writer puts into one write batch. Default 2048.
    pub max_batch: usize,
    /// Capacity of the writer's queue; callers wait (backpressure) when it is full.
    /// Default 16384.
    pub queue_capacity: usize,
    /// RocksDB background flush/compaction jobs. Default 2.
    pub max_background_jobs: i32,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            block_cache_bytes: 64 << 20,
            commands_write_buffer_bytes: 64 << 20,
            index_write_buffer_bytes: 8 << 20,
            max_batch: 2048,
            queue_capacity: 16384,
            max_background_jobs: 2,
        }
    }
}

struct DbInner {
    shared: Arc<Shared>,
    path: PathBuf,
    sender: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
}

/// What the [`Db`] handles and the writer thread share: the current RocksDB handle (swapped
/// when the writer reopens the database after a sticky write error) and the write status.
struct Shared {
    /// The open database; `None` only while the writer reopens it (or after a reopen that
    /// failed, until the next attempt succeeds).
    raw: RwLock<Option<Arc<RawDb>>>,
    /// False after a failed write, true again after a successful one (or a reopen).
    last_write_ok: AtomicBool,
    /// True from a sticky write error until the database is reopened.
    write_blocked: AtomicBool,
    /// Reopen attempts since open.
    recovery_attempts: AtomicU64,
    /// Successful reopens since open.
    recoveries: AtomicU64,
}

impl Shared {
    fn new(raw: Arc<RawDb>) -> Shared {
        Shared {
            raw: RwLock::new(Some(raw)),
            last_write_ok: AtomicBool::new(true),
            write_blocked: AtomicBool::new(false),
            recovery_attempts: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
        }
    }

    /// The current handle (`None` while the database is being reopened).
    fn current(&self) -> Option<Arc<RawDb>> {
        self.raw.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the handle out (readers get [`StorageError::Unavailable`] until [`Shared::put`]).
    fn take(&self) -> Option<Arc<RawDb>> {
        self.raw.write().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Installs `raw` as the current handle.
    fn put(&self, raw: Arc<RawDb>) {
        *self.raw.write().unwrap_or_else(|e| e.into_inner()) = Some(raw);
    }
}

/// The write status of a [`Db`], for readiness and metrics (see [`Db::write_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStatus {
    /// Writes can succeed: the writer runs and the last write did not fail.
    pub writable: bool,
    /// Writes are refused after a sticky write error (disk full, I/O error) until the
    /// writer has reopened the database.
    pub blocked: bool,
    /// Reopen attempts after sticky write errors since the database was opened.
    pub recovery_attempts: u64,
    /// Successful reopens (recoveries) since the database was opened.
    pub recoveries: u64,
}

/// How to open the database: everything a reopen needs to open it the same way again.
#[derive(Clone)]
struct Opener {
    path: PathBuf,
    options: DbOptions,
    families: Vec<Cf>,
    extensions: Vec<Registration>,
}

impl Opener {
    /// Opens RocksDB (the LOCK taken), checks the format version and loads the
    /// extensions' committed state from disk. Blocking.
    fn open(&self) -> Result<(RawDb, extension::Extensions)> {
        let (db_opts, cfs) = rocksdb_options(&self.options, &self.families);
        let raw = RawDb::open_cf_descriptors(&db_opts, &self.path, cfs)
            .map_err(|e| classify_open_error(&self.path, e))?;
        check_format_version(&raw)?;
        let extensions = extension::Extensions::open(&raw, &self.extensions)?;
        Ok((raw, extensions))
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is queued and stop; joining it
        // means the RocksDB handle (and its LOCK) is released when the last `Db` goes.
        drop(self.sender.take());
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("the storage writer thread had panicked");
        }
    }
}

/// The RocksDB instance of a data directory with its writer. Cheap to clone; the outbox and
/// the checkpoint log share one. Dropping the last clone stops the writer (after it has
/// written what was queued) and closes the database.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Db {
    /// The RocksDB directory inside a gxd data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("rocksdb")
    }

    /// Opens (creating if missing) the database at `path` and starts its writer.
    ///
    /// Blocking (RocksDB replays its WAL here); call it from `spawn_blocking` in async code.
    /// A directory locked by another process gives [`StorageError::Locked`] at once.
    pub fn open(path: impl AsRef<Path>, options: &DbOptions) -> Result<Db> {
        Db::open_with(path.as_ref(), options, crate::SCHEMAS)
    }

    /// [`Db::open`] with the given modules' schemas (column families and extensions).
    fn open_with(path: &Path, options: &DbOptions, schemas: &[Schema]) -> Result<Db> {
        let path = path.to_path_buf();
        if options.max_batch == 0 || options.queue_capacity == 0 {
            return Err(StorageError::InvalidInput(
                "max_batch and queue_capacity must be positive".to_owned(),
            ));
        }
        std::fs::create_dir_all(&path).map_err(|e| StorageError::Unavailable {
            message: format!("cannot create {}: {e}", path.display()),
            source: None,
        })?;
        let opener = Opener {
            path: path.clone(),
            options: options.clone(),
            families: registered_families(schemas)?,
            extensions: schemas.iter().flat_map(|s| s.extensions).copied().collect(),
        };
        let (raw, extensions) = opener.open()?;
        let shared = Arc::new(Shared::new(Arc::new(raw)));
        let (sender, writer) = writer::spawn(&shared, opener, extensions)?;
        tracing::info!(path = %path.display(), format_version = FORMAT_VERSION, "opened RocksDB");
        Ok(Db {
            inner: Arc::new(DbInner {
                shared,
                path,
                sender: Some(sender),
                writer: Some(writer),
            }),
        })
    }

    /// The RocksDB directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether writes can succeed, for readiness: the writer is running (it is not after a
    /// panic) and the last write did not fail.
    ///
    /// RocksDB keeps a failed WAL write (disk full, I/O error) as a sticky background error:
    /// every later write would fail the same way. The writer then refuses writes with
    /// [`StorageError::Unavailable`] and reopens the database in-process once it can (see
    /// [`recovery`]); this is false until it has. Nothing acknowledged is lost and nothing
    /// is half-written.
    pub fn is_writable(&self) -> bool {
        self.writer_running() && self.inner.shared.last_write_ok.load(Ordering::Relaxed)
    }

    fn writer_running(&self) -> bool {
        self.inner.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Whether writes are possible, whether they are blocked after a sticky write error,
    /// and how often the writer has tried to reopen the database and succeeded.
    pub fn write_status(&self) -> WriteStatus {
        let shared = &self.inner.shared;
        WriteStatus {
            writable: self.is_writable(),
            blocked: shared.write_blocked.load(Ordering::Relaxed),
            recovery_attempts: shared.recovery_attempts.load(Ordering::Relaxed),
            recoveries: shared.recoveries.load(Ordering::Relaxed),
        }
    }

    /// The current RocksDB handle, for reads. Hold it only for the read at hand: the writer
    /// reopens the database after a sticky write error and waits (boundedly) for every
    /// handle to go before it closes the old one. While it reopens: [`StorageError::Unavailable`].
    pub(crate) fn raw(&self) -> Result<Arc<RawDb>> {
        self.inner
            .shared
            .current()
            .ok_or_else(|| StorageError::Unavailable {
                message: "the database is being reopened after a write error".to_owned(),
                source: None,
            })
    }
}

/// The families of `schemas`, in order; a name registered twice is refused.
fn registered_families(schemas: &[Schema]) -> Result<Vec<Cf>> {
    let mut families: Vec<Cf> = Vec::new();
    for &cf in schemas.iter().flat_map(|s| s.families) {
        if families.iter().any(|f| f.name == cf.name) {
            return Err(StorageError::InvalidInput(format!(
                "column family {} is registered twice",
                cf.name
            )));
        }
        families.push(cf);
    }
    Ok(families)
}

/// Classifies an open error: a held LOCK file is [`StorageError::Locked`].
fn classify_open_error(path: &Path, e: rocksdb::Error) -> StorageError {
    let message = e.to_string();
    // RocksDB says "IO error: While lock file: <path>/LOCK: Resource temporarily
    // unavailable" when another process holds the lock, and "IO error: lock hold by current
    // process ... <path>/LOCK: No locks available" when this process already has it open.
    let locked = e.kind() == rocksdb::ErrorKind::IOError
        && (message.contains("While lock file")
            || message.contains("lock hold by current process")
            || (message.contains("/LOCK") && message.contains("unavailable")));
    if locked {
        StorageError::Locked {
            path: path.display().to_string(),
            message,
        }
    } else {
        StorageError::from(e)
    }
}

fn check_format_version(raw: &RawDb) -> Result<()> {
    let meta = cf_handle(raw, META)?;
    match raw.get_pinned_cf(meta, META_FORMAT_VERSION)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(&bytes[..])
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    StorageError::corrupt(
                        "meta",
                        META_FORMAT_VERSION,
                        "format version is not 4 bytes",
                    )
                })?;
            if found > FORMAT_VERSION {
                return Err(StorageError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            raw.write_opt(batch, &wo)?;
            Ok(())
        }
    }
}

/// The column family handle (all are created at open, so a missing one is a bug or a
/// foreign database).
pub(crate) fn cf_handle(raw: &RawDb, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
    raw.cf_handle(cf.name())
        .ok_or_else(|| StorageError::Unavailable {
            message: format!("column family {} is missing", cf.name()),
            source: None,
        })
}

/// RocksDB tuning for an outbox: small, hot, write-heavy, sync-per-batch; each family's
/// options by its [`Usage`].
fn rocksdb_options(o: &DbOptions, families: &[Cf]) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    // The WAL is what makes an acknowledged command durable: every batch is written with
    // sync=true, and RocksDB writes the WAL itself (no manual flush that could be forgotten).
    db.set_manual_wal_flush(false);
    // After a crash, recover every record up to the last complete one. A torn tail record
    // was never acknowledged (its sync did not return), so dropping it loses nothing.
    db.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // With several column families, an old WAL file stays until every family that has data
    // in it is flushed. Cap the total so a rarely written family (checkpoints) cannot pin
    // gigabytes of WAL; RocksDB flushes the laggards when the cap is hit.
    db.set_max_total_wal_size(256 << 20);
    // Two cores: one flush and one compaction in the background is the right amount.
    db.set_max_background_jobs(o.max_background_jobs);
    db.increase_parallelism(o.max_background_jobs.max(1));
    // Smooth out background I/O so a flush does not stall a foreground WAL fsync.
    db.set_bytes_per_sync(1 << 20);
    db.set_paranoid_checks(true);
    db.set_keep_log_file_num(4);
    db.set_max_log_file_size(16 << 20);
    db.set_log_level(LogLevel::Warn);
    db.set_avoid_unnecessary_blocking_io(true);

    let cache = Cache::new_lru_cache(o.block_cache_bytes);
    let table = |bloom: bool| {
        let mut t = BlockBasedOptions::default();
        t.set_block_cache(&cache);
        t.set_format_version(5);
        t.set_cache_index_and_filter_blocks(true);
        t.set_cache_index_and_filter_blocks_with_high_priority(true);
        if bloom {
            // Point lookups (get by id, idempotency check on every enqueue, where the key
            // is usually absent) skip SST files whose bloom filter says "not here".
            t.set_bloom_filter(10.0, false);
        }
        t
    };

    let cfs = families
        .iter()
        .map(|&cf| {
            let mut c = Options::default();
            let (point_lookups, write_buffer) = match cf.usage {
                Usage::Records => (true, o.commands_write_buffer_bytes),
                Usage::Lookups => (true, o.index_write_buffer_bytes),
                Usage::Small { .. } => (true, 4 << 20),
                // Iterated, never point-read: no bloom filter.
                Usage::Queue => (false, o.index_write_buffer_bytes),
            };
            c.set_block_based_table_factory(&table(point_lookups));
            c.set_write_buffer_size(write_buffer);
            c.set_max_write_buffer_number(3);
            c.set_level_compaction_dynamic_level_bytes(true);
            // LZ4 only (the only codec compiled in): cheap on CPU, and command payloads
            // (JSON) compress well. The index families hold tiny keys: no compression.
            let compression = match cf.usage {
                Usage::Records | Usage::Small { compress: true } => DBCompressionType::Lz4,
                Usage::Lookups | Usage::Queue | Usage::Small { compress: false } => {
                    DBCompressionType::None
                }
            };
            c.set_compression_type(compression);
            c.set_bottommost_compression_type(compression);
            if cf.usage == Usage::Queue {
                // Queue-like families: entries are inserted and deleted soon after. Compact
                // SST files dense with tombstones so iterating from the start stays fast.
                c.add_compact_on_deletion_collector_factory(4096, 2048, 0.5);
            }
            ColumnFamilyDescriptor::new(cf.name(), c)
        })
        .collect();
    (db, cfs)
}

/// Big-endian u64 in the meta family.
pub(crate) fn decode_u64(cf: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::corrupt(cf, key, "expected an 8-byte big-endian integer"))
}

/// Serde for byte strings as lowercase hex.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A bare database with `families` and no writer (also for the tests of the submodules).
    pub(super) fn raw_db(dir: &Path, families: &[Cf]) -> RawDb {
        let (opts, cfs) = rocksdb_options(&DbOptions::default(), families);
        RawDb::open_cf_descriptors(&opts, dir, cfs).unwrap()
    }

    pub(super) fn put_raw(raw: &RawDb, cf: Cf, key: &[u8], value: &[u8]) {
        raw.put_cf(cf_handle(raw, cf).unwrap(), key, value).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let families = registered_families(crate::SCHEMAS).unwrap();
            let raw = raw_db(dir.path(), &families);
            put_raw(&raw, META, META_FORMAT_VERSION, &99u32.to_be_bytes());
        }
        match Db::open(dir.path(), &DbOptions::default()) {
            Err(StorageError::UnsupportedFormat { found: 99, .. }) => {}
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_database_gets_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let raw = db.raw().unwrap();
        let meta = cf_handle(&raw, META).unwrap();
        assert_eq!(
            raw.get_cf(meta, META_FORMAT_VERSION).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
    }
}
