//! First-boot provisioning: `cairn-agent provision`, run early in every
//! boot by `cairn-provision.service` (after the local filesystems and
//! networkd's start, before `sysinit.target`, so before sshd, containerd,
//! getty and the agent's daemon).
//!
//! Each boot it makes sure the image's default user exists and the SSH
//! host keys are made (and prints their fingerprints), runs stored
//! `bootcmd`s, then looks for a config ([`source`]) and decides
//! ([`decide`]) whether to apply it: an Ignition config once per machine,
//! cloud-config once per instance id. Applying reads the config into a
//! [`plan::Plan`] ([`ignition`], [`cloud_config`], [`network_config`]),
//! fetches every remote content and checks its hash ([`resolve`]) before
//! anything is written (so a bad config applies nothing), then applies it
//! ([`apply`]). The outcome is kept in [`RECORD`] and shown by `status`.
//! `runcmd` and user-data scripts run later in the boot, once the network
//! is online (`cairn-provision-final.service`).

pub mod apply;
pub mod cloud_config;
pub mod host;
pub mod ignition;
pub mod network_config;
pub mod plan;
pub mod source;
mod yaml;

use std::path::Path;

use anyhow::{Context as _, Result};
use cairn_common::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use self::cloud_config::UserData;
use self::ignition::Fetch;
use self::plan::{Command, Content, Plan};
use self::source::{Found, Source, Stage};
use crate::metadata::Metadata;
use crate::platform::{Detected, Platform};

/// Where provisioning keeps what it did.
pub const DIR: &str = "/var/lib/cairn/provision";
/// The outcome of the last provisioning (`status` shows it).
pub const RECORD: &str = "/var/lib/cairn/provision/result.json";
const BOOT_COMMANDS: &str = "bootcmd.json";
const PENDING_COMMANDS: &str = "pending-run.json";
/// Written by the local stage when the config it found fetches over the
/// network: `cairn-provision-network.service` runs when it exists.
/// Relative to the root (`/run/cairn/provision/needs-network` on a host).
pub const NEEDS_NETWORK: &str = "run/cairn/provision/needs-network";
/// Part of the error [`Offline`] gives, telling "needs the network" apart.
const OFFLINE: &str = "not fetched before networking";

/// The local stage's fetcher: every fetch is refused, marking the config
/// as one for the network stage.
struct Offline;

impl Fetch for Offline {
    fn fetch(&self, url: &str, _headers: &[(String, String)]) -> Result<Vec<u8>, String> {
        Err(format!("{url}: {OFFLINE}"))
    }
}

/// The unit that runs `runcmd` and scripts once the network is online.
pub const FINAL_UNIT: &str = "cairn-provision-final.service";

/// What the last provisioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Where the config came from; `None`: no source had one.
    pub source: Option<Source>,
    /// `ignition 3.4.0`, `cloud-config`, `script`, `empty`.
    pub format: Option<String>,
    pub instance_id: Option<String>,
    /// The config's SHA-256, to tell configs apart.
    pub config_sha256: Option<String>,
    /// One line per effect applied.
    pub applied: Vec<String>,
    pub warnings: Vec<String>,
    /// Why nothing (or not everything) was applied.
    pub error: Option<String>,
    /// When (seconds since the epoch).
    pub at: u64,
    /// `runcmd` and scripts: `None` while pending, then their outcome.
    #[serde(default)]
    pub commands: Option<CommandsOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandsOutcome {
    pub ran: Vec<String>,
    pub error: Option<String>,
}

impl Record {
    /// Whether this record is of a config that was applied.
    pub fn applied_ok(&self) -> bool {
        self.source.is_some() && self.error.is_none()
    }
}

/// Whether to apply a found config, given the last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Apply,
    Skip(String),
}

/// Ignition applies once per machine (its first boot, or until an attempt
/// succeeds: a refused config applied nothing); cloud-config once per
/// instance id, so a disk cloned under a new instance id is provisioned
/// again (cloud-init's rule).
pub fn decide(previous: Option<&Record>, found: &Found, is_ignition: bool) -> Decision {
    let Some(prev) = previous.filter(|p| p.applied_ok()) else {
        return Decision::Apply;
    };
    if is_ignition {
        return Decision::Skip("an Ignition config is applied on the machine's first boot only".into());
    }
    match (&found.instance_id, &prev.instance_id) {
        (Some(now), Some(then)) if now != then => Decision::Apply,
        (Some(_), _) | (None, _) => Decision::Skip(format!(
            "already provisioned{}",
            found
                .instance_id
                .as_ref()
                .map(|i| format!(" for instance {i}"))
                .unwrap_or_default()
        )),
    }
}

/// Read a found config into a plan: its format's name and the plan, or an
/// error naming what is wrong.
pub fn plan_for(found: &Found, default_user: &str, fetch: &dyn Fetch) -> Result<(String, Plan), String> {
    let (format, mut plan) = match cloud_config::classify(&found.user_data)? {
        UserData::Ignition(bytes) => {
            let ign = ignition::read(&bytes, fetch)?;
            (format!("ignition {}", ign.version), ign.plan)
        }
        UserData::CloudConfig(text) => ("cloud-config".to_owned(), cloud_config::read(&text, default_user)?),
        UserData::Script(bytes) => ("script".to_owned(), cloud_config::script_plan(bytes)),
        UserData::Empty => ("empty".to_owned(), Plan::default()),
    };
    if !format.starts_with("ignition") {
        if plan.hostname.is_none() {
            if let Some(h) = &found.local_hostname {
                plan::check_hostname(h).map_err(|e| format!("meta-data local-hostname: {e}"))?;
                plan.hostname = Some(h.clone());
            }
        }
        if let Some(nc) = &found.network_config {
            let (files, mut warnings) = network_config::render(nc)?;
            plan.network = files;
            plan.warnings.append(&mut warnings);
        }
    }
    Ok((format, plan))
}

/// Fetch every remote content of `plan` and check its hash: afterwards
/// every content is inline. The first failure is returned (and nothing has
/// been written yet).
pub fn resolve(plan: &mut Plan, fetch: &dyn Fetch) -> Result<(), String> {
    for f in &mut plan.files {
        let shown = format!("/{}", f.path.display());
        for c in f.contents.iter_mut().chain(f.append.iter_mut()) {
            if let Content::Remote(r) = c {
                let data = ignition::resolve_remote(r, fetch).map_err(|e| format!("{shown}: {e}"))?;
                *c = Content::Inline(data);
            }
        }
    }
    Ok(())
}

/// Tells `platform` how provisioning went: `None` if it succeeded, else
/// why not; returns what was reported (`None`: the platform wants nothing).
pub type ReportToPlatform<'a> = dyn Fn(Platform, Option<&str>) -> Result<Option<String>, String> + 'a;

/// What the running host offers provisioning.
pub struct Host<'a> {
    pub cmdline: String,
    pub default_user: String,
    pub fetch: &'a dyn Fetch,
    pub system: &'a mut dyn apply::System,
    /// Lines for the console (and the journal).
    pub say: &'a dyn Fn(&str),
    /// The platform the host is on, and how that was decided.
    pub platform: Detected,
    /// The platform's config drive, if one is attached.
    pub config_drive: &'a dyn Fn(Platform) -> Result<Option<Metadata>>,
    /// The platform's metadata service (time-bounded).
    pub metadata_service: &'a dyn Fn(Platform) -> Result<Metadata, String>,
    /// The NTP servers the image names for the detected platform.
    pub ntp: Vec<String>,
    /// Tell the platform how provisioning went (`None`: it succeeded; else
    /// why not), where it wants to know; returns what to say.
    pub report_to_platform: &'a ReportToPlatform<'a>,
}

/// What this boot learnt of its platform, for `status`
/// (`/run/cairn/platform.json`, written at each stage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub detected: Detected,
    /// Where the metadata came from, and what it gave.
    pub metadata: Option<MetadataSummary>,
    pub error: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataSummary {
    pub origin: String,
    pub instance_id: String,
    pub hostname: Option<String>,
    pub ssh_keys: usize,
    pub user_data: bool,
}

/// Where [`PlatformRecord`] is kept, relative to the root.
pub const PLATFORM_RECORD: &str = "run/cairn/platform.json";
/// The metadata's attributes for units (`EnvironmentFile=`), relative to the root.
pub const METADATA_ENV: &str = "run/cairn/metadata.env";

pub fn load_platform_record(root: &Path) -> Option<PlatformRecord> {
    serde_json::from_str(&std::fs::read_to_string(root.join(PLATFORM_RECORD)).ok()?).ok()
}

fn save_platform_record(root: &Path, r: &PlatformRecord) {
    let path = root.join(PLATFORM_RECORD);
    let _ = std::fs::create_dir_all(path.parent().expect("has a folder"));
    if let Err(e) = write_atomic(&path, &serde_json::to_vec_pretty(r).unwrap_or_default()) {
        tracing::warn!(error = %format!("{e:#}"), "recording the platform");
    }
}

/// The platform's metadata for this stage: from its config drive, else
/// (once the network is up) its metadata service; applied — the
/// attributes for units, the default user's keys (replaced every boot),
/// the host's name when no config names it — and recorded. `None`: not a
/// cloud, nothing there yet (the local stage then asks for the network
/// stage), or it failed (said and recorded; the boot goes on).
fn platform_metadata(host: &mut Host<'_>, root: &Path, stage: Stage) -> Option<Metadata> {
    let platform = host.platform.platform;
    let mut record = PlatformRecord {
        detected: host.platform.clone(),
        metadata: None,
        error: None,
        warnings: Vec::new(),
    };
    if let Some(e) = &host.platform.error {
        (host.say)(e);
    }
    if !platform.is_cloud() {
        save_platform_record(root, &record);
        return None;
    }
    if stage == Stage::Local && !host.ntp.is_empty() {
        if let Err(e) = use_platform_ntp(host, root) {
            (host.say)(&format!("{platform}: NTP: {e}"));
        }
    }
    let drive = if source::has_config_drive(platform) {
        (host.config_drive)(platform).map_err(|e| format!("{e:#}"))
    } else {
        Ok(None)
    };
    let read = match drive {
        Ok(Some(m)) => Ok(m),
        Ok(None) if stage == Stage::Local => {
            (host.say)(&format!(
                "{platform}: its metadata service is read once networkd has started"
            ));
            if let Err(e) = flag_network_stage(root) {
                (host.say)(&format!("{e:#}"));
            }
            save_platform_record(root, &record);
            return None;
        }
        Ok(None) => (host.metadata_service)(platform),
        Err(e) => Err(e),
    };
    let m = match read {
        Ok(m) => m,
        Err(e) => {
            (host.say)(&format!("{platform} metadata: {e}; booting on without it"));
            record.error = Some(e);
            save_platform_record(root, &record);
            return None;
        }
    };
    if let Err(e) = apply_metadata(host, root, &m) {
        (host.say)(&format!("{platform} metadata: {e}"));
        record.error = Some(e);
    }
    for w in &m.warnings {
        (host.say)(&format!("{platform}: {w}"));
    }
    record.warnings = m.warnings.clone();
    (host.say)(&format!(
        "{platform} metadata ({}): instance {}, {} SSH key(s) for {}{}",
        m.origin,
        m.instance_id,
        m.ssh_keys.len(),
        host.default_user,
        if m.user_data.is_some() { ", user data" } else { "" }
    ));
    record.metadata = Some(MetadataSummary {
        origin: m.origin.clone(),
        instance_id: m.instance_id.clone(),
        hostname: m.hostname.clone(),
        ssh_keys: m.ssh_keys.len(),
        user_data: m.user_data.is_some(),
    });
    save_platform_record(root, &record);
    Some(m)
}

/// Where the platform's NTP servers are given to systemd-timesyncd,
/// relative to the root.
pub const TIMESYNCD_DROPIN: &str = "run/systemd/timesyncd.conf.d/50-cairn-platform.conf";

/// The platform's own time servers (the image's `[clouds.<name>] ntp`),
/// for this boot.
fn use_platform_ntp(host: &mut Host<'_>, root: &Path) -> Result<(), String> {
    let file = root.join(TIMESYNCD_DROPIN);
    std::fs::create_dir_all(file.parent().expect("has a folder")).map_err(|e| format!("{}: {e}", file.display()))?;
    let text = format!(
        "# The platform's time servers (cairn-provision).\n[Time]\nNTP={}\n",
        host.ntp.join(" ")
    );
    write_atomic(&file, text.as_bytes()).map_err(|e| format!("{}: {e:#}", file.display()))?;
    // Started already or not: either way it reads the servers.
    host.system.run(&[
        "systemctl".into(),
        "try-restart".into(),
        "systemd-timesyncd.service".into(),
    ])
}

/// What the metadata gives every boot, whatever the user data says.
fn apply_metadata(host: &mut Host<'_>, root: &Path, m: &Metadata) -> Result<(), String> {
    let env = root.join(METADATA_ENV);
    std::fs::create_dir_all(env.parent().expect("has a folder")).map_err(|e| format!("{}: {e}", env.display()))?;
    write_atomic(&env, m.env_file().as_bytes()).map_err(|e| format!("{}: {e:#}", env.display()))?;
    apply::write_metadata_keys(root, &host.default_user, &m.ssh_keys, &mut *host.system)?;
    let named = root.join(apply::PLATFORM_HOSTNAME);
    match &m.hostname {
        Some(h) => {
            write_atomic(&named, format!("{h}\n").as_bytes()).map_err(|e| format!("{}: {e:#}", named.display()))?
        }
        None => {
            let _ = std::fs::remove_file(&named);
        }
    }
    apply::sync_hostname(root, &mut *host.system)
}

/// Ask for `cairn-provision-network.service` (its condition).
fn flag_network_stage(root: &Path) -> Result<()> {
    let flag = root.join(NEEDS_NETWORK);
    std::fs::create_dir_all(flag.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&flag, b""))
        .with_context(|| format!("writing {}", flag.display()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn load_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_record(dir: &Path, r: &Record) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("result.json"), &serde_json::to_vec_pretty(r)?)
}

fn save_commands(dir: &Path, name: &str, commands: &[Command]) -> Result<()> {
    let path = dir.join(name);
    if commands.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stored: Vec<StoredCommand> = commands.iter().map(StoredCommand::from).collect();
    write_atomic(&path, &serde_json::to_vec_pretty(&stored)?)
}

fn load_commands(dir: &Path, name: &str) -> Vec<Command> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<StoredCommand>>(&t).ok())
        .map(|v| v.into_iter().map(Command::from).collect())
        .unwrap_or_default()
}

/// A command as kept on disk between boots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
enum StoredCommand {
    Shell(String),
    Argv(Vec<String>),
    Script(String),
}

impl From<&Command> for StoredCommand {
    fn from(c: &Command) -> Self {
        match c {
            Command::Shell(s) => StoredCommand::Shell(s.clone()),
            Command::Argv(a) => StoredCommand::Argv(a.clone()),
            Command::Script(b) => StoredCommand::Script(String::from_utf8_lossy(b).into_owned()),
        }
    }
}

impl From<StoredCommand> for Command {
    fn from(c: StoredCommand) -> Self {
        match c {
            StoredCommand::Shell(s) => Command::Shell(s),
            StoredCommand::Argv(a) => Command::Argv(a),
            StoredCommand::Script(s) => Command::Script(s.into_bytes()),
        }
    }
}

/// The boot's provisioning (see the module's documentation). Errors of a
/// config are recorded and said, never returned: the host boots on so the
/// console shows why. Only a failure to record is an error.
pub fn run(host: &mut Host<'_>, state_dir: &Path, root: &Path, stage: Stage) -> Result<()> {
    let previous = load_record(state_dir);
    let stored_boot = if stage == Stage::Local {
        ensure_default_user(host, root);
        ensure_ssh_host_keys(host, root);
        if let Err(e) = apply::sync_hostname(root, &mut *host.system) {
            (host.say)(&format!("naming the host: {e}"));
        }
        load_commands(state_dir, BOOT_COMMANDS)
    } else {
        Vec::new()
    };
    // The stored `bootcmd`s run at every boot, unless a new config's own
    // replaced them in this one.
    let mut boot_commands_replaced = false;
    let platform = platform_metadata(host, root, stage);
    let result = provision_from_sources(
        host,
        state_dir,
        root,
        stage,
        previous.as_ref(),
        platform.as_ref(),
        &mut boot_commands_replaced,
    );
    if !boot_commands_replaced {
        run_boot_commands(host, &stored_boot, state_dir);
    }
    // The platform hears how provisioning went in the stage that read its
    // metadata, once it has run (a reboot for kernel arguments first: the
    // boot after it reports).
    if let (Some(m), Ok(Next::Continue)) = (&platform, &result) {
        let failure = load_record(state_dir).and_then(|r| r.error);
        let p = m.platform.unwrap_or(host.platform.platform);
        match (host.report_to_platform)(p, failure.as_deref()) {
            Ok(Some(line)) => (host.say)(&format!("{p}: {line}")),
            Ok(None) => {}
            Err(e) => (host.say)(&format!("{p}: {e}")),
        }
    }
    match result? {
        Next::Reboot => {
            (host.say)("rebooting once to boot with the provisioned kernel arguments");
            host.system
                .run(&["systemctl".into(), "reboot".into()])
                .map_err(|e| anyhow::anyhow!("rebooting for the kernel arguments: {e}"))
        }
        Next::Continue => {
            start_pending_commands(host, state_dir);
            Ok(())
        }
    }
}

/// Ask this stage's sources for a config and apply it if [`decide`] says
/// so; every outcome is recorded. `boot_commands_replaced` is set once the
/// config's own `bootcmd`s have run in place of the stored ones.
fn provision_from_sources(
    host: &mut Host<'_>,
    state_dir: &Path,
    root: &Path,
    stage: Stage,
    previous: Option<&Record>,
    platform: Option<&Metadata>,
    boot_commands_replaced: &mut bool,
) -> Result<Next> {
    if !stage.asks_sources(&host.cmdline, root.join(NEEDS_NETWORK).exists()) {
        return Ok(Next::Continue);
    }
    let found = match source::find(&host.cmdline, host.fetch, platform) {
        Ok(f) => f,
        Err(e) => {
            let message = format!("{e:#}");
            (host.say)(&format!("provisioning failed: {message}"));
            save_record(
                state_dir,
                &Record {
                    error: Some(message),
                    at: now(),
                    ..Record::default()
                },
            )?;
            return Ok(Next::Continue);
        }
    };
    let Some(found) = found else {
        if stage == Stage::Local && root.join(NEEDS_NETWORK).exists() {
            // The platform's metadata, read by the network stage, decides.
            return Ok(Next::Continue);
        }
        if previous.is_none() {
            (host.say)("no provisioning config (kernel argument, fw_cfg, NoCloud seed): booting unprovisioned");
            save_record(
                state_dir,
                &Record {
                    at: now(),
                    ..Record::default()
                },
            )?;
        }
        return Ok(Next::Continue);
    };
    let is_ignition = ignition::looks_like_ignition(&found.user_data);
    if let Decision::Skip(why) = decide(previous, &found, is_ignition) {
        tracing::info!(source = %found.source, "not provisioning again: {why}");
        return Ok(Next::Continue);
    }
    let mut record = Record {
        source: Some(found.source.clone()),
        instance_id: found.instance_id.clone(),
        config_sha256: Some(plan::digest_hex(plan::HashAlgorithm::Sha256, &found.user_data)),
        at: now(),
        ..Record::default()
    };
    // Before networking, a config that fetches (merge, replace, remote
    // files) is left whole to the network stage.
    let offline = Offline;
    let fetch: &dyn Fetch = if stage == Stage::Local { &offline } else { host.fetch };
    let planned = plan_for(&found, &host.default_user, fetch).and_then(|(format, mut plan)| {
        resolve(&mut plan, fetch)?;
        Ok((format, plan))
    });
    if matches!(&planned, Err(e) if e.contains(OFFLINE)) {
        (host.say)(&format!(
            "the config from {} fetches over the network: provisioning after networkd starts",
            found.source
        ));
        // Its network configuration (a NoCloud seed's) is what brings the
        // network up: written now, before networkd starts; the network
        // stage applies the whole config.
        if let Ok((_, plan)) = plan_for(&found, &host.default_user, fetch) {
            match apply::apply_network(&plan, root, &mut *host.system) {
                Ok(log) => log.iter().for_each(|l| (host.say)(l)),
                Err((e, _)) => (host.say)(&format!("writing its network configuration: {e}")),
            }
        }
        flag_network_stage(root)?;
        return Ok(Next::Continue);
    }
    (host.say)(&format!("provisioning from {}", found.source));
    let (format, plan) = match planned {
        Ok(p) => p,
        Err(e) => {
            (host.say)(&format!(
                "provisioning refused the config from {}: {e}; nothing was applied",
                found.source
            ));
            record.error = Some(e);
            save_record(state_dir, &record)?;
            return Ok(Next::Continue);
        }
    };
    record.format = Some(format.clone());
    record.warnings = plan.warnings.clone();
    for w in &plan.warnings {
        (host.say)(&format!("warning: {w}"));
    }
    // bootcmd runs first, at every boot from now on.
    save_commands(state_dir, BOOT_COMMANDS, &plan.boot_commands)?;
    run_boot_commands(host, &plan.boot_commands, state_dir);
    *boot_commands_replaced = true;
    match apply::apply(&plan, root, &host.default_user, &mut *host.system) {
        Ok(log) => {
            record.applied = log;
            (host.say)(&format!(
                "provisioned ({format}): {}",
                if plan.summary().is_empty() {
                    "nothing to do".to_owned()
                } else {
                    plan.summary().join(", ")
                }
            ));
        }
        Err((e, log)) => {
            (host.say)(&format!("provisioning failed after {} step(s): {e}", log.len()));
            record.applied = log;
            record.error = Some(e);
            save_record(state_dir, &record)?;
            return Ok(Next::Continue);
        }
    }
    save_commands(state_dir, PENDING_COMMANDS, &plan.run_commands)?;
    // Kernel arguments last: the new deployment takes this /etc, with
    // everything the config wrote, when it is made.
    if !plan.kernel_args.is_empty() {
        (host.say)("kernelArguments: deploying the booted release again if they change its arguments");
    }
    let reboot = match apply::deploy_kernel_args(&plan.kernel_args, &host.cmdline, &mut *host.system) {
        Ok(None) => false,
        Ok(Some(line)) => {
            (host.say)(&line);
            record.applied.push(line);
            true
        }
        Err(e) => {
            (host.say)(&format!("provisioning failed: {e}"));
            record.error = Some(e);
            false
        }
    };
    save_record(state_dir, &record)?;
    Ok(if reboot { Next::Reboot } else { Next::Continue })
}

/// What the boot does once provisioning has applied (or not) a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    /// Kernel arguments were deployed: boot again, once, with them.
    Reboot,
}

/// Start `cairn-provision-final.service` (it waits for the network) when
/// `runcmd`s or scripts are pending: after this boot's config, and at
/// every boot until they have run, so a reboot (for kernel arguments, or a
/// power cut) before the network came up does not lose them.
fn start_pending_commands(host: &mut Host<'_>, state_dir: &Path) {
    if !state_dir.join(PENDING_COMMANDS).exists() {
        return;
    }
    if let Err(e) = host.system.run(&[
        "systemctl".into(),
        "start".into(),
        "--no-block".into(),
        FINAL_UNIT.into(),
    ]) {
        (host.say)(&format!("starting {FINAL_UNIT}: {e}"));
    }
}

fn run_boot_commands(host: &mut Host<'_>, commands: &[Command], state_dir: &Path) {
    if commands.is_empty() {
        return;
    }
    if let Err((e, _)) = apply::run_commands(commands, &state_dir.join("scripts"), &mut *host.system) {
        (host.say)(&format!("bootcmd failed: {e}"));
    }
}

/// `runcmd` and user-data scripts, once, after the network is online
/// (`cairn-agent provision --final`).
pub fn run_final(host: &mut Host<'_>, state_dir: &Path) -> Result<()> {
    let pending = load_commands(state_dir, PENDING_COMMANDS);
    if pending.is_empty() {
        return Ok(());
    }
    let outcome = match apply::run_commands(&pending, &state_dir.join("scripts"), &mut *host.system) {
        Ok(ran) => CommandsOutcome { ran, error: None },
        Err((e, ran)) => {
            (host.say)(&format!("runcmd failed: {e}"));
            CommandsOutcome { ran, error: Some(e) }
        }
    };
    (host.say)(&format!("ran {} provisioning command(s)", outcome.ran.len()));
    let _ = std::fs::remove_file(state_dir.join(PENDING_COMMANDS));
    let mut record = load_record(state_dir).unwrap_or_default();
    record.commands = Some(outcome);
    save_record(state_dir, &record)
}

/// SSH host keys of this machine, made on its first boot (an image never
/// carries any), their fingerprints printed on the console so a user can
/// check the first connection (as cloud-init does).
fn ensure_ssh_host_keys(host: &mut Host<'_>, root: &Path) {
    const TYPES: [&str; 3] = ["ed25519", "ecdsa", "rsa"];
    let ssh = root.join("etc/ssh");
    if !ssh.join("sshd_config").exists() {
        return;
    }
    if TYPES.iter().all(|t| ssh.join(format!("ssh_host_{t}_key")).exists()) {
        return;
    }
    if let Err(e) = host.system.run(&["ssh-keygen".into(), "-A".into()]) {
        (host.say)(&format!("making the SSH host keys: {e}"));
        return;
    }
    let mut lines = vec!["-----BEGIN SSH HOST KEY FINGERPRINTS-----".to_owned()];
    for t in TYPES {
        let public = format!("/etc/ssh/ssh_host_{t}_key.pub");
        if let Ok(out) = host
            .system
            .output(&["ssh-keygen".into(), "-l".into(), "-f".into(), public])
        {
            lines.extend(out.lines().map(str::to_owned));
        }
    }
    lines.push("-----END SSH HOST KEY FINGERPRINTS-----".to_owned());
    for l in lines {
        (host.say)(&l);
    }
}

/// The image's default user, made on the first boot by the applier's own
/// account code: no password (keys only), in `sudo` (whose members need
/// none).
fn ensure_default_user(host: &mut Host<'_>, root: &Path) {
    if apply::passwd_entry(root, &host.default_user).is_some() {
        return;
    }
    let plan = Plan {
        users: vec![plan::User {
            name: host.default_user.clone(),
            groups: vec!["sudo".into()],
            shell: Some("/bin/bash".into()),
            ..plan::User::default()
        }],
        ..Plan::default()
    };
    if let Err((e, _)) = apply::apply(&plan, root, &host.default_user, &mut *host.system) {
        (host.say)(&format!("creating the default user {}: {e}", host.default_user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(user_data: &str, instance: Option<&str>) -> Found {
        Found {
            source: Source::FwCfg,
            user_data: user_data.as_bytes().to_vec(),
            instance_id: instance.map(str::to_owned),
            local_hostname: None,
            network_config: None,
        }
    }

    fn done(instance: Option<&str>) -> Record {
        Record {
            source: Some(Source::FwCfg),
            instance_id: instance.map(str::to_owned),
            ..Record::default()
        }
    }

    #[test]
    fn ignition_applies_once_and_cloud_config_once_per_instance() {
        let ign = found(r#"{"ignition":{"version":"3.4.0"}}"#, None);
        assert_eq!(decide(None, &ign, true), Decision::Apply);
        assert!(matches!(decide(Some(&done(None)), &ign, true), Decision::Skip(_)));
        // A refused attempt applied nothing: the next boot tries again.
        let failed = Record {
            error: Some("x".into()),
            ..done(None)
        };
        assert_eq!(decide(Some(&failed), &ign, true), Decision::Apply);
        // No config last time (booted unprovisioned): a config now applies.
        assert_eq!(decide(Some(&Record::default()), &ign, true), Decision::Apply);

        let cc = found("#cloud-config\n", Some("i-1"));
        assert_eq!(decide(None, &cc, false), Decision::Apply);
        assert!(matches!(
            decide(Some(&done(Some("i-1"))), &cc, false),
            Decision::Skip(_)
        ));
        assert_eq!(decide(Some(&done(Some("i-0"))), &cc, false), Decision::Apply);
    }

    struct NoFetch;
    impl Fetch for NoFetch {
        fn fetch(&self, url: &str, _: &[(String, String)]) -> Result<Vec<u8>, String> {
            Err(format!("{url}: unreachable"))
        }
    }

    #[test]
    fn nocloud_meta_data_and_network_config_join_the_plan() {
        let f = Found {
            source: Source::NoCloud {
                device: "/dev/vdb".into(),
            },
            user_data: b"#cloud-config\nruncmd: [echo hi]\n".to_vec(),
            instance_id: Some("i-1".into()),
            local_hostname: Some("seeded".into()),
            network_config: Some("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".into()),
        };
        let (format, plan) = plan_for(&f, "cairn", &NoFetch).unwrap();
        assert_eq!(format, "cloud-config");
        assert_eq!(plan.hostname.as_deref(), Some("seeded"));
        assert_eq!(plan.network.len(), 1);
        assert_eq!(plan.run_commands.len(), 1);
    }

    #[test]
    fn a_remote_file_that_cannot_be_fetched_refuses_the_config() {
        let f = found(
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/x","contents":{"source":"http://10.0.2.100/x"}}]}}"#,
            None,
        );
        let (_, mut plan) = plan_for(&f, "cairn", &NoFetch).unwrap();
        let e = resolve(&mut plan, &NoFetch).unwrap_err();
        assert!(e.contains("/etc/x") && e.contains("unreachable"), "{e}");
    }

    #[test]
    fn stored_commands_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        // The first boot's state folder does not exist yet.
        let dir = &tmp.path().join("provision");
        let cmds = vec![
            Command::Shell("echo a".into()),
            Command::Argv(vec!["ls".into()]),
            Command::Script(b"#!/bin/sh\n".to_vec()),
        ];
        save_commands(dir, PENDING_COMMANDS, &cmds).unwrap();
        assert_eq!(load_commands(dir, PENDING_COMMANDS), cmds);
        save_commands(dir, PENDING_COMMANDS, &[]).unwrap();
        assert!(load_commands(dir, PENDING_COMMANDS).is_empty());
    }

    /// The text of the first here-document `cat > {file} <<'END'` in `doc`.
    fn here_document<'d>(doc: &'d str, file: &str) -> &'d str {
        let start = format!("cat > {file} <<'END'\n");
        let from = doc.find(&start).unwrap_or_else(|| panic!("no `{start}`")) + start.len();
        let len = doc[from..].find("\nEND\n").expect("the document ends");
        &doc[from..from + len]
    }

    #[test]
    fn the_readme_s_provisioning_examples_are_read_as_they_say() {
        let readme = include_str!("../../../README.md");
        let ign = found(here_document(readme, "config.ign"), None);
        let (format, plan) = plan_for(&ign, "cairn", &NoFetch).unwrap();
        assert_eq!(format, "ignition 3.4.0");
        assert_eq!(plan.users[0].name, "core");
        assert_eq!(plan.users[0].groups, ["sudo"]);
        assert_eq!(plan.files[0].path, Path::new("etc/hostname"));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

        let cc = found(here_document(readme, "seed/user-data"), Some("i-1"));
        let (format, plan) = plan_for(&cc, "cairn", &NoFetch).unwrap();
        assert_eq!(format, "cloud-config");
        assert_eq!(plan.hostname.as_deref(), Some("web-2"));
        assert_eq!(plan.default_user_keys.len(), 1);
        assert_eq!(plan.files[0].path, Path::new("etc/motd"));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    /// Does what the applier asks on the files, records the rest.
    #[derive(Default)]
    struct FakeSystem {
        hostname: Option<String>,
        ran: Vec<String>,
    }

    impl apply::System for FakeSystem {
        fn run(&mut self, argv: &[String]) -> Result<(), String> {
            self.ran.push(argv.join(" "));
            Ok(())
        }
        fn output(&mut self, argv: &[String]) -> Result<String, String> {
            self.run(argv).map(|()| String::new())
        }
        fn chown(&mut self, _: &Path, _: u32, _: u32) -> Result<(), String> {
            Ok(())
        }
        fn set_hostname(&mut self, name: &str) -> Result<(), String> {
            self.hostname = Some(name.to_owned());
            Ok(())
        }
        fn deploy_kernel_args(&mut self, _: &[String]) -> Result<(), String> {
            Err("not here".into())
        }
    }

    fn ec2_metadata() -> Metadata {
        Metadata {
            platform: Some(Platform::Ec2),
            origin: "the metadata service http://169.254.169.254".into(),
            instance_id: "i-0abc".into(),
            hostname: Some("ip-10-0-1-5.ec2.internal".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAmeta ops".into()],
            user_data: Some(b"#cloud-config\nwrite_files:\n  - path: /etc/from-metadata\n    content: hi\n".to_vec()),
            attributes: [("region".to_owned(), "us-east-1".to_owned())].into(),
            warnings: Vec::new(),
        }
    }

    fn no_report(_: Platform, _: Option<&str>) -> Result<Option<String>, String> {
        Ok(None)
    }

    #[test]
    fn the_platform_hears_how_provisioning_went_once_it_has_run() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(root.join("etc/passwd"), "cairn:x:1000:1000::/home/cairn:/bin/bash\n").unwrap();
        std::fs::write(root.join("etc/group"), "cairn:x:1000:\n").unwrap();
        let metadata = std::cell::RefCell::new(Metadata {
            platform: Some(Platform::Azure),
            origin: "the instance metadata service".into(),
            ..ec2_metadata()
        });
        let service = |_: Platform| Ok(metadata.borrow().clone());
        let no_drive = |_: Platform| -> Result<Option<Metadata>> { Ok(None) };
        let reports = std::cell::RefCell::new(Vec::<(Platform, Option<String>)>::new());
        let report = |p: Platform, failure: Option<&str>| {
            reports.borrow_mut().push((p, failure.map(str::to_owned)));
            Ok(Some("reported".to_owned()))
        };
        let mut sys = FakeSystem::default();
        let mut host = Host {
            cmdline: String::new(),
            default_user: "cairn".into(),
            fetch: &NoFetch,
            system: &mut sys,
            say: &|_: &str| {},
            platform: Detected {
                platform: Platform::Azure,
                by: "dmi".into(),
                error: None,
            },
            config_drive: &no_drive,
            metadata_service: &service,
            ntp: Vec::new(),
            report_to_platform: &report,
        };
        // The local stage reads nothing (Azure's metadata needs the
        // network) and reports nothing.
        run(&mut host, &state, &root, Stage::Local).unwrap();
        assert!(reports.borrow().is_empty());
        // The network stage provisions, then reports it ready.
        run(&mut host, &state, &root, Stage::Network).unwrap();
        assert!(root.join("etc/from-metadata").exists());
        assert_eq!(*reports.borrow(), [(Platform::Azure, None)]);
        // A new instance whose user data is broken: reported failed, why named.
        {
            let mut m = metadata.borrow_mut();
            m.instance_id = "i-0def".into();
            m.user_data = Some(b"#cloud-config\nwrite_files: [unclosed\n".to_vec());
        }
        run(&mut host, &state, &root, Stage::Network).unwrap();
        let last = reports.borrow().last().cloned().unwrap();
        assert_eq!(last.0, Platform::Azure);
        assert!(
            last.1
                .as_deref()
                .is_some_and(|why| why.contains("YAML") || why.contains("yaml")),
            "{last:?}"
        );
    }

    #[test]
    fn a_cloud_s_metadata_is_read_once_the_network_is_up_and_its_user_data_provisions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "cairn:x:1000:1000::/home/cairn:/bin/bash\n").unwrap();
        std::fs::write(root.join("etc/group"), "cairn:x:1000:\n").unwrap();
        let said = std::cell::RefCell::new(Vec::<String>::new());
        let say = |l: &str| said.borrow_mut().push(l.to_owned());
        let asked = std::cell::Cell::new(0);
        let service = |p: Platform| {
            asked.set(asked.get() + 1);
            assert_eq!(p, Platform::Ec2);
            Ok(ec2_metadata())
        };
        let no_drive = |_: Platform| -> Result<Option<Metadata>> { panic!("EC2 has no config drive") };
        let mut sys = FakeSystem::default();
        let mut host = Host {
            cmdline: "root=LABEL=cairn-root".into(),
            default_user: "cairn".into(),
            fetch: &NoFetch,
            system: &mut sys,
            say: &say,
            platform: Detected {
                platform: Platform::Ec2,
                by: "dmi".into(),
                error: None,
            },
            config_drive: &no_drive,
            metadata_service: &service,
            ntp: vec!["169.254.169.123".into()],
            report_to_platform: &no_report,
        };
        // Before networking: nothing asked, the network stage flagged.
        assert_eq!(platform_metadata(&mut host, root, Stage::Local), None);
        assert_eq!(asked.get(), 0);
        assert!(root.join(NEEDS_NETWORK).exists());
        assert_eq!(
            std::fs::read_to_string(root.join(TIMESYNCD_DROPIN)).unwrap(),
            "# The platform's time servers (cairn-provision).\n[Time]\nNTP=169.254.169.123\n"
        );
        // Once it is up: the metadata, applied, and its user data found.
        let m = platform_metadata(&mut host, root, Stage::Network).unwrap();
        assert_eq!(asked.get(), 1);
        let found = source::from_metadata(&m).unwrap();
        assert_eq!(found.instance_id.as_deref(), Some("i-0abc"));
        assert_eq!(
            found.source.to_string(),
            "ec2 metadata (the metadata service http://169.254.169.254)"
        );
        let (format, plan) = plan_for(&found, "cairn", &NoFetch).unwrap();
        assert_eq!(format, "cloud-config");
        assert_eq!(plan.hostname.as_deref(), Some("ip-10-0-1-5.ec2.internal"));
        assert_eq!(
            std::fs::read_to_string(root.join(METADATA_ENV)).unwrap(),
            "CAIRN_HOSTNAME=\"ip-10-0-1-5.ec2.internal\"\nCAIRN_INSTANCE_ID=\"i-0abc\"\nCAIRN_PLATFORM=\"ec2\"\nCAIRN_REGION=\"us-east-1\"\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("var/home/cairn").join(apply::METADATA_KEYS)).unwrap(),
            "ssh-ed25519 AAAAmeta ops\n"
        );
        drop(host);
        assert_eq!(sys.hostname.as_deref(), Some("ip-10-0-1-5.ec2.internal"));
        let record = load_platform_record(root).unwrap();
        assert_eq!(record.metadata.unwrap().ssh_keys, 1);
        assert!(said
            .borrow()
            .iter()
            .any(|l| l.contains("instance i-0abc, 1 SSH key(s) for cairn, user data")));
    }

    #[test]
    fn a_metadata_service_that_fails_is_said_and_recorded_and_the_boot_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let said = std::cell::RefCell::new(Vec::<String>::new());
        let say = |l: &str| said.borrow_mut().push(l.to_owned());
        let service =
            |_: Platform| Err("http://100.100.100.200/latest/api/token: no answer within 60 s (timed out)".to_owned());
        let drive = |_: Platform| -> Result<Option<Metadata>> { Ok(None) };
        let mut sys = FakeSystem::default();
        let mut host = Host {
            cmdline: String::new(),
            default_user: "cairn".into(),
            fetch: &NoFetch,
            system: &mut sys,
            say: &say,
            platform: Detected {
                platform: Platform::Aliyun,
                by: "kernel argument".into(),
                error: None,
            },
            config_drive: &drive,
            metadata_service: &service,
            ntp: Vec::new(),
            report_to_platform: &no_report,
        };
        assert_eq!(platform_metadata(&mut host, root, Stage::Network), None);
        let record = load_platform_record(root).unwrap();
        assert!(record.error.unwrap().contains("no answer within 60 s"));
        assert!(said.borrow()[0].starts_with("aliyun metadata: http://100.100.100.200/latest/api/token: no answer"));
        assert!(!root.join(METADATA_ENV).exists());
    }
}
