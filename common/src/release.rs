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

/// A phased rollout of one release: hosts take the release in waves over
/// `duration_secs` from `start`, each when its place in the fleet (a
/// number in [0, 1) derived from its machine id) comes up.
///
/// It is a TUF target of its own, [`Rollout::target_name`], beside the
/// release's, so the rollout can change (paused, resumed, stretched)
/// without touching the release record. Agents from before rollouts
/// existed refuse it as "not a Cairn release" and take the release at
/// once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Rollout {
    /// The target name of the release rolled out.
    pub release: String,
    /// Seconds since the epoch.
    pub start: u64,
    pub duration_secs: u64,
    /// Paused at this time (seconds since the epoch): hosts whose turn
    /// comes later wait until it resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<u64>,
}

/// Rollout targets are named `rollout.<release target>`: no release's name
/// has a `.` before its version (variants are lowercase letters, digits
/// and `-`), so the two never meet.
pub const ROLLOUT_PREFIX: &str = "rollout.";

impl Rollout {
    /// The TUF target name of the rollout of release target `release`.
    pub fn target_name_of(release: &str) -> String {
        format!("{ROLLOUT_PREFIX}{release}")
    }

    pub fn target_name(&self) -> String {
        Self::target_name_of(&self.release)
    }

    /// When a host at `position` (in [0, 1)) may take the release; `None`
    /// while paused before its turn.
    pub fn turn_of(&self, position: f64) -> Option<u64> {
        let offset = (self.duration_secs as f64 * position.clamp(0.0, 1.0)).floor() as u64;
        let turn = self.start.saturating_add(offset.min(self.duration_secs));
        match self.paused_at {
            Some(paused) if turn > paused => None,
            _ => Some(turn),
        }
    }

    /// Paused at `now` (no effect when paused already).
    pub fn pause(&mut self, now: u64) {
        self.paused_at.get_or_insert(now);
    }

    /// Resumed at `now`: the pause's length is added to the start, so
    /// hosts whose turn had not come when it paused wait as long as they
    /// had left.
    pub fn resume(&mut self, now: u64) {
        if let Some(paused) = self.paused_at.take() {
            self.start = self.start.saturating_add(now.saturating_sub(paused));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_gives_each_position_its_turn_and_pausing_holds_the_rest() {
        let mut r = Rollout {
            release: "dev-stable-x86_64-1.2.0.json".into(),
            start: 1000,
            duration_secs: 100,
            paused_at: None,
        };
        assert_eq!(r.target_name(), "rollout.dev-stable-x86_64-1.2.0.json");
        assert_eq!(r.turn_of(0.0), Some(1000));
        assert_eq!(r.turn_of(0.5), Some(1050));
        assert_eq!(r.turn_of(0.999_999), Some(1099));
        assert_eq!(r.turn_of(7.0), Some(1100), "clamped");
        r.pause(1040);
        assert_eq!(r.turn_of(0.3), Some(1030), "its turn came before the pause");
        assert_eq!(r.turn_of(0.5), None);
        r.pause(1090);
        assert_eq!(r.paused_at, Some(1040), "pausing again changes nothing");
        r.resume(1240);
        assert_eq!((r.start, r.paused_at), (1200, None));
        assert_eq!(r.turn_of(0.5), Some(1250), "10 s left when paused, 10 s after resuming");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"release":"dev-stable-x86_64-1.2.0.json","start":1200,"duration-secs":100}"#
        );
        assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), r);
        // A release record is not a rollout, nor the reverse.
        assert!(serde_json::from_str::<Release>(&json).is_err());
    }

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
