//! The running host's side of provisioning: its tools behind
//! [`System`], and the entry points of
//! `cairn-agent provision [--final]`.

use std::path::Path;

use anyhow::{Context as _, Result};
use cairn_common::process::Cmd;

use super::apply::System;
use super::source::{HttpFetch, Stage};
use super::{Host, DIR};

/// The host's own tools, each run through the logged process helper.
pub struct HostSystem;

impl System for HostSystem {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        self.output(argv).map(|_| ())
    }

    fn output(&mut self, argv: &[String]) -> Result<String, String> {
        let (program, args) = argv.split_first().ok_or("an empty command")?;
        Cmd::new(program)
            .args(args)
            .output()
            .map(|o| o.stdout)
            .map_err(|e| format!("{e:#}"))
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn set_hostname(&mut self, name: &str) -> Result<(), String> {
        nix::unistd::sethostname(name).map_err(|e| format!("setting the host name {name}: {e}"))
    }

    fn deploy_kernel_args(&mut self, args: &[String]) -> Result<(), String> {
        use crate::sysroot::{HostSysroot, Sysroot as _};
        let sysroot = HostSysroot;
        let deployments = sysroot.deployments().map_err(|e| format!("{e:#}"))?;
        let booted = deployments
            .iter()
            .find(|d| d.booted)
            .ok_or("ostree lists no booted deployment")?;
        // The new deployment's /etc is merged from this one's files on
        // disk now: the machine id systemd made for this first boot must
        // be there, not only on its transient mount.
        self.run(&["systemd-machine-id-setup".into(), "--commit".into()])?;
        // Deployed now, not staged: this boot reboots before anything else
        // changes /etc, and the reboot does not depend on the shutdown
        // finalizing a staged deployment this early in the boot.
        sysroot.deploy_now(&booted.commit, args).map_err(|e| format!("{e:#}"))
    }
}

/// The firmware's DMI strings.
const DMI: &str = "/sys/class/dmi/id";

/// Print a line on the console (the unit's standard output goes to the
/// journal and the console) with the provisioner's prefix.
fn say(line: &str) {
    println!("cairn-provision: {line}");
}

/// `cairn-agent provision`: this boot's provisioning at `stage`; `--final`:
/// the commands left for after the network is online.
pub fn provision(stage: Stage, final_stage: bool) -> Result<()> {
    let config = crate::config::load_host()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let fetch = HttpFetch::default();
    let mut system = HostSystem;
    let platform = crate::platform::detect(&cmdline, &crate::platform::Dmi::read(Path::new(DMI)));
    let ntp = config.ntp.get(platform.platform.name()).cloned().unwrap_or_default();
    let mut host = Host {
        cmdline,
        default_user: config.default_user,
        fetch: &fetch,
        system: &mut system,
        say: &say,
        platform,
        config_drive: &super::source::read_config_drive,
        metadata_service: &crate::metadata::host::read_service,
        ntp,
        report_to_platform: &crate::metadata::host::report_provisioning,
    };
    if final_stage {
        return super::run_final(&mut host, Path::new(DIR));
    }
    if stage == Stage::Network {
        // networkd is up; give DHCP its time before the first request.
        let _ = Cmd::new("/usr/lib/systemd/systemd-networkd-wait-online")
            .args(["--any", "--timeout=120"])
            .output();
    }
    super::run(&mut host, Path::new(DIR), Path::new("/"), stage)
}

/// `cairn-agent provision --check FILE`: what the config would do, or why
/// it is refused (then an error), without changing anything.
pub fn check(file: &Path) -> Result<()> {
    let config = crate::config::load_host().unwrap_or_default();
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let found = super::source::Found {
        source: super::source::Source::FwCfg,
        user_data: bytes,
        instance_id: None,
        local_hostname: None,
        network_config: None,
    };
    let fetch = HttpFetch::default();
    let (format, mut plan) = super::plan_for(&found, &config.default_user, &fetch)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    super::resolve(&mut plan, &fetch).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("{}: {format}", file.display());
    for line in plan.summary() {
        println!("  {line}");
    }
    for w in &plan.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}
