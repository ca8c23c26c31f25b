//! Folders of drop-ins, merged in systemd's manner: every name from every
//! folder, in name order; a later folder's file replaces an earlier
//! folder's file of the same name (`/etc` over `/usr/lib`). A missing
//! folder holds nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The entries of `dirs` that `keep` accepts, by name, later folders winning.
pub fn merged(dirs: &[&Path], keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let listing = match std::fs::read_dir(dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in listing {
            let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
            if keep(&path) {
                let name = path.file_name().expect("a listed entry has a name").to_owned();
                by_name.insert(name, path);
            }
        }
    }
    Ok(by_name.into_values().collect())
}
