//! GPT disk image assembly, in-process and without mounts.
//!
//! The layout is computed by pure code ([`DiskLayout`]); the partition table
//! is written with the `gpt` crate straight into the image file. The EFI
//! System Partition is made in a file of its own by `mkfs.fat` and mtools
//! and copied in through a [`Window`] onto the partition's byte range. The
//! root filesystem is written by `mkfs.ext4 -d` at its offset (see
//! `image.rs`).

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use cairn_common::layout::{Arch, ESP_LABEL, ESP_PARTNUM, ROOT_LABEL, ROOT_PARTNUM};
use cairn_common::process::Cmd;
use gpt::partition_types::{self, Type};
use sha2::{Digest, Sha256};

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// First usable byte (partitions are MiB-aligned; the primary GPT fits before it).
const FIRST_PARTITION_OFFSET: u64 = MIB;
/// Room kept at the end for the backup GPT (33 sectors), rounded to a MiB.
const TAIL: u64 = MIB;

/// Where each partition lives in the image, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLayout {
    pub esp_offset: u64,
    pub esp_size: u64,
    pub root_offset: u64,
    pub root_size: u64,
    pub total_size: u64,
}

impl DiskLayout {
    pub fn new(esp_size: u64, root_size: u64) -> DiskLayout {
        DiskLayout::with_size_unit(esp_size, root_size, MIB)
    }

    /// A layout whose whole size is a multiple of `unit` (a MiB multiple:
    /// GCE imports only whole GiB); the slack lies after the root
    /// partition, which grows into it on the first boot.
    pub fn with_size_unit(esp_size: u64, root_size: u64, unit: u64) -> DiskLayout {
        debug_assert!(unit.is_multiple_of(MIB), "a disk's size unit is a MiB multiple");
        let esp_offset = FIRST_PARTITION_OFFSET;
        let root_offset = align_up(esp_offset + esp_size, MIB);
        let total_size = align_up(align_up(root_offset + root_size, MIB) + TAIL, unit);
        DiskLayout {
            esp_offset,
            esp_size,
            root_offset,
            root_size,
            total_size,
        }
    }
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The names a disk's two partitions carry: the GPT partition names, the
/// ESP's also as its FAT volume label (at most 11 characters). The root
/// file system's own label is set by whoever writes it (`mkfs.ext4 -L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionNames<'a> {
    pub esp: &'a str,
    pub root: &'a str,
}

impl PartitionNames<'static> {
    /// Cairn's: [`ESP_LABEL`] and [`ROOT_LABEL`].
    pub const CAIRN: PartitionNames<'static> = PartitionNames {
        esp: ESP_LABEL,
        root: ROOT_LABEL,
    };
}

/// Write a protective MBR and a GPT with Cairn's ESP and root partitions.
pub fn write_partition_table(file: &mut File, layout: &DiskLayout, arch: Arch) -> Result<()> {
    write_partition_table_named(file, layout, arch, PartitionNames::CAIRN)
}

/// Write a protective MBR and a GPT with an ESP and a root partition of
/// the given names.
pub fn write_partition_table_named(
    file: &mut File,
    layout: &DiskLayout,
    arch: Arch,
    names: PartitionNames<'_>,
) -> Result<()> {
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(layout.total_size / SECTOR - 1).unwrap_or(0xFFFF_FFFF));
    mbr.overwrite_lba0(file).context("writing the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, None)
        .context("creating the GPT")?;
    let root_type = Type::from_str(arch.root_partition_type()).map_err(|e| anyhow!("root partition type GUID: {e}"))?;
    disk.add_partition_at(
        names.esp,
        ESP_PARTNUM,
        layout.esp_offset / SECTOR,
        layout.esp_size / SECTOR,
        partition_types::EFI,
        0,
    )
    .context("adding the ESP to the GPT")?;
    disk.add_partition_at(
        names.root,
        ROOT_PARTNUM,
        layout.root_offset / SECTOR,
        layout.root_size / SECTOR,
        root_type,
        0,
    )
    .context("adding the root partition to the GPT")?;
    disk.write().context("writing the GPT")?;
    Ok(())
}

/// A file to place on the ESP.
#[derive(Clone, Copy)]
pub struct EspFile<'a> {
    /// Path with `/` separators, relative to the ESP root.
    pub path: &'a str,
    pub contents: &'a [u8],
}

/// The time every file and folder on the ESP carries (2023-06-10, the
/// package layer's `SOURCE_DATE_EPOCH`), so the same input makes the same ESP.
const ESP_EPOCH: &str = "1686355200";

/// The ESP's FAT volume id (`XXXX-XXXX` in `/dev/disk/by-uuid`), derived from
/// the commit the image holds: the same for the same commit, different
/// between images, so two Cairn disks in one machine do not collide.
pub fn esp_volume_id(commit: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"cairn ESP volume id\0")
        .chain_update(commit.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Make Cairn's ESP (see [`make_esp`]) in a file in `work` and copy it into
/// the disk at its offset; the partition starts where `layout` says.
pub fn write_esp(
    disk: &mut File,
    layout: &DiskLayout,
    volume_id: u32,
    files: &[EspFile<'_>],
    work: &Path,
) -> Result<()> {
    write_esp_labelled(disk, layout, ESP_LABEL, volume_id, files, work)
}

/// [`write_esp`] with the FAT volume label `label`.
pub fn write_esp_labelled(
    disk: &mut File,
    layout: &DiskLayout,
    label: &str,
    volume_id: u32,
    files: &[EspFile<'_>],
    work: &Path,
) -> Result<()> {
    let esp = tempfile::Builder::new()
        .prefix("esp-")
        .suffix(".img")
        .tempfile_in(work)
        .with_context(|| format!("creating the ESP's file in {}", work.display()))?;
    make_esp_labelled(
        esp.path(),
        layout.esp_size,
        label,
        volume_id,
        layout.esp_offset / SECTOR,
        files,
    )?;
    let mut from = File::open(esp.path())?;
    let mut window = Window::new(disk, layout.esp_offset, layout.esp_size)?;
    let copied = copy_sparse(&mut from, &mut window).context("copying the ESP into the disk")?;
    if copied != layout.esp_size {
        bail!("the ESP is {copied} bytes, not the partition's {}", layout.esp_size);
    }
    Ok(())
}

/// Copy `from` into `to` (a fresh, sparse region that reads as zeros),
/// seeking over blocks of zeros so the image file stays sparse. Returns
/// the bytes copied, zeros included.
fn copy_sparse(from: &mut impl Read, to: &mut (impl Write + Seek)) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return Ok(total);
        }
        if buf[..n].iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(n as i64))?;
        } else {
            to.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
}

/// Write a FAT32 file system labelled [`ESP_LABEL`] holding `files` to the
/// file `path` (created or truncated, `size` bytes): `mkfs.fat`, then mtools'
/// `mmd` and `mcopy`, which write the image file; nothing is mounted. The
/// result passes `fsck.fat -n` without a message and is the same bytes for
/// the same input: `mkfs.fat --invariant` with the volume id given, files
/// and folders created in path order with a fixed time. `start_sector` is
/// where the partition starts on its disk (the boot sector's hidden sectors).
pub fn make_esp(path: &Path, size: u64, volume_id: u32, start_sector: u64, files: &[EspFile<'_>]) -> Result<()> {
    make_esp_labelled(path, size, ESP_LABEL, volume_id, start_sector, files)
}

/// [`make_esp`] with the FAT volume label `label` (at most 11 characters:
/// capitals, digits, `-` and `_`).
pub fn make_esp_labelled(
    path: &Path,
    size: u64,
    label: &str,
    volume_id: u32,
    start_sector: u64,
    files: &[EspFile<'_>],
) -> Result<()> {
    let plain = label
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if label.is_empty() || label.len() > 11 || !plain {
        bail!("FAT volume label {label:?}: 1 to 11 capitals, digits, '-' or '_'");
    }
    let kib = size / 1024;
    if kib * 1024 != size {
        bail!("the ESP's size {size} is not a whole number of KiB");
    }
    let (dirs, files) = esp_plan(files)?;
    let image = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    image
        .set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    drop(image);
    // `--invariant` pins the label entry's time (and a volume id, which `-i` after it replaces).
    Cmd::new("mkfs.fat")
        .args(["-F", "32", "-n", label, "--invariant"])
        .arg("-i")
        .arg(format!("{volume_id:08X}"))
        .arg("-h")
        .arg(start_sector.to_string())
        .arg(path)
        .arg(kib.to_string())
        .run()
        .context("formatting the ESP as FAT32")?;
    if !dirs.is_empty() {
        let mut mmd = mtools("mmd").arg("-i").arg(path);
        for d in &dirs {
            mmd = mmd.arg(format!("::/{d}"));
        }
        mmd.run().context("creating the ESP's folders")?;
    }
    let staging = tempfile::Builder::new()
        .prefix(".esp-files-")
        .tempdir_in(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("creating a folder for the ESP's files")?;
    for (i, f) in files.iter().enumerate() {
        let source = staging.path().join(i.to_string());
        std::fs::write(&source, f.contents).with_context(|| format!("writing {}", source.display()))?;
        mtools("mcopy")
            .arg("-i")
            .arg(path)
            .arg(&source)
            .arg(format!("::/{}", f.path))
            .run()
            .with_context(|| format!("writing ESP file {}", f.path))?;
    }
    Ok(())
}

/// An mtools command on an image file: no geometry check (a partition image
/// need not be whole cylinders), and times from [`ESP_EPOCH`] in UTC (FAT
/// keeps local time).
fn mtools(program: &str) -> Cmd {
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", ESP_EPOCH)
        .env("TZ", "UTC")
}

/// The folders to create (parents first) and the files in path order, so
/// the ESP's directories list them the same way every time. Names are kept
/// to letters, digits, `.`, `-` and `_` (no mtools wildcards, no `..`).
fn esp_plan<'a, 'b>(files: &'b [EspFile<'a>]) -> Result<(Vec<String>, Vec<&'b EspFile<'a>>)> {
    let mut dirs = BTreeSet::new();
    let mut seen = HashSet::new();
    let mut sorted: Vec<&EspFile<'_>> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(b.path));
    for f in &sorted {
        if !seen.insert(f.path.to_ascii_lowercase()) {
            bail!("ESP file {} is given twice (FAT names ignore case)", f.path);
        }
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts {
            let plain = part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if part.is_empty() || part.chars().all(|c| c == '.') || !plain {
                bail!(
                    "ESP path {:?}: each name must be letters, digits, '.', '-' or '_'",
                    f.path
                );
            }
        }
        for n in 1..parts.len() {
            dirs.insert(parts[..n].join("/"));
        }
    }
    Ok((dirs.into_iter().collect(), sorted))
}

/// A read/write/seek view of `len` bytes of a file starting at `start`.
/// Access past the end is an error, so nothing can spill into a neighbour.
#[derive(Debug)]
pub struct Window<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a mut File, start: u64, len: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(start))?;
        Ok(Self {
            file,
            start,
            len,
            pos: 0,
        })
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if n == 0 {
            return Ok(0);
        }
        let read = self.file.read(&mut buf[..n])?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let written = self.file.write(&buf[..n])?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target
            .filter(|&t| t <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition"))?;
        self.file.seek(SeekFrom::Start(self.start + target))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_mib_aligned_with_room_for_backup_gpt() {
        let l = DiskLayout::new(64 * MIB, 2048 * MIB);
        assert_eq!(l.esp_offset, MIB);
        assert_eq!(l.root_offset, 65 * MIB);
        assert_eq!(l.total_size, (65 + 2048 + 1) * MIB);
        assert!(l.total_size - (l.root_offset + l.root_size) >= 33 * SECTOR);
    }

    #[test]
    fn a_layout_for_gce_is_a_whole_number_of_gib_with_the_same_partitions() {
        let mib = DiskLayout::new(64 * MIB, 2048 * MIB);
        let gib = DiskLayout::with_size_unit(64 * MIB, 2048 * MIB, 1024 * MIB);
        assert_eq!(gib.total_size, 3 * 1024 * MIB);
        assert_eq!(
            (gib.esp_offset, gib.root_offset, gib.root_size),
            (mib.esp_offset, mib.root_offset, mib.root_size)
        );
    }

    #[test]
    fn writes_a_gpt_others_can_read() {
        let layout = DiskLayout::new(40 * MIB, 8 * MIB);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tmp.reopen().unwrap();
        f.set_len(layout.total_size).unwrap();
        write_partition_table(&mut f, &layout, Arch::X86_64).unwrap();

        let disk = gpt::GptConfig::new().open(tmp.path()).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts[&1].name, ESP_LABEL);
        assert_eq!(parts[&1].part_type_guid, partition_types::EFI);
        assert_eq!(parts[&1].first_lba, layout.esp_offset / SECTOR);
        assert_eq!(parts[&1].last_lba, (layout.esp_offset + layout.esp_size) / SECTOR - 1);
        assert_eq!(parts[&2].name, ROOT_LABEL);
        assert_eq!(parts[&2].first_lba, layout.root_offset / SECTOR);
        assert_eq!(parts[&2].last_lba, (layout.root_offset + layout.root_size) / SECTOR - 1);
    }

    #[test]
    fn partition_names_are_the_callers() {
        let layout = DiskLayout::new(40 * MIB, 8 * MIB);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tmp.reopen().unwrap();
        f.set_len(layout.total_size).unwrap();
        let names = PartitionNames {
            esp: "OTHER-ESP",
            root: "other-root",
        };
        write_partition_table_named(&mut f, &layout, Arch::Aarch64, names).unwrap();
        let disk = gpt::GptConfig::new().open(tmp.path()).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts[&1].name, "OTHER-ESP");
        assert_eq!(parts[&2].name, "other-root");
        assert_eq!(
            parts[&2].part_type_guid,
            Type::from_str(Arch::Aarch64.root_partition_type()).unwrap()
        );
    }

    #[test]
    fn an_esp_label_fat_cannot_hold_is_refused_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "lower", "TWELVE-CHARS", "A B"] {
            let err = make_esp_labelled(&d.path().join("esp.img"), 64 * MIB, bad, 1, 2048, &[]).unwrap_err();
            assert!(format!("{err:#}").contains("FAT volume label"), "{bad:?}: {err:#}");
        }
        assert!(!d.path().join("esp.img").exists());
    }

    #[test]
    fn esp_volume_id_is_the_commits_and_differs_between_commits() {
        let a = "6f1f0bd4cb1e4cb0ae7fd1e1c7f8cbb8b0b7f1a1e7e1b6a83b53f3d9a0a1c2d3";
        let b = "6f1f0bd4cb1e4cb0ae7fd1e1c7f8cbb8b0b7f1a1e7e1b6a83b53f3d9a0a1c2d4";
        assert_eq!(esp_volume_id(a), esp_volume_id(a));
        assert_ne!(esp_volume_id(a), esp_volume_id(b));
        // Pinned: a change of derivation changes every image's /dev/disk/by-uuid name.
        assert_eq!(esp_volume_id(""), 0x24D8_C149);
    }

    #[test]
    fn esp_plan_makes_parents_first_and_lists_files_in_path_order() {
        let files = [
            EspFile {
                path: "EFI/cairn/grubenv",
                contents: b"",
            },
            EspFile {
                path: "EFI/BOOT/grub.cfg",
                contents: b"",
            },
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                contents: b"",
            },
            EspFile {
                path: "top.txt",
                contents: b"",
            },
        ];
        let (dirs, sorted) = esp_plan(&files).unwrap();
        assert_eq!(dirs, ["EFI", "EFI/BOOT", "EFI/cairn"]);
        let paths: Vec<&str> = sorted.iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "EFI/BOOT/grub.cfg",
                "EFI/cairn/grubenv",
                "top.txt"
            ]
        );
    }

    #[test]
    fn esp_plan_refuses_odd_names_and_duplicates() {
        for bad in [
            "",
            "/EFI/x",
            "EFI//x",
            "EFI/../x",
            "EFI/./x",
            "EFI/*.efi",
            "EFI/a b",
            "EFI/x/",
        ] {
            let err = esp_plan(&[EspFile {
                path: bad,
                contents: b"",
            }])
            .map(|_| ())
            .unwrap_err();
            assert!(format!("{err:#}").contains("each name must be"), "{bad:?}: {err:#}");
        }
        let twice = [
            EspFile {
                path: "EFI/BOOT/grub.cfg",
                contents: b"",
            },
            EspFile {
                path: "EFI/boot/GRUB.cfg",
                contents: b"",
            },
        ];
        let err = esp_plan(&twice).map(|_| ()).unwrap_err();
        assert!(format!("{err:#}").contains("given twice"), "{err:#}");
    }

    #[test]
    fn sparse_copy_skips_zero_blocks_and_copies_the_rest() {
        let mut data = vec![0u8; 300 << 10];
        data[5] = 1;
        data[(200 << 10) + 7] = 2;
        let mut out = io::Cursor::new(vec![0u8; data.len()]);
        assert_eq!(copy_sparse(&mut &data[..], &mut out).unwrap(), data.len() as u64);
        assert_eq!(out.into_inner(), data);
    }

    #[test]
    fn window_refuses_to_spill() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tmp.reopen().unwrap();
        let mut w = Window::new(&mut f, 100, 10).unwrap();
        assert!(w.write_all(&[1u8; 11]).is_err());
        assert!(w.seek(SeekFrom::Start(11)).is_err());
    }
}
