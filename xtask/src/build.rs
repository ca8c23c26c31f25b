//! `cargo xtask build`: host tools, binaries, key, compose, image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_builder::disk_formats::DiskFormat;
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use cairn_common::process::Cmd;

use crate::{cross, host, paths};

/// One image to build: architecture, platform, flavor.
#[derive(Debug, Clone)]
pub struct ImageTarget {
    pub arch: Arch,
    pub platform: Platform,
    pub flavor: String,
}

/// Build the builder and the test relay (that lets VMs reach a loopback
/// update server) for this host, and the agent for `arch` (cross-built when
/// `arch` is not this host's, with the tools [`host::Task::Build`]
/// installs); returns the agent's folder.
pub fn binaries(arch: Arch) -> Result<PathBuf> {
    let native = Arch::host() == Some(arch);
    let mut packages = vec!["--package", "cairn-builder", "--package", "cairn-qemu-tests"];
    if native {
        packages.extend(["--package", "cairn-agent"]);
    }
    Cmd::new(env!("CARGO"))
        .args(["build", "--release"])
        .args(packages)
        .current_dir(paths::workspace())
        .progress()
        .run()
        .context("building the builder (and the agent)")?;
    if native {
        Ok(paths::release_bin())
    } else {
        cross::agent(arch)
    }
}

/// `cairn-test-relay`, QEMU's guestfwd command for reaching a loopback server.
pub fn relay() -> std::path::PathBuf {
    paths::release_bin().join("cairn-test-relay")
}

pub fn builder() -> std::path::PathBuf {
    paths::release_bin().join("cairn-build")
}

/// Compose and write the image of `t` with the given manifest, cache and
/// agent binaries (see [`binaries`]).
pub fn image_with(t: &ImageTarget, manifest: &Path, cache: &Path, agent_dir: &Path) -> Result<BuiltImage> {
    let builder = builder();
    let keys = paths::keys();
    Cmd::new(&builder).arg("keygen").arg("--keys").arg(&keys).run()?;
    builder_for(t, manifest, "compose")
        .arg("--cache")
        .arg(cache)
        .arg("--keys")
        .arg(&keys)
        .arg("--agent-dir")
        .arg(agent_dir)
        .progress()
        .run()
        .context("composing")?;
    disk_image(t, manifest, &paths::images(t.arch), &[])
}

/// `cairn-build <subcommand>` for the image target `t` of `manifest`
/// (`--manifest`, `--flavor`, `--arch`, `--platform`).
pub fn cairn_build(subcommand: &str, manifest: &Path, t: &ImageTarget) -> Cmd {
    Cmd::new(builder())
        .arg(subcommand)
        .arg("--manifest")
        .arg(manifest)
        .args([
            "--flavor",
            &t.flavor,
            "--arch",
            t.arch.as_str(),
            "--platform",
            t.platform.as_str(),
        ])
}

/// [`cairn_build`] on the arch's repo.
fn builder_for(t: &ImageTarget, manifest: &Path, subcommand: &str) -> Cmd {
    cairn_build(subcommand, manifest, t)
        .arg("--repo")
        .arg(paths::repo(t.arch))
}

/// Write the disk image of `t`'s last composed commit into `output`, in
/// `formats` besides raw (the builder's default when empty).
pub fn disk_image(t: &ImageTarget, manifest: &Path, output: &Path, formats: &[DiskFormat]) -> Result<BuiltImage> {
    let mut cmd = builder_for(t, manifest, "image").arg("--output").arg(output);
    if !formats.is_empty() {
        let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
        cmd = cmd.arg("--format").arg(names.join(","));
    }
    let out = cmd.progress().output().context("writing the disk image")?;
    serde_json::from_str(&out.stdout).context("reading what cairn-build image wrote")
}

/// Refuse an arch/platform/flavor the manifest does not define before any
/// slow step (the builder would, but only after building itself).
pub fn validate(t: &ImageTarget) -> Result<()> {
    cairn_builder::manifest::Manifest::load(&paths::manifest())?.resolve(&t.flavor, t.arch, t.platform)?;
    Ok(())
}

/// `cairn-build kernel-check` on the package layer of `t` (built if need be).
pub fn kernel_check(t: &ImageTarget) -> Result<()> {
    validate(t)?;
    host::prepare(host::Task::KernelCheck, t.arch)?;
    Cmd::new(env!("CARGO"))
        .args(["build", "--release", "--package", "cairn-builder"])
        .current_dir(paths::workspace())
        .progress()
        .run()?;
    cairn_build("kernel-check", &paths::manifest(), t)
        .arg("--cache")
        .arg(paths::cache())
        .run_inherited()
}

/// The whole build of one image from the repo's manifest.
pub fn build(t: &ImageTarget) -> Result<BuiltImage> {
    validate(t)?;
    host::prepare(host::Task::Build, t.arch)?;
    let agent_dir = binaries(t.arch)?;
    image_with(t, &paths::manifest(), &paths::cache(), &agent_dir)
}
