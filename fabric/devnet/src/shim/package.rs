//! The chaincode package Fabric's ccaas builder installs (`peer lifecycle chaincode install
//! OUT.tar.gz`), as fabric-samples' CCaaS recipe and `core/chaincode/persistence` lay it out:
//!
//! ```text
//! OUT.tar.gz (gzip'd tar)
//! ├── metadata.json    {"type":"ccaas","label":"gx_1.0"}
//! └── code.tar.gz      (gzip'd tar)
//!     └── connection.json  {"address":"host:port","dial_timeout":"10s","tls_required":…,
//!                           "client_auth_required":…,"client_key":PEM,"client_cert":PEM,"root_cert":PEM}
//! ```
//!
//! Entries are regular files (mode 0100644, as `peer lifecycle chaincode package` writes
//! them) with a zero timestamp, so the same inputs give the same bytes and the same package
//! id: `label:hex(sha256(OUT.tar.gz))` (Fabric's `persistence.PackageID`).

use std::io::{Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `connection.json`: how the peer reaches the chaincode (Fabric's
/// `externalbuilder.ChaincodeServerUserData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub address: String,
    /// A Go duration (`"10s"`, `"500ms"`, `"1m"`).
    pub dial_timeout: String,
    pub tls_required: bool,
    #[serde(default)]
    pub client_auth_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cert: Option<String>,
}

impl Connection {
    /// `dial_timeout` as a [`Duration`] (Go duration syntax, one unit: `ms`, `s`, `m`, `h`).
    pub fn dial_timeout(&self) -> Result<Duration, String> {
        parse_go_duration(&self.dial_timeout)
    }
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("dial_timeout {s:?} is not a duration like \"10s\" or \"500ms\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// `metadata.json` of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
}

/// Why a package could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(
        "invalid label {0:?}: a label starts with a letter or digit and holds only letters, digits and _ . + -"
    )]
    Label(String),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Fabric's label rule (`persistence.LabelRegexp`: `^[[:alnum:]][[:alnum:]_.+-]*$`).
pub fn validate_label(label: &str) -> Result<(), PackageError> {
    let mut chars = label.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PackageError::Label(label.to_owned()))
    }
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, PackageError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_path(name)?;
        header.set_size(bytes.len() as u64);
        header.set_mode(0o100644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, *bytes)?;
    }
    let gz = tar.into_inner()?;
    Ok(gz.finish()?)
}

/// The `ccaas` package for `connection` under `label`: the bytes of OUT.tar.gz.
pub fn build(label: &str, connection: &Connection) -> Result<Vec<u8>, PackageError> {
    validate_label(label)?;
    if connection.address.is_empty() {
        return Err(PackageError::Invalid("address must not be empty".into()));
    }
    connection.dial_timeout().map_err(PackageError::Invalid)?;
    if connection.tls_required && connection.root_cert.as_deref().unwrap_or("").is_empty() {
        return Err(PackageError::Invalid(
            "tls_required needs root_cert (the CA of the chaincode's server certificate)".into(),
        ));
    }
    if connection.client_auth_required
        && (connection.client_cert.is_none() || connection.client_key.is_none())
    {
        return Err(PackageError::Invalid(
            "client_auth_required needs client_cert and client_key".into(),
        ));
    }
    let connection_json = serde_json::to_vec_pretty(connection)?;
    let code = tar_gz(&[("connection.json", &connection_json)])?;
    let metadata = serde_json::to_vec(&Metadata {
        kind: "ccaas".to_owned(),
        label: label.to_owned(),
    })?;
    tar_gz(&[("metadata.json", &metadata), ("code.tar.gz", &code)])
}

/// Fabric's package id of a package file: `label:hex(sha256(bytes))`.
pub fn package_id(label: &str, package: &[u8]) -> String {
    format!("{label}:{}", hex::encode(Sha256::digest(package)))
}

/// The entries of a gzip'd tar, by name, in order (bounded: at most 16 entries of 1 MiB).
pub fn read_tar_gz(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PackageError> {
    const MAX_ENTRIES: usize = 16;
    const MAX_ENTRY: u64 = 1024 * 1024;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        if out.len() >= MAX_ENTRIES {
            return Err(PackageError::Invalid("too many entries".into()));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(PackageError::Invalid(
                "an entry is not a regular file".into(),
            ));
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.take(MAX_ENTRY + 1).read_to_end(&mut data)?;
        if data.len() as u64 > MAX_ENTRY {
            return Err(PackageError::Invalid(format!("{name} is too large")));
        }
        out.push((name, data));
    }
    Ok(out)
}

/// Reads a ccaas package: its metadata and connection, as the peer's install and the
/// ccaas builder's `detect`/`build` do.
pub fn read(package: &[u8]) -> Result<(Metadata, Connection), PackageError> {
    let entries = read_tar_gz(package)?;
    let find = |name: &str| {
        entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
            .ok_or_else(|| PackageError::Invalid(format!("the package has no {name}")))
    };
    let metadata: Metadata = serde_json::from_slice(find("metadata.json")?)?;
    if metadata.kind != "ccaas" {
        return Err(PackageError::Invalid(format!(
            "type is {:?}, not \"ccaas\"",
            metadata.kind
        )));
    }
    validate_label(&metadata.label)?;
    let code = read_tar_gz(find("code.tar.gz")?)?;
    let connection = code
        .iter()
        .find(|(n, _)| n == "connection.json")
        .ok_or_else(|| PackageError::Invalid("code.tar.gz has no connection.json".into()))?;
    let connection: Connection = serde_json::from_slice(&connection.1)?;
    Ok((metadata, connection))
}

/// Writes `bytes` to `path` (created or truncated).
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
