//! `cargo xtask bench fleet`: what the reboot strategies cost.
//!
//! One dev VM, its update server, a FleetLock stand-in (one free slot per
//! group) and a Kubernetes API stand-in (a second Ready node, one pod to
//! evict, no disruption budget), all on loopback. For each strategy in
//! turn — `immediate`, `fleet-lock`, `kubernetes`, `kured` — a release is
//! staged with `cairn-agent update` and the time is taken, on the host's
//! clock, from the CLI's `staged <version>` line on the serial console to
//! the reboot's first line there (the agent's own in the kernel log, or
//! systemd's first "Stopped" of the shutdown, whichever comes first), or,
//! under `kured`, to kured's sentinel appearing (a shell loop on the
//! console looks every 0.1 s). The releases are copies of the
//! booted commit (nothing to download), so the figure is the strategy's
//! own: the daemon noticing the staged update, its gate, and the drain.
//! Then the host reboots (the bench does it for kured) and commits.
//!
//! Also: the agent's binary size, and the daemon's resident memory once
//! idle under `kubernetes` (after its node was put back).
//!
//! Writes `target/cairn/<arch>/bench-fleet-<platform>.json`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_common::layout::{Arch, Platform};
use cairn_qemu_tests::fleet_lock::FleetLockServer;
use cairn_qemu_tests::http::Server;
use cairn_qemu_tests::kube_api::{KubeApi, RunBy};
use cairn_qemu_tests::releases::TestReleases;
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::{build, paths, test};

const BOOT: Duration = Duration::from_secs(900);
const COMMAND: Duration = Duration::from_secs(300);
const KUBE_API: &str = "10.0.2.102:6443";
const KUBE_TOKEN: &str = "cairn-bench-token";
const NODE: &str = "cairn-bench-node";

#[derive(Debug, Serialize)]
struct FleetBench {
    arch: Arch,
    platform: Platform,
    accel: &'static str,
    agent_binary_bytes: u64,
    /// The daemon's resident memory, idle under `kubernetes`.
    agent_idle_rss_kib: u64,
    strategies: Vec<StrategyTime>,
}

#[derive(Debug, Serialize)]
struct StrategyTime {
    strategy: &'static str,
    /// `staged <version>` on the console → the agent's reboot line (under
    /// kured: its sentinel line).
    staged_to_rebooting_secs: f64,
}

/// Each strategy and its settings (the TOML the bench writes).
const STRATEGIES: [(&str, &str); 4] = [
    ("immediate", "[reboot]\nstrategy = \"immediate\"\n"),
    (
        "fleet-lock",
        "[reboot]\nstrategy = \"fleet-lock\"\nfleet-lock-url = \"http://10.0.2.101\"\n",
    ),
    (
        "kubernetes",
        "[reboot]\nstrategy = \"kubernetes\"\nkubernetes-node-name = \"cairn-bench-node\"\n",
    ),
    ("kured", "[reboot]\nstrategy = \"kured\"\n"),
];

/// The first console lines of a reboot: the agent's, or systemd's shutdown.
const REBOOTING: [&str; 2] = ["cairn-agent: rebooting", "Stopped target"];

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn fleet(target: &crate::Target) -> Result<()> {
    let (a, _) = test::artifacts(target, false)?;
    let relay = build::relay();
    let scratch = tempfile::Builder::new().prefix("cairn-bench-fleet-").tempdir()?;
    let releases = TestReleases::new(&a, scratch.path());
    releases.publish_booted()?;
    let server = Server::start(&releases.www)?;
    let lock = FleetLockServer::start(1)?;
    let kube = KubeApi::start(KUBE_TOKEN)?;
    kube.add_node(NODE);
    kube.add_node("other-node");
    let (tls, ca) = kube.serve_tls(scratch.path(), "10.0.2.102")?;

    let mut opts = VmOptions::of(&a.dev);
    opts.forward_update_server(&relay, server.port);
    opts.forward_to_loopback(&relay, "10.0.2.101:80", lock.port());
    opts.forward_to_loopback(&relay, KUBE_API, tls.port);
    let vm = Vm::boot(&opts, BOOT)?;
    let c = &vm.console;
    let kubeconfig = kube.kubeconfig(&format!("https://{KUBE_API}"), &ca);
    c.run_ok(
        &format!(
            "mkdir -p /etc/cairn/agent.d && echo {} | base64 -d > /etc/cairn/kubeconfig",
            base64(kubeconfig.as_bytes())
        ),
        COMMAND,
    )?;

    let mut strategies = Vec::new();
    let mut idle_rss = 0;
    for (i, (name, settings)) in STRATEGIES.into_iter().enumerate() {
        // A copy of the booted commit as the next release: nothing to download.
        let version = format!("90.0.{i}");
        let commit = releases.commit_copy(&a.dev.ostree_ref, &version, a.arch.as_str(), true)?;
        releases.sign_release(&releases.record(&version, &commit))?;
        kube.add_pod("apps", &format!("web-{i}"), NODE, RunBy::ReplicaSet);
        let toml = format!("[update]\nauto = false\n{settings}");
        c.run_ok(
            &format!(
                "echo {} | base64 -d > /etc/cairn/agent.d/60-bench.toml && systemctl restart cairn-agent && sleep 5",
                base64(toml.as_bytes())
            ),
            COMMAND,
        )?;
        if name == "kured" {
            c.send(
                "cairn-agent update && while [ ! -e /var/run/reboot-required ]; do sleep 0.1; done && echo SENTINEL-$((40 + 2))\n",
            )?;
        } else {
            c.send("cairn-agent update\n")?;
        }
        c.wait_for(&format!("staged {version}"), COMMAND)
            .with_context(|| format!("staging {version} under {name}"))?;
        let staged = Instant::now();
        if name == "kured" {
            c.wait_for("SENTINEL-42", COMMAND)
        } else {
            c.wait_for_any(&REBOOTING, COMMAND).map(|(_, line)| line)
        }
        .with_context(|| format!("the reboot under {name}"))?;
        let secs = staged.elapsed().as_secs_f64();
        tracing::info!(strategy = name, secs, "staged → rebooting");
        strategies.push(StrategyTime {
            strategy: name,
            staged_to_rebooting_secs: secs,
        });
        if name == "kured" {
            // What kured does once it holds its lock and drained the node.
            c.run_ok("systemctl reboot", COMMAND)?;
        }
        c.wait_for("Linux version", BOOT)?;
        vm.wait_for_root_shell(BOOT)?;
        cairn_qemu_tests::agent_status::wait_status(c, &format!("{version} to be committed"), BOOT, |s| {
            s.settled() && s.booted_version() == version
        })?;
        if name == "kubernetes" {
            // Idle: the node put back (uncordoned), nothing staged.
            let deadline = Instant::now() + COMMAND;
            while kube.unschedulable(NODE) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_secs(1));
            }
            std::thread::sleep(Duration::from_secs(10));
            let rss = c.run_ok(
                "grep VmRSS /proc/$(systemctl show -p MainPID --value cairn-agent)/status",
                COMMAND,
            )?;
            idle_rss = rss
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no VmRSS in {rss:?}"))?;
        }
    }
    let report = FleetBench {
        arch: a.arch,
        platform: a.platform,
        accel: cairn_qemu_tests::qemu::accel(a.arch).as_str(),
        agent_binary_bytes: std::fs::metadata(a.agent_dir.join("cairn-agent"))?.len(),
        agent_idle_rss_kib: idle_rss,
        strategies,
    };
    let out = paths::out(a.arch).join(format!("bench-fleet-{}.json", a.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    print(&report, &out);
    Ok(())
}

fn print(r: &FleetBench, out: &Path) {
    println!("fleet ({}, {}, {}):", r.arch, r.platform, r.accel);
    println!(
        "  agent: {:.2} MB binary, {} KiB resident when idle under kubernetes",
        r.agent_binary_bytes as f64 / 1e6,
        r.agent_idle_rss_kib
    );
    for s in &r.strategies {
        println!(
            "  {:<11} staged → rebooting {:>6.2} s",
            s.strategy, s.staged_to_rebooting_secs
        );
    }
    println!("  written to {}", out.display());
}
