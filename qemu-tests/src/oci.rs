//! Minimal OCI image archives built locally (no registry), each one layer
//! with a static busybox, for `ctr images import`: a test image with a
//! marker file only it contains, and a pod-sandbox ("pause") image, so
//! containerd's CRI plugin can start pods without pulling anything.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use cairn_common::layout::Arch;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Name the test image is imported under.
pub const IMAGE_NAME: &str = "localhost/cairn-test:1";

/// Name the pause image is imported under: the sandbox image the node
/// image's containerd configuration names.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// What the pause image runs as PID 1 of a pod: a shell that ends at
/// SIGTERM or SIGINT, as Kubernetes' pause does (a PID 1 ignores signals it
/// has no handler for; `wait` returns at once for a trapped one).
pub const PAUSE_ENTRYPOINT: [&str; 4] = [
    "/bin/busybox",
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 86400 & wait $!; done",
];

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

/// The one layer: `/bin/busybox` (read from `busybox`), `/bin/sh` linking
/// to it, and `files` (path, contents), each read-only.
fn busybox_layer(busybox: &Path, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
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
    for (path, bytes) in files {
        append(&mut layer, path, bytes, 0o644)?;
    }
    Ok(layer.into_inner()?)
}

/// The tag of an image name (`1` of `localhost/cairn-test:1`), which goes
/// into `org.opencontainers.image.ref.name` beside the full name.
fn tag_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

/// Write an OCI image layout archive to `out` of one image: `layer`, run
/// with `process` (the `config` of the image configuration), named `name`.
/// `ctr images import` registers it under exactly `name`: it takes the
/// `io.containerd.image.name` annotation of the index as it is.
fn write_layout(out: &Path, arch: Arch, name: &str, layer: &[u8], process: Value) -> Result<()> {
    let config = serde_json::to_vec(&json!({
        "architecture": arch.debian(),
        "os": "linux",
        "config": process,
        "rootfs": { "type": "layers", "diff_ids": [digest(layer)] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len() }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag_of(name) },
        }],
    }))?;

    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(file);
    append(&mut archive, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append(&mut archive, "index.json", &index, 0o644)?;
    for blob in [layer, &config, &manifest] {
        let d = digest(blob);
        let path = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        append(&mut archive, &path, blob, 0o644)?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

/// Write the test image ([`IMAGE_NAME`]) as an OCI image layout archive to
/// `out`; `busybox` is a static busybox for `arch`; `marker` is written to
/// `/etc/cairn-oci-marker`.
pub fn write_archive(out: &Path, arch: Arch, busybox: &Path, marker: &str) -> Result<()> {
    let layer = busybox_layer(busybox, &[("etc/cairn-oci-marker", marker.as_bytes())])?;
    let process = json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] });
    write_layout(out, arch, IMAGE_NAME, &layer, process)
}

/// Write the pause image ([`PAUSE_IMAGE`], running [`PAUSE_ENTRYPOINT`]) as
/// an OCI image layout archive to `out`; `busybox` is a static busybox for
/// `arch`.
pub fn write_pause_archive(out: &Path, arch: Arch, busybox: &Path) -> Result<()> {
    let layer = busybox_layer(busybox, &[])?;
    let process = json!({ "Entrypoint": PAUSE_ENTRYPOINT, "Env": ["PATH=/bin"] });
    write_layout(out, arch, PAUSE_IMAGE, &layer, process)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The entries of the archive at `out`, by name.
    fn entries(out: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(std::fs::File::open(out).unwrap());
        let mut names = Vec::new();
        let mut all = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            names.push(name.clone());
            all.insert(name, bytes);
        }
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/sha256/")).count(), 3);
        all
    }

    fn blob<'a>(all: &'a BTreeMap<String, Vec<u8>>, digest: &Value) -> &'a [u8] {
        let path = format!(
            "blobs/sha256/{}",
            digest.as_str().unwrap().trim_start_matches("sha256:")
        );
        all.get(&path).unwrap_or_else(|| panic!("{path} is in the archive"))
    }

    /// The index, the image configuration, and the layer's entry names.
    fn image(out: &Path) -> (Value, Value, Vec<String>) {
        let all = entries(out);
        let index: Value = serde_json::from_slice(&all["index.json"]).unwrap();
        let manifest: Value = serde_json::from_slice(blob(&all, &index["manifests"][0]["digest"])).unwrap();
        let config: Value = serde_json::from_slice(blob(&all, &manifest["config"]["digest"])).unwrap();
        let layer = blob(&all, &manifest["layers"][0]["digest"]);
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(layer));
        let mut layer = tar::Archive::new(layer);
        let files = layer
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        (index, config, files)
    }

    #[test]
    fn archive_is_a_valid_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let out = d.path().join("oci.tar");
        write_archive(&out, Arch::X86_64, &fake, "m-42").unwrap();
        let (index, config, files) = image(&out);
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations["io.containerd.image.name"], IMAGE_NAME);
        assert_eq!(annotations["org.opencontainers.image.ref.name"], "1");
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(files, ["bin/busybox", "bin/sh", "etc/cairn-oci-marker"]);
    }

    #[test]
    fn pause_archive_names_the_sandbox_image_and_its_entrypoint() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let out = d.path().join("pause.tar");
        write_pause_archive(&out, Arch::Aarch64, &fake).unwrap();
        let (index, config, files) = image(&out);
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations["io.containerd.image.name"], "registry.k8s.io/pause:3.10");
        assert_eq!(annotations["org.opencontainers.image.ref.name"], "3.10");
        assert_eq!(config["config"]["Entrypoint"], json!(PAUSE_ENTRYPOINT));
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/busybox");
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(files, ["bin/busybox", "bin/sh"]);
    }

    #[test]
    fn the_tag_is_what_follows_the_last_colon_of_the_last_path_part() {
        assert_eq!(tag_of(IMAGE_NAME), "1");
        assert_eq!(tag_of(PAUSE_IMAGE), "3.10");
        assert_eq!(tag_of("localhost:5000/x"), "latest");
    }
}
