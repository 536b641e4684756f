//! Block stream from a peer's Deliver service, with reconnection and hash-chain verification.
//!
//! [`BlockStream::next`] yields committed blocks in order, starting at a given number. It
//! opens the stream with a signed DELIVER_SEEK_INFO envelope (start = Specified(n),
//! stop = Specified(u64::MAX), BLOCK_UNTIL_READY), and when the connection breaks it reconnects
//! by itself — bounded, jittered exponential [`Backoff`], failing over between endpoints — and
//! resumes right after the last block it yielded. Every block is checked: its number is the
//! expected one, its data hash matches its data, and its `previous_hash` equals the header hash
//! of the block before (also across reconnects, and against a caller-supplied hash for the first
//! block). A break in the chain is a [`StreamError::Block`] and ends the stream.
//! Cancellation: pass a `CancellationToken`; `next` then returns `Ok(None)`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::block::{BlockError, ParsedBlock, verify_block_data_hash};
use crate::identity::SigningIdentity;
use crate::proto::{DeliverResponse, common, deliver_client::DeliverClient, deliver_response};
use crate::tls::{CallError, ConnectError, PeerConnector};
use crate::tx::{self, TxError};

/// Largest Deliver message accepted (Fabric's default AbsoluteMaxBytes is 99 MB).
pub const MAX_BLOCK_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the un-jittered delay.
    pub max: Duration,
    /// Growth factor per attempt (≥ 1).
    pub multiplier: f64,
    /// Relative jitter in [0, 1): the delay is scaled by a random factor in [1 − j, 1 + j].
    pub jitter: f64,
    /// Give up after this many consecutive failed attempts (None = never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The un-jittered delay before retry number `attempt` (1-based).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exp);
        let secs = self.initial.as_secs_f64() * factor;
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max }.max(0.0))
    }

    /// The delay before retry number `attempt` with jitter applied from `rng`. Always within
    /// `[base·(1−j), base·(1+j)]`, hence never above `max·(1+j)`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let j = self.jitter.clamp(0.0, 0.99);
        let factor = if j > 0.0 {
            rng.gen_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.0))
    }

    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }
}

/// Where to start and how to behave.
#[derive(Debug, Clone)]
pub struct BlockStreamConfig {
    pub channel: String,
    /// Number of the first block to deliver.
    pub start: u64,
    /// Header hash of block `start − 1` if known (e.g. from a checkpoint log): the first block's
    /// `previous_hash` must equal it.
    pub previous_hash: Option<Vec<u8>>,
    pub backoff: Backoff,
}

impl BlockStreamConfig {
    pub fn new(channel: impl Into<String>, start: u64) -> Self {
        Self {
            channel: channel.into(),
            start,
            previous_hash: None,
            backoff: Backoff::default(),
        }
    }
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A block failed verification (hash chain, data hash, numbering) or could not be decoded.
    #[error("block verification failed: {0}")]
    Block(#[from] BlockError),
    /// The peer refused the request (FORBIDDEN, BAD_REQUEST, NOT_FOUND, permission denied, ...).
    #[error("deliver refused: {0}")]
    Refused(String),
    /// The peer sent something a Deliver stream must not carry.
    #[error("deliver protocol error: {0}")]
    Protocol(String),
    /// Reconnecting failed `attempts` times in a row.
    #[error("deliver unavailable after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("cannot sign the seek request: {0}")]
    Sign(#[from] TxError),
    #[error("invalid connection configuration: {0}")]
    Config(#[from] ConnectError),
    /// `next` was called again after the stream failed.
    #[error("the block stream has failed earlier: {0}")]
    Terminated(String),
}

struct Open {
    responses: tonic::Streaming<DeliverResponse>,
    // Keeps the request side open: Fabric peers read further seek envelopes from it.
    _requests: tokio::sync::mpsc::Sender<common::Envelope>,
}

enum Failure {
    Transient(String),
    Permanent(StreamError),
}

/// A verified, self-reconnecting stream of committed blocks.
pub struct BlockStream {
    connector: Arc<PeerConnector>,
    signer: SigningIdentity,
    config: BlockStreamConfig,
    next: u64,
    previous_hash: Option<Vec<u8>>,
    open: Option<Open>,
    failures: u32,
    cancel: CancellationToken,
    failed: Option<String>,
}

impl std::fmt::Debug for BlockStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStream")
            .field("channel", &self.config.channel)
            .field("next", &self.next)
            .field("connected", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl BlockStream {
    pub fn new(
        connector: Arc<PeerConnector>,
        signer: SigningIdentity,
        config: BlockStreamConfig,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            connector,
            signer,
            next: config.start,
            previous_hash: config.previous_hash.clone(),
            config,
            open: None,
            failures: 0,
            cancel,
            failed: None,
        }
    }

    /// Number of the next block this stream will yield.
    pub fn next_block_number(&self) -> u64 {
        self.next
    }

    /// Header hash of the last block yielded (or the configured starting hash).
    pub fn last_header_hash(&self) -> Option<&[u8]> {
        self.previous_hash.as_deref()
    }

    /// Whether a Deliver stream is currently open.
    pub fn is_connected(&self) -> bool {
        self.open.is_some()
    }

    /// The next verified block; `Ok(None)` once cancelled. Reconnects as needed.
    pub async fn next(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        if let Some(msg) = &self.failed {
            return Err(StreamError::Terminated(msg.clone()));
        }
        match self.next_inner().await {
            Err(e) => {
                self.open = None;
                self.failed = Some(e.to_string());
                Err(e)
            }
            ok => ok,
        }
    }

    async fn next_inner(&mut self) -> Result<Option<ParsedBlock>, StreamError> {
        loop {
            if self.cancel.is_cancelled() {
                self.open = None;
                return Ok(None);
            }
            if self.open.is_none() {
                if self.failures > 0 {
                    let delay = self.config.backoff.delay(self.failures);
                    tokio::select! {
                        () = self.cancel.cancelled() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                match self.connect().await {
                    Ok(open) => self.open = Some(open),
                    Err(Failure::Permanent(e)) => return Err(e),
                    Err(Failure::Transient(msg)) => {
                        self.note_failure(msg)?;
                        continue;
                    }
                }
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            let msg = tokio::select! {
                () = self.cancel.cancelled() => {
                    self.open = None;
                    return Ok(None);
                }
                m = open.responses.message() => m,
            };
            match msg {
                Ok(Some(DeliverResponse {
                    r#type: Some(deliver_response::Type::Block(block)),
                })) => {
                    let parsed = self.verify(block)?;
                    self.failures = 0;
                    self.next = parsed.number.saturating_add(1);
                    self.previous_hash = Some(parsed.header_hash.to_vec());
                    return Ok(Some(parsed));
                }
                Ok(Some(DeliverResponse {
                    r#type: Some(deliver_response::Type::Status(code)),
                })) => {
                    self.open = None;
                    match common::Status::try_from(code) {
                        // SUCCESS ends a bounded seek; ours is unbounded, so the peer closed it: resume.
                        Ok(
                            common::Status::Success
                            | common::Status::ServiceUnavailable
                            | common::Status::InternalServerError,
                        ) => {
                            let name = common::Status::try_from(code)
                                .map(|s| s.as_str_name())
                                .unwrap_or("?");
                            self.note_failure(format!("deliver ended with status {name}"))?;
                        }
                        Ok(other) => {
                            return Err(StreamError::Refused(format!(
                                "status {}",
                                other.as_str_name()
                            )));
                        }
                        Err(_) => return Err(StreamError::Refused(format!("status {code}"))),
                    }
                }
                Ok(Some(other)) => {
                    return Err(StreamError::Protocol(format!(
                        "unexpected deliver response {:?}",
                        variant_name(&other)
                    )));
                }
                Ok(None) => {
                    self.open = None;
                    self.note_failure("deliver stream closed by the peer".into())?;
                }
                Err(status) => {
                    self.open = None;
                    match classify_status(&status) {
                        Failure::Transient(msg) => self.note_failure(msg)?,
                        Failure::Permanent(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn note_failure(&mut self, msg: String) -> Result<(), StreamError> {
        self.failures = self.failures.saturating_add(1);
        tracing::warn!(channel = %self.config.channel, next_block = self.next, attempt = self.failures, error = %msg, "deliver stream interrupted; reconnecting");
        if let Some(max) = self.config.backoff.max_attempts
            && self.failures >= max
        {
            return Err(StreamError::GaveUp {
                attempts: self.failures,
                last: msg,
            });
        }
        Ok(())
    }

    fn verify(&self, block: common::Block) -> Result<ParsedBlock, StreamError> {
        // Chain checks first, on the raw header: a tampered or foreign block is reported as
        // such rather than as an undecodable transaction.
        let header = block.header.as_ref().ok_or(BlockError::MissingHeader)?;
        if header.number != self.next {
            return Err(BlockError::UnexpectedNumber {
                expected: self.next,
                actual: header.number,
            }
            .into());
        }
        verify_block_data_hash(&block)?;
        let parsed = ParsedBlock::parse(block)?;
        if let Some(prev) = &self.previous_hash {
            parsed.verify_follows(prev)?;
        }
        Ok(parsed)
    }

    async fn connect(&self) -> Result<Open, Failure> {
        let envelope = tx::seek_envelope(
            &self.config.channel,
            self.next,
            &self.signer,
            self.connector.tls_cert_hash(),
        )
        .map_err(|e| Failure::Permanent(e.into()))?;
        let result = self
            .connector
            .call(|ch| {
                let envelope = envelope.clone();
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    tx.send(envelope)
                        .await
                        .map_err(|_| tonic::Status::internal("request channel closed"))?;
                    let mut client =
                        DeliverClient::new(ch).max_decoding_message_size(MAX_BLOCK_MESSAGE_BYTES);
                    let resp = client
                        .deliver(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await?;
                    Ok(Open {
                        responses: resp.into_inner(),
                        _requests: tx,
                    })
                }
            })
            .await;
        match result {
            Ok(open) => Ok(open),
            Err(CallError::Connect(e)) => Err(Failure::Transient(e.to_string())),
            Err(CallError::Status { status, .. }) => Err(classify_status(&status)),
        }
    }
}

/// The channel's ledger height as the peer reports it: one DeliverFiltered request for
/// the newest block (filtered, so a few bytes whatever the block's size), whose number + 1
/// is the height. Errors as [`StreamError`]; the caller bounds it with a timeout.
pub async fn ledger_height(
    connector: &PeerConnector,
    signer: &SigningIdentity,
    channel: &str,
) -> Result<u64, StreamError> {
    let envelope = tx::seek_newest_envelope(channel, signer, connector.tls_cert_hash())?;
    let result = connector
        .call(|ch| {
            let envelope = envelope.clone();
            async move {
                let mut client =
                    DeliverClient::new(ch).max_decoding_message_size(MAX_BLOCK_MESSAGE_BYTES);
                let mut responses = client
                    .deliver_filtered(tokio_stream::iter([envelope]))
                    .await?
                    .into_inner();
                Ok(match responses.message().await?.and_then(|r| r.r#type) {
                    Some(deliver_response::Type::FilteredBlock(b)) => Ok(b.number),
                    Some(deliver_response::Type::Status(code)) => {
                        Err(format!("deliver status {code}"))
                    }
                    Some(_) => Err("unexpected deliver response".to_owned()),
                    None => Err("deliver stream ended without a block".to_owned()),
                })
            }
        })
        .await;
    match result {
        Ok(Ok(number)) => Ok(number.saturating_add(1)),
        Ok(Err(msg)) => Err(StreamError::Refused(msg)),
        Err(CallError::Connect(e)) => Err(StreamError::Config(e)),
        Err(CallError::Status { status, .. }) => Err(StreamError::Refused(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

fn classify_status(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let msg = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::NotFound
        | Code::Unimplemented => Failure::Permanent(StreamError::Refused(msg)),
        _ => Failure::Transient(msg),
    }
}

fn variant_name(r: &DeliverResponse) -> &'static str {
    match &r.r#type {
        Some(deliver_response::Type::Status(_)) => "status",
        Some(deliver_response::Type::Block(_)) => "block",
        Some(deliver_response::Type::FilteredBlock(_)) => "filtered_block",
        Some(deliver_response::Type::BlockAndPrivateData(_)) => "block_and_private_data",
        None => "empty",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn backoff_delay_is_bounded(
            initial_ms in 1u64..5_000,
            max_ms in 1u64..120_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..0.9,
            attempt in 1u32..10_000,
            seed in any::<u64>(),
        ) {
            let b = Backoff {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                multiplier,
                jitter,
                max_attempts: None,
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let base = b.base_delay(attempt);
            prop_assert!(base <= b.max);
            let d = b.delay_with(attempt, &mut rng).as_secs_f64();
            let base = base.as_secs_f64();
            prop_assert!(d >= base * (1.0 - jitter) - 1e-9);
            prop_assert!(d <= base * (1.0 + jitter) + 1e-9);
            prop_assert!(d <= b.max.as_secs_f64() * (1.0 + jitter) + 1e-9);
            // Monotone before jitter.
            prop_assert!(b.base_delay(attempt + 1).as_secs_f64() + 1e-12 >= base);
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(100), Duration::from_secs(10));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }
}
