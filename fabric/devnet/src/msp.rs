//! The channel's MSPs as the devnet peer sees them: deserializes a `SerializedIdentity`,
//! checks that its X.509 certificate was issued by the named organization's CA and is
//! within its validity period, reads its NodeOU role, and verifies signatures (ECDSA P-256,
//! SHA-256, DER, low-S only — as Fabric's BCCSP). The certificate and signature checks are
//! gxd-fabric's ([`gxd_fabric::identity`]); this module adds the channel's trust anchors,
//! NodeOU roles and a cache of validated identities.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use gxd_fabric::identity::{
    Identity, IdentityError, VerifyError, cert_chains_to_parsed, parse_certificate, public_key_of,
    verify_with_key,
};
use gxd_fabric::proto::msp::SerializedIdentity;
use p256::ecdsa::VerifyingKey;
use prost::Message;
use x509_cert::Certificate;

const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
#[cfg(test)]
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

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
    /// Fabric's `getCertificationChainForBCCSPIdentity`: a CA certificate is no identity.
    #[error(
        "An X509 certificate with Basic Constraint: Certificate Authority equals true cannot be used as an identity"
    )]
    CaCertificate,
    /// Fabric's `validateIdentityOUsV142` (NodeOUs enabled): exactly one role OU.
    #[error(
        "the identity must be a client, a peer, an orderer or an admin identity to be valid, not a combination of them. OUs: {ous:?}, MSP: [{msp_id}]"
    )]
    NodeOu { ous: Vec<String>, msp_id: String },
}

impl MspError {
    /// A message-signature failure from [`verify_with_key`].
    fn from_signature(e: VerifyError) -> Self {
        match e {
            VerifyError::MalformedSignature => MspError::MalformedSignature,
            VerifyError::HighS => MspError::HighS,
            _ => MspError::BadSignature,
        }
    }

    /// A certificate-chain failure from [`cert_chains_to_parsed`] for `msp_id`.
    fn from_chain(e: VerifyError, msp_id: &str) -> Self {
        match e {
            VerifyError::Expired { .. } => MspError::Expired,
            VerifyError::Certificate(reason) => MspError::BadCertificate(reason),
            VerifyError::MalformedSignature => MspError::MalformedSignature,
            _ => MspError::UntrustedCertificate(msp_id.to_owned()),
        }
    }
}

fn bad_certificate(e: impl std::fmt::Display) -> MspError {
    MspError::BadCertificate(e.to_string())
}

/// NodeOU role of an identity (the OU of its certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Client,
    Peer,
    Orderer,
    /// A "member" only: a certificate without a NodeOU role. With NodeOUs enabled (the
    /// devnet's MSPs, as cryptogen's) such a certificate is refused by [`MspManager`], so no
    /// validated identity has this role; it remains for exhaustive matches.
    #[allow(dead_code)]
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

    /// The NodeOU role of a certificate: exactly one of the `client`, `peer`, `admin` and
    /// `orderer` OUs, as Fabric's `validateIdentityOUsV142` demands when NodeOUs are enabled.
    fn of(cert: &Certificate, msp_id: &str) -> Result<Self, MspError> {
        let ous = attr_strings(cert, OID_OU);
        let roles: Vec<Role> = ous
            .iter()
            .filter_map(|ou| match ou.as_str() {
                "admin" => Some(Role::Admin),
                "client" => Some(Role::Client),
                "peer" => Some(Role::Peer),
                "orderer" => Some(Role::Orderer),
                _ => None,
            })
            .collect();
        match roles.as_slice() {
            [role] => Ok(*role),
            _ => Err(MspError::NodeOu {
                ous,
                msp_id: msp_id.to_owned(),
            }),
        }
    }
}

/// `true` when the certificate's basicConstraints extension says `cA: TRUE`.
fn is_ca(cert: &Certificate) -> bool {
    use der::Decode;
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|ext| ext.extn_id == OID_BASIC_CONSTRAINTS)
        .any(|ext| {
            x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                .is_ok_and(|bc| bc.ca)
        })
}

/// The MSP id and NodeOU role of a transaction creator (a serialized `msp.SerializedIdentity`),
/// read without validating the certificate chain: what a chaincode learns of its creator
/// from the signed proposal the peer forwards (the peer validated it before simulating).
pub fn creator_of(serialized: &[u8]) -> Result<(String, Role), MspError> {
    let identity = Identity::from_creator(serialized).map_err(|e| match e {
        IdentityError::Certificate(reason) => MspError::BadCertificate(reason),
        _ => MspError::MalformedIdentity,
    })?;
    let cert = identity.certificate().map_err(bad_certificate)?;
    let msp_id = identity.msp_id().to_owned();
    let role = Role::of(&cert, &msp_id)?;
    Ok((msp_id, role))
}

/// A channel member: an identity whose certificate chains to its organization's CA, with
/// its NodeOU role.
#[derive(Debug, Clone)]
pub struct Member {
    identity: Identity,
    pub role: Role,
    key: VerifyingKey,
    not_before: u64,
    not_after: u64,
}

impl Member {
    /// The MSP id of the member's organization.
    pub fn msp_id(&self) -> &str {
        self.identity.msp_id()
    }

    /// Satisfies `/Channel/Application/Readers` of the devnet channel: an admin, peer or
    /// client of an application organization (each org's Readers policy is
    /// `OR('OrgN.admin', 'OrgN.peer', 'OrgN.client')`; the orderer org is not in the
    /// Application group).
    pub fn is_channel_reader(&self) -> bool {
        self.is_application_org() && matches!(self.role, Role::Admin | Role::Peer | Role::Client)
    }

    /// Satisfies `/Channel/Application/Writers`: an admin or client of an application
    /// organization (`OR('OrgN.admin', 'OrgN.client')`).
    pub fn is_channel_writer(&self) -> bool {
        self.is_application_org() && matches!(self.role, Role::Admin | Role::Client)
    }

    fn is_application_org(&self) -> bool {
        super::crypto::PEER_ORGS
            .iter()
            .any(|o| o.msp_id == self.msp_id())
    }

    /// Subject common name of the certificate.
    #[cfg(test)]
    pub fn common_name(&self) -> Option<String> {
        let cert = self.identity.certificate().ok()?;
        attr_strings(&cert, OID_CN).into_iter().next()
    }

    /// Verifies a DER ECDSA-SHA256 signature over `message`. High-S signatures are refused.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), MspError> {
        verify_with_key(&self.key, message, signature).map_err(MspError::from_signature)
    }
}

#[derive(Debug, Clone)]
struct OrgMsp {
    msp_id: String,
    cas: Vec<Certificate>,
}

/// Validated identities are cached by their serialized bytes (as Fabric's MSP cache does),
/// so the certificate chain is verified once per identity, not once per message.
const CACHE_CAPACITY: usize = 4096;

/// The MSPs of the channel.
#[derive(Debug)]
pub struct MspManager {
    orgs: Vec<OrgMsp>,
    cache: Mutex<HashMap<Vec<u8>, Member>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            let cert = parse_certificate(pem).map_err(bad_certificate)?;
            public_key_of(&cert).map_err(bad_certificate)?;
            match out.iter_mut().find(|o| o.msp_id == msp_id) {
                Some(org) => org.cas.push(cert),
                None => out.push(OrgMsp {
                    msp_id: msp_id.to_owned(),
                    cas: vec![cert],
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
    pub fn deserialize(&self, serialized: &[u8]) -> Result<Member, MspError> {
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

    /// Deserializes and validates a `msp.SerializedIdentity` the way Fabric's committer does
    /// (`creator.Validate()` in `core/common/validation`): the certificate chain is verified
    /// as of the certificate's own notBefore + 1 s (`getValidityOptsForCert`, FAB-3678), so an
    /// identity that has expired since it signed still validates.
    pub fn deserialize_ignoring_expiry(&self, serialized: &[u8]) -> Result<Member, MspError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(serialized)
            .cloned();
        if let Some(id) = cached {
            return Ok(id);
        }
        let id = self.deserialize_at(serialized, None)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(serialized.to_vec(), id.clone());
        Ok(id)
    }

    fn deserialize_uncached(&self, serialized: &[u8]) -> Result<Member, MspError> {
        self.deserialize_at(serialized, Some(SystemTime::now()))
    }

    /// `at`: the time the chain is verified at; `None` = the certificate's notBefore + 1 s.
    fn deserialize_at(
        &self,
        serialized: &[u8],
        at: Option<SystemTime>,
    ) -> Result<Member, MspError> {
        let sid =
            SerializedIdentity::decode(serialized).map_err(|_| MspError::MalformedIdentity)?;
        let org = self
            .orgs
            .iter()
            .find(|o| o.msp_id == sid.mspid)
            .ok_or_else(|| MspError::UnknownMsp(sid.mspid.clone()))?;
        let identity = Identity::from_creator(serialized).map_err(|e| match e {
            IdentityError::Certificate(reason) => MspError::BadCertificate(reason),
            _ => MspError::MalformedIdentity,
        })?;
        let cert = identity.certificate().map_err(bad_certificate)?;
        if is_ca(&cert) {
            return Err(MspError::CaCertificate);
        }
        let at = at.unwrap_or_else(|| {
            let not_before = cert.tbs_certificate.validity.not_before.to_unix_duration();
            UNIX_EPOCH + not_before + std::time::Duration::from_secs(1)
        });
        cert_chains_to_parsed(&cert, &org.cas, at)
            .map_err(|e| MspError::from_chain(e, &org.msp_id))?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Member {
            role: Role::of(&cert, &org.msp_id)?,
            key: public_key_of(&cert).map_err(bad_certificate)?,
            not_before: validity.not_before.to_unix_duration().as_secs(),
            not_after: validity.not_after.to_unix_duration().as_secs(),
            identity,
        })
    }
}
