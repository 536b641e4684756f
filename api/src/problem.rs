//! RFC 9457 problem details (`application/problem+json`), and the one mapping from
//! [`ErrorCode`] to HTTP status. Every error response of the API goes through here,
//! storage errors included: [`ErrorCode::from`] a [`gxd_storage::ErrorKind`] and
//! [`Problem::from`] a [`StorageError`] are the only places a storage error becomes an
//! HTTP answer, so no handler maps them ad hoc.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gxd_storage::pg::projection::ProjectionError;
use gxd_storage::{ErrorKind, StorageError};
use serde::Serialize;

/// `Retry-After` of a 503 for a storage error that may clear by itself (a busy or full
/// disk, a lock held by a starting process).
pub const STORAGE_RETRY_AFTER_SECONDS: u64 = 1;

/// Media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every error the API can answer with. The HTTP status, the `type` URI and the
/// title derive from the code, here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed (syntax, encoding).
    BadRequest,
    /// The request is well-formed but a field is invalid.
    Validation,
    /// No or invalid credentials.
    Unauthenticated,
    /// Authenticated, but not allowed.
    Forbidden,
    /// No such resource (or route).
    NotFound,
    /// The route exists, but not with this method.
    MethodNotAllowed,
    /// Conflicts with the current state (e.g. a reused id with another payload).
    Conflict,
    /// The request body is too large.
    PayloadTooLarge,
    /// The body's media type is not supported.
    UnsupportedMediaType,
    /// The caller exceeded its rate limit; retry after `Retry-After`.
    RateLimited,
    /// A dependency is not available (database down, disk full); retry later.
    Unavailable,
    /// A dependency did not answer in time.
    Timeout,
    /// A bug or an unexpected failure; details are in the logs, not the response.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code, also the last segment of the `type` URI.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Validation => "validation-failed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not-found",
            ErrorCode::MethodNotAllowed => "method-not-allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload-too-large",
            ErrorCode::UnsupportedMediaType => "unsupported-media-type",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// Short human-readable summary (the same for every occurrence).
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Validation => "Validation failed",
            ErrorCode::Unauthenticated => "Authentication required",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::Unavailable => "Service unavailable",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Internal => "Internal error",
        }
    }

    /// The problem `type` URI (RFC 9457 §3.1.1): a URN, not meant to be dereferenced.
    pub fn type_uri(self) -> String {
        format!("urn:gxd:problem:{}", self.as_str())
    }
}

/// A problem details response.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub code: ErrorCode,
    /// Explanation specific to this occurrence. Never internal details for `Internal`.
    pub detail: Option<String>,
    /// URI reference of this occurrence (usually the request path).
    pub instance: Option<String>,
    /// Extension members (RFC 9457 §3.2), e.g. `errors` for field validation.
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// `Retry-After` header (seconds), for 503 and 429.
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            detail: None,
            instance: None,
            extensions: serde_json::Map::new(),
            retry_after_seconds: None,
        }
    }

    /// Sets the `Retry-After` header.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds an extension member; the standard member names are reserved.
    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        if !matches!(
            name,
            "type" | "title" | "status" | "detail" | "instance" | "code"
        ) {
            self.extensions.insert(name.to_owned(), value);
        }
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            type_: String,
            title: &'static str,
            status: u16,
            code: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            instance: Option<&'a str>,
            #[serde(flatten)]
            extensions: &'a serde_json::Map<String, serde_json::Value>,
        }
        serde_json::to_value(Body {
            type_: self.code.type_uri(),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            code: self.code.as_str(),
            detail: self.detail.as_deref(),
            instance: self.instance.as_deref(),
            extensions: &self.extensions,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

impl From<ErrorKind> for ErrorCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::Conflict => ErrorCode::Conflict,
            ErrorKind::InvalidInput => ErrorCode::Validation,
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            ErrorKind::Corrupt => ErrorCode::Internal,
        }
    }
}

impl From<&StorageError> for Problem {
    /// The storage error's own message is the detail, except for corruption: that is an
    /// operator's matter (logged where it is handled), and the client learns only
    /// "internal". Unavailable storage answers 503 with `Retry-After`.
    fn from(error: &StorageError) -> Self {
        let code = ErrorCode::from(error.kind());
        let problem = Problem::new(code);
        match code {
            ErrorCode::Internal => problem,
            ErrorCode::Unavailable => problem
                .with_detail(error.to_string())
                .with_retry_after(STORAGE_RETRY_AFTER_SECONDS),
            _ => problem.with_detail(error.to_string()),
        }
    }
}

impl From<&ProjectionError> for Problem {
    /// A read-model failure. Refused input is the caller's (422); a data error the
    /// database raised is a bug (500, details in the logs); anything else — no connection,
    /// a restarting server — may clear by itself (503 with `Retry-After`).
    fn from(error: &ProjectionError) -> Self {
        match error {
            ProjectionError::InvalidInput(m) => Problem::new(ErrorCode::Validation).with_detail(m),
            e if e.is_data_error() => Problem::new(ErrorCode::Internal),
            _ => Problem::new(ErrorCode::Unavailable)
                .with_detail("the read models are unavailable")
                .with_retry_after(STORAGE_RETRY_AFTER_SECONDS),
        }
    }
}

impl From<ErrorCode> for Problem {
    fn from(code: ErrorCode) -> Self {
        Problem::new(code)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.code.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_statuses_once() {
        assert_eq!(ErrorCode::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ErrorCode::Validation.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ErrorCode::Unavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorCode::Internal.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn body_has_rfc9457_members() {
        let p = Problem::new(ErrorCode::NotFound)
            .with_detail("no route for GET /nope")
            .with_instance("/nope")
            .with_extension("status", serde_json::json!(999))
            .with_extension("hint", serde_json::json!("see /healthz"));
        let b = p.body();
        assert_eq!(b["type"], "urn:gxd:problem:not-found");
        assert_eq!(b["title"], "Not found");
        assert_eq!(b["status"], 404);
        assert_eq!(b["code"], "not-found");
        assert_eq!(b["detail"], "no route for GET /nope");
        assert_eq!(b["instance"], "/nope");
        assert_eq!(b["hint"], "see /healthz");
    }

    #[test]
    fn storage_errors_map_once_by_kind() {
        let not_found = StorageError::NotFound {
            what: "command",
            id: "0190".into(),
        };
        let p = Problem::from(&not_found);
        assert_eq!(p.code, ErrorCode::NotFound);
        assert_eq!(p.detail.as_deref(), Some(not_found.to_string().as_str()));
        assert_eq!(p.retry_after_seconds, None);

        let invalid = StorageError::InvalidInput("partition key must not be empty".into());
        assert_eq!(
            Problem::from(&invalid).code.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );

        for (kind, status) in [
            (ErrorKind::NotFound, StatusCode::NOT_FOUND),
            (ErrorKind::Conflict, StatusCode::CONFLICT),
            (ErrorKind::InvalidInput, StatusCode::UNPROCESSABLE_ENTITY),
            (ErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (ErrorKind::Corrupt, StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            assert_eq!(ErrorCode::from(kind).status(), status, "{kind:?}");
        }
    }

    #[test]
    fn retry_after_is_a_header() {
        let r = Problem::new(ErrorCode::Unavailable)
            .with_retry_after(STORAGE_RETRY_AFTER_SECONDS)
            .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn response_has_problem_media_type() {
        let r = Problem::new(ErrorCode::Conflict).into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
