//! A private PostgreSQL cluster run from the installed server binaries.
//!
//! Used by `gxd dev`, by the test harness ([`super::testing`]) and by benchmarks.
//! [`LocalCluster::start`] runs `initdb` when the directory is empty, then starts
//! `postgres` as a child process listening on `127.0.0.1` only (no unix socket), and
//! waits until it accepts connections. [`LocalCluster::stop`] (and `Drop`) shut it
//! down: a fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL.
//!
//! Authentication is `scram-sha-256` for every role; the superuser `postgres` gets a
//! generated password, kept in `<dir>/gxd_superuser_password` (mode 0600) so a
//! restarted cluster can be reached again.
//!
//! When the current process runs as root (initdb and postgres refuse to), the
//! binaries run as the `postgres` system user: the data directory is chowned to it,
//! and every ancestor of the directory must be searchable by it (`chmod o+x`).
//! [`LocalCluster::start_temp`] takes care of that for a throwaway cluster.
//!
//! The binaries are found through, in order: the `GXD_PG_BINDIR` environment variable,
//! `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, then `PATH`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User, chown};

/// Environment variable that names the directory holding `initdb`, `postgres` and
/// `pg_isready`, overriding the search.
pub const PG_BINDIR_ENV: &str = "GXD_PG_BINDIR";

/// Name of the superuser role created by `initdb`.
pub const SUPERUSER: &str = "postgres";

/// File inside the data directory holding the superuser's generated password.
pub const SUPERUSER_PASSWORD_FILE: &str = "gxd_superuser_password";

/// File inside the data directory receiving the server's log (stderr).
pub const LOG_FILE: &str = "postgres.log";

const HOST: &str = "127.0.0.1";
const PORT_ATTEMPTS: usize = 5;

/// Errors from starting, using or stopping a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_isready) not found; searched: {searched}. \
         Install the PostgreSQL server package (Debian/Ubuntu: apt-get install postgresql) \
         or set {PG_BINDIR_ENV} to the directory holding them"
    )]
    BinariesNotFound { searched: String },
    #[error(
        "running as root, but there is no `postgres` system user to run the PostgreSQL server as \
         (initdb and postgres refuse to run as root); install the postgresql package or create the user"
    )]
    NoPostgresUser,
    #[error(
        "{path} is not accessible to the `postgres` user (mode {mode:o}); make it searchable, e.g. `chmod o+x {path}`"
    )]
    InaccessibleDir { path: PathBuf, mode: u32 },
    #[error("{path} is neither empty nor a PostgreSQL data directory (no PG_VERSION file)")]
    NotADataDir { path: PathBuf },
    #[error(
        "{path} holds a PostgreSQL cluster that was not created by gxd (no {SUPERUSER_PASSWORD_FILE} file)"
    )]
    ForeignCluster { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("initdb failed ({status}):\n{output}")]
    Initdb { status: String, output: String },
    #[error("postgres exited during startup ({status}); last log lines from {log}:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "postgres did not accept connections within {timeout:?}; last log lines from {log}:\n{tail}"
    )]
    NotReady {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("PostgreSQL error on the local cluster: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("invalid database name {0:?}: use letters, digits and underscores")]
    InvalidName(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// How a [`LocalCluster`] is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Keep PostgreSQL's durability settings. `false` sets `fsync=off`,
    /// `synchronous_commit=off` and `full_page_writes=off` and skips initdb's sync:
    /// fast, for throwaway clusters only.
    pub durable: bool,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// How long to wait for the server to accept connections.
    pub start_timeout: Duration,
    /// Extra server settings, passed as `-c name=value`.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            durable: true,
            port: None,
            start_timeout: Duration::from_secs(60),
            settings: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// Options for a throwaway test cluster: not durable, free port.
    pub fn throwaway() -> Self {
        Self {
            durable: false,
            ..Self::default()
        }
    }
}

/// A running private PostgreSQL server. Stopped by [`LocalCluster::stop`] or on drop.
#[derive(Debug)]
pub struct LocalCluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    superuser_password: String,
    child: Option<Child>,
    // Dropped after the server has stopped (fields drop after `Drop::drop`).
    _temp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts a durable cluster in `dir` (its data directory), running `initdb` first
    /// when `dir` is missing or empty. Blocking: from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn start(dir: &Path) -> Result<Self, ClusterError> {
        Self::start_with(dir, ClusterOptions::default())
    }

    /// Starts a throwaway, non-durable cluster in a new temporary directory, removed
    /// when the cluster is dropped. Blocking.
    pub fn start_temp() -> Result<Self, ClusterError> {
        let temp = tempfile::Builder::new()
            .prefix("gxd-pg-")
            .tempdir()
            .map_err(io("create a temporary directory for PostgreSQL"))?;
        // The server may run as another user (`postgres`): let it traverse the dir.
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o711))
            .map_err(io(format!("chmod {}", temp.path().display())))?;
        let mut cluster = Self::start_with(&temp.path().join("data"), ClusterOptions::throwaway())?;
        cluster._temp = Some(temp);
        Ok(cluster)
    }

    /// Starts a cluster in `dir` with the given options. Blocking.
    pub fn start_with(dir: &Path, opts: ClusterOptions) -> Result<Self, ClusterError> {
        let bin_dir = find_bindir()?;
        let run_as = run_as_user()?;
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let data_dir = dir
            .canonicalize()
            .map_err(io(format!("resolve {}", dir.display())))?;
        if let Some(user) = &run_as {
            check_ancestors_accessible(&data_dir, user)?;
        }

        let password_path = data_dir.join(SUPERUSER_PASSWORD_FILE);
        let superuser_password = if data_dir.join("PG_VERSION").exists() {
            match fs::read_to_string(&password_path) {
                Ok(p) => p.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ClusterError::ForeignCluster { path: data_dir });
                }
                Err(e) => return Err(io(format!("read {}", password_path.display()))(e)),
            }
        } else {
            let empty = fs::read_dir(&data_dir)
                .map_err(io(format!("list {}", data_dir.display())))?
                .next()
                .is_none();
            if !empty {
                return Err(ClusterError::NotADataDir { path: data_dir });
            }
            initdb(&bin_dir, &data_dir, run_as.as_ref(), opts.durable)?
        };

        let mut cluster = LocalCluster {
            data_dir,
            bin_dir,
            port: 0,
            superuser_password,
            child: None,
            _temp: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            match cluster.spawn_and_wait(port, &opts, run_as.as_ref()) {
                Ok(()) => {
                    tracing::info!(
                        data_dir = %cluster.data_dir.display(),
                        port,
                        "local PostgreSQL cluster started"
                    );
                    return Ok(cluster);
                }
                // Another process took the free port between our probe and bind: retry.
                Err(ClusterError::Exited { tail, .. })
                    if opts.port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && tail.contains("could not bind") =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_and_wait(
        &mut self,
        port: u16,
        opts: &ClusterOptions,
        run_as: Option<&User>,
    ) -> Result<(), ClusterError> {
        let log_path = self.log_file();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io(format!("open {}", log_path.display())))?;
        let log_start = log
            .seek(SeekFrom::End(0))
            .map_err(io(format!("seek {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io(format!("dup {}", log_path.display())))?;

        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", &format!("listen_addresses={HOST}")])
            .args(["-c", "unix_socket_directories="]);
        if !opts.durable {
            cmd.args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        for (name, value) in &opts.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a terminal's Ctrl-C reaches us, and we stop the
            // server in order, instead of it stopping under the daemon.
            .process_group(0);
        clear_pg_env(&mut cmd);
        if let Some(user) = run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd.spawn().map_err(io(format!(
            "start {}",
            self.bin_dir.join("postgres").display()
        )))?;
        self.child = Some(child);
        self.port = port;

        let deadline = Instant::now() + opts.start_timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child
                    .try_wait()
                    .map_err(io("wait for postgres".to_owned()))?
            {
                self.child = None;
                return Err(ClusterError::Exited {
                    status: status.to_string(),
                    tail: log_tail(&log_path, log_start),
                    log: log_path,
                });
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = log_tail(&log_path, log_start);
                self.stop_child();
                return Err(ClusterError::NotReady {
                    timeout: opts.start_timeout,
                    log: log_path,
                    tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_ready(&self) -> bool {
        let mut cmd = Command::new(self.bin_dir.join("pg_isready"));
        cmd.args(["-q", "-t", "2", "-h", HOST, "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        clear_pg_env(&mut cmd);
        matches!(cmd.status(), Ok(s) if s.success())
    }

    /// Host the server listens on (always `127.0.0.1`).
    pub fn host(&self) -> &str {
        HOST
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Superuser role name.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (generated at initdb).
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Connection settings for `dbname` as the superuser.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(self.superuser_password.as_bytes())
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Connects to `dbname` as the superuser; the connection is driven by a spawned
    /// tokio task.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client, ClusterError> {
        connect(&self.pg_config(dbname)).await
    }

    /// Creates database `name` (letters, digits, underscores).
    pub async fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        check_identifier(name)?;
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(())
    }

    /// Creates database `name` unless it exists; returns whether it was created.
    pub async fn ensure_database(&self, name: &str) -> Result<bool, ClusterError> {
        check_identifier(name)?;
        let client = self.connect("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if exists {
            return Ok(false);
        }
        self.create_database(name).await?;
        Ok(true)
    }

    /// Drops database `name` if it exists, terminating its connections.
    pub async fn drop_database(&self, name: &str) -> Result<(), ClusterError> {
        check_identifier(name)?;
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// Stops the server: fast shutdown, then immediate, then SIGKILL. Blocking.
    /// Idempotent; also done on drop.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.stop_child();
            tracing::info!(data_dir = %self.data_dir.display(), "local PostgreSQL cluster stopped");
        }
    }

    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(raw_pid) = i32::try_from(child.id()) else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        let pid = Pid::from_raw(raw_pid);
        // SIGINT = fast shutdown, SIGQUIT = immediate shutdown (what `pg_ctl stop -m` sends).
        for (signal, grace) in [
            (Signal::SIGINT, Duration::from_secs(30)),
            (Signal::SIGQUIT, Duration::from_secs(10)),
        ] {
            if kill(pid, signal).is_err() {
                break;
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
            tracing::warn!(?signal, "local PostgreSQL did not stop in time; escalating");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects with `config` (no TLS) and spawns the connection task on the current
/// tokio runtime.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, ClusterError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "local cluster connection closed");
        }
    });
    Ok(client)
}

fn check_identifier(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidName(name.to_owned()))
    }
}

/// Removes libpq environment variables that would redirect the binaries elsewhere.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "postgres", "pg_isready"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// Finds the directory holding the PostgreSQL server binaries.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::var_os(PG_BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("{PG_BINDIR_ENV}={}", dir.display()));
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir ({})", dir.display()));
    } else {
        searched.push("pg_config (not found)".to_owned());
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions
        .into_iter()
        .rev()
        .find(|(_, d)| has_server_binaries(d))
    {
        return Ok(dir);
    }
    searched.push("/usr/lib/postgresql/*/bin".to_owned());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    searched.push("PATH".to_owned());
    Err(ClusterError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

fn run_as_user() -> Result<Option<User>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some(user)),
        Ok(None) => Err(ClusterError::NoPostgresUser),
        Err(source) => Err(ClusterError::Sys {
            context: "look up the postgres user".to_owned(),
            source,
        }),
    }
}

fn check_ancestors_accessible(dir: &Path, user: &User) -> Result<(), ClusterError> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io(format!("stat {}", ancestor.display())))?;
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(ClusterError::InaccessibleDir {
                path: ancestor.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

fn chown_to(path: &Path, user: Option<&User>) -> Result<(), ClusterError> {
    if let Some(user) = user {
        chown(path, Some(user.uid), Some(user.gid)).map_err(|source| ClusterError::Sys {
            context: format!("chown {} to postgres", path.display()),
            source,
        })?;
    }
    Ok(())
}

fn generate_password() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read /dev/urandom"))?;
    Ok(hex::encode(bytes))
}

/// Runs initdb in the empty `data_dir`; returns the generated superuser password.
fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<&User>,
    durable: bool,
) -> Result<String, ClusterError> {
    let password = generate_password()?;
    // initdb reads the password from a file, as the server user: a private temp dir.
    let pw_dir = tempfile::Builder::new()
        .prefix("gxd-initdb-")
        .tempdir()
        .map_err(io("create a temporary directory for initdb"))?;
    let pw_file = pw_dir.path().join("pw");
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&pw_file)
        .and_then(|mut f| f.write_all(password.as_bytes()))
        .map_err(io(format!("write {}", pw_file.display())))?;
    chown_to(pw_dir.path(), run_as)?;
    chown_to(&pw_file, run_as)?;
    chown_to(data_dir, run_as)?;

    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "-A", "scram-sha-256", "--encoding=UTF8"])
        .args(["--locale=C"])
        .arg(format!("--pwfile={}", pw_file.display()));
    if !durable {
        cmd.arg("--no-sync");
    }
    cmd.current_dir(data_dir).stdin(Stdio::null());
    clear_pg_env(&mut cmd);
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let out = cmd
        .output()
        .map_err(io(format!("run {}", bin_dir.join("initdb").display())))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(ClusterError::Initdb {
            status: out.status.to_string(),
            output,
        });
    }
    let password_path = data_dir.join(SUPERUSER_PASSWORD_FILE);
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&password_path)
        .and_then(|mut f| f.write_all(password.as_bytes()))
        .map_err(io(format!("write {}", password_path.display())))?;
    chown_to(&password_path, run_as)?;
    Ok(password)
}

/// Picks a TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(io("bind 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io("read the bound address"))?
        .port();
    Ok(port)
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("gxd_test_1").is_ok());
        assert!(check_identifier("1abc").is_err());
        assert!(check_identifier("a\"; DROP").is_err());
        assert!(check_identifier("").is_err());
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
