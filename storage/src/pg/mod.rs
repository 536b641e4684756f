//! PostgreSQL read-model access: connection settings, the connection pool, the
//! embedded refinery migrations, and private local clusters for development and
//! tests.
//!
//! Connection settings are separate fields ([`PgSettings`]) turned into a
//! `tokio_postgres::Config` field by field: a password is never pasted into a URL,
//! so any character works in it.

mod batch;
pub mod cluster;
pub mod migrate;
mod pool;
pub mod projection;
pub mod read_models;
pub mod rebuild;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use migrate::{MigrationError, MigrationName, MigrationStatus};
pub use pool::{
    ConnectionString, InvalidConnectionString, PgError, PgSettings, Pool, connect, connect_pool,
    connect_pool_in_schema, ping,
};
