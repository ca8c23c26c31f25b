//! ostree's Boot Loader Specification entries to a GRUB configuration.
//!
//! Debian's GRUB has no `blscfg` command, so Cairn is ostree's GRUB config
//! generator (`OSTREE_GRUB2_EXEC`). ostree writes one BLS entry per deployment
//! into `/boot/loader.N/entries` and calls the generator to produce
//! `/boot/loader.N/grub.cfg` before it atomically swaps the `loader` symlink.
//! The image builder calls the same code for the first deployment.
//!
//! Entry 0 is the default deployment; entry 1 the previous one. The header
//! implements the boot counter (see [`crate::grubenv::vars`]): while a trial
//! is armed each boot decrements the tries left, and once none are left GRUB
//! boots entry 1 and records that it fell back.

use std::fmt::Write as _;

use thiserror::Error;

use crate::grubenv::vars;
use crate::layout::GRUBENV_ESP_PATH;

/// Highest number of trial boots the GRUB header can count down from.
pub const MAX_TRIES: u32 = 9;

/// One parsed BLS entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    /// File name the entry came from, for error messages.
    pub source: String,
    pub title: String,
    /// ostree's sort key: the default deployment has the highest.
    pub version: u64,
    pub linux: String,
    pub initrd: Vec<String>,
    pub devicetree: Option<String>,
    pub options: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootCfgError {
    #[error("{file}: line {line}: {message}")]
    Entry { file: String, line: usize, message: String },
    #[error("{file}: missing `{key}`")]
    MissingKey { file: String, key: &'static str },
    #[error("no boot entries: nothing to boot")]
    NoEntries,
}

/// Parse the text of one BLS entry file.
pub fn parse_entry(source: &str, text: &str) -> Result<BlsEntry, BootCfgError> {
    let mut entry = BlsEntry {
        source: source.to_owned(),
        ..Default::default()
    };
    let mut has_version = false;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        let error = |message: String| BootCfgError::Entry {
            file: source.to_owned(),
            line: index + 1,
            message,
        };
        if value.contains(['"', '\'', '$', '\\', '\n', ';', '{', '}']) && key != "title" {
            return Err(error(format!(
                "`{key}` has a character GRUB would interpret: {value:?}"
            )));
        }
        match key {
            "title" => entry.title = value.to_owned(),
            "version" => {
                entry.version = value
                    .parse()
                    .map_err(|_| error(format!("version `{value}` is not a number")))?;
                has_version = true;
            }
            "linux" => entry.linux = value.to_owned(),
            "initrd" => entry.initrd.push(value.to_owned()),
            "devicetree" => entry.devicetree = Some(value.to_owned()),
            "options" => entry.options = value.to_owned(),
            // Keys GRUB has no use for (machine-id, aboot, …) are ignored.
            _ => {}
        }
    }
    if entry.linux.is_empty() {
        return Err(BootCfgError::MissingKey {
            file: source.to_owned(),
            key: "linux",
        });
    }
    if !has_version {
        return Err(BootCfgError::MissingKey {
            file: source.to_owned(),
            key: "version",
        });
    }
    Ok(entry)
}

/// Settings of the generated configuration that do not come from ostree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubSettings {
    /// Prefix of every BLS path as GRUB sees it (`/boot` when /boot is a
    /// directory of the root partition).
    pub boot_prefix: String,
    /// Seconds the menu waits when it is shown: after a fall-back, when
    /// someone at the console may want to choose. Every other boot, a
    /// trial boot of a new deployment included (its counter decides what
    /// boots next), starts the default entry at once (`timeout=0`).
    pub menu_timeout_secs: u32,
}

impl Default for GrubSettings {
    fn default() -> Self {
        Self {
            boot_prefix: crate::layout::BOOT_PREFIX.to_owned(),
            menu_timeout_secs: 3,
        }
    }
}

/// Order entries as ostree does: the default deployment (highest version) first.
pub fn sort_entries(entries: &mut [BlsEntry]) {
    entries.sort_by(|a, b| b.version.cmp(&a.version).then_with(|| a.source.cmp(&b.source)));
}

/// The GRUB configuration for these entries (sorted here, default first).
pub fn render(mut entries: Vec<BlsEntry>, settings: &GrubSettings) -> Result<String, BootCfgError> {
    if entries.is_empty() {
        return Err(BootCfgError::NoEntries);
    }
    sort_entries(&mut entries);
    let mut out = String::new();
    out.push_str("# Generated by cairn grub-mkconfig from ostree's BLS entries. Do not edit.\n");
    out.push_str(&boot_counter_header(entries.len() > 1));
    out.push_str(&menu_timeout(settings.menu_timeout_secs));
    for (index, entry) in entries.iter().enumerate() {
        let title = entry.title.replace(['"', '\\', '$'], "");
        let title = if title.is_empty() {
            format!("Cairn deployment {index}")
        } else {
            title
        };
        let _ = writeln!(out, "menuentry \"{title}\" --id cairn-{index} {{");
        let _ = writeln!(out, "  linux {}{} {}", settings.boot_prefix, entry.linux, entry.options);
        if !entry.initrd.is_empty() {
            let paths: Vec<String> = entry
                .initrd
                .iter()
                .map(|p| format!("{}{}", settings.boot_prefix, p))
                .collect();
            let _ = writeln!(out, "  initrd {}", paths.join(" "));
        }
        if let Some(dtb) = &entry.devicetree {
            let _ = writeln!(out, "  devicetree {}{}", settings.boot_prefix, dtb);
        }
        out.push_str("}\n");
    }
    Ok(out)
}

/// GRUB script for the menu's timeout: none (boot the default at once)
/// unless GRUB fell back from a failed trial, then `secs`. Runs after
/// [`boot_counter_header`], which loads (and may set) the fall-back flag.
fn menu_timeout(secs: u32) -> String {
    let fallback = vars::FALLBACK;
    format!("set timeout=0\nif [ \"${{{fallback}}}\" = \"1\" ]; then\n  set timeout={secs}\nfi\n")
}

/// GRUB script for the boot counter. `cairn_esp` is set by the embedded
/// configuration of Cairn's GRUB image to the partition GRUB was loaded from.
fn boot_counter_header(has_previous: bool) -> String {
    let env = format!("(${{cairn_esp}})/{GRUBENV_ESP_PATH}");
    let (trial, tries, fallback) = (vars::TRIAL, vars::TRIES, vars::FALLBACK);
    let mut s = String::new();
    s.push_str("set default=0\n");
    let _ = writeln!(s, "if [ -n \"${{cairn_esp}}\" ]; then");
    let _ = writeln!(s, "  load_env --file {env} {trial} {tries} {fallback}");
    let _ = writeln!(s, "  if [ \"${{{trial}}}\" = \"1\" ]; then");
    let _ = writeln!(s, "    if [ \"${{{tries}}}\" = \"0\" ]; then");
    if has_previous {
        let _ = writeln!(s, "      set default=1");
    }
    let _ = writeln!(s, "      set {fallback}=1");
    let _ = writeln!(s, "      save_env --file {env} {fallback}");
    for n in (1..=MAX_TRIES).rev() {
        let _ = writeln!(s, "    elif [ \"${{{tries}}}\" = \"{n}\" ]; then");
        let _ = writeln!(s, "      set {tries}={}", n - 1);
        let _ = writeln!(s, "      save_env --file {env} {tries}");
    }
    // An armed trial with a counter GRUB cannot read is exhausted: boot the
    // known-good deployment rather than loop on an unknown one.
    let _ = writeln!(s, "    else");
    if has_previous {
        let _ = writeln!(s, "      set default=1");
    }
    let _ = writeln!(s, "      set {fallback}=1");
    let _ = writeln!(s, "      save_env --file {env} {fallback}");
    s.push_str("    fi\n  fi\nfi\n");
    s
}

/// Read every BLS entry in `entries_dir` and write the GRUB configuration to
/// `output` atomically (temporary file, fsync, rename). This is what both
/// the image builder and ostree's `OSTREE_GRUB2_EXEC` hook run.
pub fn write_config_from_dir(
    entries_dir: &std::path::Path,
    output: &std::path::Path,
    settings: &GrubSettings,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut entries = Vec::new();
    let listing =
        std::fs::read_dir(entries_dir).with_context(|| format!("listing boot entries in {}", entries_dir.display()))?;
    for e in listing {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "conf") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.push(parse_entry(&name, &text)?);
        }
    }
    let cfg = render(entries, settings).with_context(|| format!("boot entries in {}", entries_dir.display()))?;
    crate::fsutil::write_atomic(output, cfg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OSTREE_ENTRY: &str = "title Debian GNU/Linux 12 (bookworm) (ostree:cairn:0)
version 2
options root=LABEL=cairn-root rw console=ttyS0,115200 ostree=/ostree/boot.1/cairn/abc/0
linux /ostree/cairn-abc/vmlinuz-6.1.0-56-cloud-amd64
initrd /ostree/cairn-abc/initramfs-6.1.0-56-cloud-amd64.img
";

    fn entry(version: u64, name: &str) -> BlsEntry {
        BlsEntry {
            source: format!("ostree-{version}-cairn.conf"),
            title: name.to_owned(),
            version,
            linux: format!("/ostree/{name}/vmlinuz"),
            initrd: vec![format!("/ostree/{name}/initramfs.img")],
            devicetree: None,
            options: format!("ostree=/ostree/boot.0/cairn/{name}/0"),
        }
    }

    #[test]
    fn parses_ostree_entry() {
        let e = parse_entry("ostree-2-cairn.conf", OSTREE_ENTRY).unwrap();
        assert_eq!(e.version, 2);
        assert_eq!(e.linux, "/ostree/cairn-abc/vmlinuz-6.1.0-56-cloud-amd64");
        assert_eq!(e.initrd.len(), 1);
        assert!(e.options.ends_with("/0"));
    }

    #[test]
    fn entry_errors_name_file_and_line() {
        let err = parse_entry("x.conf", "version two\nlinux /k\n").unwrap_err();
        assert_eq!(err.to_string(), "x.conf: line 1: version `two` is not a number");
        let err = parse_entry("y.conf", "version 1\n").unwrap_err();
        assert_eq!(err.to_string(), "y.conf: missing `linux`");
        let err = parse_entry("z.conf", "version 1\nlinux /k\noptions a=$(reboot)\n").unwrap_err();
        assert!(err.to_string().starts_with("z.conf: line 3:"), "{err}");
    }

    #[test]
    fn default_deployment_is_first_and_paths_get_boot_prefix() {
        let cfg = render(vec![entry(1, "old"), entry(2, "new")], &GrubSettings::default()).unwrap();
        let new = cfg.find("menuentry \"new\" --id cairn-0").expect("new is entry 0");
        let old = cfg.find("menuentry \"old\" --id cairn-1").expect("old is entry 1");
        assert!(new < old);
        assert!(cfg.contains("  linux /boot/ostree/new/vmlinuz ostree=/ostree/boot.0/cairn/new/0\n"));
        assert!(cfg.contains("  initrd /boot/ostree/new/initramfs.img\n"));
    }

    #[test]
    fn exhausted_trial_falls_back_to_previous_deployment() {
        let cfg = render(vec![entry(1, "old"), entry(2, "new")], &GrubSettings::default()).unwrap();
        let zero = cfg.find("if [ \"${cairn_tries}\" = \"0\" ]; then\n      set default=1\n");
        assert!(zero.is_some(), "{cfg}");
        // Every count from MAX_TRIES down to 1 is decremented by exactly one.
        for n in 1..=MAX_TRIES {
            let step = format!(
                "elif [ \"${{cairn_tries}}\" = \"{n}\" ]; then\n      set cairn_tries={}\n      save_env",
                n - 1
            );
            assert!(cfg.contains(&step), "missing step {n}");
        }
        assert!(cfg.contains("load_env --file (${cairn_esp})/EFI/cairn/grubenv"));
    }

    #[test]
    fn single_deployment_never_selects_a_missing_entry() {
        let cfg = render(vec![entry(1, "only")], &GrubSettings::default()).unwrap();
        assert!(!cfg.contains("set default=1"));
        assert!(cfg.contains("set cairn_fallback=1"));
    }

    #[test]
    fn the_menu_waits_only_after_a_fall_back() {
        let settings = GrubSettings {
            menu_timeout_secs: 7,
            ..GrubSettings::default()
        };
        let cfg = render(vec![entry(1, "old"), entry(2, "new")], &settings).unwrap();
        // The timeout is decided after the counter ran (it may set the
        // fall-back flag) and before the first entry.
        let counter = cfg.rfind("save_env --file").unwrap();
        let zero = cfg.find("set timeout=0\n").expect("no timeout by default");
        let first_entry = cfg.find("menuentry").unwrap();
        assert!(counter < zero && zero < first_entry, "{cfg}");
        let shown = format!(
            "if [ \"${{{}}}\" = \"1\" ]; then\n  set timeout=7\nfi\n",
            vars::FALLBACK
        );
        let at = cfg
            .find(&shown)
            .unwrap_or_else(|| panic!("no menu after a fall-back:\n{cfg}"));
        assert!(zero < at && at < first_entry);
        // A trial boot does not wait: only those two settings exist.
        assert_eq!(cfg.matches("set timeout=").count(), 2, "{cfg}");
    }

    #[test]
    fn no_entries_is_an_error() {
        assert_eq!(render(vec![], &GrubSettings::default()), Err(BootCfgError::NoEntries));
    }
}
