//! The one RocksDB instance of a gxd data directory (`<data_dir>/rocksdb`), shared by the
//! outbox and the checkpoint log, and its single group-committing writer.
//!
//! # Writes: one writer thread, group commit
//! Every change goes through [`Db::write`]: the caller hands a closure to a dedicated writer
//! thread over a bounded queue and awaits a oneshot reply. The writer drains whatever is
//! queued (up to [`DbOptions::max_batch`]), runs the closures one after another against a
//! [`Round`] — an in-memory overlay over the database, so each closure sees the effects of
//! the closures before it in the same round — then writes the whole round as **one
//! `WriteBatch` with `sync = true`** (the WAL is fsync'd) and only then answers every caller.
//! So:
//! - many concurrent callers cost one fsync, not one each;
//! - read-check-write sequences (idempotency check and insert, partition head checks) are
//!   race-free: there is exactly one writer and it sees its own pending writes;
//! - a change is either wholly in the batch or not at all (a closure that fails is rolled
//!   back to its savepoint), and the batch is atomic on disk, indexes included;
//! - nobody is answered before the batch holding their change is durable, including callers
//!   that were answered from another caller's not-yet-durable change (an idempotent repeat
//!   in the same round).
//!
//! If the write fails (I/O error, disk full), every caller of the round gets
//! [`StorageError::Unavailable`] and nothing of the round is on disk.
//!
//! The fsync is done by a second thread: while round *k* is being synced, the writer
//! already runs the changes of round *k+1*, reading through round *k*'s pending writes
//! (CPU and disk overlap). Round *k+1* is handed to RocksDB only once round *k* is durable,
//! and if round *k* fails, round *k+1* fails with it (it was computed on top of it).
//!
//! The writer also mirrors the number of queued commands per partition in memory (loaded
//! at open from the `partition_queue` family, changed only when a batch is durable), so an
//! enqueue learns whether its partition is empty without an iterator seek.
//!
//! # Reads
//! Readers use the RocksDB handle directly (from any thread), usually under a snapshot so
//! that an index and the records it points to are read at one point in time.
//!
//! # Column families
//! See [`Cf`]. The `meta` family holds the format version ([`FORMAT_VERSION`]) and the
//! outbox counters.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, LogLevel,
    Options, ReadOptions, WriteBatch, WriteOptions,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StorageError};

/// The RocksDB handle type used throughout (column families are all created at open, so
/// the single-threaded-CF-management mode suffices; reads and writes are thread-safe).
pub(crate) type RawDb = rocksdb::DB;

/// The on-disk format version this build writes and the highest it reads.
///
/// Version 1: the column families of [`Cf`], records as described in
/// [`crate::outbox::record`] and [`crate::checkpoint`].
pub const FORMAT_VERSION: u32 = 1;

/// Key of the format version in the meta column family.
const META_FORMAT_VERSION: &[u8] = b"format_version";

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Cf {
    /// Format version, counters, sequence numbers.
    Meta,
    /// Command id (16 bytes, UUIDv7 big-endian) → command record.
    Commands,
    /// (tenant, request id) → idempotency record.
    Idempotency,
    /// (created ms, tenant, request id) → empty: idempotency keys in age order, for expiry.
    IdemExpiry,
    /// (status, command id) → empty: commands by status in id (= time) order.
    Status,
    /// (partition, queue sequence) → command id: the queued (not yet committed or failed)
    /// commands of each partition, in acceptance order.
    PartitionQueue,
    /// (due ms, command id) → empty: the dispatchable head of each partition.
    Due,
    /// (channel, block number) → checkpoint record.
    Checkpoints,
}

impl Cf {
    pub(crate) const ALL: [Cf; 8] = [
        Cf::Meta,
        Cf::Commands,
        Cf::Idempotency,
        Cf::IdemExpiry,
        Cf::Status,
        Cf::PartitionQueue,
        Cf::Due,
        Cf::Checkpoints,
    ];

    /// The column family's name on disk.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Commands => "commands",
            Cf::Idempotency => "idempotency",
            Cf::IdemExpiry => "idempotency_expiry",
            Cf::Status => "status_index",
            Cf::PartitionQueue => "partition_queue",
            Cf::Due => "due_index",
            Cf::Checkpoints => "checkpoints",
        }
    }
}

/// Tuning of the RocksDB instance and its writer. The defaults suit a sidecar on a small
/// machine.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Shared block cache, bytes. Default 64 MiB.
    pub block_cache_bytes: usize,
    /// Memtable size of the `commands` family, bytes. Default 64 MiB.
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

/// What the writer calls back once the round's batch is written (or failed).
type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// A change to run on the writer thread; returns how to answer its caller once the round
/// is written (`None` only when the change panicked and was rolled back).
type Op = Box<dyn FnOnce(&mut Round<'_>) -> Option<Completion> + Send>;

struct DbInner {
    raw: Arc<RawDb>,
    path: PathBuf,
    /// False after a failed write, true again after a successful one.
    last_write_ok: Arc<AtomicBool>,
    sender: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
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
        let path = path.as_ref().to_path_buf();
        if options.max_batch == 0 || options.queue_capacity == 0 {
            return Err(StorageError::InvalidInput(
                "max_batch and queue_capacity must be positive".to_owned(),
            ));
        }
        std::fs::create_dir_all(&path).map_err(|e| StorageError::Unavailable {
            message: format!("cannot create {}: {e}", path.display()),
            source: None,
        })?;
        let (db_opts, cfs) = rocksdb_options(options);
        let raw = RawDb::open_cf_descriptors(&db_opts, &path, cfs)
            .map_err(|e| classify_open_error(&path, e))?;
        check_format_version(&raw)?;
        let partitions = load_partition_lengths(&raw)?;
        let raw = Arc::new(raw);

        let (sender, receiver) = mpsc::channel::<Op>(options.queue_capacity);
        let writer_db = Arc::clone(&raw);
        let last_write_ok = Arc::new(AtomicBool::new(true));
        let writer_status = Arc::clone(&last_write_ok);
        let max_batch = options.max_batch;
        let writer = std::thread::Builder::new()
            .name("gxd-storage-writer".to_owned())
            .spawn(move || {
                writer_loop(writer_db, receiver, max_batch, partitions, &writer_status);
            })
            .map_err(|e| StorageError::Unavailable {
                message: format!("cannot start the storage writer thread: {e}"),
                source: None,
            })?;
        tracing::info!(path = %path.display(), format_version = FORMAT_VERSION, "opened RocksDB");
        Ok(Db {
            inner: Arc::new(DbInner {
                raw,
                path,
                last_write_ok,
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
    /// every later write fails with [`StorageError::Unavailable`] until the database is
    /// reopened. Nothing acknowledged is lost and nothing is half-written; once space is
    /// back, restarting gxd (or dropping and reopening the `Db`) resumes writing.
    pub fn is_writable(&self) -> bool {
        self.inner.sender.as_ref().is_some_and(|s| !s.is_closed())
            && self.inner.last_write_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn raw(&self) -> &RawDb {
        &self.inner.raw
    }

    /// Runs `change` on the writer thread inside a round and returns its result once the
    /// round's batch is durable. If `change` fails, its writes are rolled back and its error
    /// returned; if the batch write fails, [`StorageError::Unavailable`].
    ///
    /// `change` must not capture a `Db` (it would be dropped on the writer thread).
    pub(crate) async fn write<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(move |round: &mut Round<'_>| {
            let savepoint = round.savepoint();
            match change(round) {
                Ok(value) => Some(Box::new(move |written: Result<()>| {
                    let _ = reply.send(written.map(|()| value));
                }) as Completion),
                // A refusal is answered with the round too: it may rest on writes of the
                // round in flight, and if those fail, the answer is "unavailable" instead.
                Err(e) => {
                    round.rollback(savepoint);
                    Some(Box::new(move |written: Result<()>| {
                        let _ = reply.send(written.and(Err(e)));
                    }) as Completion)
                }
            }
        });
        let sender = self
            .inner
            .sender
            .as_ref()
            .ok_or_else(StorageError::writer_stopped)?;
        sender
            .send(op)
            .await
            .map_err(|_| StorageError::writer_stopped())?;
        answer.await.map_err(|_| StorageError::writer_stopped())?
    }
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
    let meta = cf_handle(raw, Cf::Meta)?;
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

/// Counts the queued commands per partition (keys of `partition_queue` are a u16 length,
/// the partition, then a sequence number; the prefix is everything but the sequence).
fn load_partition_lengths(raw: &RawDb) -> Result<HashMap<Vec<u8>, u64>> {
    let mut lengths: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut it = raw.raw_iterator_cf(cf_handle(raw, Cf::PartitionQueue)?);
    it.seek_to_first();
    while let Some(key) = it.key() {
        if key.len() < 2 + 8 {
            return Err(StorageError::corrupt(
                "partition_queue",
                key,
                "key too short",
            ));
        }
        let prefix = &key[..key.len() - 8];
        *lengths.entry(prefix.to_vec()).or_insert(0) += 1;
        it.next();
    }
    it.status()?;
    Ok(lengths)
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

/// RocksDB tuning for an outbox: small, hot, write-heavy, sync-per-batch.
fn rocksdb_options(o: &DbOptions) -> (Options, Vec<ColumnFamilyDescriptor>) {
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

    let cfs = Cf::ALL
        .iter()
        .map(|&cf| {
            let mut c = Options::default();
            let (point_lookups, write_buffer) = match cf {
                Cf::Commands => (true, o.commands_write_buffer_bytes),
                Cf::Idempotency => (true, o.index_write_buffer_bytes),
                Cf::Meta | Cf::Checkpoints => (true, 4 << 20),
                // Iterated, never point-read: no bloom filter.
                Cf::IdemExpiry | Cf::Status | Cf::PartitionQueue | Cf::Due => {
                    (false, o.index_write_buffer_bytes)
                }
            };
            c.set_block_based_table_factory(&table(point_lookups));
            c.set_write_buffer_size(write_buffer);
            c.set_max_write_buffer_number(3);
            c.set_level_compaction_dynamic_level_bytes(true);
            // LZ4 only (the only codec compiled in): cheap on CPU, and command payloads
            // (JSON) compress well. The index families hold tiny keys: no compression.
            let compression = match cf {
                Cf::Commands | Cf::Checkpoints => DBCompressionType::Lz4,
                _ => DBCompressionType::None,
            };
            c.set_compression_type(compression);
            c.set_bottommost_compression_type(compression);
            if matches!(
                cf,
                Cf::Status | Cf::PartitionQueue | Cf::Due | Cf::IdemExpiry
            ) {
                // Queue-like families: entries are inserted and deleted soon after. Compact
                // SST files dense with tombstones so iterating from the start stays fast.
                c.add_compact_on_deletion_collector_factory(4096, 2048, 0.5);
            }
            ColumnFamilyDescriptor::new(cf.name(), c)
        })
        .collect();
    (db, cfs)
}

/// Outcome of writing one batch: the result for the callers, and whether the batch is on
/// disk (an error reported after the write leaves it durable).
type WriteOutcome = (Result<()>, bool);

/// A round whose batch is being written and synced by the sync thread.
struct InFlight {
    tag: u64,
    completions: Vec<Completion>,
    result: std::sync::mpsc::Receiver<WriteOutcome>,
}

type TaggedOverlay = BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

/// What the writer keeps between rounds.
struct WriterState {
    /// Writes not yet known to be on disk, per column family, tagged with their round: the
    /// round in flight and the round being prepared. The round being prepared reads
    /// through them, so it can be prepared while the previous one is being synced.
    overlay: [TaggedOverlay; Cf::ALL.len()],
    /// Queued commands per partition (key: the partition's queue-key prefix) as on disk:
    /// the writer's mirror of the `partition_queue` family, so that an enqueue knows
    /// whether its partition is empty without a seek.
    partitions: HashMap<Vec<u8>, u64>,
    /// The changes to `partitions` of the round in flight.
    in_flight_deltas: HashMap<Vec<u8>, i64>,
}

impl WriterState {
    /// The round `tag` is on disk: its overlay entries and partition changes are now the
    /// database's.
    fn settle(&mut self, tag: u64) {
        for map in &mut self.overlay {
            map.retain(|_, (t, _)| *t > tag);
        }
        for (prefix, delta) in self.in_flight_deltas.drain() {
            let n = self.partitions.entry(prefix.clone()).or_insert(0);
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.partitions.remove(&prefix);
            }
        }
    }

    /// A write failed: forget everything not on disk.
    fn reset(&mut self) {
        for map in &mut self.overlay {
            map.clear();
        }
        self.in_flight_deltas.clear();
    }
}

/// Joins the sync thread when the writer stops, also when it unwinds, so that the RocksDB
/// handle is released by the time the writer thread is joined.
struct SyncThread {
    sender: Option<std::sync::mpsc::Sender<(WriteBatch, std::sync::mpsc::Sender<WriteOutcome>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn start_sync_thread(raw: Arc<RawDb>) -> std::io::Result<SyncThread> {
    let (sender, receiver) =
        std::sync::mpsc::channel::<(WriteBatch, std::sync::mpsc::Sender<WriteOutcome>)>();
    let handle = std::thread::Builder::new()
        .name("gxd-storage-sync".to_owned())
        .spawn(move || {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            while let Ok((batch, reply)) = receiver.recv() {
                let _ = reply.send(write_synced(&raw, batch, &sync));
            }
        })?;
    Ok(SyncThread {
        sender: Some(sender),
        handle: Some(handle),
    })
}

/// Writes one batch with `sync = true`.
fn write_synced(raw: &RawDb, batch: WriteBatch, sync: &WriteOptions) -> WriteOutcome {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("storage::writer::before_write", |_| (
        Err(StorageError::Unavailable {
            message: "failpoint storage::writer::before_write".to_owned(),
            source: None,
        }),
        false
    ));
    if let Err(e) = raw.write_opt(batch, sync) {
        return (Err(StorageError::from(e)), false);
    }
    #[cfg(feature = "failpoints")]
    fail::fail_point!("storage::writer::after_write", |_| (
        Err(StorageError::Unavailable {
            message: "failpoint storage::writer::after_write".to_owned(),
            source: None,
        }),
        true
    ));
    (Ok(()), true)
}

/// Waits for the round in flight and answers its callers. Returns whether it is durable.
fn finish(state: &mut WriterState, in_flight: InFlight, last_write_ok: &AtomicBool) -> bool {
    let (result, durable) = in_flight
        .result
        .recv()
        .unwrap_or_else(|_| (Err(StorageError::writer_stopped()), false));
    last_write_ok.store(durable, Ordering::Relaxed);
    if durable {
        state.settle(in_flight.tag);
    } else {
        state.reset();
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, changes = in_flight.completions.len(), "storage write failed");
    }
    for done in in_flight.completions {
        done(result.clone());
    }
    durable
}

/// The writer: drains the queue into rounds, runs each round's changes, and hands the
/// round's batch to the sync thread. While one round is being synced, the next one is
/// prepared (reading through the first one's pending writes); it is written only after the
/// first is durable, and fails with it if the first fails.
fn writer_loop(
    raw: Arc<RawDb>,
    mut receiver: mpsc::Receiver<Op>,
    max_batch: usize,
    partitions: HashMap<Vec<u8>, u64>,
    last_write_ok: &AtomicBool,
) {
    let syncer = match start_sync_thread(Arc::clone(&raw)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the storage sync thread");
            return;
        }
    };
    let mut state = WriterState {
        overlay: Default::default(),
        partitions,
        in_flight_deltas: HashMap::new(),
    };
    let mut in_flight: Option<InFlight> = None;
    let mut next_tag: u64 = 1;
    let mut ops: Vec<Op> = Vec::with_capacity(max_batch);
    loop {
        // Wait for work; with a round in flight, finish it first when there is none.
        match in_flight.take() {
            None => match receiver.blocking_recv() {
                Some(op) => ops.push(op),
                None => break,
            },
            Some(f) => match receiver.try_recv() {
                Ok(op) => {
                    ops.push(op);
                    in_flight = Some(f);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    finish(&mut state, f, last_write_ok);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    finish(&mut state, f, last_write_ok);
                    break;
                }
            },
        }
        while ops.len() < max_batch {
            match receiver.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        #[cfg(feature = "failpoints")]
        fail::fail_point!("storage::writer::round");

        let tag = next_tag;
        next_tag += 1;
        let mut completions: Vec<Completion> = Vec::with_capacity(ops.len());
        let (batch, deltas) = {
            let mut round = Round::new(&raw, &mut state, tag);
            for op in ops.drain(..) {
                let savepoint = round.savepoint();
                match std::panic::catch_unwind(AssertUnwindSafe(|| op(&mut round))) {
                    Ok(Some(done)) => completions.push(done),
                    Ok(None) => {}
                    Err(_) => {
                        // A bug in one change must not poison the others: undo it; its
                        // caller gets "unavailable" (its reply sender was dropped).
                        round.rollback(savepoint);
                        tracing::error!("a storage change panicked; it was rolled back");
                    }
                }
            }
            (round.batch(), round.partition_deltas)
        };

        // This round was prepared on top of the round in flight: that one must be on disk
        // before this one is written.
        if let Some(prev) = in_flight.take()
            && !finish(&mut state, prev, last_write_ok)
        {
            let e = StorageError::Unavailable {
                message: "an earlier write of the same moment failed".to_owned(),
                source: None,
            };
            for done in completions {
                done(Err(e.clone()));
            }
            continue;
        }
        match batch {
            Err(e) => {
                state.reset();
                for done in completions {
                    done(Err(e.clone()));
                }
            }
            // Nothing to write (idempotent repeats, refused changes): answer now; what
            // they read is on disk.
            Ok(None) => {
                for done in completions {
                    done(Ok(()));
                }
            }
            Ok(Some(batch)) => {
                let (reply, result) = std::sync::mpsc::channel();
                let sent = syncer
                    .sender
                    .as_ref()
                    .is_some_and(|s| s.send((batch, reply)).is_ok());
                if sent {
                    state.in_flight_deltas = deltas;
                    in_flight = Some(InFlight {
                        tag,
                        completions,
                        result,
                    });
                } else {
                    state.reset();
                    for done in completions {
                        done(Err(StorageError::writer_stopped()));
                    }
                }
            }
        }
    }
    drop(syncer);
}

/// An undo entry of a round.
enum Undo {
    /// Family, key, and what the overlay held for the key before.
    Kv(Cf, Vec<u8>, Option<(u64, Option<Vec<u8>>)>),
    /// A partition-length change to take back.
    Partition(Vec<u8>, i64),
}

/// One round of the writer: its pending writes over the database.
///
/// Reads see the database plus the writes of the round in flight plus the round's own
/// writes (the writer is the only one writing, so that is the current state). Writes are
/// buffered and become one atomic, synced `WriteBatch`; a savepoint/rollback pair undoes
/// one change's writes when it fails half-way.
pub(crate) struct Round<'a> {
    raw: &'a RawDb,
    state: &'a mut WriterState,
    tag: u64,
    /// For rollback.
    undo: Vec<Undo>,
    /// This round's changes to the partition lengths.
    partition_deltas: HashMap<Vec<u8>, i64>,
}

impl<'a> Round<'a> {
    fn new(raw: &'a RawDb, state: &'a mut WriterState, tag: u64) -> Self {
        Round {
            raw,
            state,
            tag,
            undo: Vec::new(),
            partition_deltas: HashMap::new(),
        }
    }

    /// Queued commands in a partition (by its queue-key prefix), pending rounds included.
    pub(crate) fn partition_len(&self, prefix: &[u8]) -> u64 {
        let base = self.state.partitions.get(prefix).copied().unwrap_or(0);
        let in_flight = self
            .state
            .in_flight_deltas
            .get(prefix)
            .copied()
            .unwrap_or(0);
        let mine = self.partition_deltas.get(prefix).copied().unwrap_or(0);
        base.saturating_add_signed(in_flight)
            .saturating_add_signed(mine)
    }

    /// Records that a command entered (+1) or left (-1) a partition's queue. Callers
    /// pair it with the matching put/delete in `partition_queue`.
    pub(crate) fn adjust_partition(&mut self, prefix: Vec<u8>, delta: i64) {
        *self.partition_deltas.entry(prefix.clone()).or_insert(0) += delta;
        self.undo.push(Undo::Partition(prefix, delta));
    }

    fn savepoint(&self) -> usize {
        self.undo.len()
    }

    fn rollback(&mut self, savepoint: usize) {
        while self.undo.len() > savepoint {
            let Some(undo) = self.undo.pop() else {
                break;
            };
            match undo {
                Undo::Kv(cf, key, before) => {
                    let map = &mut self.state.overlay[cf as usize];
                    match before {
                        Some(value) => {
                            map.insert(key, value);
                        }
                        None => {
                            map.remove(&key);
                        }
                    }
                }
                Undo::Partition(prefix, delta) => {
                    if let Some(d) = self.partition_deltas.get_mut(&prefix) {
                        *d -= delta;
                    }
                }
            }
        }
    }

    fn set(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        let before = self.state.overlay[cf as usize].insert(key.clone(), (self.tag, value));
        self.undo.push(Undo::Kv(cf, key, before));
    }

    /// Buffers a put.
    pub(crate) fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.set(cf, key, Some(value));
    }

    /// Buffers a delete.
    pub(crate) fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.set(cf, key, None);
    }

    fn pending(&self, cf: Cf) -> &TaggedOverlay {
        &self.state.overlay[cf as usize]
    }

    /// Reads a key: a pending write if any, else the database.
    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some((_, pending)) = self.pending(cf).get(key) {
            return Ok(pending.clone());
        }
        let handle = cf_handle(self.raw, cf)?;
        Ok(self.raw.get_pinned_cf(handle, key)?.map(|v| v.to_vec()))
    }

    /// Whether a key exists (pending writes included).
    pub(crate) fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        if let Some((_, pending)) = self.pending(cf).get(key) {
            return Ok(pending.is_some());
        }
        let handle = cf_handle(self.raw, cf)?;
        Ok(self.raw.get_pinned_cf(handle, key)?.is_some())
    }

    /// The first live entry with `lower <= key < upper` (pending writes included).
    pub(crate) fn first_in_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan_range(cf, lower, upper, 1)?.into_iter().next())
    }

    /// Up to `limit` live entries with `lower <= key < upper`, in key order (pending
    /// writes included).
    pub(crate) fn scan_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if limit == 0 || lower >= upper {
            return Ok(out);
        }
        let range = (Bound::Included(lower), Bound::Excluded(upper));
        let mut pending = self.pending(cf).range::<[u8], _>(range).peekable();

        let handle = cf_handle(self.raw, cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut it = self.raw.raw_iterator_cf_opt(handle, ro);
        it.seek(lower);
        loop {
            if out.len() >= limit {
                break;
            }
            let db_item = it.item();
            let next_pending = pending.peek().map(|(k, (_, v))| (*k, v));
            match (db_item, next_pending) {
                (None, None) => break,
                (Some((dk, dv)), None) => {
                    out.push((dk.to_vec(), dv.to_vec()));
                    it.next();
                }
                (None, Some((pk, pv))) => {
                    if let Some(v) = pv {
                        out.push((pk.to_vec(), v.to_vec()));
                    }
                    pending.next();
                }
                (Some((dk, dv)), Some((pk, pv))) => {
                    if dk < pk.as_slice() {
                        out.push((dk.to_vec(), dv.to_vec()));
                        it.next();
                    } else {
                        // The pending write shadows the database entry with the same key.
                        if dk == pk.as_slice() {
                            it.next();
                        }
                        if let Some(v) = pv {
                            out.push((pk.to_vec(), v.to_vec()));
                        }
                        pending.next();
                    }
                }
            }
        }
        it.status()?;
        Ok(out)
    }

    /// The last live entry with `lower <= key < upper` (pending writes included).
    pub(crate) fn last_in_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if lower >= upper {
            return Ok(None);
        }
        let range = (Bound::Included(lower), Bound::Excluded(upper));
        let pending_last = self
            .pending(cf)
            .range::<[u8], _>(range)
            .rev()
            .find_map(|(k, (_, v))| v.as_ref().map(|v| (k.clone(), v.clone())));
        // The database's last entry not deleted by a pending write.
        let handle = cf_handle(self.raw, cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut it = self.raw.raw_iterator_cf_opt(handle, ro);
        it.seek_to_last();
        let mut db_last = None;
        while let Some((k, v)) = it.item() {
            match self.pending(cf).get(k) {
                Some((_, None)) => it.prev(),
                _ => {
                    db_last = Some((k.to_vec(), v.to_vec()));
                    break;
                }
            }
        }
        it.status()?;
        Ok(match (pending_last, db_last) {
            (Some(p), Some(d)) => Some(if p.0 >= d.0 { p } else { d }),
            (p, d) => p.or(d),
        })
    }

    /// This round's writes as one batch; `None` when it has none.
    fn batch(&self) -> Result<Option<WriteBatch>> {
        let mut batch = WriteBatch::default();
        for cf in Cf::ALL {
            let mut handle = None;
            for (key, (tag, value)) in self.pending(cf) {
                if *tag != self.tag {
                    continue;
                }
                let h = match handle {
                    Some(h) => h,
                    None => {
                        let h = cf_handle(self.raw, cf)?;
                        handle = Some(h);
                        h
                    }
                };
                match value {
                    Some(v) => batch.put_cf(h, key, v),
                    None => batch.delete_cf(h, key),
                }
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
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

    fn raw_db(dir: &Path) -> RawDb {
        let (opts, cfs) = rocksdb_options(&DbOptions::default());
        RawDb::open_cf_descriptors(&opts, dir, cfs).unwrap()
    }

    fn state() -> WriterState {
        WriterState {
            overlay: Default::default(),
            partitions: HashMap::new(),
            in_flight_deltas: HashMap::new(),
        }
    }

    fn put_raw(raw: &RawDb, cf: Cf, key: &[u8], value: &[u8]) {
        raw.put_cf(cf_handle(raw, cf).unwrap(), key, value).unwrap();
    }

    #[test]
    fn round_reads_merge_pending_writes_over_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_db(dir.path());
        for k in [b"a1", b"a3", b"a5", b"b1"] {
            put_raw(&raw, Cf::Status, k, b"db");
        }
        let mut state = state();
        let mut round = Round::new(&raw, &mut state, 1);
        round.put(Cf::Status, b"a2".to_vec(), b"new".to_vec());
        round.delete(Cf::Status, b"a3".to_vec());
        round.put(Cf::Status, b"a5".to_vec(), b"changed".to_vec());
        round.put(Cf::Due, b"a4".to_vec(), b"other cf".to_vec());

        let all = round.scan_range(Cf::Status, b"a", b"b", 100).unwrap();
        let keys: Vec<(&[u8], &[u8])> = all
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&b"a1"[..], &b"db"[..]),
                (b"a2", b"new"),
                (b"a5", b"changed")
            ]
        );
        assert_eq!(
            round.scan_range(Cf::Status, b"a", b"b", 2).unwrap().len(),
            2
        );
        assert_eq!(
            round
                .first_in_range(Cf::Status, b"a2", b"b")
                .unwrap()
                .unwrap()
                .0,
            b"a2"
        );
        assert_eq!(
            round
                .last_in_range(Cf::Status, b"a", b"b")
                .unwrap()
                .unwrap(),
            (b"a5".to_vec(), b"changed".to_vec())
        );
        round.delete(Cf::Status, b"a5".to_vec());
        assert_eq!(
            round
                .last_in_range(Cf::Status, b"a", b"b")
                .unwrap()
                .unwrap()
                .0,
            b"a2"
        );
        assert!(!round.contains(Cf::Status, b"a3").unwrap());
        assert_eq!(round.get(Cf::Status, b"a1").unwrap(), Some(b"db".to_vec()));
        assert!(
            round
                .scan_range(Cf::Status, b"c", b"d", 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rollback_undoes_only_the_failed_change() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_db(dir.path());
        put_raw(&raw, Cf::Meta, b"k", b"db");
        let mut state = state();
        let mut round = Round::new(&raw, &mut state, 1);
        round.put(Cf::Meta, b"k".to_vec(), b"first".to_vec());
        let sp = round.savepoint();
        round.put(Cf::Meta, b"k".to_vec(), b"second".to_vec());
        round.delete(Cf::Meta, b"k".to_vec());
        round.put(Cf::Meta, b"x".to_vec(), b"new".to_vec());
        round.rollback(sp);
        assert_eq!(round.get(Cf::Meta, b"k").unwrap(), Some(b"first".to_vec()));
        assert_eq!(round.get(Cf::Meta, b"x").unwrap(), None);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let batch = round.batch().unwrap().unwrap();
        write_synced(&raw, batch, &sync).0.unwrap();
        let meta = cf_handle(&raw, Cf::Meta).unwrap();
        assert_eq!(raw.get_cf(meta, b"k").unwrap(), Some(b"first".to_vec()));
        assert_eq!(raw.get_cf(meta, b"x").unwrap(), None);
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let raw = raw_db(dir.path());
            put_raw(&raw, Cf::Meta, META_FORMAT_VERSION, &99u32.to_be_bytes());
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
        let meta = cf_handle(db.raw(), Cf::Meta).unwrap();
        assert_eq!(
            db.raw().get_cf(meta, META_FORMAT_VERSION).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
    }
}
