//! Command-line interface of `cairn-build`.

use std::path::PathBuf;

use anyhow::Result;
use cairn_common::layout::{Arch, Platform};
use clap::{Parser, Subcommand};

use crate::{compose, image, keys, module_prune, publish, tuf_repo};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-build",
    version,
    about = "Build Cairn OS images: packages → signed OSTree commit → UEFI disk image"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which image: manifest, flavor, architecture, platform.
#[derive(Debug, clap::Args)]
struct Image {
    /// Image manifest.
    #[arg(long, default_value = "rootfs/image.toml")]
    manifest: PathBuf,
    /// Flavour defined in the manifest (`dev`, `prod`).
    #[arg(long, default_value = "dev")]
    flavor: String,
    /// Target architecture.
    #[arg(long, default_value = "x86_64")]
    arch: Arch,
    /// Where the image runs: `generic` (VMs, clouds), `kunpeng920`, `phytium`.
    #[arg(long, default_value = "generic")]
    platform: Platform,
    /// Build from this Debian release (codename) instead of the manifest's,
    /// with the same suites of it (`<release>-updates`, ...).
    #[arg(long)]
    debian_release: Option<String>,
}

impl Image {
    fn resolve(&self) -> Result<crate::manifest::ImageSpec> {
        let mut spec =
            crate::manifest::Manifest::load(&self.manifest)?.resolve(&self.flavor, self.arch, self.platform)?;
        if let Some(release) = &self.debian_release {
            spec.on_debian_release(release)?;
        }
        Ok(spec)
    }
}

/// An image and the OSTree repository it is committed to.
#[derive(Debug, clap::Args)]
struct Target {
    #[command(flatten)]
    image: Image,
    /// OSTree archive repository the image is committed to.
    #[arg(long)]
    repo: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a development signing key (a GnuPG home) unless one exists.
    Keygen {
        /// Folder of the key; keep it outside any git tree.
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value = "Cairn development signing key")]
        owner: String,
        /// Keys of the TUF root role.
        #[arg(long, default_value_t = 1)]
        root_keys: u64,
        /// Root-role signatures a new root needs.
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        /// How long the TUF root stays valid (e.g. 365d).
        #[arg(long, default_value = "3650d")]
        root_expires: String,
    },
    /// Build the OS tree from the manifest and commit it, signed.
    Compose {
        #[command(flatten)]
        target: Target,
        /// Cache of downloaded packages and package layers.
        #[arg(long)]
        cache: PathBuf,
        /// Signing key folder (see `keygen`).
        #[arg(long)]
        keys: PathBuf,
        /// Folder with `cairn-agent` and `cairn-grub-mkconfig` built for --arch.
        #[arg(long)]
        agent_dir: PathBuf,
        /// Host apt configuration to take the Debian mirror from.
        #[arg(long, default_value = "/etc/apt")]
        apt_dir: PathBuf,
        /// Release version instead of the manifest's.
        #[arg(long)]
        version: Option<String>,
        /// An overlay tree laid over the manifest's (repeatable).
        #[arg(long = "overlay")]
        overlays: Vec<PathBuf>,
    },
    /// Add the committed image to an update repository (ostree objects,
    /// static deltas, release record, signed TUF metadata).
    Publish {
        #[command(flatten)]
        target: Target,
        /// Update repository folder, served as static files.
        #[arg(long)]
        update_repo: PathBuf,
        /// Signing-key folder holding the TUF keys.
        #[arg(long)]
        keys: PathBuf,
        /// Static deltas from this many previous releases.
        #[arg(long, default_value_t = 3)]
        deltas: usize,
        /// Versions a host must run to take this release (e.g. ">=0.1.0").
        #[arg(long)]
        requires: Option<String>,
        /// Roll the release out in waves over this long from now (e.g.
        /// 24h): each host takes it when its place in the fleet comes up.
        #[arg(long)]
        rollout_duration: Option<String>,
        /// How long the timestamp metadata stays valid.
        #[arg(long, default_value = "7d")]
        timestamp_expires: String,
        /// How long the targets and snapshot metadata stay valid.
        #[arg(long, default_value = "90d")]
        metadata_expires: String,
    },
    /// Pause, resume, stretch or withdraw the rollout of a published
    /// version (every variant, arch and stream of it), and sign the update
    /// repository's metadata again.
    Rollout {
        /// Update repository folder.
        #[arg(long)]
        update_repo: PathBuf,
        /// Signing-key folder holding the TUF keys.
        #[arg(long)]
        keys: PathBuf,
        /// The published version.
        #[arg(long)]
        version: String,
        /// Hosts whose turn has not come wait.
        #[arg(long, group = "change")]
        pause: bool,
        /// The waves go on where they stopped.
        #[arg(long, group = "change")]
        resume: bool,
        /// The rollout lasts this long from its start (from now if the
        /// release had none; 0s: every host now).
        #[arg(long, group = "change")]
        duration: Option<String>,
        /// The release is no longer offered (hosts that took it keep it).
        #[arg(long, group = "change")]
        withdraw: bool,
        /// How long the timestamp metadata stays valid.
        #[arg(long, default_value = "7d")]
        timestamp_expires: String,
        /// How long the targets and snapshot metadata stay valid.
        #[arg(long, default_value = "90d")]
        metadata_expires: String,
    },
    /// Check a kernel against the kernel-config fragments of a platform and
    /// print the report: every unmet option with its fragment and line, and
    /// what Debian's kernel lacks that the platform would want. Exits 1 when
    /// an enforced option is unmet.
    KernelCheck {
        #[command(flatten)]
        image: Image,
        /// Check the kernel of this unpacked root tree (`usr/lib/modules/<kver>`)
        /// instead of the manifest's package layer.
        #[arg(long, conflicts_with = "cache")]
        root: Option<PathBuf>,
        /// Package cache: the package layer is built there if it is not yet.
        #[arg(long, required_unless_present = "root")]
        cache: Option<PathBuf>,
        #[arg(long, default_value = "/etc/apt")]
        apt_dir: PathBuf,
    },
    /// Write a bootable GPT disk image of the committed tree: raw, and
    /// each of --format.
    Image {
        #[command(flatten)]
        target: Target,
        /// Folder the images are written to.
        #[arg(long)]
        output: PathBuf,
        /// Formats to write, comma-separated: raw, qcow2, vhd (Azure: fixed,
        /// whole MiB), vmdk (streamOptimized: vSphere, AWS import), gce
        /// (disk.raw in an oldgnu tar.gz, whole GiB). The raw image is
        /// always written. Default: with --cloud, the formats its import
        /// takes (`[clouds.<name>] formats`); else raw,qcow2.
        #[arg(long, value_enum, value_delimiter = ',')]
        format: Vec<crate::disk_formats::DiskFormat>,
        /// Make the image for this cloud (`[clouds.<name>]` of the manifest:
        /// its kernel arguments; its name ends the file names).
        #[arg(long)]
        cloud: Option<String>,
    },
    /// Make a systemd system extension (sysext) for Cairn hosts from a
    /// folder and/or Debian packages: placed in /var/lib/extensions, it is
    /// merged over /usr at boot and on `systemd-sysext refresh`. It fits
    /// every Cairn release on the manifest's Debian release
    /// (`SYSEXT_LEVEL`), or with --os-version only that release.
    Sysext {
        #[command(flatten)]
        image: Image,
        /// The extension's name (its file is `<name>.raw`).
        #[arg(long)]
        name: String,
        /// A root tree whose /usr goes in (`usr/bin/…`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A Debian package unpacked into it (repeatable; dependencies are
        /// not resolved and maintainer scripts do not run).
        #[arg(long = "deb")]
        debs: Vec<PathBuf>,
        /// Fit only hosts of this Cairn version (`VERSION_ID`) instead of
        /// every release on the same Debian release.
        #[arg(long)]
        os_version: Option<String>,
        /// Folder the extension is written to.
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "squashfs")]
        format: crate::sysext::Format,
        /// Leave out files outside /usr (listed) instead of refusing them.
        #[arg(long)]
        drop_outside_usr: bool,
    },
    /// A step of `compose`, run by it inside mmdebstrap: prune the kernel
    /// modules of the root tree ROOT to an allow-list and re-index them
    /// with the tree's depmod (see `module_prune`).
    #[command(hide = true)]
    PruneModules {
        /// The package layer's root tree, before dracut runs in it.
        root: PathBuf,
        /// The allow-list, as JSON (`module_prune::AllowList`).
        #[arg(long)]
        allow_list: PathBuf,
        /// Where the outcome is written, as JSON (`module_prune::Report`).
        #[arg(long)]
        report: PathBuf,
    },
}

/// Run the command; prints its result as JSON on stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen {
            keys,
            owner,
            root_keys,
            root_threshold,
            root_expires,
        } => {
            let key = keys::keygen(&keys, &owner)?;
            let expires = chrono::Utc::now() + chrono::Duration::from_std(duration(&root_expires, "--root-expires")?)?;
            let root = tuf_repo::keygen(&keys, root_keys, root_threshold, expires)?;
            println!(
                "{}",
                serde_json::json!({ "keys": key.homedir, "key-id": key.key_id, "tuf-root": root })
            );
        }
        Command::Publish {
            target,
            update_repo,
            keys,
            deltas,
            requires,
            rollout_duration,
            timestamp_expires,
            metadata_expires,
        } => {
            let spec = target.image.resolve()?;
            let rollout = rollout_duration
                .map(|d| duration(&d, "--rollout-duration"))
                .transpose()?;
            let published = publish::publish(&publish::PublishOptions {
                build_repo: target.repo,
                rev: compose::image_ref(&spec),
                update_repo,
                keys,
                deltas,
                requires,
                rollout,
                timestamp_ttl: duration(&timestamp_expires, "--timestamp-expires")?,
                metadata_ttl: duration(&metadata_expires, "--metadata-expires")?,
            })?;
            println!("{}", serde_json::to_string_pretty(&published)?);
        }
        Command::Rollout {
            update_repo,
            keys,
            version,
            pause,
            resume,
            duration: length,
            withdraw,
            timestamp_expires,
            metadata_expires,
        } => {
            let change = match (pause, resume, length, withdraw) {
                (true, _, _, _) => publish::RolloutChange::Pause,
                (_, true, _, _) => publish::RolloutChange::Resume,
                (_, _, Some(d), _) => publish::RolloutChange::Duration(duration(&d, "--duration")?),
                (_, _, _, true) => publish::RolloutChange::Withdraw,
                _ => anyhow::bail!("say what to do: --pause, --resume, --duration or --withdraw"),
            };
            let changed = publish::change_rollout(&publish::RolloutOptions {
                update_repo,
                keys,
                version,
                change,
                timestamp_ttl: duration(&timestamp_expires, "--timestamp-expires")?,
                metadata_ttl: duration(&metadata_expires, "--metadata-expires")?,
            })?;
            println!("{}", serde_json::to_string_pretty(&changed)?);
        }
        Command::Compose {
            target,
            cache,
            keys,
            agent_dir,
            apt_dir,
            version,
            overlays,
        } => {
            let composed = compose::compose(&compose::ComposeOptions {
                manifest: target.image.manifest,
                flavor: target.image.flavor,
                arch: target.image.arch,
                platform: target.image.platform,
                debian_release: target.image.debian_release,
                repo: target.repo,
                cache,
                keys,
                agent_dir,
                apt_dir,
                version,
                extra_overlays: overlays,
            })?;
            println!("{}", serde_json::to_string_pretty(&composed)?);
        }
        Command::KernelCheck {
            image,
            root,
            cache,
            apt_dir,
        } => {
            let spec = image.resolve()?;
            let report = match (root, cache) {
                (Some(root), _) => compose::check_kernel_in(&spec, &root)?,
                (None, Some(cache)) => {
                    let mirrors = crate::apt_sources::resolve(
                        &apt_dir,
                        &spec.release,
                        spec.mirror.as_deref(),
                        spec.security_mirror.as_deref(),
                    )?;
                    let cache = compose::Cache::new(&cache)?;
                    let base = cache.base(&spec, &mirrors)?;
                    compose::check_kernel(&spec, &cache, &base)?
                }
                (None, None) => unreachable!("clap requires --cache without --root"),
            };
            println!("{report}");
            if !report.is_ok() {
                anyhow::bail!(
                    "the kernel misses {} required option(s) of {} (listed above)",
                    report.problems.len(),
                    spec.platform
                );
            }
        }
        Command::Image {
            target,
            output,
            format,
            cloud,
        } => {
            let built = image::build_image(&image::ImageOptions {
                manifest: target.image.manifest,
                flavor: target.image.flavor,
                arch: target.image.arch,
                platform: target.image.platform,
                repo: target.repo,
                output,
                formats: format,
                cloud,
            })?;
            println!("{}", serde_json::to_string_pretty(&built)?);
        }
        Command::Sysext {
            image,
            name,
            dir,
            debs,
            os_version,
            output,
            format,
            drop_outside_usr,
        } => {
            let spec = image.resolve()?;
            let fits = match os_version {
                Some(v) => crate::sysext::Fits::OsVersion(v),
                None => crate::sysext::Fits::Level(crate::sysext::sysext_level(&spec.release)),
            };
            let built = crate::sysext::build(&crate::sysext::SysextOptions {
                name,
                arch: spec.arch,
                fits,
                dir,
                debs,
                output,
                format,
                drop_outside_usr,
            })?;
            println!("{}", serde_json::to_string_pretty(&built)?);
        }
        Command::PruneModules {
            root,
            allow_list,
            report,
        } => {
            for kernel in module_prune::run_in_tree(&root, &allow_list, &report)? {
                tracing::info!(
                    kernel = %kernel.kernel_release,
                    removed = kernel.removed,
                    removed_bytes = kernel.removed_bytes,
                    kept = kernel.kept,
                    "kernel modules pruned to the allow-list"
                );
            }
        }
    }
    Ok(())
}

fn duration(value: &str, flag: &str) -> Result<std::time::Duration> {
    cairn_common::duration::parse(value).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}
