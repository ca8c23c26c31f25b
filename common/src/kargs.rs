//! Kernel arguments that travel with a release (bootc's `kargs.d`).
//!
//! A commit carries its kernel arguments as TOML files in
//! `/usr/lib/cairn/kargs.d/*.toml`, each holding exactly `kargs = [...]`.
//! The builder writes the image's own (`00-image.toml`, from the manifest)
//! and deploys the disk image with what [`load`] reads back from the
//! composed tree; the agent reads the same files of a release it stages, so
//! image time and update time cannot disagree. `root=` is not among them:
//! it names the disk, not the release, and stays an image-time argument.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The folder, relative to a root, holding the kernel-argument files.
pub const KARGS_DIR: &str = "usr/lib/cairn/kargs.d";

/// The file the builder writes from the image manifest.
pub const IMAGE_KARGS_FILE: &str = "00-image.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KargsFile {
    kargs: Vec<String>,
}

/// The text of a kernel-argument file holding `kargs`, in order.
pub fn render(kargs: &[String]) -> String {
    let items: Vec<String> = kargs.iter().map(|k| toml_string(k)).collect();
    format!("kargs = [{}]\n", items.join(", "))
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Parse one kernel-argument file (`name` is for the error).
pub fn parse(name: &Path, text: &str) -> Result<Vec<String>> {
    let file: KargsFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let (line, column) = crate::fsutil::line_col(text, s.start);
                format!(":{line}:{column}")
            })
            .unwrap_or_default();
        anyhow::anyhow!("{}{at}: {}", name.display(), e.message())
    })?;
    for k in &file.kargs {
        anyhow::ensure!(
            !k.is_empty() && !k.contains(char::is_whitespace),
            "{}: kernel argument {k:?} must be one word",
            name.display()
        );
    }
    Ok(file.kargs)
}

/// The kernel-argument files below `root`, sorted by file name.
pub fn files(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join(KARGS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            out.push(path);
        }
    }
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(out)
}

/// Every kernel argument the tree at `root` carries: the `kargs` of each
/// `*.toml` in its `kargs.d`, files in name order.
pub fn load(root: &Path) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for path in files(root)? {
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        all.extend(parse(&path, &text)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_exactly_a_toml_array_that_parses_back() {
        let kargs = strings(&["rw", "panic=10", "console=ttyS0,115200", "x=\"q\""]);
        let text = render(&kargs);
        assert_eq!(
            text,
            "kargs = [\"rw\", \"panic=10\", \"console=ttyS0,115200\", \"x=\\\"q\\\"\"]\n"
        );
        assert_eq!(parse(Path::new("00-image.toml"), &text).unwrap(), kargs);
        assert_eq!(render(&[]), "kargs = []\n");
    }

    #[test]
    fn loads_toml_files_in_name_order_and_skips_others() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().is_empty(), "no kargs.d: no arguments");
        let dir = d.path().join(KARGS_DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10-site.toml"), "kargs = [\"quiet\"]\n").unwrap();
        fs::write(dir.join("00-image.toml"), render(&strings(&["rw", "panic=10"]))).unwrap();
        fs::write(dir.join("README"), "not a kargs file").unwrap();
        fs::write(dir.join("05-x.toml.disabled"), "kargs = [\"no\"]").unwrap();
        assert_eq!(load(d.path()).unwrap(), strings(&["rw", "panic=10", "quiet"]));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(KARGS_DIR);
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("20-bad.toml");
        fs::write(&f, "kargs = [\"rw\"]\nmatch-architectures = [\"x86_64\"]\n").unwrap();
        let e = format!("{:#}", load(d.path()).unwrap_err());
        assert!(e.contains("20-bad.toml:2:1"), "{e}");
        assert!(e.contains("unknown field `match-architectures`"), "{e}");

        fs::write(&f, "kargs = [\"two words\"]\n").unwrap();
        let e = format!("{:#}", load(d.path()).unwrap_err());
        assert!(
            e.contains("20-bad.toml: kernel argument \"two words\" must be one word"),
            "{e}"
        );

        fs::write(&f, "kargs = \"rw\"\n").unwrap();
        let e = format!("{:#}", load(d.path()).unwrap_err());
        assert!(e.contains("20-bad.toml:1:9"), "{e}");
    }
}
