//! The kernel-config fragments against Debian's real kernels.
//!
//! The kernels' configurations and module lists are captured under
//! `tests/data/kernel-configs/` (see its README): no network, no root.
//! Which fragments apply to which profile, and which kernel flavour it
//! ships, come from `rootfs/image.toml`, as in the build.
//!
//! The fragments must hold for every Debian release Cairn builds from
//! ([`RELEASES`]), so every profile is checked against the kernels of each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use cairn_builder::compose;
use cairn_builder::initramfs;
use cairn_builder::kernel_check::{
    check, load_fragments, normalize_module, parse_kernel_config, Fragment, KernelFacts, Problem, Requirement, Unmet,
    Want,
};
use cairn_builder::manifest::Manifest;
use cairn_builder::module_prune::Need;
use cairn_common::layout::{Arch, Platform};

/// Debian 13's kernel ABI: trixie, the base of Cairn's images.
const TRIXIE: &str = "6.12.118+deb13";
/// Debian 12's kernel ABI: bookworm, which existing hosts run and which the
/// bookworm→trixie update test builds an image from.
const BOOKWORM: &str = "6.1.0-56";
/// Every Debian release Cairn builds from, with the ABI of its captured
/// kernels.
const RELEASES: [(&str, &str); 2] = [("trixie", TRIXIE), ("bookworm", BOOKWORM)];
/// Debian's kernel flavours, as their package names end (before the arch).
const FLAVOURS: [&str; 2] = ["cloud-", ""];

/// The captured Debian kernel package of `abi` and `flavour`
/// (`cloud-amd64`, `arm64`, …).
fn package(abi: &str, flavour: &str) -> String {
    format!("linux-image-{abi}-{flavour}")
}

/// A platform profile as `rootfs/image.toml` defines it: the fragments it
/// enforces and the Debian kernel flavour it ships.
struct Profile {
    name: &'static str,
    arch: Arch,
    /// `cloud-amd64`, `arm64`, …: the package name without
    /// `linux-image-<abi>-`.
    flavour: String,
    fragment_paths: Vec<PathBuf>,
}

impl Profile {
    fn fragments(&self) -> Vec<Fragment> {
        self.fragment_paths.iter().map(|p| Fragment::load(p).unwrap()).collect()
    }

    fn fragment_names(&self) -> Vec<String> {
        let stem = |p: &PathBuf| p.file_stem().unwrap().to_string_lossy().into_owned();
        self.fragment_paths.iter().map(stem).collect()
    }

    /// The profile's kernel package in the release of `abi`.
    fn package(&self, abi: &str) -> String {
        package(abi, &self.flavour)
    }
}

/// Every (arch, platform) pair the manifest defines, resolved for the dev
/// flavour (flavours do not change the kernel or its fragments).
fn profiles() -> Vec<Profile> {
    let manifest = Manifest::load(&repo_root().join("rootfs/image.toml")).unwrap();
    let mut profiles = Vec::new();
    for arch in Arch::ALL {
        for platform in Platform::ALL {
            let Ok(spec) = manifest.resolve("dev", arch, platform) else {
                continue;
            };
            let flavour = spec.kernel_package.strip_prefix("linux-image-").unwrap();
            profiles.push(Profile {
                name: platform.as_str(),
                arch,
                flavour: flavour.to_owned(),
                fragment_paths: spec.kernel_config,
            });
        }
    }
    profiles
}

fn profile(name: &str, arch: Arch) -> Profile {
    profiles()
        .into_iter()
        .find(|p| p.name == name && p.arch == arch)
        .unwrap_or_else(|| panic!("rootfs/image.toml defines no {name} profile for {arch:?}"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn kernel_config_dir() -> PathBuf {
    repo_root().join("kernel-config")
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kernel-configs")
        .join(name);
    let compressed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8(zstd::decode_all(compressed.as_slice()).unwrap()).unwrap()
}

fn config_text(package: &str) -> String {
    fixture(&format!("{package}.config.zst"))
}

/// Module names (normalized) a package ships.
fn shipped_modules(package: &str) -> BTreeSet<String> {
    let list = fixture(&format!("{package}.modules.zst"));
    initramfs::kernel_modules(list.lines())
        .iter()
        .map(|m| normalize_module(m))
        .collect()
}

/// The facts of a Debian kernel package, without an initramfs.
fn package_facts(package: &str) -> KernelFacts {
    KernelFacts {
        kernel_release: package.trim_start_matches("linux-image-").to_owned(),
        config: parse_kernel_config(&config_text(package)),
        modules: shipped_modules(package),
        initramfs_modules: None,
    }
}

fn fragments(names: &[&str]) -> Vec<Fragment> {
    load_fragments(&kernel_config_dir(), names).unwrap()
}

/// Every module the profile's fragments want in the initramfs.
fn boot_modules(fragments: &[Fragment], arch: Arch) -> BTreeSet<String> {
    let requirements = fragments.iter().flat_map(|f| f.requirements_for(arch));
    requirements
        .filter(|r| r.initramfs)
        .flat_map(|r| r.modules.iter().map(|m| normalize_module(m)))
        .collect()
}

/// Checks the profile against its kernel in every release: every enforced
/// option is met.
fn assert_profile_passes(name: &str, arch: Arch, flavour: &str) {
    let profile = profile(name, arch);
    assert_eq!(
        profile.flavour, flavour,
        "the manifest's kernel flavour for {name} changed"
    );
    let fragments = profile.fragments();
    for (release, abi) in RELEASES {
        let report = check(&fragments, arch, &package_facts(&profile.package(abi)));
        assert!(report.is_ok(), "{release}: {report}");
        assert!(report.checked > 50, "{release}: {report}");
        assert!(!report.initramfs_checked);
        println!("{release}: {report}");
    }
}

#[test]
fn generic_x86_64_passes_on_debian_cloud_amd64() {
    assert_profile_passes("generic", Arch::X86_64, "cloud-amd64");
}

#[test]
fn generic_aarch64_passes_on_debian_cloud_arm64() {
    assert_profile_passes("generic", Arch::Aarch64, "cloud-arm64");
}

#[test]
fn kunpeng920_passes_on_debian_full_arm64() {
    assert_profile_passes("kunpeng920", Arch::Aarch64, "arm64");
}

#[test]
fn phytium_passes_on_debian_full_arm64() {
    assert_profile_passes("phytium", Arch::Aarch64, "arm64");
}

#[test]
fn every_enforced_option_exists_in_the_kernels_it_applies_to() {
    let mut missing = Vec::new();
    for profile in profiles() {
        for (_, abi) in RELEASES {
            let package = profile.package(abi);
            let config = parse_kernel_config(&config_text(&package));
            for fragment in profile.fragments() {
                for r in fragment.requirements_for(profile.arch) {
                    if !config.contains_key(&r.option) {
                        missing.push(format!(
                            "{}:{}: {} ({package})",
                            fragment.path.display(),
                            r.line,
                            r.option
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options the kernels do not know:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_wanted_option_is_missing_from_a_kernel_it_applies_to() {
    // A wanted option every kernel it applies to (each profile using its
    // fragment, in every release) has must be enforced instead.
    let mut applies = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for profile in profiles() {
        let fragments = profile.fragments();
        for fragment in &fragments {
            let here = |w: &Requirement| format!("{}:{}: {}", fragment.path.display(), w.line, w.option);
            applies.extend(fragment.wanted_for(profile.arch).map(here));
        }
        for (_, abi) in RELEASES {
            let report = check(&fragments, profile.arch, &package_facts(&profile.package(abi)));
            let here = |p: &Problem| format!("{}:{}: {}", p.fragment.display(), p.line, p.option);
            missing.extend(report.wanted.iter().map(here));
        }
    }
    assert!(!applies.is_empty(), "no wanted option left to check");
    let met_everywhere: Vec<String> = applies.difference(&missing).cloned().collect();
    assert!(
        met_everywhere.is_empty(),
        "wanted options every kernel they apply to has (enforce them):\n{}",
        met_everywhere.join("\n")
    );
}

/// Every captured kernel of `arch`: both flavours, every release.
fn captured_kernels(arch: Arch) -> Vec<KernelFacts> {
    let releases = RELEASES.iter().map(|(_, abi)| abi);
    let packages = releases.flat_map(|abi| FLAVOURS.map(|f| package(abi, &format!("{f}{}", arch.debian()))));
    packages.map(|p| package_facts(&p)).collect()
}

/// Every enforced requirement that names modules, with the architecture it
/// applies to and where it is (`fragment:line`), once per architecture.
fn module_requirements() -> Vec<(Arch, String, Requirement)> {
    let names = all_fragment_names();
    let mut found = Vec::new();
    for fragment in fragments(&names.iter().map(String::as_str).collect::<Vec<_>>()) {
        for arch in Arch::ALL {
            for r in fragment.requirements_for(arch).filter(|r| !r.modules.is_empty()) {
                let here = format!("{}:{}", fragment.path.display(), r.line);
                found.push((arch, here, r.clone()));
            }
        }
    }
    found
}

/// The modules `r` names that `kernel` does not ship, if it builds `r`'s
/// option as a module (a built-in `=y` needs no module file).
fn unshipped_modules<'a>(r: &'a Requirement, kernel: &KernelFacts) -> Vec<&'a str> {
    if kernel.config.get(&r.option).is_none_or(|value| value != "m") {
        return Vec::new();
    }
    let unshipped = r
        .modules
        .iter()
        .filter(|m| !kernel.modules.contains(&normalize_module(m)));
    unshipped.map(String::as_str).collect()
}

#[test]
fn a_named_module_ships_in_every_kernel_that_builds_its_option_as_a_module() {
    // Every captured kernel, not only the profiles' flavours: the names are
    // Debian's, whatever the flavour.
    let kernels: HashMap<Arch, Vec<KernelFacts>> = Arch::ALL.map(|a| (a, captured_kernels(a))).into();
    let mut unshipped = Vec::new();
    for (arch, here, r) in module_requirements() {
        for kernel in &kernels[&arch] {
            for module in unshipped_modules(&r, kernel) {
                unshipped.push(format!(
                    "{here}: {} module {module} ({})",
                    r.option, kernel.kernel_release
                ));
            }
        }
    }
    assert!(
        unshipped.is_empty(),
        "named modules a kernel with the option `=m` does not ship:\n{}",
        unshipped.join("\n")
    );
}

#[test]
fn every_named_module_ships_in_some_captured_kernel_of_its_arch() {
    // A name no kernel ships is never checked (where every kernel builds the
    // option in) or always fails: either way it is wrong.
    let shipped: HashMap<Arch, BTreeSet<String>> = Arch::ALL
        .map(|a| (a, captured_kernels(a).into_iter().flat_map(|k| k.modules).collect()))
        .into();
    let mut unknown = Vec::new();
    for (arch, here, r) in module_requirements() {
        for module in r
            .modules
            .iter()
            .filter(|m| !shipped[&arch].contains(&normalize_module(m)))
        {
            unknown.push(format!("{here}: {} module {module} ({arch})", r.option));
        }
    }
    assert!(
        unknown.is_empty(),
        "module names no captured Debian kernel ships:\n{}",
        unknown.join("\n")
    );
}

/// Every `*.config` in kernel-config/, by name.
fn all_fragment_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(kernel_config_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".config") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    names
}

#[test]
fn every_fragment_belongs_to_a_profile_and_profiles_do_not_conflict() {
    let profiles = profiles();
    assert_eq!(
        profiles.len(),
        4,
        "profiles in rootfs/image.toml: generic (both arches), kunpeng920, phytium"
    );
    for name in all_fragment_names() {
        assert!(
            profiles.iter().any(|p| p.fragment_names().contains(&name)),
            "{name}.config is in no profile of rootfs/image.toml"
        );
    }
    for profile in &profiles {
        let mut seen: BTreeMap<String, (Want, String)> = BTreeMap::new();
        for fragment in profile.fragments() {
            for r in fragment.requirements_for(profile.arch) {
                let here = format!("{}:{}", fragment.path.display(), r.line);
                if let Some((want, there)) = seen.get(&r.option) {
                    assert_eq!(
                        want, &r.want,
                        "{} {}: {here} conflicts with {there}",
                        profile.name, r.option
                    );
                } else {
                    seen.insert(r.option.clone(), (r.want.clone(), here));
                }
            }
        }
    }
}

#[test]
fn every_option_sits_under_a_comment_saying_why() {
    for name in all_fragment_names() {
        let path = kernel_config_dir().join(format!("{name}.config"));
        let text = std::fs::read_to_string(&path).unwrap();
        // A block is a run of non-blank lines; its options need a prose
        // comment above them in the block.
        let mut explained = false;
        for (index, line) in text.lines().enumerate() {
            let is_option =
                line.starts_with("CONFIG_") || (line.starts_with("# CONFIG_") && line.ends_with(" is not set"));
            if line.trim().is_empty() {
                explained = false;
            } else if is_option {
                assert!(
                    explained,
                    "{}:{}: `{line}` has no comment saying why",
                    path.display(),
                    index + 1
                );
            } else if line.starts_with("# ") && !line.starts_with("# cairn") {
                explained = true;
            }
        }
    }
}

/// Where `line` is in a fragment (1-based).
fn line_of(fragment: &str, line: &str) -> usize {
    let text = std::fs::read_to_string(kernel_config_dir().join(fragment)).unwrap();
    text.lines().position(|l| l == line).unwrap() + 1
}

#[test]
fn a_kernel_missing_required_options_fails_naming_each_option_and_line() {
    let cloud_amd64 = package(TRIXIE, "cloud-amd64");
    let config = config_text(&cloud_amd64);
    assert!(
        config.contains("\nCONFIG_SECCOMP_FILTER=y\n") && config.contains("\n# CONFIG_RT_GROUP_SCHED is not set\n")
    );
    let config = config
        .replace("\nCONFIG_SECCOMP_FILTER=y\n", "\n")
        .replace("\n# CONFIG_RT_GROUP_SCHED is not set\n", "\nCONFIG_RT_GROUP_SCHED=y\n");
    let facts = KernelFacts {
        config: parse_kernel_config(&config),
        ..package_facts(&cloud_amd64)
    };
    let report = check(&profile("generic", Arch::X86_64).fragments(), Arch::X86_64, &facts);

    let seccomp = line_of("container-host.config", "CONFIG_SECCOMP_FILTER=y");
    let rt = line_of("container-host.config", "# CONFIG_RT_GROUP_SCHED is not set");
    let problems: Vec<(String, usize)> = report.problems.iter().map(|p| (p.option.clone(), p.line)).collect();
    assert_eq!(
        problems,
        [
            ("CONFIG_RT_GROUP_SCHED".to_owned(), rt),
            ("CONFIG_SECCOMP_FILTER".to_owned(), seccomp)
        ]
    );
    assert!(report
        .problems
        .iter()
        .all(|p| p.fragment.ends_with("container-host.config")));
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "container-host.config:{seccomp}: CONFIG_SECCOMP_FILTER: required =y, kernel has no such option"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "container-host.config:{rt}: CONFIG_RT_GROUP_SCHED: required not set, kernel has =y"
        )),
        "{text}"
    );
    assert!(text.contains("2 of "), "{text}");
}

#[test]
fn a_module_that_does_not_ship_fails() {
    let mut facts = package_facts(&package(TRIXIE, "arm64"));
    assert!(facts.modules.remove("hns3"));
    let report = check(&profile("kunpeng920", Arch::Aarch64).fragments(), Arch::Aarch64, &facts);
    assert_eq!(report.problems.len(), 1, "{report}");
    let problem = &report.problems[0];
    assert_eq!(problem.option, "CONFIG_HNS3_ENET");
    assert_eq!(problem.line, line_of("kunpeng920.config", "CONFIG_HNS3_ENET=m"));
    assert_eq!(
        problem.unmet,
        Unmet::ModuleNotShipped {
            modules: vec!["hns3".into()]
        }
    );
    assert!(
        report.to_string().contains("kernel has =m but no hns3.ko* ships"),
        "{report}"
    );
}

#[test]
fn a_boot_module_missing_from_the_initramfs_fails() {
    let fragments = profile("kunpeng920", Arch::Aarch64).fragments();
    let mut facts = package_facts(&package(TRIXIE, "arm64"));
    let boot = boot_modules(&fragments, Arch::Aarch64);
    // The full kernel builds these as modules: the initramfs must hold them.
    for module in [
        "ext4",
        "crc32c_generic",
        "nvme",
        "ahci",
        "sd_mod",
        "hisi_sas_v3_hw",
        "virtio_blk",
    ] {
        assert!(boot.contains(module), "{module} is not marked `initramfs`");
    }
    facts.initramfs_modules = Some(boot.clone());
    let report = check(&fragments, Arch::Aarch64, &facts);
    assert!(report.is_ok() && report.initramfs_checked, "{report}");

    let mut without = boot;
    without.remove("hisi_sas_v3_hw");
    facts.initramfs_modules = Some(without);
    let report = check(&fragments, Arch::Aarch64, &facts);
    assert_eq!(report.problems.len(), 1, "{report}");
    let problem = &report.problems[0];
    assert_eq!(problem.option, "CONFIG_SCSI_HISI_SAS_PCI");
    assert_eq!(
        problem.unmet,
        Unmet::NotInInitramfs {
            modules: vec!["hisi_sas_v3_hw".into()]
        }
    );
    let line = line_of("kunpeng920.config", "CONFIG_SCSI_HISI_SAS_PCI=m");
    assert!(
        report.to_string().contains(&format!(
            "kunpeng920.config:{line}: CONFIG_SCSI_HISI_SAS_PCI: required =m in the initramfs (module hisi_sas_v3_hw), kernel has =m but hisi_sas_v3_hw is not in the initramfs"
        )),
        "{report}"
    );
}

#[test]
fn the_cloud_arm64_kernel_fails_kunpeng920_which_needs_the_full_flavour() {
    let fragments = profile("kunpeng920", Arch::Aarch64).fragments();
    for (release, abi) in RELEASES {
        let report = check(&fragments, Arch::Aarch64, &package_facts(&package(abi, "cloud-arm64")));
        assert!(!report.is_ok());
        println!("{release}: {report}");
        let unmet: BTreeSet<&str> = report.problems.iter().map(|p| p.option.as_str()).collect();
        // The BMC console, IPMI, the PCIe RAID/SAS HBAs and NICs, and USB are missing ...
        for option in [
            "CONFIG_DRM_HISI_HIBMC",
            "CONFIG_IPMI_HANDLER",
            "CONFIG_MEGARAID_SAS",
            "CONFIG_SCSI_MPT3SAS",
            "CONFIG_IXGBE",
            "CONFIG_USB_XHCI_PCI",
        ] {
            assert!(unmet.contains(option), "{release}: {option} not reported:\n{report}");
        }
        // ... while the SoC's own Ethernet (HNS3) and SAS are in the cloud
        // flavour too.
        for option in ["CONFIG_HNS3", "CONFIG_HNS3_ENET", "CONFIG_SCSI_HISI_SAS_PCI"] {
            assert!(!unmet.contains(option), "{release}: {option} reported:\n{report}");
        }
        // AHCI is there since 6.12; 6.1's cloud kernels had no SATA_AHCI.
        assert_eq!(
            unmet.contains("CONFIG_SATA_AHCI"),
            abi == BOOKWORM,
            "{release}: SATA_AHCI:\n{report}"
        );
        let line = line_of("kunpeng920.config", "CONFIG_DRM_HISI_HIBMC=m");
        assert!(
            report.to_string().contains(&format!(
                "kunpeng920.config:{line}: CONFIG_DRM_HISI_HIBMC: required =m (module hibmc-drm), kernel has no such option"
            )),
            "{release}: {report}"
        );
    }
}

#[test]
fn arm64_only_fragments_check_nothing_on_x86_64() {
    // Not a profile (x86_64 servers are not targeted), but the fragments'
    // arch gating must hold: arm64-only fragments check nothing on x86_64.
    let report = check(
        &fragments(&["arm64-server", "kunpeng920", "phytium"]),
        Arch::X86_64,
        &package_facts(&package(TRIXIE, "cloud-amd64")),
    );
    assert!(report.is_ok() && report.checked == 0, "{report}");
}

#[test]
fn every_required_module_of_a_pruning_profiles_allow_list_is_in_its_kernels() {
    // A platform with `modules = "fragments"` keeps only the hardware
    // drivers its allow-list names, and its build stops when a required one
    // is neither a module file nor built in: on the captured kernels of
    // every release, each is shipped, or built in through the option that
    // names it (`=y` where the fragment says `=m`).
    let manifest = Manifest::load(&repo_root().join("rootfs/image.toml")).unwrap();
    let mut pruning = Vec::new();
    let mut lacking = Vec::new();
    for profile in profiles() {
        let platform: Platform = profile.name.parse().unwrap();
        let spec = manifest.resolve("dev", profile.arch, platform).unwrap();
        let Some(allow) = compose::module_allow_list(&spec).unwrap() else {
            continue;
        };
        pruning.push(profile.name);
        let options_naming = |module: &str| -> Vec<String> {
            let fragments = profile.fragments();
            let requirements = fragments
                .iter()
                .flat_map(|f| f.requirements_for(profile.arch).cloned().collect::<Vec<_>>());
            let naming = requirements.filter(|r| {
                r.modules
                    .iter()
                    .any(|m| normalize_module(m) == normalize_module(module))
            });
            naming.map(|r| r.option).collect()
        };
        for (release, abi) in RELEASES {
            let kernel = package_facts(&profile.package(abi));
            for entry in allow.entries.iter().filter(|e| e.need == Need::Required) {
                let shipped = kernel.modules.contains(&normalize_module(&entry.module));
                let built_in = options_naming(&entry.module)
                    .iter()
                    .any(|o| kernel.config.get(o).is_some_and(|v| v == "y"));
                if !shipped && !built_in {
                    lacking.push(format!(
                        "{}: {release}: {}, required by {}",
                        profile.name, entry.module, entry.source
                    ));
                }
            }
        }
    }
    assert_eq!(
        pruning,
        ["kunpeng920", "phytium"],
        "the platforms that prune their drivers"
    );
    assert!(
        lacking.is_empty(),
        "required modules a kernel lacks:\n{}",
        lacking.join("\n")
    );
}
