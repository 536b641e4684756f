//! Configuration: a TOML file, `GXD_*` environment overrides, then [`FileConfig::validate`]
//! into the runtime [`Config`].
//!
//! Every field is documented in `packaging/gxd.example.toml`.
//!
//! # Environment overrides
//! `GXD_<SECTION>__<FIELD>=value` (two underscores between the section and the field,
//! upper or lower case) sets `<section>.<field>`, overriding the file, e.g.
//! `GXD_DATABASE__HOST=db.internal`, `GXD_DATABASE__PASSWORD_FILE=/run/secrets/pg`,
//! `GXD_API__LISTEN=0.0.0.0:8080`, `GXD_SHUTDOWN__HTTP_DRAIN_TIMEOUT_SECONDS=5`.
//! The value is read as the field's type (integer, boolean, string). A `GXD_` variable
//! with `__` that names no field is an error (typos do not pass silently); variables
//! without `__` (such as `GXD_CONFIG`) are not overrides.
//!
//! # Secrets
//! `database.password_file` names a file holding the password (one trailing newline
//! is dropped). It must not be readable by group or others (`chmod 600`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gxd_storage::pg::{ConnectionString, PgSettings};
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "GXD_";
/// Separator between path segments in an override's name.
pub const ENV_SEPARATOR: &str = "__";

/// An invalid configuration: names the field (and the environment variable or file
/// it came from). Maps to exit code 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path (`database.port`), or empty for whole-file errors.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration file, as written. Unknown fields are errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub api: ApiSection,
    /// JWT bearer authentication; `None` (no `[auth]` section): the authenticated routes
    /// answer 401 "not configured".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSection>,
    pub database: DatabaseSection,
    pub storage: StorageSection,
    pub fabric: FabricSection,
    pub submitter: SubmitterSection,
    pub projector: ProjectorSection,
    pub log: LogSection,
    pub shutdown: ShutdownSection,
}

/// The Fabric peer gxd talks to, and the identity it signs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabricSection {
    /// `host:port` of the peer's Gateway (and Deliver) service, tried in order. Empty: the
    /// engine (submitter and projector) does not run.
    pub peer_endpoints: Vec<String>,
    /// The name the peer's TLS certificate carries, when it differs from the endpoint's host.
    pub peer_tls_server_name: Option<String>,
    /// TLS to the peer (Fabric peers run TLS). `false` only for a plaintext test peer.
    pub tls: bool,
    /// PEM root certificate(s) of the peer's TLS CA (cryptogen: `peers/<peer>/tls/ca.crt`).
    pub tls_ca_file: Option<PathBuf>,
    /// Mutual TLS: client certificate and key (PEM), when the peer requires them.
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    /// MSP id of the organization gxd signs for, e.g. `Org1MSP`.
    pub msp_id: Option<String>,
    /// MSP directory of the signing identity (`signcerts/*.pem`, `keystore/*`).
    pub msp_dir: Option<PathBuf>,
    pub channel: String,
    pub chaincode: String,
    pub evaluate_timeout_seconds: u64,
    pub endorse_timeout_seconds: u64,
    pub submit_timeout_seconds: u64,
    pub commit_status_timeout_seconds: u64,
    /// HTTP/2 connections to the peer in use, taken by calls in turn (1..=64).
    pub connections: u64,
}

impl Default for FabricSection {
    fn default() -> Self {
        Self {
            peer_endpoints: Vec::new(),
            peer_tls_server_name: None,
            tls: true,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            msp_id: None,
            msp_dir: None,
            channel: "gxchannel".to_owned(),
            chaincode: "gx".to_owned(),
            evaluate_timeout_seconds: 5,
            endorse_timeout_seconds: 15,
            submit_timeout_seconds: 5,
            commit_status_timeout_seconds: 60,
            connections: DEFAULT_PEER_CONNECTIONS,
        }
    }
}

/// The outbox submitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitterSection {
    /// Commands (hence partitions) in flight at once.
    pub max_in_flight: u64,
    /// Attempts before a command with transient errors is dead-lettered.
    pub max_attempts: u64,
    /// Cap of the first retry's delay; it doubles per attempt (full jitter).
    pub backoff_base_milliseconds: u64,
    /// No retry waits longer.
    pub backoff_max_seconds: u64,
}

impl Default for SubmitterSection {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_attempts: 5,
            backoff_base_milliseconds: 200,
            backoff_max_seconds: 30,
        }
    }
}

/// The block projector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorSection {
    /// A transaction whose event the handlers cannot apply: `halt` (stop before its block;
    /// readiness says why) or `dead_letter` (record it in `projection_dead_letters`, go on).
    pub poison_policy: String,
    /// Readiness fails while the projector has been behind the ledger for longer than this
    /// (the age of the oldest block it knows of and has not applied), seconds.
    pub max_lag_seconds: u64,
}

impl Default for ProjectorSection {
    fn default() -> Self {
        Self {
            poison_policy: "halt".to_owned(),
            max_lag_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// `ip:port` the REST API listens on.
    pub listen: String,
    /// Largest request body accepted; larger: 413.
    pub max_body_bytes: u64,
    /// A request not answered within this: 503 with `Retry-After`.
    pub request_timeout_seconds: u64,
    /// Requests per second per authenticated subject (token bucket); 0: no rate limit.
    pub rate_limit_per_second: u64,
    /// Bucket size (requests in a burst); 0: the same as `rate_limit_per_second`.
    pub rate_limit_burst: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: gxd_api::limits::DEFAULT_MAX_BODY_BYTES as u64,
            request_timeout_seconds: gxd_api::limits::DEFAULT_REQUEST_TIMEOUT.as_secs(),
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
        }
    }
}

/// `[auth]`: JWT bearer tokens (see `gxd_api::jwt`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Required `iss` of every token.
    pub issuer: Option<String>,
    /// Required `aud` of every token.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// The claim holding the role (`user`, `admin`, or an array of them).
    pub role_claim: String,
    /// `[[auth.keys]]`: the verification keys, chosen by the token's `kid`.
    pub keys: Vec<AuthKeySection>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            leeway_seconds: gxd_api::jwt::DEFAULT_LEEWAY.as_secs(),
            role_claim: gxd_api::jwt::DEFAULT_ROLE_CLAIM.to_owned(),
            keys: Vec::new(),
        }
    }
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthKeySection {
    /// Key id (the token header's `kid`); required when several keys are configured.
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`: the only algorithm this key accepts.
    pub algorithm: String,
    /// HS256: the shared secret (>= 32 bytes; mode 0600).
    pub secret_file: Option<PathBuf>,
    /// RS256 / ES256: the PEM public key.
    pub public_key_file: Option<PathBuf>,
    /// RS256 / ES256: the PEM private key, read only by `gxd token issue` (mode 0600).
    pub private_key_file: Option<PathBuf>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Convenience: a libpq URL or `key=value` string; the separate fields below
    /// override what it sets.
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub dbname: Option<String>,
    pub pool_max_size: usize,
    pub connect_timeout_seconds: u64,
    pub migrate_on_startup: bool,
    pub application_name: String,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            port: None,
            user: None,
            password: None,
            password_file: None,
            dbname: None,
            pool_max_size: 16,
            connect_timeout_seconds: 10,
            migrate_on_startup: true,
            application_name: "gxd".to_owned(),
        }
    }
}

impl fmt::Debug for DatabaseSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSection")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("dbname", &self.dbname)
            .field("pool_max_size", &self.pool_max_size)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("migrate_on_startup", &self.migrate_on_startup)
            .field("application_name", &self.application_name)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Directory of the daemon's local state (RocksDB outbox and checkpoint log).
    pub data_dir: PathBuf,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/gxd"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `json` or `pretty`.
    pub format: String,
    /// tracing-subscriber `EnvFilter` directives, e.g. `info,gxd_storage=debug`.
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "json".to_owned(),
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Bound on stopping the HTTP server: stop accepting, finish in-flight requests.
    pub http_drain_timeout_seconds: u64,
    /// Bound on closing storage (PostgreSQL pool, local stores).
    pub storage_close_timeout_seconds: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            http_drain_timeout_seconds: 10,
            storage_close_timeout_seconds: 10,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_listen: SocketAddr,
    /// Body size, request timeout and rate limit of the API.
    pub api_limits: gxd_api::ApiLimits,
    /// JWT authentication; `None`: the authenticated routes answer 401.
    pub auth: Option<AuthConfig>,
    pub database: PgSettings,
    pub migrate_on_startup: bool,
    pub data_dir: PathBuf,
    /// The peer and identity; `None` when no peer is configured (API and storage only).
    pub fabric: Option<FabricConfig>,
    pub submitter: SubmitterSettings,
    pub projector: ProjectorSettings,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub shutdown: ShutdownTimeouts,
}

/// Validated `[auth]`: the authenticator (keys loaded) and what `gxd token issue` needs.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub role_claim: String,
    pub keys: Vec<AuthKey>,
    pub authenticator: std::sync::Arc<gxd_api::JwtAuthenticator>,
}

/// One validated key: its verification material and, for RS256/ES256, where its private
/// key is (for `gxd token issue`).
#[derive(Debug, Clone)]
pub struct AuthKey {
    pub key: gxd_api::jwt::JwtKey,
    pub private_key_file: Option<PathBuf>,
}

/// Validated `[fabric]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricConfig {
    pub peer_endpoints: Vec<String>,
    pub peer_tls_server_name: Option<String>,
    /// `None`: plaintext.
    pub tls: Option<TlsFiles>,
    pub msp_id: String,
    pub msp_dir: PathBuf,
    pub channel: String,
    pub chaincode: String,
    pub evaluate_timeout: Duration,
    pub endorse_timeout: Duration,
    pub submit_timeout: Duration,
    pub commit_status_timeout: Duration,
    pub connections: usize,
}

/// `fabric.connections` by default: one HTTP/2 connection is one task doing the TLS and
/// framing of all its streams; a few let a busy submitter use more than one core.
pub const DEFAULT_PEER_CONNECTIONS: u64 = 4;

/// TLS material files (read when the daemon starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Validated `[submitter]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitterSettings {
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// What the projector does with a transaction its handlers cannot apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonPolicySetting {
    Halt,
    DeadLetter,
}

/// Validated `[projector]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorSettings {
    pub poison_policy: PoisonPolicySetting,
    /// Readiness threshold on the projector's lag.
    pub max_lag: Duration,
}

/// Per-phase shutdown bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownTimeouts {
    pub http_drain: Duration,
    pub storage_close: Duration,
}

impl ShutdownTimeouts {
    /// The longest an orderly shutdown can take.
    pub fn total(&self) -> Duration {
        self.http_drain + self.storage_close
    }
}

/// Where each overridden field's value came from, for error messages.
type Origins = BTreeMap<String, String>;

/// Loads `path` (or only defaults when `None`), applies the `GXD_*` overrides found
/// in `env`, and validates. `env` is passed in (not read here) so this is testable.
pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::new("", format!("cannot read config file {}: {e}", p.display()))
        })?,
        None => String::new(),
    };
    let file = parse(&text, env).map_err(|mut e| {
        if let Some(p) = path
            && e.field.is_empty()
        {
            e.message = format!("{}: {}", p.display(), e.message);
        }
        e
    })?;
    file.validate()
}

/// Parses TOML text and applies environment overrides, without validating.
pub fn parse(text: &str, env: &BTreeMap<String, String>) -> Result<FileConfig, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError::new("", format!("not valid TOML{at}: {}", e.message().trim()))
    })?;
    let origins = apply_env(&mut table, env)?;
    let de = toml::Value::Table(table);
    serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
        let field = e.path().to_string();
        let origin = origins
            .get(&field)
            .map(|var| format!(" (from {var})"))
            .unwrap_or_default();
        let inner = e.into_inner();
        let msg = inner.message().to_owned();
        if field == "." || field.is_empty() {
            ConfigError::new("", msg)
        } else {
            ConfigError::new(format!("{field}{origin}"), msg)
        }
    })
}

/// A `FileConfig` with every optional field set, so that its serialization names
/// every field with its type (used to read environment values as the right type).
fn type_sample() -> toml::Table {
    let mut sample = FileConfig::default();
    sample.database.url = Some(String::new());
    sample.database.host = Some(String::new());
    sample.database.port = Some(0);
    sample.database.user = Some(String::new());
    sample.database.password = Some(String::new());
    sample.database.password_file = Some(PathBuf::new());
    sample.database.dbname = Some(String::new());
    sample.fabric.peer_tls_server_name = Some(String::new());
    sample.fabric.tls_ca_file = Some(PathBuf::new());
    sample.fabric.tls_client_cert_file = Some(PathBuf::new());
    sample.fabric.tls_client_key_file = Some(PathBuf::new());
    sample.fabric.msp_id = Some(String::new());
    sample.fabric.msp_dir = Some(PathBuf::new());
    sample.auth = Some(AuthSection {
        issuer: Some(String::new()),
        audience: Some(String::new()),
        ..AuthSection::default()
    });
    match toml::Value::try_from(sample) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<Origins, ConfigError> {
    let sample = type_sample();
    let mut origins = Origins::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(ENV_SEPARATOR) {
            continue;
        }
        let path: Vec<String> = rest.split(ENV_SEPARATOR).map(str::to_lowercase).collect();
        let dotted = path.join(".");
        let [section, field] = path.as_slice() else {
            return Err(ConfigError::new(
                var.clone(),
                format!("{dotted} is not a configuration field (expected GXD_<SECTION>__<FIELD>)"),
            ));
        };
        let Some(kind) = sample
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(field))
        else {
            return Err(ConfigError::new(
                var.clone(),
                format!("{dotted} is not a configuration field"),
            ));
        };
        let value =
            coerce(kind, raw).map_err(|m| ConfigError::new(format!("{dotted} (from {var})"), m))?;
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = section_table.as_table_mut() else {
            return Err(ConfigError::new(section.clone(), "must be a table"));
        };
        section_table.insert(field.clone(), value);
        origins.insert(dotted, var.clone());
    }
    Ok(origins)
}

fn coerce(kind: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match kind {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        // A list from the environment: comma-separated (GXD_FABRIC__PEER_ENDPOINTS=a:7051,b:7051).
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        _ => Ok(toml::Value::String(raw.to_owned())),
    }
}

impl FileConfig {
    /// Checks every field and resolves secrets into the runtime configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let api_listen: SocketAddr = self.api.listen.parse().map_err(|_| {
            ConfigError::new(
                "api.listen",
                format!(
                    "{:?} is not an ip:port address (e.g. 127.0.0.1:8080)",
                    self.api.listen
                ),
            )
        })?;
        let database = self.database.validate()?;
        let api_limits = self.api.validate_limits()?;
        let auth = self.auth.as_ref().map(AuthSection::validate).transpose()?;

        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.data_dir", "must not be empty"));
        }

        let log_format = match self.log.format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("{other:?} is not one of \"json\", \"pretty\""),
                ));
            }
        };
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| ConfigError::new("log.filter", format!("not a valid filter ({e})")))?;

        let shutdown = ShutdownTimeouts {
            http_drain: seconds(
                "shutdown.http_drain_timeout_seconds",
                self.shutdown.http_drain_timeout_seconds,
            )?,
            storage_close: seconds(
                "shutdown.storage_close_timeout_seconds",
                self.shutdown.storage_close_timeout_seconds,
            )?,
        };

        let fabric = self.fabric.validate()?;
        let submitter = self.submitter.validate()?;
        let poison_policy = match self.projector.poison_policy.as_str() {
            "halt" => PoisonPolicySetting::Halt,
            "dead_letter" => PoisonPolicySetting::DeadLetter,
            other => {
                return Err(ConfigError::new(
                    "projector.poison_policy",
                    format!("{other:?} is not one of \"halt\", \"dead_letter\""),
                ));
            }
        };

        Ok(Config {
            api_listen,
            api_limits,
            auth,
            database,
            migrate_on_startup: self.database.migrate_on_startup,
            data_dir: self.storage.data_dir.clone(),
            fabric,
            submitter,
            projector: ProjectorSettings {
                poison_policy,
                max_lag: seconds("projector.max_lag_seconds", self.projector.max_lag_seconds)?,
            },
            log_format,
            log_filter: self.log.filter.clone(),
            shutdown,
        })
    }
}

fn seconds(field: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 || value > 3600 {
        return Err(ConfigError::new(
            field,
            format!("{value} is out of range 1..=3600"),
        ));
    }
    Ok(Duration::from_secs(value))
}

impl FabricSection {
    pub(crate) fn validate(&self) -> Result<Option<FabricConfig>, ConfigError> {
        if self.peer_endpoints.is_empty() {
            return Ok(None);
        }
        for (i, e) in self.peer_endpoints.iter().enumerate() {
            let ok = e.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(ConfigError::new(
                    format!("fabric.peer_endpoints[{i}]"),
                    format!("{e:?} is not host:port"),
                ));
            }
        }
        let required = |field: &str, v: &Option<String>| match v {
            Some(v) if !v.trim().is_empty() => Ok(v.clone()),
            _ => Err(ConfigError::new(
                format!("fabric.{field}"),
                "missing (required when fabric.peer_endpoints is set)",
            )),
        };
        let msp_id = required("msp_id", &self.msp_id)?;
        let msp_dir = self.msp_dir.clone().ok_or_else(|| {
            ConfigError::new(
                "fabric.msp_dir",
                "missing (required when fabric.peer_endpoints is set)",
            )
        })?;
        if !msp_dir.is_dir() {
            return Err(ConfigError::new(
                "fabric.msp_dir",
                format!("{} is not a directory", msp_dir.display()),
            ));
        }
        let readable = |field: &str, p: &Path| {
            std::fs::metadata(p).map(|_| ()).map_err(|e| {
                ConfigError::new(format!("fabric.{field}"), format!("{}: {e}", p.display()))
            })
        };
        let tls = if self.tls {
            let ca = self.tls_ca_file.clone().ok_or_else(|| {
                ConfigError::new(
                    "fabric.tls_ca_file",
                    "missing (required with fabric.tls = true)",
                )
            })?;
            readable("tls_ca_file", &ca)?;
            match (&self.tls_client_cert_file, &self.tls_client_key_file) {
                (Some(c), Some(k)) => {
                    readable("tls_client_cert_file", c)?;
                    read_secret_file("fabric.tls_client_key_file", k)?;
                }
                (None, None) => {}
                _ => {
                    return Err(ConfigError::new(
                        "fabric.tls_client_key_file",
                        "set both fabric.tls_client_cert_file and fabric.tls_client_key_file, or neither",
                    ));
                }
            }
            Some(TlsFiles {
                ca,
                client_cert: self.tls_client_cert_file.clone(),
                client_key: self.tls_client_key_file.clone(),
            })
        } else {
            None
        };
        if self.channel.trim().is_empty() {
            return Err(ConfigError::new("fabric.channel", "must not be empty"));
        }
        if self.chaincode.trim().is_empty() {
            return Err(ConfigError::new("fabric.chaincode", "must not be empty"));
        }
        if !(1..=64).contains(&self.connections) {
            return Err(ConfigError::new(
                "fabric.connections",
                format!("{} is out of range 1..=64", self.connections),
            ));
        }
        Ok(Some(FabricConfig {
            connections: usize::try_from(self.connections).unwrap_or(1),
            peer_endpoints: self.peer_endpoints.clone(),
            peer_tls_server_name: self.peer_tls_server_name.clone(),
            tls,
            msp_id,
            msp_dir,
            channel: self.channel.clone(),
            chaincode: self.chaincode.clone(),
            evaluate_timeout: seconds(
                "fabric.evaluate_timeout_seconds",
                self.evaluate_timeout_seconds,
            )?,
            endorse_timeout: seconds(
                "fabric.endorse_timeout_seconds",
                self.endorse_timeout_seconds,
            )?,
            submit_timeout: seconds("fabric.submit_timeout_seconds", self.submit_timeout_seconds)?,
            commit_status_timeout: seconds(
                "fabric.commit_status_timeout_seconds",
                self.commit_status_timeout_seconds,
            )?,
        }))
    }
}

impl ApiSection {
    fn validate_limits(&self) -> Result<gxd_api::ApiLimits, ConfigError> {
        const MAX_BODY: u64 = 64 * 1024 * 1024;
        if !(1..=MAX_BODY).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "api.max_body_bytes",
                format!("{} is out of range 1..={MAX_BODY}", self.max_body_bytes),
            ));
        }
        let request_timeout = seconds("api.request_timeout_seconds", self.request_timeout_seconds)?;
        let rate = |field: &str, v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v <= 1_000_000)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("api.{field}"),
                        format!("{v} is out of range 0..=1000000"),
                    )
                })
        };
        let per_second = rate("rate_limit_per_second", self.rate_limit_per_second)?;
        let burst = rate("rate_limit_burst", self.rate_limit_burst)?;
        let rate_limit = (per_second > 0).then_some(gxd_api::RateLimit {
            per_second,
            burst: if burst == 0 { per_second } else { burst },
        });
        if rate_limit.is_none() && burst > 0 {
            return Err(ConfigError::new(
                "api.rate_limit_burst",
                "set api.rate_limit_per_second too (0 turns the rate limit off)",
            ));
        }
        Ok(gxd_api::ApiLimits {
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            request_timeout,
            rate_limit,
        })
    }
}

impl AuthSection {
    /// Reads every key file (secrets permission-checked) and builds the authenticator.
    pub(crate) fn validate(&self) -> Result<AuthConfig, ConfigError> {
        use gxd_api::jwt::{JwtAlgorithm, JwtKey};
        let required = |field: &str, v: &Option<String>| match v {
            Some(v) if !v.trim().is_empty() => Ok(v.clone()),
            Some(_) => Err(ConfigError::new(
                format!("auth.{field}"),
                "must not be empty",
            )),
            None => Err(ConfigError::new(
                format!("auth.{field}"),
                "missing (required in [auth])",
            )),
        };
        let issuer = required("issuer", &self.issuer)?;
        let audience = required("audience", &self.audience)?;
        if self.leeway_seconds > 300 {
            return Err(ConfigError::new(
                "auth.leeway_seconds",
                format!("{} is out of range 0..=300", self.leeway_seconds),
            ));
        }
        if self.role_claim.trim().is_empty() {
            return Err(ConfigError::new("auth.role_claim", "must not be empty"));
        }
        if self.keys.is_empty() {
            return Err(ConfigError::new(
                "auth.keys",
                "no [[auth.keys]] entry (remove [auth] to run without authentication)",
            ));
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let field = |name: &str| format!("auth.keys[{i}].{name}");
            let algorithm = JwtAlgorithm::parse(&k.algorithm).ok_or_else(|| {
                ConfigError::new(
                    field("algorithm"),
                    format!(
                        "{:?} is not one of \"HS256\", \"RS256\", \"ES256\"",
                        k.algorithm
                    ),
                )
            })?;
            if k.kid.as_deref().is_some_and(|kid| kid.trim().is_empty()) {
                return Err(ConfigError::new(field("kid"), "must not be empty"));
            }
            let (material, source) = match algorithm {
                JwtAlgorithm::Hs256 => {
                    if k.public_key_file.is_some() || k.private_key_file.is_some() {
                        return Err(ConfigError::new(
                            field("secret_file"),
                            "an HS256 key has a secret_file only (no public_key_file or private_key_file)",
                        ));
                    }
                    let path = k.secret_file.clone().ok_or_else(|| {
                        ConfigError::new(field("secret_file"), "missing (required for HS256)")
                    })?;
                    let secret = read_secret_file(&field("secret_file"), &path)?;
                    if secret.len() < gxd_api::jwt::MIN_HS256_SECRET_BYTES {
                        return Err(ConfigError::new(
                            field("secret_file"),
                            format!(
                                "{}: an HS256 secret must be at least {} bytes",
                                path.display(),
                                gxd_api::jwt::MIN_HS256_SECRET_BYTES
                            ),
                        ));
                    }
                    (secret.into_bytes(), path)
                }
                JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                    if k.secret_file.is_some() {
                        return Err(ConfigError::new(
                            field("secret_file"),
                            format!("a {algorithm} key has a public_key_file, not a secret_file"),
                        ));
                    }
                    let path = k.public_key_file.clone().ok_or_else(|| {
                        ConfigError::new(
                            field("public_key_file"),
                            format!("missing (required for {algorithm})"),
                        )
                    })?;
                    let pem = std::fs::read(&path).map_err(|e| {
                        ConfigError::new(
                            field("public_key_file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    (pem, path)
                }
            };
            keys.push(AuthKey {
                key: JwtKey {
                    kid: k.kid.clone(),
                    algorithm,
                    material,
                    source,
                },
                private_key_file: k.private_key_file.clone(),
            });
        }
        let leeway = Duration::from_secs(self.leeway_seconds);
        let authenticator = gxd_api::JwtAuthenticator::new(&gxd_api::JwtSettings {
            issuer: issuer.clone(),
            audience: audience.clone(),
            leeway,
            role_claim: self.role_claim.clone(),
            keys: keys.iter().map(|k| k.key.clone()).collect(),
        })
        .map_err(|e| ConfigError::new("auth.keys", e.message))?;
        Ok(AuthConfig {
            issuer,
            audience,
            leeway,
            role_claim: self.role_claim.clone(),
            keys,
            authenticator: std::sync::Arc::new(authenticator),
        })
    }
}

impl SubmitterSection {
    pub(crate) fn validate(&self) -> Result<SubmitterSettings, ConfigError> {
        let range = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    format!("submitter.{field}"),
                    format!("{v} is out of range {lo}..={hi}"),
                ))
            }
        };
        let max_in_flight = range("max_in_flight", self.max_in_flight, 1, 100_000)?;
        let max_attempts = range("max_attempts", self.max_attempts, 1, 1_000)?;
        let base = range(
            "backoff_base_milliseconds",
            self.backoff_base_milliseconds,
            1,
            600_000,
        )?;
        let max = range("backoff_max_seconds", self.backoff_max_seconds, 1, 86_400)?;
        Ok(SubmitterSettings {
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
            backoff_base: Duration::from_millis(base),
            backoff_max: Duration::from_secs(max),
        })
    }
}

impl DatabaseSection {
    fn validate(&self) -> Result<PgSettings, ConfigError> {
        // Start from the URL, if any; separate fields win.
        let from_url = match &self.url {
            Some(url) => ConnectionString::parse(url)
                .map_err(|e| ConfigError::new("database.url", e.to_string()))?,
            None => ConnectionString::default(),
        };
        let ConnectionString {
            host,
            port,
            user,
            password,
            dbname,
        } = from_url;
        let host = self
            .host
            .clone()
            .or(host)
            .unwrap_or_else(|| "localhost".to_owned());
        let port = self.port.or(port).unwrap_or(5432);
        let user = self.user.clone().or(user);
        let dbname = self.dbname.clone().or(dbname);

        if host.trim().is_empty() {
            return Err(ConfigError::new("database.host", "must not be empty"));
        }
        if port == 0 {
            return Err(ConfigError::new("database.port", "must be 1..=65535"));
        }
        let user = match user {
            Some(u) if !u.is_empty() => u,
            Some(_) => return Err(ConfigError::new("database.user", "must not be empty")),
            None => return Err(ConfigError::new("database.user", "missing (required)")),
        };
        let dbname = match dbname {
            Some(d) if !d.is_empty() => d,
            Some(_) => return Err(ConfigError::new("database.dbname", "must not be empty")),
            None => return Err(ConfigError::new("database.dbname", "missing (required)")),
        };
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "database.password_file",
                    "set either database.password or database.password_file, not both",
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => Some(read_secret_file("database.password_file", file)?),
            (None, None) => password,
        };
        if !(1..=1024).contains(&self.pool_max_size) {
            return Err(ConfigError::new(
                "database.pool_max_size",
                format!("{} is out of range 1..=1024", self.pool_max_size),
            ));
        }
        let connect_timeout = seconds(
            "database.connect_timeout_seconds",
            self.connect_timeout_seconds,
        )?;
        if self.application_name.len() > 63 {
            return Err(ConfigError::new(
                "database.application_name",
                "longer than 63 bytes",
            ));
        }
        Ok(PgSettings {
            host,
            port,
            user,
            password,
            dbname,
            pool_max_size: self.pool_max_size,
            connect_timeout,
            application_name: self.application_name.clone(),
        })
    }
}

/// Reads a secret from `path`: refuses files readable or writable by group or
/// others; drops one trailing newline (`\n` or `\r\n`).
pub fn read_secret_file(field: &str, path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ConfigError::new(
            field,
            format!("{} is not a file", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(
            field,
            format!(
                "{} is accessible by group or others (mode {mode:03o}); a secret file must be private: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(text)
}

/// The process environment as a map, for [`load`].
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MINIMAL: &str = r#"
[database]
host = "db.internal"
user = "gxd"
dbname = "gxd"
"#;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn check(text: &str, env_pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        parse(text, &env(env_pairs))?.validate()
    }

    #[test]
    fn the_fabric_section_is_checked_field_by_field() {
        let c = check(MINIMAL, &[]).unwrap();
        assert!(c.fabric.is_none(), "no peer: no engine");
        assert_eq!(c.submitter.max_attempts, 5);
        assert_eq!(c.projector.poison_policy, PoisonPolicySetting::Halt);

        let dir = tempfile::tempdir().unwrap();
        let msp = dir.path().join("msp");
        std::fs::create_dir_all(&msp).unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "pem").unwrap();
        let base = format!(
            "{MINIMAL}\n[fabric]\npeer_endpoints = [\"peer0:7051\"]\nmsp_id = \"Org1MSP\"\nmsp_dir = {:?}\ntls_ca_file = {:?}\n",
            msp.display().to_string(),
            ca.display().to_string()
        );
        let c = check(&base, &[]).unwrap();
        let f = c.fabric.unwrap();
        assert_eq!(f.peer_endpoints, ["peer0:7051"]);
        assert_eq!(f.tls.unwrap().ca, ca);
        assert_eq!(f.commit_status_timeout, Duration::from_secs(60));
        assert_eq!(f.connections, 4);
        let c = check(&base, &[("GXD_FABRIC__CONNECTIONS", "2")]).unwrap();
        assert_eq!(c.fabric.unwrap().connections, 2);

        // A list from the environment: comma-separated.
        let c = check(&base, &[("GXD_FABRIC__PEER_ENDPOINTS", "a:7051, b:8051")]).unwrap();
        assert_eq!(c.fabric.unwrap().peer_endpoints, ["a:7051", "b:8051"]);

        for (env_pairs, field) in [
            (
                vec![("GXD_FABRIC__PEER_ENDPOINTS", "nohostport")],
                "fabric.peer_endpoints[0]",
            ),
            (vec![("GXD_FABRIC__MSP_ID", " ")], "fabric.msp_id"),
            (
                vec![("GXD_FABRIC__MSP_DIR", "/nonexistent/msp")],
                "fabric.msp_dir",
            ),
            (
                vec![("GXD_FABRIC__TLS_CA_FILE", "/nonexistent/ca.crt")],
                "fabric.tls_ca_file",
            ),
            (
                vec![("GXD_FABRIC__TLS_CLIENT_CERT_FILE", "/x")],
                "fabric.tls_client_key_file",
            ),
            (vec![("GXD_FABRIC__CONNECTIONS", "0")], "fabric.connections"),
            (
                vec![("GXD_FABRIC__CONNECTIONS", "65")],
                "fabric.connections",
            ),
            (
                vec![("GXD_SUBMITTER__MAX_ATTEMPTS", "0")],
                "submitter.max_attempts",
            ),
            (
                vec![("GXD_PROJECTOR__POISON_POLICY", "skip")],
                "projector.poison_policy",
            ),
        ] {
            let err = check(&base, &env_pairs).unwrap_err();
            assert!(err.field.starts_with(field), "{field}: {err}");
        }
        // tls = false needs no CA.
        let plain = base.replace("tls_ca_file", "# tls_ca_file") + "tls = false\n";
        assert!(check(&plain, &[]).unwrap().fabric.unwrap().tls.is_none());
    }

    fn secret(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_auth_section_loads_its_keys_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let hs = secret(
            dir.path(),
            "hs",
            "0123456789abcdef0123456789abcdef\n",
            0o600,
        );
        let open = secret(
            dir.path(),
            "open",
            "0123456789abcdef0123456789abcdef",
            0o644,
        );
        let short = secret(dir.path(), "short", "too-short", 0o600);
        let pem = dir.path().join("ec.pub.pem");
        std::fs::write(&pem, include_str!("../../api/tests/fixtures/ec.pub.pem")).unwrap();
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let auth = format!(
            "{MINIMAL}\n[auth]\nissuer = \"https://iss\"\naudience = \"gxd\"\n\
             [[auth.keys]]\nkid = \"a\"\nalgorithm = \"HS256\"\nsecret_file = {}\n\
             [[auth.keys]]\nkid = \"b\"\nalgorithm = \"ES256\"\npublic_key_file = {}\n",
            q(&hs),
            q(&pem)
        );
        let c = check(&auth, &[]).unwrap();
        let a = c.auth.unwrap();
        assert_eq!(a.authenticator.kids(), ["a", "b"]);
        assert_eq!(a.leeway, Duration::from_secs(30));
        assert_eq!(a.role_claim, "role");
        // The trailing newline of the secret file is not part of the secret.
        assert_eq!(a.keys[0].key.material.len(), 32);
        assert!(!format!("{:?}", a.keys).contains("0123456789abcdef"));
        // Scalar fields from the environment.
        let c = check(&auth, &[("GXD_AUTH__LEEWAY_SECONDS", "5")]).unwrap();
        assert_eq!(c.auth.unwrap().leeway, Duration::from_secs(5));
        // No [auth]: none.
        assert!(check(MINIMAL, &[]).unwrap().auth.is_none());

        for (text, field, needle) in [
            (
                auth.replace("issuer = \"https://iss\"\n", ""),
                "auth.issuer",
                "missing",
            ),
            (
                auth.replace("audience = \"gxd\"", "audience = \"\""),
                "auth.audience",
                "empty",
            ),
            (
                auth.replace("\"HS256\"", "\"none\""),
                "auth.keys[0].algorithm",
                "none",
            ),
            (
                auth.replace(&q(&hs), &q(&open)),
                "auth.keys[0].secret_file",
                "chmod 600",
            ),
            (
                auth.replace(&q(&hs), &q(&short)),
                "auth.keys[0].secret_file",
                "32 bytes",
            ),
            (
                auth.replace(&q(&pem), "\"/nonexistent/k.pem\""),
                "auth.keys[1].public_key_file",
                "/nonexistent/k.pem",
            ),
            (
                auth.replace("public_key_file", "secret_file"),
                "auth.keys[1].secret_file",
                "public_key_file",
            ),
            (
                auth.replace("kid = \"b\"", "kid = \"a\""),
                "auth.keys",
                "twice",
            ),
            (
                auth.replace("kid = \"b\"\n", ""),
                "auth.keys",
                "needs a kid",
            ),
            (
                format!("{MINIMAL}\n[auth]\nissuer = \"i\"\naudience = \"a\"\n"),
                "auth.keys",
                "no [[auth.keys]]",
            ),
            (
                auth.replace(
                    "audience = \"gxd\"",
                    "audience = \"gxd\"\nleeway_seconds = 301",
                ),
                "auth.leeway_seconds",
                "0..=300",
            ),
        ] {
            let e = check(&text, &[]).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle:?}"
            );
        }
        // A public PEM that is not P-256 names its file.
        std::fs::write(&pem, include_str!("../../api/tests/fixtures/rsa.pub.pem")).unwrap();
        let e = check(&auth, &[]).unwrap_err();
        assert!(e.to_string().contains("ec.pub.pem"), "{e}");
    }

    #[test]
    fn api_limits_have_defaults_and_bounds() {
        let c = check(MINIMAL, &[]).unwrap();
        assert_eq!(c.api_limits, gxd_api::ApiLimits::default());
        assert_eq!(c.api_limits.max_body_bytes, 65536);
        assert_eq!(c.api_limits.request_timeout, Duration::from_secs(10));
        assert_eq!(c.api_limits.rate_limit, None);
        let c = check(
            MINIMAL,
            &[
                ("GXD_API__RATE_LIMIT_PER_SECOND", "50"),
                ("GXD_API__MAX_BODY_BYTES", "1024"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.api_limits.rate_limit,
            Some(gxd_api::RateLimit {
                per_second: 50,
                burst: 50
            })
        );
        assert_eq!(c.api_limits.max_body_bytes, 1024);
        for (var, value, field) in [
            ("GXD_API__MAX_BODY_BYTES", "0", "api.max_body_bytes"),
            (
                "GXD_API__REQUEST_TIMEOUT_SECONDS",
                "0",
                "api.request_timeout_seconds",
            ),
            ("GXD_API__RATE_LIMIT_BURST", "5", "api.rate_limit_burst"),
            (
                "GXD_API__RATE_LIMIT_PER_SECOND",
                "2000000",
                "api.rate_limit_per_second",
            ),
        ] {
            let e = check(MINIMAL, &[(var, value)]).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = check(MINIMAL, &[]).unwrap();
        assert_eq!(c.api_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.database.host, "db.internal");
        assert_eq!(c.database.port, 5432);
        assert_eq!(c.database.password, None);
        assert_eq!(c.database.pool_max_size, 16);
        assert!(c.migrate_on_startup);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown.http_drain, Duration::from_secs(10));
    }

    #[test]
    fn missing_required_field_is_named() {
        let e = check("[database]\nuser = \"gxd\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "database.dbname");
        assert!(e.to_string().contains("database.dbname"), "{e}");
        let e = check("", &[]).unwrap_err();
        assert_eq!(e.field, "database.user");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = check(&format!("{MINIMAL}port = \"five\"\n"), &[]).unwrap_err();
        assert_eq!(e.field, "database.port", "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = check(&format!("{MINIMAL}pasword = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("pasword"), "{e}");
        let e = check(&format!("{MINIMAL}[nope]\nx = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let e = check(&format!("[api]\nlisten = \"localhost\"\n{MINIMAL}"), &[]).unwrap_err();
        assert_eq!(e.field, "api.listen");
        let e = check(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"), &[]).unwrap_err();
        assert_eq!(e.field, "log.format");
        let e = check(&format!("{MINIMAL}pool_max_size = 0\n"), &[]).unwrap_err();
        assert_eq!(e.field, "database.pool_max_size");
        let e = check(
            &format!("{MINIMAL}[shutdown]\nhttp_drain_timeout_seconds = 0\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "shutdown.http_drain_timeout_seconds");
        let e = check(&format!("{MINIMAL}[log]\nfilter = \"=[\"\n"), &[]).unwrap_err();
        assert_eq!(e.field, "log.filter");
    }

    #[test]
    fn invalid_toml_is_reported() {
        let e = check("[database\n", &[]).unwrap_err();
        assert!(e.message.contains("TOML"), "{e}");
    }

    #[test]
    fn env_overrides_file_with_types() {
        let c = check(
            MINIMAL,
            &[
                ("GXD_DATABASE__HOST", "other.host"),
                ("GXD_DATABASE__PORT", "6543"),
                ("GXD_DATABASE__MIGRATE_ON_STARTUP", "false"),
                ("GXD_DATABASE__PASSWORD", "12345"),
                ("GXD_api__listen", "0.0.0.0:9000"),
                ("GXD_CONFIG", "/ignored/not/an/override"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.host, "other.host");
        assert_eq!(c.database.port, 6543);
        assert!(!c.migrate_on_startup);
        // A numeric-looking password stays a string.
        assert_eq!(c.database.password.as_deref(), Some("12345"));
        assert_eq!(c.api_listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn env_override_errors_name_the_variable() {
        let e = check(MINIMAL, &[("GXD_DATABASE__PORT", "abc")]).unwrap_err();
        assert!(
            e.field.contains("database.port") && e.field.contains("GXD_DATABASE__PORT"),
            "{e}"
        );
        let e = check(MINIMAL, &[("GXD_DATABASE__HOTS", "x")]).unwrap_err();
        assert!(e.to_string().contains("GXD_DATABASE__HOTS"), "{e}");
        let e = check(MINIMAL, &[("GXD_DATABASE__PORT", "70000")]).unwrap_err();
        assert!(e.field.contains("GXD_DATABASE__PORT"), "{e}");
    }

    #[test]
    fn env_alone_can_configure() {
        let c = check(
            "",
            &[("GXD_DATABASE__USER", "u"), ("GXD_DATABASE__DBNAME", "d")],
        )
        .unwrap();
        assert_eq!(c.database.user, "u");
        assert_eq!(c.database.host, "localhost");
    }

    #[test]
    fn url_is_a_convenience_and_fields_win() {
        let c = check(
            "[database]\nurl = \"postgres://a:p%40ss@h1:5555/d1\"\ndbname = \"d2\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.database.host, "h1");
        assert_eq!(c.database.port, 5555);
        assert_eq!(c.database.user, "a");
        assert_eq!(c.database.password.as_deref(), Some("p@ss"));
        assert_eq!(c.database.dbname, "d2");
        let e = check("[database]\nurl = \"postgres://h:notaport/x\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "database.url");
    }

    #[test]
    fn special_character_password_is_kept_verbatim() {
        let pw = "p/a=s@s:w?o#rd%20&'\" \\x";
        let toml_text = format!(
            "{MINIMAL}password = {}\n",
            toml::Value::String(pw.to_owned())
        );
        let c = check(&toml_text, &[]).unwrap();
        assert_eq!(c.database.password.as_deref(), Some(pw));
        let pg = c.database.pg_config();
        assert_eq!(pg.get_password(), Some(pw.as_bytes()));
    }

    #[test]
    fn password_file_is_read_and_permission_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"s3cr=t/@:?\n").unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env_pairs = [("GXD_DATABASE__PASSWORD_FILE", path.to_str().unwrap())];
        let c = check(MINIMAL, &env_pairs).unwrap();
        assert_eq!(c.database.password.as_deref(), Some("s3cr=t/@:?"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check(MINIMAL, &env_pairs).unwrap_err();
        assert_eq!(e.field, "database.password_file");
        assert!(e.message.contains("chmod 600"), "{e}");

        let e = check(
            &format!("{MINIMAL}password = \"x\"\npassword_file = \"/x\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "database.password_file");

        let e = check(
            &format!("{MINIMAL}password_file = \"/nonexistent/pw\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "database.password_file");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = check(&format!("{MINIMAL}password = \"hunter2\"\n"), &[]).unwrap();
        let f = parse(
            &format!("{MINIMAL}password = \"hunter2\"\n"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn example_config_is_valid_and_complete() {
        let example = include_str!("../../packaging/gxd.example.toml");
        let file = parse(example, &BTreeMap::new()).unwrap();
        file.validate().unwrap();
        // Every field of the schema appears in the example (documented there).
        let example_table: toml::Table = toml::from_str(&uncomment(example)).unwrap();
        for (section, fields) in type_sample() {
            let fields = fields.as_table().unwrap();
            for field in fields.keys() {
                assert!(
                    example_table
                        .get(&section)
                        .and_then(|s| s.as_table())
                        .is_some_and(|s| s.contains_key(field)),
                    "{section}.{field} is not documented in packaging/gxd.example.toml"
                );
            }
        }
    }

    /// The example shows optional fields commented out as `# field = value` (and
    /// optional sections as `# [section]`, `# [[section.table]]`): uncomment those
    /// lines to see every field.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|l| {
                let t = l.trim_start();
                let is_header = |h: &str| {
                    h.starts_with('[')
                        && h.ends_with(']')
                        && h.trim_matches(|c| c == '[' || c == ']')
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                };
                if let Some(h) = t.strip_prefix("# ").filter(|h| is_header(h)) {
                    return h.to_owned();
                }
                match t.strip_prefix("# ") {
                    Some(rest)
                        if rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                    {
                        rest.to_owned()
                    }
                    _ => l.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
