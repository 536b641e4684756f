//! The devnet's peer side of the shim protocol against the official Node chaincode shim.
//!
//! `tests/node-chaincode/chaincode.js` is a fabric-contract-api chaincode; it runs as a
//! chaincode service with the official Node server (`fabric-chaincode-node server
//! --chaincode-address … --chaincode-id …`). The test packages it as Fabric's ccaas builder
//! expects (`gxd chaincode package`, the real binary), starts `gxd devnet
//! --chaincode-package` on that package (the devnet dials the chaincode and expects it to
//! register under the package id), and runs `tests/node-chaincode/client.js` — the official
//! Fabric Gateway SDK for Node — through the devnet: writes, reads, deletes, range queries
//! (one paged through QUERY_STATE_NEXT, one inside a submitted transaction), the creator's
//! MSP id, an error at endorsement and chaincode events.
//!
//! npm and node are required: without them this test fails (it does not skip). `npm ci`
//! installs from the committed lockfile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "node_support.rs"]
mod node_support;
use node_support::run;

fn cc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node-chaincode")
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with its output in a log file; killed and reaped on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self { child, log, what }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_port(&mut self, port: u16, also: impl Fn() -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited early with {status}:\n{}", self.what, self.logs());
            }
            if also() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {port} within {timeout:?}:\n{}",
                self.what,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn npm_ci(dir: &Path) {
    // node_modules is cached between runs; `npm ci` only when it is missing or stale.
    let marker = dir.join("node_modules/.package-lock.json");
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if marker.is_file() && stamp(&marker) >= stamp(&dir.join("package-lock.json")) {
        return;
    }
    let (ok, output) = run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
        "npm ci",
        Duration::from_secs(600),
    );
    assert!(ok, "npm ci failed in {}:\n{output}", dir.display());
}

#[test]
fn the_official_node_shim_runs_through_the_devnet() {
    let cc = cc_dir();
    npm_ci(&cc);
    let tmp = tempfile::tempdir().unwrap();
    let cc_port = free_port();
    let package = tmp.path().join("kv.tar.gz");
    let gxd = env!("CARGO_BIN_EXE_gxd");
    let (ok, out) = run(
        Command::new(gxd)
            .args(["chaincode", "package", "--address"])
            .arg(format!("127.0.0.1:{cc_port}"))
            .args(["--label", "kv_1.0"])
            .arg(&package),
        "gxd chaincode package",
        Duration::from_secs(30),
    );
    assert!(ok, "gxd chaincode package failed:\n{out}");
    let package_id = out.trim().to_owned();
    assert!(
        package_id.starts_with("kv_1.0:") && package_id.len() == "kv_1.0:".len() + 64,
        "{package_id}"
    );

    let mut chaincode = Proc::spawn(
        "fabric-chaincode-node server",
        Command::new(cc.join("node_modules/.bin/fabric-chaincode-node"))
            .arg("server")
            .arg("--chaincode-address")
            .arg(format!("127.0.0.1:{cc_port}"))
            .arg("--chaincode-id")
            .arg(&package_id)
            .current_dir(&cc),
        tmp.path().join("chaincode.log"),
    );
    chaincode.wait_port(cc_port, || true, Duration::from_secs(60));

    let dir = tmp.path().join("devnet");
    let port = free_port();
    let mut devnet = Proc::spawn(
        "gxd devnet",
        Command::new(gxd)
            .args(["devnet", "--dir"])
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--chaincode-package")
            .arg(&package)
            .env("RUST_LOG", "info"),
        tmp.path().join("devnet.log"),
    );
    let tls_ca = dir.join(
        "organizations/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/tls/ca.crt",
    );
    devnet.wait_port(port, || tls_ca.is_file(), Duration::from_secs(60));

    let (ok, output) = run(
        Command::new("node")
            .arg(cc.join("client.js"))
            .current_dir(&cc)
            .env(
                "CRYPTO_PATH",
                dir.join("organizations/peerOrganizations/org1.example.com"),
            )
            .env("PEER_ENDPOINT", format!("localhost:{port}")),
        "node client.js",
        Duration::from_secs(300),
    );
    assert!(
        ok,
        "the Node client failed:\n{output}\n--- devnet log ---\n{}\n--- chaincode log ---\n{}",
        devnet.logs(),
        chaincode.logs()
    );
    for needle in [
        "ok Put a1 committed VALID",
        "ok Get a2 = y",
        "ok the chaincode sees the creator Org1MSP",
        "ok Range a..b returns a1 a2 a3 in order",
        "ok a range of 150 entries pages through QUERY_STATE_NEXT",
        "ok a submitted range query commits VALID",
        "ok a range changed before commit is PHANTOM_READ_CONFLICT (code 12)",
        "ok a range nobody wrote into commits VALID",
        "ok a range whose key was deleted before commit is PHANTOM_READ_CONFLICT (code 12)",
        "ok the range no longer holds the deleted key",
        "ok Move wrote c1",
        "ok the error carries the chaincode's message",
        "ok Put events arrive in order with their payloads",
        "NODE CHAINCODE OK",
    ] {
        assert!(output.contains(needle), "missing {needle:?} in:\n{output}");
    }
    let logs = devnet.logs();
    assert!(logs.contains("chaincode registered"), "{logs}");
    assert!(!logs.contains("ERROR"), "unexpected ERROR lines:\n{logs}");
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate (PEM files).
fn write_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    for (name, sans) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ),
        ("client", vec!["peer0.org1.example.com".to_owned()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `gxd chaincode serve` (the real binary, mutual TLS) behind `gxd devnet
/// --chaincode-package`, driven by the GX program of the Node Gateway SDK test
/// (`tests/node/interop.js`): every GX transaction, query, event and error through the
/// service; then SIGTERM stops the chaincode server cleanly.
#[test]
fn gxd_chaincode_serve_with_mutual_tls_runs_the_gx_node_sdk_program() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node");
    npm_ci(&node_dir);
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    write_pki(pki);
    let cc_port = free_port();
    let package = tmp.path().join("gx.tar.gz");
    let gxd = env!("CARGO_BIN_EXE_gxd");
    let (ok, out) = run(
        Command::new(gxd)
            .args(["chaincode", "package", "--address"])
            .arg(format!("127.0.0.1:{cc_port}"))
            .args(["--label", "gx_1.0", "--tls-required", "--root-cert"])
            .arg(pki.join("ca.pem"))
            .arg("--client-cert")
            .arg(pki.join("client.pem"))
            .arg("--client-key")
            .arg(pki.join("client.key"))
            .arg(&package),
        "gxd chaincode package",
        Duration::from_secs(30),
    );
    assert!(ok, "gxd chaincode package failed:\n{out}");
    let package_id = out.trim().to_owned();

    let mut chaincode = Proc::spawn(
        "gxd chaincode serve",
        Command::new(gxd)
            .args(["chaincode", "serve", "--listen"])
            .arg(format!("127.0.0.1:{cc_port}"))
            .args(["--id", &package_id, "--tls-cert"])
            .arg(pki.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.join("server.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.pem"))
            .env("RUST_LOG", "info"),
        tmp.path().join("chaincode.log"),
    );
    chaincode.wait_port(cc_port, || true, Duration::from_secs(30));

    let dir = tmp.path().join("devnet");
    let port = free_port();
    let mut devnet = Proc::spawn(
        "gxd devnet",
        Command::new(gxd)
            .args(["devnet", "--dir"])
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--chaincode-package")
            .arg(&package)
            .env("RUST_LOG", "info"),
        tmp.path().join("devnet.log"),
    );
    let tls_ca = dir.join(
        "organizations/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/tls/ca.crt",
    );
    devnet.wait_port(port, || tls_ca.is_file(), Duration::from_secs(60));

    let (ok, output) = run(
        Command::new("node")
            .arg(node_dir.join("interop.js"))
            .current_dir(&node_dir)
            .env(
                "CRYPTO_PATH",
                dir.join("organizations/peerOrganizations/org1.example.com"),
            )
            .env("PEER_ENDPOINT", format!("localhost:{port}"))
            .env("RUN_ID", "cc"),
        "node interop.js",
        Duration::from_secs(180),
    );
    assert!(
        ok && output.contains("INTEROP OK"),
        "the GX Node SDK program failed through gxd chaincode serve:\n{output}\n--- devnet log ---\n{}\n--- chaincode log ---\n{}",
        devnet.logs(),
        chaincode.logs()
    );
    for needle in [
        "ok Bootstrap as User1 fails with EndorseError",
        "ok Bootstrap committed VALID",
        "ok an overdraft fails with EndorseError",
        "ok chaincode events arrive in submission order",
    ] {
        assert!(output.contains(needle), "missing {needle:?} in:\n{output}");
    }
    let cc_logs = chaincode.logs();
    assert!(cc_logs.contains("peer connected"), "{cc_logs}");

    // SIGTERM: the chaincode server stops cleanly, though the devnet still holds its stream.
    let pid = chaincode.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = chaincode.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gxd chaincode serve did not stop on SIGTERM:\n{}",
            chaincode.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}:\n{}", chaincode.logs());
    for (what, logs) in [("devnet", devnet.logs()), ("chaincode", chaincode.logs())] {
        assert!(
            !logs.contains("ERROR"),
            "unexpected ERROR lines in the {what} log:\n{logs}"
        );
    }
}
