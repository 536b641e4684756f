//! The crash-safe RocksDB command outbox.
