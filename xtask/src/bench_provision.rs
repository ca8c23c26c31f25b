//! `cargo xtask bench provision`: the prod image provisioned by an
//! Ignition config through fw_cfg, timed from QEMU's start to the first SSH
//! login OpenSSH's client gets; with the provisioner's peak memory (its
//! unit's cgroup) and binary size, measured in the guest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_common::layout::Platform;
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::{build, host, paths};

const LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Serialize)]
struct ProvisionBench {
    arch: cairn_common::layout::Arch,
    platform: Platform,
    accel: &'static str,
    /// QEMU start → the first SSH login of the provisioned user.
    secs_to_ssh_login: f64,
    /// `cairn-provision.service`'s peak memory (cgroup `memory.peak`).
    provisioner_peak_bytes: Option<u64>,
    /// `/usr/bin/cairn-agent` (the provisioner is one of its commands).
    agent_binary_bytes: u64,
    /// How long `cairn-provision.service` ran (systemd's timestamps).
    provisioner_secs: Option<f64>,
}

pub fn provision(target: &crate::Target) -> Result<()> {
    let arch = target.arch;
    let prod = target.image("prod");
    build::validate(&prod)?;
    host::prepare(host::Task::Vm, arch)?;
    let built = build::build(&prod)?;
    let scratch = tempfile::tempdir()?;
    let ssh = Ssh::new(scratch.path(), free_port()?)?;
    let config = serde_json::json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "groups": ["sudo"], "sshAuthorizedKeys": [ssh.public_key()?]}]},
        "storage": {"files": [{"path": "/etc/hostname", "mode": 420, "contents": {"source": "data:,bench"}}]}
    });
    let file = scratch.path().join("config.ign");
    std::fs::write(&file, serde_json::to_vec(&config)?)?;
    let mut opts = VmOptions::of(&built);
    opts.fw_cfg.push(("opt/com.coreos/config".into(), file));
    opts.forwards.push(ssh.forward(None));
    let started = Instant::now();
    let _vm = Vm::start(&opts)?;
    ssh.wait_ready("core", LIMIT)
        .context("waiting for the provisioned user's SSH login")?;
    let secs_to_ssh_login = started.elapsed().as_secs_f64();
    let show = ssh.ok(
        "core",
        "systemctl show cairn-provision.service -p MemoryPeak -p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic; stat -c %s /usr/bin/cairn-agent",
    )?;
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let provisioner_secs = match (
        field("ExecMainStartTimestampMonotonic"),
        field("ExecMainExitTimestampMonotonic"),
    ) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1e6),
        _ => None,
    };
    let agent_binary_bytes = show
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("the guest did not print the agent's size")?;
    let result = ProvisionBench {
        arch,
        platform: target.platform,
        accel: cairn_qemu_tests::qemu::accel(arch).as_str(),
        secs_to_ssh_login,
        provisioner_peak_bytes: field("MemoryPeak"),
        agent_binary_bytes,
        provisioner_secs,
    };
    println!(
        "provisioned prod image: SSH login {:.1} s after QEMU started; provisioner ran {}, peak memory {}; cairn-agent binary {:.1} MB",
        result.secs_to_ssh_login,
        result.provisioner_secs.map_or("?".into(), |s| format!("{s:.2} s")),
        result
            .provisioner_peak_bytes
            .map_or("?".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        result.agent_binary_bytes as f64 / 1e6
    );
    let out = paths::out(arch).join(format!("bench-provision-{}.json", target.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&result)?).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
