//! What the reboot into a staged update waits for beyond the clock, for the
//! strategies that coordinate with others:
//!
//! - `fleet-lock`: Zincati's FleetLock protocol, so existing servers
//!   (airlock, poseidon/fleetlock) work: `POST <url>/v1/pre-reboot` takes a
//!   slot of the node's group before rebooting (anything but 200 is a
//!   denial: wait and ask again, with backoff); `POST <url>/v1/steady-state`
//!   gives it back once the new deployment is committed — and at every
//!   start of the daemon, so a slot held across a crash, a failed trial or a
//!   fall-back is released. Both carry `fleet-lock-protocol: true` and
//!   `{"client_params": {"id": …, "group": …}}`; the id is the machine id
//!   made app-specific ([`app_specific_id`], as systemd's
//!   `sd_id128_get_machine_app_specific`), so the raw machine id never
//!   leaves the host.
//! - `kubernetes`: the agent drains its own node, holding a slot (a Lease)
//!   of its group, and puts the node back once the new deployment is
//!   decided: see [`crate::kubernetes`].
//! - `kured`: kured drains and reboots the node when its sentinel
//!   (`/var/run/reboot-required`) exists; the agent writes it once an
//!   update is staged.
//!
//! The requests and answers are pure ([`fleet_lock_request`],
//! [`fleet_lock_answer`]); the daemon sends them over [`crate::metadata::Http`]
//! and keeps a [`GateRecord`] in `/run/cairn/reboot-gate.json` for `status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::RebootStrategy;
use crate::kubernetes::{self, Prepared};
use crate::metadata::{Http, Request};

/// The networks the gate talks over: the site's (a FleetLock server), and
/// a cluster's, made from its kubeconfig's CA and credentials.
pub trait Net {
    fn plain(&self) -> &dyn Http;
    fn cluster<'a>(&'a self, credentials: &kubernetes::Credentials) -> Result<Box<dyn Http + 'a>, String>;
}

/// The host's networks.
pub struct HostNet {
    pub plain: crate::metadata::host::HostHttp,
}

impl Net for HostNet {
    fn plain(&self) -> &dyn Http {
        &self.plain
    }

    fn cluster<'a>(&'a self, credentials: &kubernetes::Credentials) -> Result<Box<dyn Http + 'a>, String> {
        Ok(Box::new(kubernetes::host_client(credentials)?))
    }
}

/// Cairn's application id for FleetLock client ids (a fixed random UUID:
/// the same machine has the same FleetLock id on every boot, and no other
/// program's app-specific id).
pub const FLEET_LOCK_APP_ID: &str = "b9ee24c43a4048d2afc05cab13fc6d32";

/// kured's default sentinel: a reboot is required while it exists.
pub const KURED_SENTINEL: &str = "/var/run/reboot-required";

/// The daemon's record of the gate, for `status` (relative to the root).
pub const GATE_RECORD: &str = "run/cairn/reboot-gate.json";

/// How long one FleetLock request may take.
pub const FLEET_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// `machine_id` (32 hex digits) made specific to `app` (32 hex digits), as
/// systemd does: HMAC-SHA256 keyed with the machine id's bytes over the
/// app id's, its first 16 bytes made a version 4 UUID, in hex.
pub fn app_specific_id(machine_id: &str, app: &str) -> Result<String, String> {
    let bytes = |what: &str, s: &str| -> Result<[u8; 16], String> {
        let v = hex::decode(s.trim()).map_err(|e| format!("{what} `{}` is not hex: {e}", s.trim()))?;
        v.try_into()
            .map_err(|v: Vec<u8>| format!("{what} has {} bytes, not 16", v.len()))
    };
    let key = bytes("the machine id", machine_id)?;
    let app = bytes("the app id", app)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(&app);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// The two FleetLock operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetLockOp {
    /// Take a slot before rebooting.
    PreReboot,
    /// Give it back once steady.
    SteadyState,
}

impl FleetLockOp {
    fn path(self) -> &'static str {
        match self {
            FleetLockOp::PreReboot => "v1/pre-reboot",
            FleetLockOp::SteadyState => "v1/steady-state",
        }
    }
}

/// The request for `op` of node `id` in `group`, to the server at `url`.
pub fn fleet_lock_request(url: &str, op: FleetLockOp, id: &str, group: &str) -> Request {
    let body = serde_json::json!({"client_params": {"id": id, "group": group}}).to_string();
    Request::post(format!("{}/{}", url.trim_end_matches('/'), op.path()), body)
        .header("fleet-lock-protocol", "true")
        .header("Content-Type", "application/json")
}

/// What a FleetLock server's answer means: 200 is yes; anything else is
/// no, and why (the protocol's error body `{"kind": …, "value": …}` when
/// the server sent one).
pub fn fleet_lock_answer(status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        kind: String,
        #[serde(default)]
        value: String,
    }
    let why = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if e.value.is_empty() => e.kind,
        Ok(e) => format!("{}: {}", e.kind, e.value),
        Err(_) => String::from_utf8_lossy(body).trim().chars().take(200).collect(),
    };
    Err(if why.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}, {why}")
    })
}

/// Send `op` for this node; `Err` says why the server did not agree (or
/// could not be asked), naming the URL.
pub fn fleet_lock(http: &dyn Http, url: &str, op: FleetLockOp, id: &str, group: &str) -> Result<(), String> {
    let req = fleet_lock_request(url, op, id, group);
    let r = http
        .send(&req, FLEET_LOCK_TIMEOUT)
        .map_err(|e| format!("{}: {e}", req.url))?;
    fleet_lock_answer(r.status, &r.body).map_err(|e| format!("{}: {e}", req.url))
}

/// What the daemon last learnt at the gate (`/run/cairn/reboot-gate.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// The reboot is held: the last answer, and when the gate is asked again.
    pub held: Option<Held>,
    /// A FleetLock slot this node may still hold is not given back yet:
    /// why the last attempt failed.
    pub release_pending: Option<String>,
    /// kured's sentinel was written: kured drains and reboots.
    #[serde(default)]
    pub handed_to_kured: bool,
    /// What the gate is doing now (taking a slot, draining), while it does.
    #[serde(default)]
    pub progress: Option<String>,
    /// The pods whose eviction the last drain could not get (`namespace/name`).
    #[serde(default)]
    pub blocked_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub reason: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Seconds since the epoch.
    pub since: u64,
    pub next_attempt_at: u64,
}

impl GateRecord {
    /// A denial (or failure) at `now`: held, asked again after a backoff
    /// that grows with the attempts (see [`crate::schedule::retry_after`]),
    /// never longer than `longest`.
    pub fn denied(&mut self, reason: String, now: u64, longest: Duration) {
        let (attempts, since) = match &self.held {
            Some(h) => (h.attempts + 1, h.since),
            None => (1, now),
        };
        let wait = crate::schedule::retry_after(attempts, longest);
        self.held = Some(Held {
            reason,
            attempts,
            since,
            next_attempt_at: now + wait.as_secs(),
        });
    }

    pub fn load(root: &Path) -> GateRecord {
        std::fs::read(root.join(GATE_RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        let path = root.join(GATE_RECORD);
        std::fs::create_dir_all(path.parent().expect("GATE_RECORD has a folder"))?;
        cairn_common::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Backoff between attempts at the gate grows to this at most.
pub const LONGEST_GATE_WAIT: Duration = Duration::from_secs(300);
/// How often a node handed to kured writes the sentinel again (should
/// something have removed it).
const KURED_REASSERT: u64 = 3600;

/// What came of asking the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Reboot now, for this reason.
    Reboot(String),
    /// Not now: the gate's record says why and when to ask again.
    Held,
}

/// The daemon's side of the gate: the strategy, this node's FleetLock id,
/// and the record it keeps under `root` (`/` on a host) for `status`.
pub struct DaemonGate {
    strategy: RebootStrategy,
    node_id: Option<String>,
    root: PathBuf,
    pub record: GateRecord,
    release_failures: u32,
    /// When to give the FleetLock slot back (`None`: nothing to give back).
    pub release_at: Option<u64>,
}

impl DaemonGate {
    /// The gate of a daemon starting at `now`: under `fleet-lock`, a slot
    /// this node may hold from before (a crash, a trial that failed, the
    /// update just committed) is to be given back at once. `machine_id`
    /// is `/etc/machine-id`'s contents.
    ///
    /// Under `kubernetes`, likewise, the node is put back in service (see
    /// [`kubernetes::finish`]); its id is the node's name.
    pub fn start(strategy: &RebootStrategy, machine_id: &str, root: &Path, now: u64) -> Result<DaemonGate, String> {
        let (node_id, releases) = match strategy {
            RebootStrategy::FleetLock { .. } => (
                Some(app_specific_id(machine_id, FLEET_LOCK_APP_ID).map_err(|e| format!("the FleetLock id: {e}"))?),
                true,
            ),
            RebootStrategy::Kubernetes(s) => (Some(kubernetes::node_name(s)?), true),
            _ => (None, false),
        };
        let gate = DaemonGate {
            strategy: strategy.clone(),
            node_id,
            root: root.to_owned(),
            record: GateRecord::default(),
            release_failures: 0,
            release_at: releases.then_some(now),
        };
        gate.save();
        Ok(gate)
    }

    /// This node's FleetLock id under `fleet-lock`, its name under `kubernetes`.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// When the gate is asked again after holding the reboot.
    pub fn retry_at(&self) -> Option<u64> {
        self.record.held.as_ref().map(|h| h.next_attempt_at)
    }

    /// Give the FleetLock slot back (`steady-state`), or put the
    /// Kubernetes node back in service; a failure is recorded and tried
    /// again later.
    pub fn release(&mut self, net: &dyn Net, now: u64) {
        let done = match (&self.strategy, &self.node_id) {
            (RebootStrategy::FleetLock { url, group }, Some(id)) => {
                fleet_lock(net.plain(), url, FleetLockOp::SteadyState, id, group)
                    .map(|()| format!("gave the fleet lock's slot of group {group} back (steady state)"))
            }
            (RebootStrategy::Kubernetes(s), Some(node)) => {
                with_cluster(net, s, |api| kubernetes::finish(api, s, node, now)).map(|done| {
                    if done.is_empty() {
                        format!("node {node} holds no slot and was not cordoned by the agent")
                    } else {
                        done.join(", ")
                    }
                })
            }
            _ => {
                self.release_at = None;
                return;
            }
        };
        match done {
            Ok(what) => {
                tracing::info!("{what}");
                self.release_at = None;
                self.release_failures = 0;
                self.record.release_pending = None;
            }
            Err(e) => {
                self.release_failures += 1;
                let wait = crate::schedule::retry_after(self.release_failures, LONGEST_GATE_WAIT);
                tracing::warn!(error = %e, retry_secs = wait.as_secs(), "could not give the reboot slot back");
                self.release_at = Some(now + wait.as_secs());
                self.record.release_pending = Some(e);
            }
        }
        self.save();
    }

    /// Ask the gate for the reboot into what is staged: a FleetLock slot
    /// (`pre-reboot`), or under `kured` the sentinel written (kured then
    /// drains and reboots: the answer is `Held`). Other strategies have no
    /// gate.
    ///
    /// `still_wanted` says, between the rounds of a Kubernetes drain, why
    /// the reboot is no longer wanted (a stop signal, the update dropped),
    /// if it is not: the drain is then undone.
    pub fn pass(&mut self, net: &dyn Net, now: u64, still_wanted: &dyn Fn() -> Option<String>) -> Pass {
        let pass = match (&self.strategy.clone(), &self.node_id.clone()) {
            (RebootStrategy::FleetLock { url, group }, Some(id)) => {
                match fleet_lock(net.plain(), url, FleetLockOp::PreReboot, id, group) {
                    Ok(()) => {
                        self.record.held = None;
                        Pass::Reboot(format!("the fleet lock gave a slot of group {group}"))
                    }
                    Err(e) => {
                        tracing::info!(reason = %e, "the fleet lock holds the reboot");
                        self.record.denied(e, now, LONGEST_GATE_WAIT);
                        Pass::Held
                    }
                }
            }
            (RebootStrategy::Kubernetes(s), Some(node)) => {
                let started = net.plain().now();
                let prepared = with_cluster(net, s, |api| {
                    kubernetes::prepare_reboot(
                        api,
                        s,
                        node,
                        now,
                        &mut |progress| {
                            tracing::info!("{progress}");
                            self.record.progress = Some(progress.to_owned());
                            self.save();
                        },
                        still_wanted,
                    )
                });
                self.record.progress = None;
                // A drain takes its time: the backoff counts from its end.
                let now = now + net.plain().now().saturating_sub(started).as_secs();
                match prepared {
                    Ok(Prepared::Reboot(why)) => {
                        self.record.held = None;
                        self.record.blocked_by.clear();
                        Pass::Reboot(why)
                    }
                    Ok(Prepared::Held { reason, blocked_by }) => {
                        tracing::warn!(%reason, "the reboot is held");
                        self.record.denied(reason, now, LONGEST_GATE_WAIT);
                        self.record.blocked_by = blocked_by;
                        Pass::Held
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the cluster could not be asked; the reboot is held");
                        self.record.denied(e, now, LONGEST_GATE_WAIT);
                        Pass::Held
                    }
                }
            }
            (RebootStrategy::Kured, _) => {
                let sentinel = self.kured_sentinel();
                let written = sentinel
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&sentinel, b""));
                let reason = match written {
                    Ok(()) => {
                        // The console of a headless host says why it will go
                        // down (only on a host: tests give the gate a root of
                        // their own).
                        if !self.record.handed_to_kured && self.root == Path::new("/") {
                            let _ = crate::boot_report::announce(&format!(
                                "cairn-agent: update staged; {KURED_SENTINEL} written for kured to drain and reboot the node"
                            ));
                        }
                        self.record.handed_to_kured = true;
                        format!("{KURED_SENTINEL} written: kured drains and reboots the node")
                    }
                    Err(e) => format!("writing {}: {e}", sentinel.display()),
                };
                self.record.held = Some(Held {
                    reason,
                    attempts: 1,
                    since: self.record.held.as_ref().map_or(now, |h| h.since),
                    next_attempt_at: now + KURED_REASSERT,
                });
                Pass::Held
            }
            _ => Pass::Reboot("the reboot strategy allows it now".into()),
        };
        self.save();
        pass
    }

    /// Nothing is staged any more (the staged deployment was lost, or
    /// dropped): nothing is held, and kured must not reboot the node for it.
    /// A Kubernetes node the gate was preparing (a slot, a cordon) is put
    /// back in service.
    pub fn nothing_staged(&mut self, now: u64) {
        if matches!(self.strategy, RebootStrategy::Kubernetes(_)) && self.record.held.is_some() {
            self.release_at.get_or_insert(now);
        }
        if self.record.handed_to_kured {
            let sentinel = self.kured_sentinel();
            match std::fs::remove_file(&sentinel) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, path = %sentinel.display(), "could not remove kured's sentinel"),
            }
        }
        if self.record.held.is_some() || self.record.handed_to_kured || !self.record.blocked_by.is_empty() {
            self.record.held = None;
            self.record.handed_to_kured = false;
            self.record.blocked_by.clear();
            self.save();
        }
    }

    /// kured's sentinel under this gate's root.
    fn kured_sentinel(&self) -> PathBuf {
        self.root.join(KURED_SENTINEL.trim_start_matches('/'))
    }

    fn save(&self) {
        if let Err(e) = self.record.save(&self.root) {
            tracing::warn!(error = %format!("{e:#}"), "could not record the reboot gate for status");
        }
    }
}

/// Run `f` against the cluster of `s`'s kubeconfig (read again each time:
/// a rotated token or certificate is taken up).
fn with_cluster<T>(
    net: &dyn Net,
    s: &kubernetes::Settings,
    f: impl FnOnce(&kubernetes::Api<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let credentials = kubernetes::read_kubeconfig(&s.kubeconfig)?;
    let http = net.cluster(&credentials)?;
    let api = kubernetes::Api {
        http: http.as_ref(),
        server: credentials.server.clone(),
        token: match &credentials.auth {
            kubernetes::Auth::Token(t) => Some(t.clone()),
            _ => None,
        },
    };
    f(&api)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::fake::Service as Fake;

    impl Net for Fake {
        fn plain(&self) -> &dyn Http {
            self
        }

        fn cluster<'a>(&'a self, _: &kubernetes::Credentials) -> Result<Box<dyn Http + 'a>, String> {
            Ok(Box::new(self))
        }
    }

    #[test]
    fn the_fleet_lock_id_is_systemd_s_app_specific_machine_id() {
        // `systemd-id128 machine-id --app-specific=a3b1…` on a host whose
        // machine id is 3d12…
        assert_eq!(
            app_specific_id("3d1219c7c4c5404aaa1f6d2a48adfda4", "a3b1c2d4e5f60718293a4b5c6d7e8f90").unwrap(),
            "5dadaebe3b9e4c1d90fab1f976d881ad"
        );
        assert_ne!(
            app_specific_id("3d1219c7c4c5404aaa1f6d2a48adfda4", FLEET_LOCK_APP_ID).unwrap(),
            "3d1219c7c4c5404aaa1f6d2a48adfda4"
        );
        assert_eq!(
            app_specific_id("uninitialized\n", FLEET_LOCK_APP_ID).unwrap_err(),
            "the machine id `uninitialized` is not hex: Odd number of digits"
        );
        assert_eq!(
            app_specific_id("3d1219c7", FLEET_LOCK_APP_ID).unwrap_err(),
            "the machine id has 4 bytes, not 16"
        );
    }

    #[test]
    fn fleet_lock_requests_are_zincati_s() {
        let r = fleet_lock_request("http://lock.example/", FleetLockOp::PreReboot, "abc", "workers");
        assert_eq!(r.url, "http://lock.example/v1/pre-reboot");
        assert!(r.headers.contains(&("fleet-lock-protocol".into(), "true".into())));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"client_params": {"id": "abc", "group": "workers"}})
        );
        let r = fleet_lock_request("http://lock.example", FleetLockOp::SteadyState, "abc", "workers");
        assert_eq!(r.url, "http://lock.example/v1/steady-state");
    }

    #[test]
    fn a_denial_says_why_and_is_asked_again_later_each_time() {
        assert_eq!(fleet_lock_answer(200, b""), Ok(()));
        assert_eq!(
            fleet_lock_answer(409, br#"{"kind":"failed_lock","value":"semaphore currently full"}"#),
            Err("HTTP 409, failed_lock: semaphore currently full".into())
        );
        assert_eq!(fleet_lock_answer(503, b""), Err("HTTP 503".into()));
        let svc = Fake::default().answer(
            "POST",
            "http://lock/v1/pre-reboot",
            409,
            r#"{"kind":"failed_lock","value":"all 1 slots taken"}"#,
        );
        let e = fleet_lock(&svc, "http://lock", FleetLockOp::PreReboot, "id", "default").unwrap_err();
        assert_eq!(e, "http://lock/v1/pre-reboot: HTTP 409, failed_lock: all 1 slots taken");

        let mut g = GateRecord::default();
        let longest = Duration::from_secs(600);
        g.denied("full".into(), 1000, longest);
        let first = g.held.clone().unwrap();
        assert_eq!((first.attempts, first.since), (1, 1000));
        g.denied("full".into(), first.next_attempt_at, longest);
        let second = g.held.clone().unwrap();
        assert_eq!((second.attempts, second.since), (2, 1000));
        assert!(second.next_attempt_at - first.next_attempt_at >= first.next_attempt_at - 1000);
        let mut at = 0;
        for _ in 0..20 {
            at = g.held.as_ref().unwrap().next_attempt_at;
            g.denied("full".into(), at, longest);
        }
        let last = g.held.unwrap();
        assert_eq!(last.attempts, 22);
        assert_eq!(last.next_attempt_at - at, 600, "the wait stops growing at the longest");
    }

    const MACHINE_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

    #[test]
    fn a_fleet_lock_node_gives_its_slot_back_at_start_and_reboots_only_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RebootStrategy::FleetLock {
            url: "http://lock".into(),
            group: "workers".into(),
        };
        let mut gate = DaemonGate::start(&lock, MACHINE_ID, dir.path(), 100).unwrap();
        assert_eq!(
            gate.release_at,
            Some(100),
            "a slot held from before is given back at once"
        );
        let id = gate.node_id().unwrap().to_owned();
        assert_eq!(id, app_specific_id(MACHINE_ID, FLEET_LOCK_APP_ID).unwrap());

        // The server is down: recorded for status, tried again later.
        let down = Fake::default().answer("POST", "http://lock/v1/steady-state", 503, "");
        gate.release(&down, 100);
        assert_eq!(gate.release_at, Some(130));
        assert_eq!(
            GateRecord::load(dir.path()).release_pending.as_deref(),
            Some("http://lock/v1/steady-state: HTTP 503")
        );
        let up = Fake::default().answer("POST", "http://lock/v1/steady-state", 200, "");
        gate.release(&up, 130);
        assert_eq!(gate.release_at, None);
        assert_eq!(GateRecord::load(dir.path()).release_pending, None);

        // A staged update: the slots are taken, the reboot is held.
        let full = Fake::default().answer(
            "POST",
            "http://lock/v1/pre-reboot",
            409,
            r#"{"kind":"failed_lock","value":"semaphore currently full"}"#,
        );
        assert_eq!(gate.pass(&full, 200, &|| None), Pass::Held);
        assert_eq!(gate.retry_at(), Some(230));
        let held = GateRecord::load(dir.path()).held.unwrap();
        assert!(held.reason.ends_with("semaphore currently full"), "{held:?}");
        // A slot frees: the reboot goes ahead, nothing is held any more.
        let free = Fake::default().answer("POST", "http://lock/v1/pre-reboot", 200, "");
        assert_eq!(
            gate.pass(&free, 230, &|| None),
            Pass::Reboot("the fleet lock gave a slot of group workers".into())
        );
        assert_eq!(gate.retry_at(), None);
        assert_eq!(
            free.requests(),
            ["POST http://lock/v1/pre-reboot"],
            "one request, with the node's id and group"
        );
    }

    #[test]
    fn a_drain_that_times_out_is_asked_again_after_a_backoff_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "clusters: [{name: k, cluster: {server: 'http://k'}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: t}}]\n",
        )
        .unwrap();
        let settings = kubernetes::Settings {
            kubeconfig,
            node_name: Some("n1".into()),
            drain_timeout: Duration::from_secs(20),
            ..kubernetes::Settings::default()
        };
        let node = r#"{"metadata": {"name": "n1", "resourceVersion": "1"}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}"#;
        let lease = r#"{"metadata": {"name": "cairn-reboot-default-0", "namespace": "kube-system", "resourceVersion": "5"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 3600, "renewTime": "2096-01-01T00:00:00.000000Z"}}"#;
        let lease_url = "http://k/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cairn-reboot-default-0";
        // A pod whose disruption budget never allows its eviction.
        let cluster = Fake::default()
            .answer("GET", "http://k/api/v1/nodes/n1", 200, node)
            .answer("PATCH", "http://k/api/v1/nodes/n1", 200, "{}")
            .answer("GET", "http://k/api/v1/nodes", 200, &format!(r#"{{"items": [{node}, {{"metadata": {{"name": "n2"}}}}]}}"#))
            .answer("GET", lease_url, 200, lease)
            .answer("PUT", lease_url, 200, "{}")
            .answer(
                "GET",
                "http://k/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
                200,
                r#"{"items": [{"metadata": {"name": "db-0", "namespace": "apps", "ownerReferences": [{"kind": "StatefulSet"}]}, "status": {"phase": "Running"}}]}"#,
            )
            .answer("POST", "http://k/api/v1/namespaces/apps/pods/db-0/eviction", 429, "{}");
        let mut gate = DaemonGate::start(&RebootStrategy::Kubernetes(settings), MACHINE_ID, dir.path(), 1000).unwrap();
        assert_eq!(gate.pass(&cluster, 1000, &|| None), Pass::Held);
        let held = gate.record.held.clone().unwrap();
        assert!(held.reason.contains("timed out after 20s"), "{held:?}");
        assert_eq!(gate.record.blocked_by, ["apps/db-0"]);
        // The drain took 20 s (four rounds of 5 s): the first backoff, 30 s,
        // counts from its end.
        assert_eq!(held.next_attempt_at, 1000 + 20 + 30, "{held:?}");
        assert!(
            cluster.requests().contains(&format!("PUT {lease_url}")),
            "the slot was given back"
        );
    }

    #[test]
    fn under_kured_the_sentinel_is_written_and_the_reboot_is_kured_s() {
        let dir = tempfile::tempdir().unwrap();
        let mut gate = DaemonGate::start(&RebootStrategy::Kured, MACHINE_ID, dir.path(), 0).unwrap();
        assert_eq!(gate.release_at, None);
        assert_eq!(gate.node_id(), None);
        assert_eq!(gate.pass(&Fake::default(), 10, &|| None), Pass::Held);
        assert!(dir.path().join("var/run/reboot-required").exists());
        let record = GateRecord::load(dir.path());
        assert!(record.handed_to_kured);
        assert_eq!(record.held.unwrap().next_attempt_at, 10 + KURED_REASSERT);
        gate.nothing_staged(20);
        assert_eq!(GateRecord::load(dir.path()), GateRecord::default());
        assert!(
            !dir.path().join("var/run/reboot-required").exists(),
            "kured would reboot for nothing"
        );
        // Strategies without a gate pass at once.
        let mut open = DaemonGate::start(&RebootStrategy::Immediate, "", dir.path(), 0).unwrap();
        assert!(matches!(open.pass(&Fake::default(), 0, &|| None), Pass::Reboot(_)));
    }

    #[test]
    fn the_record_round_trips_through_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(GateRecord::load(dir.path()), GateRecord::default());
        let mut g = GateRecord {
            release_pending: Some("no answer".into()),
            ..GateRecord::default()
        };
        g.denied("full".into(), 5, Duration::from_secs(60));
        g.save(dir.path()).unwrap();
        assert_eq!(GateRecord::load(dir.path()), g);
    }
}
