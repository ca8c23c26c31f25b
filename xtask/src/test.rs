//! `cargo xtask test`: the whole suite, in tiers.
//!
//! 1. `cargo test --workspace`: unit tests (no root, no network, no VM).
//! 2. Build the dev and prod images (host tools installed first).
//! 3. The ignored tests of `qemu-tests`, one at a time (each VM takes both
//!    cores), with the images handed over in a JSON file.

use anyhow::{Context, Result};
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;
use cairn_qemu_tests::{artifacts, qemu, Artifacts};

use crate::{build, host, paths};

pub fn test(arch: Arch, filter: Option<&str>) -> Result<()> {
    cargo(&["test", "--workspace"]).context("unit tests")?;

    let (_, file) = artifacts(arch)?;

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
/// written to `target/cairn/<arch>/test-artifacts.json`).
pub fn artifacts(arch: Arch) -> Result<(Artifacts, std::path::PathBuf)> {
    host::ensure_vm_tools(arch)?;
    build::binaries(arch)?;
    let dev = build::image_with(arch, "dev", &paths::manifest(), &paths::cache())?;
    let prod = build::image_with(arch, "prod", &paths::manifest(), &paths::cache())?;
    let a = Artifacts {
        arch,
        dev,
        prod,
        builder: build::builder(),
        manifest: paths::manifest(),
        repo: paths::repo(arch),
        cache: paths::cache(),
        keys: paths::keys(),
        agent_dir: paths::release_bin(),
    };
    let file = paths::out(arch).join("test-artifacts.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&a)?)?;
    Ok((a, file))
}

fn cargo(args: &[&str]) -> Result<()> {
    Cmd::new(env!("CARGO")).args(args).current_dir(paths::workspace()).run_inherited()
}
