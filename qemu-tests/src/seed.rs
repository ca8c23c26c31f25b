//! A NoCloud seed: a small volume labelled `CIDATA` holding `user-data`,
//! `meta-data` and optionally `network-config`, as cloud-init's NoCloud
//! datasource (and Cairn's provisioner) reads it. Either an ISO 9660 image
//! (`xorriso`, the form cloud-init's documentation makes) or a FAT volume
//! (`mkfs.fat` and `mtools`); no mounts.

use std::path::Path;

use anyhow::{Context as _, Result};
use cairn_common::process::Cmd;

/// The file system a seed volume is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedVolume {
    Iso9660,
    Vfat,
}

/// The files a seed holds.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub user_data: Vec<u8>,
    pub meta_data: String,
    pub network_config: Option<String>,
}

impl Seed {
    /// A seed whose `meta-data` names `instance_id`.
    pub fn new(instance_id: &str, user_data: impl Into<Vec<u8>>) -> Seed {
        Seed {
            user_data: user_data.into(),
            meta_data: format!("instance-id: {instance_id}\n"),
            network_config: None,
        }
    }

    /// Write the seed volume to `image` (replaced if present).
    pub fn write(&self, image: &Path, volume: SeedVolume) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut names = vec!["user-data", "meta-data"];
        std::fs::write(dir.path().join("user-data"), &self.user_data)?;
        std::fs::write(dir.path().join("meta-data"), &self.meta_data)?;
        if let Some(n) = &self.network_config {
            std::fs::write(dir.path().join("network-config"), n)?;
            names.push("network-config");
        }
        let _ = std::fs::remove_file(image);
        match volume {
            SeedVolume::Iso9660 => iso9660(image, "CIDATA", dir.path()),
            SeedVolume::Vfat => {
                // 2 MiB, FAT12: room for any config, and a size QEMU takes as a disk.
                Cmd::new("mkfs.fat")
                    .args(["-C", "-n", "CIDATA"])
                    .arg(image)
                    .arg("2048")
                    .run()
                    .with_context(|| format!("making the seed volume {}", image.display()))?;
                for name in names {
                    Cmd::new("mcopy")
                        .arg("-i")
                        .arg(image)
                        .arg(dir.path().join(name))
                        .arg(format!("::{name}"))
                        .run()
                        .with_context(|| format!("copying {name} into the seed"))?;
                }
                Ok(())
            }
        }
    }

    /// A seed from a folder holding `user-data`, `meta-data` and optionally
    /// `network-config` (`cargo xtask run --seed DIR`).
    pub fn from_dir(dir: &Path) -> Result<Seed> {
        let read = |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("{}/{name}", dir.display()));
        Ok(Seed {
            user_data: read("user-data")?,
            meta_data: String::from_utf8_lossy(&read("meta-data")?).into_owned(),
            network_config: read("network-config")
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        })
    }
}

/// An ISO 9660 image (Joliet and Rock Ridge names) labelled `label`
/// holding the tree under `root`, as clouds make their CD-ROM media
/// (NoCloud seeds, OpenStack config drives, Azure's provisioning media).
pub fn iso9660(image: &Path, label: &str, root: &Path) -> Result<()> {
    let _ = std::fs::remove_file(image);
    Cmd::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-volid",
            label,
            "-joliet",
            "-rational-rock",
            "-output",
        ])
        .arg(image)
        .arg(root)
        .run()
        .with_context(|| format!("making the ISO 9660 image {}", image.display()))
}
