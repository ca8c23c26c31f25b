//! The update lifecycle as one persisted, typed state, and pure planners
//! that return the ordered effects of each step.
//!
//! ```text
//!  idle ─update─▶ staging ─armed+staged─▶ staged ─reboot─▶ on-trial ─gate passes─▶ idle (committed)
//!                   │                       │                 │ gate fails: reboot, GRUB counts down
//!                   │ power lost            │ power lost      ▼ tries run out: GRUB boots the previous one
//!                   └──────────▶ idle ◀─────┘         falling-back (bad recorded) ─undeploy, disarm─▶ idle
//!  idle ─rollback─▶ rolling-back ─reboot─▶ idle (the version rolled away from stays excluded)
//! ```
//!
//! The executor ([`crate::updater`]) carries the effects out one at a
//! time, in the order given; a power cut can stop it after any of them.
//! The orders are chosen so that every prefix leaves a host that the next
//! boot's [`classify_boot`] settles correctly: a release that failed its
//! trial ends excluded, a committed one never runs unguarded by mistake,
//! an interrupted stage ends idle. The unit tests below assert that on a
//! simulated host (ostree deployments, GRUB's counter, the state file) by
//! cutting the power after each effect of each plan.

use serde::{Deserialize, Serialize};

use crate::sysroot::Deployment;

/// A release on its way in, recorded before anything can boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    pub commit: String,
    /// The deployment the host ran when the trial began.
    pub from_version: String,
    pub from_commit: String,
}

/// An operator's rollback to the previous deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub to_version: String,
    pub to_commit: String,
    pub from_version: String,
    pub from_commit: String,
}

/// Where the update lifecycle stands: the one record of it, persisted in
/// the agent's state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum UpdateState {
    /// Nothing in progress.
    #[default]
    Idle,
    /// The trial is recorded; the boot counter is being armed and the
    /// release staged.
    Staging { trial: Trial },
    /// Staged: the next boot is the trial's first. The daemon reboots into
    /// it when the reboot strategy allows, unless an operator said they
    /// would (`--no-reboot`).
    Staged {
        trial: Trial,
        #[serde(default)]
        operator_reboots: bool,
    },
    /// The trial deployment booted; the health gate decides.
    OnTrial { trial: Trial },
    /// GRUB fell back; the failed release is excluded, and its deployment
    /// is being undeployed and the counter disarmed.
    FallingBack { trial: Trial },
    /// An operator's rollback is staged; the next boot runs it.
    RollingBack {
        rollback: Rollback,
        #[serde(default)]
        operator_reboots: bool,
    },
}

impl UpdateState {
    pub fn is_idle(&self) -> bool {
        *self == UpdateState::Idle
    }

    /// The state's name, as `status --json` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Staging { .. } => "staging",
            UpdateState::Staged { .. } => "staged",
            UpdateState::OnTrial { .. } => "on-trial",
            UpdateState::FallingBack { .. } => "falling-back",
            UpdateState::RollingBack { .. } => "rolling-back",
        }
    }

    /// The trial this state is about, if any.
    pub fn trial(&self) -> Option<&Trial> {
        match self {
            UpdateState::Staging { trial }
            | UpdateState::Staged { trial, .. }
            | UpdateState::OnTrial { trial }
            | UpdateState::FallingBack { trial } => Some(trial),
            UpdateState::Idle | UpdateState::RollingBack { .. } => None,
        }
    }

    /// Whether something is staged for the next boot (a reboot applies it).
    pub fn awaits_reboot(&self) -> bool {
        matches!(self, UpdateState::Staged { .. } | UpdateState::RollingBack { .. })
    }

    /// After the boot was settled (`Agent::boot_check`): the trial was not
    /// committed — its health gate failed and the verdict's reboot is under
    /// way — or its fall-back is unfinished. Nothing else may start in
    /// such a boot (a FleetLock slot is not given back while it lasts).
    pub fn trial_unsettled(&self) -> bool {
        matches!(self, UpdateState::OnTrial { .. } | UpdateState::FallingBack { .. })
    }

    /// Whether the daemon reboots into what is staged (when the reboot
    /// strategy allows), rather than an operator.
    pub fn daemon_reboots(&self) -> bool {
        matches!(
            self,
            UpdateState::Staged {
                operator_reboots: false,
                ..
            } | UpdateState::RollingBack {
                operator_reboots: false,
                ..
            }
        )
    }
}

/// Why a version is not taken automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExclusionReason {
    /// It failed its trial (GRUB fell back).
    FailedTrial,
    /// An operator rolled back from it.
    RolledBack,
}

/// GRUB's boot counter as the lifecycle sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// A trial is armed (`tries_left` may still be unreadable).
    pub armed: bool,
    pub tries_left: Option<u32>,
    /// GRUB ran out of tries and booted the previous entry.
    pub fell_back: bool,
}

impl Counter {
    pub fn is_clear(&self) -> bool {
        !self.armed && !self.fell_back
    }
}

/// What a boot sees of the host.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub booted_commit: &'a str,
    pub deployments: &'a [Deployment],
    pub counter: Counter,
}

impl Observed<'_> {
    fn deployed(&self, commit: &str) -> bool {
        self.deployments.iter().any(|d| d.commit == commit && !d.staged)
    }

    fn staged(&self, commit: &str) -> bool {
        self.deployments.iter().any(|d| d.commit == commit && d.staged)
    }
}

/// What this boot means for the update in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Nothing in progress.
    Normal,
    /// Staged in this very boot (the agent restarted): nothing to settle.
    Pending,
    /// The trial deployment booted: run the health gate.
    OnTrial(Trial),
    /// The trial failed: GRUB ran out of tries (or the cleanup after that
    /// was interrupted) and the previous deployment runs.
    FellBack(Trial),
    /// The staged deployment never became bootable (power lost before
    /// ostree finalized it): the host still runs what it ran.
    StageLost(Trial),
    /// The operator's rollback booted.
    RolledBack(Rollback),
    /// The rollback was never finalized (power lost): still on the release
    /// rolled away from.
    RollbackLost(Rollback),
}

/// Classify this boot from the recorded state and what the host shows.
pub fn classify_boot(state: &UpdateState, seen: &Observed<'_>) -> BootOutcome {
    match state {
        UpdateState::Idle => BootOutcome::Normal,
        UpdateState::FallingBack { trial } => BootOutcome::FellBack(trial.clone()),
        UpdateState::Staging { trial } | UpdateState::Staged { trial, .. } | UpdateState::OnTrial { trial } => {
            if seen.booted_commit == trial.commit {
                BootOutcome::OnTrial(trial.clone())
            } else if seen.staged(&trial.commit) {
                BootOutcome::Pending
            } else if matches!(state, UpdateState::OnTrial { .. })
                || seen.counter.fell_back
                || seen.deployed(&trial.commit)
            {
                // GRUB's flag may be lost with an ESP write; the failed
                // deployment, or a trial that had booted, still tells.
                BootOutcome::FellBack(trial.clone())
            } else {
                BootOutcome::StageLost(trial.clone())
            }
        }
        UpdateState::RollingBack { rollback, .. } => {
            if seen.booted_commit == rollback.to_commit {
                BootOutcome::RolledBack(rollback.clone())
            } else if seen.staged(&rollback.to_commit) {
                BootOutcome::Pending
            } else {
                BootOutcome::RollbackLost(rollback.clone())
            }
        }
    }
}

/// A change to the state file besides the lifecycle state, written in the
/// same atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Exclude {
        version: String,
        reason: ExclusionReason,
    },
    /// Take a version off the exclusions (an operator chose it).
    Include {
        version: String,
    },
    Event {
        kind: crate::state::EventKind,
        version: Option<String>,
        detail: String,
    },
    /// Shown by `status` until an operation succeeds.
    Error {
        operation: String,
        message: String,
    },
    ClearError,
    /// The newest release the last check saw (None: up to date).
    Available(Option<String>),
    /// A newer release the last check saw rolling out, not yet to this host.
    Turn(Option<crate::selection::Turn>),
    /// A check of the update repository completed now.
    Checked,
}

/// One thing the executor does. Effects run in the order a plan lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the state file (atomically): the lifecycle state and notes.
    Persist { state: UpdateState, notes: Vec<Note> },
    /// Arm GRUB's counter: the next `tries` boots of the default entry count down.
    ArmCounter { tries: u32 },
    /// Clear GRUB's counter and its fell-back flag.
    DisarmCounter,
    /// Stage `commit` as the next boot's default with exactly these kernel arguments.
    Stage { commit: String, kargs: Vec<String> },
    /// Remove a staged deployment, so a shutdown cannot finalize it.
    DropStaged,
    /// Remove the (non-booted) deployment of `commit`.
    Undeploy { commit: String },
    /// Say on the console (kernel log) what happened: a headless host's
    /// only witness.
    Announce { message: String },
    /// Reboot the host.
    Reboot { reason: String },
}

fn event(kind: crate::state::EventKind, version: &str, detail: impl Into<String>) -> Note {
    Note::Event {
        kind,
        version: Some(version.to_owned()),
        detail: detail.into(),
    }
}

/// What to do at boot, before any health gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub outcome: BootOutcome,
    pub effects: Vec<Effect>,
    /// After the effects, run the health gate for this trial.
    pub gate: Option<Trial>,
}

/// Settle this boot.
pub fn plan_boot(state: &UpdateState, seen: &Observed<'_>) -> BootPlan {
    use crate::state::EventKind;
    let outcome = classify_boot(state, seen);
    let mut effects = Vec::new();
    let mut gate = None;
    match &outcome {
        BootOutcome::Normal => {
            if !seen.counter.is_clear() {
                effects.push(Effect::DisarmCounter);
            }
        }
        BootOutcome::Pending => {}
        BootOutcome::OnTrial(trial) => {
            if !matches!(state, UpdateState::OnTrial { .. }) {
                effects.push(Effect::Persist {
                    state: UpdateState::OnTrial { trial: trial.clone() },
                    notes: vec![],
                });
            }
            gate = Some(trial.clone());
        }
        BootOutcome::FellBack(trial) => {
            // 1. The verdict first, so no later cut can lose it.
            if !matches!(state, UpdateState::FallingBack { .. }) {
                let message = format!(
                    "update to {} failed its trial; rolled back to {}",
                    trial.version, trial.from_version
                );
                effects.push(Effect::Persist {
                    state: UpdateState::FallingBack { trial: trial.clone() },
                    notes: vec![
                        Note::Exclude {
                            version: trial.version.clone(),
                            reason: ExclusionReason::FailedTrial,
                        },
                        event(EventKind::FellBack, &trial.version, message.clone()),
                        Note::Error {
                            operation: "trial".into(),
                            message: message.clone(),
                        },
                    ],
                });
                effects.push(Effect::Announce {
                    message: format!("cairn-agent: {message}; {} excluded, cleaning up", trial.version),
                });
            }
            // 2. The failed deployment goes while the counter still
            // guards it: it is ostree's default until undeployed.
            if seen.deployed(&trial.commit) && seen.booted_commit != trial.commit {
                effects.push(Effect::Undeploy {
                    commit: trial.commit.clone(),
                });
            }
            // 3. Then the counter, 4. then the lifecycle is over.
            settle_idle(&mut effects, seen, vec![Note::Available(None)]);
        }
        BootOutcome::StageLost(trial) => settle_idle(
            &mut effects,
            seen,
            vec![event(
                EventKind::StageLost,
                &trial.version,
                "the staged deployment was never finalized (interrupted shutdown); still on the previous one",
            )],
        ),
        BootOutcome::RolledBack(rollback) => settle_idle(
            &mut effects,
            seen,
            vec![event(
                EventKind::RolledBack,
                &rollback.to_version,
                format!("rolled back from {}", rollback.from_version),
            )],
        ),
        BootOutcome::RollbackLost(rollback) => {
            effects.push(Effect::Persist {
                state: UpdateState::Idle,
                notes: vec![
                    event(
                        EventKind::StageLost,
                        &rollback.to_version,
                        format!(
                            "the rollback was never finalized (interrupted shutdown); still on {}",
                            rollback.from_version
                        ),
                    ),
                    Note::Include {
                        version: rollback.from_version.clone(),
                    },
                ],
            });
        }
    }
    BootPlan { outcome, effects, gate }
}

/// The end of a step: the counter disarmed if armed, then the lifecycle
/// idle (in that order: an idle record must never sit beside an armed
/// counter that could fall back from what runs).
fn settle_idle(effects: &mut Vec<Effect>, seen: &Observed<'_>, notes: Vec<Note>) {
    if !seen.counter.is_clear() {
        effects.push(Effect::DisarmCounter);
    }
    effects.push(Effect::Persist {
        state: UpdateState::Idle,
        notes,
    });
}

/// The health gate's verdict on a trial boot.
pub fn plan_verdict(trial: &Trial, verdict: Result<(), String>, tries_left: Option<u32>) -> Vec<Effect> {
    use crate::state::EventKind;
    match verdict {
        // Disarm first: a committed release with the counter still armed
        // could be fallen back from at the next boot.
        Ok(()) => vec![
            Effect::DisarmCounter,
            Effect::Persist {
                state: UpdateState::Idle,
                notes: vec![
                    event(EventKind::Committed, &trial.version, "health gate passed"),
                    Note::ClearError,
                    Note::Available(None),
                ],
            },
        ],
        Err(failure) => {
            let message = format!(
                "health gate failed: {failure}; {} trial boots left, rebooting",
                tries_left.unwrap_or(0)
            );
            vec![
                Effect::Persist {
                    state: UpdateState::OnTrial { trial: trial.clone() },
                    notes: vec![
                        event(EventKind::Failed, &trial.version, message.clone()),
                        Note::Error {
                            operation: "health".into(),
                            message,
                        },
                    ],
                },
                Effect::Reboot {
                    reason: "the trial deployment failed its health gate".into(),
                },
            ]
        }
    }
}

/// Stage a verified release as a trial: intent, counter, stage, staged.
pub fn plan_stage(trial: &Trial, tries: u32, kargs: Vec<String>, operator_reboots: bool) -> Vec<Effect> {
    use crate::state::EventKind;
    vec![
        Effect::Persist {
            state: UpdateState::Staging { trial: trial.clone() },
            notes: vec![Note::Include {
                version: trial.version.clone(),
            }],
        },
        Effect::ArmCounter { tries },
        Effect::Stage {
            commit: trial.commit.clone(),
            kargs,
        },
        Effect::Persist {
            state: UpdateState::Staged {
                trial: trial.clone(),
                operator_reboots,
            },
            notes: vec![
                event(
                    EventKind::Staged,
                    &trial.version,
                    format!(
                        "staged {} (from {}); {tries} trial boots",
                        trial.commit, trial.from_version
                    ),
                ),
                Note::Available(Some(trial.version.clone())),
                Note::Checked,
                Note::ClearError,
            ],
        },
    ]
}

/// Undo a stage that failed part way: the staged deployment goes before
/// the counter, so a shutdown in between cannot finalize an unguarded trial.
pub fn plan_stage_failed() -> Vec<Effect> {
    vec![
        Effect::DropStaged,
        Effect::DisarmCounter,
        Effect::Persist {
            state: UpdateState::Idle,
            notes: vec![],
        },
    ]
}

/// Stage the previous deployment. The version rolled away from is
/// excluded with the intent, so no check takes it again, even if the
/// daemon runs before the reboot.
pub fn plan_rollback(rollback: &Rollback, kargs: Vec<String>, operator_reboots: bool) -> Vec<Effect> {
    use crate::state::EventKind;
    vec![
        Effect::Persist {
            state: UpdateState::RollingBack {
                rollback: rollback.clone(),
                operator_reboots,
            },
            notes: vec![
                Note::Exclude {
                    version: rollback.from_version.clone(),
                    reason: ExclusionReason::RolledBack,
                },
                Note::Include {
                    version: rollback.to_version.clone(),
                },
                event(
                    EventKind::RollbackStaged,
                    &rollback.to_version,
                    format!("rollback from {} staged", rollback.from_version),
                ),
            ],
        },
        Effect::Stage {
            commit: rollback.to_commit.clone(),
            kargs,
        },
    ]
}

/// A rollback whose stage failed: nothing changes, the exclusion goes.
pub fn plan_rollback_failed(rollback: &Rollback) -> Vec<Effect> {
    vec![
        Effect::DropStaged,
        Effect::Persist {
            state: UpdateState::Idle,
            notes: vec![Note::Include {
                version: rollback.from_version.clone(),
            }],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A simulated host: ostree's deployments (index 0 is the default),
    /// GRUB's counter, the state file, and power. Effects change it as the
    /// real executor changes a host; `power_cut` and `boot` do what a cut
    /// and GRUB do.
    #[derive(Debug, Clone)]
    struct Sim {
        /// (commit, version); index 0 is ostree's default.
        deployments: Vec<(String, String)>,
        staged: Option<(String, String)>,
        booted: String,
        counter: Counter,
        state: UpdateState,
        excluded: BTreeMap<String, ExclusionReason>,
        versions: BTreeMap<String, String>,
        reboots: usize,
    }

    fn trial() -> Trial {
        Trial {
            version: "2".into(),
            commit: "c2".into(),
            from_version: "1".into(),
            from_commit: "c1".into(),
        }
    }

    impl Sim {
        fn on_v1() -> Sim {
            Sim {
                deployments: vec![("c1".into(), "1".into())],
                staged: None,
                booted: "c1".into(),
                counter: Counter::default(),
                state: UpdateState::Idle,
                excluded: BTreeMap::new(),
                versions: BTreeMap::from([("c1".into(), "1".into()), ("c2".into(), "2".into())]),
                reboots: 0,
            }
        }

        fn deployments(&self) -> Vec<Deployment> {
            let mut out = Vec::new();
            let mut add = |commit: &str, staged: bool| {
                out.push(Deployment {
                    index: out.len(),
                    stateroot: "cairn".into(),
                    commit: commit.into(),
                    serial: 0,
                    version: self.versions.get(commit).cloned(),
                    booted: commit == self.booted && !staged,
                    staged,
                    pending: false,
                    rollback: false,
                });
            };
            if let Some((c, _)) = &self.staged {
                add(c, true);
            }
            for (c, _) in &self.deployments {
                add(c, false);
            }
            out
        }

        fn apply(&mut self, effect: &Effect) {
            match effect {
                Effect::Persist { state, notes } => {
                    self.state = state.clone();
                    for n in notes {
                        match n {
                            Note::Exclude { version, reason } => {
                                self.excluded.insert(version.clone(), *reason);
                            }
                            Note::Include { version } => {
                                self.excluded.remove(version);
                            }
                            _ => {}
                        }
                    }
                }
                Effect::ArmCounter { tries } => {
                    self.counter = Counter {
                        armed: true,
                        tries_left: Some(*tries),
                        fell_back: false,
                    }
                }
                Effect::DisarmCounter => self.counter = Counter::default(),
                Effect::Stage { commit, .. } => {
                    self.staged = Some((commit.clone(), self.versions[commit].clone()));
                }
                Effect::DropStaged => self.staged = None,
                Effect::Announce { .. } => {}
                Effect::Undeploy { commit } => {
                    if *commit != self.booted {
                        self.deployments.retain(|(c, _)| c != commit);
                    }
                }
                Effect::Reboot { .. } => self.reboot(),
            }
        }

        /// A clean reboot: ostree finalizes the staged deployment, GRUB boots.
        fn reboot(&mut self) {
            if let Some((c, v)) = self.staged.take() {
                // ostree keeps the booted deployment as the rollback and
                // drops older ones not booted.
                let booted = self.deployments.iter().find(|(b, _)| *b == self.booted).cloned();
                self.deployments = std::iter::once((c, v)).chain(booted).collect();
            }
            self.grub_boots();
        }

        /// Power lost: the staged deployment was never finalized.
        fn power_cut(&mut self) {
            self.staged = None;
            self.grub_boots();
        }

        /// GRUB's header (common::bootcfg): count down an armed trial, or
        /// fall back to entry 1 when no tries are left.
        fn grub_boots(&mut self) {
            self.reboots += 1;
            let mut entry = 0;
            if self.counter.armed && self.deployments.len() > 1 {
                match self.counter.tries_left {
                    Some(n) if n > 0 => self.counter.tries_left = Some(n - 1),
                    _ => {
                        self.counter.fell_back = true;
                        entry = 1;
                    }
                }
            }
            self.booted = self.deployments[entry].0.clone();
        }

        /// What the agent does at boot, with the gate's verdict given.
        fn settle(&mut self, gate_passes: bool) -> BootOutcome {
            let plan = self.plan();
            for e in &plan.effects {
                self.apply(e);
            }
            if let Some(t) = &plan.gate {
                let verdict = if gate_passes {
                    Ok(())
                } else {
                    Err("check failed".to_owned())
                };
                for e in plan_verdict(t, verdict, self.counter.tries_left) {
                    self.apply(&e);
                }
            }
            plan.outcome
        }

        /// Boot and settle until the agent has nothing left to do.
        fn run_until_settled(&mut self, gate_passes: bool) {
            for _ in 0..10 {
                let before = self.reboots;
                self.settle(gate_passes);
                if self.reboots == before {
                    return;
                }
            }
            panic!("the host never settled: {self:#?}");
        }

        fn stage_v2(&mut self, tries: u32) -> Vec<Effect> {
            plan_stage(&trial(), tries, vec!["rw".into()], false)
        }

        /// On v1 with v2 staged (`tries` trial boots), not rebooted yet.
        fn with_v2_staged(tries: u32) -> Sim {
            let mut sim = Sim::on_v1();
            for e in sim.stage_v2(tries) {
                sim.apply(&e);
            }
            sim
        }

        /// What the agent plans at boot on this host as it stands.
        fn plan(&self) -> BootPlan {
            let deployments = self.deployments();
            let seen = Observed {
                booted_commit: &self.booted,
                deployments: &deployments,
                counter: self.counter,
            };
            plan_boot(&self.state, &seen)
        }
    }

    #[test]
    fn a_healthy_trial_is_committed_and_a_failing_one_falls_back_excluded() {
        for gate_passes in [true, false] {
            let mut sim = Sim::with_v2_staged(2);
            assert!(sim.state.awaits_reboot());
            sim.reboot();
            sim.run_until_settled(gate_passes);
            assert!(sim.state.is_idle(), "{sim:#?}");
            assert!(sim.counter.is_clear(), "{sim:#?}");
            if gate_passes {
                assert_eq!(sim.booted, "c2");
                assert!(sim.excluded.is_empty());
            } else {
                assert_eq!(sim.booted, "c1");
                assert_eq!(sim.excluded.get("2"), Some(&ExclusionReason::FailedTrial));
                assert!(sim.deployments.iter().all(|(c, _)| c != "c2"), "{sim:#?}");
            }
        }
    }

    /// Every plan, cut after each of its effects: the host that comes back
    /// settles where it must.
    #[test]
    fn a_power_cut_after_any_effect_of_staging_leaves_the_old_release_idle() {
        let plan = Sim::on_v1().stage_v2(3);
        for cut_after in 0..=plan.len() {
            let mut sim = Sim::on_v1();
            for e in &plan[..cut_after] {
                sim.apply(e);
            }
            sim.power_cut();
            sim.run_until_settled(true);
            assert_eq!(sim.booted, "c1", "cut after {cut_after}: {sim:#?}");
            assert!(sim.state.is_idle(), "cut after {cut_after}: {sim:#?}");
            assert!(sim.counter.is_clear(), "cut after {cut_after}: {sim:#?}");
            assert!(sim.excluded.is_empty(), "a cut must not exclude: {sim:#?}");
        }
    }

    #[test]
    fn a_power_cut_after_any_effect_of_the_fall_back_cleanup_keeps_the_verdict() {
        // v2 staged with one try, failed its gate, GRUB fell back to v1.
        let mut sim = Sim::with_v2_staged(1);
        sim.reboot();
        assert_eq!(sim.settle(false), BootOutcome::OnTrial(trial()));
        assert_eq!(sim.booted, "c1");
        assert!(sim.counter.fell_back);
        let fell_back = sim.clone();
        let plan = fell_back.plan();
        assert_eq!(plan.outcome, BootOutcome::FellBack(trial()));
        // The order that makes it safe: verdict (then said on the
        // console), undeploy, disarm, idle.
        assert!(matches!(
            &plan.effects[0],
            Effect::Persist {
                state: UpdateState::FallingBack { .. },
                ..
            }
        ));
        assert!(matches!(&plan.effects[1], Effect::Announce { .. }));
        assert_eq!(plan.effects[2], Effect::Undeploy { commit: "c2".into() });
        assert_eq!(plan.effects[3], Effect::DisarmCounter);
        for cut_after in 0..=plan.effects.len() {
            let mut sim = fell_back.clone();
            for e in &plan.effects[..cut_after] {
                sim.apply(e);
            }
            sim.power_cut();
            sim.run_until_settled(true);
            assert_eq!(sim.booted, "c1", "cut after {cut_after}: {sim:#?}");
            assert!(sim.state.is_idle(), "cut after {cut_after}: {sim:#?}");
            assert!(sim.counter.is_clear(), "cut after {cut_after}: {sim:#?}");
            assert_eq!(
                sim.excluded.get("2"),
                Some(&ExclusionReason::FailedTrial),
                "cut after {cut_after}: the failed version must stay excluded: {sim:#?}"
            );
        }
    }

    #[test]
    fn the_old_order_of_the_fall_back_cleanup_lost_the_verdict() {
        // What 59decf3 did: undeploy, disarm, then record. A cut before the
        // record leaves a boot the classification cannot tell from a lost stage.
        let deployments = [Deployment {
            index: 0,
            stateroot: "cairn".into(),
            commit: "c1".into(),
            serial: 0,
            version: Some("1".into()),
            booted: true,
            staged: false,
            pending: false,
            rollback: false,
        }];
        let seen = Observed {
            booted_commit: "c1",
            deployments: &deployments,
            counter: Counter::default(),
        };
        let staged = UpdateState::Staged {
            trial: trial(),
            operator_reboots: false,
        };
        assert_eq!(classify_boot(&staged, &seen), BootOutcome::StageLost(trial()));
        // Recorded first (FallingBack), the same host settles as a fall-back.
        let falling = UpdateState::FallingBack { trial: trial() };
        assert_eq!(classify_boot(&falling, &seen), BootOutcome::FellBack(trial()));
    }

    #[test]
    fn a_power_cut_after_any_effect_of_the_commit_keeps_the_new_release() {
        let mut sim = Sim::with_v2_staged(2);
        sim.reboot();
        assert_eq!(sim.booted, "c2");
        let on_trial = sim.clone();
        let boot = on_trial.plan();
        let mut plan = boot.effects.clone();
        plan.extend(plan_verdict(&trial(), Ok(()), on_trial.counter.tries_left));
        assert_eq!(
            plan[1],
            Effect::DisarmCounter,
            "disarm before the record says committed"
        );
        for cut_after in 0..=plan.len() {
            let mut sim = on_trial.clone();
            for e in &plan[..cut_after] {
                sim.apply(e);
            }
            sim.power_cut();
            sim.run_until_settled(true);
            assert_eq!(sim.booted, "c2", "cut after {cut_after}: {sim:#?}");
            assert!(sim.state.is_idle() && sim.counter.is_clear(), "{sim:#?}");
        }
    }

    #[test]
    fn a_failed_stage_drops_the_staged_deployment_before_disarming() {
        let plan = plan_stage_failed();
        assert_eq!(plan[0], Effect::DropStaged);
        assert_eq!(plan[1], Effect::DisarmCounter);
        // Staging failed after ostree wrote the staged deployment: a clean
        // reboot at any point of the cleanup must not boot v2 unguarded.
        let mut staged = Sim::on_v1();
        let stage = staged.stage_v2(2);
        for e in &stage[..3] {
            staged.apply(e);
        }
        for cut_after in 0..=plan.len() {
            let mut sim = staged.clone();
            for e in &plan[..cut_after] {
                sim.apply(e);
            }
            sim.reboot();
            if sim.booted == "c2" {
                assert!(
                    sim.counter.armed,
                    "v2 booted with no trial armed (cut after {cut_after})"
                );
            }
            sim.run_until_settled(true);
            assert!(sim.state.is_idle() && sim.counter.is_clear(), "{sim:#?}");
        }
    }

    #[test]
    fn a_rollback_sticks_and_settles_idle() {
        // On v2 (committed) with v1 kept: the operator rolls back.
        let mut sim = Sim::with_v2_staged(2);
        sim.reboot();
        sim.run_until_settled(true);
        assert_eq!(sim.booted, "c2");
        let rollback = Rollback {
            to_version: "1".into(),
            to_commit: "c1".into(),
            from_version: "2".into(),
            from_commit: "c2".into(),
        };
        let plan = plan_rollback(&rollback, vec![], false);
        for cut_after in 0..=plan.len() {
            let mut sim = sim.clone();
            for e in &plan[..cut_after] {
                sim.apply(e);
            }
            let complete = cut_after == plan.len();
            if complete {
                // The daemon restarting before the reboot changes nothing.
                assert_eq!(sim.booted, "c2");
                assert_eq!(sim.plan().effects, vec![]);
                sim.reboot();
            } else {
                sim.power_cut();
            }
            sim.run_until_settled(true);
            assert!(sim.state.is_idle(), "{sim:#?}");
            if complete {
                assert_eq!(sim.booted, "c1");
            }
            if complete {
                assert_eq!(sim.excluded.get("2"), Some(&ExclusionReason::RolledBack), "{sim:#?}");
            } else {
                assert_eq!(sim.booted, "c2", "{sim:#?}");
                assert!(
                    sim.excluded.is_empty(),
                    "a rollback that never ran excludes nothing: {sim:#?}"
                );
            }
        }
        let failed = plan_rollback_failed(&rollback);
        assert_eq!(failed[0], Effect::DropStaged);
    }

    #[test]
    fn state_names_are_the_serialised_tags() {
        let t = trial();
        let rollback = Rollback {
            to_version: "1".into(),
            to_commit: "c1".into(),
            from_version: "2".into(),
            from_commit: "c2".into(),
        };
        for state in [
            UpdateState::Idle,
            UpdateState::Staging { trial: t.clone() },
            UpdateState::Staged {
                trial: t.clone(),
                operator_reboots: false,
            },
            UpdateState::OnTrial { trial: t.clone() },
            UpdateState::FallingBack { trial: t },
            UpdateState::RollingBack {
                rollback,
                operator_reboots: true,
            },
        ] {
            assert_eq!(serde_json::to_value(&state).unwrap()["state"], state.name());
        }
    }

    #[test]
    fn an_armed_counter_with_nothing_in_progress_is_disarmed() {
        let deployments = Sim::on_v1().deployments();
        let seen = Observed {
            booted_commit: "c1",
            deployments: &deployments,
            counter: Counter {
                armed: true,
                tries_left: Some(1),
                fell_back: false,
            },
        };
        let plan = plan_boot(&UpdateState::Idle, &seen);
        assert_eq!(plan.outcome, BootOutcome::Normal);
        assert_eq!(plan.effects, vec![Effect::DisarmCounter]);
    }

    #[test]
    fn a_staged_update_seen_again_in_the_same_boot_is_pending() {
        // The daemon restarts after staging: it must not take the staged
        // deployment for a failed one.
        let sim = Sim::with_v2_staged(2);
        assert_eq!(sim.booted, "c1");
        let plan = sim.plan();
        assert_eq!(plan.outcome, BootOutcome::Pending);
        assert!(plan.effects.is_empty());
    }
}
