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
    #[error("no PostgreSQL connection: {0}")]
    NoConnection(#[source] deadpool_postgres::PoolError),
    #[error("PostgreSQL error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("{0:?} is not a plain schema name (lower-case letters, digits, underscores)")]
    InvalidSchema(String),
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

/// The fields a `postgres://` URL or a `key=value` connection string sets; `None` for the
/// ones it leaves out. Configuration starts from these and lets separate fields win.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionString {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

/// A connection string that does not parse. The message never holds the string itself
/// (it may carry a password).
#[derive(Debug, thiserror::Error)]
#[error("not a valid connection string ({0})")]
pub struct InvalidConnectionString(String);

impl ConnectionString {
    /// Parses a `postgres://user:password@host:port/dbname` URL (percent-encoded) or a
    /// libpq `key=value` string. Only the first host and port are taken.
    pub fn parse(s: &str) -> Result<Self, InvalidConnectionString> {
        let parsed: tokio_postgres::Config = s
            .parse()
            .map_err(|e: tokio_postgres::Error| InvalidConnectionString(e.to_string()))?;
        Ok(Self {
            host: parsed.get_hosts().first().map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            }),
            port: parsed.get_ports().first().copied(),
            user: parsed.get_user().map(str::to_owned),
            password: parsed
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: parsed.get_dbname().map(str::to_owned),
        })
    }
}

/// Readiness probe: a pooled connection answers `SELECT 1`.
pub async fn ping(pool: &Pool) -> Result<(), PgError> {
    let client = pool.get().await.map_err(PgError::NoConnection)?;
    client.simple_query("SELECT 1").await?;
    Ok(())
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
    build_pool(settings, settings.pg_config()).await
}

/// Like [`connect_pool`], with every connection's `search_path` set to `schema` alone, so
/// unqualified statements read and write its tables (a rebuild's shadow schema). `schema`
/// must be a plain lower-case identifier.
pub async fn connect_pool_in_schema(settings: &PgSettings, schema: &str) -> Result<Pool, PgError> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if !plain {
        return Err(PgError::InvalidSchema(schema.to_owned()));
    }
    let mut config = settings.pg_config();
    config.options(format!("-c search_path={schema}"));
    build_pool(settings, config).await
}

async fn build_pool(
    settings: &PgSettings,
    config: tokio_postgres::Config,
) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        config,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_into_fields() {
        let c = ConnectionString::parse("postgres://gx%2Fd:p%2Fa%3Ds%40s@db.example:6543/reads")
            .unwrap_or_default();
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, Some(6543));
        assert_eq!(c.user.as_deref(), Some("gx/d"));
        assert_eq!(c.password.as_deref(), Some("p/a=s@s"));
        assert_eq!(c.dbname.as_deref(), Some("reads"));
        assert!(!format!("{c:?}").contains("p/a=s@s"));

        let kv = ConnectionString::parse("host=/run/postgresql user=gxd").unwrap();
        assert_eq!(kv.host.as_deref(), Some("/run/postgresql"));
        assert_eq!((kv.port, kv.dbname), (None, None));

        let err = ConnectionString::parse("postgres://u:secret@h:notaport/d")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("not a valid connection string"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
