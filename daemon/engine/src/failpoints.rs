//! Kill points for fault-injection tests (feature `failpoints`; never in a release build).
//!
//! The engine marks each durability step with [`kill_point!`](crate::kill_point): after
//! endorsement (before the prepared transaction is stored), after `mark_prepared` (before
//! the submission), after the submission (before it is recorded and its commit status
//! asked), between a VALID commit status and `mark_committed`, and in the projector between
//! the PostgreSQL commit of a block and its checkpoint-log append. Without the feature the
//! macro expands to nothing.
//!
//! With the feature, the binary configures the points from the `FAILPOINTS` environment
//! variable at start ([`configure_from_env`]), in the `fail` crate's syntax
//! (`name=actions;name=actions`, e.g. `submitter::after_endorse=3*off->return`). The
//! `return` action **kills the process** with SIGKILL, raised on itself — no destructor
//! runs, nothing is flushed, exactly as a `kill -9` from outside at that instant; other
//! actions (`off`, `sleep(ms)`, `pause`, `print`, `panic`) are the `fail` crate's. Counts
//! and probabilities (`N*`, `P%`) make a point fire on the Nth hit, mid-load. Before dying
//! the process writes one line, `failpoint <name>: killing the process`, to stderr
//! (unbuffered), so a test can tell which point fired.

/// The kill points, by name (what `FAILPOINTS` configures).
pub const POINTS: [&str; 5] = [
    AFTER_ENDORSE,
    AFTER_PREPARE,
    AFTER_SUBMIT,
    BEFORE_MARK_COMMITTED,
    PROJECTOR_AFTER_PG_COMMIT,
];
/// Endorsed; the prepared transaction is not stored yet.
pub const AFTER_ENDORSE: &str = "submitter::after_endorse";
/// PREPARED on disk; nothing submitted yet.
pub const AFTER_PREPARE: &str = "submitter::after_prepare";
/// Submitted (the orderer took it); not recorded as SUBMITTED, commit status not asked.
pub const AFTER_SUBMIT: &str = "submitter::after_submit";
/// The peer said VALID; `mark_committed` not written yet.
pub const BEFORE_MARK_COMMITTED: &str = "submitter::before_mark_committed";
/// A block committed to PostgreSQL (with its position); not in the checkpoint log yet.
pub const PROJECTOR_AFTER_PG_COMMIT: &str = "projector::after_pg_commit";

/// A kill point (see the module documentation): nothing without the `failpoints` feature;
/// with it, the `fail` point `$name`, whose `return` action kills the process.
#[macro_export]
macro_rules! kill_point {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| $crate::failpoints::kill_self($name));
    };
}

/// Configures fail points from `FAILPOINTS` (`name=actions`, `;`-separated), if set.
#[cfg(feature = "failpoints")]
pub fn configure_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS: {entry:?} is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
        eprintln!("failpoint {name}: configured {actions:?}");
    }
    Ok(())
}

/// Dies at once, as `kill -9` would: SIGKILL raised on this process (abort if that fails).
#[cfg(feature = "failpoints")]
pub fn kill_self(name: &str) -> ! {
    eprintln!("failpoint {name}: killing the process");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}
