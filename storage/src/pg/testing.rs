//! Test harness: a fresh PostgreSQL database per test (feature `test-support`).
//!
//! ```ignore
//! let db = gxd_storage::pg::testing::TestDb::new().await?;
//! let client = db.connect().await?;
//! ```
//!
//! Where the database lives:
//! - `GXD_TEST_DATABASE_URL` set (a libpq URL or `key=value` string naming a role
//!   allowed to `CREATE DATABASE`): a uniquely named database is created on that
//!   server and dropped (`WITH (FORCE)`) when the [`TestDb`] is dropped.
//! - otherwise: a private throwaway [`LocalCluster`] in a temporary directory, shared
//!   by the `TestDb`s alive at the same time in this process and stopped and removed
//!   when the last one is dropped. Each test still gets its own database.
//!
//! Tests may run in parallel, in threads or in processes (nextest): names are unique
//! per process id, counter and random suffix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::config::Host;

use super::cluster::{ClusterError, LocalCluster, connect};

/// Environment variable naming an existing server for tests.
pub const TEST_DATABASE_URL_ENV: &str = "GXD_TEST_DATABASE_URL";

/// Errors from the test harness.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{TEST_DATABASE_URL_ENV} is not a valid connection string: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error("{TEST_DATABASE_URL_ENV} must name a user and a TCP host or socket directory")]
    IncompleteUrl,
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the local cluster start task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

static SHARED: tokio::sync::Mutex<Weak<LocalCluster>> = tokio::sync::Mutex::const_new(Weak::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

async fn shared_cluster() -> Result<Arc<LocalCluster>, TestDbError> {
    let mut slot = SHARED.lock().await;
    if let Some(cluster) = slot.upgrade() {
        return Ok(cluster);
    }
    let cluster = Arc::new(tokio::task::spawn_blocking(LocalCluster::start_temp).await??);
    *slot = Arc::downgrade(&cluster);
    Ok(cluster)
}

/// A database of its own for one test. Dropping it drops the database (on an
/// external server) or releases the private cluster.
#[derive(Debug)]
pub struct TestDb {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    admin: tokio_postgres::Config,
    cluster: Option<Arc<LocalCluster>>,
}

impl TestDb {
    /// Creates a fresh, empty database (see the module docs for where).
    pub async fn new() -> Result<Self, TestDbError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = random_suffix();
        let dbname = format!("gxd_test_{}_{n}_{suffix}", std::process::id());
        match std::env::var(TEST_DATABASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Self::on_server(&url, dbname).await,
            _ => Self::on_local_cluster(dbname).await,
        }
    }

    async fn on_local_cluster(dbname: String) -> Result<Self, TestDbError> {
        let cluster = shared_cluster().await?;
        cluster.create_database(&dbname).await?;
        Ok(TestDb {
            host: cluster.host().to_owned(),
            port: cluster.port(),
            user: cluster.superuser().to_owned(),
            password: Some(cluster.superuser_password().to_owned()),
            admin: cluster.pg_config("postgres"),
            dbname,
            cluster: Some(cluster),
        })
    }

    async fn on_server(url: &str, dbname: String) -> Result<Self, TestDbError> {
        let mut admin: tokio_postgres::Config = url.parse().map_err(TestDbError::BadUrl)?;
        if admin.get_dbname().is_none() {
            admin.dbname("postgres");
        }
        if admin.get_connect_timeout().is_none() {
            admin.connect_timeout(Duration::from_secs(10));
        }
        let host = match admin.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => return Err(TestDbError::IncompleteUrl),
        };
        let user = admin
            .get_user()
            .ok_or(TestDbError::IncompleteUrl)?
            .to_owned();
        let port = admin.get_ports().first().copied().unwrap_or(5432);
        let password = admin
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{dbname}\""))
            .await?;
        Ok(TestDb {
            host,
            port,
            user,
            password,
            dbname,
            admin,
            cluster: None,
        })
    }

    /// Host: a TCP host name or address, or (starting with `/`) a socket directory.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A role that owns the database (a superuser on the private cluster).
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The private cluster, when not running against `GXD_TEST_DATABASE_URL`.
    pub fn cluster(&self) -> Option<&LocalCluster> {
        self.cluster.as_deref()
    }

    /// Connection settings for this database.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = self.admin.clone();
        config.dbname(&self.dbname);
        config
    }

    /// [`PgSettings`](crate::pg::PgSettings) for this database, for a pool
    /// ([`crate::pg::connect_pool`]) or a daemon's configuration.
    pub fn settings(&self, application_name: &str) -> crate::pg::PgSettings {
        crate::pg::PgSettings {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.dbname.clone(),
            pool_max_size: 4,
            connect_timeout: std::time::Duration::from_secs(10),
            application_name: application_name.to_owned(),
        }
    }

    /// Connects to this database; the connection is driven by a spawned task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, TestDbError> {
        Ok(connect(&self.config()).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cluster.is_some() {
            // The private cluster goes away with its last user; nothing to clean.
            return;
        }
        // Drop the database on the external server. `Drop` cannot await, and may run
        // inside a runtime: do it on a thread with its own runtime.
        let admin = self.admin.clone();
        let dbname = self.dbname.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                match connect(&admin).await {
                    Ok(client) => {
                        if let Err(e) = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{dbname}\" WITH (FORCE)"
                            ))
                            .await
                        {
                            tracing::warn!(%dbname, error = %e, "could not drop the test database");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%dbname, error = %e, "could not drop the test database")
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}
