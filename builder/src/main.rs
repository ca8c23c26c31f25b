//! `cairn-build`: a shim over the builder library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cairn_common::logging::init("info");
    let cli = cairn_builder::cli::Cli::parse();
    match cairn_builder::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
