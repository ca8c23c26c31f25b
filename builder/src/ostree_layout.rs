//! Turn a Debian root filesystem into the tree ostree deploys.
//!
//! ostree deploys `/usr` read-only, merges `/usr/etc` with the host's `/etc`,
//! and keeps `/var` per stateroot: so `/etc` moves to `/usr/etc`, `/var` is
//! emptied (its directories are recreated by a generated tmpfiles.d file),
//! the kernel and initramfs move to `/usr/lib/modules/$KVER`, and the
//! top-level directories that hold state become symlinks into `/var`.
//! Everything here takes the root it works on; nothing touches `/`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::layout::{STATE_LINKS, USR_LOCAL_TARGET};

/// Directories emptied because their content is made at run time.
const EMPTIED: &[&str] = &["dev", "proc", "sys", "run", "tmp", "var", "boot"];

/// What the conversion found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Kernel release (`uname -r`) of the one kernel in the tree.
    pub kernel_release: String,
}

/// The single kernel release installed under `usr/lib/modules`.
pub fn kernel_release(root: &Path) -> Result<String> {
    let dir = root.join("usr/lib/modules");
    let mut found = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.path().join("modules.dep").exists()
            || root
                .join("boot")
                .join(format!("vmlinuz-{}", e.file_name().to_string_lossy()))
                .exists()
        {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no kernel in {} (is a linux-image package in the manifest?)",
            dir.display()
        ),
        _ => bail!("more than one kernel in {}: {}", dir.display(), found.join(", ")),
    }
}

/// Convert the tree at `root` in place.
pub fn convert(root: &Path) -> Result<Converted> {
    let kver = kernel_release(root)?;
    let moddir = root.join("usr/lib/modules").join(&kver);

    // Kernel and initramfs where ostree looks for them.
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{kver}"));
    if !moddir.join("vmlinuz").exists() {
        fs::copy(&vmlinuz, moddir.join("vmlinuz")).with_context(|| format!("copying {}", vmlinuz.display()))?;
    }
    if !moddir.join("initramfs.img").exists() {
        bail!(
            "no initramfs at {} (dracut did not run?)",
            moddir.join("initramfs.img").display()
        );
    }
    let config = root.join("boot").join(format!("config-{kver}"));
    if config.exists() {
        fs::copy(&config, moddir.join("config"))?;
    }

    // /var's directory skeleton, recreated at boot by tmpfiles.d.
    let mut tmpfiles = var_tmpfiles(root)?;

    for dir in EMPTIED {
        empty_dir(&root.join(dir))?;
    }

    // /etc → /usr/etc, with per-machine identity removed.
    let etc = root.join("etc");
    let usr_etc = root.join("usr/etc");
    if usr_etc.exists() {
        bail!("{} exists already: the tree was converted before", usr_etc.display());
    }
    fs::rename(&etc, &usr_etc).context("moving /etc to /usr/etc")?;
    // An empty machine-id makes systemd generate one at first boot.
    fs::write(usr_etc.join("machine-id"), b"")?;
    // The build host's name and the SSH host keys openssh-server's
    // installation made are no machine's: a host is named by provisioning
    // (or os-release's DEFAULT_HOSTNAME) and makes its keys at first boot.
    for f in ["hostname", "hostname.bak", "resolv.conf"] {
        let p = usr_etc.join(f);
        if p.symlink_metadata().is_ok() && !p.is_symlink() {
            fs::remove_file(&p)?;
        }
    }
    if let Ok(entries) = fs::read_dir(usr_etc.join("ssh")) {
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
    }

    // State directories become links into /var; /usr/local too. What the
    // packages put in them is kept as a factory copy that tmpfiles.d copies
    // into /var when the directory there is new.
    for (name, target) in STATE_LINKS {
        preserve_as_factory(root, name, target, &mut tmpfiles)?;
        replace_with_symlink(&root.join(name), target)?;
    }
    preserve_as_factory(root, "usr/local", USR_LOCAL_TARGET, &mut tmpfiles)?;
    replace_with_symlink(&root.join("usr/local"), &format!("../{USR_LOCAL_TARGET}"))?;
    let tmpfiles_dir = root.join("usr/lib/tmpfiles.d");
    fs::create_dir_all(&tmpfiles_dir)?;
    fs::write(tmpfiles_dir.join("cairn-var.conf"), tmpfiles)?;

    // The physical root is mounted at /sysroot; ostree's tools find the
    // repo and deployments through /ostree.
    fs::create_dir_all(root.join("sysroot"))?;
    replace_with_symlink(&root.join("ostree"), "sysroot/ostree")?;
    Ok(Converted { kernel_release: kver })
}

/// A tmpfiles.d file that recreates every directory and symlink of `var/`.
/// Files under `/var` are not carried over: state is not part of the OS.
pub fn var_tmpfiles(root: &Path) -> Result<String> {
    let mut out = String::from("# Generated by cairn-build: the /var skeleton of the packages.\n");
    let var = root.join("var");
    let mut entries = Vec::new();
    if var.is_dir() {
        walk(&var, &mut entries)?;
    }
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).expect("walked below root");
        let meta = fs::symlink_metadata(&path)?;
        let name = format!("/{}", rel.display());
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)?;
            let _ = writeln!(out, "L {name} - - - - {}", target.display());
        } else if meta.is_dir() {
            let mode = meta.permissions().mode() & 0o7777;
            let _ = writeln!(out, "d {name} {mode:04o} {} {} - -", meta.uid(), meta.gid());
        }
    }
    for dir in ["home", "opt", "srv", "mnt", "roothome", "usrlocal"] {
        let mode = if dir == "roothome" { "0700" } else { "0755" };
        let _ = writeln!(out, "d /var/{dir} {mode} root root - -");
    }
    for sub in ["bin", "etc", "games", "include", "lib", "man", "sbin", "share", "src"] {
        let _ = writeln!(out, "d /var/usrlocal/{sub} 0755 root root - -");
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let t = e.file_type()?;
        out.push(e.path());
        if t.is_dir() {
            walk(&e.path(), out)?;
        }
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> Result<()> {
    if dir.symlink_metadata().is_ok() {
        if dir.is_symlink() || !dir.is_dir() {
            fs::remove_file(dir)?;
        } else {
            fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
    }
    fs::create_dir_all(dir)?;
    let mode = if dir.ends_with("tmp") { 0o1777 } else { 0o755 };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Where files shipped in a state directory are kept, below `/usr`.
pub const FACTORY: &str = "usr/share/factory";

/// If `root/name` holds files, move it to the factory and add a tmpfiles.d
/// `C` line that copies it to `/target` when that is empty.
fn preserve_as_factory(root: &Path, name: &str, target: &str, tmpfiles: &mut String) -> Result<()> {
    let dir = root.join(name);
    if dir.is_symlink() || !dir.is_dir() {
        return Ok(());
    }
    let mut inside = Vec::new();
    walk(&dir, &mut inside)?;
    if inside.iter().all(|p| p.is_dir() && !p.is_symlink()) {
        return Ok(());
    }
    let factory = root.join(FACTORY).join(target);
    fs::create_dir_all(factory.parent().expect("has parent"))?;
    fs::rename(&dir, &factory).with_context(|| format!("moving {} to the factory", dir.display()))?;
    fs::create_dir(&dir)?;
    let _ = writeln!(tmpfiles, "C /{target} - - - - /{FACTORY}/{target}");
    Ok(())
}

fn replace_with_symlink(path: &Path, target: &str) -> Result<()> {
    if let Ok(meta) = path.symlink_metadata() {
        if meta.is_dir() {
            let mut inside = Vec::new();
            walk(path, &mut inside)?;
            if let Some(p) = inside.iter().find(|p| !p.is_dir() || p.is_symlink()) {
                bail!(
                    "{} is not empty ({}); ostree keeps it in /var, so packages must not ship files there",
                    path.display(),
                    p.display()
                );
            }
            fs::remove_dir_all(path)?;
        } else {
            fs::remove_file(path)?;
        }
    }
    symlink(target, path).with_context(|| format!("linking {} -> {target}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_like_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [
            "usr/lib/modules/6.1.0-9-cloud-amd64",
            "etc/systemd",
            "var/lib/dpkg",
            "var/log",
            "var/cache/apt",
            "boot",
            "home",
            "root",
            "opt",
            "usr/local/bin",
            "dev",
            "tmp/junk",
            "run",
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        fs::write(r.join("usr/lib/modules/6.1.0-9-cloud-amd64/modules.dep"), "").unwrap();
        fs::write(r.join("usr/lib/modules/6.1.0-9-cloud-amd64/initramfs.img"), "initrd").unwrap();
        fs::write(r.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), "kernel").unwrap();
        fs::write(r.join("boot/config-6.1.0-9-cloud-amd64"), "CONFIG_X=y").unwrap();
        fs::write(r.join("etc/machine-id"), "0123456789abcdef\n").unwrap();
        fs::write(r.join("etc/hostname"), "build-host\n").unwrap();
        fs::create_dir_all(r.join("etc/ssh")).unwrap();
        fs::write(r.join("etc/ssh/sshd_config"), "Include /etc/ssh/sshd_config.d/*.conf\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        fs::write(r.join("var/lib/dpkg/status"), "Package: x\n").unwrap();
        symlink("/run/lock", r.join("var/lock")).unwrap();
        fs::write(r.join("tmp/junk/x"), "x").unwrap();
        d
    }

    #[test]
    fn converts_a_debian_tree_to_the_ostree_layout() {
        let d = debian_like_tree();
        let r = d.path();
        let c = convert(r).unwrap();
        assert_eq!(c.kernel_release, "6.1.0-9-cloud-amd64");
        let m = r.join("usr/lib/modules/6.1.0-9-cloud-amd64");
        assert_eq!(fs::read(m.join("vmlinuz")).unwrap(), b"kernel");
        assert_eq!(fs::read(m.join("config")).unwrap(), b"CONFIG_X=y");
        assert!(!r.join("etc").exists());
        assert_eq!(fs::read(r.join("usr/etc/machine-id")).unwrap(), b"");
        assert!(
            !r.join("usr/etc/hostname").exists(),
            "the build host's name stays behind"
        );
        assert!(
            !r.join("usr/etc/ssh/ssh_host_ed25519_key").exists(),
            "no image carries host keys"
        );
        assert!(r.join("usr/etc/ssh/sshd_config").exists());
        assert_eq!(fs::read_dir(r.join("var")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(r.join("boot")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(r.join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_link(r.join("home")).unwrap(), Path::new("var/home"));
        assert_eq!(fs::read_link(r.join("root")).unwrap(), Path::new("var/roothome"));
        assert_eq!(
            fs::read_link(r.join("usr/local")).unwrap(),
            Path::new("../var/usrlocal")
        );
        assert_eq!(fs::read_link(r.join("ostree")).unwrap(), Path::new("sysroot/ostree"));
        let tmpfiles = fs::read_to_string(r.join("usr/lib/tmpfiles.d/cairn-var.conf")).unwrap();
        assert!(tmpfiles.contains("d /var/lib/dpkg 0755 "), "{tmpfiles}");
        assert!(tmpfiles.contains("L /var/lock - - - - /run/lock"), "{tmpfiles}");
        assert!(tmpfiles.contains("d /var/roothome 0700 root root - -"), "{tmpfiles}");
        assert!(convert(r).is_err(), "converting twice is refused");
    }

    #[test]
    fn files_in_state_directories_become_factory_copies() {
        let d = debian_like_tree();
        let r = d.path();
        fs::write(r.join("root/.bashrc"), "PS1=x").unwrap();
        convert(r).unwrap();
        assert_eq!(
            fs::read_to_string(r.join("usr/share/factory/var/roothome/.bashrc")).unwrap(),
            "PS1=x"
        );
        assert_eq!(fs::read_link(r.join("root")).unwrap(), Path::new("var/roothome"));
        let tmpfiles = fs::read_to_string(r.join("usr/lib/tmpfiles.d/cairn-var.conf")).unwrap();
        assert!(
            tmpfiles.contains("C /var/roothome - - - - /usr/share/factory/var/roothome"),
            "{tmpfiles}"
        );
        assert!(
            !tmpfiles.contains("/usr/share/factory/var/usrlocal"),
            "empty skeletons need no copy"
        );
    }

    #[test]
    fn missing_initramfs_is_named() {
        let d = debian_like_tree();
        fs::remove_file(d.path().join("usr/lib/modules/6.1.0-9-cloud-amd64/initramfs.img")).unwrap();
        let e = convert(d.path()).unwrap_err().to_string();
        assert!(e.contains("no initramfs"), "{e}");
    }
}
