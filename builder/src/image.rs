//! `cairn-build image`: commit → bootable GPT disk image (raw, and the
//! formats of [`crate::disk_formats`]).
//!
//! The ostree sysroot is assembled in a plain folder with ostree's own
//! `admin` commands, the GRUB menu is generated from its boot entries with
//! the same code the agent runs on the host, then the disk is written in
//! place: GPT (`gpt` crate), FAT32 ESP (`mkfs.fat` and mtools on a file of
//! its own, copied in), ext4 root (`mkfs.ext4 -d` at the partition's
//! offset). No mounts, no loop devices.
//! Outputs are written under temporary names and renamed when complete.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cairn_common::bootcfg::{self, GrubSettings};
use cairn_common::grubenv::GrubEnv;
use cairn_common::kargs;
use cairn_common::layout::{self, Arch, Platform};
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use serde::{Deserialize, Serialize};

use crate::compose::{image_ref, EFI_TREE_PATH};
use crate::disk::{self, DiskLayout, EspFile};
use crate::disk_formats::{self, DiskFormat};
use crate::manifest::{ImageSpec, Manifest};
use crate::ostree;

/// Inputs of `image`.
pub struct ImageOptions {
    pub manifest: PathBuf,
    pub flavor: String,
    pub arch: Arch,
    pub platform: Platform,
    pub repo: PathBuf,
    pub output: PathBuf,
    /// What to write besides the raw image (which is always written);
    /// empty: the cloud's import formats, else qcow2 (see
    /// [`disk_formats::chosen`]).
    pub formats: Vec<DiskFormat>,
    /// The cloud the image is made for (`[clouds.<name>]`): its kernel
    /// arguments are added, and its name ends the file names.
    pub cloud: Option<String>,
}

/// What `image` made; written next to the images as `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltImage {
    pub name: String,
    pub version: String,
    pub arch: Arch,
    pub flavor: String,
    pub platform: Platform,
    pub commit: String,
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    pub raw: PathBuf,
    /// The cloud it was made for, if one.
    #[serde(default)]
    pub cloud: Option<String>,
    /// Every format written, the raw image included.
    pub formats: BTreeMap<DiskFormat, PathBuf>,
    pub disk_size: u64,
    pub esp_size: u64,
    pub root_size: u64,
    /// Bytes the OS takes in the root filesystem (hardlinks counted once).
    pub os_bytes: u64,
}

pub fn build_image(opts: &ImageOptions) -> Result<BuiltImage> {
    let started = Instant::now();
    let spec = Manifest::load(&opts.manifest)?.resolve(&opts.flavor, opts.arch, opts.platform)?;
    let ostree_ref = image_ref(&spec);
    let commit = ostree::rev_parse(&opts.repo, &ostree_ref)?.with_context(|| {
        format!(
            "{} has no ref {ostree_ref}: run `cairn-build compose` first",
            opts.repo.display()
        )
    })?;
    let version = ostree::unquote(&ostree::metadata(&opts.repo, &commit, meta::VERSION)?);
    fs::create_dir_all(&opts.output).with_context(|| format!("creating {}", opts.output.display()))?;
    let cloud_kargs = match &opts.cloud {
        None => Vec::new(),
        Some(c) => spec
            .cloud_kernel_args
            .get(c)
            .cloned()
            .with_context(|| format!("--cloud {c}: the manifest has no [clouds.{c}]"))?,
    };
    let stem = match &opts.cloud {
        None => format!("{}-{}-{}-{}", spec.name, version, spec.arch, spec.variant()),
        Some(c) => format!("{}-{}-{}-{}-{c}", spec.name, version, spec.arch, spec.variant()),
    };
    let chosen = disk_formats::chosen(
        &opts.formats,
        opts.cloud
            .as_ref()
            .and_then(|c| spec.cloud_formats.get(c))
            .map(Vec::as_slice),
    );
    disk_formats::check_formats(&chosen).context("--format")?;
    let raw = opts.output.join(DiskFormat::Raw.file_name(&stem));

    let work = Workdir::new(&opts.output)?;
    // The cloud's arguments are the host's own, as an operator's would
    // be: the agent keeps them across updates (`agent::kargs`).
    let kargs = [
        release_kargs(&opts.repo, &commit, &work.path.join("kargs"))?,
        cloud_kargs,
    ]
    .concat();
    let sysroot = work.path.join("sysroot");
    let deployment = deploy(&sysroot, &opts.repo, &ostree_ref, &spec, &kargs)?;
    let os_bytes = allocated_bytes(&sysroot)?;
    check_fits(os_bytes, &spec)?;

    let layout = DiskLayout::with_size_unit(spec.esp_size, spec.root_size, disk_formats::size_unit(&chosen));
    let raw_partial = Partial::new(&raw);
    let esp_id = disk::esp_volume_id(&commit);
    write_disk(
        raw_partial.path(),
        &layout,
        &spec,
        &sysroot,
        &deployment,
        esp_id,
        &work.path,
    )?;
    raw_partial.commit()?;
    let mut formats = BTreeMap::from([(DiskFormat::Raw, raw.clone())]);
    for (format, path) in disk_formats::outputs(&opts.output, &stem, &chosen) {
        if format != DiskFormat::Raw {
            disk_formats::write_format(&raw, format, &path)?;
            formats.insert(format, path);
        }
    }

    let built = BuiltImage {
        name: spec.name.clone(),
        version,
        arch: spec.arch,
        flavor: spec.flavor.clone(),
        platform: spec.platform,
        commit,
        ostree_ref,
        raw,
        cloud: opts.cloud.clone(),
        formats,
        disk_size: layout.total_size,
        esp_size: layout.esp_size,
        root_size: layout.root_size,
        os_bytes,
    };
    let record = opts.output.join(format!("{stem}.json"));
    fs::write(&record, serde_json::to_vec_pretty(&built)?)?;
    tracing::info!(image = %built.raw.display(), elapsed = ?started.elapsed(), "image written");
    Ok(built)
}

/// The kernel arguments the commit carries (its `kargs.d`, read by the
/// function the agent uses when it stages a release), checked out below
/// `scratch`.
fn release_kargs(repo: &Path, commit: &str, scratch: &Path) -> Result<Vec<String>> {
    let dest = scratch.join(kargs::KARGS_DIR);
    fs::create_dir_all(dest.parent().expect("has parent"))?;
    ostree::checkout_subpath(repo, commit, &format!("/{}", kargs::KARGS_DIR), &dest)
        .with_context(|| format!("the commit has no /{}: compose it again", kargs::KARGS_DIR))?;
    kargs::load(scratch)
}

/// Build the ostree sysroot in `sysroot` with the release's kernel
/// arguments `kargs` (and the root's label); return the deployment's folder.
fn deploy(sysroot: &Path, repo: &Path, ostree_ref: &str, spec: &ImageSpec, kargs: &[String]) -> Result<PathBuf> {
    let sys_arg = format!("--sysroot={}", sysroot.display());
    let sys_repo = sysroot.join("ostree/repo");
    let repo_arg = format!("--repo={}", sys_repo.display());
    fs::create_dir_all(sysroot)?;
    Cmd::new("ostree").args(["admin", "init-fs"]).arg(sysroot).run()?;
    Cmd::new("ostree")
        .args(["admin", "os-init", layout::OSNAME, &sys_arg])
        .run()?;
    Cmd::new("ostree")
        .args([&repo_arg, "remote", "add", "--set=gpg-verify=true", layout::REMOTE])
        .arg(format!("{}/{}", spec.update_url, cairn_common::release::OSTREE_DIR))
        .run()?;
    ostree::pull_local(&sys_repo, repo, ostree_ref, Some(layout::REMOTE))?;
    let mut cmd = Cmd::new("ostree")
        .args(["admin", "deploy", &sys_arg, &format!("--os={}", layout::OSNAME)])
        .arg(format!("--karg=root=LABEL={}", layout::ROOT_LABEL));
    // --karg-append, as the agent stages: `--karg` keeps one value per key
    // and dropped `console=tty0` beside `console=ttyS0`, so a host's first
    // boot differed from its boots after an update.
    for karg in kargs {
        cmd = cmd.arg(format!("--karg-append={karg}"));
    }
    cmd.arg(format!("{}:{ostree_ref}", layout::REMOTE))
        .run()
        .context("deploying the commit")?;

    // The GRUB menu, from ostree's entries, by the code the agent runs later.
    let loader = sysroot.join("boot/loader");
    bootcfg::write_config_from_dir(
        &loader.join("entries"),
        &loader.join("grub.cfg"),
        &GrubSettings::default(),
    )?;
    fs::create_dir_all(sysroot.join("boot/grub"))?;
    std::os::unix::fs::symlink("../loader/grub.cfg", sysroot.join("boot/grub/grub.cfg"))?;
    Cmd::new("ostree")
        .args([&repo_arg, "config", "set", "sysroot.bootloader", "grub2"])
        .run()?;

    let stateroot = sysroot.join("ostree/deploy").join(layout::OSNAME);
    let deploy_dir = stateroot.join("deploy");
    let deployment = fs::read_dir(&deploy_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .with_context(|| format!("no deployment in {}", deploy_dir.display()))?;
    mark_updated(&deployment, &stateroot.join("var"))?;
    Ok(deployment)
}

/// Record in the image's `/etc` and `/var` that they are up to date with
/// its `/usr`, as `systemd-update-done` does after the units with
/// `ConditionNeedsUpdate=` ran (`ldconfig`, the journal catalog, the hwdb):
/// what they would make at the first boot the build already made (the
/// commit's `/etc/ld.so.cache` comes from the package layer), so a new
/// host's first boot does not wait for them. A deployment an update brings
/// has a newer `/usr`, and they run once at its first boot, as they should.
fn mark_updated(deployment: &Path, var: &Path) -> Result<()> {
    let usr = deployment.join("usr");
    let meta = fs::metadata(&usr).with_context(|| format!("reading {}", usr.display()))?;
    let nsec = u64::try_from(meta.mtime()).unwrap_or(0) * 1_000_000_000 + u64::try_from(meta.mtime_nsec()).unwrap_or(0);
    for dir in [deployment.join("etc"), var.to_owned()] {
        let path = dir.join(".updated");
        fs::write(&path, update_done_stamp(nsec)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The text of `/etc/.updated` and `/var/.updated` as `systemd-update-done`
/// writes it: `ConditionNeedsUpdate=` holds while `/usr` is newer than
/// `TIMESTAMP_NSEC`.
pub fn update_done_stamp(usr_mtime_nsec: u64) -> String {
    format!(
        "# This file was created by cairn-build, as systemd-update-done does: it holds\n# the time of the /usr this directory is up to date with.\n# See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC={usr_mtime_nsec}\n"
    )
}

/// Bytes allocated under `dir`, each hardlinked inode counted once.
fn allocated_bytes(dir: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            }
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Refuse before writing anything when the OS cannot fit the root partition:
/// ext4 keeps ~5% reserved, a journal and inode tables besides the data.
fn check_fits(os_bytes: u64, spec: &ImageSpec) -> Result<()> {
    const MIB: u64 = 1 << 20;
    let needed = (os_bytes + os_bytes / 10 + 64 * MIB) * 20 / 19;
    if needed > spec.root_size {
        bail!(
            "{}: disk.root-size is {} MiB but the OS needs at least {} MiB (content {} MiB plus ext4 journal, reserve and inode tables); raise root-size",
            spec.manifest_path.display(),
            spec.root_size / MIB,
            needed.div_ceil(MIB),
            os_bytes / MIB
        );
    }
    Ok(())
}

/// The disk image at `path`: `sysroot` as the root file system, the
/// deployment's EFI tree and a grubenv on an ESP with volume id `esp_id`
/// (made in `work`).
fn write_disk(
    path: &Path,
    layout: &DiskLayout,
    spec: &ImageSpec,
    sysroot: &Path,
    deployment: &Path,
    esp_id: u32,
    work: &Path,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(layout.total_size)
        .with_context(|| format!("sizing {} to {} bytes", path.display(), layout.total_size))?;
    disk::write_partition_table(&mut file, layout, spec.arch)?;

    let efi_root = deployment.join(EFI_TREE_PATH);
    let mut efi_files = Vec::new();
    collect_files(&efi_root, &efi_root, &mut efi_files)?;
    if !efi_files.iter().any(|(rel, _)| rel == spec.arch.efi_boot_path()) {
        bail!("the commit has no {} under /{EFI_TREE_PATH}", spec.arch.efi_boot_path());
    }
    let grubenv = GrubEnv::new().to_block()?;
    let mut esp: Vec<EspFile<'_>> = efi_files
        .iter()
        .map(|(rel, bytes)| EspFile {
            path: rel,
            contents: bytes,
        })
        .collect();
    esp.push(EspFile {
        path: layout::GRUBENV_ESP_PATH,
        contents: &grubenv,
    });
    disk::write_esp(&mut file, layout, esp_id, &esp, work)?;
    file.sync_all()?;
    drop(file);

    let fs_uuid = uuid::Uuid::new_v4().to_string();
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", layout::ROOT_LABEL, "-U", &fs_uuid])
        .arg("-E")
        .arg(format!("offset={}", layout.root_offset))
        .arg("-d")
        .arg(sysroot)
        .arg(path)
        .arg(format!("{}k", layout.root_size / 1024))
        .run()
        .with_context(|| {
            format!(
                "writing the root filesystem (if it ran out of space, raise disk.root-size in {})",
                spec.manifest_path.display()
            )
        })?;
    Ok(())
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(base, &p, out)?;
        } else {
            let rel = p.strip_prefix(base).expect("below base").to_string_lossy().into_owned();
            out.push((rel, fs::read(&p)?));
        }
    }
    Ok(())
}

/// A work folder next to the outputs, removed when done (ostree marks
/// deployments immutable, so that is undone first).
struct Workdir {
    path: PathBuf,
}

impl Workdir {
    fn new(output: &Path) -> Result<Workdir> {
        // Work folders of interrupted runs (one output folder, one build at a time).
        for e in fs::read_dir(output)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(".work-") {
                tracing::info!(folder = %e.path().display(), "removing an interrupted build's work folder");
                remove_tree(&e.path())?;
            }
        }
        let path = output.join(format!(".work-{}", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(Workdir { path })
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!("could not remove {}: {e:#}", self.path.display());
        }
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    // ostree sets the immutable flag on each deployment's top folder only.
    let stateroots = path.join("sysroot/ostree/deploy");
    if let Ok(roots) = fs::read_dir(&stateroots) {
        for root in roots.filter_map(|e| e.ok()) {
            if let Ok(deployments) = fs::read_dir(root.path().join("deploy")) {
                for d in deployments.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
                    Cmd::new("chattr").arg("-i").arg(d.path()).run()?;
                }
            }
        }
    }
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// An output file written under `<name>.partial` and renamed only when
/// complete; removed if dropped before that.
pub(crate) struct Partial {
    final_path: PathBuf,
    partial: PathBuf,
    done: bool,
}

impl Partial {
    pub(crate) fn new(final_path: &Path) -> Partial {
        let mut name = final_path.file_name().expect("file name").to_owned();
        name.push(".partial");
        let _ = fs::remove_file(final_path);
        Partial {
            final_path: final_path.to_owned(),
            partial: final_path.with_file_name(name),
            done: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.partial
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        fs::rename(&self.partial, &self.final_path)
            .with_context(|| format!("renaming {} into place", self.partial.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_and_var_are_stamped_with_the_deployments_usr_time_as_systemd_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("deploy/abc.0");
        let var = dir.path().join("var");
        for d in [deployment.join("usr"), deployment.join("etc"), var.clone()] {
            fs::create_dir_all(d).unwrap();
        }
        mark_updated(&deployment, &var).unwrap();
        let usr = fs::metadata(deployment.join("usr")).unwrap();
        let want = format!(
            "TIMESTAMP_NSEC={}",
            usr.mtime() as u64 * 1_000_000_000 + usr.mtime_nsec() as u64
        );
        for stamp in [deployment.join("etc/.updated"), var.join(".updated")] {
            let text = fs::read_to_string(&stamp).unwrap();
            // systemd reads it as an environment file: comments, then the key.
            let keys: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(keys, [want.as_str()], "{}", stamp.display());
        }
    }
}
