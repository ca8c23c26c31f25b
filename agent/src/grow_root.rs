//! Grow the root partition and its ext4 filesystem to fill the disk.
//!
//! Images are small; disks are not. On every boot (it is a no-op once done)
//! this finds the block device holding `/sysroot`, moves the backup GPT to
//! the end of a disk that grew, extends the last partition to the end, tells
//! the kernel, and grows ext4 online. The decision is pure
//! ([`plan`]); the doing goes through the process helper.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::process::Cmd;

/// Sectors (512 B) a partition end may sit before the disk's end and still
/// count as filling it: 1 MiB alignment plus the 33-sector backup GPT.
const SLACK_SECTORS: u64 = 2048 + 34;

/// Where the root filesystem lives, as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDevice {
    /// e.g. `/dev/vda`, `/dev/nvme0n1`, `/dev/sda`.
    pub disk: PathBuf,
    /// e.g. `/dev/vda2`.
    pub partition: PathBuf,
    pub number: u32,
    pub disk_sectors: u64,
    pub part_start: u64,
    pub part_sectors: u64,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The partition already ends at the disk's end: only make sure the
    /// filesystem fills the partition.
    FilesystemOnly,
    /// Extend the partition by this many sectors, then the filesystem.
    Grow { extra_sectors: u64 },
}

pub fn plan(dev: &RootDevice) -> Plan {
    let end = dev.part_start + dev.part_sectors;
    let free = dev.disk_sectors.saturating_sub(end);
    if free > SLACK_SECTORS {
        Plan::Grow {
            extra_sectors: free - SLACK_SECTORS,
        }
    } else {
        Plan::FilesystemOnly
    }
}

/// Find the device mounted at `mount_point` via `sys` (normally `/sys`) and
/// the mount table `mountinfo` (normally `/proc/self/mountinfo`).
pub fn find_root_device(sys: &Path, mountinfo: &str, mount_point: &str) -> Result<RootDevice> {
    let majmin = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 4 && f[4] == mount_point).then(|| f[2].to_owned())
        })
        .next_back()
        .with_context(|| format!("{mount_point} is not mounted"))?;
    let part_dir = fs::canonicalize(sys.join("dev/block").join(&majmin))
        .with_context(|| format!("resolving block device {majmin}"))?;
    let read_u64 = |p: PathBuf| -> Result<u64> {
        fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", p.display()))
    };
    let number_path = part_dir.join("partition");
    if !number_path.exists() {
        bail!("{mount_point} ({majmin}) is not on a partition; nothing to grow");
    }
    let number = read_u64(number_path)? as u32;
    let disk_dir = part_dir.parent().context("partition has no disk")?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Ok(RootDevice {
        disk: Path::new("/dev").join(name(disk_dir)),
        partition: Path::new("/dev").join(name(&part_dir)),
        number,
        disk_sectors: read_u64(disk_dir.join("size"))?,
        part_start: read_u64(part_dir.join("start"))?,
        part_sectors: read_u64(part_dir.join("size"))?,
    })
}

/// Grow the root filesystem mounted at `mount_point` to fill its disk.
pub fn grow(mount_point: &str) -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading the mount table")?;
    let dev = find_root_device(Path::new("/sys"), &mountinfo, mount_point)?;
    let disk = dev.disk.display().to_string();
    match plan(&dev) {
        Plan::FilesystemOnly => {
            tracing::info!(partition = %dev.partition.display(), "partition fills the disk");
        }
        Plan::Grow { extra_sectors } => {
            tracing::info!(partition = %dev.partition.display(), extra_mib = extra_sectors / 2048, "growing partition");
            // A disk that grew still has its backup GPT at the old end.
            Cmd::new("sfdisk").args(["--relocate", "gpt-bak-std", &disk]).run()?;
            Cmd::new("sfdisk")
                .args(["--no-reread", "--no-tell-kernel", "-N", &dev.number.to_string(), &disk])
                .stdin_bytes(", +\n")
                .run()
                .context("extending the root partition")?;
            Cmd::new("partx")
                .args(["--update", "--nr", &dev.number.to_string(), &disk])
                .run()
                .context("telling the kernel the new partition size")?;
        }
    }
    Cmd::new("resize2fs")
        .arg(&dev.partition)
        .run()
        .context("growing the root filesystem")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(disk: u64, start: u64, size: u64) -> RootDevice {
        RootDevice {
            disk: "/dev/vda".into(),
            partition: "/dev/vda2".into(),
            number: 2,
            disk_sectors: disk,
            part_start: start,
            part_sectors: size,
        }
    }

    #[test]
    fn image_sized_disk_needs_no_growth() {
        // 1 MiB + 64 MiB ESP + 2 GiB root + 1 MiB tail, as the builder lays it out.
        let mib = 2048;
        assert_eq!(
            plan(&dev((66 + 2048) * mib, 65 * mib, 2048 * mib)),
            Plan::FilesystemOnly
        );
    }

    #[test]
    fn bigger_disk_grows_by_all_but_the_slack() {
        let mib = 2048;
        let d = dev(8192 * mib, 65 * mib, 2048 * mib);
        assert_eq!(
            plan(&d),
            Plan::Grow {
                extra_sectors: (8192 - 65 - 2048) * mib - SLACK_SECTORS
            }
        );
    }

    #[test]
    fn finds_device_through_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let disk = sys.join("devices/pci0000:00/0000:00:04.0/virtio2/block/vda");
        let part = disk.join("vda2");
        fs::create_dir_all(&part).unwrap();
        fs::write(disk.join("size"), "16777216\n").unwrap();
        fs::write(part.join("partition"), "2\n").unwrap();
        fs::write(part.join("start"), "133120\n").unwrap();
        fs::write(part.join("size"), "4194304\n").unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&part, sys.join("dev/block/254:2")).unwrap();
        let mountinfo = "22 1 254:2 / /sysroot rw,relatime shared:1 - ext4 /dev/vda2 rw\n\
                         23 22 254:2 /ostree/deploy/cairn/var /var rw shared:2 - ext4 /dev/vda2 rw\n";
        let d = find_root_device(sys, mountinfo, "/sysroot").unwrap();
        assert_eq!(d.disk, PathBuf::from("/dev/vda"));
        assert_eq!(d.partition, PathBuf::from("/dev/vda2"));
        assert_eq!(
            (d.number, d.disk_sectors, d.part_start, d.part_sectors),
            (2, 16777216, 133120, 4194304)
        );
        let e = find_root_device(sys, mountinfo, "/boot").unwrap_err();
        assert!(e.to_string().contains("/boot is not mounted"));
    }
}
