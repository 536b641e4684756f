//! tracing setup: JSON lines for machines or pretty text for a terminal, on stderr
//! (stdout stays free for command output). Secrets are never logged: the config
//! types redact them in `Debug`, and no code logs a password or a URL.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Whether [`init`] installed the global subscriber.
pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// Installs the global subscriber and a panic hook that logs panics through it.
/// A second call (e.g. in tests) is a no-op.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only on a terminal: journald and log files get plain text.
        LogFormat::Pretty => builder
            .with_target(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if result.is_ok() {
        INITIALIZED.store(true, Ordering::SeqCst);
        install_panic_hook();
    }
}

/// Logs panics as one ERROR event (with location) instead of raw stderr text.
/// Supervised tasks that panic also make the daemon stop with a failure
/// (see `daemon::Daemon::run_until`).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            panic.message = %message,
            panic.location = %location,
            thread = thread.name().unwrap_or("<unnamed>"),
            "panic"
        );
    }));
}
