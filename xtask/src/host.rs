//! Host tools: installed with apt when missing. QEMU comes from
//! `<release>-backports`, whose entry is derived from the host's own mirror
//! (the machine's preinstalled qemu-utils is a backport, and bookworm's
//! qemu-system would remove it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use cairn_builder::apt_sources;
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;

/// What building an image needs on the host (`curl` fetches each Debian
/// suite's `InRelease`, the archive state the package layer is keyed by).
const BUILD: &[&str] = &[
    "mmdebstrap",
    "ostree",
    "gnupg",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "dpkg-dev",
    "zstd",
    // Decompresses the kernel's .ko.xz modules (Debian 13) in the build.
    "xz-utils",
    "curl",
    // `cairn-build sysext` writes system extensions as squashfs images.
    "squashfs-tools",
];
/// Debian release the host tools come from.
const RELEASE: &str = "bookworm";
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/cairn-backports.sources";

/// What mmdebstrap (1.3.5) needs of the host to build a root of a foreign
/// architecture: `arch-test` (else "install arch-test for foreign
/// architecture support"), and qemu-user registered with binfmt_misc,
/// whose `/usr/bin/qemu-<arch>-static` it copies into the root (from
/// `qemu-user-static`, taken from backports like QEMU).
const MMDEBSTRAP_FOREIGN: &[&str] = &["arch-test"];
const MMDEBSTRAP_FOREIGN_BACKPORTS: &[&str] = &["qemu-user-static"];

fn qemu_packages(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["qemu-system-x86", "qemu-utils", "ovmf"],
        Arch::Aarch64 => &["qemu-system-arm", "qemu-utils", "qemu-efi-aarch64"],
    }
}

/// What an xtask command does that needs host tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `kernel-check`: the package layer, no agent.
    KernelCheck,
    /// `build`: the package layer, the agent, the image.
    Build,
    /// `run`, `test`, `bench`, `setup`: build, then boot in QEMU.
    Vm,
}

/// The host set-up a task needs (pure, so what each command installs is
/// tested).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// Packages from the host's release.
    pub packages: Vec<String>,
    /// Packages from `<release>-backports`.
    pub backports: Vec<String>,
    /// A dpkg architecture to add (the target's std and libc for the agent).
    pub foreign_dpkg_arch: Option<&'static str>,
    /// qemu-user registered with binfmt_misc for this architecture.
    pub binfmt: Option<Arch>,
}

/// What `task` for `arch` needs on a host of architecture `host`.
pub fn setup(task: Task, arch: Arch, host: Option<Arch>) -> Setup {
    let foreign = host != Some(arch);
    let mut s = Setup::default();
    let add = |list: &mut Vec<String>, items: &[&str]| list.extend(items.iter().map(|p| p.to_string()));
    add(&mut s.packages, BUILD);
    if foreign {
        // The package layer through qemu-user.
        add(&mut s.packages, MMDEBSTRAP_FOREIGN);
        add(&mut s.backports, MMDEBSTRAP_FOREIGN_BACKPORTS);
        s.binfmt = Some(arch);
    }
    if foreign && task != Task::KernelCheck {
        // The agent, cross-built with Debian's Rust (rustup here has only
        // the host's std) and the C cross compiler (zstd-sys, aws-lc-sys).
        let d = arch.debian();
        s.foreign_dpkg_arch = Some(d);
        s.packages.extend([
            "rustc-web".to_owned(),
            "cargo-web".to_owned(),
            format!("libstd-rust-web-dev:{d}"),
            format!("gcc-{}", crate::cross::gnu_triple(arch)),
            format!("libc6-dev-{d}-cross"),
        ]);
    }
    if task == Task::Vm {
        // python3-venv: python-tuf for the TUF conformance tests (see `ensure_python_tuf`).
        add(&mut s.packages, &["busybox-static", "python3-venv"]);
        // `disk_check` verifies the GPT with `sgdisk -v` (fsck.fat and e2fsck come with BUILD).
        add(&mut s.packages, &["gdisk"]);
        // The provisioning tests log in with OpenSSH's client (and make its keys).
        add(&mut s.packages, &["openssh-client"]);
        // NoCloud seeds as ISO 9660 volumes, as cloud-init's docs make them.
        add(&mut s.packages, &["xorriso"]);
        // The agent's metrics are read by Prometheus's own Python client's
        // parser (`tests/prometheus_conformance.rs`).
        add(&mut s.packages, &["python3-prometheus-client"]);
        // The Kubernetes API stand-in is reached over HTTPS: its CA and
        // certificate made by openssl, TLS by socat (`kube_api::serve_tls`).
        add(&mut s.packages, &["openssl", "socat"]);
        // The node image's test repository is made with apt-ftparchive.
        add(&mut s.packages, &["apt-utils"]);
        // Firmware packages are architecture-independent: the main suite
        // is fine; the emulators come from backports.
        let (firmware, emulators): (Vec<&str>, Vec<&str>) = qemu_packages(arch)
            .iter()
            .partition(|p| p.starts_with("ovmf") || p.starts_with("qemu-efi"));
        add(&mut s.packages, &firmware);
        add(&mut s.backports, &emulators);
    }
    // `cairn-build image` writes qcow2, VHD and VMDK with qemu-img (from
    // backports, as QEMU: see the module's documentation).
    if task != Task::KernelCheck && !s.backports.iter().any(|p| p == "qemu-utils") {
        s.backports.push("qemu-utils".to_owned());
    }
    s
}

/// Install and register what `task` for `arch` needs on this host.
pub fn prepare(task: Task, arch: Arch) -> Result<()> {
    let s = setup(task, arch, Arch::host());
    let mut update = false;
    if let Some(foreign) = s.foreign_dpkg_arch {
        let listed = Cmd::new("dpkg").arg("--print-foreign-architectures").output()?.stdout;
        if !listed.lines().any(|a| a.trim() == foreign) {
            require_root(&format!("dpkg --add-architecture {foreign}"))?;
            Cmd::new("dpkg").args(["--add-architecture", foreign]).run()?;
            update = true;
        }
    }
    let plain: Vec<&str> = s.packages.iter().map(String::as_str).collect();
    let backports: Vec<&str> = s.backports.iter().map(String::as_str).collect();
    ensure(&plain, &backports, update)?;
    if let Some(arch) = s.binfmt {
        register_binfmt(arch)?;
    }
    Ok(())
}

/// python-tuf, the TUF reference client the conformance tests
/// (`qemu-tests/tests/tuf_conformance.rs`) check published repositories
/// with. Debian 12 and its backports do not package it (no
/// `python3-tuf`), so pinned releases from PyPI go into a virtual
/// environment in the cache, made with Debian's Python and python3-venv
/// (installed by `prepare(Task::Vm, …)`) and marked complete only once pip
/// succeeded: the tests themselves need no network. Returns its interpreter.
pub fn ensure_python_tuf(cache: &Path) -> Result<std::path::PathBuf> {
    const PINNED: &[&str] = &["tuf==7.0.1", "securesystemslib==1.6.0", "urllib3==2.8.0"];
    let venv = cache.join("python-tuf-7.0.1");
    let python = venv.join("bin/python3");
    let done = venv.join(".cairn-complete");
    if done.exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    Cmd::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .run()
        .context("creating a virtual environment for python-tuf")?;
    Cmd::new(venv.join("bin/pip"))
        .args(["install", "--disable-pip-version-check", "--no-input"])
        .args(PINNED)
        .progress()
        .run()
        .context("installing python-tuf from PyPI")?;
    std::fs::write(&done, PINNED.join("\n"))?;
    tracing::info!(python = %python.display(), "installed python-tuf");
    Ok(python)
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

/// Install the packages of `plain` and `from_backports` that are missing
/// (after `apt-get update`, also run when `update` says the lists are stale).
fn ensure(plain: &[&str], from_backports: &[&str], update: bool) -> Result<()> {
    let missing: Vec<&str> = plain.iter().copied().filter(|p| !installed(p)).collect();
    let missing_bpo: Vec<&str> = from_backports.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() && missing_bpo.is_empty() {
        if update {
            apt_get(&["update"])?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: [Task; 3] = [Task::KernelCheck, Task::Build, Task::Vm];

    fn all(s: &Setup) -> Vec<&str> {
        s.packages.iter().chain(&s.backports).map(String::as_str).collect()
    }

    #[test]
    fn every_task_that_builds_a_foreign_root_installs_what_mmdebstrap_needs() {
        for task in TASKS {
            let s = setup(task, Arch::Aarch64, Some(Arch::X86_64));
            for p in MMDEBSTRAP_FOREIGN.iter().chain(MMDEBSTRAP_FOREIGN_BACKPORTS) {
                assert!(all(&s).contains(p), "{task:?} for aarch64 misses {p}: {s:?}");
            }
            assert!(s.packages.contains(&"arch-test".to_owned()), "{task:?}: {s:?}");
            assert!(s.backports.contains(&"qemu-user-static".to_owned()), "{task:?}: {s:?}");
            assert_eq!(s.binfmt, Some(Arch::Aarch64), "{task:?}");
            for p in BUILD {
                assert!(s.packages.contains(&p.to_string()), "{task:?} misses {p}");
            }
        }
    }

    #[test]
    fn native_builds_need_no_emulation_and_vm_tasks_get_qemu() {
        for task in TASKS {
            let s = setup(task, Arch::X86_64, Some(Arch::X86_64));
            assert!(!all(&s).contains(&"arch-test"), "{task:?}: {s:?}");
            assert_eq!((s.binfmt, s.foreign_dpkg_arch), (None, None), "{task:?}");
            assert!(s.packages.contains(&"curl".to_owned()), "InRelease fetches: {task:?}");
        }
        let vm = setup(Task::Vm, Arch::X86_64, Some(Arch::X86_64));
        assert!(vm.backports.contains(&"qemu-system-x86".to_owned()), "{vm:?}");
        assert!(vm.packages.contains(&"ovmf".to_owned()), "{vm:?}");
        assert!(
            vm.packages.contains(&"python3-venv".to_owned()),
            "python-tuf's venv: {vm:?}"
        );
        assert!(
            vm.packages.contains(&"python3-prometheus-client".to_owned()),
            "the metrics' conformance test: {vm:?}"
        );
        let check = setup(Task::KernelCheck, Arch::Aarch64, Some(Arch::X86_64));
        assert_eq!(check.foreign_dpkg_arch, None, "kernel-check builds no agent");
        let build = setup(Task::Build, Arch::Aarch64, Some(Arch::X86_64));
        assert_eq!(build.foreign_dpkg_arch, Some("arm64"));
        for task in [Task::Build, Task::Vm] {
            let s = setup(task, Arch::X86_64, Some(Arch::X86_64));
            let qemu_img = s.backports.iter().filter(|p| *p == "qemu-utils").count();
            assert_eq!(qemu_img, 1, "image formats need qemu-img: {task:?}: {s:?}");
        }
        assert!(
            build.packages.contains(&"libstd-rust-web-dev:arm64".to_owned()),
            "{build:?}"
        );
    }

    /// The mmdebstrap installed here asks for nothing the list lacks (its
    /// "install X for foreign architecture support" errors, and the static
    /// qemu it copies into a foreign root).
    #[test]
    fn the_installed_mmdebstrap_asks_for_nothing_more() {
        let Ok(source) = std::fs::read_to_string("/usr/bin/mmdebstrap") else {
            eprintln!("mmdebstrap is not installed: nothing to compare with");
            return;
        };
        let asked: Vec<&str> = source
            .lines()
            .filter(|l| l.contains("for foreign architecture support"))
            .filter_map(|l| l.split("install ").nth(1)?.split_whitespace().next())
            .collect();
        assert!(asked.contains(&"arch-test"), "{asked:?}");
        for p in asked {
            assert!(MMDEBSTRAP_FOREIGN.contains(&p), "mmdebstrap asks for {p}");
        }
        assert!(
            source.contains("/usr/bin/qemu-$options->{qemu}-static"),
            "mmdebstrap copies qemu-user-static's binary into a foreign root"
        );
    }
}
