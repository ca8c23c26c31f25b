//! Host tools: installed with apt when missing. QEMU comes from
//! `<release>-backports`, whose entry is derived from the host's own mirror
//! (the machine's preinstalled qemu-utils is a backport, and bookworm's
//! qemu-system would remove it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use cairn_builder::apt_sources;
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;

/// What building an image needs on the host.
const BUILD: &[&str] = &["mmdebstrap", "ostree", "gnupg", "e2fsprogs", "grub-common", "dpkg-dev", "zstd"];
/// Debian release the host tools come from.
const RELEASE: &str = "bookworm";
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/cairn-backports.sources";

fn qemu_packages(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["qemu-system-x86", "qemu-utils", "ovmf"],
        Arch::Aarch64 => &["qemu-system-arm", "qemu-utils", "qemu-efi-aarch64"],
    }
}

fn installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.stdout.trim() == "install ok installed")
}

/// Packages for building images.
pub fn ensure_build_tools() -> Result<()> {
    ensure(BUILD, &[])
}

/// Packages for building, booting and testing images of `arch`.
pub fn ensure_vm_tools(arch: Arch) -> Result<()> {
    let mut plain: Vec<&str> = BUILD.to_vec();
    plain.push("busybox-static");
    let qemu = qemu_packages(arch);
    // Firmware packages are architecture-independent: main suite is fine.
    let (firmware, emulators): (Vec<&str>, Vec<&str>) = qemu.iter().partition(|p| p.starts_with("ovmf") || p.starts_with("qemu-efi"));
    plain.extend(firmware);
    ensure(&plain, &emulators)
}

fn ensure(plain: &[&str], from_backports: &[&str]) -> Result<()> {
    let missing: Vec<&str> = plain.iter().copied().filter(|p| !installed(p)).collect();
    let missing_bpo: Vec<&str> = from_backports.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() && missing_bpo.is_empty() {
        return Ok(());
    }
    let uid = Cmd::new("id").arg("-u").output()?.stdout;
    if uid.trim() != "0" {
        bail!(
            "missing host packages: {} (and from {RELEASE}-backports: {}); run as root or install them",
            missing.join(" "),
            missing_bpo.join(" ")
        );
    }
    tracing::info!(packages = ?missing, backports = ?missing_bpo, "installing host packages");
    if !missing_bpo.is_empty() {
        add_backports()?;
    }
    apt_get(&["update"])?;
    if !missing.is_empty() {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        apt_get(&args)?;
    }
    if !missing_bpo.is_empty() {
        let target = format!("{RELEASE}-backports");
        let mut args = vec!["install", "-y", "--no-install-recommends", "-t", target.as_str()];
        args.extend(&missing_bpo);
        apt_get(&args)?;
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<()> {
    Cmd::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .progress()
        .run()
        .context("apt-get")
}

/// Add `<release>-backports` from the host's own Debian mirror.
fn add_backports() -> Result<()> {
    if Path::new(BACKPORTS_SOURCE).exists() {
        return Ok(());
    }
    let mirrors = apt_sources::resolve(Path::new("/etc/apt"), RELEASE, None, None)?;
    let text = format!(
        "# Added by cairn's xtask: QEMU from {RELEASE}-backports, from this host's own mirror.\nTypes: deb\nURIs: {}\nSuites: {RELEASE}-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        mirrors.main
    );
    std::fs::write(BACKPORTS_SOURCE, text).with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
    tracing::info!(mirror = %mirrors.main, "added {RELEASE}-backports");
    Ok(())
}
