//! Field validation before anything is enqueued: 422 problems naming each field at fault
//! (`errors: [{field, message}]`). The rules are the GX chaincode's (fabric/devnet's
//! `gx` module), so a request that passes here is not refused by the ledger for its form.

use serde_json::json;

use crate::problem::{ErrorCode, Problem};

/// Longest id (bytes): the chaincode's limit.
pub const MAX_ID_LEN: usize = 128;
/// Longest memo (characters): the chaincode's limit.
pub const MAX_MEMO_CHARS: usize = 512;
/// Most owners of a multisig wallet: the chaincode's limit.
pub const MAX_OWNERS: usize = 32;
/// Largest profile, as compact JSON (bytes).
pub const MAX_PROFILE_BYTES: usize = 16 * 1024;
/// Longest idempotency key (bytes; the outbox's limit is 256).
pub const MAX_REQUEST_ID_LEN: usize = 200;

/// Field errors collected for one request.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<(String, String)>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }

    /// Records `result`'s error against `field`.
    pub fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(m) = result {
            self.add(field, m);
        }
    }

    /// `Ok` when nothing was recorded, else the 422 problem.
    pub fn into_result(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(field_problem(ErrorCode::Validation, self.0))
        }
    }
}

/// A problem naming the fields at fault.
pub fn field_problem(code: ErrorCode, errors: Vec<(String, String)>) -> Problem {
    let detail = errors
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let list: Vec<_> = errors
        .into_iter()
        .map(|(field, message)| json!({ "field": field, "message": message }))
        .collect();
    Problem::new(code)
        .with_detail(detail)
        .with_extension("errors", serde_json::Value::Array(list))
}

/// One invalid field: 422.
pub fn invalid(field: &str, message: impl Into<String>) -> Problem {
    field_problem(
        ErrorCode::Validation,
        vec![(field.to_owned(), message.into())],
    )
}

/// An id: 1 to 128 of letters, digits and `- _ . : @`.
pub fn id(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return Err("may contain only letters, digits and - _ . : @".to_owned());
    }
    Ok(())
}

/// A positive amount: a canonical string of digits (no sign, decimals, exponent or
/// leading zeros) of at most 2^128 − 1 (the chaincode's `u128`; within NUMERIC(78,0)).
pub fn amount(value: &str) -> Result<u128, String> {
    if value.is_empty() {
        return Err("must be a positive integer as a string of digits".to_owned());
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "must be a string of digits only (no sign, decimal point, exponent or spaces)"
                .to_owned(),
        );
    }
    if value.len() > 1 && value.starts_with('0') {
        return Err("must not have leading zeros".to_owned());
    }
    let n: u128 = value
        .parse()
        .map_err(|_| format!("must be at most {}", u128::MAX))?;
    if n == 0 {
        return Err("must be greater than zero".to_owned());
    }
    Ok(n)
}

/// A memo: at most 512 characters, no control characters other than none.
pub fn memo(value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_MEMO_CHARS {
        return Err(format!("must be at most {MAX_MEMO_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A country: ISO 3166-1 alpha-2 (two upper-case letters).
pub fn country(value: &str) -> Result<(), String> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err("must be an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. DE)".to_owned())
    }
}

/// A profile's values, as PostgreSQL's `jsonb` keeps them exactly (so a stored profile
/// compares equal to a repeated request's and its commitment stays verifiable): no NUL
/// characters in keys or strings (`jsonb` refuses them), numbers only as integers (`jsonb`
/// rewrites the text of other numbers; send decimals as strings).
pub fn profile(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => {
            Err("must not contain NUL characters".to_owned())
        }
        serde_json::Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            Err("numbers must be integers (send decimals as strings)".to_owned())
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(profile),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err("keys must not contain NUL characters".to_owned());
            }
            profile(v)
        }),
        _ => Ok(()),
    }
}

/// An idempotency key: 1 to 200 visible ASCII characters.
pub fn request_id(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_REQUEST_ID_LEN {
        return Err(format!("must be 1 to {MAX_REQUEST_ID_LEN} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may contain only visible ASCII characters".to_owned());
    }
    Ok(())
}

/// A page size: 1 to 200, default 50.
pub fn limit(value: Option<u32>) -> Result<u32, Problem> {
    match value {
        None => Ok(50),
        Some(n @ 1..=200) => Ok(n),
        Some(_) => Err(invalid("limit", "must be between 1 and 200")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_canonical_positive_u128s() {
        assert_eq!(amount("1"), Ok(1));
        assert_eq!(amount(&u128::MAX.to_string()), Ok(u128::MAX));
        for bad in [
            "",
            "0",
            "00",
            "01",
            "-1",
            "+1",
            "1.0",
            "1e3",
            " 1",
            "1 ",
            "0x10",
            "١",
            "340282366920938463463374607431768211456",
        ] {
            assert!(amount(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_follow_the_chaincode() {
        assert!(id("alice-1_x.y:z@org").is_ok());
        assert!(id(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "ä", "a/b", &"a".repeat(129)] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
    }
}
