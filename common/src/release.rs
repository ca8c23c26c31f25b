//! What an update repository says of one release.
//!
//! `cairn-build publish` writes one TUF target per release: a small JSON
//! file holding a [`Release`], whose fields are repeated in the target's
//! signed `custom` metadata. The agent trusts a release only through TUF,
//! and then pulls exactly the ostree commit it names.

use serde::{Deserialize, Serialize};

use crate::layout::Arch;

/// Folder of the TUF metadata under an update repository's URL.
pub const TUF_DIR: &str = "tuf";
/// Folder of the TUF targets (release records) under the repository's URL.
pub const TARGETS_DIR: &str = "targets";
/// Folder of the ostree archive repository under the repository's URL.
pub const OSTREE_DIR: &str = "ostree";

/// One release, as its TUF target names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Release {
    /// Semantic version of the release.
    pub version: String,
    pub arch: Arch,
    /// Image flavour (`dev`, `prod`): a host only takes its own flavour.
    pub flavor: String,
    pub stream: String,
    /// The ostree ref the commit is published under.
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    /// SHA-256 of the ostree commit object: pins every byte of the tree.
    pub commit: String,
    /// Versions a host must be running to update to this release
    /// (a semver requirement such as `>=0.1.0`); any version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
}

impl Release {
    /// The TUF target name of this release.
    pub fn target_name(&self) -> String {
        format!("{}-{}-{}-{}.json", self.flavor, self.stream, self.arch, self.version)
    }

    /// Whether `commit` looks like an ostree commit checksum.
    pub fn is_checksum(commit: &str) -> bool {
        commit.len() == 64 && commit.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_json_round_trips_and_refuses_unknown_fields() {
        let r = Release {
            version: "1.2.0".into(),
            arch: Arch::X86_64,
            flavor: "dev".into(),
            stream: "stable".into(),
            ostree_ref: "cairn/x86_64/stable".into(),
            commit: "a".repeat(64),
            requires: Some(">=1.0.0".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), r);
        assert_eq!(r.target_name(), "dev-stable-x86_64-1.2.0.json");
        let extra = json.replace("\"stream\"", "\"extra\":1,\"stream\"");
        assert!(serde_json::from_str::<Release>(&extra).is_err());
        assert!(Release::is_checksum(&r.commit));
        assert!(!Release::is_checksum("A".repeat(64).as_str()));
    }
}
