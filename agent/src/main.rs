//! `cairn-agent`: the daemon and the operator's command line, over one library.

use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_agent::boot_counter::Esp;
use cairn_agent::config;
use cairn_agent::metadata::host::HostHttp;
use cairn_agent::reboot_gate::{DaemonGate, Pass};
use cairn_agent::schedule::{self, DaemonStep, DaemonView};
use cairn_agent::selection::Request;
use cairn_agent::state::StateFile;
use cairn_agent::sysroot::HostSysroot;
use cairn_agent::updater::{self, Agent, UpdateOutcome};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-agent",
    version,
    about = "Cairn's on-host agent: signed updates with automatic rollback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deployments, update state, last check, last error, bad versions.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ask the update repository for a newer release (changes nothing).
    Check,
    /// Download, verify and stage a release; reboot per the reboot strategy.
    Update {
        /// A version instead of the newest.
        #[arg(long)]
        version: Option<String>,
        /// Allow --version to name an older release.
        #[arg(long)]
        allow_downgrade: bool,
        /// Stage only; do not reboot.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Stage the previous deployment as the next boot's default.
    Rollback {
        #[arg(long)]
        no_reboot: bool,
    },
    /// What the agent did, oldest first.
    History {
        #[arg(long)]
        json: bool,
    },
    /// The agent's state as Prometheus metrics (text format); the daemon
    /// keeps the same in /run/cairn/metrics/ for node_exporter.
    Metrics,
    /// Settle this boot's trial (health gate), then check for updates on schedule.
    Daemon,
    /// Only settle this boot's trial, then exit.
    BootCheck,
    /// On a trial boot, reboot if the trial is not committed in time (a
    /// boot that hangs before the health gate can judge it).
    TrialDeadline,
    /// First-boot provisioning from an Ignition config or cloud-config
    /// (`cairn-provision.service`, early in every boot).
    Provision {
        /// `local` (before networking: fw_cfg, NoCloud) or `network`
        /// (`cairn.config.url=`, once networkd is up).
        #[arg(long, default_value = "local", value_parser = ["local", "network"])]
        stage: String,
        /// Run the config's `runcmd` and scripts (after the network is online).
        #[arg(long = "final")]
        final_stage: bool,
        /// Only read this config (Ignition or cloud-config), fetch what it
        /// references, and print what it would do or why it is refused.
        #[arg(long, value_name = "FILE", conflicts_with = "final_stage")]
        check: Option<std::path::PathBuf>,
    },
    /// Grow the root partition and filesystem to fill the disk (idempotent).
    GrowRoot {
        /// Where the physical root filesystem is mounted.
        #[arg(long, default_value = "/sysroot")]
        mount_point: String,
    },
}

fn agent() -> Result<Agent> {
    Agent::host(config::load_host()?, Box::new(HostSysroot))
}

/// One lifecycle operation at a time, between the daemon and the CLI.
fn lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = "/run/cairn-agent.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {path}: {e}"))
}

/// After staging: reboot now if the strategy says so; otherwise say when
/// (the daemon reboots in the window).
fn reboot_per_strategy(agent: &Agent, no_reboot: bool) -> Result<()> {
    if no_reboot {
        println!("staged; reboot to apply");
        return Ok(());
    }
    match &agent.config.reboot {
        config::RebootStrategy::FleetLock { url, group } => {
            println!("staged; cairn-agent.service reboots once the fleet lock at {url} gives a slot of group {group}");
            return Ok(());
        }
        config::RebootStrategy::Kured => {
            println!(
                "staged; cairn-agent.service writes {}, and kured drains and reboots the node",
                cairn_agent::reboot_gate::KURED_SENTINEL
            );
            return Ok(());
        }
        config::RebootStrategy::Kubernetes(s) => {
            println!(
                "staged; cairn-agent.service drains the node, holding a slot of group {}, then reboots",
                s.group
            );
            return Ok(());
        }
        _ => {}
    }
    match schedule::reboot_delay(&agent.config.reboot, agent.clock.now()) {
        Some(d) if d.is_zero() => updater::reboot("update staged"),
        Some(d) => {
            println!(
                "staged; cairn-agent.service reboots in the maintenance window, in {}s",
                d.as_secs()
            );
            Ok(())
        }
        None => {
            println!("staged; the reboot strategy is off: reboot to apply");
            Ok(())
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Provision { check: Some(file), .. } => cairn_agent::provision::host::check(&file),
        Command::Provision { stage, final_stage, .. } => {
            let stage = if stage == "network" {
                cairn_agent::provision::source::Stage::Network
            } else {
                cairn_agent::provision::source::Stage::Local
            };
            cairn_agent::provision::host::provision(stage, final_stage)
        }
        Command::GrowRoot { mount_point } => cairn_agent::grow_root::grow(&mount_point),
        Command::Status { json } => {
            let status = agent()?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", cairn_agent::report::status_text(&status));
            }
            Ok(())
        }
        Command::Check => {
            let agent = agent()?;
            let _lock = lock()?;
            match agent.check()? {
                Some(r) => println!("update available: {} ({})", r.version, r.commit),
                None => println!("up to date"),
            }
            Ok(())
        }
        Command::Update {
            version,
            allow_downgrade,
            no_reboot,
        } => {
            let agent = agent()?;
            let _lock = lock()?;
            let request = match version {
                Some(v) => Request::Exact {
                    version: semver::Version::parse(&v).with_context(|| format!("--version `{v}`"))?,
                    allow_downgrade,
                },
                None => Request::Latest,
            };
            match agent.update(&request, no_reboot)? {
                UpdateOutcome::UpToDate { booted } => {
                    println!("up to date ({booted})");
                    Ok(())
                }
                UpdateOutcome::AlreadyStaged { version } => {
                    println!("{version} is already staged");
                    reboot_per_strategy(&agent, no_reboot)
                }
                UpdateOutcome::Staged { version, commit } => {
                    println!("staged {version} ({commit})");
                    reboot_per_strategy(&agent, no_reboot)
                }
            }
        }
        Command::Rollback { no_reboot } => {
            let agent = agent()?;
            let _lock = lock()?;
            let v = agent.rollback(no_reboot)?;
            println!("rollback to {v} staged");
            reboot_per_strategy(&agent, no_reboot)
        }
        Command::Metrics => {
            let agent = agent()?;
            let outcomes = agent.store.load()?.outcomes;
            print!("{}", cairn_agent::metrics::render(&agent.status()?, &outcomes));
            Ok(())
        }
        Command::History { json } => {
            let state = StateFile::host().load()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state.history)?);
            } else {
                print!("{}", cairn_agent::report::history_text(&state.history));
            }
            Ok(())
        }
        Command::BootCheck => {
            let agent = agent()?;
            let _lock = lock()?;
            agent.boot_check().map(|_| ())
        }
        Command::Daemon => daemon(),
        Command::TrialDeadline => {
            let config = config::load_host()?;
            updater::trial_deadline(&Esp::host(), config.health_timeout + Duration::from_secs(120))
        }
    }
}

fn daemon() -> Result<()> {
    // The boot's verdict on the console, once every unit has started (or failed).
    std::thread::spawn(|| {
        if let Err(e) = cairn_agent::boot_report::report_when_booted() {
            tracing::warn!(error = %format!("{e:#}"), "could not report the boot's verdict");
        }
    });
    let agent = agent()?;
    {
        let _lock = lock()?;
        let outcome = agent.boot_check()?;
        tracing::info!(?outcome, "boot settled");
    }
    // A trial whose health gate failed is rebooting (GRUB tries it again or
    // falls back): nothing more in this boot, and above all no FleetLock
    // slot given back while the node is still going down.
    if agent.store.load()?.update.trial_unsettled() {
        tracing::warn!("the trial was not committed and its reboot is under way");
        return wait_to_be_stopped();
    }
    // The reboot gate: under fleet-lock, a slot held from before (a crash,
    // a failed trial GRUB fell back from, the update just committed) is
    // given back first.
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let mut gate = DaemonGate::start(&agent.config.reboot, &machine_id, std::path::Path::new("/"), now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let net = cairn_agent::reboot_gate::HostNet {
        plain: HostHttp::new().map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let checks = agent.config.auto_update && agent.config.url.is_some();
    let mut metrics_for: Option<cairn_agent::state::AgentState> = None;
    // A state change (the CLI staged or dropped an update) ends a sleep.
    let watch = cairn_agent::wake::StateWatch::new(
        std::path::Path::new(cairn_agent::state::STATE_PATH)
            .parent()
            .expect("the state file has a folder"),
    );
    // The first check right after the boot settled; then every interval, or
    // sooner after a failed check (see `schedule::retry_after`).
    let mut next_check_at = now();
    let mut failed_checks: u32 = 0;
    // When the daemon last checked, whatever came of it (a failed check
    // records no `last_check`): a rollout's turn brings one check forward,
    // not one after another.
    let mut last_check_attempt: Option<u64> = None;
    loop {
        // A stop signal that arrived while a command ran ended that step;
        // the daemon ends with it (with none running, it ends at once).
        if let Some(signal) = cairn_common::process::interrupted() {
            anyhow::bail!("stopped by {signal}");
        }
        let state = agent.store.load()?;
        let reboot_pending = state.update.daemon_reboots();
        if !reboot_pending {
            gate.nothing_staged(now());
        }
        // node_exporter's textfile collector reads what the daemon last
        // saw: written again when the state changed (the CLI's doing, or a
        // step's) or a step ran, not at every wake-up.
        if metrics_for.as_ref() != Some(&state) {
            write_metrics(&agent, &state);
            metrics_for = Some(state.clone());
        }
        let step = schedule::daemon_step(&DaemonView {
            now: now(),
            next_check_at: checks.then(|| {
                schedule::next_check_at(
                    next_check_at,
                    state.turn.as_ref().and_then(|t| t.at),
                    state.last_check.max(last_check_attempt),
                )
            }),
            reboot_pending,
            strategy: &agent.config.reboot,
            release_at: gate.release_at,
            gate_retry_at: gate.retry_at(),
        });
        if !matches!(step, DaemonStep::Sleep(_)) {
            metrics_for = None;
        }
        match step {
            DaemonStep::ReleaseLock => gate.release(&net, now()),
            DaemonStep::Check => {
                let wait = schedule::next_check(
                    agent.config.check_interval,
                    agent.config.check_jitter,
                    schedule::random_fraction(),
                );
                next_check_at = now() + wait.as_secs();
                last_check_attempt = Some(now());
                let staged = {
                    let _lock = lock()?;
                    agent.update(&Request::Latest, false)
                };
                match staged {
                    Ok(outcome) => {
                        failed_checks = 0;
                        tracing::info!(?outcome, next_check_secs = wait.as_secs(), "checked");
                    }
                    Err(e) => {
                        failed_checks = failed_checks.saturating_add(1);
                        let retry = schedule::retry_after(failed_checks, wait);
                        next_check_at = now() + retry.as_secs();
                        tracing::error!(error = %format!("{e:#}"), retry_secs = retry.as_secs(), "update check failed");
                    }
                }
            }
            DaemonStep::Reboot => match gate.pass(&net, now(), &|| {
                if let Some(signal) = cairn_common::process::interrupted() {
                    return Some(format!("the agent was stopped ({signal})"));
                }
                match agent.store.load() {
                    Ok(s) if s.update.daemon_reboots() => None,
                    Ok(_) => Some("the staged update is gone".to_owned()),
                    Err(e) => Some(format!("the agent's state could not be read: {e:#}")),
                }
            }) {
                Pass::Reboot(why) => {
                    updater::reboot(&format!("update staged; {why}"))?;
                    // `systemctl reboot` returns once the reboot is queued.
                    return wait_to_be_stopped();
                }
                Pass::Held => {}
            },
            // A stop signal while it waits ends the program at once: no
            // command the work waits on runs (`process::stops_at_once`).
            DaemonStep::Sleep(d) => {
                watch.sleep(d);
            }
        }
    }
}

/// The daemon's end once a reboot is under way: nothing more to do but be
/// stopped by the shutdown (a stop signal ends the sleep at once).
fn wait_to_be_stopped() -> Result<()> {
    loop {
        if let Some(signal) = cairn_common::process::interrupted() {
            anyhow::bail!("stopped by {signal}");
        }
        std::thread::sleep(schedule::LONGEST_SLEEP);
    }
}

/// Write the metrics for node_exporter's textfile collector (a failure is
/// logged: the daemon goes on).
fn write_metrics(agent: &Agent, state: &cairn_agent::state::AgentState) {
    let written = agent.status().and_then(|status| {
        let text = cairn_agent::metrics::render(&status, &state.outcomes);
        cairn_agent::metrics::write_textfile(std::path::Path::new("/"), &text)
    });
    if let Err(e) = written {
        tracing::warn!(error = %format!("{e:#}"), "could not write the metrics for node_exporter");
    }
}

fn now() -> u64 {
    cairn_agent::state::now()
}

fn main() -> std::process::ExitCode {
    // The agent's own progress and warnings; the commands it runs (logged by
    // cairn-common at info) only with RUST_LOG=info.
    cairn_common::logging::init("warn,cairn_agent=info");
    // SIGINT/SIGTERM reach the running command (an ostree pull or deploy),
    // which is waited for; the step then fails and is recorded, and its
    // cleanup goes as far as it safely can (no new command starts).
    if let Err(e) = cairn_common::process::forward_stop_signals() {
        tracing::warn!("{e:#}");
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cairn_common::process::failure_exit_code())
        }
    }
}
