//! The guest agent's `status --json`, read over the serial console.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Console;

const COMMAND: Duration = Duration::from_secs(300);

pub fn status(console: &Console) -> Result<Value> {
    let out = console.run_ok("cairn-agent status --json", COMMAND)?;
    serde_json::from_str(out.trim()).with_context(|| format!("`cairn-agent status --json` printed no JSON:\n{out}"))
}

/// Version of the booted deployment ("" if none says).
pub fn booted_version(s: &Value) -> String {
    s["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["booted"] == true)
        .and_then(|d| d["version"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Whether `version` is among the versions the agent marked bad.
pub fn is_bad(s: &Value, version: &str) -> bool {
    s["bad_versions"]
        .as_array()
        .is_some_and(|b| b.iter().any(|v| v == version))
}

/// No trial in progress and nothing staged: the agent settled this boot.
pub fn settled(s: &Value) -> bool {
    s["phase"]["phase"] == "idle" && s["trial"].is_null()
}

/// Poll `status` until `done` holds (the daemon settles a boot some time
/// after the boot finishes).
pub fn wait_status(console: &Console, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(console)?;
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last status:\n{s:#}");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}
