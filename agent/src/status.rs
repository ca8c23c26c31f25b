//! `cairn-agent status --json`: a typed, versioned document. It is an API
//! (scripts and Cairn's own VM tests deserialise it), so fields are only
//! added; a change of meaning raises [`API_VERSION`].

use crate::reboot_gate::GateRecord;
use serde::{Deserialize, Serialize};

use crate::config::RebootStrategy;
use crate::lifecycle::{ExclusionReason, UpdateState};
use crate::state::{AgentState, LastError};
use crate::sysroot::Deployment;

/// The status document's version (`api_version`).
pub const API_VERSION: u32 = 1;

/// One deployment in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub version: Option<String>,
    pub commit: String,
    /// ostree's deployment serial (several deployments may share a commit).
    pub serial: u32,
}

impl From<&Deployment> for Slot {
    fn from(d: &Deployment) -> Self {
        Slot {
            version: d.version.clone(),
            commit: d.commit.clone(),
            serial: d.serial,
        }
    }
}

/// What a staged update waits for before the host reboots into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "for")]
pub enum Waiting {
    /// The daemon reboots at once (strategy `immediate`).
    Reboot,
    /// The maintenance window, which opens in this many seconds.
    Window { opens_in_secs: u64 },
    /// A slot of the fleet lock (strategy `fleet-lock`): the server's last
    /// answer, once asked, and when it is asked again.
    Lock {
        reason: Option<String>,
        attempts: u32,
        next_attempt_in_secs: Option<u64>,
    },
    /// The Kubernetes drain (strategy `kubernetes`): what the gate is
    /// doing now, or why it holds the reboot and when it asks again, and
    /// the pods the last drain could not evict.
    Drain {
        reason: Option<String>,
        attempts: u32,
        next_attempt_in_secs: Option<u64>,
        #[serde(default)]
        blocked_by: Vec<String>,
    },
    /// kured, to drain and reboot the node (strategy `kured`), once the
    /// agent has written its sentinel.
    Kured { sentinel_written: bool },
    /// An operator (strategy `off`).
    Operator,
}

/// A release this host waits for in a phased rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutWait {
    pub version: String,
    /// When this host's turn comes (seconds since the epoch); `None` while
    /// the rollout is paused before it.
    pub turn_at: Option<u64>,
    pub turn_in_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedVersion {
    pub version: String,
    pub reason: ExclusionReason,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub api_version: u32,
    /// The deployment running now.
    pub booted: Option<Slot>,
    /// Staged for the next boot (finalized at shutdown).
    pub staged: Option<Slot>,
    /// What GRUB falls back to and `rollback` goes to.
    pub rollback: Option<Slot>,
    /// Where the update lifecycle stands.
    pub update: UpdateState,
    /// With something staged: what the reboot into it waits for.
    pub waiting: Option<Waiting>,
    /// A FleetLock slot this node may still hold is not given back yet
    /// (strategy `fleet-lock`), or its Kubernetes node is not back in
    /// service (strategy `kubernetes`), and why.
    #[serde(default)]
    pub lock_release_pending: Option<String>,
    /// Trial boots left before GRUB falls back, while a trial is armed.
    pub boot_tries_left: Option<u32>,
    pub last_check: Option<u64>,
    pub available: Option<String>,
    /// A newer release rolling out in waves, whose turn has not come for
    /// this host (as of the last check).
    #[serde(default)]
    pub rollout: Option<RolloutWait>,
    pub last_error: Option<LastError>,
    /// Versions not taken automatically, and why.
    pub excluded: Vec<ExcludedVersion>,
    pub stream: String,
    pub url: Option<String>,
    /// What first-boot provisioning did (`None` before it ever ran).
    #[serde(default)]
    pub provisioning: Option<crate::provision::Record>,
    /// The platform this boot detected, and what its metadata gave.
    #[serde(default)]
    pub platform: Option<crate::provision::PlatformRecord>,
}

impl Status {
    /// Nothing in progress and nothing staged.
    pub fn settled(&self) -> bool {
        self.update.is_idle() && self.staged.is_none()
    }

    pub fn booted_version(&self) -> &str {
        self.booted
            .as_ref()
            .and_then(|b| b.version.as_deref())
            .unwrap_or_default()
    }

    pub fn is_excluded(&self, version: &str, reason: ExclusionReason) -> bool {
        self.excluded.iter().any(|e| e.version == version && e.reason == reason)
    }
}

/// What the reboot into a staged update waits for, under `strategy`, now,
/// given what the daemon last learnt at the reboot gate.
pub fn waiting(state: &UpdateState, strategy: &RebootStrategy, gate: &GateRecord, now_secs: u64) -> Option<Waiting> {
    if !state.awaits_reboot() {
        return None;
    }
    if !state.daemon_reboots() {
        return Some(Waiting::Operator);
    }
    Some(match (strategy, crate::schedule::reboot_delay(strategy, now_secs)) {
        (RebootStrategy::FleetLock { .. }, _) => match &gate.held {
            Some(h) => Waiting::Lock {
                reason: Some(h.reason.clone()),
                attempts: h.attempts,
                next_attempt_in_secs: Some(h.next_attempt_at.saturating_sub(now_secs)),
            },
            None => Waiting::Lock {
                reason: None,
                attempts: 0,
                next_attempt_in_secs: None,
            },
        },
        (RebootStrategy::Kubernetes(_), _) => Waiting::Drain {
            reason: gate
                .progress
                .clone()
                .or_else(|| gate.held.as_ref().map(|h| h.reason.clone())),
            attempts: gate.held.as_ref().map_or(0, |h| h.attempts),
            next_attempt_in_secs: match (&gate.progress, &gate.held) {
                (None, Some(h)) => Some(h.next_attempt_at.saturating_sub(now_secs)),
                _ => None,
            },
            blocked_by: gate.blocked_by.clone(),
        },
        (RebootStrategy::Kured, _) => Waiting::Kured {
            sentinel_written: gate.handed_to_kured,
        },
        (_, None) => Waiting::Operator,
        (_, Some(d)) if d.is_zero() => Waiting::Reboot,
        (_, Some(d)) => Waiting::Window {
            opens_in_secs: d.as_secs(),
        },
    })
}

/// What other parts of the agent recorded, read by `status`.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// First-boot provisioning's record.
    pub provisioning: Option<crate::provision::Record>,
    /// This boot's platform and its metadata.
    pub platform: Option<crate::provision::PlatformRecord>,
    /// The daemon's record of the reboot gate.
    pub gate: GateRecord,
}

/// The document, from the deployments, the state record and the counter.
pub fn build(
    deployments: &[Deployment],
    state: AgentState,
    boot_tries_left: Option<u32>,
    config: &crate::config::Config,
    records: Records,
    now_secs: u64,
) -> Status {
    let booted = deployments.iter().find(|d| d.booted);
    let staged = deployments.iter().find(|d| d.staged);
    let rollback = deployments.iter().find(|d| !d.booted && !d.staged);
    Status {
        api_version: API_VERSION,
        booted: booted.map(Slot::from),
        staged: staged.map(Slot::from),
        rollback: rollback.map(Slot::from),
        waiting: waiting(&state.update, &config.reboot, &records.gate, now_secs),
        lock_release_pending: records.gate.release_pending.clone(),
        update: state.update,
        boot_tries_left,
        last_check: state.last_check,
        available: state.available,
        rollout: state.turn.map(|t| RolloutWait {
            version: t.version,
            turn_at: t.at,
            turn_in_secs: t.at.map(|at| at.saturating_sub(now_secs)),
        }),
        last_error: state.last_error,
        excluded: state
            .excluded
            .into_iter()
            .map(|(version, e)| ExcludedVersion {
                version,
                reason: e.reason,
                at: e.at,
            })
            .collect(),
        stream: config.stream.clone(),
        url: config.url.clone(),
        provisioning: records.provisioning,
        platform: records.platform,
    }
}
