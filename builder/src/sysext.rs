//! `cairn-build sysext`: a systemd system extension for Cairn hosts, made
//! from a folder and/or Debian packages.
//!
//! An extension is a read-only image of `/usr` files that
//! `systemd-sysext` merges over a host's `/usr` at boot and on
//! `systemd-sysext refresh`, from `/var/lib/extensions` (or `/etc/…`,
//! `/run/…`). It is how a running Cairn host gets what its image lacks
//! (kubelet, a debugging tool) without a new image. systemd itself decides
//! whether an extension fits the host, from its
//! `usr/lib/extension-release.d/extension-release.<name>`:
//!
//! - `ID=cairn` must be the host's `ID`;
//! - then either `SYSEXT_LEVEL` equals the host's (Cairn's level is its
//!   Debian release: an extension of binaries built for trixie fits every
//!   Cairn release on trixie, across OS updates), or, for an extension
//!   pinned to one OS release (`--os-version`), `VERSION_ID` equals the
//!   host's;
//! - `ARCHITECTURE` matches the host's.
//!
//! An extension holds `/usr` only: on Cairn `/opt` is `/var/opt` and `/etc`
//! is the host's own. Packages built before Debian merged `/usr` put files
//! in `/bin`, `/sbin` and `/lib*`; those are `/usr`'s (merged-usr) and are
//! moved there. Anything else is refused by name, or left out and listed
//! with `--drop-outside-usr`. Maintainer scripts are not run and
//! dependencies are not resolved: name every package the extension needs
//! that the image lacks.
//!
//! Pure: the names, the release file and where a package's file goes;
//! [`build`] does the unpacking and writing (squashfs with zstd,
//! reproducible under `SOURCE_DATE_EPOCH`, or a plain folder).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Cairn's `ID` in os-release, which an extension must name.
pub const OS_ID: &str = "cairn";

/// Where an extension says what it fits.
pub const RELEASE_DIR: &str = "usr/lib/extension-release.d";

/// The host's `SYSEXT_LEVEL` for an image built from Debian `release`
/// (its codename): extensions of that level fit every Cairn release on it.
pub fn sysext_level(release: &str) -> String {
    release.to_owned()
}

/// systemd's name of an architecture (`ARCHITECTURE=`).
pub fn systemd_architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86-64",
        Arch::Aarch64 => "arm64",
    }
}

/// Which hosts an extension fits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fits {
    /// Every Cairn release of this `SYSEXT_LEVEL` (Debian release).
    Level(String),
    /// Only Cairn hosts of this `VERSION_ID`.
    OsVersion(String),
}

/// `extension-release.<name>`: what systemd checks before merging. An
/// extension that carries units (`has_units`) asks systemd-sysext to
/// reload the service manager once merged (`EXTENSION_RELOAD_MANAGER`),
/// so they are known without a `daemon-reload`.
pub fn extension_release(fits: &Fits, arch: Arch, has_units: bool) -> String {
    let fit = match fits {
        Fits::Level(l) => format!("SYSEXT_LEVEL={l}"),
        Fits::OsVersion(v) => format!("VERSION_ID={v}"),
    };
    format!(
        "# Written by cairn-build sysext.\nID={OS_ID}\n{fit}\nARCHITECTURE={}\n{}",
        systemd_architecture(arch),
        if has_units { "EXTENSION_RELOAD_MANAGER=1\n" } else { "" }
    )
}

/// Where an extension's units are, relative to its root.
const UNIT_DIR: &str = "usr/lib/systemd/system";

/// An extension's name: its image's file name without `.raw`, which
/// systemd requires to match its release file's.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with(".raw");
    if !ok {
        bail!("extension name `{name}` must be letters, digits, `-`, `_`, `.`, starting with a letter or digit (without `.raw`)");
    }
    Ok(())
}

/// A value of `SYSEXT_LEVEL` or `VERSION_ID`: os-release's characters.
fn check_release_value(value: &str, what: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-~".contains(c));
    if !ok {
        bail!("{what} `{value}` must be lower-case letters, digits, `.`, `_`, `-`, `~`");
    }
    Ok(())
}

/// Where a tree's top-level entry `top` goes in an extension: `usr` stays,
/// merged-usr folders move under `usr/`, anything else has no place.
pub fn usr_place(top: &str) -> Option<String> {
    match top {
        "usr" => Some("usr".into()),
        "bin" | "sbin" | "lib" | "lib32" | "lib64" | "libx32" => Some(format!("usr/{top}")),
        _ => None,
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `<name>.raw`: a squashfs image (zstd).
    Squashfs,
    /// `<name>/`: a folder systemd-sysext merges as it is.
    Dir,
}

/// Inputs of [`build`].
pub struct SysextOptions {
    pub name: String,
    pub arch: Arch,
    pub fits: Fits,
    /// A root tree whose `usr/` goes in (and, moved, its merged-usr folders).
    pub dir: Option<PathBuf>,
    /// Debian packages unpacked into it, in order.
    pub debs: Vec<PathBuf>,
    /// Folder the extension is written to.
    pub output: PathBuf,
    pub format: Format,
    /// Leave out (and list) files outside `/usr` rather than refusing.
    pub drop_outside_usr: bool,
}

/// What [`build`] made; printed as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Built {
    pub name: String,
    pub path: PathBuf,
    pub format: Format,
    pub fits: Fits,
    pub architecture: String,
    /// `sha256-<hex>` of the image (Ignition's `verification.hash`); none
    /// for a folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    pub bytes: u64,
    /// Files of the input outside `/usr` that were left out.
    pub dropped: Vec<String>,
}

pub fn build(opts: &SysextOptions) -> Result<Built> {
    check_name(&opts.name)?;
    match &opts.fits {
        Fits::Level(l) => check_release_value(l, "SYSEXT_LEVEL")?,
        Fits::OsVersion(v) => check_release_value(v, "--os-version")?,
    }
    if opts.dir.is_none() && opts.debs.is_empty() {
        bail!(
            "nothing to put in extension `{}`: give --dir, --deb, or both",
            opts.name
        );
    }
    let output = std::path::absolute(&opts.output).with_context(|| format!("--output {}", opts.output.display()))?;
    if let Some(dir) = &opts.dir {
        let input = dir.canonicalize().with_context(|| format!("--dir {}", dir.display()))?;
        if output.starts_with(&input) || input.starts_with(output.join(&opts.name)) {
            bail!(
                "--output {} and --dir {} overlap: the extension would be written over its own input",
                opts.output.display(),
                dir.display()
            );
        }
    }
    fs::create_dir_all(&opts.output).with_context(|| format!("creating {}", opts.output.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".sysext-")
        .tempdir_in(&opts.output)
        .with_context(|| format!("making a work folder in {}", opts.output.display()))?;
    let tree = work.path().join("tree");
    fs::create_dir_all(&tree)?;
    let mut dropped = Vec::new();
    if let Some(dir) = &opts.dir {
        let what = format!("--dir {}", dir.display());
        merge_root(dir, &tree, &what, opts.drop_outside_usr, &mut dropped)?;
    }
    for (i, deb) in opts.debs.iter().enumerate() {
        let unpacked = work.path().join(format!("deb-{i}"));
        Cmd::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&unpacked)
            .run()
            .with_context(|| format!("unpacking {}", deb.display()))?;
        let what = format!("--deb {}", deb.display());
        merge_root(&unpacked, &tree, &what, opts.drop_outside_usr, &mut dropped)?;
    }
    if !tree.join("usr").is_dir() {
        bail!(
            "extension `{}` would be empty: its inputs hold nothing under /usr",
            opts.name
        );
    }
    let release_dir = tree.join(RELEASE_DIR);
    if release_dir.exists() {
        bail!(
            "the inputs already hold /{RELEASE_DIR}: cairn-build writes the extension's release file itself (from --os-version or the manifest's Debian release)"
        );
    }
    fs::create_dir_all(&release_dir)?;
    let has_units = fs::read_dir(tree.join(UNIT_DIR)).is_ok_and(|mut d| d.next().is_some());
    fs::write(
        release_dir.join(format!("extension-release.{}", opts.name)),
        extension_release(&opts.fits, opts.arch, has_units),
    )?;

    let (path, hash, bytes) = match opts.format {
        Format::Squashfs => {
            let path = opts.output.join(format!("{}.raw", opts.name));
            let partial = work.path().join("image.raw");
            Cmd::new("mksquashfs")
                .arg(&tree)
                .arg(&partial)
                .args(["-noappend", "-comp", "zstd", "-all-root", "-no-progress"])
                .env("SOURCE_DATE_EPOCH", crate::compose::SOURCE_DATE_EPOCH)
                .run()
                .context("writing the squashfs image with mksquashfs")?;
            let data = fs::read(&partial)?;
            fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
            let hash = format!("sha256-{}", hex::encode(Sha256::digest(&data)));
            (path, Some(hash), data.len() as u64)
        }
        Format::Dir => {
            let path = opts.output.join(&opts.name);
            if path.symlink_metadata().is_ok() {
                // Only an extension of this name is replaced, never a
                // folder that merely has its name.
                let ours = path.join(RELEASE_DIR).join(format!("extension-release.{}", opts.name));
                if !path.is_dir() || path.is_symlink() || !ours.is_file() {
                    bail!(
                        "{} exists and is not an extension named `{}` (no {}): not replacing it",
                        path.display(),
                        opts.name,
                        ours.display()
                    );
                }
                let old = work.path().join("replaced");
                fs::rename(&path, &old).with_context(|| format!("moving {} aside", path.display()))?;
            }
            fs::rename(&tree, &path).with_context(|| format!("writing {}", path.display()))?;
            let bytes = Cmd::new("du")
                .args(["-sb"])
                .arg(&path)
                .output()?
                .stdout
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (path, None, bytes)
        }
    };
    tracing::info!(name = %opts.name, path = %path.display(), bytes, "system extension written");
    Ok(Built {
        name: opts.name.clone(),
        path,
        format: opts.format,
        fits: opts.fits.clone(),
        architecture: systemd_architecture(opts.arch).to_owned(),
        hash,
        bytes,
        dropped,
    })
}

/// Copy root tree `root`'s `/usr` (and merged-usr folders, moved under it)
/// into `tree`; anything else is refused, or left out and recorded in
/// `dropped` when `drop` is set.
fn merge_root(root: &Path, tree: &Path, what: &str, drop: bool, dropped: &mut Vec<String>) -> Result<()> {
    let mut outside = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(root)
        .with_context(|| format!("{what}: reading {}", root.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let top = e.file_name().to_string_lossy().into_owned();
        match usr_place(&top) {
            Some(place) if e.file_type()?.is_dir() => {
                let dest = tree.join(&place);
                fs::create_dir_all(&dest)?;
                Cmd::new("cp")
                    .args(["-a", "--no-target-directory"])
                    .arg(e.path())
                    .arg(&dest)
                    .run()
                    .with_context(|| format!("{what}: copying /{top}"))?;
            }
            _ => outside.push(format!("/{top}")),
        }
    }
    if outside.is_empty() {
        return Ok(());
    }
    if drop {
        for o in &outside {
            tracing::warn!(input = %what, path = %o, "outside /usr: left out of the extension");
        }
        dropped.extend(outside.into_iter().map(|o| format!("{what}: {o}")));
        return Ok(());
    }
    bail!(
        "{what} holds {} outside /usr, which a system extension cannot carry (on Cairn /etc is each host's, placed by provisioning, and /opt is /var/opt); leave them out with --drop-outside-usr",
        outside.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_file_says_what_systemd_checks() {
        assert_eq!(
            extension_release(&Fits::Level("trixie".into()), Arch::X86_64, false),
            "# Written by cairn-build sysext.\nID=cairn\nSYSEXT_LEVEL=trixie\nARCHITECTURE=x86-64\n"
        );
        assert_eq!(
            extension_release(&Fits::OsVersion("1.2.3".into()), Arch::Aarch64, true),
            "# Written by cairn-build sysext.\nID=cairn\nVERSION_ID=1.2.3\nARCHITECTURE=arm64\nEXTENSION_RELOAD_MANAGER=1\n"
        );
    }

    #[test]
    fn names_and_places_follow_systemd_and_merged_usr() {
        for good in ["kubelet", "kubelet-1.34.1", "debug_tools.x86-64"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "kubelet.raw", "white space", "ünï"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(usr_place("usr").as_deref(), Some("usr"));
        assert_eq!(usr_place("lib").as_deref(), Some("usr/lib"));
        assert_eq!(usr_place("sbin").as_deref(), Some("usr/sbin"));
        assert_eq!(usr_place("etc"), None);
        assert_eq!(usr_place("opt"), None);
        assert!(check_release_value("1.0.0", "v").is_ok());
        assert!(check_release_value("1.0 0", "v").is_err());
    }

    #[test]
    fn a_folder_becomes_an_extension_and_what_is_outside_usr_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in");
        fs::create_dir_all(input.join("usr/bin")).unwrap();
        fs::write(input.join("usr/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        fs::create_dir_all(input.join("lib/systemd/system")).unwrap();
        fs::write(input.join("lib/systemd/system/hello.service"), "[Service]\n").unwrap();
        fs::create_dir_all(input.join("etc/default")).unwrap();
        fs::write(input.join("etc/default/hello"), "X=1\n").unwrap();
        let opts = |drop: bool| SysextOptions {
            name: "hello".into(),
            arch: Arch::X86_64,
            fits: Fits::Level("trixie".into()),
            dir: Some(input.clone()),
            debs: Vec::new(),
            output: d.path().join("out"),
            format: Format::Dir,
            drop_outside_usr: drop,
        };
        let e = build(&opts(false)).unwrap_err();
        assert!(format!("{e:#}").contains("holds /etc outside /usr"), "{e:#}");
        assert!(
            !d.path().join("out/hello").exists(),
            "a refused build leaves no extension"
        );
        let built = build(&opts(true)).unwrap();
        assert_eq!(built.dropped, [format!("--dir {}: /etc", input.display())]);
        let out = d.path().join("out/hello");
        assert!(out.join("usr/bin/hello").is_file());
        assert!(out.join("usr/lib/systemd/system/hello.service").is_file(), "merged-usr");
        assert_eq!(
            fs::read_to_string(out.join("usr/lib/extension-release.d/extension-release.hello")).unwrap(),
            extension_release(&Fits::Level("trixie".into()), Arch::X86_64, true),
            "it carries a unit"
        );
        let leftovers: Vec<_> = fs::read_dir(d.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["hello"], "no work folder left behind");
        // Built again, the extension is replaced; a folder that is not one
        // is not, and an output inside the input is refused.
        build(&opts(true)).unwrap();
        fs::create_dir_all(d.path().join("elsewhere/hello/data")).unwrap();
        let other = SysextOptions {
            output: d.path().join("elsewhere"),
            ..opts(true)
        };
        let e = build(&other).unwrap_err();
        assert!(format!("{e:#}").contains("is not an extension named `hello`"), "{e:#}");
        assert!(
            d.path().join("elsewhere/hello/data").is_dir(),
            "the folder is left as it was"
        );
        let inside = SysextOptions {
            output: input.join("out"),
            ..opts(true)
        };
        let e = build(&inside).unwrap_err();
        assert!(format!("{e:#}").contains("overlap"), "{e:#}");
    }
}
