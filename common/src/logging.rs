//! Tracing set-up shared by every Cairn binary.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Initialise tracing once: `RUST_LOG` filters (default `default_filter`,
/// an `EnvFilter` directive such as `info`), output to stderr so stdout
/// stays machine-readable, no timestamps under journald.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = if under_journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests) is harmless.
    let _ = result;
}
