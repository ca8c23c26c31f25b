//! `cargo xtask build`: host tools, binaries, key, compose, image.

use anyhow::{bail, Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;

use crate::{host, paths};

/// Build the agent and builder binaries for `arch` (release profile), and
/// the test relay that lets VMs reach a loopback update server.
pub fn binaries(arch: Arch) -> Result<()> {
    if Arch::host() != Some(arch) {
        bail!("building {arch} images on a {} host needs the cross toolchain, which is not set up yet", std::env::consts::ARCH);
    }
    Cmd::new(env!("CARGO"))
        .args(["build", "--release", "--package", "cairn-agent", "--package", "cairn-builder"])
        .args(["--package", "cairn-qemu-tests"])
        .current_dir(paths::workspace())
        .progress()
        .run()
        .context("building the agent and the builder")
}

/// `cairn-test-relay`, QEMU's guestfwd command for reaching a loopback server.
pub fn relay() -> std::path::PathBuf {
    paths::release_bin().join("cairn-test-relay")
}

pub fn builder() -> std::path::PathBuf {
    paths::release_bin().join("cairn-build")
}

/// Compose and write the image of `flavor` with the given cache and manifest.
pub fn image_with(arch: Arch, flavor: &str, manifest: &std::path::Path, cache: &std::path::Path) -> Result<BuiltImage> {
    let builder = builder();
    let keys = paths::keys();
    let repo = paths::repo(arch);
    Cmd::new(&builder).arg("keygen").arg("--keys").arg(&keys).run()?;
    let target = |cmd: Cmd| {
        cmd.arg("--manifest")
            .arg(manifest)
            .args(["--flavor", flavor, "--arch", arch.as_str()])
            .arg("--repo")
            .arg(&repo)
    };
    target(Cmd::new(&builder).arg("compose"))
        .arg("--cache")
        .arg(cache)
        .arg("--keys")
        .arg(&keys)
        .arg("--agent-dir")
        .arg(paths::release_bin())
        .progress()
        .run()
        .context("composing")?;
    let out = target(Cmd::new(&builder).arg("image"))
        .arg("--output")
        .arg(paths::images(arch))
        .progress()
        .output()
        .context("writing the disk image")?;
    serde_json::from_str(&out.stdout).context("reading what cairn-build image wrote")
}

/// The whole build of one flavour from the repo's manifest.
pub fn build(arch: Arch, flavor: &str) -> Result<BuiltImage> {
    host::ensure_build_tools()?;
    binaries(arch)?;
    image_with(arch, flavor, &paths::manifest(), &paths::cache())
}
