//! gxd storage: the RocksDB command outbox and checkpoint log, and PostgreSQL
//! read-model access (connection pool, refinery migrations).

pub mod checkpoint;
pub mod db;
pub mod error;
pub mod outbox;
pub mod pg;
mod types;

pub use db::{Db, DbOptions};
pub use error::{ErrorKind, StorageError};

/// Everything the RocksDB instance holds, registered with the [`Db`] at open: the
/// database's own family, then the outbox's and the checkpoint log's (this order is the
/// order of the families on disk and in every write batch).
const SCHEMAS: &[db::Schema] = &[db::SCHEMA, outbox::SCHEMA, checkpoint::SCHEMA];
