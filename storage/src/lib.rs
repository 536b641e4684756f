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
