//! One line in the kernel log when a boot finishes: which release is up and
//! whether every unit started.
//!
//! A production image offers no login, and systemd stops printing unit
//! status on the console once a getty owns it; so the serial console a
//! cloud provider shows (often the only view of a headless host) would not
//! tell a healthy boot from a stuck or degraded one. The agent waits for the
//! boot to finish and writes its verdict to `/dev/kmsg`, which the kernel
//! prints on the console and the journal keeps.

use anyhow::{Context as _, Result};
use cairn_common::process::Cmd;

/// Kernel log priorities (`<N>` prefix of a `/dev/kmsg` record).
const KERN_ERR: u8 = 3;
const KERN_NOTICE: u8 = 5;

/// The kernel log priority and message for a finished boot (pure).
///
/// `state` is what `systemctl is-system-running` printed; `failed` the
/// failed units. Degraded and other non-running states are errors so that
/// they reach consoles whose log level hides notices.
pub fn verdict(pretty_name: &str, state: &str, failed: &[String]) -> (u8, String) {
    let (priority, how) = match (state, failed.is_empty()) {
        ("running", _) => (KERN_NOTICE, "system running".to_owned()),
        (_, true) => (KERN_ERR, format!("system {state}")),
        (_, false) => (KERN_ERR, format!("system {state}; failed units: {}", failed.join(", "))),
    };
    (priority, format!("cairn-agent: {pretty_name} is up: {how}"))
}

/// `PRETTY_NAME` of an os-release file's text (pure).
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

/// Wait until the boot has finished, then write the verdict to the kernel log.
pub fn report_when_booted() -> Result<()> {
    // An observer: a stop of the daemon does not wait for it.
    let out = Cmd::new("systemctl")
        .args(["is-system-running", "--wait"])
        .unawaited()
        .status_output()?
        .1;
    let state = out.stdout.trim().to_owned();
    let failed = if state == "running" { Vec::new() } else { failed_units() };
    let name = std::fs::read_to_string("/usr/lib/os-release")
        .ok()
        .and_then(|t| pretty_name(&t))
        .unwrap_or_else(|| "Cairn".to_owned());
    let (priority, message) = verdict(&name, &state, &failed);
    tracing::info!("{message}");
    std::fs::write("/dev/kmsg", format!("<{priority}>{message}\n")).context("writing the boot verdict to /dev/kmsg")
}

/// Write `message` to the kernel log as an error, so it reaches the
/// console whatever its log level.
pub fn to_kernel_log(message: &str) -> Result<()> {
    std::fs::write("/dev/kmsg", format!("<{KERN_ERR}>{message}\n")).context("writing to /dev/kmsg")
}

/// Write `message` to the kernel log as a notice: what a console shows of
/// a host that is about to reboot, and why.
pub fn announce(message: &str) -> Result<()> {
    std::fs::write("/dev/kmsg", format!("<{KERN_NOTICE}>{message}\n")).context("writing to /dev/kmsg")
}

/// Names of the failed units, best effort (an empty list if systemctl fails).
pub fn failed_units() -> Vec<String> {
    Cmd::new("systemctl")
        .args(["list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"])
        .output()
        .map(|o| {
            o.stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_is_a_notice() {
        assert_eq!(
            verdict("Cairn 1.2 (prod)", "running", &[]),
            (5, "cairn-agent: Cairn 1.2 (prod) is up: system running".to_owned())
        );
    }

    #[test]
    fn degraded_names_the_failed_units_as_an_error() {
        let failed = vec!["a.service".to_owned(), "b.mount".to_owned()];
        assert_eq!(
            verdict("Cairn 1.2 (prod)", "degraded", &failed),
            (
                3,
                "cairn-agent: Cairn 1.2 (prod) is up: system degraded; failed units: a.service, b.mount".to_owned()
            )
        );
        assert_eq!(
            verdict("Cairn", "stopping", &[]),
            (3, "cairn-agent: Cairn is up: system stopping".to_owned())
        );
    }

    #[test]
    fn pretty_name_is_unquoted() {
        let text = "NAME=\"Cairn\"\nPRETTY_NAME=\"Cairn 1.2 (prod)\"\nID=cairn\n";
        assert_eq!(pretty_name(text).as_deref(), Some("Cairn 1.2 (prod)"));
        assert_eq!(pretty_name("ID=cairn\n"), None);
    }
}
