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

/// The repository's package: `cairn-hello`, whose `/usr/bin/cairn-hello`
/// prints [`HELLO_SAYS`].
pub const HELLO: &str = "cairn-hello";
pub const HELLO_SAYS: &str = "hello from the user's own apt repository";

/// The `Date:` of the repository's `Release`, and the time it is signed
/// at: fixed, so the signature is the same bytes every time (Ed25519 is
/// deterministic).
const RELEASE_DATE: &str = "Tue, 01 Dec 2026 00:05:00 UTC";

/// How the repository is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// `InRelease` and `Release.gpg`, by the fixture key.
    Signed,
    /// `Release` only.
    Unsigned,
}

/// Make the repository in `root` for `arch`.
pub fn write(root: &Path, arch: Arch, signing: Signing) -> Result<()> {
    let pool = root.join("pool").join(COMPONENT);
    fs::create_dir_all(&pool)?;
    build_hello(&pool, arch)?;
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
    if signing == Signing::Signed {
        sign(&dist)?;
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

/// The package, built reproducibly (root-owned, files dated
/// `SOURCE_DATE_EPOCH`).
fn build_hello(pool: &Path, arch: Arch) -> Result<PathBuf> {
    let work = tempfile::tempdir()?;
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("DEBIAN"))?;
    fs::create_dir_all(tree.join("usr/bin"))?;
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {HELLO}\nVersion: 1.0\nArchitecture: {}\nMaintainer: Cairn tests <test@cairn.invalid>\nDescription: a package from the user's own repository\n",
            arch.debian()
        ),
    )?;
    let bin = tree.join("usr/bin").join(HELLO);
    fs::write(&bin, format!("#!/bin/sh\necho \"{HELLO_SAYS}\"\n"))?;
    Cmd::new("chmod").args(["0755"]).arg(&bin).run()?;
    Cmd::new("chmod").args(["0755"]).arg(tree.join("usr/bin")).run()?;
    let deb = pool.join(format!("{HELLO}_1.0_{}.deb", arch.debian()));
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", "1764547200")
        .run()
        .context("dpkg-deb --build")?;
    Ok(deb)
}

/// `InRelease` and `Release.gpg` beside `dist/Release`, by the fixture key
/// at [`RELEASE_DATE`].
fn sign(dist: &Path) -> Result<()> {
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
    gpg(&at)
        .args(["--clearsign", "--output"])
        .arg(dist.join("InRelease"))
        .arg(dist.join("Release"))
        .run()
        .context("signing InRelease")?;
    gpg(&at)
        .args(["--armor", "--detach-sign", "--output"])
        .arg(dist.join("Release.gpg"))
        .arg(dist.join("Release"))
        .run()
        .context("signing Release.gpg")?;
    Ok(())
}

/// The manifest's `[[repositories]]` entry for the repository served at
/// `url`, trusting `key`.
pub fn manifest_entry(url: &str, key: &Path) -> String {
    format!(
        "\n[[repositories]]\nname = \"cairn-test\"\nurl = \"{url}\"\nsuites = [\"{SUITE}\"]\ncomponents = [\"{COMPONENT}\"]\nkey = \"{}\"\n",
        key.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_date_is_fixed() {
        let r = "Origin: x\nDate: Mon, 30 Nov 2026 23:59:59 UTC\nSHA256:\n abc 1 main/Packages\n";
        assert_eq!(
            with_date(r, RELEASE_DATE),
            "Origin: x\nDate: Tue, 01 Dec 2026 00:05:00 UTC\nSHA256:\n abc 1 main/Packages\n"
        );
    }
}
