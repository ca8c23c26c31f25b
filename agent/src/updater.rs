//! The update lifecycle carried out: check, stage (pull, verify, arm the
//! boot counter), the verdict on a trial boot, rollback, status.
//!
//! Decisions are [`crate::lifecycle`]'s: its planners return the ordered
//! effects of each step, and [`Agent`] carries them out one by one against
//! the host, each system behind a trait. Nothing here chooses an order.

use anyhow::{anyhow, bail, Context as _, Result};
use cairn_common::grubenv::GrubEnv;
use cairn_common::identity::Variant;
use cairn_common::layout::Arch;
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use cairn_common::release::{Release, OSTREE_DIR};
use semver::Version;
use serde::Serialize;

use crate::boot_counter::{self, Esp};
use crate::config::Config;
use crate::health::{Failure, Gate};
use crate::lifecycle::{self, BootOutcome, Effect, Observed, Rollback, Trial};
use crate::releases::{Offer, UpdateRepo};
use crate::selection::{self, Host, Request, Selection, Turn};
use crate::state::{AgentState, EventKind, StateFile};
use crate::status::Status;
use crate::sysroot::{Deployment, Sysroot};

/// What this host is: fixed by the image it booted.
#[derive(Debug, Clone)]
pub struct Identity {
    pub arch: Arch,
    pub variant: Variant,
    /// Its place in phased rollouts, in [0, 1) (see
    /// [`selection::rollout_position`]).
    pub rollout_position: f64,
}

impl Identity {
    /// This host's identity, from `/usr/lib/os-release` (`VARIANT_ID`).
    pub fn host() -> Result<Self> {
        let text = std::fs::read_to_string("/usr/lib/os-release").context("reading /usr/lib/os-release")?;
        let variant = text
            .lines()
            .find_map(|l| l.strip_prefix("VARIANT_ID="))
            .map(|v| v.trim_matches('"').to_owned())
            .context("/usr/lib/os-release has no VARIANT_ID (the image variant)")?;
        let variant = variant
            .parse()
            .with_context(|| format!("/usr/lib/os-release: VARIANT_ID `{variant}`"))?;
        let arch = Arch::host().context("this CPU architecture is not one Cairn builds for")?;
        // A host without a machine id goes last in every rollout.
        let rollout_position = std::fs::read_to_string("/etc/machine-id")
            .map_err(|e| e.to_string())
            .and_then(|id| selection::rollout_position(&id))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no rollout position from /etc/machine-id: this host goes last");
                1.0
            });
        Ok(Self {
            arch,
            variant,
            rollout_position,
        })
    }
}

/// Where the agent's record lives.
pub trait StateStore {
    fn load(&self) -> Result<AgentState>;
    fn save(&self, state: &AgentState) -> Result<()>;
}

impl StateStore for StateFile {
    fn load(&self) -> Result<AgentState> {
        StateFile::load(self)
    }
    fn save(&self, state: &AgentState) -> Result<()> {
        StateFile::save(self, state)
    }
}

/// GRUB's boot counter.
pub trait BootCounter {
    fn read(&self) -> Result<GrubEnv>;
    /// Read, change, write back durably (nothing written if unchanged).
    fn update(&self, change: &mut dyn FnMut(&mut GrubEnv)) -> Result<()>;
}

impl BootCounter for Esp {
    fn read(&self) -> Result<GrubEnv> {
        Esp::read(self)
    }
    fn update(&self, change: &mut dyn FnMut(&mut GrubEnv)) -> Result<()> {
        Esp::update(self, change)
    }
}

/// The releases an update repository vouches for.
pub trait ReleaseSource {
    fn offer(&self) -> Result<Offer>;
}

impl ReleaseSource for UpdateRepo {
    fn offer(&self) -> Result<Offer> {
        UpdateRepo::offer(self)
    }
}

/// The trial boot's judge.
pub trait HealthGate {
    fn run(&self) -> Result<(), Failure>;
}

impl HealthGate for Gate {
    fn run(&self) -> Result<(), Failure> {
        Gate::run(self)
    }
}

/// Rebooting the machine.
pub trait Power {
    fn reboot(&self, reason: &str) -> Result<()>;
}

/// The host's power: through systemd, so ostree finalizes a staged
/// deployment on the way down.
#[derive(Debug, Default)]
pub struct SystemdPower;

impl Power for SystemdPower {
    fn reboot(&self, reason: &str) -> Result<()> {
        reboot(reason)
    }
}

/// Seconds since the Unix epoch.
pub trait Clock {
    fn now(&self) -> u64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::state::now()
    }
}

/// The agent: the lifecycle's planners carried out against the host's
/// sysroot, boot counter, state file, update repository, health gate,
/// power and clock (each a trait, faked in the unit tests).
pub struct Agent {
    pub config: Config,
    pub identity: Identity,
    pub sysroot: Box<dyn Sysroot>,
    pub store: Box<dyn StateStore>,
    pub counter: Box<dyn BootCounter>,
    pub repo: Box<dyn ReleaseSource>,
    pub gate: Box<dyn HealthGate>,
    pub power: Box<dyn Power>,
    pub clock: Box<dyn Clock>,
}

/// What `update` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum UpdateOutcome {
    UpToDate { booted: String },
    AlreadyStaged { version: String },
    Staged { version: String, commit: String },
}

fn booted(deployments: &[Deployment]) -> Result<&Deployment> {
    deployments
        .iter()
        .find(|d| d.booted)
        .ok_or_else(|| anyhow!("no booted ostree deployment: is this a Cairn host?"))
}

fn version_of(d: &Deployment) -> Result<Version> {
    let v = d
        .version
        .as_deref()
        .with_context(|| format!("deployment {} has no version", d.commit))?;
    Version::parse(v).with_context(|| format!("deployment {} has version `{v}`, not a semantic version", d.commit))
}

fn counter_of(env: &GrubEnv) -> lifecycle::Counter {
    lifecycle::Counter {
        armed: env.get(cairn_common::grubenv::vars::TRIAL) == Some("1"),
        tries_left: boot_counter::tries_left(env),
        fell_back: boot_counter::fell_back(env),
    }
}

impl Agent {
    /// The agent of this host, with its configuration.
    pub fn host(config: Config, sysroot: Box<dyn Sysroot>) -> Result<Agent> {
        let repo: Box<dyn ReleaseSource> = match &config.url {
            Some(url) => Box::new(UpdateRepo::host(
                url,
                config.download_retries + 1,
                config.download_stall_timeout,
            )),
            None => Box::new(NoUpdateUrl),
        };
        let gate = Gate {
            timeout: config.health_timeout,
            check_timeout: config.health_check_timeout,
            containerd: config.health_containerd,
            check_dirs: crate::health::host_dirs(),
        };
        Ok(Agent {
            identity: Identity::host()?,
            sysroot,
            store: Box::new(StateFile::host()),
            counter: Box::new(Esp::host()),
            repo,
            gate: Box::new(gate),
            power: Box::new(SystemdPower),
            clock: Box::new(SystemClock),
            config,
        })
    }

    fn url(&self) -> Result<&str> {
        self.config
            .url
            .as_deref()
            .context("no update url configured ([update] url in /etc/cairn/agent.d/*.toml)")
    }

    /// Carry out one effect.
    fn apply(&self, effect: &Effect) -> Result<()> {
        tracing::debug!(?effect, "applying");
        match effect {
            Effect::Persist { state, notes } => {
                let mut record = self.store.load()?;
                let at = self.clock.now();
                record.update = state.clone();
                for note in notes {
                    record.apply(at, note);
                }
                self.store.save(&record)
            }
            Effect::ArmCounter { tries } => self.counter.update(&mut |env| boot_counter::arm(env, *tries)),
            Effect::DisarmCounter => self.counter.update(&mut boot_counter::clear),
            Effect::Stage { commit, kargs } => self.sysroot.stage(commit, kargs),
            Effect::DropStaged => self.sysroot.drop_staged(),
            Effect::Undeploy { commit } => {
                let deployments = self.sysroot.deployments()?;
                match deployments
                    .iter()
                    .find(|d| d.commit == *commit && !d.booted && !d.staged)
                {
                    Some(d) => self.sysroot.undeploy(d.index),
                    None => Ok(()),
                }
            }
            Effect::Announce { message } => {
                tracing::warn!("{message}");
                // The console line is a courtesy: never a reason to stop.
                if let Err(e) = crate::boot_report::to_kernel_log(message) {
                    tracing::warn!(error = %format!("{e:#}"), "could not write to the kernel log");
                }
                Ok(())
            }
            Effect::Reboot { reason } => self.power.reboot(reason),
        }
    }

    /// Carry out a plan's effects in order; the first error stops it.
    fn run(&self, effects: &[Effect]) -> Result<()> {
        effects.iter().try_for_each(|e| self.apply(e))
    }

    /// Carry out a cleanup plan up to its first failure, which is logged.
    /// Stopping there is safe because every prefix of a plan is (the
    /// lifecycle's tests): a cleanup that could not drop a staged
    /// deployment must not go on to disarm the counter guarding it.
    fn run_cleanup(&self, effects: &[Effect]) {
        for e in effects {
            if let Err(err) = self.apply(e) {
                tracing::error!(effect = ?e, error = %format!("{err:#}"), "cleanup stopped; the next boot settles the rest");
                return;
            }
        }
    }

    /// Run `op`, recording its error in the state (shown by `status`).
    fn recorded<T>(&self, operation: &str, op: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = op();
        if let (Err(e), Some(signal)) = (&result, cairn_common::process::interrupted()) {
            // Stopped (the service restarted, an operator pressed Ctrl-C):
            // not the operation's failure, so not shown as one.
            tracing::warn!(%signal, error = %format!("{e:#}"), "{operation} stopped");
        } else if let Err(e) = &result {
            let at = self.clock.now();
            let saved = self.store.load().and_then(|mut s| {
                s.fail(at, operation, e);
                self.store.save(&s)
            });
            if let Err(save) = saved {
                tracing::error!(error = %format!("{save:#}"), "could not record the failure");
            }
        }
        result
    }

    fn host_view<'a>(&'a self, booted: &'a Version, excluded: &'a std::collections::BTreeSet<String>) -> Host<'a> {
        Host {
            arch: self.identity.arch,
            variant: &self.identity.variant,
            stream: &self.config.stream,
            booted,
            excluded,
        }
    }

    /// Record a completed check's result: the release available now, and
    /// the one this host waits for in a rollout.
    fn note_check(&self, available: Option<&str>, turn: Option<Turn>) -> Result<()> {
        let mut s = self.store.load()?;
        let at = self.clock.now();
        s.apply(at, &lifecycle::Note::Checked);
        s.apply(at, &lifecycle::Note::Available(available.map(str::to_owned)));
        s.apply(at, &lifecycle::Note::Turn(turn));
        s.apply(at, &lifecycle::Note::ClearError);
        self.store.save(&s)
    }

    /// The releases of the repository this host may take for `request`
    /// now: for the newest, only those whose rollout has reached it; and
    /// the release it waits for, if any. An operator naming a version is
    /// not held by a rollout, and what was known of the turn stays.
    fn offered(&self, request: &Request, booted: &Version, state: &AgentState) -> Result<(Vec<Release>, Option<Turn>)> {
        let offer = self.repo.offer()?;
        Ok(match request {
            Request::Latest => selection::in_turn(
                &offer.releases,
                &offer.rollouts,
                &self.host_view(booted, &state.excluded_versions()),
                self.identity.rollout_position,
                self.clock.now(),
            ),
            Request::Exact { .. } => (offer.releases, state.turn.clone()),
        })
    }

    /// Ask the repository what is newest for this host; changes nothing but
    /// the record of the check.
    pub fn check(&self) -> Result<Option<Release>> {
        self.recorded("check", || {
            let deployments = self.sysroot.deployments()?;
            let booted_version = version_of(booted(&deployments)?)?;
            let state = self.store.load()?;
            let excluded = state.excluded_versions();
            let (releases, turn) = self.offered(&Request::Latest, &booted_version, &state)?;
            let selection =
                selection::select(&releases, &self.host_view(&booted_version, &excluded), &Request::Latest)?;
            let available = match selection {
                Selection::Update(r) => Some(r),
                Selection::UpToDate => None,
            };
            self.note_check(available.as_ref().map(|r| r.version.as_str()), turn)?;
            Ok(available)
        })
    }

    /// Download, verify and stage a release; arm the boot counter.
    /// `operator_reboots`: the daemon leaves the reboot to an operator.
    pub fn update(&self, request: &Request, operator_reboots: bool) -> Result<UpdateOutcome> {
        self.recorded("update", || self.update_inner(request, operator_reboots))
    }

    fn update_inner(&self, request: &Request, operator_reboots: bool) -> Result<UpdateOutcome> {
        let state = self.store.load()?;
        match &state.update {
            lifecycle::UpdateState::Idle => {}
            lifecycle::UpdateState::Staged { trial, .. } => {
                return Ok(UpdateOutcome::AlreadyStaged {
                    version: trial.version.clone(),
                })
            }
            lifecycle::UpdateState::RollingBack { rollback, .. } => bail!(
                "a rollback to {} is staged; reboot to apply it before updating",
                rollback.to_version
            ),
            other => bail!(
                "the update to {} is still in progress ({}); it is committed or rolled back by itself",
                other.trial().map_or("?", |t| t.version.as_str()),
                other.name()
            ),
        }
        let deployments = self.sysroot.deployments()?;
        let current = booted(&deployments)?.clone();
        let booted_version = version_of(&current)?;
        tracing::info!(url = self.url()?, "checking for releases");
        let excluded = state.excluded_versions();
        let (releases, turn) = self.offered(request, &booted_version, &state)?;
        let release = match selection::select(&releases, &self.host_view(&booted_version, &excluded), request) {
            // What the repository said is recorded whatever comes of the
            // staging: the release taken is what is available, and a turn
            // waited for is over.
            Ok(Selection::Update(r)) => {
                self.note_check(Some(&r.version), turn)?;
                r
            }
            Ok(Selection::UpToDate) => {
                if let Some(t) = &turn {
                    tracing::info!(version = %t.version, turn_at = ?t.at, "a newer release is rolling out; this host's turn has not come");
                }
                self.note_check(None, turn)?;
                return Ok(UpdateOutcome::UpToDate {
                    booted: booted_version.to_string(),
                });
            }
            Err(refusal) => {
                let mut s = self.store.load()?;
                s.record(self.clock.now(), EventKind::Refused, None, refusal.to_string());
                self.store.save(&s)?;
                return Err(refusal.into());
            }
        };

        // Fetch exactly the commit TUF named; ostree checks every object's
        // checksum against it and the commit's GPG signature.
        let url = format!("{}/{OSTREE_DIR}", self.url()?);
        tracing::info!(version = %release.version, commit = %release.commit, "downloading");
        self.sysroot.set_remote(&url)?;
        self.sysroot.pull(
            &release.ostree_ref,
            &release.commit,
            self.config.download_retries,
            self.config.download_stall_timeout,
        )?;
        // The commit must say what TUF said of it.
        let commit_arch = self.sysroot.commit_metadata(&release.commit, meta::ARCH)?;
        if commit_arch.as_deref() != Some(self.identity.arch.as_str()) {
            bail!(
                "commit {} is built for {}, this host is {}",
                release.commit,
                commit_arch.as_deref().unwrap_or("an unknown architecture"),
                self.identity.arch
            );
        }
        let commit_version = self.sysroot.commit_metadata(&release.commit, meta::VERSION)?;
        if commit_version.as_deref() != Some(release.version.as_str()) {
            bail!(
                "commit {} says version {}, the update repository says {}",
                release.commit,
                commit_version.as_deref().unwrap_or("(none)"),
                release.version
            );
        }
        let kargs = self.kargs_for(&current, &release.commit)?;

        let trial = Trial {
            version: release.version.clone(),
            commit: release.commit.clone(),
            from_version: booted_version.to_string(),
            from_commit: current.commit.clone(),
        };
        let tries = self.config.boot_tries;
        tracing::info!(version = %release.version, trial_boots = tries, "staging");
        let plan = lifecycle::plan_stage(&trial, tries, kargs, operator_reboots);
        if let Err(e) = self.run(&plan) {
            // Leave the host as it was: nothing staged, no armed counter.
            self.run_cleanup(&lifecycle::plan_stage_failed());
            return Err(e);
        }
        Ok(UpdateOutcome::Staged {
            version: release.version,
            commit: release.commit,
        })
    }

    /// The kernel arguments to stage `commit` with, coming from `booted`.
    fn kargs_for(&self, booted: &Deployment, commit: &str) -> Result<Vec<String>> {
        let host = self.sysroot.booted_kargs()?;
        let booted_release = self
            .sysroot
            .release_kargs(&booted.commit)
            .with_context(|| format!("the kernel arguments of the booted release {}", booted.commit))?;
        let target = self
            .sysroot
            .release_kargs(commit)
            .with_context(|| format!("the kernel arguments of release {commit}"))?;
        Ok(crate::kargs::for_staging(&host, &booted_release, &target))
    }

    /// Settle what this boot means for the update in progress: commit a
    /// trial when the health gate passes, reboot when it fails, clean up
    /// after a fallback or a lost stage.
    pub fn boot_check(&self) -> Result<BootOutcome> {
        self.recorded("boot-check", || self.boot_check_inner())
    }

    fn boot_check_inner(&self) -> Result<BootOutcome> {
        let state = self.store.load()?;
        let deployments = self.sysroot.deployments()?;
        let current = booted(&deployments)?.clone();
        let env = self.counter.read()?;
        let seen = Observed {
            booted_commit: &current.commit,
            deployments: &deployments,
            counter: counter_of(&env),
        };
        let plan = lifecycle::plan_boot(&state.update, &seen);
        self.run(&plan.effects)?;
        if let Some(trial) = &plan.gate {
            tracing::info!(version = %trial.version, "trial boot: running the health gate");
            let verdict = self.gate.run().map_err(|f| f.to_string());
            match &verdict {
                Ok(()) => tracing::info!(version = %trial.version, "committed"),
                Err(failure) => tracing::error!(version = %trial.version, %failure, "health gate failed"),
            }
            self.run(&lifecycle::plan_verdict(trial, verdict, seen.counter.tries_left))?;
        }
        Ok(plan.outcome)
    }

    /// Stage the previous deployment as the next boot's default; the
    /// version rolled away from is not taken again automatically.
    pub fn rollback(&self, operator_reboots: bool) -> Result<String> {
        self.recorded("rollback", || {
            let state = self.store.load()?;
            if !state.update.is_idle() {
                bail!("an update is in progress; it rolls back by itself if it fails");
            }
            let deployments = self.sysroot.deployments()?;
            let current = booted(&deployments)?;
            let previous = deployments
                .iter()
                .find(|d| !d.booted && !d.staged && d.commit != current.commit)
                .context("there is no previous deployment to roll back to")?;
            let rollback = Rollback {
                to_version: previous.version.clone().unwrap_or_else(|| previous.commit.clone()),
                to_commit: previous.commit.clone(),
                from_version: current.version.clone().unwrap_or_else(|| current.commit.clone()),
                from_commit: current.commit.clone(),
            };
            let kargs = self.kargs_for(current, &previous.commit)?;
            if let Err(e) = self.run(&lifecycle::plan_rollback(&rollback, kargs, operator_reboots)) {
                self.run_cleanup(&lifecycle::plan_rollback_failed(&rollback));
                return Err(e);
            }
            Ok(rollback.to_version)
        })
    }

    pub fn status(&self) -> Result<Status> {
        let state = self.store.load()?;
        let deployments = self.sysroot.deployments()?;
        let tries = self.counter.read().ok().and_then(|env| boot_counter::tries_left(&env));
        let root = std::path::Path::new("/");
        let records = crate::status::Records {
            provisioning: crate::provision::load_record(std::path::Path::new(crate::provision::DIR)),
            platform: crate::provision::load_platform_record(root),
            gate: crate::reboot_gate::GateRecord::load(root),
        };
        Ok(crate::status::build(
            &deployments,
            state,
            tries,
            &self.config,
            records,
            self.clock.now(),
        ))
    }
}

/// The release source of a host with no update URL.
struct NoUpdateUrl;

impl ReleaseSource for NoUpdateUrl {
    fn offer(&self) -> Result<Offer> {
        bail!("no update url configured ([update] url in /etc/cairn/agent.d/*.toml)")
    }
}

/// On a trial boot, wait `limit`; if the trial is still armed then (the
/// health gate never committed it: userspace hung, or the agent could not
/// run), reboot so GRUB's counter moves on. Returns at once when no trial
/// is armed.
pub fn trial_deadline(esp: &Esp, limit: std::time::Duration) -> Result<()> {
    if boot_counter::tries_left(&esp.read()?).is_none() {
        tracing::info!("no trial armed");
        return Ok(());
    }
    tracing::info!(
        limit_secs = limit.as_secs(),
        "trial boot: the health gate must commit it in time"
    );
    std::thread::sleep(limit);
    if boot_counter::tries_left(&esp.read()?).is_none() {
        return Ok(());
    }
    tracing::error!(limit_secs = limit.as_secs(), "trial not committed in time; rebooting");
    // --force: do not wait for units that may be what hangs.
    Cmd::new("systemctl").args(["reboot", "--force"]).run()
}

/// Reboot the host through systemd (ostree finalizes a staged deployment
/// on the way down).
pub fn reboot(why: &str) -> Result<()> {
    tracing::warn!(reason = why, "rebooting");
    // The console of a headless host says why it goes down.
    if let Err(e) = crate::boot_report::announce(&format!("cairn-agent: rebooting: {why}")) {
        tracing::debug!(error = %format!("{e:#}"), "could not write to the kernel log");
    }
    Cmd::new("systemctl").arg("reboot").run()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use cairn_common::grubenv::GrubEnv;

    use super::*;
    use crate::lifecycle::{ExclusionReason, UpdateState};

    /// An in-memory host: every system the agent touches.
    #[derive(Default)]
    struct World {
        deployments: Vec<Deployment>,
        pulled: Vec<String>,
        staged_with: Vec<(String, Vec<String>)>,
        release_kargs: std::collections::BTreeMap<String, Vec<String>>,
        state: AgentState,
        env: GrubEnv,
        releases: Vec<Release>,
        rollouts: Vec<cairn_common::release::Rollout>,
        gate_fails: bool,
        reboots: Vec<String>,
        fail_stage: bool,
    }

    #[derive(Clone)]
    struct Fake(Rc<RefCell<World>>);

    fn deployment(index: usize, commit: &str, version: &str, booted: bool, staged: bool) -> Deployment {
        Deployment {
            index,
            stateroot: "cairn".into(),
            commit: commit.into(),
            serial: 0,
            version: Some(version.into()),
            booted,
            staged,
            pending: false,
            rollback: false,
        }
    }

    fn commit(n: u8) -> String {
        format!("{n:0>64}")
    }

    impl Sysroot for Fake {
        fn deployments(&self) -> Result<Vec<Deployment>> {
            Ok(self.0.borrow().deployments.clone())
        }
        fn set_remote(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn pull(&self, _: &str, commit: &str, _: u32, _: Duration) -> Result<()> {
            self.0.borrow_mut().pulled.push(commit.into());
            Ok(())
        }
        fn commit_metadata(&self, commit: &str, key: &str) -> Result<Option<String>> {
            let w = self.0.borrow();
            let r = w.releases.iter().find(|r| r.commit == commit).unwrap();
            Ok(Some(if key == meta::ARCH {
                r.arch.to_string()
            } else {
                r.version.clone()
            }))
        }
        fn stage(&self, commit: &str, kargs: &[String]) -> Result<()> {
            let mut w = self.0.borrow_mut();
            let version = w
                .releases
                .iter()
                .find(|r| r.commit == commit)
                .map_or("1.0.0".into(), |r| r.version.clone());
            w.deployments.insert(0, deployment(0, commit, &version, false, true));
            for (i, d) in w.deployments.iter_mut().enumerate() {
                d.index = i;
            }
            w.staged_with.push((commit.into(), kargs.to_vec()));
            if w.fail_stage {
                bail!("ostree admin deploy: no space left on device");
            }
            Ok(())
        }
        fn undeploy(&self, index: usize) -> Result<()> {
            let mut w = self.0.borrow_mut();
            w.deployments.remove(index);
            for (i, d) in w.deployments.iter_mut().enumerate() {
                d.index = i;
            }
            Ok(())
        }
        fn drop_staged(&self) -> Result<()> {
            self.0.borrow_mut().deployments.retain(|d| !d.staged);
            Ok(())
        }
        fn booted_kargs(&self) -> Result<Vec<String>> {
            Ok(vec!["root=LABEL=cairn-root".into(), "rw".into(), "old.flag=1".into()])
        }
        fn release_kargs(&self, commit: &str) -> Result<Vec<String>> {
            Ok(self.0.borrow().release_kargs.get(commit).cloned().unwrap_or_default())
        }
    }

    impl StateStore for Fake {
        fn load(&self) -> Result<AgentState> {
            Ok(self.0.borrow().state.clone())
        }
        fn save(&self, state: &AgentState) -> Result<()> {
            self.0.borrow_mut().state = state.clone();
            Ok(())
        }
    }

    impl BootCounter for Fake {
        fn read(&self) -> Result<GrubEnv> {
            Ok(self.0.borrow().env.clone())
        }
        fn update(&self, change: &mut dyn FnMut(&mut GrubEnv)) -> Result<()> {
            change(&mut self.0.borrow_mut().env);
            Ok(())
        }
    }

    impl ReleaseSource for Fake {
        fn offer(&self) -> Result<Offer> {
            Ok(Offer {
                releases: self.0.borrow().releases.clone(),
                rollouts: self.0.borrow().rollouts.clone(),
            })
        }
    }

    impl HealthGate for Fake {
        fn run(&self) -> Result<(), Failure> {
            if self.0.borrow().gate_fails {
                return Err(Failure {
                    check: "50-app".into(),
                    reason: "exit status 1".into(),
                });
            }
            Ok(())
        }
    }

    impl Power for Fake {
        fn reboot(&self, reason: &str) -> Result<()> {
            self.0.borrow_mut().reboots.push(reason.into());
            Ok(())
        }
    }

    impl Clock for Fake {
        fn now(&self) -> u64 {
            1_800_000_000
        }
    }

    fn release(version: &str, n: u8) -> Release {
        Release {
            version: version.into(),
            arch: Arch::X86_64,
            variant: "dev".parse().unwrap(),
            stream: "stable".into(),
            ostree_ref: "cairn/x86_64/dev/stable".into(),
            commit: commit(n),
            requires: None,
        }
    }

    fn agent_on_v1() -> (Agent, Fake) {
        let fake = Fake(Rc::new(RefCell::new(World {
            deployments: vec![deployment(0, &commit(1), "1.0.0", true, false)],
            releases: vec![release("1.0.0", 1), release("1.1.0", 2)],
            ..World::default()
        })));
        let mut config = crate::config::ConfigBuilder::new().finish().unwrap();
        config.url = Some("http://updates.invalid/repo".into());
        let agent = Agent {
            config,
            identity: Identity {
                arch: Arch::X86_64,
                variant: "dev".parse().unwrap(),
                rollout_position: 0.5,
            },
            sysroot: Box::new(fake.clone()),
            store: Box::new(fake.clone()),
            counter: Box::new(fake.clone()),
            repo: Box::new(fake.clone()),
            gate: Box::new(fake.clone()),
            power: Box::new(fake.clone()),
            clock: Box::new(fake.clone()),
        };
        (agent, fake)
    }

    /// What a clean reboot into the staged deployment does to the fake.
    fn boot_staged(fake: &Fake) {
        let mut w = fake.0.borrow_mut();
        for d in &mut w.deployments {
            d.booted = d.staged;
            d.staged = false;
        }
    }

    #[test]
    fn update_stages_with_the_release_s_kernel_arguments_and_arms_the_counter() {
        let (agent, fake) = agent_on_v1();
        fake.0.borrow_mut().release_kargs.insert(commit(1), vec!["rw".into()]);
        fake.0
            .borrow_mut()
            .release_kargs
            .insert(commit(2), vec!["rw".into(), "new.flag=1".into()]);
        let out = agent.update(&Request::Latest, true).unwrap();
        assert_eq!(
            out,
            UpdateOutcome::Staged {
                version: "1.1.0".into(),
                commit: commit(2)
            }
        );
        let w = fake.0.borrow();
        assert_eq!(
            w.staged_with,
            vec![(
                commit(2),
                vec![
                    "root=LABEL=cairn-root".into(),
                    "old.flag=1".into(),
                    "rw".into(),
                    "new.flag=1".into()
                ]
            )]
        );
        assert_eq!(boot_counter::tries_left(&w.env), Some(agent.config.boot_tries));
        assert!(matches!(
            &w.state.update,
            UpdateState::Staged {
                operator_reboots: true,
                ..
            }
        ));
        let status = crate::status::build(
            &w.deployments,
            w.state.clone(),
            None,
            &agent.config,
            crate::status::Records::default(),
            0,
        );
        assert_eq!(status.waiting, Some(crate::status::Waiting::Operator));
    }

    #[test]
    fn a_release_rolling_out_waits_for_the_host_s_turn_unless_named() {
        let (agent, fake) = agent_on_v1();
        // 1.1.0 rolls out over 1000 s from 500 s before now: the host, at
        // 0.5, takes it 0 s from now... but not one second earlier.
        let now = 1_800_000_000;
        let mut rollout = cairn_common::release::Rollout {
            release: release("1.1.0", 2).target_name(),
            start: now - 499,
            duration_secs: 1000,
            paused_at: None,
        };
        fake.0.borrow_mut().rollouts = vec![rollout.clone()];
        let out = agent.update(&Request::Latest, true).unwrap();
        assert_eq!(out, UpdateOutcome::UpToDate { booted: "1.0.0".into() });
        let status = agent.status().unwrap();
        assert_eq!(
            status.rollout,
            Some(crate::status::RolloutWait {
                version: "1.1.0".into(),
                turn_at: Some(now + 1),
                turn_in_secs: Some(1)
            })
        );
        assert!(agent.check().unwrap().is_none());
        // An operator naming it is not held.
        let named = Request::Exact {
            version: Version::new(1, 1, 0),
            allow_downgrade: false,
        };
        assert!(matches!(
            agent.update(&named, true).unwrap(),
            UpdateOutcome::Staged { .. }
        ));
        let status = agent.status().unwrap();
        assert!(status.rollout.is_some(), "naming a version says nothing of rollouts");
        assert_eq!(status.available.as_deref(), Some("1.1.0"));

        let (agent, fake) = agent_on_v1();
        rollout.start = now - 500;
        fake.0.borrow_mut().rollouts = vec![rollout];
        // A turn recorded before (the check that saw it coming) ends with
        // the staging at that turn.
        let mut waiting = agent.store.load().unwrap();
        waiting.turn = Some(Turn {
            version: "1.1.0".into(),
            at: Some(now),
        });
        agent.store.save(&waiting).unwrap();
        assert!(matches!(
            agent.update(&Request::Latest, true).unwrap(),
            UpdateOutcome::Staged { .. }
        ));
        assert_eq!(agent.status().unwrap().rollout, None);
    }

    #[test]
    fn a_stage_that_fails_after_ostree_wrote_it_leaves_nothing_staged_or_armed() {
        let (agent, fake) = agent_on_v1();
        fake.0.borrow_mut().fail_stage = true;
        let err = agent.update(&Request::Latest, false).unwrap_err();
        assert!(format!("{err:#}").contains("no space left on device"), "{err:#}");
        let w = fake.0.borrow();
        assert!(w.deployments.iter().all(|d| !d.staged), "staged deployment left behind");
        assert_eq!(boot_counter::tries_left(&w.env), None);
        assert!(w.state.update.is_idle());
        assert_eq!(w.state.last_error.as_ref().unwrap().operation, "update");
    }

    #[test]
    fn a_trial_boot_is_committed_or_rebooted_by_the_gate() {
        for gate_fails in [false, true] {
            let (agent, fake) = agent_on_v1();
            agent.update(&Request::Latest, false).unwrap();
            boot_staged(&fake);
            fake.0.borrow_mut().gate_fails = gate_fails;
            let outcome = agent.boot_check().unwrap();
            assert!(matches!(outcome, BootOutcome::OnTrial(_)));
            let w = fake.0.borrow();
            if gate_fails {
                assert!(matches!(w.state.update, UpdateState::OnTrial { .. }));
                assert_eq!(w.reboots.len(), 1);
                assert!(w.state.last_error.as_ref().unwrap().message.contains("50-app"));
            } else {
                assert!(w.state.update.is_idle());
                assert!(w.reboots.is_empty());
                assert_eq!(boot_counter::tries_left(&w.env), None);
            }
        }
    }

    #[test]
    fn a_rollback_excludes_the_version_rolled_away_from_until_named() {
        let (agent, fake) = agent_on_v1();
        agent.update(&Request::Latest, false).unwrap();
        boot_staged(&fake);
        agent.boot_check().unwrap();
        assert_eq!(agent.rollback(false).unwrap(), "1.0.0");
        {
            let w = fake.0.borrow();
            assert_eq!(w.state.excluded["1.1.0"].reason, ExclusionReason::RolledBack);
            assert!(w.state.update.daemon_reboots());
        }
        boot_staged(&fake);
        {
            let mut w = fake.0.borrow_mut();
            w.deployments.retain(|d| d.booted || d.commit == commit(2));
        }
        assert!(matches!(agent.boot_check().unwrap(), BootOutcome::RolledBack(_)));
        assert!(agent.status().unwrap().settled());
        // The daemon's next checks do not take 1.1.0 again…
        assert_eq!(agent.check().unwrap(), None);
        assert!(matches!(
            agent.update(&Request::Latest, false).unwrap(),
            UpdateOutcome::UpToDate { .. }
        ));
        // …until an operator names it.
        let named = Request::Exact {
            version: Version::parse("1.1.0").unwrap(),
            allow_downgrade: false,
        };
        assert!(matches!(
            agent.update(&named, false).unwrap(),
            UpdateOutcome::Staged { .. }
        ));
        assert!(fake.0.borrow().state.excluded.is_empty());
    }
}
