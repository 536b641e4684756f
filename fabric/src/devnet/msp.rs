//! The channel's MSPs as the devnet peer sees them: deserializes a `SerializedIdentity`,
//! checks that its X.509 certificate was issued by the named organization's CA and is
//! within its validity period, reads its NodeOU role, and verifies signatures (ECDSA P-256,
//! SHA-256, DER, low-S only — as Fabric's BCCSP).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use der::{Decode, DecodePem, Encode};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use prost::Message;
use x509_cert::Certificate;

use crate::proto::msp::SerializedIdentity;

const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Why an identity or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MspError {
    #[error("malformed serialized identity")]
    MalformedIdentity,
    #[error("unknown MSP {0}")]
    UnknownMsp(String),
    #[error("could not parse certificate: {0}")]
    BadCertificate(String),
    #[error("certificate is not issued by a CA of {0}")]
    UntrustedCertificate(String),
    #[error("certificate has expired or is not yet valid")]
    Expired,
    #[error("malformed signature")]
    MalformedSignature,
    #[error("signature is not in low-S form")]
    HighS,
    #[error("signature verification failed")]
    BadSignature,
}

/// NodeOU role of an identity (the OU of its certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Client,
    Peer,
    Orderer,
    /// A certificate without one of the NodeOU OUs (a "member" only).
    Member,
}

impl Role {
    /// Lower-case role name (`admin`, `client`, `peer`, `orderer`, `member`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Peer => "peer",
            Role::Orderer => "orderer",
            Role::Member => "member",
        }
    }
}

/// A validated identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub msp_id: String,
    pub role: Role,
    /// Subject common name of the certificate.
    pub common_name: String,
    key: VerifyingKey,
    not_before: u64,
    not_after: u64,
}

impl Identity {
    /// Verifies a DER ECDSA-SHA256 signature over `message`. High-S signatures are refused.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), MspError> {
        verify_with(&self.key, message, signature)
    }
}

fn verify_with(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> Result<(), MspError> {
    let sig = Signature::from_der(signature).map_err(|_| MspError::MalformedSignature)?;
    if sig.normalize_s().is_some() {
        return Err(MspError::HighS);
    }
    key.verify(message, &sig)
        .map_err(|_| MspError::BadSignature)
}

#[derive(Debug, Clone)]
struct TrustedCa {
    subject_der: Vec<u8>,
    key: VerifyingKey,
}

#[derive(Debug, Clone)]
struct OrgMsp {
    msp_id: String,
    cas: Vec<TrustedCa>,
}

/// Validated identities are cached by their serialized bytes (as Fabric's MSP cache does),
/// so the certificate chain is verified once per identity, not once per message.
const CACHE_CAPACITY: usize = 4096;

/// The MSPs of the channel.
#[derive(Debug)]
pub struct MspManager {
    orgs: Vec<OrgMsp>,
    cache: Mutex<HashMap<Vec<u8>, Identity>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn public_key(cert: &Certificate) -> Result<VerifyingKey, MspError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let bytes = spki.subject_public_key.raw_bytes();
    VerifyingKey::from_sec1_bytes(bytes)
        .map_err(|_| MspError::BadCertificate("public key is not an ECDSA P-256 key".into()))
}

fn parse_pem_or_der(bytes: &[u8]) -> Result<Certificate, MspError> {
    if bytes.starts_with(b"-----") {
        Certificate::from_pem(bytes).map_err(|e| MspError::BadCertificate(e.to_string()))
    } else {
        Certificate::from_der(bytes).map_err(|e| MspError::BadCertificate(e.to_string()))
    }
}

fn attr_strings(cert: &Certificate, oid: ObjectIdentifier) -> Vec<String> {
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != oid {
                continue;
            }
            if let Ok(s) = atv.value.decode_as::<Utf8StringRef<'_>>() {
                out.push(s.as_str().to_owned());
            } else if let Ok(s) = atv.value.decode_as::<PrintableStringRef<'_>>() {
                out.push(s.as_str().to_owned());
            }
        }
    }
    out
}

impl MspManager {
    /// Builds the manager from (MSP id, root CA certificate PEM) pairs.
    pub fn new<'a>(orgs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, MspError> {
        let mut out: Vec<OrgMsp> = Vec::new();
        for (msp_id, pem) in orgs {
            let cert = parse_pem_or_der(pem)?;
            let ca = TrustedCa {
                subject_der: cert
                    .tbs_certificate
                    .subject
                    .to_der()
                    .map_err(|e| MspError::BadCertificate(e.to_string()))?,
                key: public_key(&cert)?,
            };
            match out.iter_mut().find(|o| o.msp_id == msp_id) {
                Some(org) => org.cas.push(ca),
                None => out.push(OrgMsp {
                    msp_id: msp_id.to_owned(),
                    cas: vec![ca],
                }),
            }
        }
        Ok(Self {
            orgs: out,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The MSP ids known to the channel.
    pub fn msp_ids(&self) -> impl Iterator<Item = &str> {
        self.orgs.iter().map(|o| o.msp_id.as_str())
    }

    /// Deserializes and validates a `msp.SerializedIdentity`.
    pub fn deserialize(&self, serialized: &[u8]) -> Result<Identity, MspError> {
        let now = unix_now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(serialized)
            .cloned();
        if let Some(id) = cached {
            if now < id.not_before || now > id.not_after {
                return Err(MspError::Expired);
            }
            return Ok(id);
        }
        let id = self.deserialize_uncached(serialized)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(serialized.to_vec(), id.clone());
        Ok(id)
    }

    fn deserialize_uncached(&self, serialized: &[u8]) -> Result<Identity, MspError> {
        let sid =
            SerializedIdentity::decode(serialized).map_err(|_| MspError::MalformedIdentity)?;
        let org = self
            .orgs
            .iter()
            .find(|o| o.msp_id == sid.mspid)
            .ok_or_else(|| MspError::UnknownMsp(sid.mspid.clone()))?;
        let cert = parse_pem_or_der(&sid.id_bytes)?;
        self.validate_cert(org, &cert)?;
        let ous = attr_strings(&cert, OID_OU);
        let role = if ous.iter().any(|o| o == "admin") {
            Role::Admin
        } else if ous.iter().any(|o| o == "client") {
            Role::Client
        } else if ous.iter().any(|o| o == "peer") {
            Role::Peer
        } else if ous.iter().any(|o| o == "orderer") {
            Role::Orderer
        } else {
            Role::Member
        };
        let common_name = attr_strings(&cert, der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3"))
            .into_iter()
            .next()
            .unwrap_or_default();
        let validity = &cert.tbs_certificate.validity;
        Ok(Identity {
            msp_id: sid.mspid,
            role,
            common_name,
            key: public_key(&cert)?,
            not_before: validity.not_before.to_unix_duration().as_secs(),
            not_after: validity.not_after.to_unix_duration().as_secs(),
        })
    }

    fn validate_cert(&self, org: &OrgMsp, cert: &Certificate) -> Result<(), MspError> {
        let tbs = &cert.tbs_certificate;
        let now = unix_now();
        let not_before = tbs.validity.not_before.to_unix_duration().as_secs();
        let not_after = tbs.validity.not_after.to_unix_duration().as_secs();
        if now < not_before || now > not_after {
            return Err(MspError::Expired);
        }
        if cert.signature_algorithm.oid != OID_ECDSA_SHA256 {
            return Err(MspError::UntrustedCertificate(org.msp_id.clone()));
        }
        let issuer = tbs
            .issuer
            .to_der()
            .map_err(|e| MspError::BadCertificate(e.to_string()))?;
        let tbs_der = tbs
            .to_der()
            .map_err(|e| MspError::BadCertificate(e.to_string()))?;
        let signature = cert
            .signature
            .as_bytes()
            .ok_or_else(|| MspError::BadCertificate("signature has unused bits".into()))?;
        let sig = Signature::from_der(signature).map_err(|_| MspError::MalformedSignature)?;
        for ca in &org.cas {
            if ca.subject_der != issuer {
                continue;
            }
            if ca.key.verify(&tbs_der, &sig).is_ok() {
                return Ok(());
            }
        }
        Err(MspError::UntrustedCertificate(org.msp_id.clone()))
    }
}
