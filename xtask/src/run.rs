//! `cargo xtask run`: boot the dev image with its console on this terminal.

use anyhow::{bail, Result};
use cairn_common::process::Cmd;
use cairn_qemu_tests::qemu::{self, DiskInterface, QemuConfig};

use crate::build::{self, ImageTarget};
use crate::{host, paths};

pub fn run(t: &ImageTarget) -> Result<()> {
    let arch = t.arch;
    host::prepare(host::Task::Vm, arch)?;
    let built = build::build(t)?;
    let dir = paths::out(arch).join("run");
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("disk.qcow2"));
    let config = QemuConfig {
        arch,
        platform: t.platform,
        accel: qemu::accel(arch),
        disk: qemu::overlay_disk(&built.raw, &dir, 8 << 30)?,
        disk_interface: DiskInterface::VirtioBlk,
        extra_disks: Vec::new(),
        vars: qemu::fresh_vars(arch, &dir)?,
        memory_mib: 2048,
        cpus: 2,
        forwards: Vec::new(),
        interactive: true,
    };
    eprintln!(
        "Booting {} {} ({}, {}) on {} with {}; the VM's disk is {}. Quit with Ctrl-a x.",
        built.name,
        built.version,
        t.flavor,
        t.platform,
        qemu::cpu(arch, t.platform, config.accel),
        config.accel.as_str(),
        config.disk.display()
    );
    let status = Cmd::new(qemu::qemu_binary(arch))
        .args(config.args())
        .status_inherited()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
