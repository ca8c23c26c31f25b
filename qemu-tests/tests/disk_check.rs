//! Cairn's disks pass the file-system checkers without a single message:
//! the GPT (`sgdisk -v`), the ESP (`fsck.fat -n`), also after the agent has
//! rewritten its grubenv in place, and the root (`e2fsck -fn`). Strict FAT
//! readers "repair" what `fsck.fat` reports, so a warning is a failure here,
//! not just a non-zero exit.
//!
//! Needs dosfstools, mtools, gdisk and e2fsprogs (`cargo xtask test` installs
//! them), and the last test the dev image it built: all are ignored in plain
//! `cargo test`. The others run by hand with
//! `cargo test -p cairn-qemu-tests --test disk_check -- --ignored <name>`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use cairn_agent::boot_counter::{self, Esp};
use cairn_builder::disk::{self, DiskLayout, EspFile};
use cairn_common::grubenv::GrubEnv;
use cairn_common::layout::{Arch, ESP_LABEL, GRUBENV_ESP_PATH};
use cairn_common::process::Cmd;
use cairn_qemu_tests::Artifacts;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Where the ESP starts on a Cairn disk, in sectors.
const ESP_START_SECTOR: u64 = 2048;

/// `len` bytes that do not compress or repeat (a stand-in EFI binary).
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(b"cairn disk_check");
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// What the builder puts on an ESP (see `image::write_disk`), with a stand-in
/// GRUB binary of a real one's size.
struct EspContents {
    efi: Vec<u8>,
    cfg: Vec<u8>,
    env: Vec<u8>,
}

impl EspContents {
    fn new() -> Self {
        Self {
            efi: noise(3 << 20),
            cfg: b"if [ ! -f /boot/loader/grub.cfg ]; then search --no-floppy --label --set=root cairn-root; fi\nconfigfile /boot/loader/grub.cfg\n".to_vec(),
            env: GrubEnv::new().to_block().unwrap(),
        }
    }

    fn files(&self) -> Vec<EspFile<'_>> {
        vec![
            EspFile {
                path: Arch::X86_64.efi_boot_path(),
                contents: &self.efi,
            },
            EspFile {
                path: "EFI/BOOT/grub.cfg",
                contents: &self.cfg,
            },
            EspFile {
                path: GRUBENV_ESP_PATH,
                contents: &self.env,
            },
        ]
    }
}

/// Run a checker and assert it succeeded and printed nothing but `expected`
/// lines (its banner, progress and summary); the whole output otherwise.
fn assert_silent(what: &str, cmd: Cmd, expected: impl Fn(&str) -> bool) {
    let shown = cmd.display();
    let (status, out) = cmd.status_output().unwrap();
    let text = format!("{}{}", out.stdout, out.stderr_tail);
    let unexpected: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !expected(l))
        .collect();
    assert!(
        status.success() && unexpected.is_empty(),
        "{what}: `{shown}` exited with {status} and said:\n{text}\nunexpected lines: {unexpected:#?}"
    );
}

/// `fsck.fat -n` on a FAT image file: only its banner and summary.
fn assert_fsck_fat_silent(image: &Path) {
    let summary = format!("{}: ", image.display());
    assert_silent("fsck.fat", Cmd::new("fsck.fat").arg("-n").arg(image), |l| {
        l.starts_with("fsck.fat ") || (l.starts_with(&summary) && l.ends_with(" clusters"))
    });
}

/// `sgdisk -v` on a disk image: "No problems found." and the free space.
fn assert_sgdisk_silent(disk: &Path) {
    let cmd = Cmd::new("sgdisk").arg("-v").arg(disk);
    let shown = cmd.display();
    let (status, out) = cmd.status_output().unwrap();
    let text = format!("{}{}", out.stdout, out.stderr_tail);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let rest = flat.strip_prefix("No problems found. ").unwrap_or("");
    let only_free_space = rest.contains(" free sectors (")
        && rest.ends_with(" in size.")
        && !["problem", "warning", "caution", "error"]
            .iter()
            .any(|w| rest.to_ascii_lowercase().contains(w));
    assert!(
        status.success() && only_free_space,
        "sgdisk: `{shown}` exited with {status} and said:\n{text}"
    );
}

/// `e2fsck -fn` on the ext4 file system at `offset` of `disk`: only its
/// banner, the five passes and the summary.
fn assert_e2fsck_silent(disk: &Path, offset: u64) {
    assert_silent(
        "e2fsck",
        Cmd::new("e2fsck")
            .arg("-fn")
            .arg(format!("{}?offset={offset}", disk.display())),
        |l| {
            l.starts_with("e2fsck ")
                || (l.starts_with("Pass ") && l.contains(": Checking "))
                || (l.contains(" files (") && l.ends_with(" blocks"))
        },
    );
}

/// Copy `len` bytes at `offset` of `from` to a new file `to`.
fn extract(from: &Path, offset: u64, len: u64, to: &Path) {
    let mut src = File::open(from).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = File::create(to).unwrap();
    let copied = std::io::copy(&mut src.take(len), &mut dst).unwrap();
    assert_eq!(
        copied,
        len,
        "{} is shorter than its partition table says",
        from.display()
    );
}

/// Little-endian field of the FAT32 boot sector.
fn le(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes[at..at + len]
        .iter()
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// The boot sectors, FSInfo and both FATs: everything before the data area.
fn fat_metadata(image: &Path) -> Vec<u8> {
    let bytes = std::fs::read(image).unwrap();
    let sector = le(&bytes, 11, 2);
    let reserved = le(&bytes, 14, 2);
    let fats = le(&bytes, 16, 1);
    let fat_sectors = le(&bytes, 36, 4);
    bytes[..((reserved + fats * fat_sectors) * sector) as usize].to_vec()
}

fn read_file<V: Read + Write + Seek>(fs: &fatfs::FileSystem<V>, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
#[ignore = "needs dosfstools and mtools; run by cargo xtask test"]
fn builder_esp_passes_fsck_fat_silently_and_is_the_same_bytes_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let contents = EspContents::new();
    let files = contents.files();
    let id = disk::esp_volume_id("c0ffee");
    let first = dir.path().join("first.img");
    disk::make_esp(&first, 64 * MIB, id, ESP_START_SECTOR, &files).unwrap();
    assert_fsck_fat_silent(&first);

    // Read back by another FAT implementation.
    let fs = fatfs::FileSystem::new(File::open(&first).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    assert_eq!(fs.volume_label(), ESP_LABEL);
    assert_eq!(fs.volume_id(), id);
    for f in &files {
        assert!(read_file(&fs, f.path) == f.contents, "{} reads back different", f.path);
    }
    drop(fs);
    let boot = std::fs::read(&first).unwrap();
    assert_eq!(
        le(&boot, 28, 4),
        ESP_START_SECTOR,
        "hidden sectors: where the partition starts"
    );

    // Later, with the files given in another order: the same bytes.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let second = dir.path().join("second.img");
    let reversed: Vec<EspFile<'_>> = files.iter().rev().copied().collect();
    disk::make_esp(&second, 64 * MIB, id, ESP_START_SECTOR, &reversed).unwrap();
    assert!(
        std::fs::read(&second).unwrap() == boot,
        "two ESPs made from the same input differ"
    );
}

#[test]
#[ignore = "needs dosfstools, mtools and gdisk; run by cargo xtask test"]
fn builder_disk_passes_sgdisk_and_its_esp_fsck_fat() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::new(64 * MIB, 8 * MIB);
    let path = dir.path().join("disk.raw");
    let mut disk_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    disk_file.set_len(layout.total_size).unwrap();
    disk::write_partition_table(&mut disk_file, &layout, Arch::X86_64).unwrap();
    let contents = EspContents::new();
    disk::write_esp(
        &mut disk_file,
        &layout,
        disk::esp_volume_id("c0ffee"),
        &contents.files(),
        dir.path(),
    )
    .unwrap();
    drop(disk_file);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["disk.raw"], "write_esp leaves nothing behind in its work folder");

    assert_sgdisk_silent(&path);
    let esp = dir.path().join("esp.img");
    extract(&path, layout.esp_offset, layout.esp_size, &esp);
    assert_fsck_fat_silent(&esp);
    assert_eq!(
        le(&std::fs::read(&esp).unwrap(), 28, 4),
        layout.esp_offset / disk::SECTOR
    );
}

#[test]
#[ignore = "needs dosfstools and mtools; run by cargo xtask test"]
fn agent_rewrites_grubenv_in_place_and_the_esp_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let contents = EspContents::new();
    let image = dir.path().join("esp.img");
    disk::make_esp(
        &image,
        64 * MIB,
        disk::esp_volume_id("c0ffee"),
        ESP_START_SECTOR,
        &contents.files(),
    )
    .unwrap();
    let metadata = fat_metadata(&image);
    let esp = Esp::new(&image);

    esp.update(|env| boot_counter::arm(env, 3)).unwrap();
    assert_fsck_fat_silent(&image);
    assert_eq!(boot_counter::tries_left(&esp.read().unwrap()), Some(3));

    esp.update(boot_counter::clear).unwrap();
    assert_fsck_fat_silent(&image);
    assert_eq!(esp.read().unwrap(), GrubEnv::new());

    // Only the file's cluster and its directory entry (times) were written:
    // no allocation, FSInfo untouched, the dirty flag set and cleared again.
    assert!(
        fat_metadata(&image) == metadata,
        "the agent's rewrite changed the boot sectors, FSInfo or FATs"
    );
    let fs = fatfs::FileSystem::new(File::open(&image).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert!(read_file(&fs, Arch::X86_64.efi_boot_path()) == contents.efi);
}

#[test]
#[ignore = "needs the dev image `cargo xtask test` builds, and gdisk, dosfstools, e2fsprogs"]
fn dev_image_partitions_pass_their_checkers() {
    let a = Artifacts::load().unwrap();
    let image = &a.dev;
    let layout = DiskLayout::new(image.esp_size, image.root_size);
    assert_eq!(layout.total_size, image.disk_size);
    assert_sgdisk_silent(&image.raw);

    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    extract(&image.raw, layout.esp_offset, layout.esp_size, &esp);
    assert_fsck_fat_silent(&esp);
    let fs = fatfs::FileSystem::new(File::open(&esp).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert_eq!(
        fs.volume_id(),
        disk::esp_volume_id(&image.commit),
        "the ESP's volume id is the commit's"
    );
    assert_eq!(fs.volume_label(), ESP_LABEL);
    drop(fs);

    assert_e2fsck_silent(&image.raw, layout.root_offset);
}

/// `qemu-img info --output=json` of `path` read as `format`.
fn qemu_img_info(path: &Path, format: &str) -> serde_json::Value {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(path)
        .output()
        .unwrap();
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs qemu-img, gdisk, dosfstools and mtools; run by cargo xtask test"]
fn every_cloud_format_holds_the_same_disk_and_passes_qemu_img() {
    use cairn_builder::disk_formats::{self, DiskFormat};
    let dir = tempfile::tempdir().unwrap();
    // A disk as `image --format …,gce` lays it out: a whole number of GiB.
    let unit = disk_formats::size_unit(&DiskFormat::ALL);
    let layout = DiskLayout::with_size_unit(64 * MIB, 8 * MIB, unit);
    assert_eq!(layout.total_size % (1 << 30), 0);
    let raw = dir.path().join("cairn.raw");
    let mut disk_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&raw)
        .unwrap();
    disk_file.set_len(layout.total_size).unwrap();
    disk::write_partition_table(&mut disk_file, &layout, Arch::X86_64).unwrap();
    disk::write_esp(
        &mut disk_file,
        &layout,
        disk::esp_volume_id("c0ffee"),
        &EspContents::new().files(),
        dir.path(),
    )
    .unwrap();
    drop(disk_file);
    assert_sgdisk_silent(&raw);

    for (format, path) in disk_formats::outputs(dir.path(), "cairn", &DiskFormat::ALL) {
        if format == DiskFormat::Raw {
            continue;
        }
        disk_formats::write_format(&raw, format, &path).unwrap();
        assert!(!path.with_extension("partial").exists());
        // What each format holds, as its readers read it, is the raw disk.
        if format == DiskFormat::Gce {
            // disk.raw, sparse, in an oldgnu tar: as Google's import reads it.
            let listing = Cmd::new("tar").args(["-tvzf"]).arg(&path).output().unwrap().stdout;
            assert!(listing.trim().ends_with(" disk.raw"), "{listing}");
            assert_eq!(listing.lines().count(), 1, "{listing}");
            // GNU's old format: "ustar  \0" at byte 257 of the header.
            let magic = Cmd::new("sh")
                .arg("-c")
                .arg(format!("gzip -dc '{}' | head -c 265 | tail -c 8", path.display()))
                .output()
                .unwrap()
                .stdout;
            assert_eq!(magic, "ustar  \0", "{format} is not an oldgnu tar");
            Cmd::new("tar")
                .args(["-xzf"])
                .arg(&path)
                .arg("-C")
                .arg(dir.path())
                .run()
                .unwrap();
            Cmd::new("cmp")
                .arg(&raw)
                .arg(dir.path().join("disk.raw"))
                .run()
                .unwrap();
            std::fs::remove_file(dir.path().join("disk.raw")).unwrap();
        } else {
            let name = format.qemu_img_name();
            let info = qemu_img_info(&path, name);
            assert_eq!(info["virtual-size"], layout.total_size, "{format}: {info:#}");
            if format != DiskFormat::Vhd {
                // qemu-img checks qcow2 and vmdk (a VHD has nothing to check).
                let out = Cmd::new("qemu-img")
                    .args(["check", "-f", name])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(out.stdout.contains("No errors were found"), "{format}: {}", out.stdout);
            }
            let same = Cmd::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", name])
                .arg(&raw)
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                same.stdout.contains("Images are identical"),
                "{format}: {}",
                same.stdout
            );
        }
    }
    // A fixed VHD is the raw disk and a 512-byte footer (Azure's form:
    // "conectix", disk type 2 = fixed), its size a whole MiB before it.
    let mut vhd = File::open(dir.path().join("cairn.vhd")).unwrap();
    assert_eq!(vhd.metadata().unwrap().len(), layout.total_size + 512);
    let mut footer = [0u8; 512];
    vhd.seek(SeekFrom::End(-512)).unwrap();
    vhd.read_exact(&mut footer).unwrap();
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2);
    // The VMDK is streamOptimized (vSphere, AWS VM import).
    let vmdk = qemu_img_info(&dir.path().join("cairn.vmdk"), "vmdk");
    assert_eq!(
        vmdk["format-specific"]["data"]["create-type"], "streamOptimized",
        "{vmdk:#}"
    );
}
