//! Lists the files inside an initramfs, the way the kernel unpacks it.
//!
//! An initramfs is a sequence of newc cpio archives (`070701`, or `070702`
//! with checksums), each either uncompressed or compressed, separated by
//! zero padding: dracut puts an uncompressed early-microcode archive first
//! and the main archive, compressed, after it. Cairn's builder leaves
//! dracut's output uncompressed and runs `zstd -19` over the whole file; gzip
//! (dracut's own default) is read too. Other compressions are reported as
//! unsupported.
//!
//! [`list_files`] is a pure reader over bytes; [`list_files_in`] reads a file.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Length of a newc header: the 6-byte magic and 13 fields of 8 hex digits.
const NEWC_HEADER_LEN: usize = 110;
/// newc magic without checksums (what dracut writes).
const NEWC_MAGIC: &[u8] = b"070701";
/// newc magic with checksums.
const NEWC_CRC_MAGIC: &[u8] = b"070702";
/// The name of the entry that ends a cpio archive.
const TRAILER: &str = "TRAILER!!!";
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];

/// Compressions the kernel can unpack but this reader does not, by magic.
const UNSUPPORTED: &[(&[u8], &str)] = &[
    (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], "xz"),
    (&[0x02, 0x21, 0x4C, 0x18], "lz4"),
    (&[0x89, b'L', b'Z', b'O'], "lzo"),
    (b"BZh", "bzip2"),
    (&[0x5D, 0x00, 0x00], "lzma"),
];

/// The paths of all entries in an initramfs image, in archive order,
/// without a leading `./` or `/` (`usr/lib/modules/6.1.0-56-arm64/...`).
/// Directories and other non-regular entries are listed too; the root
/// entry `.` is not.
pub fn list_files(image: &[u8]) -> Result<Vec<String>> {
    let mut files = Vec::new();
    walk(image, true, &mut files)?;
    Ok(files)
}

/// [`list_files`] over the initramfs at `path`.
pub fn list_files_in(path: &Path) -> Result<Vec<String>> {
    let image = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    list_files(&image).with_context(|| format!("reading the initramfs {}", path.display()))
}

/// The name of the kernel module a path holds: its basename without `.ko`,
/// `.ko.xz`, `.ko.zst` or `.ko.gz`, or `None` if it is not a module.
/// The name is returned as spelled; module names treat `-` and `_` alike,
/// which is for the caller to apply.
pub fn module_name(path: &str) -> Option<&str> {
    let base = path.rsplit('/').next().unwrap_or(path);
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .filter(|name| !name.is_empty())
}

/// The kernel modules among `paths` (see [`module_name`]).
pub fn kernel_modules<'a>(paths: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    paths.into_iter().filter_map(module_name).map(str::to_owned).collect()
}

/// Reads a sequence of archives. `outer` is true for the image itself, where
/// compressed members may appear; their content holds archives only.
fn walk(data: &[u8], outer: bool, files: &mut Vec<String>) -> Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        if data[pos] == 0 {
            // Padding between archives (the kernel skips it the same way).
            pos += 1;
            continue;
        }
        let rest = &data[pos..];
        if rest.starts_with(NEWC_MAGIC) || rest.starts_with(NEWC_CRC_MAGIC) {
            pos += read_archive(rest, files).with_context(|| format!("cpio archive at offset {pos}"))?;
        } else if outer && rest.starts_with(ZSTD_MAGIC) {
            let (content, used) = unzstd(rest).with_context(|| format!("zstd data at offset {pos}"))?;
            walk(&content, false, files).with_context(|| format!("inside the zstd data at offset {pos}"))?;
            pos += used;
        } else if outer && rest.starts_with(GZIP_MAGIC) {
            let (content, used) = gunzip(rest).with_context(|| format!("gzip data at offset {pos}"))?;
            walk(&content, false, files).with_context(|| format!("inside the gzip data at offset {pos}"))?;
            pos += used;
        } else if let Some((_, name)) = UNSUPPORTED.iter().find(|(magic, _)| outer && rest.starts_with(magic)) {
            bail!("{name}-compressed data at offset {pos}: only zstd and gzip are supported");
        } else {
            let head: Vec<String> = rest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            bail!(
                "unknown data at offset {pos} (bytes {}): not a newc cpio archive",
                head.join(" ")
            );
        }
    }
    Ok(())
}

/// Reads one newc archive at the start of `data`, up to and including its
/// trailer; returns how many bytes it spans (padding included).
fn read_archive(data: &[u8], files: &mut Vec<String>) -> Result<usize> {
    let mut pos = 0;
    loop {
        let header = data
            .get(pos..pos + NEWC_HEADER_LEN)
            .with_context(|| format!("truncated entry header at offset {pos} (no `{TRAILER}` entry)"))?;
        if !(header.starts_with(NEWC_MAGIC) || header.starts_with(NEWC_CRC_MAGIC)) {
            bail!("bad entry magic at offset {pos}");
        }
        let field = |index: usize| -> Result<usize> {
            let start = 6 + 8 * index;
            let digits = std::str::from_utf8(&header[start..start + 8]).ok();
            digits
                .and_then(|d| usize::from_str_radix(d, 16).ok())
                .with_context(|| format!("bad hex field {index} in the entry header at offset {pos}"))
        };
        let file_size = field(6)?;
        let name_size = field(11)?;
        let name_start = pos + NEWC_HEADER_LEN;
        let name_bytes = data
            .get(name_start..name_start + name_size)
            .with_context(|| format!("truncated entry name at offset {name_start}"))?;
        // The name is NUL-terminated; `name_size` counts the NUL.
        let name_bytes = name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes);
        let name = String::from_utf8_lossy(name_bytes);
        let data_start = align4(name_start + name_size);
        let data_end = data_start + file_size;
        if data_end > data.len() {
            bail!("entry `{name}` at offset {pos}: {file_size} bytes of content run past the end of the data");
        }
        pos = align4(data_end);
        if name == TRAILER {
            return Ok(pos.min(data.len()));
        }
        let path = name.trim_start_matches("./").trim_start_matches('/');
        if !path.is_empty() && path != "." {
            files.push(path.to_owned());
        }
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Decompresses consecutive zstd frames at the start of `data`; returns the
/// content and how many bytes the frames span.
fn unzstd(data: &[u8]) -> Result<(Vec<u8>, usize)> {
    let mut content = Vec::new();
    let mut used = 0;
    while data[used..].starts_with(ZSTD_MAGIC) {
        let frame_len = zstd::zstd_safe::find_frame_compressed_size(&data[used..])
            .map_err(|code| anyhow::anyhow!("bad frame: {}", zstd::zstd_safe::get_error_name(code)))?;
        let frame = &data[used..used + frame_len];
        zstd::stream::read::Decoder::with_buffer(frame)
            .and_then(|mut decoder| decoder.read_to_end(&mut content))
            .context("decompressing a frame")?;
        used += frame_len;
    }
    Ok((content, used))
}

/// Decompresses consecutive gzip members at the start of `data`; returns the
/// content and how many bytes the members span.
fn gunzip(data: &[u8]) -> Result<(Vec<u8>, usize)> {
    let mut content = Vec::new();
    let mut rest = data;
    while rest.starts_with(GZIP_MAGIC) {
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        decoder.read_to_end(&mut content).context("decompressing a member")?;
        rest = decoder.into_inner();
    }
    Ok((content, data.len() - rest.len()))
}

/// Builds newc archives for tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// A newc archive holding `entries` (path, content) as regular files,
    /// ended by a trailer and padded to 512 bytes like GNU cpio's output.
    pub(crate) fn newc(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, content)) in entries.iter().enumerate() {
            entry(&mut out, ino + 1, 0o100644, name, content);
        }
        entry(&mut out, 0, 0, super::TRAILER, b"");
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn entry(out: &mut Vec<u8>, ino: usize, mode: u32, name: &str, content: &[u8]) {
        let fields = [
            ino,
            mode as usize,
            0,
            0,
            1,
            0,
            content.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(super::align4(out.len()), 0);
        out.extend_from_slice(content);
        out.resize(super::align4(out.len()), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::testutil::newc;
    use super::*;

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 3).unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    const MAIN: &[(&str, &[u8])] = &[
        (".", b""),
        ("usr/lib/modules/6.1.0-56-arm64/kernel/fs/ext4/ext4.ko", b"\x7fELF ext4"),
        (
            "./usr/lib/modules/6.1.0-56-arm64/kernel/drivers/scsi/hisi_sas/hisi_sas_v3_hw.ko.zst",
            b"x",
        ),
        (
            "/usr/lib/modules/6.1.0-56-arm64/kernel/drivers/char/hw_random/virtio-rng.ko.xz",
            b"yy",
        ),
        ("usr/bin/ostree-prepare-root", b"odd length content"),
    ];

    fn main_paths() -> Vec<String> {
        vec![
            "usr/lib/modules/6.1.0-56-arm64/kernel/fs/ext4/ext4.ko".to_owned(),
            "usr/lib/modules/6.1.0-56-arm64/kernel/drivers/scsi/hisi_sas/hisi_sas_v3_hw.ko.zst".to_owned(),
            "usr/lib/modules/6.1.0-56-arm64/kernel/drivers/char/hw_random/virtio-rng.ko.xz".to_owned(),
            "usr/bin/ostree-prepare-root".to_owned(),
        ]
    }

    #[test]
    fn reads_an_uncompressed_archive() {
        assert_eq!(list_files(&newc(MAIN)).unwrap(), main_paths());
    }

    #[test]
    fn reads_early_cpio_then_zstd_main_archive() {
        let mut image = newc(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        image.extend(zstd(&newc(MAIN)));
        let mut want = vec!["kernel/x86/microcode/GenuineIntel.bin".to_owned()];
        want.extend(main_paths());
        assert_eq!(list_files(&image).unwrap(), want);
    }

    #[test]
    fn reads_what_cairn_builds_early_and_main_archives_inside_one_zstd_stream() {
        // `zstd -19` over dracut's whole uncompressed output.
        let mut plain = newc(&[("early_cpio", b"1")]);
        plain.extend(newc(MAIN));
        let files = list_files(&zstd(&plain)).unwrap();
        assert_eq!(files.len(), 5);
        assert_eq!(files[0], "early_cpio");
    }

    #[test]
    fn reads_gzip_and_skips_zero_padding_between_archives() {
        let mut image = newc(&[("early_cpio", b"1")]);
        image.extend([0u8; 1000]);
        image.extend(gzip(&newc(MAIN)));
        image.extend([0u8; 3]);
        image.extend(newc(&[("appended", b"")]));
        let files = list_files(&image).unwrap();
        assert_eq!(files.first().unwrap(), "early_cpio");
        assert_eq!(files.last().unwrap(), "appended");
        assert_eq!(files.len(), 6);
    }

    #[test]
    fn reads_concatenated_compressed_members() {
        // One archive split across two zstd frames, then two gzip members.
        let archive = newc(MAIN);
        let (a, b) = archive.split_at(300);
        let mut image = zstd(a);
        image.extend(zstd(b));
        let (c, d) = archive.split_at(123);
        image.extend(gzip(c));
        image.extend(gzip(d));
        let files = list_files(&image).unwrap();
        assert_eq!(files.len(), 8);
    }

    #[test]
    fn lists_kernel_modules_by_basename() {
        let files = list_files(&newc(MAIN)).unwrap();
        let modules = kernel_modules(files.iter().map(String::as_str));
        let want: BTreeSet<String> = ["ext4", "hisi_sas_v3_hw", "virtio-rng"].map(String::from).into();
        assert_eq!(modules, want);
        assert_eq!(module_name("a/b/nvme-core.ko.gz"), Some("nvme-core"));
        assert_eq!(module_name("a/b/.ko"), None);
        assert_eq!(module_name("a/b/modules.dep"), None);
        assert_eq!(module_name("a/kobject.c"), None);
    }

    #[test]
    fn truncated_archive_is_an_error_naming_the_entry() {
        let archive = newc(MAIN);
        // Cut inside ext4.ko's content.
        let content_at = archive.windows(4).position(|w| w == b"\x7fELF").unwrap();
        let cut = &archive[..content_at + 2];
        let err = format!("{:#}", list_files(cut).unwrap_err());
        assert!(err.contains("cpio archive at offset 0"), "{err}");
        assert!(err.contains("ext4.ko"), "{err}");

        let no_trailer = &archive[..112];
        let err = format!("{:#}", list_files(no_trailer).unwrap_err());
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn unknown_and_unsupported_data_are_errors_with_their_offset() {
        let mut image = newc(&[("a", b"")]);
        let offset = image.len();
        image.extend(b"\xFD7zXZ\x00rest");
        let err = format!("{:#}", list_files(&image).unwrap_err());
        assert!(err.contains(&format!("xz-compressed data at offset {offset}")), "{err}");

        let err = format!("{:#}", list_files(b"\0\0\0\0hello").unwrap_err());
        assert!(err.contains("unknown data at offset 4 (bytes 68 65 6c 6c 6f)"), "{err}");

        // Compressed data inside compressed data is not something the kernel unpacks.
        let err = format!("{:#}", list_files(&zstd(&zstd(&newc(MAIN)))).unwrap_err());
        assert!(err.contains("unknown data at offset 0"), "{err}");
    }

    #[test]
    fn list_files_in_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initramfs.img");
        std::fs::write(&path, b"junk").unwrap();
        let err = format!("{:#}", list_files_in(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = format!("{:#}", list_files_in(&dir.path().join("missing")).unwrap_err());
        assert!(err.contains("missing"), "{err}");
    }
}
