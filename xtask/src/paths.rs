//! Where things live. Caches and keys stay outside the git tree so a clean
//! clone reuses downloads and never sees a private key.

use std::path::PathBuf;

use cairn_common::layout::Arch;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Build products: `target/cairn/<arch>/`.
pub fn out(arch: Arch) -> PathBuf {
    workspace().join("target/cairn").join(arch.as_str())
}

pub fn repo(arch: Arch) -> PathBuf {
    out(arch).join("repo")
}

pub fn images(arch: Arch) -> PathBuf {
    out(arch).join("images")
}

pub fn manifest() -> PathBuf {
    workspace().join("rootfs/image.toml")
}

/// `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn cache() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_CACHE") {
        return p.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"))
        .join("cairn")
}

/// `$CAIRN_KEYS`, else `$XDG_DATA_HOME/cairn/keys/dev`, else `~/.local/share/cairn/keys/dev`.
pub fn keys() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_KEYS") {
        return p.into();
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("cairn/keys/dev")
}

/// Where the release binaries land.
pub fn release_bin() -> PathBuf {
    workspace().join("target/release")
}
