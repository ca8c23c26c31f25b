//! `cargo xtask test`: the whole suite, in tiers.
//!
//! 1. `cargo test --workspace`: unit tests (no root, no network, no VM).
//! 2. Build the dev and prod images (host tools installed first).
//! 3. The ignored tests of `qemu-tests`, one at a time (each VM takes both
//!    cores), with the images handed over in a JSON file.

use anyhow::{Context, Result};
use cairn_common::process::Cmd;
use cairn_qemu_tests::{artifacts, qemu, Artifacts};

use crate::{build, cross, host, paths, Target};

pub fn test(target: &Target, filter: Option<&str>) -> Result<()> {
    let arch = target.arch;
    cargo(&["test", "--workspace"]).context("unit tests")?;
    if cairn_common::layout::Arch::host() != Some(arch) {
        host::ensure_cross_tools(arch)?;
        cross::unit_tests(arch)?;
    }

    let (_, file) = artifacts(target)?;

    // Probe KVM once here rather than in every test process.
    let accel = qemu::accel(arch);
    let mut args = vec!["test", "--package", "cairn-qemu-tests", "--tests", "--"];
    args.extend(["--ignored", "--test-threads=1"]);
    if let Some(f) = filter {
        args.push(f);
    }
    Cmd::new(env!("CARGO"))
        .args(&args)
        .env(artifacts::ENV, &file)
        .env("CAIRN_ACCEL", accel.as_str())
        .current_dir(paths::workspace())
        .run_inherited()
        .context("VM and builder tests")
}

/// Host tools, binaries and both images, described for the VM tests (and
/// written to `target/cairn/<arch>/test-artifacts-<platform>.json`).
pub fn artifacts(target: &Target) -> Result<(Artifacts, std::path::PathBuf)> {
    let arch = target.arch;
    host::ensure_vm_tools(arch)?;
    let agent_dir = build::binaries(arch)?;
    let dev = build::image_with(&target.image("dev"), &paths::manifest(), &paths::cache(), &agent_dir)?;
    let prod = build::image_with(&target.image("prod"), &paths::manifest(), &paths::cache(), &agent_dir)?;
    let a = Artifacts {
        arch,
        platform: target.platform,
        dev,
        prod,
        builder: build::builder(),
        manifest: paths::manifest(),
        repo: paths::repo(arch),
        cache: paths::cache(),
        keys: paths::keys(),
        agent_dir,
        busybox: host::static_busybox(arch, &paths::cache())?,
    };
    let file = paths::out(arch).join(format!("test-artifacts-{}.json", target.platform));
    std::fs::write(&file, serde_json::to_vec_pretty(&a)?)?;
    Ok((a, file))
}

fn cargo(args: &[&str]) -> Result<()> {
    Cmd::new(env!("CARGO")).args(args).current_dir(paths::workspace()).run_inherited()
}
