//! The devnet as its own process (`gxd devnet`) for the benchmarks: the bench's process
//! then holds only what it measures (its memory and CPU are the engine's or the
//! projector's), as a sidecar runs beside its peer on one machine.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gxd_devnet as devnet;
use gxd_fabric::client::Gateway;
use gxd_fabric::identity::SigningIdentity;
use gxd_fabric::tls::{ConnectionConfig, PeerConnector, PeerEndpoint, TlsOptions};

pub const ORG1: &str = "org1.example.com";

/// The devnet as its own process (`gxd devnet`), so that this process's memory and CPU are
/// the engine's (and the generator's): the sidecar beside its peer, on one machine.
pub struct DevnetProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub paths: devnet::DevnetPaths,
}

impl DevnetProcess {
    pub fn start(dir: &std::path::Path, batch: usize, timeout: Duration) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gxd"))
            .arg("devnet")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", &addr.to_string()])
            .args(["--batch-max-tx", &batch.to_string()])
            .args(["--batch-timeout-ms", &timeout.as_millis().to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let paths = devnet::DevnetPaths::new(dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "gxd devnet exited ({status}): {}",
                    std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gxd devnet did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        DevnetProcess { child, addr, paths }
    }

    pub fn connector(&self) -> Arc<PeerConnector> {
        let endpoint = PeerEndpoint::new(self.addr.to_string()).with_server_name(devnet::PEER_HOST);
        let tls = TlsOptions {
            ca_pem: std::fs::read(self.paths.peer_tls_ca(ORG1)).unwrap(),
            ..TlsOptions::default()
        };
        Arc::new(PeerConnector::new(ConnectionConfig::new(vec![endpoint], Some(tls))).unwrap())
    }

    pub fn identity(&self, user: &str) -> SigningIdentity {
        SigningIdentity::from_msp_dir("Org1MSP", &self.paths.user_msp(ORG1, user)).unwrap()
    }

    pub fn gateway(&self, user: &str) -> Gateway {
        Gateway::new(
            self.connector(),
            self.identity(user),
            devnet::DEFAULT_CHANNEL,
        )
    }

    pub async fn height(&self) -> u64 {
        gxd_fabric::stream::ledger_height(
            &self.connector(),
            &self.identity("User1"),
            devnet::DEFAULT_CHANNEL,
        )
        .await
        .unwrap()
    }
}

/// SIGTERM, then waits for the exit (also when the bench panics: no devnet left behind).
impl Drop for DevnetProcess {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let _ = self.child.wait();
    }
}
