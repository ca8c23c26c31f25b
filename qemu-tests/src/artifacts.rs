//! What `cargo xtask test` built for the VM tests, handed over in a JSON
//! file named by `CAIRN_TEST_ARTIFACTS`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use serde::{Deserialize, Serialize};

pub const ENV: &str = "CAIRN_TEST_ARTIFACTS";

/// The VM tests that boot the prod image.
pub const PROD_TESTS: &[&str] = &[
    "prod_image_reaches_multi_user_and_offers_no_login",
    "prod_image_provisioned_by_ignition_over_fw_cfg_takes_ssh_logins_once_per_machine",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifacts {
    pub arch: Arch,
    pub platform: Platform,
    pub dev: BuiltImage,
    /// Built only when a selected test needs it (see [`PROD_TESTS`]): on an
    /// emulated foreign arch its package layer alone takes ten minutes.
    pub prod: Option<BuiltImage>,
    /// The `cairn-build` binary the images were built with.
    pub builder: PathBuf,
    pub manifest: PathBuf,
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub keys: PathBuf,
    pub agent_dir: PathBuf,
    /// A static busybox built for `arch`: the test container's only binary.
    pub busybox: PathBuf,
}

/// Copy an image definition to `dest` for editing: the manifest's folder
/// (overlays) as `dest/rootfs` and the `kernel-config` folder beside it (the
/// manifest names fragments as `../kernel-config/…`). Returns the copy's
/// manifest path.
pub fn copy_image_definition(manifest: &Path, dest: &Path) -> Result<PathBuf> {
    let folder = manifest.parent().context("the manifest has no folder")?;
    let kernel_config = folder
        .parent()
        .context("the manifest's folder has no parent")?
        .join("kernel-config");
    for (from, to) in [
        (folder, dest.join("rootfs")),
        (kernel_config.as_path(), dest.join("kernel-config")),
    ] {
        std::fs::create_dir_all(&to)?;
        cairn_common::process::Cmd::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(&to)
            .run()?;
    }
    Ok(dest
        .join("rootfs")
        .join(manifest.file_name().context("the manifest has no file name")?))
}

impl Artifacts {
    /// Load the artifacts of this run; fails (never skips) when absent, so
    /// an ignored test run by hand says what it needs.
    pub fn load() -> Result<Artifacts> {
        let path = std::env::var_os(ENV)
            .map(PathBuf::from)
            .with_context(|| format!("{ENV} is not set: VM tests run through `cargo xtask test`"))?;
        Artifacts::read(&path)
    }

    pub fn read(path: &Path) -> Result<Artifacts> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}
