//! Limits around every request: body size, request time, and the rate per subject.
//!
//! - **Body size** ([`ApiLimits::max_body_bytes`], default 64 KiB): a larger body is
//!   answered 413 `problem+json` before any handler runs — at once when `Content-Length`
//!   says so, else as soon as the streamed body passes the limit. The body is read here
//!   (bounded), so handlers get it whole.
//! - **Request time** ([`ApiLimits::request_timeout`], default 10 s, reading the body
//!   included): a request not answered in time gets 503 `problem+json` with
//!   `Retry-After: 1`. 503, not 504: gxd is the origin server of these resources, not a
//!   gateway or proxy (RFC 9110 §15.6.5 reserves 504 for those), and a request that does
//!   not finish in time means the server is overloaded for now (§15.6.4), which clients
//!   retry after `Retry-After`. The handler is dropped; a command it had already made
//!   durable stays so, and a retry with the same `Idempotency-Key` returns it. Only the
//!   response head is timed: a server-sent event stream may run longer.
//! - **Rate per subject** ([`RateLimiter`], off by default): a token bucket per
//!   authenticated subject, consulted by the [`Principal`](crate::Principal) extractor
//!   right after the token verifies (once per request); past the burst, 429
//!   `problem+json` with `Retry-After`. Memory is bounded: a bucket idle long enough to
//!   be full again equals a new one and is evicted when room is needed; when every one of
//!   [`DEFAULT_MAX_SUBJECTS`] buckets is in use, a new subject is refused (429) rather
//!   than let through unlimited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::ApiState;
use crate::problem::{ErrorCode, Problem};

/// Default [`ApiLimits::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default [`ApiLimits::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Subjects the rate limiter tracks at most.
pub const DEFAULT_MAX_SUBJECTS: usize = 100_000;
/// `Retry-After` of a timed-out request.
pub const TIMEOUT_RETRY_AFTER_SECONDS: u64 = 1;

/// The request limits of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// `None`: no rate limit.
    pub rate_limit: Option<RateLimit>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            rate_limit: None,
        }
    }
}

/// A token bucket's shape: `per_second` tokens refilled per second, at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by subject, with bounded memory (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_subjects: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter of `limit` (a zero rate or burst is raised to 1).
    pub fn new(limit: RateLimit) -> Self {
        Self {
            rate: f64::from(limit.per_second.max(1)),
            burst: f64::from(limit.burst.max(1)),
            max_subjects: DEFAULT_MAX_SUBJECTS,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// At most `n` subjects tracked at once.
    pub fn with_max_subjects(mut self, n: usize) -> Self {
        self.max_subjects = n.max(1);
        self
    }

    /// Takes one token of `subject`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn check(&self, subject: &str) -> Result<(), u64> {
        self.check_at(subject, Instant::now())
    }

    /// Subjects tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`check`](Self::check) at `now` (tests pass their own clock).
    pub fn check_at(&self, subject: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.lock();
        if !buckets.contains_key(subject) && buckets.len() >= self.max_subjects {
            // Evict the buckets that have refilled completely: they equal a new one.
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
            if buckets.len() >= self.max_subjects {
                return Err(1);
            }
        }
        let bucket = buckets.entry(subject.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / self.rate).ceil();
            // `wait` is in 1..=1 s for any rate >= 1/s; the cast cannot truncate.
            Err((wait as u64).max(1))
        }
    }
}

/// The 429 answer to a subject past its rate limit.
pub(crate) fn rate_limited(retry_after_seconds: u64) -> Problem {
    Problem::new(ErrorCode::RateLimited)
        .with_detail("rate limit exceeded for this caller; retry after Retry-After seconds")
        .with_retry_after(retry_after_seconds)
}

fn too_large(max: usize) -> Response {
    Problem::new(ErrorCode::PayloadTooLarge)
        .with_detail(format!("the request body is larger than {max} bytes"))
        .into_response()
}

/// Reads the body (at most `max_body_bytes`) before the handler; 413 past the limit.
async fn body_limit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let max = state.limits().max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, max).collect().await {
        Ok(collected) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => too_large(max),
        Err(_) => Problem::new(ErrorCode::BadRequest)
            .with_detail("the request body could not be read")
            .into_response(),
    }
}

/// Bounds the time to the response head; 503 with `Retry-After` past it.
async fn request_timeout(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let limit = state.limits().request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::new(ErrorCode::Unavailable)
            .with_detail(format!(
                "the request did not complete within {} ms",
                limit.as_millis()
            ))
            .with_retry_after(TIMEOUT_RETRY_AFTER_SECONDS)
            .into_response(),
    }
}

/// Adds the body-size and timeout layers to every route of `router` added so far (route
/// layers: unknown routes get their 404 without reading the body). Call it after the last
/// route and before the metrics route layer, so their answers are counted. The timeout is
/// outside the body limit, so a slow upload counts against it.
pub fn apply(router: Router<ApiState>, state: &ApiState) -> Router<ApiState> {
    router
        .route_layer(from_fn_with_state(state.clone(), body_limit))
        .route_layer(from_fn_with_state(state.clone(), request_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(RateLimit {
            per_second: 2,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at("alice", t0), Ok(()));
        }
        assert_eq!(l.check_at("alice", t0), Err(1));
        // Another subject has its own bucket.
        assert_eq!(l.check_at("bob", t0), Ok(()));
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check_at("alice", t1), Ok(()));
        assert_eq!(l.check_at("alice", t1), Err(1));
        // Never more than the burst, however long idle.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check_at("alice", t2), Ok(()));
        }
        assert!(l.check_at("alice", t2).is_err());
    }

    #[test]
    fn memory_is_bounded_and_idle_subjects_are_evicted() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 2,
        })
        .with_max_subjects(3);
        let t0 = Instant::now();
        for s in ["a", "b", "c"] {
            assert_eq!(l.check_at(s, t0), Ok(()));
        }
        // Full, nobody idle long enough: a new subject is refused, not let through.
        assert_eq!(l.check_at("d", t0), Err(1));
        assert_eq!(l.tracked(), 3);
        // After 2 s every bucket is full again: they are evicted to make room.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.check_at("d", t1), Ok(()));
        assert_eq!(l.tracked(), 1);
    }
}
