//! Crypto material for the devnet, in the layout Fabric's `cryptogen` writes (and the
//! fabric-samples test network uses):
//!
//! ```text
//! DIR/organizations/
//!   peerOrganizations/org1.example.com/          (Org1MSP; org2.example.com is Org2MSP)
//!     ca/ca.org1.example.com-cert.pem, ca/priv_sk
//!     tlsca/tlsca.org1.example.com-cert.pem, tlsca/priv_sk
//!     msp/{cacerts,tlscacerts,config.yaml}
//!     peers/peer0.org1.example.com/msp/{cacerts,tlscacerts,signcerts,keystore,config.yaml}
//!     peers/peer0.org1.example.com/tls/{ca.crt,server.crt,server.key}
//!     users/Admin@org1.example.com/msp/{signcerts/Admin@org1.example.com-cert.pem,keystore/priv_sk,...}
//!     users/Admin@org1.example.com/tls/{ca.crt,client.crt,client.key}
//!     users/User1@org1.example.com/...
//!   ordererOrganizations/example.com/             (OrdererMSP: signs the blocks)
//!     ca/, tlsca/, msp/, orderers/orderer.example.com/{msp,tls}, users/Admin@example.com/
//! ```
//!
//! Sign certificates are named `<name>-cert.pem` (cryptogen's naming; the Fabric CA based
//! test network names them `cert.pem` — applications that read "the first file in
//! signcerts/" work with both). Private keys are PKCS#8 PEM in `keystore/priv_sk`, mode 0600.
//! NodeOUs are enabled: admins carry OU=admin, users OU=client, peers OU=peer, orderers
//! OU=orderer, exactly as cryptogen with `EnableNodeOUs: true`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use gxd_fabric::identity::{IdentityError, SigningIdentity};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// Errors while generating or loading crypto material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("signing identity in {path}: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One organization of the devnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgSpec {
    /// MSP id, e.g. `Org1MSP`.
    pub msp_id: &'static str,
    /// Domain, e.g. `org1.example.com`.
    pub domain: &'static str,
    /// `true` for a peer organization, `false` for the orderer organization.
    pub is_peer_org: bool,
}

/// The peer organizations of the devnet channel.
pub const PEER_ORGS: [OrgSpec; 2] = [
    OrgSpec {
        msp_id: "Org1MSP",
        domain: "org1.example.com",
        is_peer_org: true,
    },
    OrgSpec {
        msp_id: "Org2MSP",
        domain: "org2.example.com",
        is_peer_org: true,
    },
];

/// The orderer organization (its orderer signs the blocks).
pub const ORDERER_ORG: OrgSpec = OrgSpec {
    msp_id: "OrdererMSP",
    domain: "example.com",
    is_peer_org: false,
};

/// Name of the file written last by initialization; its presence means the material is complete.
const INIT_MARKER: &str = "organizations/.devnet-complete";

/// Paths into a devnet directory, for tests and tools that need the generated material.
#[derive(Debug, Clone)]
pub struct DevnetPaths {
    dir: PathBuf,
}

impl DevnetPaths {
    /// Paths under the devnet directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The devnet directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/organizations`.
    pub fn organizations(&self) -> PathBuf {
        self.dir.join("organizations")
    }

    /// `DIR/ledger` (RocksDB).
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    /// The fault-injection file polled by a running devnet (see the `faults` module).
    pub fn faults_file(&self) -> PathBuf {
        self.dir.join("faults.json")
    }

    /// The organization folder, e.g. `.../peerOrganizations/org1.example.com`.
    pub fn org(&self, domain: &str) -> PathBuf {
        let kind = if domain == ORDERER_ORG.domain {
            "ordererOrganizations"
        } else {
            "peerOrganizations"
        };
        self.organizations().join(kind).join(domain)
    }

    /// The org's CA certificate (`ca/ca.<domain>-cert.pem`).
    pub fn ca_cert(&self, domain: &str) -> PathBuf {
        self.org(domain)
            .join("ca")
            .join(format!("ca.{domain}-cert.pem"))
    }

    /// The org's TLS CA certificate (`tlsca/tlsca.<domain>-cert.pem`).
    pub fn tls_ca_cert(&self, domain: &str) -> PathBuf {
        self.org(domain)
            .join("tlsca")
            .join(format!("tlsca.{domain}-cert.pem"))
    }

    /// The folder of a user, e.g. `users/User1@org1.example.com`.
    pub fn user(&self, domain: &str, user: &str) -> PathBuf {
        self.org(domain)
            .join("users")
            .join(format!("{user}@{domain}"))
    }

    /// A user's MSP folder.
    pub fn user_msp(&self, domain: &str, user: &str) -> PathBuf {
        self.user(domain, user).join("msp")
    }

    /// A user's sign certificate (`msp/signcerts/<user>@<domain>-cert.pem`).
    pub fn user_cert(&self, domain: &str, user: &str) -> PathBuf {
        self.user_msp(domain, user)
            .join("signcerts")
            .join(format!("{user}@{domain}-cert.pem"))
    }

    /// A user's private key (`msp/keystore/priv_sk`, PKCS#8 PEM).
    pub fn user_key(&self, domain: &str, user: &str) -> PathBuf {
        self.user_msp(domain, user).join("keystore").join("priv_sk")
    }

    /// A peer's folder, e.g. `peers/peer0.org1.example.com`.
    pub fn peer(&self, domain: &str) -> PathBuf {
        self.org(domain)
            .join("peers")
            .join(format!("peer0.{domain}"))
    }

    /// The orderer's folder (`ordererOrganizations/example.com/orderers/orderer.example.com`).
    pub fn orderer(&self) -> PathBuf {
        let domain = ORDERER_ORG.domain;
        self.org(domain)
            .join("orderers")
            .join(format!("orderer.{domain}"))
    }

    /// The TLS CA certificate a client trusts to reach `peer0.<domain>` (`tls/ca.crt`).
    pub fn peer_tls_ca(&self, domain: &str) -> PathBuf {
        self.peer(domain).join("tls").join("ca.crt")
    }
}

/// Whether `dir` holds complete devnet crypto material.
pub fn is_initialized(dir: &Path) -> bool {
    dir.join(INIT_MARKER).is_file()
}

/// Generates the crypto material under `dir` unless it is already complete. An incomplete
/// tree (a crash during generation) is removed and generated anew.
pub fn ensure_material(dir: &Path) -> Result<(), CryptoError> {
    if is_initialized(dir) {
        return Ok(());
    }
    let paths = DevnetPaths::new(dir);
    let orgs = paths.organizations();
    if orgs.exists() {
        fs::remove_dir_all(&orgs).map_err(io_err(&orgs))?;
    }
    for org in PEER_ORGS.iter().chain(std::iter::once(&ORDERER_ORG)) {
        generate_org(&paths, org)?;
    }
    let marker = dir.join(INIT_MARKER);
    write_file(&marker, b"complete\n", false)?;
    sync_dir(&orgs);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        let _ = f.sync_all();
    }
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CryptoError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Good enough for certificate validity bounds (off by at most a day around new year,
    // absorbed by starting the validity a full year back).
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

pub(crate) fn dn(
    domain: &str,
    common_name: &str,
    ou: Option<&str>,
    with_org: bool,
) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::StateOrProvinceName, "California");
    dn.push(DnType::LocalityName, "San Francisco");
    if with_org {
        dn.push(DnType::OrganizationName, domain);
    }
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn base_params(
    subject: DistinguishedName,
    sans: Vec<String>,
) -> Result<CertificateParams, CryptoError> {
    let mut params = CertificateParams::new(sans)?;
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params.distinguished_name = subject;
    Ok(params)
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl Ca {
    fn new(domain: &str, common_name: &str) -> Result<Self, CryptoError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = base_params(dn(domain, common_name, None, true), Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// Issues a leaf certificate; returns (cert PEM, PKCS#8 key PEM).
    fn issue(
        &self,
        subject: DistinguishedName,
        sans: Vec<String>,
        tls: bool,
    ) -> Result<(String, String), CryptoError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = base_params(subject, sans)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        if tls {
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn node_ous_yaml(domain: &str) -> String {
    let ca = format!("cacerts/ca.{domain}-cert.pem");
    format!(
        "NodeOUs:\n  Enable: true\n  ClientOUIdentifier:\n    Certificate: {ca}\n    OrganizationalUnitIdentifier: client\n  PeerOUIdentifier:\n    Certificate: {ca}\n    OrganizationalUnitIdentifier: peer\n  AdminOUIdentifier:\n    Certificate: {ca}\n    OrganizationalUnitIdentifier: admin\n  OrdererOUIdentifier:\n    Certificate: {ca}\n    OrganizationalUnitIdentifier: orderer\n"
    )
}

/// Writes a local MSP folder (cacerts, tlscacerts, signcerts, keystore, config.yaml).
fn write_local_msp(
    msp_dir: &Path,
    domain: &str,
    ca: &Ca,
    tlsca: &Ca,
    name: &str,
    signcert: &str,
    key: &str,
) -> Result<(), CryptoError> {
    write_file(
        &msp_dir
            .join("cacerts")
            .join(format!("ca.{domain}-cert.pem")),
        ca.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &msp_dir
            .join("tlscacerts")
            .join(format!("tlsca.{domain}-cert.pem")),
        tlsca.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &msp_dir.join("signcerts").join(format!("{name}-cert.pem")),
        signcert.as_bytes(),
        false,
    )?;
    write_file(
        &msp_dir.join("keystore").join("priv_sk"),
        key.as_bytes(),
        true,
    )?;
    write_file(
        &msp_dir.join("config.yaml"),
        node_ous_yaml(domain).as_bytes(),
        false,
    )?;
    Ok(())
}

fn generate_org(paths: &DevnetPaths, org: &OrgSpec) -> Result<(), CryptoError> {
    let domain = org.domain;
    let root = paths.org(domain);
    let ca = Ca::new(domain, &format!("ca.{domain}"))?;
    let tlsca = Ca::new(domain, &format!("tlsca.{domain}"))?;

    write_file(&paths.ca_cert(domain), ca.cert_pem.as_bytes(), false)?;
    write_file(
        &root.join("ca").join("priv_sk"),
        ca.key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&paths.tls_ca_cert(domain), tlsca.cert_pem.as_bytes(), false)?;
    write_file(
        &root.join("tlsca").join("priv_sk"),
        tlsca.key.serialize_pem().as_bytes(),
        true,
    )?;

    // The organization's verifying MSP.
    let msp = root.join("msp");
    write_file(
        &msp.join("cacerts").join(format!("ca.{domain}-cert.pem")),
        ca.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &msp.join("tlscacerts")
            .join(format!("tlsca.{domain}-cert.pem")),
        tlsca.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &msp.join("config.yaml"),
        node_ous_yaml(domain).as_bytes(),
        false,
    )?;

    // The node: peer0.<domain> or orderer.<domain>.
    let (node_name, node_dir, node_ou) = if org.is_peer_org {
        (format!("peer0.{domain}"), paths.peer(domain), "peer")
    } else {
        (format!("orderer.{domain}"), paths.orderer(), "orderer")
    };
    let (cert, key) = ca.issue(
        dn(domain, &node_name, Some(node_ou), false),
        Vec::new(),
        false,
    )?;
    write_local_msp(
        &node_dir.join("msp"),
        domain,
        &ca,
        &tlsca,
        &node_name,
        &cert,
        &key,
    )?;
    let short = node_name.split('.').next().unwrap_or("peer0").to_owned();
    let (tls_cert, tls_key) = tlsca.issue(
        dn(domain, &node_name, None, false),
        vec![
            node_name.clone(),
            short,
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ],
        true,
    )?;
    let tls = node_dir.join("tls");
    write_file(&tls.join("ca.crt"), tlsca.cert_pem.as_bytes(), false)?;
    write_file(&tls.join("server.crt"), tls_cert.as_bytes(), false)?;
    write_file(&tls.join("server.key"), tls_key.as_bytes(), true)?;

    // Users.
    let users: &[(&str, &str)] = if org.is_peer_org {
        &[("Admin", "admin"), ("User1", "client")]
    } else {
        &[("Admin", "admin")]
    };
    for (user, ou) in users {
        let name = format!("{user}@{domain}");
        let (cert, key) = ca.issue(dn(domain, &name, Some(ou), false), Vec::new(), false)?;
        write_local_msp(
            &paths.user_msp(domain, user),
            domain,
            &ca,
            &tlsca,
            &name,
            &cert,
            &key,
        )?;
        let (tls_cert, tls_key) = tlsca.issue(dn(domain, &name, None, false), Vec::new(), true)?;
        let tls = paths.user(domain, user).join("tls");
        write_file(&tls.join("ca.crt"), tlsca.cert_pem.as_bytes(), false)?;
        write_file(&tls.join("client.crt"), tls_cert.as_bytes(), false)?;
        write_file(&tls.join("client.key"), tls_key.as_bytes(), true)?;
    }
    Ok(())
}

/// Material the running devnet needs, loaded from the directory.
#[derive(Debug, Clone)]
pub struct LoadedMaterial {
    /// (MSP id, CA certificate PEM, TLS CA certificate PEM) for each peer org, then the orderer org.
    pub orgs: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Endorsing identities: peer0 of each peer org (Org1 first).
    pub peer_signers: Vec<SigningIdentity>,
    /// The orderer's identity (signs blocks).
    pub orderer_signer: SigningIdentity,
    /// TLS server certificate chain (PEM) of peer0.org1.example.com.
    pub tls_cert_pem: Vec<u8>,
    /// TLS server key (PKCS#8 PEM) of peer0.org1.example.com.
    pub tls_key_pem: Vec<u8>,
}

impl LoadedMaterial {
    /// (MSP id, CA certificate PEM) of every organization: the channel's trust anchors.
    pub fn ca_certs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.orgs
            .iter()
            .map(|(id, ca, _)| (id.as_str(), ca.as_slice()))
    }
}

/// Loads what the devnet serves with from an initialized directory.
pub fn load_material(dir: &Path) -> Result<LoadedMaterial, CryptoError> {
    let paths = DevnetPaths::new(dir);
    let read = |p: PathBuf| fs::read(&p).map_err(io_err(&p));
    let mut orgs = Vec::new();
    let mut peer_signers = Vec::new();
    for org in PEER_ORGS.iter().chain(std::iter::once(&ORDERER_ORG)) {
        orgs.push((
            org.msp_id.to_owned(),
            read(paths.ca_cert(org.domain))?,
            read(paths.tls_ca_cert(org.domain))?,
        ));
    }
    for org in &PEER_ORGS {
        peer_signers.push(load_signer(
            org.msp_id,
            &paths.peer(org.domain).join("msp"),
        )?);
    }
    let orderer_signer = load_signer(ORDERER_ORG.msp_id, &paths.orderer().join("msp"))?;
    let tls = paths.peer(PEER_ORGS[0].domain).join("tls");
    Ok(LoadedMaterial {
        orgs,
        peer_signers,
        orderer_signer,
        tls_cert_pem: read(tls.join("server.crt"))?,
        tls_key_pem: read(tls.join("server.key"))?,
    })
}

/// Loads the signing identity of a local MSP folder (`signcerts/`, `keystore/`).
fn load_signer(msp_id: &str, msp_dir: &Path) -> Result<SigningIdentity, CryptoError> {
    SigningIdentity::from_msp_dir(msp_id, msp_dir).map_err(|source| CryptoError::Identity {
        path: msp_dir.to_path_buf(),
        source,
    })
}
