//! `gxd chaincode serve` and `gxd chaincode package`: GX as a chaincode-as-a-service. The
//! protocol and the package format live in `gxd_devnet::shim`; this module reads files and
//! wires the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use gxd_devnet::shim::{client, package, server};

use crate::{config, logging, signal};

/// The command line of `gxd chaincode serve`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub listen: SocketAddr,
    pub id: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))
}

fn read_string(path: &Path, what: &str) -> anyhow::Result<String> {
    String::from_utf8(read(path, what)?)
        .with_context(|| format!("{what} {} is not UTF-8 PEM", path.display()))
}

/// Serves the GX chaincode until SIGTERM/SIGINT.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(config::LogFormat::Pretty, "info");
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::ServerTls {
            cert_pem: read(cert, "TLS certificate")?,
            key_pem: read(key, "TLS key")?,
            client_ca_pem: args
                .client_ca
                .as_deref()
                .map(|p| read(p, "client CA"))
                .transpose()?,
        }),
        _ => None,
    };
    let config = server::ServerConfig {
        listen: args.listen,
        chaincode_id: args.id,
        tls,
    };
    super::runtime()?.block_on(async {
        let server = server::start(config).await.context("chaincode server")?;
        server
            .run_until(signal::shutdown_signal())
            .await
            .context("chaincode server")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The command line of `gxd chaincode package`.
#[derive(Debug, Clone)]
pub struct PackageArgs {
    pub address: String,
    pub label: String,
    pub dial_timeout: String,
    pub tls_required: bool,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub out: PathBuf,
}

/// Writes the package and prints its id.
pub fn package(args: PackageArgs) -> anyhow::Result<ExitCode> {
    let pem = |p: &Option<PathBuf>, what| p.as_deref().map(|p| read_string(p, what)).transpose();
    let connection = package::Connection {
        address: args.address,
        dial_timeout: args.dial_timeout,
        tls_required: args.tls_required,
        client_auth_required: args.client_cert.is_some(),
        client_key: pem(&args.client_key, "client key")?,
        client_cert: pem(&args.client_cert, "client certificate")?,
        root_cert: pem(&args.root_cert, "root certificate")?,
    };
    let bytes = package::build(&args.label, &connection).context("build the package")?;
    package::write_file(&args.out, &bytes)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("{}", package::package_id(&args.label, &bytes));
    Ok(ExitCode::SUCCESS)
}

/// The external chaincode a ccaas package describes: its connection, and its package id as
/// the id the chaincode must register under (as a Fabric peer that installed it).
pub fn external_config(path: &Path) -> anyhow::Result<client::ExternalConfig> {
    let bytes = read(path, "chaincode package")?;
    let (metadata, connection) =
        package::read(&bytes).with_context(|| format!("chaincode package {}", path.display()))?;
    let id = package::package_id(&metadata.label, &bytes);
    client::ExternalConfig::from_connection(&connection, id)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("chaincode package {}", path.display()))
}
