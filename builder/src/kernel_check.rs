//! Checks a kernel against Cairn's kernel-config fragments (`kernel-config/`).
//!
//! A fragment is a kconfig fragment (`CONFIG_X=y`, `=m`, `=value`,
//! `# CONFIG_X is not set`, usable with the kernel's `merge_config.sh`) whose
//! structured comments carry Cairn's metadata; `kernel-config/README.md`
//! defines them:
//!
//! - `# cairn-fragment: arch=aarch64` before the first option: the whole
//!   fragment applies to one architecture.
//! - `# cairn: module=NAME[,NAME…] [initramfs] [arch=ARCH]` on the line
//!   directly above an option: the module files that provide an `=m` option,
//!   whether they must be in the initramfs, and the one architecture the
//!   option applies to.
//! - `# cairn-wanted: CONFIG_X=VALUE [module=…] [arch=…]`: an option a
//!   platform wants but Debian's kernel lacks; reported, never enforced.
//!
//! [`check`] is pure: it compares [`Fragment`]s with [`KernelFacts`], which
//! [`KernelFacts::from_tree`] reads from a composed root tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cairn_common::layout::Arch;

use crate::initramfs;

/// What a fragment requires of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `CONFIG_X=y`: built in.
    Builtin,
    /// `CONFIG_X=m`: built in, or a module that ships (and is in the
    /// initramfs if [`Requirement::initramfs`]).
    Module,
    /// `CONFIG_X=value`: exactly this value, as the kernel's config spells it.
    Value(String),
    /// `# CONFIG_X is not set`: unset or `n`.
    NotSet,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Builtin => f.write_str("=y"),
            Want::Module => f.write_str("=m"),
            Want::Value(value) => write!(f, "={value}"),
            Want::NotSet => f.write_str("not set"),
        }
    }
}

/// One option line of a fragment, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The option, `CONFIG_` prefix included.
    pub option: String,
    pub want: Want,
    /// 1-based line of the option in its fragment.
    pub line: usize,
    /// Module files (basenames without `.ko*`) that provide an `=m` option.
    pub modules: Vec<String>,
    /// The modules must also be inside the initramfs (storage, root fs).
    pub initramfs: bool,
    /// The only architecture the option applies to.
    pub arch: Option<Arch>,
}

impl Requirement {
    fn applies_to(&self, arch: Arch) -> bool {
        self.arch.is_none_or(|a| a == arch)
    }
}

/// A parsed kernel-config fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Where the fragment was read from, as given; reports name it.
    pub path: PathBuf,
    /// The only architecture the whole fragment applies to.
    pub arch: Option<Arch>,
    /// Enforced options, in file order.
    pub requirements: Vec<Requirement>,
    /// `# cairn-wanted:` options: reported when unmet, never enforced.
    pub wanted: Vec<Requirement>,
}

impl Fragment {
    /// Reads and parses the fragment at `path`.
    pub fn load(path: &Path) -> Result<Fragment> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Fragment::parse(&text, path)
    }

    /// Parses fragment `text`; `path` names it in errors and reports.
    pub fn parse(text: &str, path: impl Into<PathBuf>) -> Result<Fragment> {
        Parser {
            path: path.into(),
            ..Parser::default()
        }
        .run(text)
    }

    /// Whether the fragment applies to `arch` at all.
    pub fn applies_to(&self, arch: Arch) -> bool {
        self.arch.is_none_or(|a| a == arch)
    }

    /// The enforced options that apply to `arch`.
    pub fn requirements_for(&self, arch: Arch) -> impl Iterator<Item = &Requirement> {
        let applies = self.applies_to(arch);
        self.requirements.iter().filter(move |r| applies && r.applies_to(arch))
    }

    /// The wanted options that apply to `arch`.
    pub fn wanted_for(&self, arch: Arch) -> impl Iterator<Item = &Requirement> {
        let applies = self.applies_to(arch);
        self.wanted.iter().filter(move |r| applies && r.applies_to(arch))
    }
}

/// Loads `<dir>/<name>.config` for each name, in order.
pub fn load_fragments(dir: &Path, names: &[&str]) -> Result<Vec<Fragment>> {
    names
        .iter()
        .map(|name| Fragment::load(&dir.join(format!("{name}.config"))))
        .collect()
}

/// Metadata from a `# cairn:` line (or the tail of a `# cairn-wanted:` line).
#[derive(Debug, Default)]
struct Meta {
    modules: Vec<String>,
    initramfs: bool,
    arch: Option<Arch>,
}

#[derive(Default)]
struct Parser {
    path: PathBuf,
    arch: Option<Arch>,
    requirements: Vec<Requirement>,
    wanted: Vec<Requirement>,
    /// A `# cairn:` line (its number) waiting for the option below it.
    pending: Option<(usize, Meta)>,
    /// Option → line, over requirements and wanted options.
    seen: HashMap<String, usize>,
}

impl Parser {
    fn run(mut self, text: &str) -> Result<Fragment> {
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            self.line(raw.trim_end(), line)
                .map_err(|e| anyhow!("{}:{line}: {e}", self.path.display()))?;
        }
        if let Some((line, _)) = self.pending {
            bail!(
                "{}:{line}: `# cairn:` line at the end of the file: it must directly precede an option",
                self.path.display()
            );
        }
        Ok(Fragment {
            path: self.path,
            arch: self.arch,
            requirements: self.requirements,
            wanted: self.wanted,
        })
    }

    fn line(&mut self, line: &str, number: usize) -> Result<()> {
        if let Some(rest) = line.strip_prefix("# cairn:") {
            if let Some((previous, _)) = self.pending {
                bail!("a second `# cairn:` line for one option (the first is on line {previous}): merge them");
            }
            self.pending = Some((number, parse_meta(rest)?));
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# cairn-fragment:") {
            self.no_pending()?;
            if !self.requirements.is_empty() || !self.wanted.is_empty() {
                bail!("`# cairn-fragment:` must come before the first option");
            }
            if self.arch.is_some() {
                bail!("a second `# cairn-fragment:` line");
            }
            let meta = parse_meta(rest)?;
            if !meta.modules.is_empty() || meta.initramfs || meta.arch.is_none() {
                bail!("`# cairn-fragment:` takes only `arch=`");
            }
            self.arch = meta.arch;
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("# cairn-wanted:") {
            self.no_pending()?;
            let rest = rest.trim_start();
            let (assignment, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let (option, value) = assignment
                .split_once('=')
                .context("`# cairn-wanted:` needs `CONFIG_X=VALUE` (`=n` for not set)")?;
            let want = match value {
                "n" => Want::NotSet,
                other => parse_value(option, other)?,
            };
            let requirement = self.requirement(option, want, number, parse_meta(tail)?, true)?;
            self.wanted.push(requirement);
            return Ok(());
        }
        if line.starts_with("# cairn-") {
            bail!("unknown directive (expected `# cairn:`, `# cairn-fragment:` or `# cairn-wanted:`)");
        }
        if let Some(option) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            if option.starts_with("CONFIG_") {
                return self.option(option, Want::NotSet, number);
            }
        }
        if line.starts_with("CONFIG_") {
            let (option, value) = line
                .split_once('=')
                .context("an option line is `CONFIG_X=VALUE` or `# CONFIG_X is not set`")?;
            let want = parse_value(option, value)?;
            return self.option(option, want, number);
        }
        if line.is_empty() || line.starts_with('#') {
            return self.no_pending();
        }
        bail!("not a kconfig fragment line: `{line}`")
    }

    fn no_pending(&self) -> Result<()> {
        match &self.pending {
            Some((line, _)) => bail!("the `# cairn:` line {line} must directly precede an option line"),
            None => Ok(()),
        }
    }

    fn option(&mut self, option: &str, want: Want, line: usize) -> Result<()> {
        let meta = self.pending.take().map(|(_, meta)| meta).unwrap_or_default();
        let requirement = self.requirement(option, want, line, meta, false)?;
        self.requirements.push(requirement);
        Ok(())
    }

    fn requirement(&mut self, option: &str, want: Want, line: usize, meta: Meta, wanted: bool) -> Result<Requirement> {
        let name_ok = option
            .strip_prefix("CONFIG_")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !name_ok {
            bail!("`{option}` is not an option name (`CONFIG_` and letters, digits, `_`)");
        }
        if let Some(first) = self.seen.insert(option.to_owned(), line) {
            bail!("{option} already appears on line {first}");
        }
        if !meta.modules.is_empty() && want != Want::Module {
            bail!("`module=` only applies to `=m` options");
        }
        if meta.initramfs && want != Want::Module {
            bail!("`initramfs` only applies to `=m` options");
        }
        if want == Want::Module && meta.modules.is_empty() && !wanted {
            bail!("{option}=m needs `# cairn: module=NAME` on the line above: the module file that provides it");
        }
        if let (Some(fragment), Some(option_arch)) = (self.arch, meta.arch) {
            if fragment != option_arch {
                bail!("`arch={option_arch}` contradicts the fragment's `arch={fragment}`");
            }
        }
        Ok(Requirement {
            option: option.to_owned(),
            want,
            line,
            modules: meta.modules,
            initramfs: meta.initramfs,
            arch: meta.arch,
        })
    }
}

fn parse_value(option: &str, value: &str) -> Result<Want> {
    Ok(match value {
        "y" => Want::Builtin,
        "m" => Want::Module,
        "n" => bail!("write `# {option} is not set` instead of `{option}=n`"),
        "" => bail!("{option} has no value"),
        other => Want::Value(other.to_owned()),
    })
}

fn parse_meta(text: &str) -> Result<Meta> {
    let mut meta = Meta::default();
    for word in text.split_whitespace() {
        if let Some(list) = word.strip_prefix("module=") {
            for name in list.split(',') {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    bail!("`{name}` is not a module name (letters, digits, `_`, `-`; no `.ko`)");
                }
                meta.modules.push(name.to_owned());
            }
        } else if word == "initramfs" {
            meta.initramfs = true;
        } else if let Some(arch) = word.strip_prefix("arch=") {
            meta.arch = Some(arch.parse().map_err(|e: String| anyhow!(e))?);
        } else {
            bail!("unknown metadata `{word}` (expected `module=NAME[,NAME]`, `initramfs` or `arch=x86_64|aarch64`)");
        }
    }
    Ok(meta)
}

/// The modules an image's initramfs holds, and only these: those the
/// fragments mark `initramfs` for `arch` (storage, the root filesystem),
/// then the platform's own `initramfs-drivers`; `_` spelling, each once, in
/// that order. dracut adds what they depend on; a boot disk behind anything
/// else is a missing `# cairn: … initramfs` line, which the kernel check
/// names, not a driver the initramfs holds on the off chance.
pub fn initramfs_modules(fragments: &[Fragment], arch: Arch, platform_drivers: &[String]) -> Vec<String> {
    let from_fragments = fragments
        .iter()
        .flat_map(|f| f.requirements_for(arch))
        .filter(|r| r.initramfs)
        .flat_map(|r| r.modules.iter());
    let mut seen = BTreeSet::new();
    from_fragments
        .chain(platform_drivers)
        .map(|m| normalize_module(m))
        .filter(|m| seen.insert(m.clone()))
        .collect()
}

/// Module names treat `-` and `_` alike; this is the `_` spelling.
pub fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses a kernel `.config`: option (`CONFIG_` included) → value as
/// written; `# CONFIG_X is not set` becomes `n`. Other lines are ignored.
pub fn parse_kernel_config(text: &str) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(option) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            if option.starts_with("CONFIG_") {
                config.insert(option.to_owned(), "n".to_owned());
            }
        } else if let Some((option, value)) = line.split_once('=').filter(|_| line.starts_with("CONFIG_")) {
            config.insert(option.to_owned(), value.to_owned());
        }
    }
    config
}

/// What the check needs to know about one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// `uname -r`: the directory name under `/usr/lib/modules`.
    pub kernel_release: String,
    /// The kernel's configuration (see [`parse_kernel_config`]).
    pub config: BTreeMap<String, String>,
    /// Modules that ship, by name (`-` and `_` are treated alike).
    pub modules: BTreeSet<String>,
    /// Modules inside the initramfs, by name; `None` when no initramfs was
    /// read (the report then says the initramfs was not checked).
    pub initramfs_modules: Option<BTreeSet<String>>,
}

impl KernelFacts {
    /// Reads the one kernel of a composed root tree: its configuration
    /// `<root>/usr/lib/modules/<kver>/config`, the modules (`*.ko`,
    /// `*.ko.xz`, `*.ko.zst`) under `<root>/usr/lib/modules/<kver>/kernel`,
    /// and the modules inside `<root>/usr/lib/modules/<kver>/initramfs.img`.
    /// Fails, naming the path, unless there is exactly one kernel directory
    /// and both its `config` and its `initramfs.img` can be read.
    pub fn from_tree(root: &Path) -> Result<KernelFacts> {
        let modules_root = root.join("usr/lib/modules");
        let mut releases = Vec::new();
        let entries = std::fs::read_dir(&modules_root)
            .with_context(|| format!("listing kernels in {}", modules_root.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing kernels in {}", modules_root.display()))?;
            let file_type = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if file_type.is_dir() {
                let name = entry.file_name();
                let name = name
                    .to_str()
                    .with_context(|| format!("kernel directory {} is not UTF-8", entry.path().display()))?;
                releases.push(name.to_owned());
            }
        }
        releases.sort();
        let kernel_release = match releases.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "no kernel in {}: expected exactly one <kver> directory",
                modules_root.display()
            ),
            many => bail!(
                "{} kernels in {} ({}): expected exactly one",
                many.len(),
                modules_root.display(),
                many.join(", ")
            ),
        };
        let dir = modules_root.join(&kernel_release);

        let config_path = dir.join("config");
        let config_text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading the kernel configuration {}", config_path.display()))?;
        let config = parse_kernel_config(&config_text);
        if config.is_empty() {
            bail!("{} holds no CONFIG_ options", config_path.display());
        }

        let mut modules = BTreeSet::new();
        collect_modules(&dir.join("kernel"), &mut modules)?;

        let initramfs_path = dir.join("initramfs.img");
        let files = initramfs::list_files_in(&initramfs_path)?;
        let initramfs_modules = initramfs::kernel_modules(files.iter().map(String::as_str))
            .iter()
            .map(|m| normalize_module(m))
            .collect();

        Ok(KernelFacts {
            kernel_release,
            config,
            modules,
            initramfs_modules: Some(initramfs_modules),
        })
    }
}

/// Adds the (normalized) names of the module files under `dir` to `out`;
/// a missing `dir` holds none.
fn collect_modules(dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing modules in {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing modules in {}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_dir() {
            collect_modules(&path, out)?;
        } else if let Some(name) = entry.file_name().to_str().and_then(initramfs::module_name) {
            out.insert(normalize_module(name));
        }
    }
    Ok(())
}

/// Why a requirement is not met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// The kernel's value differs; `None`: the kernel has no such option.
    Value { has: Option<String> },
    /// The kernel has the option as a module, but these module files do not ship.
    ModuleNotShipped { modules: Vec<String> },
    /// The modules ship but are not inside the initramfs.
    NotInInitramfs { modules: Vec<String> },
}

/// One requirement the kernel does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The fragment's path, as loaded.
    pub fragment: PathBuf,
    pub line: usize,
    pub option: String,
    pub want: Want,
    /// The modules the requirement names (for `=m`).
    pub modules: Vec<String>,
    /// Whether the modules must be in the initramfs.
    pub initramfs: bool,
    /// `false` for a `# cairn-wanted:` option (advisory).
    pub enforced: bool,
    pub unmet: Unmet,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.enforced { "required" } else { "wanted" };
        write!(
            f,
            "{}:{}: {}: {verb} {}",
            self.fragment.display(),
            self.line,
            self.option,
            self.want
        )?;
        if self.initramfs {
            f.write_str(" in the initramfs")?;
        }
        if !self.modules.is_empty() {
            let s = if self.modules.len() == 1 { "" } else { "s" };
            write!(f, " (module{s} {})", self.modules.join(", "))?;
        }
        match &self.unmet {
            Unmet::Value { has: None } => f.write_str(", kernel has no such option"),
            Unmet::Value { has: Some(n) } if n == "n" => f.write_str(", kernel has it not set"),
            Unmet::Value { has: Some(value) } => write!(f, ", kernel has ={value}"),
            Unmet::ModuleNotShipped { modules } => {
                let files: Vec<String> = modules.iter().map(|m| format!("{m}.ko*")).collect();
                write!(
                    f,
                    ", kernel has =m but no {} ships under usr/lib/modules/<kver>/kernel",
                    files.join(", ")
                )
            }
            Unmet::NotInInitramfs { modules } => {
                let verb = if modules.len() == 1 { "is" } else { "are" };
                write!(
                    f,
                    ", kernel has =m but {} {verb} not in the initramfs",
                    modules.join(", ")
                )
            }
        }
    }
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kernel_release: String,
    pub arch: Arch,
    /// How many enforced options applied.
    pub checked: usize,
    /// Every enforced option the kernel does not meet, in fragment order.
    pub problems: Vec<Problem>,
    /// `# cairn-wanted:` options the kernel does not meet (advisory).
    pub wanted: Vec<Problem>,
    /// Whether initramfs membership was checked.
    pub initramfs_checked: bool,
}

impl Report {
    /// Whether the kernel meets every enforced option.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok` if [`Report::is_ok`], else an error holding the whole report.
    pub fn ensure_ok(&self) -> Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(anyhow!("{self}"))
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel {} ({}): ", self.kernel_release, self.arch)?;
        if self.is_ok() {
            write!(f, "all {} required options met", self.checked)?;
        } else {
            write!(
                f,
                "{} of {} required options not met",
                self.problems.len(),
                self.checked
            )?;
        }
        for problem in &self.problems {
            write!(f, "\n{problem}")?;
        }
        for wanted in &self.wanted {
            write!(f, "\nnote: {wanted} (not enforced)")?;
        }
        if !self.initramfs_checked {
            f.write_str("\nnote: the initramfs was not checked")?;
        }
        Ok(())
    }
}

/// Checks `facts` against every option of `fragments` that applies to
/// `arch`; the report lists every unmet option in fragment order.
pub fn check(fragments: &[Fragment], arch: Arch, facts: &KernelFacts) -> Report {
    let shipped: BTreeSet<String> = facts.modules.iter().map(|m| normalize_module(m)).collect();
    let initramfs: Option<BTreeSet<String>> = facts
        .initramfs_modules
        .as_ref()
        .map(|set| set.iter().map(|m| normalize_module(m)).collect());
    let mut report = Report {
        kernel_release: facts.kernel_release.clone(),
        arch,
        checked: 0,
        problems: Vec::new(),
        wanted: Vec::new(),
        initramfs_checked: initramfs.is_some(),
    };
    let problem = |fragment: &Fragment, r: &Requirement, enforced: bool| {
        evaluate(r, &facts.config, &shipped, initramfs.as_ref()).map(|unmet| Problem {
            fragment: fragment.path.clone(),
            line: r.line,
            option: r.option.clone(),
            want: r.want.clone(),
            modules: r.modules.clone(),
            initramfs: r.initramfs,
            enforced,
            unmet,
        })
    };
    for fragment in fragments {
        for requirement in fragment.requirements_for(arch) {
            report.checked += 1;
            report.problems.extend(problem(fragment, requirement, true));
        }
        for wanted in fragment.wanted_for(arch) {
            report.wanted.extend(problem(fragment, wanted, false));
        }
    }
    report
}

fn evaluate(
    requirement: &Requirement,
    config: &BTreeMap<String, String>,
    shipped: &BTreeSet<String>,
    initramfs: Option<&BTreeSet<String>>,
) -> Option<Unmet> {
    let has = config.get(&requirement.option).map(String::as_str);
    let wrong = || {
        Some(Unmet::Value {
            has: has.map(str::to_owned),
        })
    };
    match &requirement.want {
        Want::Builtin if has == Some("y") => None,
        Want::Value(value) if has == Some(value.as_str()) => None,
        Want::NotSet if matches!(has, None | Some("n")) => None,
        Want::Module if has == Some("y") => None,
        Want::Module if has == Some("m") => {
            let missing = |set: &BTreeSet<String>| -> Vec<String> {
                let names = requirement.modules.iter();
                names.filter(|m| !set.contains(&normalize_module(m))).cloned().collect()
            };
            let not_shipped = missing(shipped);
            if !not_shipped.is_empty() {
                return Some(Unmet::ModuleNotShipped { modules: not_shipped });
            }
            let not_in_initramfs = match initramfs {
                Some(set) if requirement.initramfs => missing(set),
                _ => Vec::new(),
            };
            (!not_in_initramfs.is_empty()).then_some(Unmet::NotInInitramfs {
                modules: not_in_initramfs,
            })
        }
        _ => wrong(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::testutil::newc;

    const FRAGMENT: &str = "\
# Why each option is needed.
CONFIG_A=y
# cairn: module=mod-a initramfs
CONFIG_B=m
# cairn: module=mod_b
CONFIG_C=m
CONFIG_D=\"text\"
# CONFIG_E is not set
# cairn: arch=aarch64
CONFIG_F=y
# cairn-wanted: CONFIG_G=m module=g arch=x86_64
";

    fn fragment() -> Fragment {
        Fragment::parse(FRAGMENT, "kc/test.config").unwrap()
    }

    fn facts(config: &str, modules: &[&str], initramfs: Option<&[&str]>) -> KernelFacts {
        KernelFacts {
            kernel_release: "6.1.0-test".into(),
            config: parse_kernel_config(config),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            initramfs_modules: initramfs.map(|set| set.iter().map(|m| m.to_string()).collect()),
        }
    }

    const GOOD: &str = "CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=y\nCONFIG_D=\"text\"\n# CONFIG_E is not set\nCONFIG_F=y\n";

    #[test]
    fn the_initramfs_holds_the_fragments_boot_modules_for_the_arch_and_the_platforms_drivers() {
        let text = "\
# cairn: module=nvme initramfs
CONFIG_BLK_DEV_NVME=m
# cairn: module=xen-blkfront initramfs arch=x86_64
CONFIG_XEN_BLKDEV_FRONTEND=m
# cairn: module=hns3
CONFIG_HNS3_ENET=m
# cairn-wanted: CONFIG_W=m module=wanted_only
";
        let f = Fragment::parse(text, "kc/boot.config").unwrap();
        let drivers = ["megaraid_sas".to_owned(), "nvme".to_owned()];
        assert_eq!(
            initramfs_modules(std::slice::from_ref(&f), Arch::X86_64, &drivers),
            ["nvme", "xen_blkfront", "megaraid_sas"]
        );
        assert_eq!(
            initramfs_modules(&[f], Arch::Aarch64, &[]),
            ["nvme"],
            "arch-specific, non-initramfs and wanted modules stay out"
        );
    }

    #[test]
    fn parses_options_and_metadata() {
        let f = fragment();
        assert_eq!(f.arch, None);
        let summary: Vec<(&str, &Want, usize)> = f
            .requirements
            .iter()
            .map(|r| (r.option.as_str(), &r.want, r.line))
            .collect();
        assert_eq!(
            summary,
            [
                ("CONFIG_A", &Want::Builtin, 2),
                ("CONFIG_B", &Want::Module, 4),
                ("CONFIG_C", &Want::Module, 6),
                ("CONFIG_D", &Want::Value("\"text\"".into()), 7),
                ("CONFIG_E", &Want::NotSet, 8),
                ("CONFIG_F", &Want::Builtin, 10),
            ]
        );
        assert_eq!(f.requirements[1].modules, ["mod-a"]);
        assert!(f.requirements[1].initramfs);
        assert!(!f.requirements[2].initramfs);
        assert_eq!(f.requirements[5].arch, Some(Arch::Aarch64));
        assert_eq!(f.wanted.len(), 1);
        assert_eq!((f.wanted[0].line, f.wanted[0].arch), (11, Some(Arch::X86_64)));
        assert_eq!(f.requirements_for(Arch::X86_64).count(), 5);
        assert_eq!(f.requirements_for(Arch::Aarch64).count(), 6);

        let arm = Fragment::parse("# c\n# cairn-fragment: arch=aarch64\n# why\nCONFIG_X=y\n", "arm.config").unwrap();
        assert_eq!(arm.arch, Some(Arch::Aarch64));
        assert!(!arm.applies_to(Arch::X86_64));
        assert_eq!(arm.requirements_for(Arch::X86_64).count(), 0);
    }

    #[test]
    fn malformed_fragments_are_errors_naming_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("CONFIG_A=m\n", "test.config:1: CONFIG_A=m needs `# cairn: module=NAME`"),
            (
                "# cairn: module=a initramfs\nCONFIG_A=y\n",
                "test.config:2: `module=` only applies to `=m`",
            ),
            (
                "# cairn: initramfs\nCONFIG_A=y\n",
                "test.config:2: `initramfs` only applies to `=m`",
            ),
            (
                "# cairn: module=a\n\nCONFIG_A=m\n",
                "test.config:2: the `# cairn:` line 1 must directly precede",
            ),
            (
                "# cairn: module=a\n# why\nCONFIG_A=m\n",
                "test.config:2: the `# cairn:` line 1",
            ),
            (
                "# cairn: module=a\n",
                "test.config:1: `# cairn:` line at the end of the file",
            ),
            (
                "# cairn: module=a\n# cairn: initramfs\nCONFIG_A=m\n",
                "test.config:2: a second `# cairn:` line",
            ),
            (
                "# cairn: module=a.ko\nCONFIG_A=m\n",
                "test.config:1: `a.ko` is not a module name",
            ),
            (
                "# cairn: arch=riscv64\nCONFIG_A=y\n",
                "test.config:1: unknown architecture `riscv64`",
            ),
            ("# cairn: boot\nCONFIG_A=y\n", "test.config:1: unknown metadata `boot`"),
            (
                "CONFIG_A=y\n# cairn-fragment: arch=aarch64\n",
                "test.config:2: `# cairn-fragment:` must come before",
            ),
            (
                "# cairn-fragment: module=a\n",
                "test.config:1: `# cairn-fragment:` takes only `arch=`",
            ),
            (
                "# cairn-fragment: arch=x86_64\n# cairn: arch=aarch64\nCONFIG_A=y\n",
                "test.config:3: `arch=aarch64` contradicts",
            ),
            ("# cairn-option: x\n", "test.config:1: unknown directive"),
            (
                "CONFIG_A=y\nCONFIG_A=y\n",
                "test.config:2: CONFIG_A already appears on line 1",
            ),
            ("CONFIG_A=n\n", "test.config:1: write `# CONFIG_A is not set` instead"),
            ("CONFIG_A=\n", "test.config:1: CONFIG_A has no value"),
            ("CONFIG_A\n", "test.config:1: an option line is"),
            ("CONFIG_A-B=y\n", "test.config:1: `CONFIG_A-B` is not an option name"),
            ("A=y\n", "test.config:1: not a kconfig fragment line: `A=y`"),
            ("# cairn-wanted: CONFIG_A\n", "test.config:1: `# cairn-wanted:` needs"),
            (
                "CONFIG_A=y\n# cairn-wanted: CONFIG_A=m\n",
                "test.config:2: CONFIG_A already appears on line 1",
            ),
        ];
        for (text, want) in cases {
            let err = Fragment::parse(text, "kc/test.config").unwrap_err().to_string();
            assert!(
                err.starts_with("kc/") && err.contains(want),
                "{text:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn load_names_the_missing_file() {
        let err = format!("{:#}", Fragment::load(Path::new("/nonexistent/x.config")).unwrap_err());
        assert!(err.contains("/nonexistent/x.config"), "{err}");
    }

    #[test]
    fn kernel_config_parsing_keeps_not_set_as_n() {
        let config = parse_kernel_config("#\n# comment\nCONFIG_A=y\nCONFIG_S=\"a=b\"\n# CONFIG_N is not set\nNOT=x\n");
        assert_eq!(config.get("CONFIG_A").unwrap(), "y");
        assert_eq!(config.get("CONFIG_S").unwrap(), "\"a=b\"");
        assert_eq!(config.get("CONFIG_N").unwrap(), "n");
        assert_eq!(config.len(), 3);
    }

    #[test]
    fn a_kernel_meeting_everything_passes() {
        let facts = facts(GOOD, &["mod_a"], Some(&["mod-a"]));
        let report = check(&[fragment()], Arch::Aarch64, &facts);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checked, 6);
        assert!(report.ensure_ok().is_ok());
        // The wanted option is x86_64-only.
        assert!(report.wanted.is_empty());
        assert_eq!(
            report.to_string(),
            "kernel 6.1.0-test (aarch64): all 6 required options met"
        );
    }

    #[test]
    fn every_unmet_option_is_reported_with_what_the_kernel_has() {
        // A built as a module, B not shipped, C absent, D different, E set.
        let config = "CONFIG_A=m\nCONFIG_B=m\nCONFIG_D=\"other\"\nCONFIG_E=y\n";
        let report = check(&[fragment()], Arch::X86_64, &facts(config, &[], None));
        assert!(!report.is_ok());
        let lines: Vec<String> = report.problems.iter().map(Problem::to_string).collect();
        assert_eq!(
            lines,
            [
                "kc/test.config:2: CONFIG_A: required =y, kernel has =m",
                "kc/test.config:4: CONFIG_B: required =m in the initramfs (module mod-a), kernel has =m but no mod-a.ko* ships under usr/lib/modules/<kver>/kernel",
                "kc/test.config:6: CONFIG_C: required =m (module mod_b), kernel has no such option",
                "kc/test.config:7: CONFIG_D: required =\"text\", kernel has =\"other\"",
                "kc/test.config:8: CONFIG_E: required not set, kernel has =y",
            ]
        );
        let text = report.to_string();
        assert!(
            text.starts_with("kernel 6.1.0-test (x86_64): 5 of 5 required options not met\nkc/test.config:2: "),
            "{text}"
        );
        assert!(
            text.contains(
                "\nnote: kc/test.config:11: CONFIG_G: wanted =m (module g), kernel has no such option (not enforced)"
            ),
            "{text}"
        );
        assert!(text.ends_with("\nnote: the initramfs was not checked"), "{text}");
        let err = report.ensure_ok().unwrap_err().to_string();
        assert!(err.contains("CONFIG_E"), "{err}");
    }

    #[test]
    fn not_set_accepts_n_and_absent_and_y_satisfies_m() {
        let config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\nCONFIG_D=\"text\"\nCONFIG_E=n\nCONFIG_F=y\n";
        assert!(check(&[fragment()], Arch::Aarch64, &facts(config, &[], Some(&[]))).is_ok());
    }

    #[test]
    fn module_names_treat_dash_and_underscore_alike() {
        let config = GOOD.replace("CONFIG_C=y", "CONFIG_C=m");
        let report = check(
            &[fragment()],
            Arch::Aarch64,
            &facts(&config, &["mod_a", "mod-b"], Some(&["mod_a"])),
        );
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn a_boot_module_missing_from_the_initramfs_fails() {
        let config = GOOD.replace("CONFIG_C=y", "CONFIG_C=m");
        // mod_b ships but is not boot-critical: its absence from the initramfs is fine.
        let report = check(
            &[fragment()],
            Arch::Aarch64,
            &facts(&config, &["mod-a", "mod_b"], Some(&["other"])),
        );
        assert_eq!(report.problems.len(), 1, "{report}");
        assert_eq!(
            report.problems[0].unmet,
            Unmet::NotInInitramfs {
                modules: vec!["mod-a".into()]
            }
        );
        assert_eq!(
            report.problems[0].to_string(),
            "kc/test.config:4: CONFIG_B: required =m in the initramfs (module mod-a), kernel has =m but mod-a is not in the initramfs"
        );
    }

    #[test]
    fn only_fragments_and_options_for_the_arch_are_checked() {
        let arm = Fragment::parse("# cairn-fragment: arch=aarch64\n# why\nCONFIG_ARM=y\n", "arm.config").unwrap();
        let facts = facts("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\nCONFIG_D=\"text\"\n", &[], None);
        let report = check(&[fragment(), arm.clone()], Arch::X86_64, &facts);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checked, 5);
        let report = check(&[fragment(), arm], Arch::Aarch64, &facts);
        let options: Vec<&str> = report.problems.iter().map(|p| p.option.as_str()).collect();
        assert_eq!(options, ["CONFIG_F", "CONFIG_ARM"]);
    }

    /// A composed tree with one kernel; returns the kernel's directory.
    fn tree(root: &Path, kver: &str, config: &str, modules: &[&str], initramfs: &[u8]) -> PathBuf {
        let dir = root.join("usr/lib/modules").join(kver);
        std::fs::create_dir_all(dir.join("kernel/drivers/x")).unwrap();
        std::fs::write(dir.join("config"), config).unwrap();
        for module in modules {
            std::fs::write(dir.join("kernel/drivers/x").join(module), b"").unwrap();
        }
        std::fs::write(dir.join("kernel/drivers/x/modules.order"), b"").unwrap();
        std::fs::write(dir.join("initramfs.img"), initramfs).unwrap();
        dir
    }

    #[test]
    fn from_tree_reads_config_modules_and_initramfs() {
        let root = tempfile::tempdir().unwrap();
        let cpio = newc(&[("usr/lib/modules/6.1.0-56-arm64/kernel/drivers/x/mod-a.ko", b"\x7fELF")]);
        let mut image = newc(&[("early_cpio", b"1")]);
        image.extend(zstd::bulk::compress(&cpio, 3).unwrap());
        tree(
            root.path(),
            "6.1.0-56-arm64",
            GOOD,
            &["mod-a.ko.zst", "mod_b.ko.xz", "c.ko", "not-a-module.txt"],
            &image,
        );
        // Non-directories next to the kernel are ignored.
        std::fs::write(root.path().join("usr/lib/modules/README"), b"").unwrap();

        let facts = KernelFacts::from_tree(root.path()).unwrap();
        assert_eq!(facts.kernel_release, "6.1.0-56-arm64");
        assert_eq!(facts.config.get("CONFIG_F").unwrap(), "y");
        assert_eq!(facts.modules, ["c", "mod_a", "mod_b"].map(String::from).into());
        assert_eq!(facts.initramfs_modules, Some(["mod_a"].map(String::from).into()));
        assert!(check(&[fragment()], Arch::Aarch64, &facts).is_ok());
    }

    #[test]
    fn from_tree_wants_exactly_one_kernel_with_config_and_initramfs() {
        let root = tempfile::tempdir().unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(
            err.contains("listing kernels in") && err.contains("usr/lib/modules"),
            "{err}"
        );

        std::fs::create_dir_all(root.path().join("usr/lib/modules")).unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(
            err.contains("no kernel in") && err.contains("expected exactly one"),
            "{err}"
        );

        let image = newc(&[]);
        let dir = tree(root.path(), "6.1.0-1-amd64", GOOD, &[], &image);
        tree(root.path(), "6.1.0-2-amd64", GOOD, &[], &image);
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(
            err.contains("2 kernels in") && err.contains("(6.1.0-1-amd64, 6.1.0-2-amd64)"),
            "{err}"
        );
        std::fs::remove_dir_all(root.path().join("usr/lib/modules/6.1.0-2-amd64")).unwrap();

        std::fs::remove_file(dir.join("initramfs.img")).unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(err.contains(&dir.join("initramfs.img").display().to_string()), "{err}");

        std::fs::write(dir.join("initramfs.img"), b"garbage").unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(
            err.contains("initramfs.img") && err.contains("unknown data at offset 0"),
            "{err}"
        );

        std::fs::write(dir.join("config"), "# empty\n").unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(err.contains("config holds no CONFIG_ options"), "{err}");

        std::fs::remove_file(dir.join("config")).unwrap();
        let err = format!("{:#}", KernelFacts::from_tree(root.path()).unwrap_err());
        assert!(
            err.contains("reading the kernel configuration") && err.contains("6.1.0-1-amd64/config"),
            "{err}"
        );
    }
}
