//! The agent's state as Prometheus metrics, in the text exposition format
//! (version 0.0.4): printed by `cairn-agent metrics`, and written by the
//! daemon to [`TEXTFILE`] at each of its steps for node_exporter's textfile
//! collector (`--collector.textfile.directory=/run/cairn/metrics`).
//! Rendering is pure ([`render`]); only [`write_textfile`] touches disk.

use std::fmt::Write as _;
use std::path::Path;

use std::collections::BTreeMap;

use crate::state::EventKind;
use crate::status::{Status, Waiting};

/// Where the daemon keeps the metrics, relative to the root.
pub const TEXTFILE: &str = "run/cairn/metrics/cairn-agent.prom";

/// Every state of the update lifecycle, as `status` names them
/// (`UpdateState::name`).
const STATES: [&str; 6] = ["idle", "staging", "staged", "on-trial", "falling-back", "rolling-back"];
/// Everything a staged update's reboot can wait for.
const WAITS: [&str; 7] = ["reboot", "window", "lock", "drain", "kured", "operator", "none"];

fn wait_name(w: Option<&Waiting>) -> &'static str {
    match w {
        None => "none",
        Some(Waiting::Reboot) => "reboot",
        Some(Waiting::Window { .. }) => "window",
        Some(Waiting::Lock { .. }) => "lock",
        Some(Waiting::Drain { .. }) => "drain",
        Some(Waiting::Kured { .. }) => "kured",
        Some(Waiting::Operator) => "operator",
    }
}

/// A label value, escaped as the format requires (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The metrics of `status` and the agent's counts of update `outcomes`
/// (`AgentState::outcomes`).
pub fn render(status: &Status, outcomes: &BTreeMap<EventKind, u64>) -> String {
    let mut o = Out(String::new());
    o.family(
        "cairn_info",
        "gauge",
        "The booted release and the stream followed (always 1).",
    );
    let booted = status.booted_version();
    let platform = status
        .platform
        .as_ref()
        .map(|p| p.detected.platform.name())
        .unwrap_or("");
    o.sample(
        "cairn_info",
        &[
            ("booted_version", booted),
            ("stream", &status.stream),
            ("platform", platform),
        ],
        1,
    );

    o.family(
        "cairn_update_state",
        "gauge",
        "Where the update lifecycle stands: 1 for the current state.",
    );
    let now = status.update.name();
    for s in STATES {
        o.sample("cairn_update_state", &[("state", s)], u8::from(s == now));
    }

    o.family(
        "cairn_reboot_waiting",
        "gauge",
        "What the reboot into a staged update waits for: 1 for the current one (none: nothing staged).",
    );
    let waiting = wait_name(status.waiting.as_ref());
    for w in WAITS {
        o.sample("cairn_reboot_waiting", &[("for", w)], u8::from(w == waiting));
    }
    if let Some(Waiting::Lock { attempts, .. }) = &status.waiting {
        o.family(
            "cairn_fleet_lock_attempts",
            "gauge",
            "Times the fleet lock was asked for a slot for the staged update.",
        );
        o.sample("cairn_fleet_lock_attempts", &[], attempts);
    }
    if let Some(Waiting::Drain {
        attempts, blocked_by, ..
    }) = &status.waiting
    {
        o.family(
            "cairn_drain_attempts",
            "gauge",
            "Times the node's slot and drain were tried for the staged update and held.",
        );
        o.sample("cairn_drain_attempts", &[], attempts);
        o.family(
            "cairn_drain_blocking_pods",
            "gauge",
            "Pods whose eviction the last drain could not get.",
        );
        o.sample("cairn_drain_blocking_pods", &[], blocked_by.len());
    }
    if let Some(r) = &status.rollout {
        o.family(
            "cairn_rollout_turn_timestamp_seconds",
            "gauge",
            "When this host's turn comes for a newer release rolling out (0: paused before it).",
        );
        o.sample(
            "cairn_rollout_turn_timestamp_seconds",
            &[("version", &r.version)],
            r.turn_at.unwrap_or(0),
        );
    }
    o.family(
        "cairn_fleet_lock_release_pending",
        "gauge",
        "1 while a fleet lock slot this node may hold is not given back.",
    );
    o.sample(
        "cairn_fleet_lock_release_pending",
        &[],
        u8::from(status.lock_release_pending.is_some()),
    );

    o.family(
        "cairn_update_available",
        "gauge",
        "1 with the version when the last check found a newer release.",
    );
    o.sample(
        "cairn_update_available",
        &[("version", status.available.as_deref().unwrap_or(""))],
        u8::from(status.available.is_some()),
    );

    if let Some(t) = status.last_check {
        o.family(
            "cairn_last_check_timestamp_seconds",
            "gauge",
            "When the update repository was last checked successfully (Unix time).",
        );
        o.sample("cairn_last_check_timestamp_seconds", &[], t);
    }
    o.family(
        "cairn_last_error",
        "gauge",
        "1 while the last operation failed (its name as a label), until one succeeds.",
    );
    match &status.last_error {
        Some(e) => o.sample("cairn_last_error", &[("operation", &e.operation)], 1),
        None => o.sample("cairn_last_error", &[("operation", "")], 0),
    }
    if let Some(e) = &status.last_error {
        o.family(
            "cairn_last_error_timestamp_seconds",
            "gauge",
            "When the last error happened (Unix time).",
        );
        o.sample("cairn_last_error_timestamp_seconds", &[], e.at);
    }

    o.family(
        "cairn_updates_total",
        "counter",
        "How updates ended since the host was installed: committed, fell back after a failed trial, lost before they booted, rolled back by an operator, refused.",
    );
    for kind in [
        EventKind::Committed,
        EventKind::FellBack,
        EventKind::StageLost,
        EventKind::RolledBack,
        EventKind::Refused,
    ] {
        let n = outcomes.get(&kind).copied().unwrap_or(0);
        o.sample("cairn_updates_total", &[("outcome", kind.name())], n);
    }
    o.family(
        "cairn_excluded_versions",
        "gauge",
        "Versions the agent does not take by itself (rolled back or failed their trial).",
    );
    o.sample("cairn_excluded_versions", &[], status.excluded.len());
    if let Some(n) = status.boot_tries_left {
        o.family(
            "cairn_boot_tries_left",
            "gauge",
            "Trial boots left before GRUB falls back, while a trial is armed.",
        );
        o.sample("cairn_boot_tries_left", &[], n);
    }
    o.0
}

/// Write the metrics to [`TEXTFILE`] under `root`, whole or not at all
/// (the collector must never read half a file; the temporary file's name
/// ends in `.tmp`, which it skips).
pub fn write_textfile(root: &Path, text: &str) -> anyhow::Result<()> {
    let path = root.join(TEXTFILE);
    std::fs::create_dir_all(path.parent().expect("TEXTFILE has a folder"))?;
    cairn_common::fsutil::write_atomic(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        serde_json::from_value(serde_json::json!({
            "api_version": crate::status::API_VERSION,
            "booted": {"commit": "abc", "version": "0.2.0", "serial": 0},
            "staged": null,
            "rollback": null,
            "update": {"state": "idle"},
            "waiting": {"for": "lock", "reason": "HTTP 409", "attempts": 3, "next_attempt_in_secs": 60},
            "boot_tries_left": null,
            "last_check": 1_700_000_000u64,
            "available": "0.3.0",
            "last_error": {"at": 1_700_000_100u64, "operation": "check", "message": "HTTP 503 \"down\""},
            "excluded": [],
            "stream": "stable",
            "url": null
        }))
        .unwrap()
    }

    #[test]
    fn every_family_has_help_and_type_and_one_sample_per_state() {
        let outcomes = BTreeMap::from([(EventKind::Committed, 1), (EventKind::FellBack, 1)]);
        let text = render(&status(), &outcomes);
        assert!(text.contains("cairn_info{booted_version=\"0.2.0\",stream=\"stable\",platform=\"\"} 1\n"));
        assert!(text.contains("cairn_update_state{state=\"idle\"} 1\n"));
        assert!(text.contains("cairn_update_state{state=\"staged\"} 0\n"));
        assert!(text.contains("cairn_reboot_waiting{for=\"lock\"} 1\n"));
        assert!(text.contains("cairn_fleet_lock_attempts 3\n"));
        assert!(text.contains("cairn_update_available{version=\"0.3.0\"} 1\n"));
        assert!(text.contains("cairn_last_check_timestamp_seconds 1700000000\n"));
        assert!(text.contains("cairn_last_error{operation=\"check\"} 1\n"));
        assert!(text.contains("cairn_updates_total{outcome=\"committed\"} 1\n"));
        assert!(text.contains("cairn_updates_total{outcome=\"fell-back\"} 1\n"));
        assert!(text.contains("cairn_updates_total{outcome=\"rolled-back\"} 0\n"));
        // Each sample's family was announced before it, once.
        let mut announced = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(announced.insert(name.to_owned()), "{name} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.contains(name), "{name} before its TYPE");
            }
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_textfile(dir.path(), "a 1\n").unwrap();
        write_textfile(dir.path(), "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(TEXTFILE)).unwrap(), "a 2\n");
        assert_eq!(
            std::fs::read_dir(dir.path().join("run/cairn/metrics")).unwrap().count(),
            1
        );
    }
}
