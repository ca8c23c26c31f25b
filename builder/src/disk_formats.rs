//! The disk image formats `cairn-build image --format` writes, each from
//! the raw GPT image, in the form its platform's import takes:
//!
//! - `raw`: the image itself (QEMU, OpenStack, Tencent/Alibaba/Huawei
//!   import, `dd` to a disk);
//! - `qcow2`: QEMU's format (OpenStack, the Chinese clouds' imports);
//! - `vhd`: a *fixed* VHD whose virtual size is a whole MiB (Azure refuses
//!   any other), written with `force_size` so the size is exactly the raw
//!   image's and not rounded to a CHS geometry;
//! - `vmdk`: *streamOptimized* (vSphere's OVA form, and AWS's VM import);
//! - `gce`: Google's image import: `disk.raw`, a whole number of GiB, in a
//!   `tar --format=oldgnu -S` archive compressed with gzip.
//!
//! Each output is written under `<name>.partial` and renamed once whole.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use cairn_common::process::Cmd;

use crate::image::Partial;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
    Vhd,
    Vmdk,
    Gce,
}

impl DiskFormat {
    pub const ALL: [DiskFormat; 5] = [
        DiskFormat::Raw,
        DiskFormat::Qcow2,
        DiskFormat::Vhd,
        DiskFormat::Vmdk,
        DiskFormat::Gce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Gce => "gce",
        }
    }

    /// The output's file name for an image named `stem`.
    pub fn file_name(self, stem: &str) -> String {
        match self {
            DiskFormat::Gce => format!("{stem}.gce.tar.gz"),
            f => format!("{stem}.{}", f.name()),
        }
    }

    /// What `qemu-img convert` is given to write this format from raw
    /// (`None`: not a `qemu-img` format).
    pub fn qemu_img_options(self) -> Option<&'static [&'static str]> {
        match self {
            DiskFormat::Qcow2 => Some(&["-O", "qcow2"]),
            DiskFormat::Vhd => Some(&["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
            DiskFormat::Vmdk => Some(&["-O", "vmdk", "-o", "subformat=streamOptimized"]),
            DiskFormat::Raw | DiskFormat::Gce => None,
        }
    }

    /// The unit the whole disk's size must be a multiple of, for this
    /// format's platform to import it.
    pub fn size_unit(self) -> u64 {
        match self {
            // Google: "the image size must be in increments of 1 GB" (GiB).
            DiskFormat::Gce => GIB,
            // Azure's rule for VHDs; the layout is MiB-aligned anyway.
            _ => MIB,
        }
    }

    /// How `qemu-img info` names the format of a written file.
    pub fn qemu_img_name(self) -> &'static str {
        match self {
            DiskFormat::Raw | DiskFormat::Gce => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vpc",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The unit the disk's size is rounded up to so that every one of
/// `formats` imports it (the largest of their units).
pub fn size_unit(formats: &[DiskFormat]) -> u64 {
    formats.iter().map(|f| f.size_unit()).max().unwrap_or(MIB)
}

/// What `image` writes besides the raw image: the formats asked for;
/// else, for an image made for a cloud, the formats its import takes (the
/// manifest's `[clouds.<name>] formats`); else qcow2.
pub fn chosen(asked: &[DiskFormat], cloud: Option<&[DiskFormat]>) -> Vec<DiskFormat> {
    let formats = match cloud {
        _ if !asked.is_empty() => asked,
        Some(c) if !c.is_empty() => c,
        _ => &[DiskFormat::Raw, DiskFormat::Qcow2],
    };
    formats.to_vec()
}

/// Check a list of formats: not empty, each once.
pub fn check_formats(formats: &[DiskFormat]) -> Result<()> {
    if formats.is_empty() {
        bail!("name at least one of raw, qcow2, vhd, vmdk, gce");
    }
    for (i, f) in formats.iter().enumerate() {
        if formats[..i].contains(f) {
            bail!("`{f}` is named twice");
        }
    }
    Ok(())
}

/// Write `format` of the finished raw image `raw` (whose size is already a
/// multiple of the format's unit) to `output`, through `output.partial`.
pub fn write_format(raw: &Path, format: DiskFormat, output: &Path) -> Result<()> {
    let size = std::fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    if size % format.size_unit() != 0 {
        bail!(
            "{}: {size} bytes is not a whole number of {} bytes, which {format} needs",
            raw.display(),
            format.size_unit()
        );
    }
    let partial = Partial::new(output);
    match format {
        DiskFormat::Raw => bail!("the raw image is the build's own output"),
        DiskFormat::Qcow2 | DiskFormat::Vhd | DiskFormat::Vmdk => {
            Cmd::new("qemu-img")
                .args(["convert", "-f", "raw"])
                .args(format.qemu_img_options().expect("a qemu-img format"))
                .arg(raw)
                .arg(partial.path())
                .run()
                .with_context(|| format!("converting the image to {format}"))?;
        }
        DiskFormat::Gce => write_gce(raw, partial.path())?,
    }
    partial.commit()
}

/// Google's form: the raw disk as `disk.raw` in a sparse (`-S`) oldgnu tar
/// archive, gzip-compressed.
fn write_gce(raw: &Path, output: &Path) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix(".gce-")
        .tempdir_in(output.parent().context("output has a folder")?)?;
    let disk = dir.path().join("disk.raw");
    // A hard link when it can (same file system), so nothing is copied.
    if std::fs::hard_link(raw, &disk).is_err() {
        Cmd::new("cp").args(["--sparse=always"]).arg(raw).arg(&disk).run()?;
    }
    Cmd::new("tar")
        .args(["--format=oldgnu", "-S", "-czf"])
        .arg(output)
        .arg("-C")
        .arg(dir.path())
        .arg("disk.raw")
        .run()
        .context("archiving disk.raw for GCE")
}

/// The outputs of a build: each format's file.
pub fn outputs(out_dir: &Path, stem: &str, formats: &[DiskFormat]) -> Vec<(DiskFormat, PathBuf)> {
    formats.iter().map(|&f| (f, out_dir.join(f.file_name(stem)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_say_the_format() {
        assert_eq!(
            DiskFormat::Vhd.file_name("cairn-1-x86_64-prod"),
            "cairn-1-x86_64-prod.vhd"
        );
        assert_eq!(DiskFormat::Gce.file_name("c"), "c.gce.tar.gz");
        assert_eq!(DiskFormat::Raw.file_name("c"), "c.raw");
    }

    #[test]
    fn each_cloud_gets_the_subformat_its_import_takes() {
        assert_eq!(
            DiskFormat::Vhd.qemu_img_options().unwrap(),
            ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]
        );
        assert_eq!(
            DiskFormat::Vmdk.qemu_img_options().unwrap(),
            ["-O", "vmdk", "-o", "subformat=streamOptimized"]
        );
        assert!(DiskFormat::Gce.qemu_img_options().is_none());
    }

    #[test]
    fn gce_makes_the_disk_a_whole_number_of_gib() {
        assert_eq!(size_unit(&[DiskFormat::Raw, DiskFormat::Vhd]), MIB);
        assert_eq!(size_unit(&[DiskFormat::Vhd, DiskFormat::Gce]), GIB);
        assert_eq!(size_unit(&[]), MIB);
    }

    #[test]
    fn a_format_list_names_each_once() {
        assert!(check_formats(&[DiskFormat::Raw, DiskFormat::Qcow2]).is_ok());
        assert_eq!(
            check_formats(&[DiskFormat::Vhd, DiskFormat::Vhd])
                .unwrap_err()
                .to_string(),
            "`vhd` is named twice"
        );
        assert!(check_formats(&[]).is_err());
    }

    #[test]
    fn a_size_the_format_cannot_take_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("x.raw");
        std::fs::File::create(&raw).unwrap().set_len(3 * MIB).unwrap();
        let out = dir.path().join("x.gce.tar.gz");
        let e = write_format(&raw, DiskFormat::Gce, &out).unwrap_err().to_string();
        assert!(
            e.contains("not a whole number of 1073741824 bytes, which gce needs"),
            "{e}"
        );
        assert!(!out.exists() && !dir.path().join("x.gce.tar.gz.partial").exists());
    }

    #[test]
    fn the_formats_asked_for_else_the_cloud_s_else_qcow2() {
        use DiskFormat::*;
        assert_eq!(chosen(&[Vmdk], Some(&[Vhd])), [Vmdk]);
        assert_eq!(chosen(&[], Some(&[Vhd])), [Vhd]);
        assert_eq!(chosen(&[], Some(&[])), [Raw, Qcow2]);
        assert_eq!(chosen(&[], None), [Raw, Qcow2]);
    }
}
