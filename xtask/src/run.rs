//! `cargo xtask run`: boot an image with its console on this terminal,
//! optionally provisioned (an Ignition or cloud-config file through QEMU's
//! fw_cfg, or a NoCloud seed folder), with SSH forwarded from 127.0.0.1.

use anyhow::{bail, Result};
use cairn_common::process::Cmd;
use std::path::PathBuf;

use cairn_qemu_tests::qemu::{self, DiskInterface, QemuConfig};
use cairn_qemu_tests::seed::{Seed, SeedVolume};

use crate::build::{self, ImageTarget};
use crate::{host, paths};

/// What to boot the image with.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// An Ignition config or cloud-config, passed as fw_cfg `opt/com.coreos/config`.
    pub config: Option<PathBuf>,
    /// A folder with `user-data`, `meta-data` (and `network-config`): a
    /// NoCloud seed, attached as an ISO 9660 CD-ROM.
    pub seed: Option<PathBuf>,
    /// The host port (on 127.0.0.1) forwarded to the guest's SSH.
    pub ssh_port: u16,
}

pub fn run(t: &ImageTarget, opts: &RunOptions) -> Result<()> {
    let arch = t.arch;
    host::prepare(host::Task::Vm, arch)?;
    let built = build::build(t)?;
    let dir = paths::out(arch).join("run");
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("disk.qcow2"));
    let mut cdroms = Vec::new();
    if let Some(seed_dir) = &opts.seed {
        // On a CD-ROM, as clouds attach their seeds.
        let image = dir.join("seed.iso");
        Seed::from_dir(seed_dir)?.write(&image, SeedVolume::Iso9660)?;
        cdroms.push(image);
    }
    let mut fw_cfg = Vec::new();
    if let Some(config) = &opts.config {
        if !config.is_file() {
            bail!("--config {}: no such file", config.display());
        }
        fw_cfg.push(("opt/com.coreos/config".to_owned(), std::fs::canonicalize(config)?));
    }
    let config = QemuConfig {
        arch,
        platform: t.platform,
        accel: qemu::accel(arch),
        disk: qemu::overlay_disk(&built.raw, &dir, 8 << 30)?,
        disk_interface: DiskInterface::VirtioBlk,
        extra_disks: Vec::new(),
        cdroms,
        vars: qemu::fresh_vars(arch, &dir)?,
        memory_mib: 2048,
        cpus: 2,
        // Loopback only: nothing beyond this machine reaches the guest.
        forwards: vec![format!("hostfwd=tcp:127.0.0.1:{}-:22", opts.ssh_port)],
        fw_cfg,
        smbios: Vec::new(),
        net: None,
        interactive: true,
    };
    eprintln!(
        "Booting {} {} ({}, {}) on {} with {}; the VM's disk is {}; SSH: ssh -p {} <user>@127.0.0.1. Quit with Ctrl-a x.",
        built.name,
        built.version,
        t.flavor,
        t.platform,
        qemu::cpu(arch, t.platform, config.accel),
        config.accel.as_str(),
        config.disk.display(),
        opts.ssh_port
    );
    let status = Cmd::new(qemu::qemu_binary(arch))
        .args(config.args())
        .status_inherited()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
