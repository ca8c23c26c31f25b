//! GPT disk image assembly, in-process and without mounts.
//!
//! The layout is computed by pure code ([`DiskLayout`]); the partition table
//! is written with the `gpt` crate and the EFI System Partition with `fatfs`,
//! both straight into the image file through a [`Window`] onto the
//! partition's byte range. The root filesystem is written by `mkfs.ext4 -d`
//! at its offset (see `image.rs`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use cairn_common::layout::{Arch, ESP_LABEL, ESP_PARTNUM, ROOT_LABEL, ROOT_PARTNUM};
use gpt::partition_types::{self, Type};

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
        let esp_offset = FIRST_PARTITION_OFFSET;
        let root_offset = align_up(esp_offset + esp_size, MIB);
        let total_size = align_up(root_offset + root_size, MIB) + TAIL;
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

/// Write a protective MBR and a GPT with the ESP and root partitions.
pub fn write_partition_table(file: &mut File, layout: &DiskLayout, arch: Arch) -> Result<()> {
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
        ESP_LABEL,
        ESP_PARTNUM,
        layout.esp_offset / SECTOR,
        layout.esp_size / SECTOR,
        partition_types::EFI,
        0,
    )
    .context("adding the ESP to the GPT")?;
    disk.add_partition_at(
        ROOT_LABEL,
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
pub struct EspFile<'a> {
    /// Path with `/` separators, relative to the ESP root.
    pub path: &'a str,
    pub contents: &'a [u8],
}

/// Format the ESP as FAT32 and write `files` into it.
pub fn write_esp(file: &mut File, layout: &DiskLayout, files: &[EspFile<'_>]) -> Result<()> {
    let mut label = [b' '; 11];
    label[..ESP_LABEL.len()].copy_from_slice(ESP_LABEL.as_bytes());
    let mut window = Window::new(file, layout.esp_offset, layout.esp_size)?;
    fatfs::format_volume(
        &mut window,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(label),
    )
    .context("formatting the ESP as FAT32")?;
    window.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut window, fatfs::FsOptions::new()).context("opening the new ESP")?;
    for f in files {
        let mut dir = fs.root_dir();
        let mut parts: Vec<&str> = f.path.split('/').collect();
        let name = parts.pop().ok_or_else(|| anyhow!("empty ESP path"))?;
        for p in parts {
            dir = match dir.open_dir(p) {
                Ok(d) => d,
                Err(_) => dir
                    .create_dir(p)
                    .with_context(|| format!("creating ESP directory {p}"))?,
            };
        }
        let mut out = dir
            .create_file(name)
            .with_context(|| format!("creating ESP file {}", f.path))?;
        out.truncate()?;
        out.write_all(f.contents)
            .with_context(|| format!("writing ESP file {}", f.path))?;
        out.flush()?;
    }
    fs.unmount().context("closing the ESP")?;
    Ok(())
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
    fn writes_a_gpt_and_fat32_esp_others_can_read() {
        let layout = DiskLayout::new(40 * MIB, 8 * MIB);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tmp.reopen().unwrap();
        f.set_len(layout.total_size).unwrap();
        write_partition_table(&mut f, &layout, Arch::X86_64).unwrap();
        let env = vec![b'#'; 1024];
        write_esp(
            &mut f,
            &layout,
            &[
                EspFile {
                    path: "EFI/BOOT/BOOTX64.EFI",
                    contents: b"MZ-not-really",
                },
                EspFile {
                    path: "EFI/cairn/grubenv",
                    contents: &env,
                },
            ],
        )
        .unwrap();

        let disk = gpt::GptConfig::new().open(tmp.path()).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts[&1].name, ESP_LABEL);
        assert_eq!(parts[&1].part_type_guid, partition_types::EFI);
        assert_eq!(parts[&1].first_lba, layout.esp_offset / SECTOR);
        assert_eq!(parts[&2].name, ROOT_LABEL);
        assert_eq!(parts[&2].last_lba, (layout.root_offset + layout.root_size) / SECTOR - 1);

        let mut f = tmp.reopen().unwrap();
        let w = Window::new(&mut f, layout.esp_offset, layout.esp_size).unwrap();
        let fs = fatfs::FileSystem::new(w, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_label(), ESP_LABEL);
        let mut s = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        assert_eq!(s, b"MZ-not-really");
        s.clear();
        fs.root_dir()
            .open_file("EFI/cairn/grubenv")
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        assert_eq!(s.len(), 1024);
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
