//! `cargo xtask`: Cairn's only build glue.
//!
//! - `build`: install missing host tools, build the agent and builder,
//!   compose and write the image; the last stdout line is the raw image.
//! - `run`: build the dev image and boot it with the console on this terminal.
//! - `test`: unit tests, images, then every VM and builder test.
//! - `kernel-check`: the package layer's kernel against the kernel-config fragments.
//! - `setup`: install the host tools the other commands need (each does it first too).
//! - `bench`: build and boot figures, as a table and JSON;
//!   `bench power-cut`: a campaign of power cuts at random moments;
//!   `bench cloud`: each cloud format's size, boot to SSH on each cloud.

mod baseline;
mod bench;
mod bench_cloud;
mod bench_fleet;
mod bench_power_cut;
mod bench_provision;
mod bench_update;
mod build;
mod cross;
mod host;
mod paths;
mod run;
mod suite;
mod test;

use cairn_common::layout::{Arch, Platform};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Target architecture.
    #[arg(long, default_value = "x86_64")]
    pub arch: Arch,
    /// Where the image runs: `generic` (VMs), `kunpeng920` or `phytium`
    /// (aarch64 servers; QEMU stands in with a like machine and CPU).
    #[arg(long, default_value = "generic")]
    pub platform: Platform,
}

impl Target {
    /// The image of `flavor` for this architecture and platform.
    pub fn image(&self, flavor: &str) -> build::ImageTarget {
        build::ImageTarget {
            arch: self.arch,
            platform: self.platform,
            flavor: flavor.to_owned(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image; prints the raw disk image's path last.
    Build {
        #[command(flatten)]
        target: Target,
        /// Image flavor from rootfs/image.toml.
        #[arg(long, default_value = "dev")]
        flavor: String,
    },
    /// Build the dev image and boot it in QEMU on this terminal (Ctrl-a x quits).
    Run {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "dev")]
        flavor: String,
        /// Provision with this Ignition config or cloud-config (QEMU fw_cfg).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Provision from this folder's user-data, meta-data and
        /// network-config (a NoCloud seed volume).
        #[arg(long)]
        seed: Option<std::path::PathBuf>,
        /// Forward 127.0.0.1:PORT to the guest's SSH.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
    },
    /// Check the kernel of the image's package layer (built if need be)
    /// against the platform's kernel-config fragments; print the report.
    KernelCheck {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "dev")]
        flavor: String,
    },
    /// Install and register the host tools every command needs for this
    /// arch (each command does its part first anyway).
    Setup {
        #[command(flatten)]
        target: Target,
    },
    /// The whole suite: unit tests, image builds, VM and builder tests.
    Test {
        #[command(flatten)]
        target: Target,
        /// Only run the VM and builder tests whose name contains one of these.
        filters: Vec<String>,
    },
    /// Measure build time, image sizes, boot time and updates.
    Bench {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        campaign: Option<BenchCampaign>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCampaign {
    /// Only the boot: where the dev image's boot time goes, beside a plain
    /// Debian's of the same release and packages (the ratio of the two).
    Boot,
    /// The prod image provisioned by an Ignition config (fw_cfg): time to
    /// the first SSH login, the provisioner's peak memory and binary size.
    Provision,
    /// The prod image as each cloud sees it: its commit in every disk
    /// format (sizes), and a new instance on each cloud's metadata stand-in
    /// booted from that cloud's format (time to the first SSH login).
    Cloud,
    /// The reboot strategies: time from a staged update to the reboot under
    /// each (immediate, fleet-lock, kubernetes, kured) with an uncontended
    /// lock; the agent's size and idle memory.
    Fleet,
    /// Cut the power at random moments of updates; report how many cuts the
    /// host survived.
    PowerCut {
        /// How many cuts.
        #[arg(long, default_value_t = 100)]
        points: usize,
        /// Seed of the cut times (default: the clock), to replay a campaign.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    cairn_common::logging::init("info");
    // SIGINT/SIGTERM reach the running command (cairn-build, cargo, QEMU),
    // which is waited for while it cleans up.
    if let Err(e) = cairn_common::process::forward_stop_signals() {
        tracing::warn!("{e:#}");
    }
    let result = match Cli::parse().command {
        Command::Build { target, flavor } => build::build(&target.image(&flavor)).map(|built| {
            println!("{}", built.raw.display());
        }),
        Command::Run {
            target,
            flavor,
            config,
            seed,
            ssh_port,
        } => run::run(&target.image(&flavor), &run::RunOptions { config, seed, ssh_port }),
        Command::KernelCheck { target, flavor } => build::kernel_check(&target.image(&flavor)),
        Command::Setup { target } => host::prepare(host::Task::Vm, target.arch),
        Command::Test { target, filters } => test::test(&target, &filters),
        Command::Bench { target, campaign: None } => bench::bench(&target),
        Command::Bench {
            target,
            campaign: Some(BenchCampaign::Boot),
        } => bench::boot(&target),
        Command::Bench {
            target,
            campaign: Some(BenchCampaign::Provision),
        } => bench_provision::provision(&target),
        Command::Bench {
            target,
            campaign: Some(BenchCampaign::Cloud),
        } => bench_cloud::cloud(&target),
        Command::Bench {
            target,
            campaign: Some(BenchCampaign::Fleet),
        } => bench_fleet::fleet(&target),
        Command::Bench {
            target,
            campaign: Some(BenchCampaign::PowerCut { points, seed }),
        } => bench_power_cut::campaign(&target, points, seed),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cairn_common::process::failure_exit_code())
        }
    }
}
