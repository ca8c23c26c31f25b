//! A user's own apt repository, made for tests the way a small vendor
//! makes one: packages built with `dpkg-deb`, indices with
//! `apt-ftparchive`, the `Release` file signed with `gpg` (clearsigned
//! `InRelease` and a detached `Release.gpg`). Served by
//! [`crate::http::Server`] on loopback.
//!
//! The repository is the same bytes at every run (packages, indices and
//! signatures, with the fixture key at a fixed time), so the package layer
//! of an image built from it is cached like any other: CI's warm runs
//! reuse it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;

/// The distribution and component the repository serves.
pub const SUITE: &str = "stable";
pub const COMPONENT: &str = "main";

/// Its signing key, public (for the manifest) and secret (test only).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apt-repo")
}
pub fn public_key() -> PathBuf {
    fixtures().join("repository-key.asc")
}
/// A key that did not sign it.
pub fn other_key() -> PathBuf {
    fixtures().join("other-key.asc")
}

/// The repository's own package: `cairn-hello`, whose
/// `/usr/bin/cairn-hello` prints [`HELLO_SAYS`].
pub const HELLO: &str = "cairn-hello";
pub const HELLO_SAYS: &str = "hello from the user's own apt repository";
/// A package Debian has too (`hello` 2.10), at a lower version here: apt
/// takes this one only under a pin of 1001 (a downgrade). Its
/// `/usr/bin/hello` prints [`PINNED_SAYS`].
pub const PINNED: &str = "hello";
pub const PINNED_VERSION: &str = "1.0~cairn";
pub const PINNED_SAYS: &str = "hello from the pinned repository";

/// The `Date:` of the repository's `Release`, and the time it is signed
/// at: fixed, so the signature is the same bytes every time (Ed25519 is
/// deterministic).
const RELEASE_DATE: &str = "Tue, 01 Dec 2026 00:05:00 UTC";

/// How the repository is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// `InRelease` and `Release.gpg`, by the fixture key.
    Signed,
    /// `Release` and its detached `Release.gpg` only, as older
    /// repositories are.
    Detached,
    /// `Release` only.
    Unsigned,
}

/// Make the repository in `root` for `arch`.
pub fn write(root: &Path, arch: Arch, signing: Signing) -> Result<()> {
    let pool = root.join("pool").join(COMPONENT);
    fs::create_dir_all(&pool)?;
    build_package(&pool, arch, HELLO, "1.0", HELLO_SAYS)?;
    build_package(&pool, arch, PINNED, PINNED_VERSION, PINNED_SAYS)?;
    let dist = root.join("dists").join(SUITE);
    let binary = dist.join(COMPONENT).join(format!("binary-{}", arch.debian()));
    fs::create_dir_all(&binary)?;
    let packages = Cmd::new("apt-ftparchive")
        .args(["packages", "pool"])
        .current_dir(root)
        .output()
        .context("apt-ftparchive packages")?
        .stdout;
    fs::write(binary.join("Packages"), &packages)?;
    let release = Cmd::new("apt-ftparchive")
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Suite={SUITE}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Codename={SUITE}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Components={COMPONENT}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Architectures={}", arch.debian()))
        .args(["-o", "APT::FTPArchive::Release::Origin=Cairn test"])
        .args(["-o", "APT::FTPArchive::Release::Label=Cairn test"])
        .args(["release", "."])
        .current_dir(&dist)
        .output()
        .context("apt-ftparchive release")?
        .stdout;
    fs::write(dist.join("Release"), with_date(&release, RELEASE_DATE))?;
    match signing {
        Signing::Signed => sign(&dist, true)?,
        Signing::Detached => sign(&dist, false)?,
        Signing::Unsigned => {}
    }
    Ok(())
}

/// `release` with its `Date:` line replaced (apt-ftparchive writes now).
pub fn with_date(release: &str, date: &str) -> String {
    release
        .lines()
        .map(|l| {
            if l.starts_with("Date:") {
                format!("Date: {date}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Package `name` at `version`, whose `/usr/bin/<name>` prints `says`,
/// built reproducibly (root-owned, files dated `SOURCE_DATE_EPOCH`).
fn build_package(pool: &Path, arch: Arch, name: &str, version: &str, says: &str) -> Result<PathBuf> {
    let work = tempfile::tempdir()?;
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("DEBIAN"))?;
    fs::create_dir_all(tree.join("usr/bin"))?;
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {}\nMaintainer: Cairn tests <test@cairn.invalid>\nDescription: a package from the user's own repository\n",
            arch.debian()
        ),
    )?;
    let bin = tree.join("usr/bin").join(name);
    fs::write(&bin, format!("#!/bin/sh\necho \"{says}\"\n"))?;
    Cmd::new("chmod").args(["0755"]).arg(&bin).run()?;
    Cmd::new("chmod").args(["0755"]).arg(tree.join("usr/bin")).run()?;
    let deb = pool.join(format!("{name}_{version}_{}.deb", arch.debian()));
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", "1764547200")
        .run()
        .context("dpkg-deb --build")?;
    Ok(deb)
}

/// `Release.gpg` beside `dist/Release`, and `InRelease` if `inline`, by
/// the fixture key at [`RELEASE_DATE`].
fn sign(dist: &Path, inline: bool) -> Result<()> {
    let home = tempfile::tempdir()?;
    let gpg = |args: &[&str]| {
        Cmd::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args([
                "--batch",
                "--yes",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
    };
    gpg(&["--import"])
        .arg(fixtures().join("repository-secret-key.asc"))
        .run()
        .context("importing the test repository's key")?;
    // Just after the key was made (2026-12-01 00:04:02 UTC): gpg signs only
    // with a key older than the signature.
    let at = ["--faked-system-time", "20261201T000500!", "--digest-algo", "SHA256"];
    if inline {
        gpg(&at)
            .args(["--clearsign", "--output"])
            .arg(dist.join("InRelease"))
            .arg(dist.join("Release"))
            .run()
            .context("signing InRelease")?;
    }
    gpg(&at)
        .args(["--armor", "--detach-sign", "--output"])
        .arg(dist.join("Release.gpg"))
        .arg(dist.join("Release"))
        .run()
        .context("signing Release.gpg")?;
    Ok(())
}

/// The repository's name in a manifest.
pub const NAME: &str = "cairn-test";

/// `manifest` (a manifest's text) with the repository served at `url`
/// defined (trusting `key`, pinned at `priority` if given) and named by
/// `flavor`.
pub fn in_manifest(manifest: &str, flavor: &str, url: &str, key: &Path, priority: Option<i32>) -> String {
    let header = format!("[flavors.{flavor}]\n");
    assert!(manifest.contains(&header), "the manifest has no {header}");
    let mut text = manifest.replacen(&header, &format!("{header}repositories = [\"{NAME}\"]\n"), 1);
    text.push_str(&format!(
        "\n[[repositories]]\nname = \"{NAME}\"\nurl = \"{url}\"\nsuites = [\"{SUITE}\"]\ncomponents = [\"{COMPONENT}\"]\nkey = \"{}\"\n",
        key.display()
    ));
    if let Some(p) = priority {
        text.push_str(&format!("priority = {p}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_defined_and_named_by_one_flavor() {
        let m = "[flavors.dev]\npackage-sets = []\n\n[flavors.node]\npackage-sets = []\n";
        let text = in_manifest(m, "node", "http://127.0.0.1:1", Path::new("/k.asc"), Some(1001));
        assert!(
            text.starts_with("[flavors.dev]\npackage-sets = []\n\n[flavors.node]\nrepositories = [\"cairn-test\"]\n"),
            "{text}"
        );
        assert!(text.ends_with("key = \"/k.asc\"\npriority = 1001\n"), "{text}");
    }

    #[test]
    fn the_release_date_is_fixed() {
        let r = "Origin: x\nDate: Mon, 30 Nov 2026 23:59:59 UTC\nSHA256:\n abc 1 main/Packages\n";
        assert_eq!(
            with_date(r, RELEASE_DATE),
            "Origin: x\nDate: Tue, 01 Dec 2026 00:05:00 UTC\nSHA256:\n abc 1 main/Packages\n"
        );
    }
}
