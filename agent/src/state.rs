//! What the agent remembers across boots, in `/var/lib/cairn/agent/state.json`.
//!
//! `/var` is shared by every deployment, so a trial deployment and the one
//! GRUB falls back to read the same record. Writes are atomic (temporary
//! file, fsync, rename, fsync of the folder): after a power cut the file is
//! either the old record or the new one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::lifecycle::Trial;

/// Where the state lives on a host.
pub const STATE_PATH: &str = "/var/lib/cairn/agent/state.json";
/// History entries kept (oldest dropped first).
const HISTORY_LIMIT: usize = 200;

/// Where the update lifecycle stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    #[default]
    Idle,
    /// A release is staged; the host reboots into it when the reboot
    /// strategy allows.
    Staged { version: String },
    /// The host booted the staged release and runs the health gate.
    Trial { version: String },
}

/// Something that happened, for `cairn-agent history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Checked,
    Staged,
    Committed,
    FellBack,
    StageLost,
    RolledBack,
    Refused,
    Failed,
}

/// The last error, shown by `status` until an operation succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at: u64,
    pub operation: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub phase: Phase,
    /// The update on trial (armed boot counter), from staging to its verdict.
    pub trial: Option<Trial>,
    pub last_check: Option<u64>,
    /// Newest release the last check saw, if newer than the booted one.
    pub available: Option<String>,
    pub last_error: Option<LastError>,
    /// Versions that failed their trial: not taken again automatically.
    pub bad_versions: BTreeSet<String>,
    pub history: Vec<Event>,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AgentState {
    pub fn record(&mut self, kind: EventKind, version: Option<&str>, detail: impl Into<String>) {
        self.history.push(Event {
            at: now(),
            kind,
            version: version.map(str::to_owned),
            detail: detail.into(),
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }

    pub fn fail(&mut self, operation: &str, error: &anyhow::Error) {
        let message = format!("{error:#}");
        self.record(EventKind::Failed, None, format!("{operation}: {message}"));
        self.set_error(operation, message);
    }

    /// Show `message` as the last error of `operation` (until one succeeds).
    pub fn set_error(&mut self, operation: &str, message: impl Into<String>) {
        self.last_error = Some(LastError {
            at: now(),
            operation: operation.to_owned(),
            message: message.into(),
        });
    }
}

/// The state file of a root (`/` on a host, a temporary folder in tests).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn host() -> Self {
        Self::new(STATE_PATH)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; a missing file is a fresh host.
    pub fn load(&self) -> Result<AgentState> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid agent state record", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn save(&self, state: &AgentState) -> Result<()> {
        let dir = self.path.parent().context("state path has no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        cairn_common::fsutil::write_atomic(&self.path, &serde_json::to_vec_pretty(state)?)
    }

    /// Load, change, save.
    pub fn update<T>(&self, change: impl FnOnce(&mut AgentState) -> T) -> Result<T> {
        let mut state = self.load()?;
        let out = change(&mut state);
        self.save(&state)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_a_fresh_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("agent/state.json"));
        assert_eq!(file.load().unwrap(), AgentState::default());
        file.update(|s| {
            s.phase = Phase::Staged {
                version: "1.1.0".into(),
            };
            s.bad_versions.insert("1.0.1".into());
            s.record(EventKind::Staged, Some("1.1.0"), "staged");
        })
        .unwrap();
        let s = file.load().unwrap();
        assert_eq!(
            s.phase,
            Phase::Staged {
                version: "1.1.0".into()
            }
        );
        assert!(s.bad_versions.contains("1.0.1"));
        assert_eq!(s.history.len(), 1);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = StateFile::new(&path).load().unwrap_err();
        assert!(
            format!("{err:#}").contains("state.json is not a valid agent state record"),
            "{err:#}"
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut s = AgentState::default();
        for i in 0..(HISTORY_LIMIT + 5) {
            s.record(EventKind::Checked, None, i.to_string());
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history[0].detail, "5");
    }
}
