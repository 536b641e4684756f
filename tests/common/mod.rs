//! Shared helpers for the end-to-end tests in `tests/*.rs`.
//!
//! Those files are integration tests of the `gxd` package (declared as `[[test]]`
//! in `daemon/Cargo.toml` with `path = "../tests/<name>.rs"`), so
//! `env!("CARGO_BIN_EXE_gxd")` is the freshly built binary. Use from a test file:
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! let db = TestDb::new().await.unwrap();               // a fresh database
//! let dir = tempfile::tempdir().unwrap();
//! let port = free_port();
//! let config = write_config(dir.path(), &Settings::new(&db, port));
//! let mut gxd = Gxd::spawn(&["run", "--config", config.to_str().unwrap()], &[]);
//! gxd.wait_ready(Duration::from_secs(60)).unwrap();    // polls /readyz
//! gxd.sigterm();
//! let status = gxd.wait_exit(Duration::from_secs(30)).expect("exited");
//! assert!(status.success(), "{}", gxd.logs());
//! assert!(gxd.error_lines().is_empty());
//! ```
//!
//! Everything here is synchronous (std::process, std::net), usable from plain or
//! `#[tokio::test]` tests. Every wait polls with a deadline; nothing sleeps and
//! hopes. A [`Gxd`] still running when dropped is killed (SIGKILL) and reaped.
//! Not every test binary uses every helper.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use gxd_storage::pg::testing::TestDb;

pub mod verdict;

/// The `gxd` binary under test.
pub fn gxd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gxd"))
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory that the `postgres` user can traverse (mode 0711), for
/// tests that start a `LocalCluster` under it while running as root.
pub fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Writes `contents` to `path` with mode 0600 (a secret file).
pub fn write_secret(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Settings for a test configuration file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_port: u16,
    pub db_host: String,
    pub db_port: u16,
    pub db_user: String,
    pub db_password: Option<String>,
    pub dbname: String,
    pub migrate_on_startup: bool,
    pub http_drain_timeout_seconds: u64,
    pub storage_close_timeout_seconds: u64,
    /// Extra TOML appended verbatim (e.g. more sections from later issues).
    pub extra_toml: String,
}

impl Settings {
    /// Settings for database `db`, API on `api_port`, short shutdown bounds.
    pub fn new(db: &TestDb, api_port: u16) -> Self {
        Self {
            api_port,
            db_host: db.host().to_owned(),
            db_port: db.port(),
            db_user: db.user().to_owned(),
            db_password: db.password().map(str::to_owned),
            dbname: db.dbname().to_owned(),
            migrate_on_startup: true,
            http_drain_timeout_seconds: 5,
            storage_close_timeout_seconds: 5,
            extra_toml: String::new(),
        }
    }

    /// The longest an orderly shutdown may take under these settings.
    pub fn shutdown_bound(&self) -> Duration {
        Duration::from_secs(self.http_drain_timeout_seconds + self.storage_close_timeout_seconds)
    }
}

/// Writes `dir/gxd.toml` (and, when there is a password, `dir/db-password`, mode
/// 0600, referenced as `database.password_file`). Logs are JSON at info; the
/// storage data dir is `dir/data`. Returns the config file's path.
pub fn write_config(dir: &Path, s: &Settings) -> PathBuf {
    let q = |v: &str| toml_string(v);
    let mut text = String::new();
    writeln!(
        text,
        "[api]\nlisten = {}\n",
        q(&format!("127.0.0.1:{}", s.api_port))
    )
    .unwrap();
    writeln!(text, "[database]").unwrap();
    writeln!(text, "host = {}", q(&s.db_host)).unwrap();
    writeln!(text, "port = {}", s.db_port).unwrap();
    writeln!(text, "user = {}", q(&s.db_user)).unwrap();
    writeln!(text, "dbname = {}", q(&s.dbname)).unwrap();
    writeln!(text, "migrate_on_startup = {}", s.migrate_on_startup).unwrap();
    writeln!(text, "connect_timeout_seconds = 10").unwrap();
    if let Some(pw) = &s.db_password {
        let pw_path = dir.join("db-password");
        write_secret(&pw_path, pw);
        writeln!(text, "password_file = {}", q(pw_path.to_str().unwrap())).unwrap();
    }
    writeln!(
        text,
        "\n[storage]\ndata_dir = {}\n",
        q(dir.join("data").to_str().unwrap())
    )
    .unwrap();
    writeln!(text, "[log]\nformat = \"json\"\nfilter = \"info\"\n").unwrap();
    writeln!(
        text,
        "[shutdown]\nhttp_drain_timeout_seconds = {}\nstorage_close_timeout_seconds = {}\n",
        s.http_drain_timeout_seconds, s.storage_close_timeout_seconds
    )
    .unwrap();
    text.push_str(&s.extra_toml);
    let path = dir.join("gxd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A TOML basic string literal for any text.
pub fn toml_string(v: &str) -> String {
    toml::Value::String(v.to_owned()).to_string()
}

/// Environment variables the child must not inherit from the test runner
/// (they would change its configuration).
fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("GXD_") && k != "GXD_PG_BINDIR")
            || k == "NOTIFY_SOCKET"
            || k.starts_with("PG")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_BACKTRACE");
}

/// Runs `gxd args...` to completion (bounded by `deadline`; killed past it).
pub fn run_gxd(args: &[&str], env: &[(&str, &str)], deadline: Duration) -> Output {
    let mut gxd = Gxd::spawn(args, env);
    let status = gxd.wait_exit(deadline).unwrap_or_else(|| {
        panic!(
            "gxd {args:?} did not exit within {deadline:?}:\n{}",
            gxd.logs()
        )
    });
    Output {
        status,
        stdout: gxd.stdout().into_bytes(),
        stderr: gxd.stderr().into_bytes(),
    }
}

/// A running `gxd` process with its output captured line by line (and echoed to
/// the test's stderr, prefixed, so failures show it).
pub struct Gxd {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// The API address, if known (parsed from the config by the caller or set).
    pub api: Option<SocketAddr>,
}

impl Gxd {
    /// Starts `gxd args...` with a scrubbed environment plus `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Gxd {
        let mut cmd = Command::new(gxd_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        scrub(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gxd");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            capture(child.stdout.take().unwrap(), stdout.clone(), "gxd stdout"),
            capture(child.stderr.take().unwrap(), stderr.clone(), "gxd stderr"),
        ];
        Gxd {
            child: Some(child),
            stdout,
            stderr,
            readers,
            status: None,
            api: None,
        }
    }

    /// Like [`Gxd::spawn`], remembering the API address for [`Gxd::wait_ready`].
    pub fn spawn_with_api(args: &[&str], env: &[(&str, &str)], api_port: u16) -> Gxd {
        let mut gxd = Gxd::spawn(args, env);
        gxd.api = Some(SocketAddr::from(([127, 0, 0, 1], api_port)));
        gxd
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `GET /readyz` until it answers 200; fails when the deadline passes or
    /// the process exits first.
    pub fn wait_ready(&mut self, deadline: Duration) -> Result<String, String> {
        let api = self.api.ok_or("no API address set")?;
        let end = Instant::now() + deadline;
        let mut last = String::from("no answer yet");
        while Instant::now() < end {
            if let Some(status) = self.try_wait() {
                return Err(format!(
                    "gxd exited ({status}) before ready:\n{}",
                    self.logs()
                ));
            }
            match http_get(api, "/readyz") {
                Ok((200, body)) => return Ok(body),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "not ready within {deadline:?} (last: {last}):\n{}",
            self.logs()
        ))
    }

    /// Sends a signal (e.g. `nix::sys::signal::Signal::SIGTERM`).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(nix::sys::signal::Signal::SIGINT);
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
            self.child = None;
            self.join_readers();
        }
        self.status
    }

    /// Waits for the process to exit, up to `deadline`; `None` if still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then asserts a clean exit (code 0) within 30 s, with the logs if not.
    pub fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "gxd did not exit cleanly within 30 s of SIGTERM ({status:?}):\n{}",
            self.logs()
        );
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// stdout and stderr so far.
    pub fn logs(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Log lines at ERROR level (JSON `"level":"ERROR"` or pretty ` ERROR `).
    pub fn error_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .chain(self.stdout.lock().unwrap().iter())
            .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
            .cloned()
            .collect()
    }

    /// Parsed JSON log lines (lines that are not JSON are skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Gxd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }
}

fn capture(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    label: &'static str,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label}] {line}");
            sink.lock().unwrap().push(line);
        }
    })
}

/// Minimal HTTP/1.1 GET (no TLS, `Connection: close`): returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, BTreeMap::new(), "").map(|(s, _, b)| (s, b))
}

/// Minimal HTTP/1.1 request: returns status, lower-cased headers and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: BTreeMap<&str, &str>,
    body: &str,
) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed status line: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<BTreeMap<_, _>>();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, headers, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `gxd token issue --config CONFIG --sub SUB --role ROLE`, which must succeed: the token.
pub fn issue_token(config: &Path, sub: &str, role: &str) -> String {
    let out = run_gxd(
        &[
            "token",
            "issue",
            "--config",
            config.to_str().unwrap(),
            "--sub",
            sub,
            "--role",
            role,
        ],
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "gxd token issue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A devnet config in `dir/devnet`, listening on a free loopback port.
pub fn local_devnet(dir: &Path) -> gxd_devnet::DevnetConfig {
    gxd_devnet::DevnetConfig::new(dir.join("devnet")).with_listen(([127, 0, 0, 1], 0).into())
}

/// The `[fabric]` section pointing `gxd run` at an in-process devnet, signing as
/// `User1@org1.example.com` (more `[fabric]` fields may follow it).
pub fn devnet_fabric_toml(devnet: &gxd_devnet::DevnetHandle) -> String {
    let paths = devnet.paths();
    let org1 = "org1.example.com";
    format!(
        "[fabric]\npeer_endpoints = [{}]\npeer_tls_server_name = {}\ntls_ca_file = {}\nmsp_id = \"Org1MSP\"\nmsp_dir = {}\n",
        toml_string(&devnet.local_addr().to_string()),
        toml_string(gxd_devnet::PEER_HOST),
        toml_string(paths.peer_tls_ca(org1).to_str().unwrap()),
        toml_string(paths.user_msp(org1, "User1").to_str().unwrap()),
    )
}
