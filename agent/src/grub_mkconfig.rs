//! ostree runs `$OSTREE_GRUB2_EXEC -o /boot/loader.N/grub.cfg` after writing
//! the new boot entries to `/boot/loader.N/entries` and before swapping the
//! `/boot/loader` symlink. The entries sit next to the output file, so the
//! output path is all this needs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::bootcfg::{self, GrubSettings};

/// Parse ostree's arguments (`-o FILE`, or `--output=FILE`).
pub fn parse_args(args: &[String]) -> Result<PathBuf> {
    let mut output = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" || a == "--output" {
            output = Some(it.next().context("`-o` needs a file")?.clone());
        } else if let Some(v) = a.strip_prefix("--output=") {
            output = Some(v.to_owned());
        } else {
            bail!("unexpected argument `{a}` (usage: cairn-grub-mkconfig -o /boot/loader.N/grub.cfg)");
        }
    }
    output
        .map(PathBuf::from)
        .context("no output file (usage: cairn-grub-mkconfig -o /boot/loader.N/grub.cfg)")
}

/// Generate the configuration for the entries next to `output`.
pub fn generate(output: &Path) -> Result<()> {
    let dir = output.parent().context("output file has no folder")?;
    let entries = dir.join("entries");
    bootcfg::write_config_from_dir(&entries, output, &GrubSettings::default())
        .with_context(|| format!("generating {}", output.display()))?;
    tracing::info!(output = %output.display(), "GRUB configuration written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ostree_invocation() {
        let args = vec!["-o".to_owned(), "/boot/loader.1/grub.cfg".to_owned()];
        assert_eq!(parse_args(&args).unwrap(), PathBuf::from("/boot/loader.1/grub.cfg"));
        assert!(parse_args(&[]).is_err());
        assert!(parse_args(&["--bogus".to_owned()]).is_err());
    }

    #[test]
    fn writes_menu_from_sibling_entries() {
        let d = tempfile::tempdir().unwrap();
        let loader = d.path().join("loader.1");
        std::fs::create_dir_all(loader.join("entries")).unwrap();
        std::fs::write(
            loader.join("entries/ostree-1-cairn.conf"),
            "title Cairn 1.0.0 (ostree:1)\nversion 1\nlinux /ostree/cairn-a/vmlinuz\ninitrd /ostree/cairn-a/initramfs.img\noptions ostree=/ostree/boot.1/cairn/a/0\n",
        )
        .unwrap();
        std::fs::write(
            loader.join("entries/ostree-2-cairn.conf"),
            "title Cairn 1.1.0 (ostree:0)\nversion 2\nlinux /ostree/cairn-b/vmlinuz\ninitrd /ostree/cairn-b/initramfs.img\noptions ostree=/ostree/boot.1/cairn/b/0\n",
        )
        .unwrap();
        let out = loader.join("grub.cfg");
        generate(&out).unwrap();
        let cfg = std::fs::read_to_string(&out).unwrap();
        let first = cfg.find("menuentry \"Cairn 1.1.0 (ostree:0)\" --id cairn-0").unwrap();
        let second = cfg.find("menuentry \"Cairn 1.0.0 (ostree:1)\" --id cairn-1").unwrap();
        assert!(first < second);
        assert!(cfg.contains("linux /boot/ostree/cairn-b/vmlinuz ostree=/ostree/boot.1/cairn/b/0"));
        let leftovers: Vec<_> = std::fs::read_dir(&loader).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 2, "only entries/ and grub.cfg remain");
    }

    #[test]
    fn missing_entries_fail_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("grub.cfg");
        let e = generate(&out).unwrap_err();
        assert!(format!("{e:#}").contains("listing boot entries"), "{e:#}");
        assert!(!out.exists());
    }
}
