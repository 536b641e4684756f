//! gxd api crate.
