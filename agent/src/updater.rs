//! The update lifecycle carried out: check, stage (pull, verify, arm the
//! boot counter), the verdict on a trial boot, rollback, status.
//!
//! Decisions are [`crate::lifecycle`]'s; this module does what they say, in
//! an order that leaves the host bootable if power is lost at any step:
//!
//! 1. record the trial in `/var` (intent), 2. arm GRUB's counter,
//! 3. stage with ostree (finalized at shutdown), 4. reboot.
//!
//! A boot that finds a recorded trial but no such deployment knows staging
//! never completed and disarms; a boot on the previous deployment with the
//! trial's deployment present knows GRUB fell back.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use cairn_common::layout::Arch;
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use cairn_common::release::{Release, OSTREE_DIR};
use semver::Version;
use serde::Serialize;

use crate::boot_counter::{self, Esp};
use crate::config::Config;
use crate::health::Gate;
use crate::lifecycle::{self, BootOutcome, Host, Request, Selection, Trial};
use crate::releases::UpdateRepo;
use crate::state::{EventKind, Phase, StateFile};
use crate::sysroot::{Deployment, Sysroot};

/// What this host is: fixed by the image it booted.
#[derive(Debug, Clone)]
pub struct Identity {
    pub arch: Arch,
    pub flavor: String,
}

impl Identity {
    /// This host's identity, from `/usr/lib/os-release` (`VARIANT_ID`).
    pub fn host() -> Result<Self> {
        let text = std::fs::read_to_string("/usr/lib/os-release").context("reading /usr/lib/os-release")?;
        let flavor = text
            .lines()
            .find_map(|l| l.strip_prefix("VARIANT_ID="))
            .map(|v| v.trim_matches('"').to_owned())
            .context("/usr/lib/os-release has no VARIANT_ID (the image flavour)")?;
        let arch = Arch::host().context("this CPU architecture is not one Cairn builds for")?;
        Ok(Self { arch, flavor })
    }
}

pub struct Agent<S: Sysroot> {
    pub config: Config,
    pub identity: Identity,
    pub sysroot: S,
    pub state: StateFile,
    pub esp: Esp,
    pub health_dirs: Vec<PathBuf>,
}

/// What `update` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum UpdateOutcome {
    UpToDate { booted: String },
    AlreadyStaged { version: String },
    Staged { version: String, commit: String },
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub deployments: Vec<Deployment>,
    pub phase: Phase,
    pub trial: Option<Trial>,
    pub boot_tries_left: Option<u32>,
    pub last_check: Option<u64>,
    pub available: Option<String>,
    pub last_error: Option<crate::state::LastError>,
    pub bad_versions: Vec<String>,
    pub stream: String,
    pub url: Option<String>,
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

impl<S: Sysroot> Agent<S> {
    fn url(&self) -> Result<&str> {
        self.config
            .url
            .as_deref()
            .context("no update url configured ([update] url in /etc/cairn/agent.d/*.toml)")
    }

    fn repo(&self) -> Result<UpdateRepo> {
        Ok(UpdateRepo::host(
            self.url()?,
            self.config.download_retries + 1,
            self.config.download_stall_timeout,
        ))
    }

    /// Run `op`, recording its error in the state (shown by `status`).
    fn recorded<T>(&self, operation: &str, op: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = op();
        if let Err(e) = &result {
            if let Err(save) = self.state.update(|s| s.fail(operation, e)) {
                tracing::error!(error = %format!("{save:#}"), "could not record the failure");
            }
        }
        result
    }

    /// Ask the repository what is newest for this host; changes nothing but
    /// the record of the check.
    pub fn check(&self) -> Result<Option<Release>> {
        self.recorded("check", || {
            let deployments = self.sysroot.deployments()?;
            let booted_version = version_of(booted(&deployments)?)?;
            let releases = self.repo()?.releases()?;
            let state = self.state.load()?;
            let host = self.host(&booted_version, &state.bad_versions);
            let selection = lifecycle::select(&releases, &host, &Request::Latest)?;
            let available = match &selection {
                Selection::Update(r) => Some(r.clone()),
                Selection::UpToDate => None,
            };
            self.state.update(|s| {
                s.last_check = Some(crate::state::now());
                s.available = available.as_ref().map(|r| r.version.clone());
                s.last_error = None;
            })?;
            Ok(available)
        })
    }

    fn host<'a>(&'a self, booted: &'a Version, bad: &'a std::collections::BTreeSet<String>) -> Host<'a> {
        Host {
            arch: self.identity.arch,
            flavor: &self.identity.flavor,
            stream: &self.config.stream,
            booted,
            bad,
        }
    }

    /// Download, verify and stage a release; arm the boot counter.
    pub fn update(&self, request: &Request) -> Result<UpdateOutcome> {
        self.recorded("update", || self.update_inner(request))
    }

    fn update_inner(&self, request: &Request) -> Result<UpdateOutcome> {
        let state = self.state.load()?;
        if let Some(trial) = &state.trial {
            let deployments = self.sysroot.deployments()?;
            if deployments.iter().any(|d| d.staged && d.commit == trial.commit) {
                return Ok(UpdateOutcome::AlreadyStaged {
                    version: trial.version.clone(),
                });
            }
            bail!(
                "the update to {} is still on trial; it must be committed or rolled back first",
                trial.version
            );
        }
        let deployments = self.sysroot.deployments()?;
        let current = booted(&deployments)?.clone();
        let booted_version = version_of(&current)?;
        tracing::info!(url = self.url()?, "checking for releases");
        let releases = self.repo()?.releases()?;
        let release = match lifecycle::select(&releases, &self.host(&booted_version, &state.bad_versions), request) {
            Ok(Selection::Update(r)) => r,
            Ok(Selection::UpToDate) => {
                self.state.update(|s| {
                    s.last_check = Some(crate::state::now());
                    s.available = None;
                    s.last_error = None;
                })?;
                return Ok(UpdateOutcome::UpToDate {
                    booted: booted_version.to_string(),
                });
            }
            Err(refusal) => {
                self.state
                    .update(|s| s.record(EventKind::Refused, None, refusal.to_string()))?;
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

        // 1. Intent, 2. counter, 3. stage.
        let trial = Trial {
            version: release.version.clone(),
            commit: release.commit.clone(),
            from_version: booted_version.to_string(),
            from_commit: current.commit.clone(),
        };
        self.state.update(|s| s.trial = Some(trial.clone()))?;
        let tries = self.config.boot_tries;
        tracing::info!(version = %release.version, trial_boots = tries, "staging");
        let staged = self
            .esp
            .update(|env| boot_counter::arm(env, tries))
            .and_then(|()| self.sysroot.stage(&release.commit));
        if let Err(e) = staged {
            // Leave the host as it was: no trial, no armed counter.
            let _ = self.esp.update(boot_counter::clear);
            let _ = self.sysroot.cleanup();
            self.state.update(|s| s.trial = None)?;
            return Err(e);
        }
        self.state.update(|s| {
            s.phase = Phase::Staged {
                version: release.version.clone(),
            };
            s.available = Some(release.version.clone());
            s.last_check = Some(crate::state::now());
            s.last_error = None;
            s.record(
                EventKind::Staged,
                Some(&release.version),
                format!("staged {} (from {booted_version}); {tries} trial boots", release.commit),
            );
        })?;
        Ok(UpdateOutcome::Staged {
            version: release.version,
            commit: release.commit,
        })
    }

    /// Settle what this boot means for a trial: commit it when the health
    /// gate passes, reboot when it fails, clean up after a fallback.
    /// Returns whether the host must reboot.
    pub fn boot_check(&self) -> Result<BootOutcome> {
        self.recorded("boot-check", || self.boot_check_inner())
    }

    fn boot_check_inner(&self) -> Result<BootOutcome> {
        let state = self.state.load()?;
        let deployments = self.sysroot.deployments()?;
        let current = booted(&deployments)?.clone();
        let env = self.esp.read()?;
        let commits: Vec<String> = deployments.iter().map(|d| d.commit.clone()).collect();
        let outcome = lifecycle::classify_boot(
            state.trial.as_ref(),
            &current.commit,
            &commits,
            boot_counter::fell_back(&env),
        );
        match &outcome {
            BootOutcome::Normal => {
                if boot_counter::tries_left(&env).is_some() || boot_counter::fell_back(&env) {
                    tracing::warn!("boot counter armed with no trial recorded; disarming");
                    self.esp.update(boot_counter::clear)?;
                }
            }
            BootOutcome::OnTrial(trial) => {
                self.state.update(|s| {
                    s.phase = Phase::Trial {
                        version: trial.version.clone(),
                    }
                })?;
                let gate = Gate {
                    timeout: self.config.health_timeout,
                    check_timeout: self.config.health_check_timeout,
                    containerd: self.config.health_containerd,
                    check_dirs: self.health_dirs.clone(),
                };
                tracing::info!(version = %trial.version, "trial boot: running the health gate");
                match gate.run() {
                    Ok(()) => {
                        self.esp.update(boot_counter::clear)?;
                        self.state.update(|s| {
                            s.trial = None;
                            s.phase = Phase::Idle;
                            s.available = None;
                            s.last_error = None;
                            s.record(EventKind::Committed, Some(&trial.version), "health gate passed");
                        })?;
                        tracing::info!(version = %trial.version, "committed");
                    }
                    Err(failure) => {
                        let left = boot_counter::tries_left(&env).unwrap_or(0);
                        let message = format!("health gate failed: {failure}; {left} trial boots left, rebooting");
                        tracing::error!("{message}");
                        self.state.update(|s| {
                            s.record(EventKind::Failed, Some(&trial.version), message.clone());
                            s.set_error("health", message.clone());
                        })?;
                        reboot("the trial deployment failed its health gate")?;
                    }
                }
            }
            BootOutcome::FellBack(trial) => {
                // Undeploy the failed deployment (if still there), remember
                // its version as bad, disarm.
                if let Some(failed) = deployments.iter().find(|d| d.commit == trial.commit && !d.booted) {
                    self.sysroot.undeploy(failed.index)?;
                }
                self.esp.update(boot_counter::clear)?;
                let message = format!(
                    "update to {} failed its trial; rolled back to {}",
                    trial.version,
                    current.version.as_deref().unwrap_or("the previous deployment")
                );
                self.state.update(|s| {
                    s.bad_versions.insert(trial.version.clone());
                    s.trial = None;
                    s.phase = Phase::Idle;
                    s.available = None;
                    s.record(EventKind::FellBack, Some(&trial.version), message.clone());
                    s.set_error("trial", message.clone());
                })?;
                tracing::error!("{message}");
            }
            BootOutcome::StageLost(trial) => {
                self.esp.update(boot_counter::clear)?;
                self.state.update(|s| {
                    s.trial = None;
                    s.phase = Phase::Idle;
                    s.record(
                        EventKind::StageLost,
                        Some(&trial.version),
                        "the staged deployment was never finalized (interrupted shutdown); still on the previous one",
                    );
                })?;
            }
        }
        Ok(outcome)
    }

    /// Make the previous deployment's commit the next boot's default.
    pub fn rollback(&self) -> Result<String> {
        self.recorded("rollback", || {
            let state = self.state.load()?;
            if state.trial.is_some() {
                bail!("an update is staged or on trial; it rolls back by itself if it fails");
            }
            let deployments = self.sysroot.deployments()?;
            let current = booted(&deployments)?;
            let previous = deployments
                .iter()
                .find(|d| !d.booted && !d.staged && d.commit != current.commit)
                .context("there is no previous deployment to roll back to")?;
            let version = previous.version.clone().unwrap_or_else(|| previous.commit.clone());
            self.sysroot.stage(&previous.commit)?;
            self.state.update(|s| {
                s.phase = Phase::Staged {
                    version: version.clone(),
                };
                s.record(
                    EventKind::RolledBack,
                    Some(&version),
                    format!("rollback from {} staged", current.version.as_deref().unwrap_or("?")),
                );
            })?;
            Ok(version)
        })
    }

    pub fn status(&self) -> Result<Status> {
        let state = self.state.load()?;
        let deployments = self.sysroot.deployments()?;
        let tries = self.esp.read().ok().and_then(|env| boot_counter::tries_left(&env));
        Ok(Status {
            deployments,
            phase: state.phase,
            trial: state.trial,
            boot_tries_left: tries,
            last_check: state.last_check,
            available: state.available,
            last_error: state.last_error,
            bad_versions: state.bad_versions.into_iter().collect(),
            stream: self.config.stream.clone(),
            url: self.config.url.clone(),
        })
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
    Cmd::new("systemctl").arg("reboot").run()
}
