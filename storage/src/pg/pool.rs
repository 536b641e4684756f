//! Connection settings and the deadpool-postgres connection pool.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};

/// The connection pool (deadpool-postgres).
pub type Pool = deadpool_postgres::Pool;

/// Errors reaching PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot build the PostgreSQL connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("cannot get a PostgreSQL connection from the pool for {target}: {source}")]
    Pool {
        target: String,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    #[error("PostgreSQL error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Where and how to connect. `Debug` never shows the password.
#[derive(Clone)]
pub struct PgSettings {
    /// Host name or IP address, or (starting with `/`) a unix socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// Maximum number of pooled connections.
    pub pool_max_size: usize,
    /// Bound on establishing one connection (and on waiting for a pooled one).
    pub connect_timeout: Duration,
    /// Reported to the server (`pg_stat_activity.application_name`).
    pub application_name: String,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("pool_max_size", &self.pool_max_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl PgSettings {
    /// The `tokio_postgres::Config`, built field by field.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .connect_timeout(self.connect_timeout)
            .application_name(&self.application_name);
        if let Some(password) = &self.password {
            config.password(password.as_bytes());
        }
        config
    }

    /// `user@host:port/dbname`, for messages (no password).
    pub fn target(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// Opens one connection (no TLS); its connection task is spawned on the current
/// runtime.
pub async fn connect(settings: &PgSettings) -> Result<tokio_postgres::Client, PgError> {
    let (client, connection) = settings
        .pg_config()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|source| PgError::Connect {
            target: settings.target(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Builds the pool and checks that one connection can be made, so a wrong host or
/// password fails at startup rather than at the first request.
pub async fn connect_pool(settings: &PgSettings) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        settings.pg_config(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()?;
    let client = pool.get().await.map_err(|source| PgError::Pool {
        target: settings.target(),
        source,
    })?;
    client.simple_query("SELECT 1").await?;
    drop(client);
    Ok(pool)
}
