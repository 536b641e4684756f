#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Daemon lifecycle: readiness, metrics, systemd notification, and a graceful,
//! time-bounded shutdown on SIGTERM — through the real binary; plus the daemon
//! run in-process, and `gxd dev`.

mod common;

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

/// `gxd dev`: a private PostgreSQL, the devnet (if built) and the daemon; SIGINT
/// stops all of it, PostgreSQL included.
#[test]
fn dev_runs_everything_and_stops_cleanly() {
    let dir = traversable_tempdir();
    let state = dir.path().join("dev");
    let api_port = free_port();
    let devnet_port = free_port();
    let mut gxd = Gxd::spawn_with_api(
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
    gxd.wait_ready(Duration::from_secs(120)).unwrap();
    assert!(
        gxd.stdout()
            .contains(&format!("http://127.0.0.1:{api_port}")),
        "{}",
        gxd.logs()
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
}
