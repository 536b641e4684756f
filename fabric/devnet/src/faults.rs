//! Fault knobs for tests, off by default.
//!
//! In process, a test holds the [`Faults`] handle of a running devnet
//! (`DevnetHandle::faults()`) and installs rules. Out of process, a harness writes the same
//! rules as JSON to `DIR/faults.json` (write a temporary file, then rename it over); the devnet
//! polls the file every 100 ms and replaces its rules whenever the content changes (deleting
//! the file clears them):
//!
//! ```json
//! {"rules": [{"rpc": "submit", "fault": "process_then_drop", "times": 1},
//!            {"rpc": "evaluate", "fault": {"delay": {"delay_ms": 300}}}]}
//! ```
//!
//! `rpc` is one of `evaluate`, `endorse`, `submit`, `commit_status`, `chaincode_events`,
//! `deliver` (all three Deliver variants); `times` (optional) limits how many calls the rule
//! applies to; the first matching rule with calls left wins.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A gRPC method of the devnet that faults can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    Evaluate,
    Endorse,
    Submit,
    CommitStatus,
    ChaincodeEvents,
    Deliver,
}

/// What happens to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Wait this long, then process the call normally.
    Delay { delay_ms: u64 },
    /// Never answer and do not process the call (the client's deadline expires).
    Drop,
    /// Answer UNAVAILABLE without processing the call.
    Unavailable,
    /// Process the call (Submit: the transaction is ordered and commits), then answer
    /// UNAVAILABLE — the reply is lost.
    ProcessThenUnavailable,
    /// Process the call, then never answer (the client's deadline expires).
    ProcessThenDrop,
}

/// One rule: `fault` applies to the next `times` calls of `rpc` (all calls if `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub rpc: Rpc,
    pub fault: Fault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FaultFile {
    #[serde(default)]
    rules: Vec<FaultRule>,
}

/// Shared, runtime-switchable fault rules.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<FaultRule>>>,
}

impl Faults {
    /// Adds a rule (after the existing ones).
    pub fn add(&self, rule: FaultRule) {
        self.lock().push(rule);
    }

    /// Shorthand: `fault` on every call of `rpc` until cleared.
    pub fn always(&self, rpc: Rpc, fault: Fault) {
        self.add(FaultRule {
            rpc,
            fault,
            times: None,
        });
    }

    /// Shorthand: `fault` on the next `times` calls of `rpc`.
    pub fn times(&self, rpc: Rpc, fault: Fault, times: u32) {
        self.add(FaultRule {
            rpc,
            fault,
            times: Some(times),
        });
    }

    /// Replaces all rules.
    pub fn set(&self, rules: Vec<FaultRule>) {
        *self.lock() = rules;
    }

    /// Removes all rules.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The current rules.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        // A poisoned lock only means another thread panicked while holding a Vec; the data
        // is still a valid list of rules.
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the fault for one call of `rpc`, consuming one use of a counted rule.
    pub fn take(&self, rpc: Rpc) -> Option<Fault> {
        let mut rules = self.lock();
        let idx = rules
            .iter()
            .position(|r| r.rpc == rpc && r.times != Some(0))?;
        let rule = &mut rules[idx];
        let fault = rule.fault;
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(idx);
            }
        }
        Some(fault)
    }
}

/// How a handler must behave for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Normal,
    Unavailable,
    Drop,
    ProcessThenUnavailable,
    ProcessThenDrop,
}

/// Applies the pre-processing part of a fault (delays) and says what to do next.
pub async fn before(faults: &Faults, rpc: Rpc) -> Disposition {
    match faults.take(rpc) {
        None => Disposition::Normal,
        Some(Fault::Delay { delay_ms }) => {
            tracing::info!(?rpc, delay_ms, "fault: delaying reply");
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Disposition::Normal
        }
        Some(Fault::Drop) => Disposition::Drop,
        Some(Fault::Unavailable) => Disposition::Unavailable,
        Some(Fault::ProcessThenUnavailable) => Disposition::ProcessThenUnavailable,
        Some(Fault::ProcessThenDrop) => Disposition::ProcessThenDrop,
    }
}

/// Polls `DIR/faults.json` and mirrors it into `faults` until `shutdown`.
pub async fn watch_file(path: PathBuf, faults: Faults, shutdown: CancellationToken) {
    let mut last: Option<Vec<u8>> = None;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let content = read_optional(&path).await;
        if content == last {
            continue;
        }
        match &content {
            None => {
                if last.is_some() {
                    tracing::info!("fault file removed: clearing fault rules");
                    faults.clear();
                }
            }
            Some(bytes) => match serde_json::from_slice::<FaultFile>(bytes) {
                Ok(file) => {
                    tracing::info!(rules = ?file.rules, "fault rules loaded from file");
                    faults.set(file.rules);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring malformed fault file")
                }
            },
        }
        last = content;
    }
}

async fn read_optional(path: &Path) -> Option<Vec<u8>> {
    tokio::fs::read(path).await.ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn counted_rules_expire_and_first_match_wins() {
        let f = Faults::default();
        assert_eq!(f.take(Rpc::Submit), None);
        f.times(Rpc::Submit, Fault::ProcessThenDrop, 2);
        f.always(Rpc::Submit, Fault::Unavailable);
        assert_eq!(f.take(Rpc::Evaluate), None);
        assert_eq!(f.take(Rpc::Submit), Some(Fault::ProcessThenDrop));
        assert_eq!(f.take(Rpc::Submit), Some(Fault::ProcessThenDrop));
        assert_eq!(f.take(Rpc::Submit), Some(Fault::Unavailable));
        assert_eq!(f.take(Rpc::Submit), Some(Fault::Unavailable));
        f.clear();
        assert_eq!(f.take(Rpc::Submit), None);
    }

    #[test]
    fn file_format_parses() {
        let file: FaultFile = serde_json::from_str(
            r#"{"rules":[{"rpc":"submit","fault":"process_then_drop","times":1},
                        {"rpc":"evaluate","fault":{"delay":{"delay_ms":300}}}]}"#,
        )
        .unwrap();
        assert_eq!(file.rules.len(), 2);
        assert_eq!(file.rules[1].fault, Fault::Delay { delay_ms: 300 });
    }

    #[tokio::test]
    async fn file_is_mirrored_into_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.json");
        let faults = Faults::default();
        let token = CancellationToken::new();
        let task = tokio::spawn(watch_file(path.clone(), faults.clone(), token.clone()));
        std::fs::write(
            &path,
            br#"{"rules":[{"rpc":"endorse","fault":"unavailable"}]}"#,
        )
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while faults.rules().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "rules not loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(faults.rules()[0].rpc, Rpc::Endorse);
        std::fs::remove_file(&path).unwrap();
        while !faults.rules().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "rules not cleared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        task.await.unwrap();
    }
}
