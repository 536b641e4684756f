//! The JSON body extractor of `/api/v1`: every refusal is a problem+json naming what is
//! wrong — 415 for another media type, 413 past the configured `[api] max_body_bytes` (the
//! router's body limit has already read it within that bound), 400 for malformed
//! JSON, a wrong type, a missing or an unknown field (with the field's path) — so no
//! handler sees a body it did not declare.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::validate::field_problem;
use crate::ApiState;
use crate::problem::{ErrorCode, Problem};

/// A JSON body of type `T` (`#[serde(deny_unknown_fields)]` types refuse extra fields).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Problem> {
        let max = state.limits().max_body_bytes;
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(Problem::new(ErrorCode::UnsupportedMediaType)
                .with_detail("the body must be JSON (Content-Type: application/json)"));
        }
        let bytes = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|e| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if too_large {
                    Problem::new(ErrorCode::PayloadTooLarge)
                        .with_detail(format!("the body must be at most {max} bytes"))
                } else {
                    Problem::new(ErrorCode::BadRequest)
                        .with_detail("the request body could not be read")
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                let message = strip_position(&message);
                let field = field_of(&path, message);
                field_problem(ErrorCode::BadRequest, vec![(field, message.to_owned())])
            }
            _ => Problem::new(ErrorCode::BadRequest)
                .with_detail(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    de.end().map_err(|e| {
        Problem::new(ErrorCode::BadRequest).with_detail(format!("the body is not valid JSON: {e}"))
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field name says more to a client.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// The field a data error is about: the path, or for a missing/unknown field the name in
/// backticks under that path.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (named, path) {
        (Some(name), p) if p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
        (Some(name), "." | "") => name.to_owned(),
        (Some(name), p) => format!("{p}.{name}"),
        (None, "." | "") => "body".to_owned(),
        (None, p) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        amount: String,
        owners: Option<Vec<String>>,
    }

    fn fields(p: &Problem) -> Vec<String> {
        p.extensions["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn data_errors_name_their_field() {
        let p = parse::<T>(br#"{"amount": 5}"#).unwrap_err();
        assert_eq!(p.code, ErrorCode::BadRequest);
        assert_eq!(fields(&p), ["amount"]);
        let p = parse::<T>(br#"{}"#).unwrap_err();
        assert_eq!(fields(&p), ["amount"]);
        let p = parse::<T>(br#"{"amount":"1","extra":1}"#).unwrap_err();
        assert_eq!(fields(&p), ["extra"]);
        let p = parse::<T>(br#"{"amount":"1","owners":["a",2]}"#).unwrap_err();
        assert_eq!(fields(&p), ["owners[1]"]);
        let p = parse::<T>(br#"{"amount":"1"} x"#).unwrap_err();
        assert!(p.extensions.get("errors").is_none());
        let p = parse::<T>(b"[").unwrap_err();
        assert_eq!(p.code, ErrorCode::BadRequest);
    }
}

/// A query string of type `T`; a refusal is a 400 problem (unknown parameter, wrong type).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Problem> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                Problem::new(ErrorCode::BadRequest)
                    .with_detail(format!("invalid query string: {}", e.body_text()))
            })
    }
}

/// A path parameter of type `T`; a refusal (an undecodable segment) is a 400 problem.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| {
                Problem::new(ErrorCode::BadRequest)
                    .with_detail(format!("invalid path: {}", e.body_text()))
            })
    }
}
