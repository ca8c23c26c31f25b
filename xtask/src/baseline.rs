//! The plain-Debian baseline `cargo xtask bench` measures Cairn's boot
//! against: the dev image's packages from the same Debian release, suites,
//! mirror and architecture, less Cairn's ostree set (`[packages] ostree`:
//! ostree, its boot integration, dracut), plus what a plain Debian boots
//! with: the platform's kernel, `initramfs-tools` with its default settings
//! and the packages it recommends (the initramfs is made by the kernel's
//! own postinst inside mmdebstrap) and GRUB. Configured like a Debian cloud image: the root by label in
//! `/etc/fstab` and on the kernel command line (`ro`, remounted read-write
//! by systemd), GRUB without a menu timeout, networkd enabled with Cairn's
//! own DHCP `.network` file, and root logged in on the serial console with
//! the dev image's own drop-in, so [`cairn_qemu_tests::vm::Vm::boot`] and
//! [`cairn_qemu_tests::boot_timing::measure`] work on it unchanged (they
//! wait for agetty's autologin; its hostname is `cairn-baseline`).
//!
//! The disk is written as the builder writes Cairn's, with no mounts and no
//! loop device: a GPT ([`cairn_builder::disk`]), a FAT32 ESP holding only
//! `EFI/BOOT/BOOT*.EFI` (GRUB made by the release's own `grub-mkimage`,
//! installed in the tree and run chrooted, with an embedded config that
//! finds the root by label and reads `/boot/grub/grub.cfg`), and an ext4
//! root by `mkfs.ext4 -d` from the tree.
//!
//! The image is kept in `target/cairn/<arch>/baseline/`, named by the hash
//! of everything it is made of ([`Recipe`]: packages, sources and mirror,
//! the archive's state as each suite's `InRelease`, the files added, disk
//! sizes, [`BASELINE_RECIPE_VERSION`]), so a second bench reuses it.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cairn_builder::apt_sources::{self, Mirrors};
use cairn_builder::archive::{self, ArchiveState};
use cairn_builder::disk::{self, DiskLayout, EspFile, PartitionNames};
use cairn_builder::manifest::{ImageSpec, Manifest};
use cairn_builder::scratch;
use cairn_common::layout::{Arch, Platform};
use cairn_common::process::Cmd;
use cairn_qemu_tests::boot_timing::BootTimes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths;

/// Bump when the way the baseline is made changes, so an image made the
/// old way is not reused.
pub const BASELINE_RECIPE_VERSION: u32 = 1;

/// The flavor whose packages the baseline has (Cairn's boot is measured on
/// the dev image).
const FLAVOR: &str = "dev";
/// The manifest's package set the baseline leaves out: what makes Cairn an
/// ostree system (ostree, ostree-boot, dracut).
const OSTREE_SET: &str = "ostree";
/// Debian's default initramfs generator, which the baseline boots with,
/// and what it recommends (Debian installs recommendations by default;
/// the image does not): without `zstd` its default `COMPRESS=zstd` falls
/// back to gzip, without `busybox` its shell is klibc's.
const INITRAMFS_PACKAGES: &[&str] = &["initramfs-tools", "zstd", "busybox"];

/// The ext4 label of the baseline's root (on the kernel command line, in
/// fstab and GRUB's search).
pub const ROOT_LABEL: &str = "debian-root";
/// The partitions' GPT names; the ESP's is its FAT label too.
const NAMES: PartitionNames<'static> = PartitionNames {
    esp: "DEBIAN-ESP",
    root: ROOT_LABEL,
};
/// The baseline machine's name: its prompt says which machine it is.
pub const HOSTNAME: &str = "cairn-baseline";

/// GRUB modules built into the EFI image: the ones Cairn's image has, so
/// both load the same GRUB.
const GRUB_MODULES: &[&str] = cairn_builder::compose::GRUB_MODULES;

/// `/etc/kernel-img.conf`, in the tree before the kernel is installed:
/// Debian's `linux-update-symlinks` then makes `/boot/vmlinuz` and
/// `/boot/initrd.img` (its default is `/vmlinuz`, `/initrd.img`).
pub const KERNEL_IMG_CONF: &str =
    "# Written by cargo xtask bench: the kernel's symlinks in /boot.\nlink_in_boot = yes\n";

/// Where Cairn keeps the files the baseline copies, relative to the
/// manifest's folder.
const CAIRN_DHCP_NETWORK: &str = "overlay/base/usr/lib/systemd/network/80-cairn-dhcp.network";
const CAIRN_AUTOLOGIN: &str = "overlay/dev/usr/lib/systemd/system/serial-getty@.service.d/cairn-autologin.conf";

/// What the baseline reads from the manifest beyond [`ImageSpec`]: the
/// package set it leaves out and the platform's kernel arguments (they
/// describe the machine, e.g. `acpi=force`, not Cairn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestExtras {
    pub ostree_set: Vec<String>,
    pub platform_kernel_args: Vec<String>,
}

impl ManifestExtras {
    /// From the manifest's text (already validated by [`Manifest::resolve`]).
    pub fn parse(text: &str, platform: Platform) -> Result<ManifestExtras> {
        let doc: toml::Table = toml::from_str(text).context("parsing the image manifest")?;
        let strings = |value: &toml::Value, what: &str| -> Result<Vec<String>> {
            value
                .as_array()
                .with_context(|| format!("{what} is not a list"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("{what}: {v} is not a string"))
                })
                .collect()
        };
        let ostree = doc.get("packages").and_then(|p| p.get(OSTREE_SET)).with_context(|| {
            format!("the manifest has no [packages] {OSTREE_SET} set (what the plain-Debian baseline leaves out)")
        })?;
        let args = doc
            .get("platforms")
            .and_then(|p| p.get(platform.as_str()))
            .and_then(|p| p.get("kernel-args"));
        Ok(ManifestExtras {
            ostree_set: strings(ostree, &format!("[packages] {OSTREE_SET}"))?,
            platform_kernel_args: match args {
                Some(a) => strings(a, &format!("[platforms.{platform}] kernel-args"))?,
                None => Vec::new(),
            },
        })
    }
}

/// The baseline's packages: the image's (kernel included), less the ostree
/// set, plus Debian's initramfs generator (as Debian installs it) and
/// GRUB's EFI modules and tools; sorted, once each.
pub fn packages(spec: &ImageSpec, ostree_set: &[String]) -> Vec<String> {
    let mut out: Vec<String> = spec
        .package_names()
        .into_iter()
        .filter(|p| !ostree_set.contains(p))
        .chain(INITRAMFS_PACKAGES.iter().map(|p| p.to_string()))
        .chain([spec.arch.grub_package().to_owned()])
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The kernel command line of a Debian cloud image: the root by label,
/// mounted read-only until systemd has checked it, the platform's
/// arguments, the consoles (the serial port last, so it is /dev/console).
pub fn kernel_args(arch: Arch, platform_args: &[String]) -> Vec<String> {
    let mut args = vec![format!("root=LABEL={ROOT_LABEL}"), "ro".to_owned()];
    args.extend(platform_args.iter().cloned());
    args.push("console=tty0".to_owned());
    args.push(arch.serial_console().to_owned());
    args
}

/// `/etc/fstab`: the root by label, as Debian's installer writes it.
pub fn fstab() -> String {
    format!("# <file system> <mount point> <type> <options> <dump> <pass>\nLABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n")
}

/// `/boot/grub/grub.cfg`: one entry, booted at once, through Debian's
/// kernel and initramfs symlinks.
pub fn grub_cfg(kernel_args: &[String]) -> String {
    format!(
        "set default=0\nset timeout=0\n\nmenuentry 'Debian GNU/Linux (Cairn bench baseline)' {{\n\tsearch --no-floppy --label --set=root {ROOT_LABEL}\n\tlinux /boot/vmlinuz {}\n\tinitrd /boot/initrd.img\n}}\n",
        kernel_args.join(" ")
    )
}

/// The config built into GRUB's EFI image: find the root by label, read its
/// `/boot/grub/grub.cfg`. It runs under GRUB's rescue parser, which has no
/// `if`, so it is plain commands.
pub fn embedded_grub_cfg() -> String {
    format!(
        "search --no-floppy --label --set=root {ROOT_LABEL}\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n"
    )
}

/// Cairn's own files the baseline copies: its DHCP `.network` file and the
/// dev image's serial autologin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CairnFiles {
    pub network: String,
    pub autologin: String,
}

impl CairnFiles {
    /// Read from the overlays next to the manifest at `manifest`.
    pub fn read(manifest: &Path) -> Result<CairnFiles> {
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let read = |rel: &str| {
            let path = dir.join(rel);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(CairnFiles {
            network: read(CAIRN_DHCP_NETWORK)?,
            autologin: read(CAIRN_AUTOLOGIN)?,
        })
    }
}

/// The files in the tree before the packages are installed (after the
/// essential ones), path → contents, as an installer leaves them before
/// the kernel's postinst makes the symlinks and the initramfs, whose hooks
/// read fstab. (Its fsck hook finds the root's type by probing the device
/// fstab names, which a tree in a folder has not, so the initramfs has no
/// fsck and `systemd-fsck-root` checks the root after it, as fstab's pass
/// 1 asks.)
pub fn early_files() -> BTreeMap<String, String> {
    [
        ("etc/kernel-img.conf", KERNEL_IMG_CONF.to_owned()),
        ("etc/fstab", fstab()),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c))
    .collect()
}

/// The files the baseline writes into the Debian tree once its packages
/// are installed, path → contents.
pub fn tree_files(kernel_args: &[String], cairn: &CairnFiles) -> BTreeMap<String, String> {
    [
        ("etc/hostname", format!("{HOSTNAME}\n")),
        ("etc/systemd/network/80-dhcp.network", cairn.network.clone()),
        (
            "etc/systemd/system/serial-getty@.service.d/autologin.conf",
            cairn.autologin.clone(),
        ),
        ("boot/grub/grub.cfg", grub_cfg(kernel_args)),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c))
    .collect()
}

/// Everything the baseline image is made of. Its hash names the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub recipe: u32,
    pub arch: Arch,
    pub platform: Platform,
    pub release: String,
    /// `deb` lines, in order: the mirror is in them.
    pub sources: Vec<String>,
    pub packages: Vec<String>,
    /// Files in the tree before the packages are installed: path → contents.
    pub early_files: BTreeMap<String, String>,
    /// Files written into the tree after mmdebstrap: path → contents.
    pub files: BTreeMap<String, String>,
    pub embedded_grub_cfg: String,
    pub grub_modules: Vec<String>,
    pub esp_size: u64,
    pub root_size: u64,
    /// The archive's state: suite → SHA-256 of its `InRelease`.
    pub archive: BTreeMap<String, String>,
}

impl Recipe {
    pub fn new(
        spec: &ImageSpec,
        extras: &ManifestExtras,
        mirrors: &Mirrors,
        archive: BTreeMap<String, String>,
        cairn: &CairnFiles,
    ) -> Recipe {
        let components = spec.components.join(" ");
        Recipe {
            recipe: BASELINE_RECIPE_VERSION,
            arch: spec.arch,
            platform: spec.platform,
            release: spec.release.clone(),
            sources: spec
                .suites
                .iter()
                .map(|s| format!("deb {} {s} {components}", mirrors.for_suite(s)))
                .collect(),
            packages: packages(spec, &extras.ostree_set),
            early_files: early_files(),
            files: tree_files(&kernel_args(spec.arch, &extras.platform_kernel_args), cairn),
            embedded_grub_cfg: embedded_grub_cfg(),
            grub_modules: GRUB_MODULES.iter().map(|m| m.to_string()).collect(),
            esp_size: spec.esp_size,
            root_size: spec.root_size,
            archive,
        }
    }

    /// Content key: the first 128 bits of the SHA-256 of the recipe.
    pub fn key(&self) -> Result<String> {
        let json = serde_json::to_vec(self).context("serialising the baseline's recipe")?;
        Ok(hex::encode(&Sha256::digest(&json)[..16]))
    }

    /// The image's file name, without extension.
    fn name(&self, key: &str) -> String {
        format!("{}-{key}", self.platform)
    }
}

/// A built baseline image; its record is kept next to it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub key: String,
    pub raw: PathBuf,
    pub kernel_release: String,
    /// Installed packages and their versions.
    pub packages: BTreeMap<String, String>,
    /// The archive's state the packages were installed from.
    pub archive: ArchiveState,
    /// How long making it took.
    pub build_secs: f64,
    pub recipe: Recipe,
    /// Whether this run reused an image made before (not recorded).
    #[serde(skip)]
    pub reused: bool,
}

/// `target/cairn/<arch>/baseline/`.
pub fn dir(arch: Arch) -> PathBuf {
    paths::out(arch).join("baseline")
}

/// The baseline for `arch` and `platform` from the Debian archive as it is
/// now: reused when an image of the same recipe exists, else built.
pub fn ensure(arch: Arch, platform: Platform) -> Result<Baseline> {
    let manifest = paths::manifest();
    let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let spec = Manifest::parse(&manifest, &text)?.resolve(FLAVOR, arch, platform)?;
    let extras = ManifestExtras::parse(&text, platform)?;
    let cairn = CairnFiles::read(&manifest)?;
    let mirrors = apt_sources::resolve(
        Path::new("/etc/apt"),
        &spec.release,
        spec.mirror.as_deref(),
        spec.security_mirror.as_deref(),
    )?;

    // Downloaded packages and work folders, as the builder's cache keeps
    // them; one baseline build at a time.
    let cache = paths::cache().join("baseline");
    let tmp = cache.join("tmp");
    let debs = cache.join("debs").join(arch.debian());
    for d in [&tmp, &debs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = scratch::lock(&cache)?;
    scratch::clear(&tmp)?;

    let fetched = {
        let dir = scratch::WorkDir::new(&tmp, "archive-")?;
        archive::fetch(&spec.suites, &mirrors, dir.path())?
    };
    let recipe = Recipe::new(&spec, &extras, &mirrors, archive::hashes(&fetched), &cairn);
    let out = dir(arch);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let key = recipe.key()?;
    if let Some(mut cached) = read_record(&out, &recipe.name(&key))? {
        tracing::info!(%key, image = %cached.raw.display(), "plain-Debian baseline cached");
        cached.reused = true;
        return Ok(cached);
    }
    tracing::info!(%key, packages = recipe.packages.len(), "building the plain-Debian baseline");
    build(&spec, &mirrors, recipe, &out, &tmp, &debs)
}

/// The record of image `name` in `out`, if it and its image exist.
fn read_record(out: &Path, name: &str) -> Result<Option<Baseline>> {
    let record = out.join(format!("{name}.json"));
    let Ok(text) = fs::read_to_string(&record) else {
        return Ok(None);
    };
    let baseline: Baseline = serde_json::from_str(&text).with_context(|| format!("reading {}", record.display()))?;
    Ok(baseline.raw.is_file().then_some(baseline))
}

/// Make the image of `recipe` in `out` (work in `tmp`, packages cached in
/// `debs`). It is named by the archive state apt really used.
fn build(
    spec: &ImageSpec,
    mirrors: &Mirrors,
    mut recipe: Recipe,
    out: &Path,
    tmp: &Path,
    debs: &Path,
) -> Result<Baseline> {
    let started = Instant::now();
    // Removed whole, mmdebstrap's mounts first, however this ends.
    let work = scratch::WorkDir::new(tmp, "baseline-")?;
    let root = work.path().join("root");
    let lists = work.path().join("apt-lists");
    fs::create_dir_all(&lists).with_context(|| format!("creating {}", lists.display()))?;
    // Uploaded into the tree by mmdebstrap.
    let early = work.path().join("early");
    let mut uploads = Vec::new();
    for (i, (rel, contents)) in recipe.early_files.iter().enumerate() {
        let staged = early.join(i.to_string());
        write_in_tree(&early, &i.to_string(), contents)?;
        uploads.push((staged, rel.as_str()));
    }

    run_mmdebstrap(spec, &recipe, &root, debs, &lists, &uploads)?;
    tracing::info!(elapsed = ?started.elapsed(), "baseline packages installed");
    let used = archive::from_apt_lists(&lists, &spec.suites, mirrors)?;
    recipe.archive = archive::hashes(&used);
    let key = recipe.key()?;

    for (rel, contents) in &recipe.early_files {
        let now = fs::read_to_string(root.join(rel)).unwrap_or_default();
        if &now != contents {
            bail!("/{rel} in the baseline's tree is not what was put there before the packages: {now:?}");
        }
    }
    for (rel, contents) in &recipe.files {
        write_in_tree(&root, rel, contents)?;
    }
    for link in ["boot/vmlinuz", "boot/initrd.img"] {
        let target = resolve_in(&root, link)?;
        if !target.is_file() {
            bail!(
                "the baseline's tree has no /{link} (Debian's kernel symlinks, made by linux-update-symlinks as /etc/kernel-img.conf says): {} is not a file",
                target.display()
            );
        }
    }
    let kernel_release = kernel_release(&root)?;
    let packages =
        cairn_builder::compose::installed_packages(&root).context("listing the baseline's installed packages")?;
    let efi = grub_efi_image(spec.arch, &root, &recipe.embedded_grub_cfg, &recipe.grub_modules)?;

    let name = recipe.name(&key);
    let raw = out.join(format!("{name}.raw"));
    let partial = out.join(format!("{name}.raw.partial"));
    write_disk(&partial, &recipe, &key, &root, &efi, work.path())?;
    fs::rename(&partial, &raw).with_context(|| format!("renaming {} to {}", partial.display(), raw.display()))?;
    drop(work);

    let baseline = Baseline {
        key,
        raw,
        kernel_release,
        packages,
        archive: used,
        build_secs: started.elapsed().as_secs_f64(),
        recipe,
        reused: false,
    };
    let record = out.join(format!("{name}.json"));
    let record_partial = out.join(format!("{name}.json.partial"));
    fs::write(&record_partial, serde_json::to_vec_pretty(&baseline)?)
        .with_context(|| format!("writing {}", record_partial.display()))?;
    fs::rename(&record_partial, &record).with_context(|| format!("renaming {}", record_partial.display()))?;
    remove_others(out, &baseline.recipe.platform, &name)?;
    tracing::info!(image = %baseline.raw.display(), secs = baseline.build_secs, "plain-Debian baseline built");
    Ok(baseline)
}

fn run_mmdebstrap(
    spec: &ImageSpec,
    recipe: &Recipe,
    root: &Path,
    debs: &Path,
    lists: &Path,
    uploads: &[(PathBuf, &str)],
) -> Result<()> {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut cmd = Cmd::new("mmdebstrap")
        .args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--arch={}", spec.arch.debian()))
        // As the builder does: the same merged /usr without usrmerge.
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg(format!("--include={}", recipe.packages.join(",")))
        // Downloaded packages persist between builds.
        .args(["--skip=download/empty", "--skip=essential/unlink"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(debs)))
        // Before the kernel is installed: its postinst makes the
        // initramfs (initramfs-tools) and the symlinks in /boot.
        .args(
            uploads
                .iter()
                .map(|(from, to)| format!("--essential-hook=upload {} /{to}", q(from))),
        )
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", q(debs)))
        .arg("--customize-hook=chroot \"$1\" systemctl enable systemd-networkd.service")
        // The InRelease files apt used: the archive state the image is named by.
        .arg(format!(
            "--customize-hook=cp \"$1\"/var/lib/apt/lists/*_InRelease {}/",
            q(lists)
        ))
        .arg("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/*")
        .arg(&spec.release)
        .arg(root);
    for line in &recipe.sources {
        cmd = cmd.arg(line);
    }
    cmd.progress()
        .run()
        .context("installing the plain-Debian baseline's packages with mmdebstrap")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Write `contents` to `rel` in the tree at `root` (mode 0644, missing
/// folders 0755, whatever the umask).
fn write_in_tree(root: &Path, rel: &str, contents: &str) -> Result<()> {
    let path = root.join(rel);
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.exists()) {
        missing.push(d.to_owned());
        dir = d.parent();
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", d.display()))?;
    }
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// `rel` in the tree at `root` with its symlinks followed inside the tree
/// (an absolute target names a path of the tree, not of this host).
fn resolve_in(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut path = root.join(rel);
    for _ in 0..16 {
        match fs::read_link(&path) {
            Ok(target) if target.is_absolute() => {
                path = root.join(target.strip_prefix("/").unwrap_or(&target));
            }
            Ok(target) => {
                path = path.parent().unwrap_or(root).join(target);
            }
            Err(_) => return Ok(path),
        }
    }
    bail!("{}: too many levels of symbolic links", root.join(rel).display())
}

/// The one kernel of the tree (`/usr/lib/modules/<release>`).
fn kernel_release(root: &Path) -> Result<String> {
    let modules = root.join("usr/lib/modules");
    let releases: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("listing {}", modules.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    match &releases[..] {
        [one] => Ok(one.clone()),
        _ => bail!(
            "the baseline's tree should hold one kernel, {} holds {releases:?}",
            modules.display()
        ),
    }
}

/// GRUB's EFI binary, made by the tree's own `grub-mkimage` (the release's
/// GRUB, installed with its modules), run chrooted in the tree at `root`
/// (through qemu-user for a foreign arch), with `embedded` built in.
fn grub_efi_image(arch: Arch, root: &Path, embedded: &str, modules: &[String]) -> Result<Vec<u8>> {
    let inside = Path::new("/tmp/cairn-baseline-grub");
    let outside = root.join(inside.strip_prefix("/").unwrap_or(inside));
    fs::create_dir_all(&outside).with_context(|| format!("creating {}", outside.display()))?;
    fs::write(outside.join("embedded.cfg"), embedded)
        .with_context(|| format!("writing {}", outside.join("embedded.cfg").display()))?;
    Cmd::new("chroot")
        .arg(root)
        .arg("/usr/bin/grub-mkimage")
        .arg("-O")
        .arg(arch.grub_target())
        .arg("-d")
        .arg(Path::new("/usr/lib/grub").join(arch.grub_target()))
        .arg("-c")
        .arg(inside.join("embedded.cfg"))
        .args(["-p", "/boot/grub"])
        .arg("-o")
        .arg(inside.join("grub.efi"))
        .args(modules)
        .run()
        .context("building the baseline's GRUB EFI image with the release's grub-mkimage")?;
    let image = outside.join("grub.efi");
    let bytes = fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    fs::remove_dir_all(&outside).with_context(|| format!("removing {}", outside.display()))?;
    Ok(bytes)
}

/// What the kernel logs as it starts the initramfs's `/init`.
pub const INITRAMFS_START: &str = "Run /init as init process";

/// `times` of a boot whose initramfs systemd did not see (initramfs-tools
/// has no systemd): the kernel's share ends where `dmesg_line`, the
/// kernel's [`INITRAMFS_START`] line (`[    3.141593] Run /init as init
/// process`), says; the initrd's runs from there to userspace.
pub fn split_at_initramfs(times: &BootTimes, dmesg_line: &str) -> Result<BootTimes> {
    let stamp = dmesg_line
        .lines()
        .find(|l| l.contains(INITRAMFS_START))
        .and_then(|l| l.trim_start().strip_prefix('['))
        .and_then(|l| l.split_once(']'))
        .and_then(|(secs, _)| secs.trim().parse::<f64>().ok())
        .with_context(|| format!("no `[seconds] {INITRAMFS_START}` in the kernel log: {dmesg_line:?}"))?;
    // The kernel ran until userspace started; `stamp` is within that.
    let until_userspace = times.kernel_secs + times.initrd_secs;
    let kernel = stamp.min(until_userspace);
    Ok(BootTimes {
        kernel_secs: kernel,
        initrd_secs: until_userspace - kernel,
        ..times.clone()
    })
}

/// The disk at `path`: GPT, the ESP with GRUB (made in `work`), the tree
/// at `root` as its ext4 root.
fn write_disk(path: &Path, recipe: &Recipe, key: &str, root: &Path, efi: &[u8], work: &Path) -> Result<()> {
    let layout = DiskLayout::new(recipe.esp_size, recipe.root_size);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(layout.total_size)
        .with_context(|| format!("sizing {} to {} bytes", path.display(), layout.total_size))?;
    disk::write_partition_table_named(&mut file, &layout, recipe.arch, NAMES)?;
    let esp = [EspFile {
        path: recipe.arch.efi_boot_path(),
        contents: efi,
    }];
    disk::write_esp_labelled(&mut file, &layout, NAMES.esp, disk::esp_volume_id(key), &esp, work)?;
    file.sync_all()
        .with_context(|| format!("writing {} to disk", path.display()))?;
    drop(file);
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", ROOT_LABEL])
        .arg("-E")
        .arg(format!("offset={}", layout.root_offset))
        .arg("-d")
        .arg(root)
        .arg(path)
        .arg(format!("{}k", layout.root_size / 1024))
        .run()
        .context("writing the baseline's root file system with mkfs.ext4 -d (if it ran out of space, raise disk.root-size in the manifest)")
}

/// Remove the images of `platform` in `out` other than `keep` (made from
/// an older recipe or archive state).
fn remove_others(out: &Path, platform: &Platform, keep: &str) -> Result<()> {
    let prefix = format!("{platform}-");
    for e in fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let path = e?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && !name.starts_with(&format!("{keep}.")) {
            tracing::info!(file = %path.display(), "removing an older baseline");
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> (PathBuf, String) {
        let path = paths::manifest();
        let text = fs::read_to_string(&path).unwrap();
        (path, text)
    }

    fn spec(arch: Arch, platform: Platform) -> ImageSpec {
        let (path, text) = manifest();
        Manifest::parse(&path, &text)
            .unwrap()
            .resolve(FLAVOR, arch, platform)
            .unwrap()
    }

    fn recipe(arch: Arch, platform: Platform) -> Recipe {
        let (path, text) = manifest();
        let mirrors = Mirrors {
            main: "http://deb.example/debian".into(),
            security: "http://deb.example/debian-security".into(),
        };
        let archive = [("trixie".to_owned(), "aa".to_owned())].into();
        Recipe::new(
            &spec(arch, platform),
            &ManifestExtras::parse(&text, platform).unwrap(),
            &mirrors,
            archive,
            &CairnFiles::read(&path).unwrap(),
        )
    }

    #[test]
    fn packages_are_the_dev_images_without_ostree_plus_debians_initramfs_and_grub() {
        let (_, text) = manifest();
        let extras = ManifestExtras::parse(&text, Platform::Generic).unwrap();
        assert_eq!(extras.ostree_set, ["ostree", "ostree-boot", "dracut"]);
        let s = spec(Arch::X86_64, Platform::Generic);
        let p = packages(&s, &extras.ostree_set);
        for wanted in [
            "linux-image-cloud-amd64",
            "initramfs-tools",
            "zstd",
            "busybox",
            "grub-efi-amd64-bin",
            "systemd",
            "systemd-resolved",
            "containerd",
            "runc",
            "less",
        ] {
            assert!(p.iter().any(|x| x == wanted), "{wanted} missing: {p:?}");
        }
        for cairns in ["ostree", "ostree-boot", "dracut"] {
            assert!(!p.iter().any(|x| x == cairns), "{cairns} kept: {p:?}");
        }
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(p, sorted);
        // Everything else of the dev image is there.
        assert_eq!(p.len(), s.packages.len() - 3 + 4);

        let kunpeng = spec(Arch::Aarch64, Platform::Kunpeng920);
        let p = packages(&kunpeng, &extras.ostree_set);
        assert!(p.iter().any(|x| x == "linux-image-arm64"), "{p:?}");
        assert!(p.iter().any(|x| x == "grub-efi-arm64-bin"), "{p:?}");
    }

    #[test]
    fn the_command_line_is_debians_with_the_platforms_arguments_and_serial_console_last() {
        assert_eq!(
            kernel_args(Arch::X86_64, &[]),
            ["root=LABEL=debian-root", "ro", "console=tty0", "console=ttyS0,115200"]
        );
        let (_, text) = manifest();
        let extras = ManifestExtras::parse(&text, Platform::Kunpeng920).unwrap();
        assert_eq!(extras.platform_kernel_args, ["acpi=force"]);
        assert_eq!(
            kernel_args(Arch::Aarch64, &extras.platform_kernel_args).join(" "),
            "root=LABEL=debian-root ro acpi=force console=tty0 console=ttyAMA0,115200"
        );
        assert!(ManifestExtras::parse(&text, Platform::Generic)
            .unwrap()
            .platform_kernel_args
            .is_empty());
    }

    #[test]
    fn grub_boots_debians_symlinks_at_once_with_the_root_by_label() {
        let cfg = grub_cfg(&kernel_args(Arch::X86_64, &[]));
        assert_eq!(
            cfg,
            "set default=0\nset timeout=0\n\nmenuentry 'Debian GNU/Linux (Cairn bench baseline)' {\n\
             \tsearch --no-floppy --label --set=root debian-root\n\
             \tlinux /boot/vmlinuz root=LABEL=debian-root ro console=tty0 console=ttyS0,115200\n\
             \tinitrd /boot/initrd.img\n}\n"
        );
        let embedded = embedded_grub_cfg();
        assert_eq!(
            embedded,
            "search --no-floppy --label --set=root debian-root\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n"
        );
        // GRUB's rescue parser runs the embedded config: no `if`.
        assert!(!embedded.lines().any(|l| l.trim_start().starts_with("if ")));
        assert_eq!(
            fstab().lines().last().unwrap(),
            "LABEL=debian-root / ext4 errors=remount-ro 0 1"
        );
        assert!(KERNEL_IMG_CONF.contains("link_in_boot = yes"));
        let early = early_files();
        assert_eq!(early.keys().collect::<Vec<_>>(), ["etc/fstab", "etc/kernel-img.conf"]);
        assert!(
            NAMES.esp.len() <= 11,
            "the ESP's name is its FAT label: 11 characters at most"
        );
    }

    #[test]
    fn the_tree_gets_cairns_network_and_autologin_and_a_hostname_the_harness_knows() {
        let r = recipe(Arch::X86_64, Platform::Generic);
        let (path, _) = manifest();
        let cairn = CairnFiles::read(&path).unwrap();
        assert_eq!(r.files["etc/systemd/network/80-dhcp.network"], cairn.network);
        assert!(cairn.network.contains("DHCP=yes"), "{}", cairn.network);
        assert_eq!(
            r.files["etc/systemd/system/serial-getty@.service.d/autologin.conf"],
            cairn.autologin
        );
        assert!(cairn.autologin.contains("--autologin root"), "{}", cairn.autologin);
        assert_eq!(r.files["etc/hostname"].trim(), HOSTNAME);
        assert_eq!(r.early_files["etc/fstab"], fstab());
        assert!(r.files["boot/grub/grub.cfg"].contains("console=ttyS0,115200"));
        assert_eq!(
            r.sources,
            [
                "deb http://deb.example/debian trixie main",
                "deb http://deb.example/debian trixie-updates main",
                "deb http://deb.example/debian-security trixie-security main"
            ]
        );
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let r = recipe(Arch::X86_64, Platform::Generic);
        let k = r.key().unwrap();
        assert_eq!(k.len(), 32);
        assert_eq!(recipe(Arch::X86_64, Platform::Generic).key().unwrap(), k, "stable");
        let changed = |f: &dyn Fn(&mut Recipe)| {
            let mut other = r.clone();
            f(&mut other);
            other.key().unwrap()
        };
        assert_ne!(changed(&|r| r.recipe += 1), k, "recipe version");
        assert_ne!(changed(&|r| r.packages.push("tree".into())), k, "packages");
        assert_ne!(
            changed(&|r| r.sources[0] = "deb http://other.example/debian trixie main".into()),
            k,
            "mirror"
        );
        assert_ne!(changed(&|r| r.release = "forky".into()), k, "release");
        assert_ne!(
            changed(&|r| {
                r.archive.insert("trixie".into(), "bb".into());
            }),
            k,
            "archive state"
        );
        assert_ne!(
            changed(&|r| {
                r.files.insert("etc/hostname".into(), "other\n".into());
            }),
            k,
            "files"
        );
        assert_ne!(changed(&|r| r.root_size *= 2), k, "disk");
        assert_ne!(recipe(Arch::Aarch64, Platform::Generic).key().unwrap(), k, "arch");
        assert_ne!(recipe(Arch::Aarch64, Platform::Phytium).key().unwrap(), k, "platform");
        assert_eq!(r.name(&k), format!("generic-{k}"));
    }

    #[test]
    fn a_manifest_without_an_ostree_set_is_an_error_that_says_what_is_missing() {
        let err = ManifestExtras::parse("[packages]\nsystem = [\"systemd\"]\n", Platform::Generic).unwrap_err();
        assert!(format!("{err:#}").contains("[packages] ostree"), "{err:#}");
    }

    #[test]
    fn the_kernel_log_splits_the_kernels_time_at_the_initramfs() {
        let times = BootTimes {
            firmware_and_loader_secs: 7.0,
            kernel_secs: 6.7,
            initrd_secs: 0.0,
            userspace_secs: 18.3,
            guest_secs: 25.0,
            total_secs: 32.0,
        };
        let split = split_at_initramfs(&times, "[    2.500000] Run /init as init process\r\n").unwrap();
        assert_eq!(split.kernel_secs, 2.5);
        assert!((split.initrd_secs - 4.2).abs() < 1e-9);
        assert_eq!(
            (split.userspace_secs, split.total_secs, split.firmware_and_loader_secs),
            (18.3, 32.0, 7.0)
        );
        // A stamp past userspace's start (another clock) charges no initrd.
        let late = split_at_initramfs(&times, "[    9.000000] Run /init as init process").unwrap();
        assert_eq!((late.kernel_secs, late.initrd_secs), (6.7, 0.0));
        let err = split_at_initramfs(&times, "").unwrap_err();
        assert!(format!("{err:#}").contains(INITRAMFS_START), "{err:#}");
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        fs::write(boot.join("vmlinuz-6.12"), b"k").unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.12", boot.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("/boot/vmlinuz", d.path().join("vmlinuz")).unwrap();
        assert_eq!(resolve_in(d.path(), "boot/vmlinuz").unwrap(), boot.join("vmlinuz-6.12"));
        assert_eq!(resolve_in(d.path(), "vmlinuz").unwrap(), boot.join("vmlinuz-6.12"));
        write_in_tree(d.path(), "etc/systemd/network/80-dhcp.network", "x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&d.path().join("etc/systemd/network/80-dhcp.network")), 0o644);
        assert_eq!(mode(&d.path().join("etc/systemd")), 0o755);
    }
}
