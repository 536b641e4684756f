//! gxd: the daemon. Configuration, the command line, startup, supervision and
//! ordered shutdown; the subsystems live in the `gxd-storage`, `gxd-fabric` and
//! `gxd-api` crates.
//!
//! Tests start the whole daemon in-process with [`daemon::run`] (or
//! [`daemon::Daemon::start`] + [`daemon::Daemon::run_until`]) and stop it by
//! resolving the shutdown future.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exit;
pub mod logging;
pub mod readiness;
pub mod sdnotify;
pub mod signal;

pub use config::{Config, ConfigError};
pub use daemon::{Daemon, run};
