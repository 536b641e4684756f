//! JWT bearer tokens: [`JwtAuthenticator`], the production [`Authenticator`], and
//! [`mint`], which `gxd token issue` uses.
//!
//! - Algorithms: HS256 (a shared secret), RS256 and ES256 (P-256) (public keys from PEM).
//!   Each configured key is bound to its one algorithm: a token whose header names
//!   another algorithm than its key's is refused before any signature check, so neither
//!   `alg: none` (not even parsed) nor algorithm confusion (an HS256 token "signed" with
//!   an RSA key's public PEM as HMAC secret) can pass.
//! - Key selection: the header's `kid` names the key (rotation: configure the old and the
//!   new key side by side); a token without `kid` is accepted only when exactly one key is
//!   configured. An unknown `kid` is refused.
//! - Claims: `exp` is required; `exp` and `nbf` are checked with the configured leeway;
//!   `iss` and `aud` must match the configured issuer and audience (both required in the
//!   token); `sub` must be a non-empty string — it is the user id.
//! - Role: the configured claim (default `role`, a top-level claim name) holds `"user"`
//!   or `"admin"`, or an array of those strings; in an array, `admin` wins when present.
//!   A missing claim, an empty array or any other value is refused (never a default role).
//!
//! Keys are parsed once, in [`JwtAuthenticator::new`]; verifying is CPU only (no I/O).
//! Verification is `jsonwebtoken` 9 over `ring`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::auth::{AuthError, Authenticator, Principal, Role};

/// Default leeway on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default name of the role claim.
pub const DEFAULT_ROLE_CLAIM: &str = "role";
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Registered claims (RFC 7519 §4.1), which cannot hold the role.
const RESERVED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The algorithms a key can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

impl JwtAlgorithm {
    /// `HS256`, `RS256`, `ES256` (as in a JWT header).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    /// The algorithm named `s` (exactly `HS256`, `RS256` or `ES256`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HS256" => Some(JwtAlgorithm::Hs256),
            "RS256" => Some(JwtAlgorithm::Rs256),
            "ES256" => Some(JwtAlgorithm::Es256),
            _ => None,
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verification key, as loaded from its file: the HS256 secret, or the PEM public key
/// (SPKI `PUBLIC KEY`; for RS256 also PKCS#1 `RSA PUBLIC KEY`).
#[derive(Clone)]
pub struct JwtKey {
    pub kid: Option<String>,
    pub algorithm: JwtAlgorithm,
    /// The secret (HS256) or the PEM text (RS256, ES256).
    pub material: Vec<u8>,
    /// The file it came from, for error messages.
    pub source: PathBuf,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("material", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// What [`JwtAuthenticator::new`] needs.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub role_claim: String,
    pub keys: Vec<JwtKey>,
}

/// A key or setting that cannot be used; names the key's file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JwtConfigError {
    pub message: String,
}

impl JwtConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

struct LoadedKey {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies JWT bearer tokens against the configured keys (see the module docs).
pub struct JwtAuthenticator {
    keys: Vec<LoadedKey>,
    /// Index into `keys` by kid.
    by_kid: HashMap<String, usize>,
    role_claim: String,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("JwtAuthenticator")
            .field("kids", &kids)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

fn describe(key: &JwtKey) -> String {
    match &key.kid {
        Some(kid) => format!("key {kid:?} ({})", key.source.display()),
        None => format!("key {}", key.source.display()),
    }
}

impl JwtAuthenticator {
    /// Parses every key once. Errors name the key's file.
    pub fn new(settings: &JwtSettings) -> Result<Self, JwtConfigError> {
        if settings.issuer.trim().is_empty() {
            return Err(JwtConfigError::new("the issuer must not be empty"));
        }
        if settings.audience.trim().is_empty() {
            return Err(JwtConfigError::new("the audience must not be empty"));
        }
        if settings.role_claim.trim().is_empty() {
            return Err(JwtConfigError::new("the role claim must not be empty"));
        }
        if RESERVED_CLAIMS.contains(&settings.role_claim.as_str()) {
            return Err(JwtConfigError::new(format!(
                "the role claim cannot be the registered claim {:?}",
                settings.role_claim
            )));
        }
        if settings.keys.is_empty() {
            return Err(JwtConfigError::new("no keys configured"));
        }
        let several = settings.keys.len() > 1;
        let mut keys = Vec::with_capacity(settings.keys.len());
        let mut by_kid = HashMap::new();
        for key in &settings.keys {
            let mut validation = Validation::new(key.algorithm.jsonwebtoken());
            validation.leeway = settings.leeway.as_secs();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_issuer(&[settings.issuer.as_str()]);
            validation.set_audience(&[settings.audience.as_str()]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            match &key.kid {
                Some(kid) if kid.is_empty() => {
                    return Err(JwtConfigError::new(format!(
                        "{}: an empty kid",
                        describe(key)
                    )));
                }
                Some(kid) if by_kid.insert(kid.clone(), keys.len()).is_some() => {
                    return Err(JwtConfigError::new(format!(
                        "kid {kid:?} is configured twice"
                    )));
                }
                Some(_) => {}
                None if several => {
                    return Err(JwtConfigError::new(format!(
                        "{}: every key needs a kid when several keys are configured",
                        describe(key)
                    )));
                }
                None => {}
            }
            keys.push(LoadedKey {
                algorithm: key.algorithm,
                key: decoding_key(key)?,
                validation,
            });
        }
        Ok(Self {
            keys,
            by_kid,
            role_claim: settings.role_claim.clone(),
        })
    }

    /// The configured key ids, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::Invalid(
                "malformed token header, or an algorithm other than HS256, RS256, ES256".into(),
            )
        })?;
        let key = match &header.kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .and_then(|&i| self.keys.get(i))
                .ok_or_else(|| AuthError::Invalid(format!("unknown key id (kid) {kid:?}")))?,
            // Without a kid: only when exactly one key is configured.
            None => match self.keys.as_slice() {
                [only] => only,
                _ => {
                    return Err(AuthError::Invalid(
                        "the token has no key id (kid) and several keys are configured".into(),
                    ));
                }
            },
        };
        // The key's one algorithm, before anything else is looked at.
        if header.alg != key.algorithm.jsonwebtoken() {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted for this key (it is {})",
                header.alg, key.algorithm
            )));
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &key.validation,
        )
        .map_err(|e| AuthError::Invalid(reason(e.kind())))?;
        let claims = data.claims;
        let subject = match claims.get("sub") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return Err(AuthError::Invalid(
                    "the sub claim must be a non-empty string".into(),
                ));
            }
        };
        let role = role_of(claims.get(&self.role_claim), &self.role_claim)?;
        Ok(Principal { subject, role })
    }
}

fn decoding_key(key: &JwtKey) -> Result<DecodingKey, JwtConfigError> {
    match key.algorithm {
        JwtAlgorithm::Hs256 => {
            if key.material.len() < MIN_HS256_SECRET_BYTES {
                return Err(JwtConfigError::new(format!(
                    "{}: an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes",
                    describe(key)
                )));
            }
            Ok(DecodingKey::from_secret(&key.material))
        }
        JwtAlgorithm::Rs256 => {
            check_public_pem(key, &[RSA_ENCRYPTION_OID], "RSA PUBLIC KEY")?;
            rsa_decoding_key(key)
        }
        JwtAlgorithm::Es256 => {
            check_public_pem(key, &[EC_PUBLIC_KEY_OID, PRIME256V1_OID], "")?;
            ec_decoding_key(key)
        }
    }
}

/// DER of `id-ecPublicKey` (1.2.840.10045.2.1), `prime256v1` (1.2.840.10045.3.1.7) and
/// `rsaEncryption` (1.2.840.113549.1.1.1), tag and length included.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const RSA_ENCRYPTION_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// Checks, before `jsonwebtoken` parses it, that the PEM is a public key of the key's
/// kind: a `PUBLIC KEY` (SPKI) naming every OID in `oids` (so a P-384 key cannot pass as
/// ES256, where it would refuse every token at run time), or a block labelled
/// `alt_label` (PKCS#1 `RSA PUBLIC KEY`).
fn check_public_pem(key: &JwtKey, oids: &[&[u8]], alt_label: &str) -> Result<(), JwtConfigError> {
    use base64::Engine as _;
    let fail = |why: &str| {
        JwtConfigError::new(format!(
            "{}: not a {} public key in PEM ({why})",
            describe(key),
            if key.algorithm == JwtAlgorithm::Es256 {
                "P-256"
            } else {
                "RSA"
            }
        ))
    };
    let text = std::str::from_utf8(&key.material).map_err(|_| fail("not text"))?;
    let begin = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| fail("no -----BEGIN line"))?;
    if !alt_label.is_empty() && begin == alt_label {
        return Ok(());
    }
    if begin != "PUBLIC KEY" {
        return Err(fail(&format!("a {begin:?} block; expected \"PUBLIC KEY\"")));
    }
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| fail("bad base64"))?;
    if oids
        .iter()
        .all(|oid| der.windows(oid.len()).any(|w| w == *oid))
    {
        Ok(())
    } else {
        Err(fail("another key type or curve"))
    }
}

fn rsa_decoding_key(key: &JwtKey) -> Result<DecodingKey, JwtConfigError> {
    DecodingKey::from_rsa_pem(&key.material).map_err(|e| {
        JwtConfigError::new(format!(
            "{}: not an RSA public key in PEM ({e})",
            describe(key)
        ))
    })
}

fn ec_decoding_key(key: &JwtKey) -> Result<DecodingKey, JwtConfigError> {
    DecodingKey::from_ec_pem(&key.material).map_err(|e| {
        JwtConfigError::new(format!(
            "{}: not a P-256 public key in PEM ({e})",
            describe(key)
        ))
    })
}

/// Why `jsonwebtoken` refused a token, in words safe to show the caller.
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the algorithm is not accepted for this key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            "the signature does not verify".into()
        }
        _ => "malformed token".into(),
    }
}

fn role_of(value: Option<&serde_json::Value>, claim: &str) -> Result<Role, AuthError> {
    let unknown = |v: &str| AuthError::Invalid(format!("unknown role {v:?} in the {claim} claim"));
    match value {
        Some(serde_json::Value::String(s)) => Role::parse(s).ok_or_else(|| unknown(s)),
        Some(serde_json::Value::Array(items)) if !items.is_empty() => {
            let mut role = Role::User;
            for item in items {
                let serde_json::Value::String(s) = item else {
                    return Err(AuthError::Invalid(format!(
                        "the {claim} claim must hold role names (strings)"
                    )));
                };
                if Role::parse(s).ok_or_else(|| unknown(s))? == Role::Admin {
                    role = Role::Admin;
                }
            }
            Ok(role)
        }
        None => Err(AuthError::Invalid(format!("the {claim} claim is missing"))),
        Some(_) => Err(AuthError::Invalid(format!(
            "the {claim} claim must be \"user\", \"admin\" or an array of them"
        ))),
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token)
    }
}

/// A signing key for [`mint`]: the HS256 secret, or the PEM private key (RS256: PKCS#1 or
/// PKCS#8; ES256: PKCS#8).
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    pub algorithm: JwtAlgorithm,
    pub material: Vec<u8>,
    pub source: PathBuf,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The claims of a token to mint.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub role: Role,
    pub role_claim: String,
    pub ttl: Duration,
}

/// Signs a token: `iss`, `aud`, `sub`, the role claim, `iat` = `nbf` = now, `exp` = now + ttl.
pub fn mint(key: &SigningKey, request: &MintRequest) -> Result<String, JwtConfigError> {
    let source = key.source.display();
    let encoding = match key.algorithm {
        JwtAlgorithm::Hs256 => {
            if key.material.len() < MIN_HS256_SECRET_BYTES {
                return Err(JwtConfigError::new(format!(
                    "{source}: an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
                )));
            }
            EncodingKey::from_secret(&key.material)
        }
        JwtAlgorithm::Rs256 => EncodingKey::from_rsa_pem(&key.material).map_err(|e| {
            JwtConfigError::new(format!("{source}: not an RSA private key in PEM ({e})"))
        })?,
        JwtAlgorithm::Es256 => EncodingKey::from_ec_pem(&key.material).map_err(|e| {
            JwtConfigError::new(format!(
                "{source}: not a P-256 private key in PKCS#8 PEM ({e})"
            ))
        })?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| JwtConfigError::new("the system clock is before 1970"))?
        .as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), request.issuer.clone().into());
    claims.insert("aud".into(), request.audience.clone().into());
    claims.insert("sub".into(), request.subject.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert(
        "exp".into(),
        now.saturating_add(request.ttl.as_secs()).into(),
    );
    claims.insert(request.role_claim.clone(), request.role.as_str().into());
    let mut header = Header::new(key.algorithm.jsonwebtoken());
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, &claims, &encoding)
        .map_err(|e| JwtConfigError::new(format!("{source}: cannot sign with this key ({e})")))
}
