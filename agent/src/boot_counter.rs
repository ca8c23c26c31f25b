//! The GRUB boot counter in the ESP's `grubenv`, read and written in place
//! with `fatfs` on the partition device: no mount, no vfat driver needed.
//!
//! GRUB's `save_env` rewrites the block in its clusters; so does this (the
//! file keeps its 1024 bytes, so its clusters never move). See
//! [`cairn_common::bootcfg`] for the GRUB side.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use cairn_common::grubenv::{vars, GrubEnv, BLOCK_SIZE};
use cairn_common::layout::{ESP_LABEL, GRUBENV_ESP_PATH};

/// Where udev links the ESP on a host (GPT partition name).
pub fn host_esp() -> PathBuf {
    PathBuf::from(format!("/dev/disk/by-partlabel/{ESP_LABEL}"))
}

/// Arm a trial: the next `tries` boots of the default entry count down.
pub fn arm(env: &mut GrubEnv, tries: u32) {
    env.set(vars::TRIAL, "1");
    env.set(vars::TRIES, &tries.to_string());
    env.unset(vars::FALLBACK);
}

/// The trial is over (committed, or handled after a fallback).
pub fn clear(env: &mut GrubEnv) {
    env.unset(vars::TRIAL);
    env.unset(vars::TRIES);
    env.unset(vars::FALLBACK);
}

/// Whether GRUB recorded that it booted the previous deployment.
pub fn fell_back(env: &GrubEnv) -> bool {
    env.get(vars::FALLBACK) == Some("1")
}

/// Boots the trial has left, if one is armed.
pub fn tries_left(env: &GrubEnv) -> Option<u32> {
    if env.get(vars::TRIAL) != Some("1") {
        return None;
    }
    env.get(vars::TRIES).and_then(|t| t.parse().ok())
}

/// The grubenv of a FAT volume held by `volume` (a device or image file).
fn open_fat<V: Read + Write + Seek>(mut volume: V) -> Result<fatfs::FileSystem<V>> {
    volume.seek(SeekFrom::Start(0))?;
    fatfs::FileSystem::new(volume, fatfs::FsOptions::new()).context("the ESP is not a FAT file system")
}

fn open_grubenv<'a, V: Read + Write + Seek>(fs: &'a fatfs::FileSystem<V>) -> Result<fatfs::File<'a, V>> {
    fs.root_dir()
        .open_file(GRUBENV_ESP_PATH)
        .with_context(|| format!("opening {GRUBENV_ESP_PATH} on the ESP"))
}

pub fn read<V: Read + Write + Seek>(volume: V) -> Result<GrubEnv> {
    let fs = open_fat(volume)?;
    let mut file = open_grubenv(&fs)?;
    let mut block = Vec::with_capacity(BLOCK_SIZE);
    file.read_to_end(&mut block)
        .with_context(|| format!("reading {GRUBENV_ESP_PATH}"))?;
    GrubEnv::parse(&block).with_context(|| format!("{GRUBENV_ESP_PATH} on the ESP"))
}

/// Rewrite the grubenv of a FAT volume in place.
pub fn write<V: Read + Write + Seek>(volume: V, env: &GrubEnv) -> Result<()> {
    let block = env.to_block()?;
    let fs = open_fat(volume)?;
    let mut file = open_grubenv(&fs)?;
    let size = file.seek(SeekFrom::End(0))?;
    if size != BLOCK_SIZE as u64 {
        bail!("{GRUBENV_ESP_PATH} on the ESP is {size} bytes, not {BLOCK_SIZE}: refusing to move its clusters");
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&block)
        .with_context(|| format!("writing {GRUBENV_ESP_PATH}"))?;
    file.flush()?;
    drop(file);
    fs.unmount().context("closing the ESP")?;
    Ok(())
}

/// The ESP partition device (or an image of it).
#[derive(Debug, Clone)]
pub struct Esp {
    device: PathBuf,
}

impl Esp {
    pub fn new(device: impl Into<PathBuf>) -> Self {
        Self { device: device.into() }
    }

    pub fn host() -> Self {
        Self::new(host_esp())
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn read(&self) -> Result<GrubEnv> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .with_context(|| format!("opening the ESP {}", self.device.display()))?;
        read(f).with_context(|| format!("ESP {}", self.device.display()))
    }

    /// Read, change, write back, and flush to the device.
    pub fn update(&self, change: impl FnOnce(&mut GrubEnv)) -> Result<()> {
        let mut env = self.read()?;
        let before = env.clone();
        change(&mut env);
        if env == before {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .with_context(|| format!("opening the ESP {}", self.device.display()))?;
        write(&mut f, &env).with_context(|| format!("ESP {}", self.device.display()))?;
        f.sync_all()
            .with_context(|| format!("flushing the ESP {}", self.device.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn fat_with_grubenv() -> Cursor<Vec<u8>> {
        let mut volume = Cursor::new(vec![0u8; 8 << 20]);
        fatfs::format_volume(&mut volume, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("EFI").unwrap();
            fs.root_dir().create_dir("EFI/cairn").unwrap();
            let mut f = fs.root_dir().create_file(GRUBENV_ESP_PATH).unwrap();
            f.write_all(&GrubEnv::new().to_block().unwrap()).unwrap();
        }
        volume.set_position(0);
        volume
    }

    #[test]
    fn arm_then_clear_round_trips_through_the_fat_volume() {
        let mut volume = fat_with_grubenv();
        let mut env = read(&mut volume).unwrap();
        assert_eq!(tries_left(&env), None);
        arm(&mut env, 3);
        write(&mut volume, &env).unwrap();
        let env = read(&mut volume).unwrap();
        assert_eq!(tries_left(&env), Some(3));
        assert!(!fell_back(&env));
        let mut env = env;
        env.set(vars::FALLBACK, "1");
        assert!(fell_back(&env));
        clear(&mut env);
        write(&mut volume, &env).unwrap();
        assert_eq!(read(&mut volume).unwrap(), GrubEnv::new());
    }

    #[test]
    fn a_volume_without_grubenv_is_a_clear_error() {
        let mut volume = Cursor::new(vec![0u8; 8 << 20]);
        fatfs::format_volume(&mut volume, fatfs::FormatVolumeOptions::new()).unwrap();
        let err = read(&mut volume).unwrap_err();
        assert!(
            format!("{err:#}").contains("opening EFI/cairn/grubenv on the ESP"),
            "{err:#}"
        );
        let err = read(Cursor::new(vec![0u8; 4096])).unwrap_err();
        assert!(format!("{err:#}").contains("not a FAT file system"), "{err:#}");
    }
}
