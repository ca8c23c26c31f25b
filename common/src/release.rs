//! What an update repository says of one release.
//!
//! `cairn-build publish` writes one TUF target per release: a small JSON
//! file holding a [`Release`], whose fields are repeated in the target's
//! signed `custom` metadata. The agent trusts a release only through TUF,
//! and then pulls exactly the ostree commit it names.

use serde::{Deserialize, Serialize};

use crate::identity::Variant;
use crate::layout::Arch;

/// Folder of the TUF metadata under an update repository's URL.
pub const TUF_DIR: &str = "tuf";
/// Folder of the TUF targets (release records) under the repository's URL.
pub const TARGETS_DIR: &str = "targets";
/// Folder of the ostree archive repository under the repository's URL.
pub const OSTREE_DIR: &str = "ostree";

/// One release, as its TUF target names it.
///
/// Unknown fields are ignored, not refused: deployed agents read these
/// records, and one that refused a field added later would never see a
/// release again. (Agents built before this rule refuse them: no field may
/// be added while hosts running such an agent remain.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Release {
    /// Semantic version of the release.
    pub version: String,
    pub arch: Arch,
    /// The image variant (flavor, and platform off generic): a host only
    /// takes its own. Named `flavor` on the wire, the name every agent reads.
    #[serde(rename = "flavor")]
    pub variant: Variant,
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
        format!("{}-{}-{}-{}.json", self.variant, self.stream, self.arch, self.version)
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
    fn release_json_round_trips_and_keeps_its_wire_names() {
        let r = Release {
            version: "1.2.0".into(),
            arch: Arch::X86_64,
            variant: "prod-kunpeng920".parse().unwrap(),
            stream: "stable".into(),
            ostree_ref: "cairn/x86_64/prod-kunpeng920/stable".into(),
            commit: "a".repeat(64),
            requires: Some(">=1.0.0".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"version":"1.2.0","arch":"x86_64","flavor":"prod-kunpeng920","stream":"stable","ref":"cairn/x86_64/prod-kunpeng920/stable","commit":"{}","requires":">=1.0.0"}}"#,
                "a".repeat(64)
            )
        );
        assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), r);
        assert_eq!(r.target_name(), "prod-kunpeng920-stable-x86_64-1.2.0.json");
        // A field added by a later builder does not hide the release.
        let extra = json.replace("\"stream\"", "\"extra\":1,\"stream\"");
        assert_eq!(serde_json::from_str::<Release>(&extra).unwrap(), r);
        assert!(Release::is_checksum(&r.commit));
        assert!(!Release::is_checksum("A".repeat(64).as_str()));
    }
}
