//! Who is calling: the authentication seam of the API.
//!
//! Every `/api/v1` route takes a [`Principal`] (or [`AdminPrincipal`]) extractor. The
//! extractor reads `Authorization: Bearer <token>` and hands the token to the
//! [`Authenticator`] in the [`ApiState`]; the JWT verifier (`jwt.rs`) is the production
//! one. A request without a valid token is answered 401 `problem+json` before the handler
//! runs, so a handler never sees an unauthenticated request. After the token verifies,
//! the extractor takes one token of the subject's rate-limit bucket
//! ([`crate::limits::RateLimiter`], when configured): past it, 429 with `Retry-After`.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::ApiState;
use crate::problem::{ErrorCode, Problem};

/// The caller's role, from the token's role claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A wallet user: sees and moves only its own wallets and data.
    User,
    /// An operator of the organization: sees everything, bootstraps, requeues.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (`user`, `admin`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: the token's subject (the user id) and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why a token was refused. The message is safe to show the caller (it names the failed
/// check, never key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A token that does not verify (signature, algorithm, claims, expiry, ...).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies bearer tokens. Implementations must be cheap to call per request and must
/// not block (no I/O): keys are loaded when the authenticator is built.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> Result<Principal, AuthError>;
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        Problem::new(ErrorCode::Unauthenticated).with_detail(e.to_string())
    }
}

/// The bearer token of a request, if it has one.
fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Invalid(
            "expected `Authorization: Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let Some(auth) = state.authenticator() else {
            // No authenticator configured: the API's authenticated routes are closed.
            return Err(Problem::new(ErrorCode::Unauthenticated)
                .with_detail("authentication is not configured on this server"));
        };
        let principal = auth.authenticate(bearer(parts)?)?;
        // The per-subject rate limit, once per request (the principal is cached below).
        if let Some(limiter) = state.rate_limiter() {
            limiter
                .check(&principal.subject)
                .map_err(crate::limits::rate_limited)?;
        }
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// A [`Principal`] with the admin role; 403 for any other authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal(pub Principal);

impl FromRequestParts<ApiState> for AdminPrincipal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let p = Principal::from_request_parts(parts, state).await?;
        if !p.is_admin() {
            return Err(Problem::new(ErrorCode::Forbidden).with_detail("this needs the admin role"));
        }
        Ok(AdminPrincipal(p))
    }
}
