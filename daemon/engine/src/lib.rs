//! gxd's engine: turns accepted commands into ledger transactions (the [`submitter`]) and
//! ledger blocks into read models (the projector). It knows nothing of GX: a
//! [`catalog::CommandCatalog`] maps command types to chaincode transactions, and projection
//! handlers map chaincode events to read-model writes; the daemon plugs GX's in.
//!
//! - [`backoff`]: exponential backoff with full jitter, bounded.
//! - [`catalog`]: the command catalog seam.
//! - [`failpoints`]: kill points at each durability step (feature `failpoints`, tests only).
//! - [`maintenance`]: outbox retention and gauges, in the background.
//! - [`projector_metrics`]: the projector's status as `gxd_projector_*` gauges.
//! - [`projector`]: follows the block stream and applies each block to the read models
//!   in one PostgreSQL transaction with its position; the checkpoint log follows.
//! - [`rebuild`]: `gxd projections rebuild` — the projector replaying into a shadow schema,
//!   compared with and swapped for the live read models.
//! - [`submitter`]: claims due commands from the outbox and brings each to the ledger
//!   exactly once (the resolution rule is documented there).

pub mod backoff;
pub mod catalog;
pub mod failpoints;
pub mod maintenance;
pub mod projector;
pub mod projector_metrics;
pub mod rebuild;
pub mod submitter;
