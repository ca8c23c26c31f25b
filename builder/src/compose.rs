//! `cairn-build compose`: manifest → signed OSTree commit.
//!
//! Two layers, so a change to Cairn's own files does not rebuild Debian:
//!
//! 1. The **package layer**: mmdebstrap of the manifest's packages, one
//!    dracut run, the GRUB EFI image, converted to the ostree layout and
//!    committed to a cache repo under a ref named by the hash of everything
//!    that went into it ([`BaseRecipe`]), the state of the Debian archive
//!    included (each suite's `InRelease`, see [`crate::archive`]).
//!    Downloaded `.deb`s are cached too.
//! 2. The **image commit**: the package layer plus the overlay trees, the
//!    agent binaries and generated files, committed (GPG-signed) to the
//!    output repo with the version and every package version as metadata.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use cairn_common::identity::Variant;
use cairn_common::kargs;
use cairn_common::layout::{self, Arch, Platform};
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt_repos::{self, RepositoryRecipe};
use crate::apt_sources::{self, Mirrors};
use crate::archive::{self, ArchiveState};
use crate::kernel_check::{self, Fragment, KernelFacts};
use crate::keys::SigningKey;
use crate::manifest::{ImageSpec, Manifest, ModuleSelection};
use crate::module_prune::{self, AllowKey, AllowList};
use crate::ostree::{self, Commit, Tree};
use crate::ostree_layout;
use crate::scratch;

/// Bump when the way the package layer is made changes, so old caches are
/// not reused for a different recipe.
const BASE_RECIPE_VERSION: u32 = 11;

/// Where the GRUB EFI image lives inside the OS tree (and so in every commit):
/// the image builder copies this folder to the ESP.
pub const EFI_TREE_PATH: &str = "usr/lib/cairn/efi";

/// GRUB modules built into the EFI image (no modules are loaded at run time).
pub const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "linux",
    "search",
    "search_label",
    "search_fs_uuid",
    "configfile",
    "loadenv",
    "test",
    "echo",
    "gzio",
    "regexp",
    "efi_gop",
    "sleep",
    "reboot",
    "halt",
];

/// The ESP's `EFI/BOOT/grub.cfg`, which GRUB's normal mode reads from its
/// prefix (no configuration is embedded in the image: the embedded one runs
/// under GRUB's rescue parser, which has no `if`). It remembers the ESP GRUB
/// was loaded from (the boot counter lives there), finds the root partition
/// on the same disk (by label if that fails) and reads the generated menu.
pub const GRUB_ESP_CFG: &str = r#"set cairn_esp="$root"
export cairn_esp
regexp --set=1:cairn_disk '^(.*),gpt1$' "$root"
if [ -n "$cairn_disk" ]; then set root="$cairn_disk,gpt2"; fi
if [ ! -f /boot/loader/grub.cfg ]; then search --no-floppy --label --set=root cairn-root; fi
configfile /boot/loader/grub.cfg
"#;

/// Timestamp the package layer is built at (Debian 12's release day), for reproducibility.
pub const SOURCE_DATE_EPOCH: &str = "1686355200";

/// `dracut` arguments: an initramfs for any machine of the platform (not
/// only the build host's: `--no-hostonly`) with ostree's module,
/// reproducible; left uncompressed for [`COMPRESS_INITRAMFS`] (the tree has
/// no zstd binary for dracut to run).
const DRACUT_ARGS: &str = "--no-hostonly --reproducible --force --add ostree --no-compress";

/// dracut modules the initramfs leaves out: each adds drivers, files or a
/// wait that a Cairn boot never uses, and the boot pays for them (the
/// kernel unpacks, and udev reads, everything in the initramfs; measured on
/// the dev image under TCG: 58 MB with them, most of it `hwdb` (13 MB) and
/// the `qemu` and `kernel-modules-extra` drivers, 350 modules).
/// - `hwdb`: udev's hardware database; the initramfs only finds disks;
/// - `qemu`, `kernel-modules-extra`, `nvdimm`, `virtfs`, `virtiofs`,
///   `lunmask`: drivers by the dozen (CD-ROMs, IDE, persistent memory,
///   9p/virtiofs roots) beyond [`dracut_args`]' list;
/// - `resume` (no swap, no hibernation), `overlay-root`, `usrmount` (ostree
///   mounts /usr), `terminfo`, `systemd-battery-check`, `systemd-pcrphase`
///   (no TPM measurements).
const DRACUT_OMIT: &str = "hwdb qemu kernel-modules-extra nvdimm virtfs virtiofs lunmask resume overlay-root usrmount terminfo systemd-battery-check systemd-pcrphase";

/// dracut's arguments for an image whose initramfs holds the kernel
/// modules `drivers` ([`initramfs_modules`]) and those they depend on, and
/// no other: `--drivers` replaces dracut's own list (every storage, HID,
/// crypto and filesystem module of the kernel). Cairn's
/// `prepare-root.conf` is installed by name, not left to ostree's module
/// (which copies it only from 2023.4 on, when ostree started to read it).
pub fn dracut_args(drivers: &[String]) -> String {
    // Double quotes: the arguments run inside a single-quoted `sh -c`.
    let mut args = format!("{DRACUT_ARGS} --install /{PREPARE_ROOT_CONF_PATH} --omit \"{DRACUT_OMIT}\"");
    if !drivers.is_empty() {
        args.push_str(&format!(" --drivers \"{}\"", drivers.join(" ")));
    }
    args
}

/// Compress the initramfs with zstd on the build host (the kernel unpacks
/// zstd, as Debian 12's own initramfs-tools default; smaller than gzip).
const COMPRESS_INITRAMFS: &str = "for k in \"$1\"/usr/lib/modules/*; do zstd -q -19 -T0 --rm \"$k/initramfs.img\" -o \"$k/initramfs.img.zst\" && mv \"$k/initramfs.img.zst\" \"$k/initramfs.img\" || exit 1; done";

/// `/usr/lib/ostree/prepare-root.conf`: how `ostree-prepare-root`, in the
/// initramfs, mounts a deployment. Written into the package layer before
/// dracut runs, which installs it into the initramfs, where it is read
/// (ostree reads it from 2023.4 on; Debian 12's 2022.7 behaves as it says),
/// so the root's mode is Cairn's choice, not the default of whichever
/// ostree the release ships:
/// - `/usr` is a read-only bind mount of the deployment (ostree always
///   does this); `/etc` and `/var` are persistent and writable (not
///   transient: `/etc` is merged across updates, `/var` kept);
/// - `/sysroot` stays writable, as it was under Debian 12's ostree: the
///   first-boot root growth resizes the mounted root filesystem;
/// - no composefs: Debian builds ostree without it (`ostree --version`
///   lists no `composefs` feature), so asking for it would fail the boot.
pub const PREPARE_ROOT_CONF: &str = "# Written by cairn-build: how ostree-prepare-root mounts a Cairn deployment.
[sysroot]
readonly = false

[composefs]
enabled = no

[root]
transient = false

[etc]
transient = false
";

/// Where [`PREPARE_ROOT_CONF`] lives, in the tree and in the initramfs.
const PREPARE_ROOT_CONF_PATH: &str = "usr/lib/ostree/prepare-root.conf";

/// Everything the package layer is made of. Its hash names the cache entry.
#[derive(Debug, Clone, Serialize)]
pub struct BaseRecipe {
    pub recipe: u32,
    pub arch: Arch,
    pub release: String,
    /// `deb` lines, in order.
    pub sources: Vec<String>,
    pub packages: Vec<String>,
    pub path_excludes: Vec<String>,
    pub grub_modules: Vec<String>,
    pub dracut_args: String,
    /// [`PREPARE_ROOT_CONF`], which the initramfs holds.
    pub prepare_root_conf: String,
    /// The archive's state: suite → SHA-256 of its `InRelease`.
    pub archive: BTreeMap<String, String>,
    /// The kernel modules kept of the pruned folders, for a platform with
    /// `modules = "fragments"`; absent (not serialised, so the key of a
    /// layer that keeps every module is what it was before pruning
    /// existed) when every module ships.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_modules: Option<AllowKey>,
    /// The manifest's own apt repositories (absent when there are none, so
    /// the key of a layer without any is what it was before they existed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<RepositoryRecipe>,
    /// Their state: `<repository> <suite>` → SHA-256 of its release file.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub repository_archive: BTreeMap<String, String>,
}

impl BaseRecipe {
    /// `initramfs`: the modules the initramfs holds ([`initramfs_modules`]);
    /// `repositories`: the manifest's own repositories' state
    /// ([`apt_repos::fetch_verified`]).
    pub fn new(
        spec: &ImageSpec,
        mirrors: &Mirrors,
        archive: &ArchiveState,
        repositories: &ArchiveState,
        initramfs: &[String],
        modules: Option<&AllowList>,
    ) -> BaseRecipe {
        let components = spec.components.join(" ");
        BaseRecipe {
            recipe: BASE_RECIPE_VERSION,
            arch: spec.arch,
            release: spec.release.clone(),
            sources: spec
                .suites
                .iter()
                .map(|s| format!("deb {} {s} {components}", mirrors.for_suite(s)))
                .collect(),
            packages: spec.package_names(),
            path_excludes: spec.path_excludes.clone(),
            grub_modules: GRUB_MODULES.iter().map(|s| s.to_string()).collect(),
            dracut_args: dracut_args(initramfs),
            prepare_root_conf: PREPARE_ROOT_CONF.to_owned(),
            archive: archive::hashes(archive),
            kernel_modules: modules.map(AllowList::key),
            repositories: spec.repositories.iter().map(RepositoryRecipe::of).collect(),
            repository_archive: archive::hashes(repositories),
        }
    }

    /// Content key: the first 128 bits of the SHA-256 of the recipe.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).expect("recipe serialises");
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

/// A cached package layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Base {
    pub key: String,
    pub commit: String,
    pub kernel_release: String,
    pub packages: BTreeMap<String, String>,
    /// The archive's state the packages were installed from.
    pub archive: ArchiveState,
    /// The state of the manifest's own repositories they were installed
    /// from (`<repository> <suite>`).
    #[serde(default)]
    pub repositories: ArchiveState,
}

/// Inputs of `compose`.
pub struct ComposeOptions {
    pub manifest: PathBuf,
    pub flavor: String,
    pub arch: Arch,
    pub platform: Platform,
    /// Debian release to build from instead of the manifest's.
    pub debian_release: Option<String>,
    pub repo: PathBuf,
    pub cache: PathBuf,
    pub keys: PathBuf,
    /// Folder holding the agent binaries built for `arch`.
    pub agent_dir: PathBuf,
    /// The host's apt configuration folder (normally `/etc/apt`).
    pub apt_dir: PathBuf,
    /// Release version instead of the manifest's (test and CI releases).
    pub version: Option<String>,
    /// Overlay trees laid over the manifest's own, in order.
    pub extra_overlays: Vec<PathBuf>,
}

/// What `compose` made; printed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Composed {
    pub commit: String,
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    pub version: String,
    pub arch: Arch,
    pub variant: Variant,
    pub repo: PathBuf,
    pub base_key: String,
    pub kernel_release: String,
    pub packages: usize,
}

pub fn compose(opts: &ComposeOptions) -> Result<Composed> {
    let started = Instant::now();
    let mut spec = Manifest::load(&opts.manifest)?.resolve(&opts.flavor, opts.arch, opts.platform)?;
    if let Some(release) = &opts.debian_release {
        spec.on_debian_release(release)?;
    }
    if let Some(v) = &opts.version {
        spec.version = v
            .parse()
            .with_context(|| format!("--version `{v}` is not a semantic version"))?;
    }
    for overlay in &opts.extra_overlays {
        let real = overlay
            .canonicalize()
            .with_context(|| format!("overlay {} does not exist", overlay.display()))?;
        anyhow::ensure!(real.is_dir(), "overlay {} is not a directory", overlay.display());
        spec.overlays.push(real);
    }
    // Fail on a missing key before any slow step.
    let key = SigningKey::open(&opts.keys)?;
    let tuf_root = crate::tuf_repo::root_path(&opts.keys)?;
    let agent = AgentBinaries::find(&opts.agent_dir)?;
    let mirrors = apt_sources::resolve(
        &opts.apt_dir,
        &spec.release,
        spec.mirror.as_deref(),
        spec.security_mirror.as_deref(),
    )?;
    let cache = Cache::new(&opts.cache)?;
    let base = cache.base(&spec, &mirrors)?;
    // The kernel must meet the platform's kernel-config fragments before
    // anything is committed.
    let report = check_kernel(&spec, &cache, &base)?;
    report.ensure_ok()?;
    tracing::info!(kernel = %base.kernel_release, options = report.checked, notes = report.wanted.len(), "kernel meets the kernel-config fragments");

    ostree::ensure_archive_repo(&opts.repo)?;
    ostree::pull_local(&opts.repo, &cache.base_repo(), &base.commit, None)?;

    let staging = tempfile::Builder::new()
        .prefix("overlay-")
        .tempdir_in(cache.tmp())
        .context("creating the staging folder")?;
    stage_image_files(staging.path(), &spec, &agent, &key, &tuf_root)?;

    let ostree_ref = image_ref(&spec);
    let packages = ostree::string_dict(base.packages.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let subject = format!("{} {} ({}, {})", spec.name, spec.version, spec.arch, spec.variant());
    let commit = ostree::commit(
        &opts.repo,
        &Commit {
            branch: &ostree_ref,
            subject: &subject,
            trees: vec![Tree::Commit(&base.commit), Tree::Dir(staging.path())],
            strings: vec![
                (meta::VERSION, spec.version.to_string()),
                (meta::ARCH, spec.arch.to_string()),
                (meta::VARIANT, spec.variant().to_string()),
                (meta::FLAVOR, spec.flavor.clone()),
                (meta::PLATFORM, spec.platform.to_string()),
                (meta::NAME, spec.name.clone()),
                (meta::BASE_KEY, base.key.clone()),
                (meta::KERNEL, base.kernel_release.clone()),
                (meta::DEBIAN_RELEASE, spec.release.clone()),
            ],
            variants: [
                (meta::PACKAGES, packages),
                (meta::DEBIAN_ARCHIVE, archive::to_gvariant(&base.archive)),
            ]
            .into_iter()
            .chain(
                (!base.repositories.is_empty())
                    .then(|| (meta::APT_REPOSITORIES, archive::to_gvariant(&base.repositories))),
            )
            .collect(),
            sign: Some(&key),
            consume: false,
        },
    )?;
    tracing::info!(%commit, r#ref = %ostree_ref, elapsed = ?started.elapsed(), "composed");
    Ok(Composed {
        commit,
        ostree_ref,
        version: spec.version.to_string(),
        arch: spec.arch,
        variant: spec.variant(),
        repo: opts.repo.clone(),
        base_key: base.key.clone(),
        kernel_release: base.kernel_release.clone(),
        packages: base.packages.len(),
    })
}

/// Check the package layer's kernel (its config, the modules it ships, the
/// initramfs) against the kernel-config fragments of the image's platform.
pub fn check_kernel(spec: &ImageSpec, cache: &Cache, base: &Base) -> Result<kernel_check::Report> {
    let tree = tempfile::Builder::new().prefix("kernel-").tempdir_in(cache.tmp())?;
    let subpath = format!("/usr/lib/modules/{}", base.kernel_release);
    let dest = tree.path().join(subpath.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("has parent"))?;
    ostree::checkout_subpath(&cache.base_repo(), &base.commit, &subpath, &dest)?;
    check_kernel_in(spec, tree.path())
}

/// Check the kernel of the root tree `root` against the kernel-config
/// fragments of the image's platform.
pub fn check_kernel_in(spec: &ImageSpec, root: &Path) -> Result<kernel_check::Report> {
    let fragments = platform_fragments(spec)?;
    Ok(kernel_check::check(
        &fragments,
        spec.arch,
        &KernelFacts::from_tree(root)?,
    ))
}

/// The ostree ref of an image: one per architecture, variant (flavor and
/// platform) and stream.
pub fn image_ref(spec: &ImageSpec) -> String {
    spec.id().ostree_ref()
}

/// The agent's binaries, built for the image's architecture.
struct AgentBinaries {
    agent: PathBuf,
    grub_mkconfig: PathBuf,
}

impl AgentBinaries {
    fn find(dir: &Path) -> Result<AgentBinaries> {
        let b = AgentBinaries {
            agent: dir.join("cairn-agent"),
            grub_mkconfig: dir.join("cairn-grub-mkconfig"),
        };
        for p in [&b.agent, &b.grub_mkconfig] {
            if !p.is_file() {
                bail!(
                    "agent binary {} not found (build the agent for the image's architecture and pass its folder as --agent-dir)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// Write the image's own layer into `staging`: overlays, agent, identity.
fn stage_image_files(
    staging: &Path,
    spec: &ImageSpec,
    agent: &AgentBinaries,
    key: &SigningKey,
    tuf_root: &Path,
) -> Result<()> {
    for overlay in &spec.overlays {
        apply_overlay(overlay, staging)?;
    }
    let install = |src: &Path, rel: &str| -> Result<()> {
        let dst = staging.join(rel);
        fs::create_dir_all(dst.parent().expect("has a parent"))?;
        fs::copy(src, &dst).with_context(|| format!("installing {}", src.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    install(&agent.agent, "usr/bin/cairn-agent")?;
    install(&agent.grub_mkconfig, layout::GRUB_MKCONFIG_PATH.trim_start_matches('/'))?;
    // ostree's default GRUB generator path, so a manual `ostree admin`
    // command that misses OSTREE_GRUB2_EXEC still writes a correct menu.
    fs::create_dir_all(staging.join("usr/sbin"))?;
    symlink("../libexec/cairn/grub-mkconfig", staging.join("usr/sbin/grub-mkconfig"))?;

    // The commit signing key, trusted by ostree for every remote.
    let trusted = staging.join("usr/share/ostree/trusted.gpg.d");
    fs::create_dir_all(&trusted)?;
    fs::write(trusted.join("cairn.gpg"), key.public_key()?)?;

    // The update repository's root of trust, and where updates come from.
    let tuf = staging.join("usr/share/cairn/tuf");
    fs::create_dir_all(&tuf)?;
    fs::copy(tuf_root, tuf.join("root.json")).with_context(|| format!("installing {}", tuf_root.display()))?;
    let agent_d = staging.join("usr/lib/cairn/agent.d");
    fs::create_dir_all(&agent_d)?;
    fs::write(agent_d.join("10-image.toml"), agent_dropin(spec))?;
    // The release's kernel arguments, read back by `image` and by the agent
    // when it stages this release (`root=` names the disk: image time only).
    let kargs_d = staging.join(kargs::KARGS_DIR);
    fs::create_dir_all(&kargs_d)?;
    fs::write(kargs_d.join(kargs::IMAGE_KARGS_FILE), image_kargs(spec))?;

    // GRUB's menu loader on the ESP, next to the EFI binary of the package layer.
    let esp_cfg = staging.join(EFI_TREE_PATH).join("EFI/BOOT/grub.cfg");
    fs::create_dir_all(esp_cfg.parent().expect("has parent"))?;
    fs::write(esp_cfg, GRUB_ESP_CFG)?;

    let os_release = os_release(spec);
    fs::create_dir_all(staging.join("usr/lib"))?;
    fs::write(staging.join("usr/lib/os-release"), os_release)?;
    Ok(())
}

/// The commit's `kargs.d/00-image.toml`: the manifest's kernel arguments
/// (`[kernel] args`, the platform's, the flavor's, the serial console), in
/// the order they go on the kernel command line.
pub fn image_kargs(spec: &ImageSpec) -> String {
    kargs::render(&spec.kernel_args)
}

/// The agent's configuration that comes from the manifest.
pub fn agent_dropin(spec: &ImageSpec) -> String {
    let mut out = format!(
        "# Written by cairn-build from the image manifest. Override in /etc/cairn/agent.d/.\n[update]\nurl = {:?}\nstream = {:?}\n\n[provision]\ndefault-user = {:?}\n",
        spec.update_url, spec.stream, spec.default_user
    );
    for (cloud, ntp) in spec.cloud_ntp.iter().filter(|(_, n)| !n.is_empty()) {
        let list: Vec<String> = ntp.iter().map(|n| format!("{n:?}")).collect();
        out.push_str(&format!("\n[platform.{cloud}]\nntp = [{}]\n", list.join(", ")));
    }
    out
}

pub fn os_release(spec: &ImageSpec) -> String {
    let name = "Cairn";
    format!(
        "NAME=\"{name}\"\nPRETTY_NAME=\"{name} {v} ({f})\"\nID={os_id}\nID_LIKE=debian\nVERSION=\"{v} ({f})\"\nVERSION_ID={v}\nVARIANT_ID={f}\nIMAGE_ID={id}\nIMAGE_VERSION={v}\nVERSION_CODENAME={rel}\nSYSEXT_LEVEL={level}\nDEFAULT_HOSTNAME={id}\n",
        v = spec.version,
        f = spec.variant(),
        id = spec.name,
        rel = spec.release,
        level = crate::sysext::sysext_level(&spec.release),
        os_id = crate::sysext::OS_ID,
    )
}

/// Copy an overlay tree into the staging tree. Overlays hold `etc/` (which
/// ostree keeps as `/usr/etc`, merged into each host's `/etc`) and `usr/`;
/// anything else would be state or would be lost, so it is refused.
pub fn apply_overlay(overlay: &Path, staging: &Path) -> Result<()> {
    for e in fs::read_dir(overlay).with_context(|| format!("reading overlay {}", overlay.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let target = match name.as_str() {
            "etc" => staging.join("usr/etc"),
            "usr" => staging.join("usr"),
            ".gitkeep" => continue,
            _ => bail!(
                "overlay {} has top-level `{name}`: only `etc/` and `usr/` are part of the OS (state under /var is made by tmpfiles.d)",
                overlay.display()
            ),
        };
        copy_tree(&e.path(), &target)?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src)?;
        if dst.symlink_metadata().is_ok() {
            fs::remove_file(dst)?;
        }
        symlink(&target, dst).with_context(|| format!("copying link {}", src.display()))?;
    } else if meta.is_dir() {
        fs::create_dir_all(dst)?;
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))?;
        for e in fs::read_dir(src)? {
            let e = e?;
            if e.file_name() == ".gitkeep" {
                continue;
            }
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        if dst.symlink_metadata().is_ok() {
            fs::remove_file(dst)?;
        }
        fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        // Git keeps only the executable bit: normalise to 0644 / 0755.
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    } else {
        bail!("{} is neither a file, a folder nor a symlink", src.display());
    }
    Ok(())
}

/// The build cache: downloaded packages and package layers, keyed by content.
/// One build uses it at a time (it holds the cache's lock).
pub struct Cache {
    root: PathBuf,
    _lock: scratch::CacheLock,
}

impl Cache {
    /// Open the cache at `root` (waiting for a build that uses it) and
    /// clear what interrupted builds left in its `tmp/`, mounts included.
    pub fn new(root: &Path) -> Result<Cache> {
        for sub in ["debs", "bases", "tmp"] {
            fs::create_dir_all(root.join(sub)).with_context(|| format!("creating cache {}", root.display()))?;
        }
        let c = Cache {
            root: root.to_owned(),
            _lock: scratch::lock(root)?,
        };
        scratch::clear(&c.tmp())?;
        ostree::ensure_archive_repo(&c.base_repo())?;
        Ok(c)
    }

    pub fn base_repo(&self) -> PathBuf {
        self.root.join("base-repo")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn debs(&self, arch: Arch) -> PathBuf {
        self.root.join("debs").join(arch.debian())
    }

    fn record(&self, key: &str) -> PathBuf {
        self.root.join("bases").join(format!("{key}.json"))
    }

    /// The package layer for `spec` from the Debian archive as it is now,
    /// built unless cached.
    pub fn base(&self, spec: &ImageSpec, mirrors: &Mirrors) -> Result<Base> {
        apt_repos::check_pins(&spec.repositories, &[&mirrors.main, &mirrors.security])?;
        let (fetched, repositories) = {
            let dir = scratch::WorkDir::new(&self.tmp(), "archive-")?;
            // The manifest's own repositories first: a bad signature is
            // refused before anything else is fetched.
            let repositories = apt_repos::fetch_verified(&spec.repositories, dir.path())?;
            (archive::fetch(&spec.suites, mirrors, dir.path())?, repositories)
        };
        let modules = module_allow_list(spec)?;
        let initramfs = initramfs_modules(spec)?;
        let recipe = BaseRecipe::new(spec, mirrors, &fetched, &repositories, &initramfs, modules.as_ref());
        let key = recipe.key();
        let record = self.record(&key);
        if let Ok(text) = fs::read_to_string(&record) {
            let base: Base = serde_json::from_str(&text).with_context(|| format!("reading {}", record.display()))?;
            if ostree::rev_parse(&self.base_repo(), &base.commit)?.is_some() {
                tracing::info!(%key, commit = %base.commit, "package layer cached");
                return Ok(base);
            }
        }
        tracing::info!(%key, packages = recipe.packages.len(), "building package layer");
        let base = self.build_base(spec, mirrors, recipe, modules.as_ref())?;
        // Recorded only now that it is committed, under the key of the
        // archive state it was really built from.
        let record = self.record(&base.key);
        let tmp = record.with_extension("json.partial");
        fs::write(&tmp, serde_json::to_vec_pretty(&base)?)?;
        fs::rename(&tmp, &record)?;
        Ok(base)
    }

    /// Build the package layer of `recipe`. Its key comes from the
    /// `InRelease` files apt used: if the archive changed since `recipe`
    /// was made, the layer is keyed by the newer state it was built from.
    fn build_base(
        &self,
        spec: &ImageSpec,
        mirrors: &Mirrors,
        mut recipe: BaseRecipe,
        modules: Option<&AllowList>,
    ) -> Result<Base> {
        let started = Instant::now();
        // Removed whole, mmdebstrap's mounts first, however this ends; the
        // layer is recorded only once committed.
        let work = scratch::WorkDir::new(&self.tmp(), "base-")?;
        let root = work.path().join("root");
        let grub_debs = work.path().join("grub-deb");
        fs::create_dir_all(&grub_debs)?;
        let lists = work.path().join("apt-lists");
        fs::create_dir_all(&lists)?;
        let debs = self.debs(spec.arch);
        fs::create_dir_all(&debs)?;

        let prepare_root = work.path().join("prepare-root.conf");
        fs::write(&prepare_root, &recipe.prepare_root_conf)?;
        let prune = modules.map(|allow| PruneHook::write(work.path(), allow)).transpose()?;
        let repositories = RepositoryFiles::write(&spec.repositories, work.path())?;
        let installed = run_mmdebstrap(
            spec,
            &recipe,
            &LayerWork {
                root: &root,
                debs: &debs,
                grub_debs: &grub_debs,
                lists: &lists,
                prepare_root: &prepare_root,
                prune: prune.as_ref(),
                repositories: &repositories,
            },
        );
        if let Some(prune) = &prune {
            prune.outcome(installed.is_ok())?;
        }
        installed?;
        tracing::info!(elapsed = ?started.elapsed(), "packages installed");
        let used = archive::from_apt_lists(&lists, &spec.suites, mirrors)?;
        let used_repositories = apt_repos::from_apt_lists(&lists, &spec.repositories)?;
        // Keyed by what apt used: if the archive moved since the recipe was
        // made, the layer is the newer state's.
        let fetched = std::mem::replace(&mut recipe.archive, archive::hashes(&used));
        let fetched_repositories =
            std::mem::replace(&mut recipe.repository_archive, archive::hashes(&used_repositories));
        let key = recipe.key();
        let mut changed = archive::changed(&fetched, &recipe.archive);
        changed.extend(archive::changed(&fetched_repositories, &recipe.repository_archive));
        if !changed.is_empty() {
            tracing::warn!(?changed, %key, "the archive changed while the package layer was built: keyed by the state apt used");
        }

        let mut packages = installed_packages(&root)?;
        ensure_initramfs_holds(&root, PREPARE_ROOT_CONF_PATH)?;
        // GRUB is not installed, but its EFI image ships: its packages'
        // versions are recorded with the installed ones.
        packages.extend(build_grub_image(spec.arch, &grub_debs, &root)?);
        let converted = ostree_layout::convert(&root)?;
        let commit = ostree::commit(
            &self.base_repo(),
            &Commit {
                branch: &format!("base/{}/{key}", spec.arch),
                subject: &format!("Cairn package layer {key}"),
                trees: vec![Tree::Dir(&root)],
                strings: vec![(meta::BASE_KEY, key.clone())],
                variants: vec![(meta::DEBIAN_ARCHIVE, archive::to_gvariant(&used))],
                sign: None,
                consume: true,
            },
        )?;
        tracing::info!(%commit, elapsed = ?started.elapsed(), "package layer committed");
        Ok(Base {
            key,
            commit,
            kernel_release: converted.kernel_release,
            packages,
            archive: used,
            repositories: used_repositories,
        })
    }
}

/// The kernel-config fragments of the image's platform, read.
fn platform_fragments(spec: &ImageSpec) -> Result<Vec<Fragment>> {
    spec.kernel_config.iter().map(|p| Fragment::load(p)).collect()
}

/// The modules the image's initramfs holds: see
/// [`kernel_check::initramfs_modules`].
pub fn initramfs_modules(spec: &ImageSpec) -> Result<Vec<String>> {
    let fragments = platform_fragments(spec)?;
    Ok(kernel_check::initramfs_modules(
        &fragments,
        spec.arch,
        &spec.initramfs_drivers,
    ))
}

/// The modules a platform with `modules = "fragments"` keeps of the pruned
/// folders: what its kernel-config fragments and initramfs drivers name
/// ([`module_prune`]); `None` when every module ships.
pub fn module_allow_list(spec: &ImageSpec) -> Result<Option<AllowList>> {
    if spec.modules == ModuleSelection::All {
        return Ok(None);
    }
    let fragments = platform_fragments(spec)?;
    let drivers_source = format!(
        "{} ([platforms.{}] initramfs-drivers)",
        spec.manifest_path.display(),
        spec.platform
    );
    Ok(Some(AllowList::derive(
        &fragments,
        spec.arch,
        &spec.initramfs_drivers,
        &drivers_source,
    )))
}

/// `cairn-build prune-modules`, run as a customize hook of mmdebstrap
/// (the Rust code has to run between the kernel's installation and dracut,
/// in mmdebstrap's chroot with its mounts, which the builder never makes):
/// this very executable, the allow-list it reads and the report it writes.
struct PruneHook {
    exe: PathBuf,
    allow_list: PathBuf,
    report: PathBuf,
}

impl PruneHook {
    /// Writes `allow` into the work folder `work`.
    fn write(work: &Path, allow: &AllowList) -> Result<PruneHook> {
        let exe = std::env::current_exe().context("finding the cairn-build executable")?;
        if exe.file_name().is_none_or(|n| n != "cairn-build") {
            bail!(
                "pruning kernel modules runs `cairn-build prune-modules` inside mmdebstrap, but this program is {}: build with cairn-build",
                exe.display()
            );
        }
        let hook = PruneHook {
            exe,
            allow_list: work.join("modules-allow-list.json"),
            report: work.join("modules-pruned.json"),
        };
        fs::write(&hook.allow_list, serde_json::to_vec_pretty(allow)?)?;
        Ok(hook)
    }

    /// The customize hook.
    fn command(&self) -> String {
        let q = |p: &Path| shell_quote(&p.display().to_string());
        format!(
            "{} prune-modules \"$1\" --allow-list {} --report {}",
            q(&self.exe),
            q(&self.allow_list),
            q(&self.report)
        )
    }

    /// What the hook did, logged; its error in full if it refused (so a
    /// failed mmdebstrap says why, not only the tail of its output).
    fn outcome(&self, installed: bool) -> Result<()> {
        match module_prune::Report::read(&self.report)? {
            Some(module_prune::Report::Refused(why)) => {
                Err(anyhow!(why).context("pruning the kernel modules to the platform's allow-list"))
            }
            Some(module_prune::Report::Pruned(kernels)) => {
                for k in kernels {
                    tracing::info!(
                        kernel = %k.kernel_release,
                        removed = k.removed,
                        removed_mib = k.removed_bytes / (1 << 20),
                        removed_bytes = k.removed_bytes,
                        kept_drivers = k.kept,
                        absent_wanted = ?k.absent_wanted,
                        "kernel modules pruned to the allow-list"
                    );
                }
                Ok(())
            }
            // mmdebstrap failed before the hook ran: its own error says why.
            None if !installed => Ok(()),
            None => bail!("the module-pruning hook left no report at {}", self.report.display()),
        }
    }
}

/// Fail unless every initramfs of the tree at `root` holds `path`.
fn ensure_initramfs_holds(root: &Path, path: &str) -> Result<()> {
    for entry in fs::read_dir(root.join("usr/lib/modules"))? {
        let image = entry?.path().join("initramfs.img");
        let files = crate::initramfs::list_files_in(&image)?;
        if !files
            .iter()
            .any(|f| f.trim_start_matches("./").trim_start_matches('/') == path)
        {
            bail!(
                "{} lacks /{path}: dracut did not install it, so the deployment's root mode would be ostree's default",
                image.display()
            );
        }
    }
    Ok(())
}

/// Decompress the kernel's modules (Debian 13 ships them as `.ko.xz`; on
/// the build host) and rebuild the module index, before dracut copies them:
/// inside the initramfs, which is compressed as a whole, a module is read
/// as is instead of being unpacked at load time (xz is slow to unpack, the
/// more so in an emulated guest).
const DECOMPRESS_MODULES: &str = "find \"$1\"/usr/lib/modules -name '*.ko.xz' -exec xz -d -T0 {} + && for k in \"$1\"/usr/lib/modules/*; do chroot \"$1\" depmod -a \"${k##*/}\"; done";

/// Compress every kernel module with zstd (on the build host) and rebuild
/// the module index in the tree.
const COMPRESS_MODULES: &str = "find \"$1\"/usr/lib/modules -name '*.ko' -exec zstd -q --rm -15 -T0 {} + && for k in \"$1\"/usr/lib/modules/*; do chroot \"$1\" depmod -a \"${k##*/}\"; done";

/// What one package-layer build of mmdebstrap works with.
struct LayerWork<'a> {
    /// The tree mmdebstrap makes.
    root: &'a Path,
    /// Downloaded packages, kept between builds.
    debs: &'a Path,
    /// GRUB's packages for the EFI image (downloaded, never installed).
    grub_debs: &'a Path,
    /// Where the `InRelease` files apt used are copied.
    lists: &'a Path,
    /// Cairn's `prepare-root.conf`, uploaded into the tree.
    prepare_root: &'a Path,
    /// The module-pruning hook, for a platform that prunes.
    prune: Option<&'a PruneHook>,
    /// The manifest's own repositories' sources and pins.
    repositories: &'a RepositoryFiles,
}

/// What apt needs of the manifest's own repositories in one build: `deb`
/// lines trusting each one's own key, and the pins of those that set a
/// priority (files uploaded into the tree's `/etc/apt/preferences.d/`
/// before apt reads its lists).
struct RepositoryFiles {
    deb_lines: Vec<String>,
    /// (file on the build host, name in `preferences.d`).
    pins: Vec<(PathBuf, String)>,
}

impl RepositoryFiles {
    fn write(repositories: &[apt_repos::Repository], work: &Path) -> Result<RepositoryFiles> {
        let dir = work.join("repositories");
        fs::create_dir_all(&dir)?;
        let mut files = RepositoryFiles {
            deb_lines: Vec::new(),
            pins: Vec::new(),
        };
        for repo in repositories {
            let keyring = apt_repos::write_keyring(repo, &dir)?;
            files.deb_lines.extend(repo.deb_lines(&keyring));
            if let Some(text) = repo.preferences() {
                let name = format!("cairn-repository-{}.pref", repo.name);
                let path = dir.join(&name);
                fs::write(&path, text)?;
                files.pins.push((path, name));
            }
        }
        Ok(files)
    }
}

fn run_mmdebstrap(spec: &ImageSpec, recipe: &BaseRecipe, work: &LayerWork) -> Result<()> {
    let LayerWork {
        root,
        debs,
        grub_debs,
        lists,
        prepare_root,
        prune,
        repositories,
    } = *work;
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let dracut = format!(
        "chroot \"$1\" sh -c 'for k in /usr/lib/modules/*; do kver=${{k##*/}}; dracut {} \"$k/initramfs.img\" \"$kver\"; done'",
        recipe.dracut_args
    );
    let mut cmd = Cmd::new("mmdebstrap")
        .args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--arch={}", spec.arch.debian()))
        // ostree needs merged /usr; this hook installs usr-is-merged in the
        // essential phase, so nothing later pulls in usrmerge (and perl).
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-include=/usr/share/locale/locale.alias")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .args(
            recipe
                .path_excludes
                .iter()
                .map(|g| format!("--dpkgopt=path-exclude={g}")),
        )
        .arg(format!("--include={}", recipe.packages.join(",")))
        // Downloaded packages persist in the cache between builds.
        .args(["--skip=download/empty", "--skip=essential/unlink"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(debs)))
        // The manifest's repositories' pins, before apt reads its lists.
        .args(repositories.pins.iter().map(|(file, name)| {
            format!("--setup-hook=upload {} /etc/apt/preferences.d/{name}", q(file))
        }))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", q(debs)))
        // GRUB's EFI modules and tools, fetched with the image's own apt
        // state (outside the chroot, which has no resolver), never installed.
        // mmdebstrap unsets APT_CONFIG in hooks: without it apt-get would
        // use the build host's sources and architecture.
        .arg(format!(
            "--customize-hook=cd {} && APT_CONFIG=\"$MMDEBSTRAP_APT_CONFIG\" apt-get download {} {}",
            q(grub_debs),
            spec.arch.grub_package(),
            GRUB_TOOL_PACKAGES.join(" ")
        ))
        // Into the initramfs too (DRACUT_ARGS), where ostree-prepare-root reads it.
        .arg(format!(
            "--customize-hook=upload {} /{PREPARE_ROOT_CONF_PATH}",
            q(prepare_root)
        ))
        .arg(format!("--customize-hook={DECOMPRESS_MODULES}"))
        // The platform's hardware drivers pruned to its allow-list and
        // re-indexed, before dracut takes drivers from the tree.
        .args(prune.map(|p| format!("--customize-hook={}", p.command())))
        // One initramfs, made here (Debian's kernel hook is off: INITRD=No),
        // from uncompressed modules so the whole archive compresses as one.
        .arg(format!("--customize-hook={dracut}"))
        .arg(format!("--customize-hook={COMPRESS_INITRAMFS}"))
        // Then the tree's modules (kmod reads .ko.zst, and unpacks zstd
        // several times faster than xz): a third of their size.
        .arg(format!("--customize-hook={COMPRESS_MODULES}"))
        // The release files apt used: the archive state the layer is keyed
        // by (a repository without InRelease has Release and Release.gpg).
        .arg(format!(
            "--customize-hook=for f in \"$1\"/var/lib/apt/lists/*_InRelease \"$1\"/var/lib/apt/lists/*_Release; do if [ -e \"$f\" ]; then cp \"$f\" {}/ || exit 1; fi; done",
            q(lists)
        ))
        .arg("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/*")
        // The manifest's repositories leave no trace in the tree: their
        // sources name a keyring in this build's work folder, their pins
        // the manifest's path (a layer without any keeps its hooks, and so
        // its content, as before).
        .args((!repositories.deb_lines.is_empty()).then(|| {
            "--customize-hook=for f in \"$1\"/etc/apt/sources.list \"$1\"/etc/apt/sources.list.d/*.list; do if [ -e \"$f\" ]; then sed -i '/cairn-repository-/d' \"$f\" || exit 1; fi; done; rm -f \"$1\"/etc/apt/preferences.d/cairn-repository-*".to_owned()
        }))
        .env("INITRD", "No")
        // Reproducible trees (mmdebstrap, dpkg, shadow's dates, dracut's
        // cpio): rebuilding the package layer with one package more changes
        // that package's files, not every file, so updates stay small.
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .arg(&spec.release)
        .arg(root);
    for line in recipe.sources.iter().chain(&repositories.deb_lines) {
        cmd = cmd.arg(line);
    }
    cmd.progress().run().map_err(|e| explain_apt_failure(e, spec))
}

/// Map apt's "Unable to locate package" back to where the manifest names it.
fn explain_apt_failure(e: anyhow::Error, spec: &ImageSpec) -> anyhow::Error {
    let text = format!("{e:#}");
    for p in &spec.packages {
        let patterns = [
            format!("Unable to locate package {}", p.name),
            format!("Package '{}' has no installation candidate", p.name),
            format!("Couldn't find any package by glob '{}'", p.name),
        ];
        if patterns.iter().any(|pat| text.contains(pat)) {
            let repositories = if spec.repositories.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = spec
                    .repositories
                    .iter()
                    .map(|r| format!("`{}` ({})", r.name, r.url))
                    .collect();
                format!(" nor in the manifest's repositories {}", names.join(", "))
            };
            return anyhow!(
                "{}:{}:{}: package `{}` is not in the configured Debian suites ({}){repositories} for {}",
                spec.manifest_path.display(),
                p.line,
                p.column,
                p.name,
                spec.suites.join(", "),
                spec.arch.debian()
            )
            .context(e);
        }
    }
    e.context("installing the manifest's packages with mmdebstrap")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Package → version of the tree at `root`, from its dpkg database.
pub fn installed_packages(root: &Path) -> Result<BTreeMap<String, String>> {
    let out = Cmd::new("dpkg-query")
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args(["-W", "-f=${Package}\\t${Version}\\n"])
        .output()
        .context("listing installed packages")?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (p.to_owned(), v.to_owned()))
        .collect())
}

/// Packages GRUB's EFI image is made with besides the modules: the
/// release's own `grub-mkimage` and the one library of it the tree lacks.
/// Downloaded and unpacked for the build, never installed.
const GRUB_TOOL_PACKAGES: &[&str] = &["grub-common", "libdevmapper1.02.1"];

/// Build GRUB's EFI binary into the tree at `root`
/// (`<EFI_TREE_PATH>/<removable-media path>`) with the release's own
/// `grub-mkimage` and modules, unpacked from the packages in `deb_dir` into
/// the tree's `/tmp` and run there (through qemu-user for a foreign arch):
/// the build host's GRUB tools may be older than the modules.
fn build_grub_image(arch: Arch, deb_dir: &Path, root: &Path) -> Result<BTreeMap<String, String>> {
    let debs: Vec<PathBuf> = fs::read_dir(deb_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let mut versions = BTreeMap::new();
    for deb in &debs {
        let fields = Cmd::new("dpkg-deb")
            .arg("--show")
            .arg("--showformat=${Package}\t${Version}\t${Architecture}")
            .arg(deb)
            .output()?
            .stdout;
        let [package, version, deb_arch] = fields.trim().splitn(3, '\t').collect::<Vec<_>>()[..] else {
            bail!("{}: dpkg-deb printed `{fields}`", deb.display());
        };
        if deb_arch != arch.debian() && deb_arch != "all" {
            bail!(
                "{} is built for {deb_arch}, not {}: apt-get download did not use the image's apt configuration",
                deb.display(),
                arch.debian()
            );
        }
        versions.insert(package.to_owned(), version.to_owned());
    }
    for package in std::iter::once(arch.grub_package()).chain(GRUB_TOOL_PACKAGES.iter().copied()) {
        if !versions.contains_key(package) {
            bail!("{package} was not downloaded into {}", deb_dir.display());
        }
    }
    let inside = Path::new("/tmp/cairn-grub");
    let tools = root.join(inside.strip_prefix("/").expect("absolute"));
    fs::create_dir_all(&tools)?;
    for deb in &debs {
        Cmd::new("dpkg-deb").arg("-x").arg(deb).arg(&tools).run()?;
    }
    let libs = format!(
        "LD_LIBRARY_PATH={}:{}",
        inside.join("usr/lib").join(arch.multiarch()).display(),
        inside.join("lib").join(arch.multiarch()).display()
    );
    Cmd::new("chroot")
        .arg(root)
        .arg("env")
        .arg(libs)
        .arg(inside.join("usr/bin/grub-mkimage"))
        .arg("-O")
        .arg(arch.grub_target())
        .arg("-d")
        .arg(inside.join("usr/lib/grub").join(arch.grub_target()))
        .arg("-o")
        .arg(inside.join("grub.efi"))
        .args(["-p", "/EFI/BOOT"])
        .args(GRUB_MODULES)
        .run()
        .context("building the GRUB EFI image with the release's grub-mkimage")?;
    let out = root.join(EFI_TREE_PATH).join(arch.efi_boot_path());
    fs::create_dir_all(out.parent().expect("has parent"))?;
    fs::copy(tools.join("grub.efi"), &out)?;
    fs::remove_dir_all(&tools)?;
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn overlay_maps_etc_and_refuses_state() {
        let d = tempfile::tempdir().unwrap();
        let overlay = d.path().join("o");
        fs::create_dir_all(overlay.join("etc/systemd")).unwrap();
        fs::create_dir_all(overlay.join("usr/lib/systemd/system")).unwrap();
        fs::write(overlay.join("etc/hostname"), "cairn\n").unwrap();
        fs::write(overlay.join("usr/lib/systemd/system/x.service"), "[Unit]\n").unwrap();
        symlink("/dev/null", overlay.join("etc/systemd/masked")).unwrap();
        let staging = d.path().join("s");
        fs::create_dir_all(&staging).unwrap();
        apply_overlay(&overlay, &staging).unwrap();
        assert_eq!(fs::read_to_string(staging.join("usr/etc/hostname")).unwrap(), "cairn\n");
        assert!(staging.join("usr/lib/systemd/system/x.service").is_file());
        assert_eq!(
            fs::read_link(staging.join("usr/etc/systemd/masked")).unwrap(),
            Path::new("/dev/null")
        );

        fs::create_dir_all(overlay.join("var/lib")).unwrap();
        let e = apply_overlay(&overlay, &staging).unwrap_err().to_string();
        assert!(e.contains("top-level `var`"), "{e}");
    }

    #[test]
    fn image_kargs_file_holds_the_manifests_arguments_in_order_without_root() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rootfs/image.toml");
        let spec = Manifest::load(&path)
            .unwrap()
            .resolve("dev", Arch::Aarch64, Platform::Kunpeng920)
            .unwrap();
        let file = image_kargs(&spec);
        assert!(file.starts_with("kargs = [\"rw\", "), "{file}");
        let read = kargs::parse(Path::new("00-image.toml"), &file).unwrap();
        assert_eq!(read, spec.kernel_args);
        let acpi = read.iter().position(|k| k == "acpi=force").unwrap();
        let panic = read.iter().position(|k| k == "panic=10").unwrap();
        assert!(panic < acpi, "[kernel] args before the platform's: {read:?}");
        assert_eq!(read.last().unwrap(), "console=ttyAMA0,115200");
        assert!(!read.iter().any(|k| k.starts_with("root=")), "{read:?}");
    }

    /// The smallest manifest a package layer's key is made of.
    const KEY_TEST_MANIFEST: &str = r#"
[image]
name = "cairn"
version = "1.0.0"
stream = "stable"
[debian]
release = "bookworm"
suites = ["bookworm"]
components = ["main"]
[packages]
base = ["systemd"]
[kernel]
kind = "cloud"
[disk]
esp-size = "64MiB"
root-size = "1GiB"
[update]
url = "http://127.0.0.1/repo"
[flavors.dev]
package-sets = ["base"]
"#;

    #[test]
    fn a_repository_is_keyed_by_what_it_serves_and_how_it_is_trusted_not_by_where() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("image.toml");
        let key = include_str!("../../qemu-tests/fixtures/apt-repo/repository-key.asc");
        fs::write(d.path().join("repo.asc"), key).unwrap();
        fs::write(
            d.path().join("other.asc"),
            include_str!("../../qemu-tests/fixtures/apt-repo/other-key.asc"),
        )
        .unwrap();
        let text = &format!(
            r#"{KEY_TEST_MANIFEST}repositories = ["own"]
[[repositories]]
name = "own"
url = "http://127.0.0.1:8080/repo"
suites = ["stable"]
components = ["main"]
key = "repo.asc"
"#
        );
        let resolve = |t: &str| {
            Manifest::parse(&path, t)
                .unwrap()
                .resolve("dev", Arch::X86_64, Platform::Generic)
                .unwrap()
        };
        let m = Mirrors {
            main: "http://a.example/debian".into(),
            security: "http://s.example/ds".into(),
        };
        let debian = ArchiveState::new();
        let served = |sha: &str| -> ArchiveState {
            [(
                "own stable".to_owned(),
                archive::SuiteRelease {
                    inrelease_sha256: sha.into(),
                    date: String::new(),
                },
            )]
            .into()
        };
        let key_of = |t: &str, state: &ArchiveState| BaseRecipe::new(&resolve(t), &m, &debian, state, &[], None).key();
        let k = key_of(text, &served("aa"));
        assert_eq!(
            key_of(&text.replace("127.0.0.1:8080", "mirror.example"), &served("aa")),
            k,
            "another URL serving the same release is the same layer"
        );
        assert_ne!(key_of(text, &served("bb")), k, "what it serves changed");
        assert_ne!(
            key_of(&text.replace("repo.asc", "other.asc"), &served("aa")),
            k,
            "another key"
        );
        assert_ne!(key_of(&format!("{text}priority = 990\n"), &served("aa")), k, "a pin");
        let none = &text
            .split("[[repositories]]")
            .next()
            .unwrap()
            .replace("repositories = [\"own\"]\n", "");
        let json = serde_json::to_string(&BaseRecipe::new(&resolve(none), &m, &debian, &debian, &[], None)).unwrap();
        assert!(
            !json.contains("repositor"),
            "a layer without repositories keeps its old key: {json}"
        );
    }

    #[test]
    fn recipe_key_changes_with_packages_mirror_and_archive_state_only() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("image.toml");
        let text = KEY_TEST_MANIFEST;
        let spec = Manifest::parse(&path, text)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        let m = Mirrors {
            main: "http://a.example/debian".into(),
            security: "http://s.example/ds".into(),
        };
        let state = |sha: &str| -> ArchiveState {
            [(
                "bookworm".to_owned(),
                archive::SuiteRelease {
                    inrelease_sha256: sha.into(),
                    date: "2026-07-11T10:16:37Z".into(),
                },
            )]
            .into()
        };
        let a = state("aa");
        // A layer without repositories of its own: only Debian's archive.
        let no_repositories = ArchiveState::new();
        let key = |spec: &ImageSpec, m: &Mirrors, archive: &ArchiveState, modules: Option<&AllowList>| {
            BaseRecipe::new(spec, m, archive, &no_repositories, &[], modules).key()
        };
        let k1 = key(&spec, &m, &a, None);
        let v2 = Manifest::parse(&path, &text.replace("1.0.0", "1.0.1"))
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_eq!(
            key(&v2, &m, &a, None),
            k1,
            "the version is not part of the package layer"
        );
        let p2 = Manifest::parse(&path, &text.replace("[\"systemd\"]", "[\"systemd\", \"runc\"]"))
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_ne!(key(&p2, &m, &a, None), k1);
        let m2 = Mirrors {
            main: "http://b.example/debian".into(),
            ..m.clone()
        };
        assert_ne!(key(&spec, &m2, &a, None), k1);
        assert_ne!(
            key(&spec, &m, &state("bb"), None),
            k1,
            "a new InRelease (a security update) is a new layer"
        );
        let mut later = a.clone();
        later.get_mut("bookworm").unwrap().date = "2026-07-12T00:00:00Z".into();
        assert_eq!(
            key(&spec, &m, &later, None),
            k1,
            "the key is what the archive served, not a time"
        );
        assert_eq!(k1.len(), 32);

        // Pruned kernel modules: the allow-list's names and needs are part
        // of the key, where the fragments name them is not; a layer that
        // keeps every module has the key it had before pruning existed.
        let json = serde_json::to_string(&BaseRecipe::new(&spec, &m, &a, &no_repositories, &[], None)).unwrap();
        assert!(!json.contains("kernel_modules"), "{json}");
        let fragment = |text: &str| kernel_check::Fragment::parse(text, "kc/x.config").unwrap();
        let allow = |text: &str, drivers: &[&str]| {
            let drivers: Vec<String> = drivers.iter().map(|d| d.to_string()).collect();
            AllowList::derive(&[fragment(text)], Arch::X86_64, &drivers, "image.toml")
        };
        let veth = "# why\n# cairn: module=veth\nCONFIG_VETH=m\n";
        let pruned = key(&spec, &m, &a, Some(&allow(veth, &["nvme"])));
        assert_ne!(pruned, k1, "pruning makes another layer");
        let moved = format!("# a longer\n# comment\n{veth}");
        assert_eq!(key(&spec, &m, &a, Some(&allow(&moved, &["nvme"]))), pruned);
        assert_ne!(
            key(&spec, &m, &a, Some(&allow(veth, &["nvme", "ahci"]))),
            pruned,
            "another module kept is another layer"
        );
        let wanted = "# why\n# cairn-wanted: CONFIG_VETH=m module=veth\n";
        assert_ne!(
            key(&spec, &m, &a, Some(&allow(wanted, &["nvme"]))),
            pruned,
            "a module's need is part of the key"
        );
    }

    #[test]
    fn only_platforms_that_say_so_prune_modules_and_theirs_come_from_the_fragments() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rootfs/image.toml");
        let manifest = Manifest::load(&path).unwrap();
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let generic = manifest.resolve("dev", arch, Platform::Generic).unwrap();
            assert_eq!(
                module_allow_list(&generic).unwrap(),
                None,
                "{arch}: the cloud kernel ships whole"
            );
        }
        for platform in [Platform::Kunpeng920, Platform::Phytium] {
            let spec = manifest.resolve("dev", Arch::Aarch64, platform).unwrap();
            let allow = module_allow_list(&spec).unwrap().expect("the server platforms prune");
            let required: Vec<&str> = allow
                .entries
                .iter()
                .filter(|e| e.need == module_prune::Need::Required)
                .map(|e| e.module.as_str())
                .collect();
            // Boot disks, the platform's initramfs drivers, the virtual
            // network devices CNI plugins make, the watchdog.
            for module in ["virtio_blk", "nvme", "ahci", "megaraid_sas", "ext4", "softdog"]
                .into_iter()
                .chain([
                    "veth",
                    "vxlan",
                    "geneve",
                    "macvlan",
                    "ipvlan",
                    "wireguard",
                    "tun",
                    "dummy",
                    "bonding",
                ])
            {
                assert!(
                    required.contains(&module),
                    "{platform}: {module} not kept: {required:?}"
                );
            }
            assert!(
                !required.contains(&"i6300esb"),
                "{platform}: an x86_64-only module on aarch64"
            );
            let drivers = allow
                .entries
                .iter()
                .find(|e| e.module == "megaraid_sas" && e.source.contains("initramfs-drivers"))
                .unwrap();
            assert!(
                drivers
                    .source
                    .ends_with(&format!("image.toml ([platforms.{platform}] initramfs-drivers)")),
                "{}",
                drivers.source
            );
        }
        let kunpeng = manifest.resolve("dev", Arch::Aarch64, Platform::Kunpeng920).unwrap();
        let allow = module_allow_list(&kunpeng).unwrap().unwrap();
        let sec2 = allow.entries.iter().find(|e| e.module == "hisi_sec2").unwrap();
        assert_eq!(sec2.need, module_prune::Need::Wanted);
        assert!(sec2.source.contains("kunpeng920.config:"), "{}", sec2.source);
    }
}
