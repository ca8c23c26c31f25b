//! An independent reader of the agent's metrics: Prometheus's own Python
//! client (`prometheus_client.parser`, Debian's python3-prometheus-client,
//! which `cargo xtask` installs) parses what `cairn-agent metrics` renders
//! for a host waiting on the fleet lock with an error and a history, and
//! finds every family with its type and samples. Ignored, so plain `cargo
//! test` needs nothing but Rust.

use std::collections::BTreeMap;

use cairn_agent::state::EventKind;
use cairn_agent::status::Status;
use cairn_common::process::Cmd;

/// Parse the exposition text on stdin; print each family's type and
/// samples as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

#[test]
#[ignore = "needs python3-prometheus-client; run by `cargo xtask test`"]
fn prometheus_s_parser_reads_the_agent_s_metrics() {
    let status: Status = serde_json::from_value(serde_json::json!({
        "api_version": cairn_agent::status::API_VERSION,
        "booted": {"commit": "abc", "version": "0.2.0", "serial": 0},
        "staged": {"commit": "def", "version": "0.3.0", "serial": 0},
        "rollback": null,
        "update": {"state": "staged", "trial": {"version": "0.3.0", "commit": "def", "from_version": "0.2.0", "from_commit": "abc"}, "operator_reboots": false},
        "waiting": {"for": "lock", "reason": "HTTP 409, failed_lock: \"full\"", "attempts": 2, "next_attempt_in_secs": 60},
        "lock_release_pending": null,
        "boot_tries_left": 3,
        "last_check": 1_700_000_000u64,
        "available": "0.3.0",
        "last_error": {"at": 1_700_000_100u64, "operation": "check", "message": "HTTP 503"},
        "excluded": [],
        "stream": "stable",
        "url": "http://updates.example/"
    }))
    .unwrap();
    let outcomes = BTreeMap::from([(EventKind::FellBack, 1)]);
    let text = cairn_agent::metrics::render(&status, &outcomes);
    // Debian's Python, which has Debian's python3-prometheus-client.
    let out = Cmd::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin_bytes(text.clone().into_bytes())
        .output()
        .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let families: BTreeMap<String, serde_json::Value> = serde_json::from_str(out.stdout.trim()).unwrap();
    let kind = |name: &str| families[name]["type"].as_str().unwrap().to_owned();
    let value = |name: &str, sample: &str, labels: serde_json::Value| -> f64 {
        families[name]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == sample && s[1] == labels)
            .unwrap_or_else(|| panic!("no {sample} {labels} in {}", families[name]))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(kind("cairn_update_state"), "gauge");
    assert_eq!(
        value(
            "cairn_update_state",
            "cairn_update_state",
            serde_json::json!({"state": "staged"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "cairn_update_state",
            "cairn_update_state",
            serde_json::json!({"state": "idle"})
        ),
        0.0
    );
    assert_eq!(
        value(
            "cairn_reboot_waiting",
            "cairn_reboot_waiting",
            serde_json::json!({"for": "lock"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "cairn_fleet_lock_attempts",
            "cairn_fleet_lock_attempts",
            serde_json::json!({})
        ),
        2.0
    );
    assert_eq!(
        value("cairn_boot_tries_left", "cairn_boot_tries_left", serde_json::json!({})),
        3.0
    );
    // A counter's family drops `_total`; its samples keep it.
    assert_eq!(kind("cairn_updates"), "counter");
    assert_eq!(
        value(
            "cairn_updates",
            "cairn_updates_total",
            serde_json::json!({"outcome": "fell-back"})
        ),
        1.0
    );
    assert_eq!(
        value(
            "cairn_info",
            "cairn_info",
            serde_json::json!({"booted_version": "0.2.0", "stream": "stable", "platform": ""})
        ),
        1.0
    );
    assert_eq!(
        value(
            "cairn_last_error",
            "cairn_last_error",
            serde_json::json!({"operation": "check"})
        ),
        1.0
    );
}
