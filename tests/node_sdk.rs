//! Interoperability with the official Fabric Gateway SDK for Node.
//!
//! Starts `gxd devnet --dir <tmp> --listen 127.0.0.1:<free port>` (the real binary), installs
//! the npm dependencies of `tests/node` (`npm ci` from the committed lockfile; node_modules is
//! cached there and gitignored), then runs `tests/node/interop.js` — an application written
//! like fabric-samples' asset-transfer-basic gateway app — against it: submit (Bootstrap as
//! Admin, CreateUser, TransferTokens as User1), evaluate, chaincode events from block 0,
//! block events, and chaincode errors surfacing as EndorseError.
//!
//! npm and node are required: without them this test fails (it does not skip).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "node_support.rs"]
mod node_support;
use node_support::run;

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node")
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The devnet child process; killed and reaped on drop.
struct Devnet {
    child: Child,
    log: PathBuf,
}

impl Devnet {
    fn spawn(dir: &Path, port: u16, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gxd"))
            .args(["devnet", "--dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn gxd devnet");
        Self { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the port accepts connections and the crypto material exists.
    fn wait_listening(&mut self, port: u16, dir: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let tls_ca = dir.join(
            "organizations/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/tls/ca.crt",
        );
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("gxd devnet exited early with {status}:\n{}", self.logs());
            }
            if tls_ca.is_file() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gxd devnet did not listen on {port} within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gxd devnet did not stop:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn npm_install(dir: &Path) {
    let lockfile = dir.join("package-lock.json").is_file();
    let args: &[&str] = if lockfile {
        &["ci", "--no-audit", "--no-fund"]
    } else {
        &["install", "--no-audit", "--no-fund"]
    };
    // node_modules is cached between runs; `npm ci` only when it is missing or stale.
    let marker = dir.join("node_modules/.package-lock.json");
    let fresh = lockfile
        && marker.is_file()
        && std::fs::metadata(&marker).and_then(|m| m.modified()).ok()
            >= std::fs::metadata(dir.join("package-lock.json"))
                .and_then(|m| m.modified())
                .ok();
    if fresh {
        return;
    }
    let (ok, output) = run(
        Command::new("npm").args(args).current_dir(dir),
        "npm",
        Duration::from_secs(600),
    );
    assert!(ok, "npm {} failed in {}:\n{output}", args[0], dir.display());
}

#[test]
fn node_sdk_drives_the_devnet() {
    let node_dir = node_dir();
    npm_install(&node_dir);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("devnet");
    let port = free_port();
    let mut devnet = Devnet::spawn(&dir, port, tmp.path().join("devnet.log"));
    devnet.wait_listening(port, &dir, Duration::from_secs(60));

    let crypto = dir.join("organizations/peerOrganizations/org1.example.com");
    let (ok, output) = run(
        Command::new("node")
            .arg(node_dir.join("interop.js"))
            .current_dir(&node_dir)
            .env("CRYPTO_PATH", &crypto)
            .env("PEER_ENDPOINT", format!("localhost:{port}"))
            .env("RUN_ID", "r1"),
        "node",
        Duration::from_secs(180),
    );
    assert!(
        ok,
        "the Node SDK program failed:\n{output}\n--- devnet log ---\n{}",
        devnet.logs()
    );
    for needle in [
        "ok Bootstrap as User1 fails with EndorseError",
        "ok Bootstrap committed VALID",
        "ok GetWallet alice-r1 balance is 151",
        "ok an overdraft fails with EndorseError",
        "ok chaincode events arrive in submission order",
        "ok block 0 is a config block",
        "ok block events contain every submitted transaction id",
        "INTEROP OK",
    ] {
        assert!(output.contains(needle), "missing {needle:?} in:\n{output}");
    }

    // The ledger persists across a restart: a second run against the same directory sees
    // the first run's blocks (block 0 is still the config block) and adds its own.
    let status = devnet.stop();
    assert!(status.success(), "devnet exit {status}:\n{}", devnet.logs());
    let logs = devnet.logs();
    assert!(!logs.contains("ERROR"), "unexpected ERROR lines:\n{logs}");
    let mut devnet = Devnet::spawn(&dir, port, tmp.path().join("devnet2.log"));
    devnet.wait_listening(port, &dir, Duration::from_secs(60));
    let (ok, output) = run(
        Command::new("node")
            .arg(node_dir.join("interop.js"))
            .current_dir(&node_dir)
            .env("CRYPTO_PATH", &crypto)
            .env("PEER_ENDPOINT", format!("localhost:{port}"))
            .env("RUN_ID", "r2")
            .env("BOOTSTRAPPED_TREASURY", "treasury-r1"),
        "node",
        Duration::from_secs(180),
    );
    assert!(
        ok && output.contains("ok a second Bootstrap is refused") && output.contains("INTEROP OK"),
        "second run against the restarted devnet failed:\n{output}\n--- devnet log ---\n{}",
        devnet.logs()
    );
    let status = devnet.stop();
    assert!(status.success(), "devnet exit {status}:\n{}", devnet.logs());
    let logs = devnet.logs();
    assert!(!logs.contains("ERROR"), "unexpected ERROR lines:\n{logs}");
}
