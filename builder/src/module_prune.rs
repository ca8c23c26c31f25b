//! Kernel modules pruned to an allow-list, for platforms whose manifest
//! says `modules = "fragments"` (`[platforms.<name>]` in `rootfs/image.toml`).
//!
//! Debian's full arm64 kernel ships some 4,300 modules, most of them drivers
//! for hardware a server never has (GPUs, wireless, media, sound, the SoC
//! peripherals of boards). For such a platform the package layer keeps,
//! under the hardware-driver folders [`PRUNED`] (`kernel/drivers/`,
//! `kernel/sound/`), only
//!
//! - the modules the platform's kernel-config fragments name (`# cairn:
//!   module=` on an option, `module=` on a `# cairn-wanted:` line), for its
//!   architecture, and its `initramfs-drivers`: the [`AllowList`];
//! - everything those and every module outside [`PRUNED`] need, through
//!   `modules.dep` and the `pre:`/`post:` soft dependencies of
//!   `modules.softdep` (and `modules.weakdep`): the closure.
//!
//! Every module outside [`PRUNED`] ships (`net/`, `fs/`, `crypto/`, `lib/`,
//! `block/`, `arch/`, …): netfilter, tunnels, filesystems, what a container
//! host needs whatever the hardware. The allow-list has no second source:
//! what a platform keeps is what its fragments say it needs. A required
//! module the kernel has neither as a file nor built in (`modules.builtin`)
//! is an error naming the fragment line (or the manifest entry) that asks
//! for it; a wanted one is only noted.
//!
//! Pure: [`AllowList::derive`], [`ModuleIndex::parse`], [`plan`]. Doing:
//! [`prune_root`] and [`run_in_tree`], what `cairn-build prune-modules`
//! runs inside the package layer's build (before dracut, so the initramfs
//! is made from the pruned tree), followed by the tree's own depmod.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;
use serde::{Deserialize, Serialize};

use crate::initramfs::module_name;
use crate::kernel_check::{normalize_module, Fragment, Requirement};

/// The folders of a kernel's modules (relative to
/// `/usr/lib/modules/<kver>`, as `modules.dep` names them) that are pruned
/// to the allow-list: hardware drivers. Every other module ships.
pub const PRUNED: [&str; 2] = ["kernel/drivers/", "kernel/sound/"];

/// How much a module of the allow-list is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// Enforced: the build fails if the kernel lacks it.
    Required,
    /// A `# cairn-wanted:` module: kept if the kernel has it.
    Wanted,
}

/// One module of the allow-list and what asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    /// The name as written (`-` and `_` alike).
    pub module: String,
    pub need: Need,
    /// What asks for it, for errors: `<fragment>:<line> (CONFIG_X=m)` or
    /// `<manifest> ([platforms.<name>] initramfs-drivers)`.
    pub source: String,
}

/// The modules a platform keeps under [`PRUNED`], besides the closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// The pruned folders ([`PRUNED`]), so a change of the rule is a change
    /// of the list (and of the package layer's key).
    pub pruned: Vec<String>,
    /// In fragment order, then the initramfs drivers; a module named twice
    /// appears twice.
    pub entries: Vec<AllowEntry>,
}

/// What identifies an allow-list's effect: the pruned folders and each
/// module's strongest need. Part of the package layer's key (sources and
/// line numbers are not: moving a comment rebuilds nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowKey {
    pub pruned: Vec<String>,
    /// Normalized name (`_`) → need.
    pub modules: BTreeMap<String, Need>,
}

impl AllowList {
    /// The allow-list of a platform: every module that `fragments` name for
    /// `arch` (enforced options as [`Need::Required`], `# cairn-wanted:`
    /// ones as [`Need::Wanted`]) and the platform's `initramfs_drivers`
    /// (required), which `drivers_source` says where the manifest names.
    pub fn derive(fragments: &[Fragment], arch: Arch, initramfs_drivers: &[String], drivers_source: &str) -> AllowList {
        let mut entries = Vec::new();
        let mut add = |fragment: &Fragment, r: &Requirement, need: Need| {
            for module in &r.modules {
                entries.push(AllowEntry {
                    module: module.clone(),
                    need,
                    source: format!("{}:{} ({}{})", fragment.path.display(), r.line, r.option, r.want),
                });
            }
        };
        for fragment in fragments {
            for r in fragment.requirements_for(arch) {
                add(fragment, r, Need::Required);
            }
            for r in fragment.wanted_for(arch) {
                add(fragment, r, Need::Wanted);
            }
        }
        for driver in initramfs_drivers {
            entries.push(AllowEntry {
                module: driver.clone(),
                need: Need::Required,
                source: drivers_source.to_owned(),
            });
        }
        AllowList {
            pruned: PRUNED.iter().map(|p| (*p).to_owned()).collect(),
            entries,
        }
    }

    /// The list's effect, for the package layer's key.
    pub fn key(&self) -> AllowKey {
        let mut modules = BTreeMap::new();
        for e in &self.entries {
            let need = modules.entry(normalize_module(&e.module)).or_insert(e.need);
            *need = (*need).min(e.need);
        }
        AllowKey {
            pruned: self.pruned.clone(),
            modules,
        }
    }

    fn is_pruned(&self, path: &str) -> bool {
        self.pruned.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// The index files of one kernel (`/usr/lib/modules/<kver>/modules.*`),
/// as text; a file the kernel lacks is empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexFiles<'a> {
    pub dep: &'a str,
    pub builtin: &'a str,
    pub softdep: &'a str,
    pub weakdep: &'a str,
    pub alias: &'a str,
}

/// What the pruning needs to know about one kernel's modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    /// Module path → the module paths it needs (`modules.dep`).
    deps: BTreeMap<String, Vec<String>>,
    /// Normalized name → its module paths (usually one).
    paths: BTreeMap<String, Vec<String>>,
    /// Normalized names of the modules built into the kernel.
    builtin: BTreeSet<String>,
    /// Normalized name → the names or aliases it loads before or after
    /// itself (`softdep … pre:/post:`) or may use (`weakdep`).
    soft: BTreeMap<String, Vec<String>>,
    /// Normalized plain alias (no wildcard) → normalized module names.
    aliases: BTreeMap<String, BTreeSet<String>>,
}

impl ModuleIndex {
    /// Parses a kernel's index files; a malformed `modules.dep` line is an
    /// error naming it.
    pub fn parse(files: &IndexFiles) -> Result<ModuleIndex> {
        let mut index = ModuleIndex::default();
        for (number, line) in files.dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep:{}: `{line}` is not `MODULE: DEPENDENCIES`", number + 1);
            };
            let name = module_name(path)
                .ok_or_else(|| anyhow!("modules.dep:{}: `{path}` is not a module file", number + 1))?;
            index
                .paths
                .entry(normalize_module(name))
                .or_default()
                .push(path.to_owned());
            index
                .deps
                .insert(path.to_owned(), deps.split_whitespace().map(str::to_owned).collect());
        }
        index.builtin = files
            .builtin
            .lines()
            .filter_map(|l| module_name(l.trim()))
            .map(normalize_module)
            .collect();
        for line in files.softdep.lines().chain(files.weakdep.lines()) {
            let mut words = line.split_whitespace();
            let (Some(kind), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            // kmod reads only the names after `pre:` or `post:` of a
            // softdep; a weakdep's are all names.
            let mut listing = kind == "weakdep";
            if kind != "softdep" && !listing {
                continue;
            }
            let soft = index.soft.entry(normalize_module(module)).or_default();
            for word in words {
                if word == "pre:" || word == "post:" {
                    listing = true;
                } else if listing {
                    soft.push(word.to_owned());
                }
            }
        }
        for line in files.alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) = (words.next(), words.next(), words.last()) {
                if !alias.contains(['*', '?', '[']) {
                    index
                        .aliases
                        .entry(normalize_module(alias))
                        .or_default()
                        .insert(normalize_module(module));
                }
            }
        }
        Ok(index)
    }

    /// The module paths a soft dependency names: a module, or an alias of
    /// modules; nothing when built in or unknown.
    fn resolve(&self, name: &str) -> Vec<&String> {
        let name = normalize_module(name);
        if let Some(paths) = self.paths.get(&name) {
            return paths.iter().collect();
        }
        let modules = self.aliases.get(&name).into_iter().flatten();
        modules.filter_map(|m| self.paths.get(m)).flatten().collect()
    }
}

/// What pruning one kernel does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Module paths to delete, sorted.
    pub remove: Vec<String>,
    /// Module paths kept under the pruned folders, sorted.
    pub kept: Vec<String>,
    /// Wanted modules the kernel has neither as a file nor built in.
    pub absent_wanted: Vec<AllowEntry>,
}

/// Required modules the kernel has neither as a file nor built in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MissingModules(pub Vec<AllowEntry>);

impl fmt::Display for MissingModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        let (s, verb) = if n == 1 { ("", "is") } else { ("s", "are") };
        write!(
            f,
            "{n} module{s} the allow-list requires {verb} neither a module file of this kernel nor built into it (modules.builtin), so the image would lack {}:",
            if n == 1 { "it" } else { "them" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {}, required by {}", e.module, e.source)?;
        }
        Ok(())
    }
}

/// Which modules of the kernel `index` describes go: those under
/// `allow.pruned` that neither the allow-list nor anything kept needs.
pub fn plan(index: &ModuleIndex, allow: &AllowList) -> Result<Plan, MissingModules> {
    let mut keep: BTreeSet<&String> = index.deps.keys().filter(|p| !allow.is_pruned(p)).collect();
    let mut missing = Vec::new();
    let mut absent_wanted = Vec::new();
    for entry in &allow.entries {
        let name = normalize_module(&entry.module);
        match index.paths.get(&name) {
            Some(paths) => keep.extend(paths),
            None if index.builtin.contains(&name) => {}
            None if entry.need == Need::Required => missing.push(entry.clone()),
            None => absent_wanted.push(entry.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(MissingModules(missing));
    }
    let mut todo: Vec<&String> = keep.iter().copied().collect();
    while let Some(path) = todo.pop() {
        let hard = index.deps.get(path).into_iter().flatten();
        let name = module_name(path).map(normalize_module).unwrap_or_default();
        let soft = index.soft.get(&name).into_iter().flatten();
        let needed = hard.chain(soft.flat_map(|s| index.resolve(s)));
        for next in needed {
            if keep.insert(next) {
                todo.push(next);
            }
        }
    }
    let pruned = index.deps.keys().filter(|p| allow.is_pruned(p));
    let (kept, remove): (Vec<&String>, Vec<&String>) = pruned.partition(|p| keep.contains(p));
    Ok(Plan {
        remove: remove.into_iter().cloned().collect(),
        kept: kept.into_iter().cloned().collect(),
        absent_wanted,
    })
}

/// What pruning did to one kernel of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pruned {
    pub kernel_release: String,
    /// Module files deleted, and their bytes.
    pub removed: usize,
    pub removed_bytes: u64,
    /// Modules kept under the pruned folders (allow-list and closure).
    pub kept: usize,
    /// Wanted modules this kernel does not have.
    pub absent_wanted: Vec<String>,
}

/// Prunes the modules of every kernel under `<root>/usr/lib/modules` to
/// `allow` ([`plan`]): deletes the files it drops and the folders that
/// leaves empty. The kernels' index files are stale afterwards: run the
/// tree's depmod. Nothing is deleted when a required module is missing.
pub fn prune_root(root: &Path, allow: &AllowList) -> Result<Vec<Pruned>> {
    let modules = root.join("usr/lib/modules");
    let mut done = Vec::new();
    for kernel in kernel_dirs(&modules)? {
        let dir = modules.join(&kernel);
        let read = |name: &str| -> Result<String> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "modules.dep" => Ok(String::new()),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            }
        };
        let (dep, builtin, softdep, weakdep, alias) = (
            read("modules.dep")?,
            read("modules.builtin")?,
            read("modules.softdep")?,
            read("modules.weakdep")?,
            read("modules.alias")?,
        );
        let index = ModuleIndex::parse(&IndexFiles {
            dep: &dep,
            builtin: &builtin,
            softdep: &softdep,
            weakdep: &weakdep,
            alias: &alias,
        })
        .with_context(|| format!("reading the module index of {}", dir.display()))?;
        let plan = plan(&index, allow).with_context(|| format!("kernel {kernel}"))?;
        let mut removed_bytes = 0;
        for path in &plan.remove {
            let file = dir.join(path);
            let meta = fs::symlink_metadata(&file).with_context(|| format!("reading {}", file.display()))?;
            removed_bytes += meta.len();
            fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
        for folder in &allow.pruned {
            remove_empty_dirs(&dir.join(folder))?;
        }
        done.push(Pruned {
            kernel_release: kernel,
            removed: plan.remove.len(),
            removed_bytes,
            kept: plan.kept.len(),
            absent_wanted: plan.absent_wanted.iter().map(|e| e.module.clone()).collect(),
        });
    }
    Ok(done)
}

/// The kernel folders (names) in `modules`, sorted.
fn kernel_dirs(modules: &Path) -> Result<Vec<String>> {
    let mut kernels = Vec::new();
    for entry in fs::read_dir(modules).with_context(|| format!("listing kernels in {}", modules.display()))? {
        let entry = entry.with_context(|| format!("listing kernels in {}", modules.display()))?;
        if entry.file_type()?.is_dir() {
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("kernel folder {} is not UTF-8", entry.path().display()))?;
            kernels.push(name.to_owned());
        }
    }
    kernels.sort();
    if kernels.is_empty() {
        bail!("no kernel in {}", modules.display());
    }
    Ok(kernels)
}

/// Removes the empty folders under `dir` (and `dir` itself when empty);
/// a missing `dir` is fine.
fn remove_empty_dirs(dir: &Path) -> Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut empty = true;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type()?.is_dir() && remove_empty_dirs(&entry.path())? {
            continue;
        }
        empty = false;
    }
    if empty {
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(empty)
}

/// What `cairn-build prune-modules` reports to the build that ran it
/// (through a file: it runs inside mmdebstrap, whose output keeps only the
/// tail of an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    Pruned(Vec<Pruned>),
    /// Why nothing was pruned: the error, in full.
    Refused(String),
}

impl Report {
    /// Reads the report at `path`; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<Report>> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// `cairn-build prune-modules ROOT --allow-list FILE --report FILE`: prunes
/// the tree at `root` to the allow-list in `allow_list` (JSON), re-indexes
/// every kernel with the tree's own depmod (chrooted, so the target
/// release's kmod writes its index), and writes a [`Report`] to `report`
/// either way.
pub fn run_in_tree(root: &Path, allow_list: &Path, report: &Path) -> Result<Vec<Pruned>> {
    let outcome = (|| -> Result<Vec<Pruned>> {
        let text = fs::read(allow_list).with_context(|| format!("reading {}", allow_list.display()))?;
        let allow: AllowList =
            serde_json::from_slice(&text).with_context(|| format!("reading {}", allow_list.display()))?;
        let pruned = prune_root(root, &allow)?;
        for kernel in &pruned {
            Cmd::new("chroot")
                .arg(root)
                .args(["depmod", "-a", &kernel.kernel_release])
                .run()
                .with_context(|| format!("indexing the modules of {} after pruning", kernel.kernel_release))?;
        }
        Ok(pruned)
    })();
    let written = match &outcome {
        Ok(pruned) => Report::Pruned(pruned.clone()),
        Err(e) => Report::Refused(format!("{e:#}")),
    };
    cairn_common::fsutil::write_atomic(report, &serde_json::to_vec_pretty(&written)?)
        .with_context(|| format!("writing {}", report.display()))?;
    outcome
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/net/openvswitch/vport-vxlan.ko.xz: kernel/drivers/net/vxlan/vxlan.ko.xz kernel/drivers/net/udp_tunnel.ko.xz
kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/drivers/net/udp_tunnel.ko.xz
kernel/drivers/net/udp_tunnel.ko.xz:
kernel/drivers/net/veth.ko.xz:
kernel/drivers/scsi/megaraid/megaraid_sas.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz:
kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz:
kernel/drivers/char/ipmi/ipmi_devintf.ko.xz: kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz
kernel/drivers/usb/host/ohci-pci.ko.xz: kernel/drivers/usb/core/usbcore.ko.xz
kernel/drivers/usb/host/ehci-pci.ko.xz: kernel/drivers/usb/core/usbcore.ko.xz
kernel/drivers/usb/core/usbcore.ko.xz:
kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm.ko.xz:
kernel/sound/core/snd.ko.xz:
updates/dkms/vendor-nic.ko.xz:
";

    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/watchdog/watchdog.ko\n";

    const SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep ipmi_msghandler post: ipmi_devintf
softdep ohci_pci pre: ehci_pci
softdep cifs gcm
";

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_generic
alias pci:v00001000d*sv*sd*bc*sc*i* megaraid_sas
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(&IndexFiles {
            dep: DEP,
            builtin: BUILTIN,
            softdep: SOFTDEP,
            weakdep: "# Weak dependencies extracted from modules themselves.\n",
            alias: ALIAS,
        })
        .unwrap()
    }

    fn entry(module: &str, need: Need) -> AllowEntry {
        AllowEntry {
            module: module.into(),
            need,
            source: format!("kc/test.config:1 ({module})"),
        }
    }

    fn allow(entries: &[(&str, Need)]) -> AllowList {
        AllowList {
            pruned: PRUNED.map(String::from).to_vec(),
            entries: entries.iter().map(|(m, n)| entry(m, *n)).collect(),
        }
    }

    #[test]
    fn only_the_allow_list_and_what_kept_modules_need_stay_under_the_pruned_folders() {
        let plan = plan(
            &index(),
            &allow(&[
                ("megaraid_sas", Need::Required),
                ("ipmi-msghandler", Need::Required),
                ("veth", Need::Required),
                ("virtio", Need::Required),
                ("ohci-pci", Need::Wanted),
                ("hisi_sec2", Need::Wanted),
            ]),
        )
        .unwrap();
        assert_eq!(
            plan.kept,
            [
                // The `post:` softdep of a kept module.
                "kernel/drivers/char/ipmi/ipmi_devintf.ko.xz",
                "kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz",
                // Needed by a module outside the pruned folders.
                "kernel/drivers/net/udp_tunnel.ko.xz",
                "kernel/drivers/net/veth.ko.xz",
                "kernel/drivers/net/vxlan/vxlan.ko.xz",
                "kernel/drivers/scsi/megaraid/megaraid_sas.ko.xz",
                "kernel/drivers/scsi/scsi_mod.ko.xz",
                // A wanted module the kernel has, its `pre:` softdep and
                // what both depend on.
                "kernel/drivers/usb/core/usbcore.ko.xz",
                "kernel/drivers/usb/host/ehci-pci.ko.xz",
                "kernel/drivers/usb/host/ohci-pci.ko.xz",
            ]
        );
        assert_eq!(
            plan.remove,
            [
                "kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko.xz",
                "kernel/drivers/gpu/drm/drm.ko.xz",
                "kernel/sound/core/snd.ko.xz",
            ]
        );
        assert_eq!(plan.absent_wanted, [entry("hisi_sec2", Need::Wanted)]);
    }

    #[test]
    fn softdeps_name_modules_or_aliases_and_only_pre_and_post_count() {
        let index = index();
        assert_eq!(index.soft["ext4"], ["crypto-crc32c"]);
        assert!(
            index.soft["cifs"].is_empty(),
            "a name before `pre:`/`post:` is not a dependency"
        );
        assert_eq!(index.resolve("crypto-crc32c"), ["kernel/crypto/crc32c_generic.ko.xz"]);
        assert_eq!(index.resolve("ehci-pci"), ["kernel/drivers/usb/host/ehci-pci.ko.xz"]);
        assert!(index.resolve("gcm").is_empty(), "unknown or built in: nothing to keep");
        // Wildcard aliases are device matches, not names a softdep uses.
        assert!(index.aliases.keys().all(|a| !a.contains('*')));

        let weak = ModuleIndex::parse(&IndexFiles {
            dep: DEP,
            weakdep: "weakdep veth drm\n",
            ..IndexFiles::default()
        })
        .unwrap();
        let plan = plan(&weak, &allow(&[("veth", Need::Required)])).unwrap();
        assert!(
            plan.kept.contains(&"kernel/drivers/gpu/drm/drm.ko.xz".to_owned()),
            "{plan:?}"
        );
    }

    #[test]
    fn everything_outside_the_pruned_folders_stays() {
        let plan = plan(&index(), &allow(&[])).unwrap();
        for kept in ["kernel/fs/ext4/ext4.ko.xz", "updates/dkms/vendor-nic.ko.xz"] {
            assert!(!plan.remove.iter().any(|p| p == kept), "{kept} removed");
        }
        assert!(plan.remove.iter().all(|p| PRUNED.iter().any(|d| p.starts_with(d))));
        assert_eq!(plan.kept.len() + plan.remove.len(), 13);
    }

    #[test]
    fn a_required_module_the_kernel_lacks_is_an_error_naming_what_requires_it() {
        let err = plan(
            &index(),
            &allow(&[
                ("nvme", Need::Required),
                ("watchdog", Need::Required),
                ("hisi_sas_v3_hw", Need::Required),
                ("hisi_zip", Need::Wanted),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            MissingModules(vec![
                entry("nvme", Need::Required),
                entry("hisi_sas_v3_hw", Need::Required)
            ])
        );
        assert_eq!(
            err.to_string(),
            "2 modules the allow-list requires are neither a module file of this kernel nor built into it (modules.builtin), so the image would lack them:\n  nvme, required by kc/test.config:1 (nvme)\n  hisi_sas_v3_hw, required by kc/test.config:1 (hisi_sas_v3_hw)"
        );
    }

    #[test]
    fn a_malformed_modules_dep_names_its_line() {
        let err = ModuleIndex::parse(&IndexFiles {
            dep: "kernel/a.ko:\ngarbage\n",
            ..IndexFiles::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules.dep:2: `garbage` is not `MODULE: DEPENDENCIES`"
        );
        let err = ModuleIndex::parse(&IndexFiles {
            dep: "kernel/a.txt:\n",
            ..IndexFiles::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("`kernel/a.txt` is not a module file"), "{err}");
    }

    #[test]
    fn the_allow_list_comes_from_the_fragments_for_the_arch_and_the_initramfs_drivers() {
        let fragment = Fragment::parse(
            "\
# why
# cairn: module=veth
CONFIG_VETH=m
# cairn: module=i8042 arch=x86_64
CONFIG_SERIO_I8042=m
# cairn: module=virtio,virtio_ring initramfs
CONFIG_VIRTIO=m
CONFIG_NET=y
# cairn-wanted: CONFIG_CRYPTO_DEV_HISI_SEC2=m module=hisi_sec2
",
            "kc/test.config",
        )
        .unwrap();
        let list = AllowList::derive(
            &[fragment],
            Arch::Aarch64,
            &["nvme".into(), "veth".into()],
            "image.toml ([platforms.x] initramfs-drivers)",
        );
        let summary: Vec<(&str, Need, &str)> = list
            .entries
            .iter()
            .map(|e| (e.module.as_str(), e.need, e.source.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("veth", Need::Required, "kc/test.config:3 (CONFIG_VETH=m)"),
                ("virtio", Need::Required, "kc/test.config:7 (CONFIG_VIRTIO=m)"),
                ("virtio_ring", Need::Required, "kc/test.config:7 (CONFIG_VIRTIO=m)"),
                (
                    "hisi_sec2",
                    Need::Wanted,
                    "kc/test.config:9 (CONFIG_CRYPTO_DEV_HISI_SEC2=m)"
                ),
                ("nvme", Need::Required, "image.toml ([platforms.x] initramfs-drivers)"),
                ("veth", Need::Required, "image.toml ([platforms.x] initramfs-drivers)"),
            ]
        );
        assert_eq!(list.pruned, ["kernel/drivers/", "kernel/sound/"]);
        let key = list.key();
        assert_eq!(key.modules.len(), 5);
        assert_eq!(key.modules["hisi_sec2"], Need::Wanted);

        let mut moved = list.clone();
        moved.entries[0].source = "kc/test.config:30 (CONFIG_VETH=m)".into();
        assert_eq!(moved.key(), key, "where a module is named is not part of the key");
        let mut wanted = list.clone();
        wanted.entries.push(entry("hisi-sec2", Need::Required));
        assert_eq!(wanted.key().modules["hisi_sec2"], Need::Required, "required wins");
    }

    /// A tree with one kernel whose modules are those of [`DEP`].
    fn tree(root: &Path) -> PathBuf {
        let dir = root.join("usr/lib/modules/6.12.0-test");
        for line in DEP.lines() {
            let path = dir.join(line.split_once(':').unwrap().0);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"0123456789").unwrap();
        }
        fs::write(dir.join("modules.dep"), DEP).unwrap();
        fs::write(dir.join("modules.builtin"), BUILTIN).unwrap();
        fs::write(dir.join("modules.softdep"), SOFTDEP).unwrap();
        fs::write(dir.join("modules.alias"), ALIAS).unwrap();
        dir
    }

    #[test]
    fn prune_root_deletes_the_dropped_files_and_empty_folders() {
        let root = tempfile::tempdir().unwrap();
        let dir = tree(root.path());
        let pruned = prune_root(root.path(), &allow(&[("megaraid_sas", Need::Required)])).unwrap();
        assert_eq!(
            pruned,
            [Pruned {
                kernel_release: "6.12.0-test".into(),
                removed: 9,
                removed_bytes: 90,
                kept: 4,
                absent_wanted: vec![],
            }]
        );
        assert!(dir.join("kernel/drivers/scsi/megaraid/megaraid_sas.ko.xz").is_file());
        assert!(dir.join("kernel/fs/ext4/ext4.ko.xz").is_file());
        assert!(!dir.join("kernel/drivers/gpu").exists(), "empty folders go");
        assert!(!dir.join("kernel/sound").exists());
        assert!(!dir.join("kernel/drivers/usb").exists());
        assert!(dir.join("kernel/drivers/net/vxlan").is_dir());
    }

    #[test]
    fn prune_root_deletes_nothing_when_a_required_module_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let dir = tree(root.path());
        let err = prune_root(root.path(), &allow(&[("mpt3sas", Need::Required)])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("kernel 6.12.0-test: 1 module the allow-list requires is neither")
                && text.ends_with("\n  mpt3sas, required by kc/test.config:1 (mpt3sas)"),
            "{text}"
        );
        assert!(dir.join("kernel/sound/core/snd.ko.xz").is_file());
    }

    #[test]
    fn the_report_says_why_nothing_was_pruned() {
        let root = tempfile::tempdir().unwrap();
        tree(root.path());
        let list = root.path().join("allow.json");
        fs::write(
            &list,
            serde_json::to_vec(&allow(&[("mpt3sas", Need::Required)])).unwrap(),
        )
        .unwrap();
        let report = root.path().join("report.json");
        assert!(run_in_tree(root.path(), &list, &report).is_err());
        let Some(Report::Refused(why)) = Report::read(&report).unwrap() else {
            panic!("no refusal in the report");
        };
        assert!(why.contains("mpt3sas, required by kc/test.config:1"), "{why}");
        assert_eq!(Report::read(&root.path().join("none.json")).unwrap(), None);
    }
}
