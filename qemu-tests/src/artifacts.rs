//! What `cargo xtask test` built for the VM tests, handed over in a JSON
//! file named by `CAIRN_TEST_ARTIFACTS`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use serde::{Deserialize, Serialize};

pub const ENV: &str = "CAIRN_TEST_ARTIFACTS";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifacts {
    pub arch: Arch,
    pub platform: Platform,
    pub dev: BuiltImage,
    pub prod: BuiltImage,
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
