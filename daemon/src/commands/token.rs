//! `gxd token issue`: mints a bearer token with the configured signing key.
//!
//! The key: `--kid`, or the one key when only one can sign. HS256 signs with its secret;
//! RS256 and ES256 with their `private_key_file` (permission-checked like every secret
//! file). `iss` and `aud` come from `[auth]`, the role goes into `auth.role_claim`.

use std::process::ExitCode;
use std::time::Duration;

use gxd_api::Role;
use gxd_api::jwt::{JwtAlgorithm, MintRequest, SigningKey, mint};

use crate::config::{AuthKey, Config, ConfigError, read_secret_file};

/// Arguments of `gxd token issue`.
#[derive(Debug, Clone)]
pub struct IssueArgs {
    pub sub: String,
    pub role: String,
    pub ttl: Duration,
    pub kid: Option<String>,
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    ConfigError {
        field: String::new(),
        message: message.into(),
    }
    .into()
}

fn can_sign(k: &AuthKey) -> bool {
    k.key.algorithm == JwtAlgorithm::Hs256 || k.private_key_file.is_some()
}

fn name(k: &AuthKey) -> String {
    k.key
        .kid
        .clone()
        .unwrap_or_else(|| format!("(no kid, {})", k.key.source.display()))
}

/// Mints the token and prints it alone on stdout.
pub fn issue(config: &Config, args: &IssueArgs) -> anyhow::Result<ExitCode> {
    let token = mint_token(config, args)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The token `gxd token issue` prints.
pub fn mint_token(config: &Config, args: &IssueArgs) -> anyhow::Result<String> {
    let auth = config
        .auth
        .as_ref()
        .ok_or_else(|| usage("the configuration has no [auth] section: no key to sign with"))?;
    let role = Role::parse(&args.role)
        .ok_or_else(|| usage(format!("unknown role {:?} (user or admin)", args.role)))?;
    if args.sub.trim().is_empty() {
        return Err(usage("--sub must not be empty"));
    }
    let key = match &args.kid {
        Some(kid) => auth
            .keys
            .iter()
            .find(|k| k.key.kid.as_deref() == Some(kid.as_str()))
            .ok_or_else(|| {
                let kids: Vec<String> = auth.keys.iter().map(name).collect();
                usage(format!(
                    "no key with kid {kid:?} in [auth] (configured: {})",
                    kids.join(", ")
                ))
            })?,
        None => {
            let signers: Vec<&AuthKey> = auth.keys.iter().filter(|k| can_sign(k)).collect();
            match signers.as_slice() {
                [one] => *one,
                [] => {
                    return Err(usage(
                        "no signing key in [auth]: an HS256 key (secret_file) or an RS256/ES256 key with private_key_file is needed",
                    ));
                }
                several => {
                    let kids: Vec<String> = several.iter().map(|k| name(k)).collect();
                    return Err(usage(format!(
                        "several keys can sign; choose one with --kid ({})",
                        kids.join(", ")
                    )));
                }
            }
        }
    };
    let (material, source) = match key.key.algorithm {
        JwtAlgorithm::Hs256 => (key.key.material.clone(), key.key.source.clone()),
        algorithm => {
            let path = key.private_key_file.clone().ok_or_else(|| {
                usage(format!(
                    "key {} ({algorithm}) has no private_key_file: gxd token issue cannot sign with it",
                    name(key)
                ))
            })?;
            let pem = read_secret_file("auth.keys[].private_key_file", &path)?;
            (pem.into_bytes(), path)
        }
    };
    let signing = SigningKey {
        kid: key.key.kid.clone(),
        algorithm: key.key.algorithm,
        material,
        source,
    };
    let token = mint(
        &signing,
        &MintRequest {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            subject: args.sub.clone(),
            role,
            role_claim: auth.role_claim.clone(),
            ttl: args.ttl,
        },
    )
    .map_err(|e| usage(e.message))?;
    // A key pair that does not match (a private key of another public key) is caught here,
    // not by the first request.
    use gxd_api::Authenticator as _;
    auth.authenticator.authenticate(&token).map_err(|e| {
        usage(format!(
            "the token signed with key {} does not verify with the configured keys ({e}); does private_key_file match public_key_file?",
            name(key)
        ))
    })?;
    Ok(token)
}
