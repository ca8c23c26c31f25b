//! The image manifest (`rootfs/image.toml`): parsing and validation.
//!
//! Parsing is pure (`&str` in, [`Manifest`] out) so every error path is unit
//! tested. Every error names the file, line and column it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use cairn_common::fsutil::line_col;

pub use crate::apt_repos::Repository;
use cairn_common::identity::{ImageId, Variant};
use cairn_common::layout::{Arch, Platform};
use serde::Deserialize;
use toml::Spanned;

/// A manifest problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ManifestError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    image: RawImage,
    debian: RawDebian,
    packages: BTreeMap<String, Vec<Spanned<String>>>,
    kernel: RawKernel,
    disk: RawDisk,
    update: RawUpdate,
    flavors: BTreeMap<String, Spanned<RawFlavor>>,
    /// Platforms by name; a manifest without any builds only `generic`.
    #[serde(default)]
    platforms: BTreeMap<String, Spanned<RawPlatform>>,
    /// Facts of each cloud an image may boot on, by the agent's platform
    /// name (`ec2`, `gce`, …).
    #[serde(default)]
    clouds: BTreeMap<String, Spanned<RawCloud>>,
    /// The user's own apt repositories, besides Debian's suites.
    #[serde(default)]
    repositories: Vec<Spanned<RawRepository>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRepository {
    name: Spanned<String>,
    url: Spanned<String>,
    /// Distributions, or a flat repository's folder (`/`).
    suites: Vec<Spanned<String>>,
    #[serde(default)]
    components: Vec<Spanned<String>>,
    /// The repository's signing key, relative to the manifest.
    key: Spanned<String>,
    /// apt pin priority of the repository's packages.
    priority: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCloud {
    /// The cloud's own time servers.
    #[serde(default)]
    ntp: Vec<Spanned<String>>,
    /// Kernel arguments of an image made for this cloud (`image --cloud`).
    #[serde(default)]
    kernel_args: Vec<Spanned<String>>,
    /// The disk formats its image import takes: what `image --cloud`
    /// writes when no `--format` is given.
    #[serde(default)]
    formats: Vec<crate::disk_formats::DiskFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    name: Spanned<String>,
    version: Spanned<String>,
    stream: Spanned<String>,
    #[serde(default)]
    overlays: Vec<Spanned<String>>,
    /// The user provisioning gives SSH keys to (default `cairn`).
    default_user: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDebian {
    release: Spanned<String>,
    mirror: Option<Spanned<String>>,
    security_mirror: Option<Spanned<String>>,
    suites: Vec<Spanned<String>>,
    components: Vec<Spanned<String>>,
    #[serde(default)]
    path_excludes: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    /// `cloud` or `generic`. Read under its old name `flavour` too: a
    /// flavor is an image's (`[flavors.*]`), not the kernel's.
    #[serde(alias = "flavour")]
    kind: Spanned<String>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    /// kernel-config fragments every platform's kernel must satisfy.
    #[serde(default)]
    config: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDisk {
    esp_size: Spanned<String>,
    root_size: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpdate {
    url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFlavor {
    package_sets: Vec<Spanned<String>>,
    /// `[[repositories]]` this flavor installs from, by name.
    #[serde(default)]
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    overlays: Vec<Spanned<String>>,
    #[serde(default)]
    kernel_args: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlatform {
    /// Architectures the platform exists on.
    arch: Vec<Spanned<String>>,
    /// Replaces `[kernel] kind` (old name `kernel-flavour`).
    #[serde(alias = "kernel-flavour")]
    kernel_kind: Option<Spanned<String>>,
    #[serde(default)]
    kernel_args: Vec<Spanned<String>>,
    /// Modules the initramfs must hold whatever dracut detects (storage and
    /// network drivers the boot needs on this hardware).
    #[serde(default)]
    initramfs_drivers: Vec<Spanned<String>>,
    /// Package sets added to every flavor's.
    #[serde(default)]
    package_sets: Vec<Spanned<String>>,
    /// kernel-config fragments added to `[kernel] config`.
    #[serde(default)]
    kernel_config: Vec<Spanned<String>>,
    /// Package files never installed on this platform, added to
    /// `[debian] path-excludes`.
    #[serde(default)]
    path_excludes: Vec<Spanned<String>>,
    /// Which kernel modules ship: `all` (the default) or `fragments`.
    modules: Option<Spanned<String>>,
}

/// Which of Debian's kernels: its cloud kernel (VMs) or its full kernel
/// (bare metal, servers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    Cloud,
    Generic,
}

impl KernelKind {
    /// The Debian meta-package of this kind for an architecture.
    pub fn package(self, arch: Arch) -> String {
        match self {
            KernelKind::Cloud => format!("linux-image-cloud-{}", arch.debian()),
            KernelKind::Generic => format!("linux-image-{}", arch.debian()),
        }
    }
}

/// Which of the kernel's modules an image ships (`[platforms.<name>]
/// modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModuleSelection {
    /// Every module the kernel package installs.
    #[default]
    All,
    /// Of the hardware drivers (`kernel/drivers/`, `kernel/sound/`), those
    /// the platform's kernel-config fragments and initramfs drivers name,
    /// with what they depend on; every other module (`net/`, `fs/`,
    /// `crypto/`, …) ships (see [`crate::module_prune`]).
    Fragments,
}

impl ModuleSelection {
    fn parse(value: &str) -> Option<ModuleSelection> {
        match value {
            "all" => Some(ModuleSelection::All),
            "fragments" => Some(ModuleSelection::Fragments),
            _ => None,
        }
    }
}

/// A package name together with where the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// A validated manifest, resolved for one flavor and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub manifest_path: PathBuf,
    pub name: String,
    pub version: semver::Version,
    pub stream: String,
    /// The image's default user (provisioning gives it SSH keys; `sudo`).
    pub default_user: String,
    /// Each cloud's NTP servers (`[clouds.<name>] ntp`), by platform name.
    pub cloud_ntp: BTreeMap<String, Vec<String>>,
    /// Each cloud's kernel arguments (`[clouds.<name>] kernel-args`), added
    /// to an image made for it (`image --cloud <name>`).
    pub cloud_kernel_args: BTreeMap<String, Vec<String>>,
    /// Each cloud's import formats (`[clouds.<name>] formats`).
    pub cloud_formats: BTreeMap<String, Vec<crate::disk_formats::DiskFormat>>,
    pub flavor: String,
    pub arch: Arch,
    pub platform: Platform,
    pub release: String,
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// dpkg `--path-exclude` globs: package files never installed
    /// (`[debian]`'s, then the platform's).
    pub path_excludes: Vec<String>,
    /// Every package to install, sorted, without duplicates, kernel included.
    pub packages: Vec<PackageRef>,
    pub kernel_package: String,
    pub kernel_args: Vec<String>,
    /// Modules dracut must put in the initramfs.
    pub initramfs_drivers: Vec<String>,
    /// kernel-config fragments the kernel must satisfy, absolute.
    pub kernel_config: Vec<PathBuf>,
    /// Which kernel modules ship.
    pub modules: ModuleSelection,
    /// Overlay trees, absolute, applied in this order (later wins).
    pub overlays: Vec<PathBuf>,
    pub esp_size: u64,
    pub root_size: u64,
    pub update_url: String,
    /// The user's own apt repositories (`[[repositories]]`), in order.
    pub repositories: Vec<Repository>,
}

impl ImageSpec {
    /// The same image built from another Debian release: `release` and each
    /// of its suites (`trixie-security` → `bookworm-security`). For building
    /// a release on the next Debian (or, as the update tests do, on the
    /// previous one) without editing the manifest.
    pub fn on_debian_release(&mut self, release: &str) -> anyhow::Result<()> {
        let valid = !release.is_empty()
            && release
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            anyhow::bail!("Debian release `{release}` is not a codename (lowercase letters, digits, `-`)");
        }
        for suite in &mut self.suites {
            let pocket = suite
                .strip_prefix(self.release.as_str())
                .expect("suites are validated to start with the release");
            *suite = format!("{release}{pocket}");
        }
        self.release = release.to_owned();
        Ok(())
    }

    pub fn package_names(&self) -> Vec<String> {
        self.packages.iter().map(|p| p.name.clone()).collect()
    }

    /// What hosts of this image take updates for (flavor and platform).
    pub fn variant(&self) -> Variant {
        Variant::new(&self.flavor, self.platform).expect("resolve checked the flavor's name")
    }

    /// The image: architecture, variant, stream.
    pub fn id(&self) -> ImageId {
        ImageId::new(self.arch, self.variant(), &self.stream).expect("resolve checked the stream's name")
    }
}

/// The parsed manifest file, before a flavor is chosen.
pub struct Manifest {
    path: PathBuf,
    text: String,
    raw: RawManifest,
}

impl Manifest {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading manifest {}: {e}", path.display()))?;
        Ok(Manifest::parse(path, &text)?)
    }

    /// Parse manifest text; `path` is used for error messages and to resolve
    /// overlay directories.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            locate(path, text, span, e.message().to_owned())
        })?;
        Ok(Manifest {
            path: path.to_owned(),
            text: text.to_owned(),
            raw,
        })
    }

    pub fn flavors(&self) -> Vec<String> {
        self.raw.flavors.keys().cloned().collect()
    }

    /// One kernel argument of the manifest (`[kernel] args`, a platform's,
    /// a flavor's or a cloud's): one word, without quotes or `$`.
    fn kernel_arg(&self, arg: &Spanned<String>) -> Result<String, ManifestError> {
        let a = arg.get_ref();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$\\;{}".contains(c)) {
            return Err(self.err(
                arg.span(),
                format!("kernel argument {a:?} must be one word without quotes or `$`"),
            ));
        }
        Ok(a.clone())
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        locate(&self.path, &self.text, span, message.into())
    }

    /// Validate everything and resolve the image for `flavor` on `arch` and `platform`.
    pub fn resolve(&self, flavor: &str, arch: Arch, platform: Platform) -> Result<ImageSpec, ManifestError> {
        let raw = &self.raw;
        let plat = self.platform(platform, arch)?;
        let flav = raw.flavors.get(flavor).ok_or_else(|| {
            self.err(
                0..0,
                format!(
                    "no flavor `{flavor}` (the manifest defines: {})",
                    self.flavors().join(", ")
                ),
            )
        })?;

        let name = self.identifier(&raw.image.name, "image name")?;
        let stream = self.identifier(&raw.image.stream, "stream")?;
        // The flavor's and stream's names become the variant and the ref.
        let variant = Variant::new(flavor, platform).map_err(|e| self.err(flav.span(), e.to_string()))?;
        ImageId::new(arch, variant, &stream).map_err(|e| self.err(raw.image.stream.span(), e.to_string()))?;
        let version = semver::Version::parse(raw.image.version.get_ref()).map_err(|e| {
            self.err(
                raw.image.version.span(),
                format!("version is not semantic (x.y.z): {e}"),
            )
        })?;

        let release = self.identifier(&raw.debian.release, "Debian release")?;
        let mirror = raw.debian.mirror.as_ref().map(|m| self.url(m)).transpose()?;
        let security_mirror = raw.debian.security_mirror.as_ref().map(|m| self.url(m)).transpose()?;
        if raw.debian.suites.is_empty() {
            return Err(self.err(raw.debian.release.span(), "`suites` is empty"));
        }
        let mut suites = Vec::new();
        for s in &raw.debian.suites {
            if s.get_ref() != &release && !s.get_ref().starts_with(&format!("{release}-")) {
                return Err(self.err(
                    s.span(),
                    format!(
                        "suite `{}` is not `{release}` or one of its `{release}-*` suites",
                        s.get_ref()
                    ),
                ));
            }
            suites.push(s.get_ref().clone());
        }
        let components = raw
            .debian
            .components
            .iter()
            .map(|c| self.identifier(c, "component"))
            .collect::<Result<Vec<_>, _>>()?;

        let mut path_excludes = Vec::new();
        let platform_excludes = plat.map(|p| p.path_excludes.as_slice()).unwrap_or_default();
        for p in raw.debian.path_excludes.iter().chain(platform_excludes) {
            let g = p.get_ref();
            if !g.starts_with("/usr/") || g.contains(char::is_whitespace) || g.contains("..") {
                return Err(self.err(
                    p.span(),
                    format!("path-exclude `{g}` must be an absolute glob under /usr/ without spaces or `..`"),
                ));
            }
            path_excludes.push(g.clone());
        }

        let kind_value = plat.and_then(|p| p.kernel_kind.as_ref()).unwrap_or(&raw.kernel.kind);
        let kernel_kind = match kind_value.get_ref().as_str() {
            "cloud" => KernelKind::Cloud,
            "generic" => KernelKind::Generic,
            other => {
                return Err(self.err(
                    kind_value.span(),
                    format!("unknown kernel kind `{other}` (expected `cloud` or `generic`)"),
                ))
            }
        };
        let kernel_package = kernel_kind.package(arch);

        let mut packages: BTreeMap<String, PackageRef> = BTreeMap::new();
        let flavor_owner = format!("flavor `{flavor}`");
        let platform_owner = format!("platform `{platform}`");
        let platform_sets = plat.map(|p| p.package_sets.as_slice()).unwrap_or_default();
        let sets = flav.get_ref().package_sets.iter().map(|s| (&flavor_owner, s));
        for (owner, set) in sets.chain(platform_sets.iter().map(|s| (&platform_owner, s))) {
            let members = raw.packages.get(set.get_ref()).ok_or_else(|| {
                self.err(
                    set.span(),
                    format!(
                        "{owner} names package set `{}`, which [packages] does not define (defined: {})",
                        set.get_ref(),
                        raw.packages.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            for pkg in members {
                if !is_debian_package_name(pkg.get_ref()) {
                    return Err(self.err(
                        pkg.span(),
                        format!("`{}` is not a valid Debian package name", pkg.get_ref()),
                    ));
                }
                let (line, column) = line_col(&self.text, pkg.span().start);
                packages.entry(pkg.get_ref().clone()).or_insert(PackageRef {
                    name: pkg.get_ref().clone(),
                    line,
                    column,
                });
            }
        }
        let (line, column) = line_col(&self.text, kind_value.span().start);
        packages.entry(kernel_package.clone()).or_insert(PackageRef {
            name: kernel_package.clone(),
            line,
            column,
        });

        let mut kernel_args = Vec::new();
        let platform_args = plat.map(|p| p.kernel_args.as_slice()).unwrap_or_default();
        for arg in raw
            .kernel
            .args
            .iter()
            .chain(platform_args)
            .chain(&flav.get_ref().kernel_args)
        {
            kernel_args.push(self.kernel_arg(arg)?);
        }
        // Last, so the serial port is /dev/console (status, emergency shell).
        kernel_args.push(arch.serial_console().to_owned());

        let mut initramfs_drivers = Vec::new();
        for d in plat.map(|p| p.initramfs_drivers.as_slice()).unwrap_or_default() {
            let name = d.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(self.err(d.span(), format!("`{name}` is not a kernel module name")));
            }
            initramfs_drivers.push(name.clone());
        }
        let platform_config = plat.map(|p| p.kernel_config.as_slice()).unwrap_or_default();
        let kernel_config = raw
            .kernel
            .config
            .iter()
            .chain(platform_config)
            .map(|f| self.input_file(f))
            .collect::<Result<Vec<_>, _>>()?;
        let modules = match plat.and_then(|p| p.modules.as_ref()) {
            None => ModuleSelection::All,
            Some(value) => ModuleSelection::parse(value.get_ref()).ok_or_else(|| {
                self.err(
                    value.span(),
                    format!(
                        "platform `{platform}`: unknown `modules` value `{}` (expected `all`: every module of the kernel, or `fragments`: the drivers the kernel-config fragments name)",
                        value.get_ref()
                    ),
                )
            })?,
        };

        let mut overlays = Vec::new();
        for o in raw.image.overlays.iter().chain(&flav.get_ref().overlays) {
            overlays.push(self.overlay_dir(o)?);
        }

        let esp_size = self.size(&raw.disk.esp_size)?;
        let root_size = self.size(&raw.disk.root_size)?;
        const MIB: u64 = 1 << 20;
        if esp_size < 33 * MIB {
            return Err(self.err(
                raw.disk.esp_size.span(),
                "esp-size must be at least 33MiB (FAT32's minimum)",
            ));
        }
        if root_size < 256 * MIB {
            return Err(self.err(raw.disk.root_size.span(), "root-size must be at least 256MiB"));
        }
        if esp_size % MIB != 0 || root_size % MIB != 0 {
            return Err(self.err(raw.disk.esp_size.span(), "partition sizes must be whole MiB"));
        }
        let update_url = self.url(&raw.update.url)?;
        let default_user = match &raw.image.default_user {
            None => "cairn".to_owned(),
            Some(v) => {
                let u = v.get_ref();
                let ok = !u.is_empty()
                    && u.len() <= 32
                    && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && u.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
                if !ok || u == "root" {
                    return Err(self.err(
                        v.span(),
                        format!(
                            "default-user `{u}` must be a user name (lower-case letters, digits, `-`, `_`), not root"
                        ),
                    ));
                }
                u.clone()
            }
        };

        let mut cloud_ntp = BTreeMap::new();
        let mut cloud_kernel_args = BTreeMap::new();
        let mut cloud_formats = BTreeMap::new();
        for (cloud, facts) in &raw.clouds {
            cairn_common::layout::check_cloud_platform(cloud)
                .map_err(|e| self.err(facts.span(), format!("[clouds.{cloud}]: {e}")))?;
            let mut servers = Vec::new();
            for v in &facts.get_ref().ntp {
                cairn_common::layout::check_ntp_server(v.get_ref())
                    .map_err(|e| self.err(v.span(), format!("ntp: {e}")))?;
                servers.push(v.get_ref().clone());
            }
            cloud_ntp.insert(cloud.clone(), servers);
            let args = facts
                .get_ref()
                .kernel_args
                .iter()
                .map(|v| self.kernel_arg(v))
                .collect::<Result<Vec<_>, _>>()?;
            cloud_kernel_args.insert(cloud.clone(), args);
            let formats = facts.get_ref().formats.clone();
            if !formats.is_empty() {
                crate::disk_formats::check_formats(&formats)
                    .map_err(|e| self.err(facts.span(), format!("[clouds.{cloud}] formats: {e:#}")))?;
            }
            cloud_formats.insert(cloud.clone(), formats);
        }

        Ok(ImageSpec {
            manifest_path: self.path.clone(),
            name,
            version,
            stream,
            default_user,
            cloud_ntp,
            cloud_kernel_args,
            cloud_formats,
            flavor: flavor.to_owned(),
            arch,
            platform,
            release,
            mirror,
            security_mirror,
            suites,
            components,
            path_excludes,
            packages: packages.into_values().collect(),
            kernel_package,
            kernel_args,
            initramfs_drivers,
            kernel_config,
            modules,
            overlays,
            esp_size,
            root_size,
            update_url,
            repositories: self.flavor_repositories(flavor, flav.get_ref())?,
        })
    }

    /// The repositories `flavor` names, in the order `[[repositories]]`
    /// defines them; every definition is checked whichever flavor is built.
    fn flavor_repositories(&self, flavor: &str, flav: &RawFlavor) -> Result<Vec<Repository>, ManifestError> {
        let defined = self.repositories()?;
        for name in &flav.repositories {
            if !defined.iter().any(|r| &r.name == name.get_ref()) {
                let names: Vec<&str> = defined.iter().map(|r| r.name.as_str()).collect();
                return Err(self.err(
                    name.span(),
                    format!(
                        "flavor `{flavor}` names repository `{}`, which no [[repositories]] entry defines (defined: {})",
                        name.get_ref(),
                        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                    ),
                ));
            }
        }
        Ok(defined
            .into_iter()
            .filter(|r| flav.repositories.iter().any(|n| n.get_ref() == &r.name))
            .collect())
    }

    /// `[[repositories]]`, checked: names unique, suites either all
    /// distributions (with components) or flat folders (without), the key
    /// an OpenPGP public key, the priority one apt takes.
    fn repositories(&self) -> Result<Vec<Repository>, ManifestError> {
        let mut out: Vec<Repository> = Vec::new();
        for table in &self.raw.repositories {
            let r = table.get_ref();
            let name = self.identifier(&r.name, "repository name")?;
            if out.iter().any(|o| o.name == name) {
                return Err(self.err(r.name.span(), format!("a repository named `{name}` is already defined")));
            }
            let url = self.url(&r.url)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.err(
                    r.url.span(),
                    format!("repository `{name}`: `{url}` is not an http:// or https:// URL (a local folder can be served on loopback)"),
                ));
            }
            let authority = url
                .split_once("://")
                .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
            if authority.contains('@') {
                return Err(self.err(
                    r.url.span(),
                    format!("repository `{name}`: credentials in the URL would be written into the image's apt sources and the build's logs; serve it without them (a mirror or proxy on a private network)"),
                ));
            }
            if r.suites.is_empty() {
                return Err(self.err(table.span(), format!("repository `{name}`: `suites` is empty")));
            }
            let mut suites = Vec::new();
            for s in &r.suites {
                let v = s.get_ref();
                let ok = !v.is_empty()
                    && !v.contains("..")
                    && !v.contains(char::is_whitespace)
                    && (v == "/" || !v.starts_with('/'));
                if !ok {
                    return Err(self.err(
                        s.span(),
                        format!("repository `{name}`: suite `{v}` must be a distribution (`stable`) or a flat repository's folder ending in `/` (`/`)"),
                    ));
                }
                suites.push(v.clone());
            }
            let flat = suites.iter().filter(|s| crate::apt_repos::is_flat(s)).count();
            if flat != 0 && flat != suites.len() {
                return Err(self.err(
                    table.span(),
                    format!("repository `{name}` mixes flat folders (ending in `/`) and distributions in `suites`"),
                ));
            }
            let components = r
                .components
                .iter()
                .map(|c| self.identifier(c, "component"))
                .collect::<Result<Vec<_>, _>>()?;
            if flat == 0 && components.is_empty() {
                return Err(self.err(
                    table.span(),
                    format!("repository `{name}` names distributions but no `components` (for example `[\"main\"]`)"),
                ));
            }
            if flat != 0 && !components.is_empty() {
                return Err(self.err(
                    r.components[0].span(),
                    format!("repository `{name}` is flat (its suites end in `/`), so it has no components"),
                ));
            }
            let key = self.input_file(&r.key)?;
            let bytes = std::fs::read(&key)
                .map_err(|e| self.err(r.key.span(), format!("`{}` cannot be read: {e}", key.display())))?;
            let keyring = crate::apt_repos::keyring_bytes(&bytes).map_err(|e| {
                self.err(
                    r.key.span(),
                    format!("repository `{name}`: key `{}`: {e:#}", key.display()),
                )
            })?;
            let priority = match &r.priority {
                None => None,
                Some(p) => match i32::try_from(*p.get_ref()) {
                    Ok(v) if v != 0 => Some(v),
                    _ => {
                        return Err(self.err(
                            p.span(),
                            format!(
                                "repository `{name}`: priority {} is not an apt pin priority (a non-zero integer: 100 to prefer Debian, 990 to prefer this repository, 1001 to take its versions even as downgrades)",
                                p.get_ref()
                            ),
                        ))
                    }
                },
            };
            let (line, column) = line_col(&self.text, table.span().start);
            out.push(Repository {
                name,
                url,
                suites,
                components,
                key,
                keyring,
                priority,
                at: format!("{}:{line}:{column}", self.path.display()),
            });
        }
        Ok(out)
    }

    /// The manifest's table for `platform`, checked against `arch`. A
    /// manifest without platforms builds `generic` as its flavors say.
    fn platform(&self, platform: Platform, arch: Arch) -> Result<Option<&RawPlatform>, ManifestError> {
        let raw = &self.raw;
        for (name, table) in &raw.platforms {
            name.parse::<Platform>().map_err(|e| self.err(table.span(), e))?;
        }
        let Some(table) = raw.platforms.get(platform.as_str()) else {
            if raw.platforms.is_empty() && platform == Platform::Generic {
                return Ok(None);
            }
            let defined: Vec<&str> = raw.platforms.keys().map(String::as_str).collect();
            return Err(self.err(
                0..0,
                format!(
                    "no platform `{platform}` (the manifest defines: {})",
                    if defined.is_empty() {
                        "none".into()
                    } else {
                        defined.join(", ")
                    }
                ),
            ));
        };
        let span = table.span();
        let table = table.get_ref();
        if table.arch.is_empty() {
            return Err(self.err(span, format!("platform `{platform}` has an empty `arch` list")));
        }
        let mut arches = Vec::new();
        for a in &table.arch {
            arches.push(a.get_ref().parse::<Arch>().map_err(|e| self.err(a.span(), e))?);
        }
        if !arches.contains(&arch) {
            let span = table.arch.first().map_or(0..0, |a| a.span());
            let names: Vec<&str> = arches.iter().map(|a| a.as_str()).collect();
            return Err(self.err(
                span,
                format!("platform `{platform}` is for {}, not {arch}", names.join(" and ")),
            ));
        }
        Ok(Some(table))
    }

    /// A file the build reads (a kernel-config fragment), relative to the
    /// manifest's folder; it must exist.
    fn input_file(&self, v: &Spanned<String>) -> Result<PathBuf, ManifestError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let path = base.join(v.get_ref());
        match path.canonicalize() {
            Ok(real) if real.is_file() => Ok(real),
            Ok(real) => Err(self.err(v.span(), format!("`{}` is not a file", real.display()))),
            Err(e) => Err(self.err(v.span(), format!("`{}` cannot be read: {e}", path.display()))),
        }
    }

    fn identifier(&self, v: &Spanned<String>, what: &str) -> Result<String, ManifestError> {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(s.clone())
        } else {
            Err(self.err(
                v.span(),
                format!("{what} `{s}` must be letters, digits, `-`, `_` or `.`"),
            ))
        }
    }

    fn url(&self, v: &Spanned<String>) -> Result<String, ManifestError> {
        let s = v.get_ref();
        let ok = (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file:///"))
            && !s.contains(char::is_whitespace);
        if ok {
            Ok(s.trim_end_matches('/').to_owned())
        } else {
            Err(self.err(v.span(), format!("`{s}` is not an http://, https:// or file:/// URL")))
        }
    }

    fn size(&self, v: &Spanned<String>) -> Result<u64, ManifestError> {
        parse_size(v.get_ref()).map_err(|m| self.err(v.span(), m))
    }

    /// An overlay directory: relative to the manifest's folder and inside it.
    fn overlay_dir(&self, v: &Spanned<String>) -> Result<PathBuf, ManifestError> {
        let rel = Path::new(v.get_ref());
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.err(
                v.span(),
                format!(
                    "overlay `{}` escapes the manifest's folder: give a path inside it",
                    v.get_ref()
                ),
            ));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let dir = base.join(rel);
        // Symlinks could still lead out: compare the real paths.
        let real = dir
            .canonicalize()
            .map_err(|e| self.err(v.span(), format!("overlay `{}` cannot be read: {e}", dir.display())))?;
        let real_base = base.canonicalize().unwrap_or_else(|_| base.to_owned());
        if !real.starts_with(&real_base) {
            return Err(self.err(
                v.span(),
                format!(
                    "overlay `{}` resolves to {}, outside the manifest's folder",
                    v.get_ref(),
                    real.display()
                ),
            ));
        }
        if !real.is_dir() {
            return Err(self.err(v.span(), format!("overlay `{}` is not a directory", v.get_ref())));
        }
        Ok(real)
    }
}

fn locate(path: &Path, text: &str, span: Range<usize>, message: String) -> ManifestError {
    let (line, column) = line_col(text, span.start);
    ManifestError {
        file: path.to_owned(),
        line,
        column,
        message,
    }
}

/// Debian policy 5.6.1: lower case letters, digits, `+`, `-`, `.`; at least
/// two characters; starting with a letter or digit.
pub fn is_debian_package_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// Parse sizes like `64MiB`, `2GiB`, `512M`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size `{s}` does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "size `{s}` has unknown unit `{other}` (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("size `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[image]
name = "cairn"
version = "1.2.3"
stream = "stable"
overlays = ["overlay/base"]

[debian]
release = "bookworm"
suites = ["bookworm", "bookworm-updates", "bookworm-security"]
components = ["main"]
path-excludes = ["/usr/bin/containerd-shim-runc-v1"]

[packages]
base = ["systemd", "udev"]
container = ["containerd", "runc", "systemd"]

[kernel]
flavour = "cloud" # the old name of `kind`, still read
args = ["rw", "panic=10"]

[disk]
esp-size = "64MiB"
root-size = "2GiB"

[update]
url = "http://10.0.2.100/repo/"

[flavors.dev]
package-sets = ["base", "container"]
overlays = ["overlay/dev"]
kernel-args = ["systemd.log_level=info"]

[flavors.prod]
package-sets = ["base"]
"#;

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("overlay/base/etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("overlay/dev")).unwrap();
        let path = dir.path().join("image.toml");
        (dir, path)
    }

    fn parse_err(text: &str) -> ManifestError {
        let (_d, path) = fixture();
        match Manifest::parse(&path, text) {
            Err(e) => e,
            Ok(m) => m.resolve("dev", Arch::X86_64, Platform::Generic).unwrap_err(),
        }
    }

    #[test]
    fn resolves_dev_flavor() {
        let (_d, path) = fixture();
        let spec = Manifest::parse(&path, GOOD)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_eq!(spec.version, semver::Version::new(1, 2, 3));
        assert_eq!(
            spec.package_names(),
            ["containerd", "linux-image-cloud-amd64", "runc", "systemd", "udev"]
        );
        assert_eq!(
            spec.kernel_args,
            ["rw", "panic=10", "systemd.log_level=info", "console=ttyS0,115200"]
        );
        assert_eq!(spec.overlays.len(), 2);
        assert_eq!(spec.esp_size, 64 << 20);
        assert_eq!(spec.update_url, "http://10.0.2.100/repo");
        let prod = Manifest::parse(&path, GOOD)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Generic)
            .unwrap();
        assert_eq!(prod.package_names(), ["linux-image-cloud-arm64", "systemd", "udev"]);
        assert_eq!(prod.kernel_args.last().unwrap(), "console=ttyAMA0,115200");
    }

    #[test]
    fn each_cloud_s_time_servers_reach_the_agent_s_settings() {
        let (_d, path) = fixture();
        let text = format!("{GOOD}\n[clouds.ec2]\nntp = [\"169.254.169.123\"]\n\n[clouds.gce]\nkernel-args = [\"console=ttyS0,38400n8\"]\n");
        let spec = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_eq!(spec.cloud_ntp["ec2"], ["169.254.169.123"]);
        assert!(spec.cloud_kernel_args["ec2"].is_empty());
        assert_eq!(spec.cloud_kernel_args["gce"], ["console=ttyS0,38400n8"]);
        let e = parse_err(&format!("{GOOD}\n[clouds.azure]\nkernel-args = [\"a b\"]\n"));
        assert_eq!(
            e.message,
            "kernel argument \"a b\" must be one word without quotes or `$`"
        );
        assert!(crate::compose::agent_dropin(&spec).ends_with("\n[platform.ec2]\nntp = [\"169.254.169.123\"]\n"));
        let e = parse_err(&format!("{GOOD}\n[clouds.aws]\nntp = [\"x\"]\n"));
        assert!(
            e.message
                .starts_with("[clouds.aws]: not a cloud platform (one of: ec2,"),
            "{e}"
        );
        let e = parse_err(&format!("{GOOD}\n[clouds.gce]\nntp = [\"a b\"]\n"));
        assert_eq!(e.message, "ntp: `a b` is not a host name or address");
    }

    #[test]
    fn repositories_are_resolved_and_each_mistake_is_located() {
        let (d, path) = fixture();
        std::fs::write(
            d.path().join("k8s.asc"),
            include_str!("../../qemu-tests/fixtures/apt-repo/repository-key.asc"),
        )
        .unwrap();
        std::fs::write(d.path().join("notakey.asc"), "hello\n").unwrap();
        let parse_err = |text: &str| match Manifest::parse(&path, text) {
            Err(e) => e,
            Ok(m) => m.resolve("dev", Arch::X86_64, Platform::Generic).unwrap_err(),
        };
        let with_dev = GOOD.replace("[flavors.dev]\n", "[flavors.dev]\nrepositories = [\"k8s\"]\n");
        let repo = |body: &str| format!("{with_dev}\n[[repositories]]\nname = \"k8s\"\nkey = \"k8s.asc\"\n{body}\n");
        let text = repo("url = \"https://pkgs.k8s.io/core:/stable:/v1.32/deb/\"\nsuites = [\"/\"]\npriority = 990");
        let spec = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        let r = &spec.repositories[0];
        assert_eq!(r.url, "https://pkgs.k8s.io/core:/stable:/v1.32/deb");
        assert_eq!((r.suites.as_slice(), r.priority), (&["/".to_owned()][..], Some(990)));
        let line = with_dev.lines().count() + 2;
        assert_eq!(r.at, format!("{}:{line}:1", path.display()));

        for (body, message) in [
            (
                "url = \"http://r\"\nsuites = [\"stable\"]",
                "repository `k8s` names distributions but no `components`",
            ),
            (
                "url = \"http://r\"\nsuites = [\"/\"]\ncomponents = [\"main\"]",
                "repository `k8s` is flat (its suites end in `/`), so it has no components",
            ),
            (
                "url = \"http://r\"\nsuites = [\"/\", \"stable\"]\ncomponents = [\"main\"]",
                "mixes flat folders",
            ),
            (
                "url = \"http://r\"\nsuites = [\"../x\"]",
                "suite `../x` must be a distribution",
            ),
            (
                "url = \"ftp://r\"\nsuites = [\"/\"]",
                "is not an http://, https:// or file:/// URL",
            ),
            (
                "url = \"http://r\"\nsuites = [\"/\"]\npriority = 0",
                "priority 0 is not an apt pin priority",
            ),
            ("url = \"http://r\"\nsuites = []", "`suites` is empty"),
            (
                "url = \"file:///srv/apt\"\nsuites = [\"/\"]",
                "is not an http:// or https:// URL",
            ),
            (
                "url = \"https://u:pw@r.example/apt\"\nsuites = [\"/\"]",
                "credentials in the URL would be written into the image",
            ),
        ] {
            let e = parse_err(&repo(body));
            assert!(e.message.contains(message), "{body}: {e}");
            assert!(e.line > with_dev.lines().count(), "{body}: {e}");
        }
        let e = parse_err(&repo("url = \"http://r\"\nsuites = [\"/\"]").replace("k8s.asc", "notakey.asc"));
        assert!(e.message.contains("is not an OpenPGP public key"), "{e}");
        let e = parse_err(&repo("url = \"http://r\"\nsuites = [\"/\"]").replace("k8s.asc", "missing.asc"));
        assert!(e.message.contains("cannot be read"), "{e}");
        let twice = format!(
            "{}\n[[repositories]]\nname = \"k8s\"\nkey = \"k8s.asc\"\nurl = \"http://s\"\nsuites = [\"/\"]\n",
            repo("url = \"http://r\"\nsuites = [\"/\"]")
        );
        assert!(parse_err(&twice)
            .message
            .contains("a repository named `k8s` is already defined"));

        // Only the flavors that name a repository install from it.
        let prod = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert!(prod.repositories.is_empty());
        let e = parse_err(&text.replace("repositories = [\"k8s\"]", "repositories = [\"k9s\"]"));
        assert!(
            e.message.starts_with(
                "flavor `dev` names repository `k9s`, which no [[repositories]] entry defines (defined: k8s)"
            ),
            "{e}"
        );
    }

    #[test]
    fn each_cloud_names_the_formats_its_import_takes() {
        use crate::disk_formats::DiskFormat;
        let (_d, path) = fixture();
        let text =
            format!("{GOOD}\n[clouds.azure]\nformats = [\"vhd\"]\n\n[clouds.gce]\nntp = [\"169.254.169.254\"]\n");
        let spec = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_eq!(spec.cloud_formats["azure"], [DiskFormat::Vhd]);
        assert!(spec.cloud_formats["gce"].is_empty());
        let e = parse_err(&format!("{GOOD}\n[clouds.azure]\nformats = [\"vhdx\"]\n"));
        assert!(e.message.contains("unknown variant `vhdx`"), "{e}");
        assert!(e.to_string().contains("image.toml:"), "{e}");
        let e = parse_err(&format!("{GOOD}\n[clouds.azure]\nformats = [\"vhd\", \"vhd\"]\n"));
        assert_eq!(e.message, "[clouds.azure] formats: `vhd` is named twice");
    }

    #[test]
    fn another_debian_release_takes_the_same_suites_of_it() {
        let (_d, path) = fixture();
        let mut spec = Manifest::parse(&path, GOOD)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap();
        assert_eq!(spec.suites, ["bookworm", "bookworm-updates", "bookworm-security"]);
        spec.on_debian_release("trixie").unwrap();
        assert_eq!(spec.release, "trixie");
        assert_eq!(spec.suites, ["trixie", "trixie-updates", "trixie-security"]);
        let err = spec.on_debian_release("Trixie/../x").unwrap_err().to_string();
        assert!(err.contains("`Trixie/../x` is not a codename"), "{err}");
        assert_eq!(spec.release, "trixie", "a refused release changes nothing");
    }

    #[test]
    fn malformed_toml_names_line_and_column() {
        let text = GOOD.replace("stream = \"stable\"", "stream = \"stable");
        let e = parse_err(&text);
        assert_eq!((e.line, e.column), (5, 17), "{e}");
        assert!(e.to_string().contains("image.toml:5:17: invalid basic string"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_where_it_stands() {
        let text = GOOD.replace("[kernel]\n", "[kernel]\nflavor = \"cloud\"\n");
        let e = parse_err(&text);
        assert!(e.message.contains("unknown field `flavor`"), "{e}");
        assert_eq!(e.line, 19, "{e}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = parse_err(&GOOD.replace("\"1.2.3\"", "\"1.2\""));
        assert_eq!((e.line, e.column), (4, 11), "{e}");
        assert!(e.message.contains("semantic"), "{e}");

        let e = parse_err(&GOOD.replace("\"udev\"]", "\"Udev\"]"));
        assert!(e.message.contains("`Udev` is not a valid Debian package name"), "{e}");
        assert_eq!(e.line, 15);

        let e = parse_err(&GOOD.replace("\"2GiB\"", "\"2 lots\""));
        assert!(e.message.contains("unknown unit `lots`"), "{e}");

        let e = parse_err(&GOOD.replace("\"container\"]", "\"containers\"]"));
        assert!(e.message.contains("package set `containers`"), "{e}");

        let e = parse_err(&GOOD.replace("\"panic=10\"", "\"panic=10 quiet\""));
        assert!(e.message.contains("one word"), "{e}");

        let e = parse_err(&GOOD.replace("\"bookworm-updates\"", "\"trixie\""));
        assert!(e.message.contains("suite `trixie`"), "{e}");

        let e = parse_err(&GOOD.replace("\"/usr/bin/containerd-shim-runc-v1\"", "\"/etc/shadow\""));
        assert!(e.message.contains("path-exclude `/etc/shadow`"), "{e}");
    }

    #[test]
    fn overlay_that_escapes_the_tree_is_refused() {
        let e = parse_err(&GOOD.replace("\"overlay/dev\"", "\"../../etc\""));
        assert!(e.message.contains("escapes the manifest's folder"), "{e}");
        assert_eq!(e.line, 31);

        let (d, path) = fixture();
        std::os::unix::fs::symlink("/etc", d.path().join("overlay/sneaky")).unwrap();
        let text = GOOD.replace("\"overlay/dev\"", "\"overlay/sneaky\"");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("dev", Arch::X86_64, Platform::Generic)
            .unwrap_err();
        assert!(e.message.contains("outside the manifest's folder"), "{e}");
    }

    #[test]
    fn missing_flavor_lists_the_defined_ones() {
        let (_d, path) = fixture();
        let e = Manifest::parse(&path, GOOD)
            .unwrap()
            .resolve("debug", Arch::X86_64, Platform::Generic)
            .unwrap_err();
        assert!(
            e.message
                .contains("no flavor `debug` (the manifest defines: dev, prod)"),
            "{e}"
        );
    }

    const PLATFORMS: &str = r#"
[platforms.generic]
arch = ["x86_64", "aarch64"]
kernel-config = ["cloud.config"]

[platforms.kunpeng920]
arch = ["aarch64"]
kernel-kind = "generic"
kernel-args = ["acpi=force"]
initramfs-drivers = ["hisi_sas_v3_hw", "nvme"]
package-sets = ["container"]
kernel-config = ["kunpeng920.config"]
modules = "fragments"
path-excludes = ["/usr/lib/linux-image-*"]
"#;

    fn with_platforms(extra: &str) -> (tempfile::TempDir, PathBuf, String) {
        let (d, path) = fixture();
        for f in ["common.config", "cloud.config", "kunpeng920.config"] {
            std::fs::write(d.path().join(f), "CONFIG_X=y\n").unwrap();
        }
        let text = GOOD.replace(
            "args = [\"rw\", \"panic=10\"]",
            "args = [\"rw\", \"panic=10\"]\nconfig = [\"common.config\"]",
        ) + PLATFORMS
            + extra;
        (d, path, text)
    }

    #[test]
    fn a_platform_sets_kernel_drivers_arguments_and_fragments() {
        let (d, path, text) = with_platforms("");
        let m = Manifest::parse(&path, &text).unwrap();
        let k = m.resolve("prod", Arch::Aarch64, Platform::Kunpeng920).unwrap();
        assert_eq!(k.kernel_package, "linux-image-arm64");
        assert_eq!(
            k.kernel_args,
            ["rw", "panic=10", "acpi=force", "console=ttyAMA0,115200"]
        );
        assert_eq!(k.initramfs_drivers, ["hisi_sas_v3_hw", "nvme"]);
        assert!(
            k.package_names().contains(&"containerd".to_owned()),
            "the platform's package set is added"
        );
        let real = |f: &str| d.path().join(f).canonicalize().unwrap();
        assert_eq!(k.kernel_config, [real("common.config"), real("kunpeng920.config")]);
        assert_eq!(k.variant().to_string(), "prod-kunpeng920");
        assert_eq!(k.modules, ModuleSelection::Fragments);
        assert_eq!(
            k.path_excludes,
            ["/usr/bin/containerd-shim-runc-v1", "/usr/lib/linux-image-*"],
            "[debian]'s, then the platform's"
        );

        let g = m.resolve("prod", Arch::X86_64, Platform::Generic).unwrap();
        assert_eq!(g.kernel_package, "linux-image-cloud-amd64");
        assert_eq!(g.kernel_config, [real("common.config"), real("cloud.config")]);
        assert!(g.initramfs_drivers.is_empty());
        assert_eq!(
            g.modules,
            ModuleSelection::All,
            "every module unless the platform says otherwise"
        );
        assert_eq!(g.path_excludes, ["/usr/bin/containerd-shim-runc-v1"]);
        assert_eq!(g.variant().to_string(), "prod");
    }

    #[test]
    fn platform_errors_name_what_is_wrong() {
        let (_d, path, text) = with_platforms("");
        let m = Manifest::parse(&path, &text).unwrap();
        let e = m.resolve("prod", Arch::X86_64, Platform::Kunpeng920).unwrap_err();
        assert!(
            e.message.contains("platform `kunpeng920` is for aarch64, not x86_64"),
            "{e}"
        );
        let e = m.resolve("prod", Arch::Aarch64, Platform::Phytium).unwrap_err();
        assert!(
            e.message
                .contains("no platform `phytium` (the manifest defines: generic, kunpeng920)"),
            "{e}"
        );

        let (_d, path, text) = with_platforms("\n[platforms.tsv110]\narch = [\"aarch64\"]\n");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Generic)
            .unwrap_err();
        assert!(e.message.contains("unknown platform `tsv110`"), "{e}");

        let (_d, path, text) = with_platforms("");
        let text = text.replace("\"kunpeng920.config\"", "\"missing.config\"");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Kunpeng920)
            .unwrap_err();
        assert!(e.message.contains("missing.config` cannot be read"), "{e}");

        let (_d, path, text) = with_platforms("");
        let text = text.replace("\"nvme\"", "\"nvme;rm\"");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Kunpeng920)
            .unwrap_err();
        assert!(e.message.contains("`nvme;rm` is not a kernel module name"), "{e}");

        let (_d, path, text) = with_platforms("");
        let text = text.replace("\"/usr/lib/linux-image-*\"", "\"/boot/*\"");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Kunpeng920)
            .unwrap_err();
        assert!(
            e.message
                .contains("path-exclude `/boot/*` must be an absolute glob under /usr/"),
            "{e}"
        );

        let (_d, path, text) = with_platforms("");
        let text = text.replace("modules = \"fragments\"", "modules = \"some\"");
        let e = Manifest::parse(&path, &text)
            .unwrap()
            .resolve("prod", Arch::Aarch64, Platform::Kunpeng920)
            .unwrap_err();
        assert!(
            e.to_string().contains("image.toml:")
                && e.message
                    .contains("platform `kunpeng920`: unknown `modules` value `some` (expected `all`"),
            "{e}"
        );
        let (line, column) = line_col(&text, text.find("\"some\"").unwrap());
        assert_eq!((e.line, e.column), (line, column), "{e}");

        let (_d, path, text) = with_platforms("");
        let text = text.replace("modules = \"fragments\"", "module = \"fragments\"");
        let e = Manifest::parse(&path, &text).err().expect("an unknown key is an error");
        assert!(e.message.contains("unknown field `module`"), "{e}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
