//! A minimal OCI image archive built locally (no registry): one layer with a
//! static busybox and a marker file only this image contains.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use cairn_common::layout::Arch;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Name the image is imported under.
pub const IMAGE_NAME: &str = "localhost/cairn-test:1";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn append(tar: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

/// Write an OCI image layout archive to `out`; `busybox` is a static
/// busybox for `arch`; `marker` is written to `/etc/cairn-oci-marker`.
pub fn write_archive(out: &Path, arch: Arch, busybox: &Path, marker: &str) -> Result<()> {
    let busybox_bytes = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "bin/busybox", &busybox_bytes, 0o755)?;
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    link.set_mtime(0);
    link.set_cksum();
    layer.append_link(&mut link, "bin/sh", "busybox")?;
    append(&mut layer, "etc/cairn-oci-marker", marker.as_bytes(), 0o644)?;
    let layer = layer.into_inner()?;

    let config = serde_json::to_vec(&json!({
        "architecture": arch.debian(),
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len() }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": IMAGE_NAME, "org.opencontainers.image.ref.name": "1" },
        }],
    }))?;

    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(file);
    append(&mut archive, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append(&mut archive, "index.json", &index, 0o644)?;
    for blob in [&layer, &config, &manifest] {
        let d = digest(blob);
        let path = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        append(&mut archive, &path, blob, 0o644)?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_a_valid_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let out = d.path().join("oci.tar");
        write_archive(&out, Arch::X86_64, &fake, "m-42").unwrap();
        let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut names = Vec::new();
        let mut index = String::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "index.json" {
                std::io::Read::read_to_string(&mut e, &mut index).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/sha256/")).count(), 3);
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], IMAGE_NAME);
        let blob = format!(
            "blobs/sha256/{}",
            m["digest"].as_str().unwrap().trim_start_matches("sha256:")
        );
        assert!(names.contains(&blob), "index points at a blob in the archive");
    }
}
