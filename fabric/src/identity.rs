//! MSP identities: X.509 certificate + ECDSA P-256 key, signing and verification as Fabric does it.
//!
//! - [`Identity`]: MSP id + PEM certificate; [`Identity::creator`] gives the serialized
//!   `msp.SerializedIdentity` bytes Fabric calls the *creator* (`id_bytes` = the PEM certificate,
//!   as the official SDKs send it).
//! - [`Signer`]: object-safe signing trait (an HSM or KMS signer implements it later);
//!   [`P256Signer`] is the in-memory implementation: ECDSA P-256 over SHA-256, DER-encoded,
//!   normalized to low-S (Fabric rejects `s > n/2`).
//! - [`SigningIdentity`]: an identity with its signer; loads from an MSP directory
//!   (`msp/signcerts/*.pem` + `msp/keystore/*`).
//! - [`verify_signature`]: verifies a DER signature over a message with a certificate's public
//!   key, enforcing low-S like Fabric's BCCSP. [`cert_chains_to`]: checks a certificate was issued
//!   (signature + validity period) by one of a set of CA certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::{Decode, DecodePem, Encode};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use prost::Message;
use x509_cert::Certificate;

use crate::proto::msp::SerializedIdentity;

/// OID of `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// OID of the `secp256r1` / P-256 named curve.
const OID_SECP256R1: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// OID of `ecdsa-with-SHA256`.
const OID_ECDSA_WITH_SHA256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// OID of the basicConstraints extension.
const OID_BASIC_CONSTRAINTS: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.19");

/// Errors while loading or parsing an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate (*.pem) in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key in {0}")]
    NoPrivateKey(PathBuf),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("invalid private key: {0}")]
    PrivateKey(String),
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    #[error("invalid serialized identity: {0}")]
    SerializedIdentity(String),
    #[error("MSP id must not be empty")]
    EmptyMspId,
}

/// Error from a [`Signer`].
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(pub String);

/// Why a signature or certificate did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    #[error("malformed signature: not an ASN.1 DER ECDSA signature")]
    MalformedSignature,
    #[error("signature is not in low-S form")]
    HighS,
    #[error("signature does not verify")]
    BadSignature,
    #[error("certificate is not valid at this time (valid {not_before}..{not_after} unix seconds)")]
    Expired { not_before: u64, not_after: u64 },
    #[error("certificate is not issued by any trusted CA")]
    UnknownAuthority,
    #[error("issuer certificate is not a CA")]
    NotACa,
    #[error("unsupported certificate signature algorithm {0}")]
    UnsupportedAlgorithm(String),
}

/// Signs messages for an identity. Object-safe so that a hardware or remote signer can be
/// plugged in behind `Arc<dyn Signer>`.
///
/// Contract: returns an ASN.1 DER ECDSA signature over SHA-256(`msg`) in low-S form.
pub trait Signer: Send + Sync {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// In-memory ECDSA P-256 signer (SHA-256, low-S, DER).
///
/// Signs with ring's constant-time P-256 assembly (several times faster than the pure-Rust
/// arithmetic; the devnet and the submitter sign several times per transaction), with a
/// random nonce from the OS; the low-S normalization Fabric requires is applied after.
/// Should ring refuse the key, it falls back to p256's RFC 6979 signer.
#[derive(Clone)]
pub struct P256Signer {
    key: SigningKey,
    fast: Option<Arc<ring::signature::EcdsaKeyPair>>,
}

impl fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P256Signer").finish_non_exhaustive()
    }
}

impl P256Signer {
    /// From a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what cryptogen and Fabric CA
    /// write) or SEC1 (`BEGIN EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let pem = pem.trim();
        let secret = if pem.contains("BEGIN EC PRIVATE KEY") {
            p256::SecretKey::from_sec1_pem(pem)
                .map_err(|e| IdentityError::PrivateKey(e.to_string()))?
        } else if pem.contains("BEGIN PRIVATE KEY") {
            p256::SecretKey::from_pkcs8_pem(pem)
                .map_err(|e| IdentityError::PrivateKey(e.to_string()))?
        } else {
            return Err(IdentityError::PrivateKey(
                "expected a PEM 'PRIVATE KEY' (PKCS#8) or 'EC PRIVATE KEY' (SEC1) block".into(),
            ));
        };
        Ok(Self::from_signing_key(SigningKey::from(secret)))
    }

    /// Wraps an existing key.
    pub fn from_signing_key(key: SigningKey) -> Self {
        let public = key.verifying_key().to_encoded_point(false);
        let fast = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.to_bytes(),
            public.as_bytes(),
            &ring::rand::SystemRandom::new(),
        )
        .ok()
        .map(Arc::new);
        Self { key, fast }
    }

    /// A fresh random key (tests, generated crypto material).
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// The underlying key (for callers that need to build certificates with it).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

impl Signer for P256Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        let sig: Signature = match &self.fast {
            Some(pair) => {
                let der = pair
                    .sign(&ring::rand::SystemRandom::new(), msg)
                    .map_err(|_| SignError("ECDSA signing failed".into()))?;
                Signature::from_der(der.as_ref()).map_err(|e| SignError(e.to_string()))?
            }
            None => self
                .key
                .try_sign(msg)
                .map_err(|e| SignError(e.to_string()))?,
        };
        let sig = sig.normalize_s().unwrap_or(sig);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// An MSP identity: MSP id and X.509 certificate.
#[derive(Clone)]
pub struct Identity {
    msp_id: String,
    cert_pem: Vec<u8>,
    cert_der: Vec<u8>,
    creator: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("msp_id", &self.msp_id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.msp_id == other.msp_id && self.cert_der == other.cert_der
    }
}
impl Eq for Identity {}

impl Identity {
    /// From an MSP id and a PEM (or DER) certificate.
    pub fn new(msp_id: impl Into<String>, cert: &[u8]) -> Result<Self, IdentityError> {
        let msp_id = msp_id.into();
        if msp_id.is_empty() {
            return Err(IdentityError::EmptyMspId);
        }
        let parsed =
            parse_certificate(cert).map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let cert_der = parsed
            .to_der()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let cert_pem = if looks_like_pem(cert) {
            cert.to_vec()
        } else {
            der_to_pem(&cert_der).into_bytes()
        };
        let creator = SerializedIdentity {
            mspid: msp_id.clone(),
            id_bytes: cert_pem.clone(),
        }
        .encode_to_vec();
        Ok(Self {
            msp_id,
            cert_pem,
            cert_der,
            creator,
        })
    }

    /// Decodes a serialized creator (`msp.SerializedIdentity` bytes).
    pub fn from_creator(creator: &[u8]) -> Result<Self, IdentityError> {
        let sid = SerializedIdentity::decode(creator)
            .map_err(|e| IdentityError::SerializedIdentity(e.to_string()))?;
        let mut id = Self::new(sid.mspid, &sid.id_bytes)?;
        // Keep the exact bytes we were given: signatures and tx ids are computed over them.
        id.creator = creator.to_vec();
        Ok(id)
    }

    pub fn msp_id(&self) -> &str {
        &self.msp_id
    }

    /// The certificate as PEM bytes (what goes into `SerializedIdentity.id_bytes`).
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The certificate as DER bytes.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Serialized `msp.SerializedIdentity` — the creator bytes of headers and requests.
    pub fn creator(&self) -> &[u8] {
        &self.creator
    }

    /// The parsed certificate.
    pub fn certificate(&self) -> Result<Certificate, VerifyError> {
        parse_certificate(&self.cert_der)
    }

    /// Verifies a Fabric signature (DER, low-S) over `msg` by this identity.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        verify_signature(&self.cert_der, msg, signature)
    }
}

/// An identity together with the signer for its private key.
#[derive(Clone)]
pub struct SigningIdentity {
    identity: Identity,
    signer: Arc<dyn Signer>,
}

impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    pub fn new(identity: Identity, signer: Arc<dyn Signer>) -> Self {
        Self { identity, signer }
    }

    /// From PEM certificate + PEM private key (PKCS#8 or SEC1); checks they belong together.
    pub fn from_pem(
        msp_id: impl Into<String>,
        cert_pem: &[u8],
        key_pem: &str,
    ) -> Result<Self, IdentityError> {
        let identity = Identity::new(msp_id, cert_pem)?;
        let signer = P256Signer::from_pem(key_pem)?;
        let cert_key = public_key_of(
            &identity
                .certificate()
                .map_err(|e| IdentityError::Certificate(e.to_string()))?,
        )
        .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;
        if cert_key != signer.verifying_key() {
            return Err(IdentityError::KeyMismatch);
        }
        Ok(Self {
            identity,
            signer: Arc::new(signer),
        })
    }

    /// Loads from an MSP directory as cryptogen / Fabric CA write it. `dir` is either the `msp`
    /// directory itself or its parent (e.g. `users/User1@org1.example.com`). The certificate is
    /// the first `signcerts/*.pem` (by name); the key is the `keystore/*` file that matches it.
    pub fn from_msp_dir(msp_id: impl Into<String>, dir: &Path) -> Result<Self, IdentityError> {
        let msp = if dir.join("signcerts").is_dir() {
            dir.to_path_buf()
        } else {
            dir.join("msp")
        };
        let signcerts = msp.join("signcerts");
        let mut certs = list_files(&signcerts)?;
        certs.retain(|p| p.extension().is_some_and(|e| e == "pem"));
        let cert_path = certs
            .first()
            .ok_or_else(|| IdentityError::NoCertificate(signcerts.clone()))?;
        let cert_pem = read(cert_path)?;
        let identity = Identity::new(msp_id, &cert_pem)?;
        let cert_key = public_key_of(
            &identity
                .certificate()
                .map_err(|e| IdentityError::Certificate(e.to_string()))?,
        )
        .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;

        let keystore = msp.join("keystore");
        let keys = list_files(&keystore)?;
        let mut last_err = IdentityError::NoPrivateKey(keystore.clone());
        for key_path in keys {
            let bytes = read(&key_path)?;
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            match P256Signer::from_pem(&text) {
                Ok(signer) if signer.verifying_key() == cert_key => {
                    return Ok(Self {
                        identity,
                        signer: Arc::new(signer),
                    });
                }
                Ok(_) => last_err = IdentityError::KeyMismatch,
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn msp_id(&self) -> &str {
        self.identity.msp_id()
    }

    /// Serialized creator bytes (`msp.SerializedIdentity`).
    pub fn creator(&self) -> &[u8] {
        self.identity.creator()
    }

    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        self.signer.sign(msg)
    }
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, IdentityError> {
    let rd = std::fs::read_dir(dir).map_err(|source| IdentityError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

fn der_to_pem(der: &[u8]) -> String {
    use der::pem::{LineEnding, encode_string};
    // Encoding into a String cannot fail for a valid label.
    encode_string("CERTIFICATE", LineEnding::LF, der).unwrap_or_default()
}

/// Parses a certificate given as PEM or DER.
pub fn parse_certificate(cert: &[u8]) -> Result<Certificate, VerifyError> {
    if looks_like_pem(cert) {
        Certificate::from_pem(cert).map_err(|e| VerifyError::Certificate(e.to_string()))
    } else {
        Certificate::from_der(cert).map_err(|e| VerifyError::Certificate(e.to_string()))
    }
}

/// Parses every certificate in a PEM bundle (or a single DER certificate).
pub fn parse_certificates(bundle: &[u8]) -> Result<Vec<Certificate>, VerifyError> {
    if looks_like_pem(bundle) {
        Certificate::load_pem_chain(bundle).map_err(|e| VerifyError::Certificate(e.to_string()))
    } else {
        Ok(vec![parse_certificate(bundle)?])
    }
}

/// The ECDSA P-256 public key of a certificate.
pub fn public_key_of(cert: &Certificate) -> Result<VerifyingKey, VerifyError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return Err(VerifyError::UnsupportedKey(format!(
            "algorithm {}",
            spki.algorithm.oid
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
    if curve != Some(OID_SECP256R1) {
        return Err(VerifyError::UnsupportedKey(
            "only the P-256 curve is supported".into(),
        ));
    }
    let bytes = spki.subject_public_key.as_bytes().ok_or_else(|| {
        VerifyError::UnsupportedKey("public key bit string is not octet-aligned".into())
    })?;
    VerifyingKey::from_sec1_bytes(bytes).map_err(|e| VerifyError::UnsupportedKey(e.to_string()))
}

/// Verifies `signature` (ASN.1 DER ECDSA, SHA-256) over `msg` with the public key of `cert`
/// (PEM or DER). Like Fabric, refuses signatures whose `s` is above n/2.
pub fn verify_signature(cert: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
    let cert = parse_certificate(cert)?;
    let key = public_key_of(&cert)?;
    verify_with_key(&key, msg, signature)
}

/// [`verify_signature`] with an already-extracted key.
pub fn verify_with_key(
    key: &VerifyingKey,
    msg: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let sig = Signature::from_der(signature).map_err(|_| VerifyError::MalformedSignature)?;
    if sig.normalize_s().is_some() {
        return Err(VerifyError::HighS);
    }
    // The same check as `key.verify(msg, &sig)`, by ring's constant-time P-256 assembly
    // (several times faster); the DER parsing and the low-S rule above stay p256's.
    let point = key.to_encoded_point(false);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(msg, &sig.to_bytes())
    .map_err(|_| VerifyError::BadSignature)
}

/// Checks that `cert` is valid now and issued by one of `ca_certs` (directly, or through
/// intermediates that are themselves in `ca_certs`): issuer name matches the CA's subject, the
/// CA is a CA (basicConstraints cA=TRUE), the issuer's ECDSA-SHA256 signature over the
/// to-be-signed certificate verifies, and every certificate on the path is within its
/// validity period. Certificates may be PEM or DER.
pub fn cert_chains_to(cert: &[u8], ca_certs: &[&[u8]]) -> Result<(), VerifyError> {
    let cert = parse_certificate(cert)?;
    let cas = ca_certs
        .iter()
        .map(|c| parse_certificate(c))
        .collect::<Result<Vec<_>, _>>()?;
    cert_chains_to_parsed(&cert, &cas, SystemTime::now())
}

/// [`cert_chains_to`] on parsed certificates at a given time.
pub fn cert_chains_to_parsed(
    cert: &Certificate,
    cas: &[Certificate],
    now: SystemTime,
) -> Result<(), VerifyError> {
    check_validity(cert, now)?;
    let mut current = cert.clone();
    // Bounded walk up the chain (guards against cycles among the given CAs).
    for _ in 0..8 {
        let mut last_err = VerifyError::UnknownAuthority;
        let mut next = None;
        for ca in cas {
            if ca.tbs_certificate.subject != current.tbs_certificate.issuer {
                continue;
            }
            match verify_issued_by(&current, ca, now) {
                Ok(()) => {
                    next = Some(ca);
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        let Some(ca) = next else { return Err(last_err) };
        // A self-signed CA among the trusted ones ends the walk: it is a root. Otherwise the
        // issuer is an intermediate, which must itself chain to a trusted root.
        if ca.tbs_certificate.subject == ca.tbs_certificate.issuer {
            return Ok(());
        }
        current = ca.clone();
    }
    Err(VerifyError::UnknownAuthority)
}

fn verify_issued_by(
    cert: &Certificate,
    ca: &Certificate,
    now: SystemTime,
) -> Result<(), VerifyError> {
    check_validity(ca, now)?;
    if !is_ca(ca)? {
        return Err(VerifyError::NotACa);
    }
    if cert.signature_algorithm.oid != OID_ECDSA_WITH_SHA256 {
        return Err(VerifyError::UnsupportedAlgorithm(
            cert.signature_algorithm.oid.to_string(),
        ));
    }
    let key = public_key_of(ca)?;
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| VerifyError::Certificate(e.to_string()))?;
    let sig_bytes = cert
        .signature
        .as_bytes()
        .ok_or(VerifyError::MalformedSignature)?;
    // Certificate signatures (unlike Fabric message signatures) need not be low-S.
    let sig = Signature::from_der(sig_bytes).map_err(|_| VerifyError::MalformedSignature)?;
    key.verify(&tbs, &sig)
        .map_err(|_| VerifyError::BadSignature)
}

fn is_ca(cert: &Certificate) -> Result<bool, VerifyError> {
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return Ok(false);
    };
    for ext in exts {
        if ext.extn_id == OID_BASIC_CONSTRAINTS {
            let bc = x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                .map_err(|e| VerifyError::Certificate(e.to_string()))?;
            return Ok(bc.ca);
        }
    }
    Ok(false)
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), VerifyError> {
    let v = &cert.tbs_certificate.validity;
    let not_before = v.not_before.to_unix_duration();
    let not_after = v.not_after.to_unix_duration();
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    if now < not_before || now > not_after {
        return Err(VerifyError::Expired {
            not_before: not_before.as_secs(),
            not_after: not_after.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    };

    struct TestCa {
        params: CertificateParams,
        key: KeyPair,
        pem: String,
    }

    fn ca(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    fn intermediate(name: &str, parent: &TestCa) -> TestCa {
        issued(name, parent, IsCa::Ca(BasicConstraints::Unconstrained))
    }

    fn issued(name: &str, parent: &TestCa, is_ca: IsCa) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = is_ca;
        let pem = params
            .signed_by(&key, &Issuer::from_params(&parent.params, &parent.key))
            .unwrap()
            .pem();
        TestCa { params, key, pem }
    }

    /// (cert PEM, PKCS#8 key PEM)
    fn leaf(
        name: &str,
        issuer: &TestCa,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        tweak(&mut params);
        let cert = params
            .signed_by(&key, &Issuer::from_params(&issuer.params, &issuer.key))
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn high_s(der_sig: &[u8]) -> Vec<u8> {
        let sig = Signature::from_der(der_sig).unwrap();
        let (r, s) = sig.split_scalars();
        let neg = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        neg.to_der().as_bytes().to_vec()
    }

    #[test]
    fn signer_uses_ring_and_its_signatures_verify_with_p256_low_s() {
        let (_, key) = leaf("User1@org1.example.com", &ca("ca.org1.example.com"), |_| {});
        let signer = P256Signer::from_pem(&key).unwrap();
        assert!(
            signer.fast.is_some(),
            "cryptogen keys take ring's signing path"
        );
        let vk = signer.verifying_key();
        // Over many signatures about half of ring's raw ones are high-S: all must come
        // out normalized, and each verifies with p256's own verifier too.
        for i in 0..200u32 {
            let msg = format!("m{i}");
            let sig = Signature::from_der(&signer.sign(msg.as_bytes()).unwrap()).unwrap();
            assert!(sig.normalize_s().is_none());
            p256::ecdsa::signature::Verifier::verify(&vk, msg.as_bytes(), &sig).unwrap();
        }
    }

    #[test]
    fn sign_verify_low_s_roundtrip() {
        let ca = ca("ca.org1.example.com");
        let (cert, key) = leaf("User1@org1.example.com", &ca, |_| {});
        let id = SigningIdentity::from_pem("Org1MSP", cert.as_bytes(), &key).unwrap();
        for i in 0..64u32 {
            let msg = format!("message {i}");
            let sig = id.sign(msg.as_bytes()).unwrap();
            let parsed = Signature::from_der(&sig).unwrap();
            assert!(parsed.normalize_s().is_none(), "signature must be low-S");
            verify_signature(cert.as_bytes(), msg.as_bytes(), &sig).unwrap();
            id.identity().verify(msg.as_bytes(), &sig).unwrap();
            assert_eq!(
                verify_signature(cert.as_bytes(), b"other", &sig),
                Err(VerifyError::BadSignature)
            );
            // The same signature with s replaced by n - s is mathematically valid but Fabric refuses it.
            assert_eq!(
                verify_signature(cert.as_bytes(), msg.as_bytes(), &high_s(&sig)),
                Err(VerifyError::HighS)
            );
        }
        assert_eq!(
            verify_signature(cert.as_bytes(), b"m", b"\x30\x00"),
            Err(VerifyError::MalformedSignature)
        );
        // DER certificates work too.
        let der = id.identity().cert_der().to_vec();
        let sig = id.sign(b"m").unwrap();
        verify_signature(&der, b"m", &sig).unwrap();
    }

    #[test]
    fn wrong_key_signature_is_rejected() {
        let ca = ca("ca");
        let (cert, _) = leaf("a", &ca, |_| {});
        let other = P256Signer::generate();
        let sig = other.sign(b"payload").unwrap();
        assert_eq!(
            verify_signature(cert.as_bytes(), b"payload", &sig),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn keys_load_from_pkcs8_and_sec1() {
        let signer = P256Signer::generate();
        let secret = p256::SecretKey::from(signer.signing_key());
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        assert_eq!(
            P256Signer::from_pem(&pkcs8).unwrap().verifying_key(),
            signer.verifying_key()
        );
        assert_eq!(
            P256Signer::from_pem(&sec1).unwrap().verifying_key(),
            signer.verifying_key()
        );
        assert!(matches!(
            P256Signer::from_pem("garbage"),
            Err(IdentityError::PrivateKey(_))
        ));
        assert!(matches!(
            P256Signer::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(IdentityError::PrivateKey(_))
        ));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let ca = ca("ca");
        let (cert, _) = leaf("a", &ca, |_| {});
        let (_, other_key) = leaf("b", &ca, |_| {});
        assert!(matches!(
            SigningIdentity::from_pem("Org1MSP", cert.as_bytes(), &other_key),
            Err(IdentityError::KeyMismatch)
        ));
    }

    #[test]
    fn loads_from_msp_directory() {
        let ca = ca("ca.org1.example.com");
        let (cert, key) = leaf("User1@org1.example.com", &ca, |_| {});
        let (_, stray_key) = leaf("someone-else", &ca, |_| {});
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("users/User1@org1.example.com");
        let msp = user.join("msp");
        std::fs::create_dir_all(msp.join("signcerts")).unwrap();
        std::fs::create_dir_all(msp.join("keystore")).unwrap();
        std::fs::write(msp.join("signcerts/User1@org1.example.com-cert.pem"), &cert).unwrap();
        // A keystore with a leftover key from an older enrollment first (by name).
        std::fs::write(msp.join("keystore/aaa_sk"), &stray_key).unwrap();
        std::fs::write(msp.join("keystore/priv_sk"), &key).unwrap();
        for path in [&user, &msp] {
            let id = SigningIdentity::from_msp_dir("Org1MSP", path).unwrap();
            assert_eq!(id.msp_id(), "Org1MSP");
            let sig = id.sign(b"x").unwrap();
            verify_signature(cert.as_bytes(), b"x", &sig).unwrap();
        }
        std::fs::remove_file(msp.join("keystore/priv_sk")).unwrap();
        assert!(matches!(
            SigningIdentity::from_msp_dir("Org1MSP", &user),
            Err(IdentityError::KeyMismatch)
        ));
        assert!(matches!(
            SigningIdentity::from_msp_dir("Org1MSP", dir.path()),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn creator_is_serialized_identity_with_pem() {
        let ca = ca("ca");
        let (cert, _) = leaf("a", &ca, |_| {});
        let id = Identity::new("Org1MSP", cert.as_bytes()).unwrap();
        let sid = SerializedIdentity::decode(id.creator()).unwrap();
        assert_eq!(sid.mspid, "Org1MSP");
        assert_eq!(sid.id_bytes, cert.as_bytes());
        let back = Identity::from_creator(id.creator()).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.creator(), id.creator());
        // DER input is re-encoded as PEM for id_bytes.
        let from_der = Identity::new("Org1MSP", id.cert_der()).unwrap();
        assert!(
            from_der
                .cert_pem()
                .starts_with(b"-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(from_der, id);
        assert!(matches!(
            Identity::new("", cert.as_bytes()),
            Err(IdentityError::EmptyMspId)
        ));
        assert!(Identity::from_creator(b"\xff\xff").is_err());
    }

    #[test]
    fn certificate_chains() {
        let root = ca("ca.org1.example.com");
        let other_root = ca("ca.org2.example.com");
        let inter = intermediate("ica.org1.example.com", &root);
        let (direct, _) = leaf("u1", &root, |_| {});
        let (via_inter, _) = leaf("u2", &inter, |_| {});
        let (by_other, _) = leaf("u3", &other_root, |_| {});

        cert_chains_to(direct.as_bytes(), &[root.pem.as_bytes()]).unwrap();
        cert_chains_to(
            direct.as_bytes(),
            &[other_root.pem.as_bytes(), root.pem.as_bytes()],
        )
        .unwrap();
        cert_chains_to(
            via_inter.as_bytes(),
            &[root.pem.as_bytes(), inter.pem.as_bytes()],
        )
        .unwrap();
        // An intermediate alone is not a trust anchor.
        assert_eq!(
            cert_chains_to(via_inter.as_bytes(), &[inter.pem.as_bytes()]),
            Err(VerifyError::UnknownAuthority)
        );
        assert_eq!(
            cert_chains_to(by_other.as_bytes(), &[root.pem.as_bytes()]),
            Err(VerifyError::UnknownAuthority)
        );

        // Same subject name as the trusted root, different key: signature check fails.
        let impostor = ca("ca.org1.example.com");
        let (forged, _) = leaf("u4", &impostor, |_| {});
        assert_eq!(
            cert_chains_to(forged.as_bytes(), &[root.pem.as_bytes()]),
            Err(VerifyError::BadSignature)
        );

        // Expired leaf.
        let (expired, _) = leaf("u5", &root, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        assert!(matches!(
            cert_chains_to(expired.as_bytes(), &[root.pem.as_bytes()]),
            Err(VerifyError::Expired { .. })
        ));

        // A non-CA certificate cannot issue.
        let fake_ca = issued("not-a-ca", &root, IsCa::ExplicitNoCa);
        let (child, _) = leaf("child", &fake_ca, |_| {});
        assert_eq!(
            cert_chains_to(
                child.as_bytes(),
                &[root.pem.as_bytes(), fake_ca.pem.as_bytes()]
            ),
            Err(VerifyError::NotACa)
        );
    }
}
