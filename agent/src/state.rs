//! What the agent remembers across boots, in `/var/lib/cairn/agent/state.json`.
//!
//! `/var` is shared by every deployment, so a trial deployment and the one
//! GRUB falls back to read the same record. Writes are atomic (temporary
//! file, fsync, rename, fsync of the folder): after a power cut the file is
//! either the old record or the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{ExclusionReason, Note, Trial, UpdateState};

/// Where the state lives on a host.
pub const STATE_PATH: &str = "/var/lib/cairn/agent/state.json";
/// History entries kept (oldest dropped first).
const HISTORY_LIMIT: usize = 200;
/// The record's format: 2 since the typed lifecycle (1 had `phase` beside
/// `trial`, and `bad_versions`; still read).
pub const SCHEMA: u32 = 2;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Checked,
    Staged,
    Committed,
    FellBack,
    StageLost,
    RollbackStaged,
    RolledBack,
    Refused,
    Failed,
}

impl EventKind {
    /// How an update (or rollback) ended, as the metrics count them; not
    /// checks, stagings or failed operations (`last_error` shows those).
    pub fn is_outcome(self) -> bool {
        matches!(
            self,
            EventKind::Committed
                | EventKind::FellBack
                | EventKind::StageLost
                | EventKind::RolledBack
                | EventKind::Refused
        )
    }

    /// Its name in the state file and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Checked => "checked",
            EventKind::Staged => "staged",
            EventKind::Committed => "committed",
            EventKind::FellBack => "fell-back",
            EventKind::StageLost => "stage-lost",
            EventKind::RollbackStaged => "rollback-staged",
            EventKind::RolledBack => "rolled-back",
            EventKind::Refused => "refused",
            EventKind::Failed => "failed",
        }
    }
}

/// The last error, shown by `status` until an operation succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at: u64,
    pub operation: String,
    pub message: String,
}

/// A version the agent does not take by itself, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub reason: ExclusionReason,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredState")]
pub struct AgentState {
    pub schema: u32,
    /// The update lifecycle: the one record of where it stands.
    pub update: UpdateState,
    pub last_check: Option<u64>,
    /// Newest release the last check saw, if newer than the booted one.
    pub available: Option<String>,
    /// A newer release the last check saw rolling out, whose turn has not
    /// come for this host.
    pub turn: Option<crate::selection::Turn>,
    pub last_error: Option<LastError>,
    /// Versions not taken automatically: failed trials, versions an
    /// operator rolled back from. Naming one explicitly takes it.
    pub excluded: BTreeMap<String, Exclusion>,
    pub history: Vec<Event>,
    /// How many times each update outcome happened, ever (the history
    /// keeps only its last entries): the metrics' counters.
    pub outcomes: BTreeMap<EventKind, u64>,
}

/// Every format the state file has had, read leniently and then checked.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StoredState {
    schema: Option<u32>,
    update: Option<UpdateState>,
    last_check: Option<u64>,
    available: Option<String>,
    turn: Option<crate::selection::Turn>,
    last_error: Option<LastError>,
    excluded: BTreeMap<String, Exclusion>,
    history: Vec<Event>,
    outcomes: BTreeMap<EventKind, u64>,
    // Schema 1.
    phase: Option<serde_json::Value>,
    trial: Option<Trial>,
    bad_versions: BTreeSet<String>,
}

impl TryFrom<StoredState> for AgentState {
    type Error = String;

    fn try_from(s: StoredState) -> Result<Self, String> {
        let schema = s.schema.unwrap_or(1);
        if schema > SCHEMA {
            return Err(format!(
                "schema {schema} is newer than this agent's ({SCHEMA}): was a newer release rolled back from?"
            ));
        }
        let update = match (s.update, s.trial) {
            (Some(update), _) => update,
            // Schema 1: a trial was recorded from staging to its verdict;
            // `phase` said whether it had booted. A `staged` phase with no
            // trial was a rollback, which that agent never settled.
            (None, Some(trial)) => {
                let booted = s.phase.as_ref().and_then(|p| p.get("phase")).and_then(|p| p.as_str()) == Some("trial");
                if booted {
                    UpdateState::OnTrial { trial }
                } else {
                    UpdateState::Staged {
                        trial,
                        operator_reboots: false,
                    }
                }
            }
            (None, None) => UpdateState::Idle,
        };
        let mut excluded = s.excluded;
        for version in s.bad_versions {
            excluded.entry(version).or_insert(Exclusion {
                reason: ExclusionReason::FailedTrial,
                at: 0,
            });
        }
        Ok(AgentState {
            schema: SCHEMA,
            update,
            last_check: s.last_check,
            available: s.available,
            turn: s.turn,
            last_error: s.last_error,
            excluded,
            history: s.history,
            outcomes: s.outcomes,
        })
    }
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            schema: SCHEMA,
            update: UpdateState::Idle,
            last_check: None,
            available: None,
            turn: None,
            last_error: None,
            excluded: BTreeMap::new(),
            history: Vec::new(),
            outcomes: BTreeMap::new(),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AgentState {
    pub fn record(&mut self, at: u64, kind: EventKind, version: Option<&str>, detail: impl Into<String>) {
        if kind.is_outcome() {
            *self.outcomes.entry(kind).or_default() += 1;
        }
        self.history.push(Event {
            at,
            kind,
            version: version.map(str::to_owned),
            detail: detail.into(),
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }

    /// Record `error` as the last error of `operation`, and in the history.
    pub fn fail(&mut self, at: u64, operation: &str, error: &anyhow::Error) {
        let message = format!("{error:#}");
        self.record(at, EventKind::Failed, None, format!("{operation}: {message}"));
        self.set_error(at, operation, message);
    }

    /// Show `message` as the last error of `operation` (until one succeeds).
    pub fn set_error(&mut self, at: u64, operation: &str, message: impl Into<String>) {
        self.last_error = Some(LastError {
            at,
            operation: operation.to_owned(),
            message: message.into(),
        });
    }

    /// The versions selection must skip.
    pub fn excluded_versions(&self) -> BTreeSet<String> {
        self.excluded.keys().cloned().collect()
    }

    /// Apply one of a plan's notes.
    pub fn apply(&mut self, at: u64, note: &Note) {
        match note {
            Note::Exclude { version, reason } => {
                self.excluded.insert(version.clone(), Exclusion { reason: *reason, at });
            }
            Note::Include { version } => {
                self.excluded.remove(version);
            }
            Note::Event { kind, version, detail } => self.record(at, *kind, version.as_deref(), detail.clone()),
            Note::Error { operation, message } => self.set_error(at, operation, message.clone()),
            Note::ClearError => self.last_error = None,
            Note::Available(version) => self.available = version.clone(),
            Note::Turn(turn) => self.turn = turn.clone(),
            Note::Checked => self.last_check = Some(at),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial() -> Trial {
        Trial {
            version: "1.1.0".into(),
            commit: "c".repeat(64),
            from_version: "1.0.0".into(),
            from_commit: "b".repeat(64),
        }
    }

    #[test]
    fn round_trips_and_a_missing_file_is_a_fresh_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("agent/state.json"));
        let fresh = file.load().unwrap();
        assert_eq!(fresh.update, UpdateState::Idle);
        assert_eq!(fresh.schema, SCHEMA);
        let mut s = fresh;
        s.update = UpdateState::Staged {
            trial: trial(),
            operator_reboots: true,
        };
        s.apply(
            7,
            &Note::Exclude {
                version: "1.0.1".into(),
                reason: ExclusionReason::FailedTrial,
            },
        );
        s.record(7, EventKind::Staged, Some("1.1.0"), "staged");
        file.save(&s).unwrap();
        let s = file.load().unwrap();
        assert_eq!(
            s.update,
            UpdateState::Staged {
                trial: trial(),
                operator_reboots: true
            }
        );
        assert_eq!(s.excluded["1.0.1"].reason, ExclusionReason::FailedTrial);
        assert_eq!(s.history.len(), 1);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            text.contains("\"schema\": 2") && text.contains("\"state\": \"staged\""),
            "{text}"
        );
    }

    #[test]
    fn the_record_of_the_agent_before_the_typed_lifecycle_is_read() {
        let trial_json = serde_json::to_string(&trial()).unwrap();
        let old = |phase: &str, trial: &str| {
            format!(
                r#"{{"phase":{phase},"trial":{trial},"last_check":5,"available":null,"last_error":null,"bad_versions":["0.3.0"],"history":[]}}"#
            )
        };
        let s: AgentState = serde_json::from_str(&old(r#"{"phase":"staged","version":"1.1.0"}"#, &trial_json)).unwrap();
        assert_eq!(
            s.update,
            UpdateState::Staged {
                trial: trial(),
                operator_reboots: false
            }
        );
        assert_eq!(s.excluded["0.3.0"].reason, ExclusionReason::FailedTrial);
        assert_eq!(s.last_check, Some(5));
        let s: AgentState = serde_json::from_str(&old(r#"{"phase":"trial","version":"1.1.0"}"#, &trial_json)).unwrap();
        assert_eq!(s.update, UpdateState::OnTrial { trial: trial() });
        // The stuck `staged` phase an old rollback left: idle.
        let s: AgentState = serde_json::from_str(&old(r#"{"phase":"staged","version":"1.0.0"}"#, "null")).unwrap();
        assert_eq!(s.update, UpdateState::Idle);
    }

    #[test]
    fn corrupt_or_newer_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = StateFile::new(&path).load().unwrap_err();
        assert!(
            format!("{err:#}").contains("state.json is not a valid agent state record"),
            "{err:#}"
        );
        std::fs::write(&path, r#"{"schema": 9}"#).unwrap();
        let err = format!("{:#}", StateFile::new(&path).load().unwrap_err());
        assert!(err.contains("schema 9 is newer"), "{err}");
    }

    #[test]
    fn history_is_bounded() {
        let mut s = AgentState::default();
        for i in 0..(HISTORY_LIMIT + 5) {
            s.record(0, EventKind::Checked, None, i.to_string());
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history[0].detail, "5");
    }

    #[test]
    fn event_kinds_are_named_as_the_state_file_names_them() {
        use EventKind::*;
        for k in [
            Checked,
            Staged,
            Committed,
            FellBack,
            StageLost,
            RollbackStaged,
            RolledBack,
            Refused,
            Failed,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "{k:?}");
        }
    }

    #[test]
    fn outcomes_are_counted_for_ever_though_the_history_is_capped() {
        let mut s = AgentState::default();
        s.record(1, EventKind::Committed, Some("0.2.0"), "");
        for i in 0..(HISTORY_LIMIT as u64 + 5) {
            s.record(i, EventKind::Checked, None, "");
            s.fail(i, "check", &anyhow::anyhow!("down"));
        }
        s.record(2, EventKind::FellBack, Some("0.3.0"), "");
        assert!(!s.history.iter().any(|e| e.kind == EventKind::Committed));
        assert_eq!(s.outcomes.get(&EventKind::Committed), Some(&1));
        assert_eq!(s.outcomes.get(&EventKind::FellBack), Some(&1));
        assert_eq!(s.outcomes.get(&EventKind::Failed), None, "a failed check is no outcome");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""outcomes":{"committed":1,"fell-back":1}"#), "{json}");
        let back: AgentState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
