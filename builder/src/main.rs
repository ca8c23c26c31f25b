//! `cairn-build`: a shim over the builder library.

use cairn_common::process;
use clap::Parser;

fn main() -> std::process::ExitCode {
    cairn_common::logging::init("info");
    // SIGINT/SIGTERM reach the running command (mmdebstrap), which is waited
    // for; then the build unwinds and removes its work folders.
    if let Err(e) = process::forward_stop_signals() {
        tracing::warn!("{e:#}");
    }
    let cli = cairn_builder::cli::Cli::parse();
    match cairn_builder::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(process::failure_exit_code())
        }
    }
}
