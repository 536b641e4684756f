#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Daemon lifecycle: readiness, metrics, systemd notification, and a graceful,
//! time-bounded shutdown on SIGTERM — through the real binary; plus the daemon
//! run in-process, and `gxd dev`.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

/// Slack on top of the configured shutdown bound for process exit and scheduling.
const MARGIN: Duration = Duration::from_secs(10);

fn recv_notify(sock: &UnixDatagram, want: &str, deadline: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = std::time::Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[tokio::test]
async fn run_becomes_ready_and_stops_on_sigterm_within_its_bound() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::new(&db, free_port());
    let config = write_config(dir.path(), &settings);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        settings.api_port,
    );
    let body = gxd.wait_ready(Duration::from_secs(60)).unwrap();
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["status"], "ready");
    let names: Vec<&str> = readiness["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "migrations", "outbox"]);
    let got = recv_notify(&notify, "READY=1", Duration::from_secs(10));
    assert!(
        got.iter().any(|m| m == "READY=1"),
        "systemd notified: {got:?}"
    );

    let api = gxd.api.unwrap();
    let (status, body) = http_get(api, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = http_get(api, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("gxd_build_info{version="), "{metrics}");
    assert!(
        metrics.contains(r#"gxd_api_requests_total{route="/readyz",status="200"}"#),
        "{metrics}"
    );
    let (status, body) = http_get(api, "/nope").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("urn:gxd:problem:not-found"), "{body}");

    gxd.sigterm();
    let bound = settings.shutdown_bound() + MARGIN;
    let status = gxd.wait_exit(bound).unwrap_or_else(|| {
        panic!(
            "gxd did not exit within {bound:?} of SIGTERM:\n{}",
            gxd.logs()
        )
    });
    assert_eq!(status.code(), Some(0), "{}", gxd.logs());
    let got = recv_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");

    let logs = gxd.json_logs();
    let messages: Vec<&str> = logs.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in [
        "gxd ready",
        "signal received",
        "storage closed",
        "gxd stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "log has {expected:?}: {messages:?}"
        );
    }
    assert!(
        gxd.error_lines().is_empty(),
        "unexpected errors: {:?}",
        gxd.error_lines()
    );
    // Secrets never reach the logs.
    let password = db.password().unwrap_or("no-password-set");
    assert!(!gxd.logs().contains(password));
}

/// With a peer configured, `READY=1` waits until the peer accepts a connection (the API
/// serves meanwhile: `/livez` 200); then, under `WATCHDOG_USEC`, the
/// supervision loop pings `WATCHDOG=1` at half that interval, and stops with the daemon.
// Multi-threaded: the in-process devnet must serve while this thread blocks on the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_peer_then_the_watchdog_pings() {
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet_dir = dir.path().join("devnet");
    // A devnet started once for its crypto material and its port, then stopped: the peer
    // is down when gxd starts.
    let devnet = gxd_devnet::start(
        gxd_devnet::DevnetConfig::new(&devnet_dir).with_listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let peer_addr = devnet.local_addr();
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    devnet.shutdown().await.unwrap();
    let config = write_config(dir.path(), &settings);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
        settings.api_port,
    );
    let api = gxd.api.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(api, "/livez"), Ok((200, _))) {
        assert!(std::time::Instant::now() < end, "no /livez: {}", gxd.logs());
        assert!(gxd.try_wait().is_none(), "gxd exited: {}", gxd.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Peer down: alive, and systemd is told nothing (no READY, no WATCHDOG).
    let early = recv_notify(&notify, "READY=1", Duration::from_secs(3));
    assert!(
        early.is_empty(),
        "notified before the peer was up: {early:?}"
    );
    assert_eq!(http_get(api, "/livez").unwrap().0, 200);

    // The peer comes up on its port: READY follows, then the watchdog pings.
    let devnet =
        gxd_devnet::start(gxd_devnet::DevnetConfig::new(&devnet_dir).with_listen(peer_addr))
            .await
            .unwrap();
    let got = recv_notify(&notify, "READY=1", Duration::from_secs(30));
    assert!(
        got.iter().any(|m| m == "READY=1"),
        "no READY=1 after the peer came up: {got:?}\n{}",
        gxd.logs()
    );
    let started = std::time::Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let got = recv_notify(&notify, "WATCHDOG=1", Duration::from_secs(5));
        assert!(
            got.iter().any(|m| m == "WATCHDOG=1"),
            "watchdog pings stopped after {pings}: {got:?}"
        );
        pings += 1;
    }
    // Five pings at 200 ms: about a second (printed, not asserted: the machine is shared).
    println!("5 watchdog pings in {:?}", started.elapsed());

    gxd.sigterm();
    let status = gxd
        .wait_exit(settings.shutdown_bound() + MARGIN)
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", gxd.logs());
    // After the daemon is gone, no more pings (drain what was sent before it stopped).
    let _ = recv_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    let after = recv_notify(&notify, "WATCHDOG=1", Duration::from_secs(1));
    assert!(after.is_empty(), "pings after exit: {after:?}");
    devnet.shutdown().await.unwrap();
}

#[tokio::test]
async fn sigint_stops_it_too() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::new(&db, free_port());
    let config = write_config(dir.path(), &settings);
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(60)).unwrap();
    gxd.sigint();
    let status = gxd
        .wait_exit(settings.shutdown_bound() + MARGIN)
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", gxd.logs());
}

#[tokio::test]
async fn unreachable_database_fails_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let config = dir.path().join("gxd.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{}\"\n[database]\nhost = \"127.0.0.1\"\nport = {port}\n\
             user = \"gxd\"\ndbname = \"gxd\"\nconnect_timeout_seconds = 2\n[storage]\ndata_dir = {}\n",
            free_port(),
            toml_string(dir.path().join("data").to_str().unwrap())
        ),
    )
    .unwrap();
    let out = run_gxd(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connect to PostgreSQL"), "{stderr}");
    assert!(
        stderr.contains(&format!("gxd@127.0.0.1:{port}/gxd")),
        "{stderr}"
    );
}

/// The whole daemon in-process: `Daemon::start` + `run_until` with a oneshot as the
/// shutdown signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(&db, 0);
    settings.http_drain_timeout_seconds = 3;
    let path = write_config(dir.path(), &settings);
    let config = gxd::config::load(Some(&path), &Default::default()).unwrap();

    let daemon = gxd::Daemon::start(config, prometheus::Registry::new())
        .await
        .unwrap();
    let api = daemon.api_addr();
    assert_ne!(api.port(), 0);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(daemon.run_until(async {
        let _ = stop_rx.await;
    }));

    let (status, body) = tokio::task::spawn_blocking(move || http_get(api, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(settings.shutdown_bound() + MARGIN, running)
        .await
        .expect("stopped within its bound")
        .unwrap();
    result.unwrap();
    let refused = tokio::task::spawn_blocking(move || http_get(api, "/healthz"))
        .await
        .unwrap();
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

/// The value of metric line `name` (exact series text, e.g. `m{status="committed"}`).
fn metric(api: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (code, body) = http_get(api, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `f` until it is `Some`, up to `deadline`.
fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text after `prefix` on the first stdout line holding it.
fn printed(gxd: &Gxd, prefix: &str) -> Option<String> {
    gxd.stdout().lines().find_map(|l| {
        l.trim_start()
            .strip_prefix(prefix)
            .map(|r| r.trim().to_owned())
    })
}

fn outbox(api: std::net::SocketAddr, status: &str) -> Option<f64> {
    metric(api, &format!("gxd_outbox_commands{{status=\"{status}\"}}"))
}

/// `gxd dev`: a private PostgreSQL, the devnet and the daemon; busy default ports fall
/// back to free ones; it writes DIR/gxd.toml with an [auth] section; the printed tokens
/// verify with it; the GX bootstrap is enqueued once and committed; SIGINT stops all of
/// it, PostgreSQL included; a second start reuses the data and does not bootstrap again.
#[test]
fn dev_runs_everything_bootstraps_once_and_stops_cleanly() {
    let dir = traversable_tempdir();
    let state = dir.path().join("dev");
    // The default ports busy (held here, or by someone else already): gxd dev falls back.
    let _hold_api = std::net::TcpListener::bind("127.0.0.1:8080");
    let _hold_devnet = std::net::TcpListener::bind("127.0.0.1:7051");
    let mut gxd = Gxd::spawn(
        &[
            "dev",
            "--dir",
            state.to_str().unwrap(),
            "--treasury-wallet",
            "vault",
            "--initial-supply",
            "5000",
        ],
        &[],
    );
    let api = wait_for(Duration::from_secs(120), || {
        printed(&gxd, "API         http://")
    })
    .unwrap_or_else(|| panic!("no API line:\n{}", gxd.logs()));
    let api: std::net::SocketAddr = api.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(api.port(), 8080, "{}", gxd.logs());
    let devnet = printed(&gxd, "devnet      ").unwrap();
    assert!(!devnet.starts_with("127.0.0.1:7051 "), "{devnet}");
    assert!(
        gxd.stdout().contains("is busy; the API uses"),
        "{}",
        gxd.logs()
    );
    gxd.api = Some(api);
    gxd.wait_ready(Duration::from_secs(120)).unwrap();

    // DIR/gxd.toml: the configuration it runs with, [auth] included; the printed tokens
    // verify with the keys it names.
    let config_path = state.join("gxd.toml");
    let config = gxd::config::load(Some(&config_path), &Default::default()).unwrap();
    assert_eq!(config.api_listen, api);
    let auth = config.auth.as_ref().expect("an [auth] section");
    let secret = state.join("auth/hs256.secret");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    use gxd_api::Authenticator as _;
    let admin = printed(&gxd, "admin (admin):").unwrap();
    let user = printed(&gxd, "user  (alice):").unwrap();
    let p = auth.authenticator.authenticate(&admin).unwrap();
    assert_eq!(
        (p.subject.as_str(), p.role),
        ("admin", gxd_api::Role::Admin)
    );
    let p = auth.authenticator.authenticate(&user).unwrap();
    assert_eq!((p.subject.as_str(), p.role), ("alice", gxd_api::Role::User));
    let curl = printed(&gxd, "curl ").unwrap();
    assert!(
        curl.contains(&format!("Bearer {admin}"))
            && curl.contains(&format!("http://{api}/api/v1/wallets/vault")),
        "{curl}"
    );
    // `gxd token issue --config DIR/gxd.toml` works with it.
    let issued = issue_token(&config_path, "bob", "user");
    assert_eq!(
        auth.authenticator
            .authenticate(issued.trim())
            .unwrap()
            .subject,
        "bob"
    );

    // The bootstrap: enqueued now, then committed on the devnet.
    let bootstrap = printed(&gxd, "bootstrap   ").unwrap();
    assert!(
        bootstrap.contains("treasury wallet vault with initial supply 5000")
            && bootstrap.contains("enqueued now"),
        "{bootstrap}"
    );
    wait_for(Duration::from_secs(60), || {
        (outbox(api, "committed")? + outbox(api, "projected")? == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("the bootstrap did not commit:\n{}", gxd.logs()));
    let record = std::fs::read_to_string(state.join("bootstrap.json")).unwrap();

    // The printed curl example's request, through the real binary and the real JWT
    // verifier: the treasury, once projected, with the admin token; alice's token does not
    // see it; no token is a 401 problem.
    let get = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = std::collections::BTreeMap::new();
        if let Some(a) = auth.as_deref() {
            headers.insert("authorization", a);
        }
        common::http_request(api, "GET", "/api/v1/wallets/vault", headers, "").unwrap()
    };
    let wallet = wait_for(Duration::from_secs(60), || {
        let (code, _, body) = get(Some(&admin));
        (code == 200).then_some(body)
    })
    .unwrap_or_else(|| panic!("the treasury was not served:\n{}", gxd.logs()));
    let wallet: serde_json::Value = serde_json::from_str(&wallet).unwrap();
    assert_eq!(
        (wallet["walletId"].as_str(), wallet["balance"].as_str()),
        (Some("vault"), Some("5000")),
        "{wallet}"
    );
    let (code, headers, _) = get(Some(&user));
    assert!(matches!(code, 403 | 404), "alice and the treasury: {code}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );
    let (code, headers, _) = get(None);
    assert_eq!(code, 401);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );

    let pid_file = state.join("postgres/postmaster.pid");
    assert!(
        pid_file.exists(),
        "PostgreSQL runs from {}",
        state.display()
    );
    gxd.sigint();
    let status = gxd
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("gxd dev did not stop:\n{}", gxd.logs()));
    assert_eq!(status.code(), Some(0), "{}", gxd.logs());
    assert!(
        !pid_file.exists(),
        "PostgreSQL was stopped:\n{}",
        gxd.logs()
    );
    // No ERROR lines (the 503s of /readyz while the daemon starts are logged at WARN).
    let errors = gxd.error_lines();
    assert!(errors.is_empty(), "{errors:?}");

    // Second start, explicit free ports: the same data, no second bootstrap.
    let api_port = free_port();
    let devnet_port = free_port();
    let mut again = Gxd::spawn_with_api(
        &[
            "dev",
            "--dir",
            state.to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{api_port}"),
            "--devnet-listen",
            &format!("127.0.0.1:{devnet_port}"),
        ],
        &[],
        api_port,
    );
    again.wait_ready(Duration::from_secs(120)).unwrap();
    let api = again.api.unwrap();
    let bootstrap2 = printed(&again, "bootstrap   ").unwrap();
    assert!(
        bootstrap2.contains("done on an earlier start"),
        "{bootstrap2}"
    );
    assert!(
        again
            .stdout()
            .contains("--treasury-wallet and --initial-supply apply to a new DIR only"),
        "the default flags differ from the recorded bootstrap:\n{}",
        again.logs()
    );
    assert_eq!(
        std::fs::read_to_string(state.join("bootstrap.json")).unwrap(),
        record
    );
    // Still exactly one command in the outbox, on the ledger and in the read models.
    let counts = wait_for(Duration::from_secs(30), || {
        let c = [
            "pending",
            "prepared",
            "submitted",
            "committed",
            "projected",
            "failed",
        ]
        .map(|s| outbox(api, s));
        // (Its block may be projected only now, if the first start stopped before.)
        let c = c
            .iter()
            .all(Option::is_some)
            .then(|| c.map(Option::unwrap))?;
        (c[4] == 1.0).then_some(c)
    })
    .unwrap_or_else(|| panic!("the bootstrap is not projected:\n{}", again.logs()));
    assert_eq!(counts, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0], "{}", again.logs());
    let reloaded = gxd::config::load(Some(&config_path), &Default::default()).unwrap();
    assert_eq!(
        reloaded.api_listen.port(),
        api_port,
        "DIR/gxd.toml is rewritten"
    );
    // The first start's tokens still verify (the secret is kept).
    reloaded
        .auth
        .unwrap()
        .authenticator
        .authenticate(&admin)
        .unwrap();

    again.sigint();
    let status = again
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("gxd dev did not stop:\n{}", again.logs()));
    assert_eq!(status.code(), Some(0), "{}", again.logs());
}

/// An address given explicitly and busy: a clear error, non-zero exit, nothing started.
#[test]
fn dev_refuses_a_busy_explicit_port() {
    let dir = traversable_tempdir();
    let state = dir.path().join("dev");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for flag in ["--api-listen", "--devnet-listen"] {
        let out = run_gxd(
            &["dev", "--dir", state.to_str().unwrap(), flag, &addr],
            &[],
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(&addr),
            "{flag}: {stderr}"
        );
        assert!(!state.join("postgres").exists(), "nothing started");
    }
}
