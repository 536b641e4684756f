//! The GX domain, as gxd's parts share it (../shared/BRIEF.md "The GX domain").
//!
//! - [`contract`]: the chaincode's contract — function and event names, one serde type per
//!   event payload and query result. The chaincode (in the devnet, and served to a real
//!   network) emits with these types; the projector decodes with them. It is the source of
//!   truth of the README's "The GX chaincode contract" table.
//! - [`commands`]: the outbox command types, their payloads, and GX's command catalog (how a
//!   command becomes a chaincode invocation), plugged into the engine's submitter.
//! - [`handlers`]: GX's projection handler — each contract event → the read-model writes
//!   of `gxd_storage::pg::read_models`.
//!
//! The engine (outbox, submitter, projector) knows nothing of GX; everything GX-specific
//! that plugs into it lives here or depends on this crate.

pub mod commands;
pub mod contract;
pub mod handlers;
