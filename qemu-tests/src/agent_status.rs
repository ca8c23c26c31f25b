//! The guest agent's `status --json`, read over the serial console and
//! deserialised into the agent's own typed document
//! ([`cairn_agent::status::Status`]), as any script would.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
pub use cairn_agent::lifecycle::{ExclusionReason, UpdateState};
pub use cairn_agent::status::{Status, Waiting};

use crate::Console;

const COMMAND: Duration = Duration::from_secs(300);

pub fn status(console: &Console) -> Result<Status> {
    let out = console.run_ok("cairn-agent status --json", COMMAND)?;
    let status: Status = serde_json::from_str(out.trim())
        .with_context(|| format!("`cairn-agent status --json` printed no status document:\n{out}"))?;
    ensure!(
        status.api_version == cairn_agent::status::API_VERSION,
        "status api_version {} (expected {})",
        status.api_version,
        cairn_agent::status::API_VERSION
    );
    Ok(status)
}

/// Version of the booted deployment ("" if none says).
pub fn booted_version(s: &Status) -> String {
    s.booted_version().to_owned()
}

/// Whether `version` failed its trial and is excluded for it.
pub fn is_bad(s: &Status, version: &str) -> bool {
    s.is_excluded(version, ExclusionReason::FailedTrial)
}

/// No update in progress and nothing staged: the agent settled this boot.
pub fn settled(s: &Status) -> bool {
    s.settled()
}

/// Every deployment's version, staged, booted and rollback.
pub fn versions(s: &Status) -> Vec<String> {
    [&s.staged, &s.booted, &s.rollback]
        .into_iter()
        .flatten()
        .filter_map(|d| d.version.clone())
        .collect()
}

/// Poll `status` until `done` holds (the daemon settles a boot some time
/// after the boot finishes).
pub fn wait_status(console: &Console, what: &str, timeout: Duration, done: impl Fn(&Status) -> bool) -> Result<Status> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(console)?;
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last status:\n{s:#?}");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}
