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
const BUILD: &[&str] = &[
    "mmdebstrap",
    "ostree",
    "gnupg",
    "e2fsprogs",
    "grub-common",
    "dpkg-dev",
    "zstd",
];
/// Debian release the host tools come from.
const RELEASE: &str = "bookworm";
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/cairn-backports.sources";

fn qemu_packages(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["qemu-system-x86", "qemu-utils", "ovmf"],
        Arch::Aarch64 => &["qemu-system-arm", "qemu-utils", "qemu-efi-aarch64"],
    }
}

/// Building for a foreign architecture: Debian's Rust with the target's std
/// (rustup here has only the host's), the C cross compiler (zstd-sys,
/// aws-lc-sys), and qemu-user registered with binfmt_misc so the target's
/// package scripts and dracut run in its rootfs.
pub fn ensure_cross_tools(arch: Arch) -> Result<()> {
    if Arch::host() == Some(arch) {
        return Ok(());
    }
    let foreign = arch.debian();
    let listed = Cmd::new("dpkg").arg("--print-foreign-architectures").output()?.stdout;
    if !listed.lines().any(|a| a.trim() == foreign) {
        require_root(&format!("dpkg --add-architecture {foreign}"))?;
        Cmd::new("dpkg").args(["--add-architecture", foreign]).run()?;
        apt_get(&["update"])?;
    }
    let std_lib = format!("libstd-rust-web-dev:{foreign}");
    let gcc = format!("gcc-{}", crate::cross::gnu_triple(arch));
    let libc = format!("libc6-dev-{foreign}-cross");
    ensure(&["rustc-web", "cargo-web", &std_lib, &gcc, &libc], &[])?;
    ensure_foreign_root(arch)
}

/// Building a foreign architecture's root: qemu-user, registered with binfmt_misc.
pub fn ensure_foreign_root(arch: Arch) -> Result<()> {
    if Arch::host() == Some(arch) {
        return Ok(());
    }
    ensure(&[], &["qemu-user-static"])?;
    register_binfmt(arch)
}

/// Register qemu-user for `arch` with the kernel (no systemd-binfmt in
/// containers), mounting binfmt_misc first if needed.
fn register_binfmt(arch: Arch) -> Result<()> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    let name = format!("qemu-{}", arch.as_str());
    if dir.join(&name).exists() {
        return Ok(());
    }
    require_root(&format!("registering {name} with binfmt_misc"))?;
    if !dir.join("register").exists() {
        Cmd::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(dir)
            .run()
            .context("mounting binfmt_misc")?;
    }
    let conf = format!("/usr/lib/binfmt.d/{name}.conf");
    let text = std::fs::read_to_string(&conf).with_context(|| format!("reading {conf} (from qemu-user-static)"))?;
    let rule = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .with_context(|| format!("{conf} has no rule"))?;
    std::fs::write(dir.join("register"), rule).with_context(|| format!("registering {name} with binfmt_misc"))?;
    tracing::info!("registered {name} with binfmt_misc");
    Ok(())
}

/// A static busybox for `arch`: this host's for its own architecture, else
/// the target's `busybox-static` package unpacked (not installed) in the cache.
pub fn static_busybox(arch: Arch, cache: &Path) -> Result<std::path::PathBuf> {
    if Arch::host() == Some(arch) {
        return Ok("/bin/busybox".into());
    }
    let dir = cache.join(format!("busybox-{}", arch.debian()));
    let binary = dir.join("bin/busybox");
    if binary.exists() {
        return Ok(binary);
    }
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    Cmd::new("apt-get")
        .args(["download", &format!("busybox-static:{}", arch.debian())])
        .current_dir(&download)
        .run()
        .context("downloading busybox-static")?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = download.join("root");
    Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).run()?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&unpacked, &dir)?;
    std::fs::remove_dir_all(&download)?;
    Ok(binary)
}

fn require_root(what: &str) -> Result<()> {
    let uid = Cmd::new("id").arg("-u").output()?.stdout;
    if uid.trim() != "0" {
        bail!("{what} needs root; run as root or do it by hand");
    }
    Ok(())
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
    let (firmware, emulators): (Vec<&str>, Vec<&str>) = qemu
        .iter()
        .partition(|p| p.starts_with("ovmf") || p.starts_with("qemu-efi"));
    plain.extend(firmware);
    ensure(&plain, &emulators)
}

fn ensure(plain: &[&str], from_backports: &[&str]) -> Result<()> {
    let missing: Vec<&str> = plain.iter().copied().filter(|p| !installed(p)).collect();
    let missing_bpo: Vec<&str> = from_backports.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() && missing_bpo.is_empty() {
        return Ok(());
    }
    require_root(&format!(
        "installing missing host packages {} (and from {RELEASE}-backports: {})",
        missing.join(" "),
        missing_bpo.join(" ")
    ))?;
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
