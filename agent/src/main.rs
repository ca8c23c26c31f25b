//! `cairn-agent`: a shim over the agent library.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about = "Cairn's on-host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Grow the root partition and filesystem to fill the disk (idempotent).
    GrowRoot {
        /// Where the physical root filesystem is mounted.
        #[arg(long, default_value = "/sysroot")]
        mount_point: String,
    },
}

fn main() -> std::process::ExitCode {
    cairn_common::logging::init();
    let result = match Cli::parse().command {
        Command::GrowRoot { mount_point } => cairn_agent::grow_root::grow(&mount_point),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
