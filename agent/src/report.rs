//! Human-readable renderings of `status` and `history` (pure).

use std::fmt::Write as _;

use crate::lifecycle::{ExclusionReason, UpdateState};
use crate::state::Event;
use crate::status::{Slot, Status, Waiting};

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds, without a time crate.
fn when(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn slot_line(out: &mut String, role: &str, slot: Option<&Slot>) {
    if let Some(d) = slot {
        let _ = writeln!(
            out,
            "{role:>8}: {} ({}.{})",
            d.version.as_deref().unwrap_or("unversioned"),
            &d.commit[..d.commit.len().min(12)],
            d.serial
        );
    }
}

/// The lifecycle state in words, with what a staged update waits for.
pub fn state_text(s: &Status) -> String {
    let waiting = match &s.waiting {
        None => String::new(),
        Some(Waiting::Reboot) => ", rebooting".to_owned(),
        Some(Waiting::Window { opens_in_secs }) => format!(
            ", waiting for the maintenance window (opens in {}h{:02}m)",
            opens_in_secs / 3600,
            opens_in_secs % 3600 / 60
        ),
        Some(Waiting::Operator) => ", waiting for an operator to reboot".to_owned(),
        Some(Waiting::Lock { reason: None, .. }) => ", waiting for a slot of the fleet lock".to_owned(),
        Some(Waiting::Lock {
            reason: Some(why),
            attempts,
            next_attempt_in_secs,
        }) => format!(
            ", waiting for a slot of the fleet lock ({why}; asked {attempts} time(s), next in {}s)",
            next_attempt_in_secs.unwrap_or(0)
        ),
        Some(Waiting::Drain {
            reason,
            attempts,
            next_attempt_in_secs,
            blocked_by,
        }) => {
            let mut t = ", waiting for the node's drain".to_owned();
            if let Some(why) = reason {
                t.push_str(&format!(" ({why}"));
                if *attempts > 0 {
                    t.push_str(&format!("; tried {attempts} time(s)"));
                }
                if let Some(n) = next_attempt_in_secs {
                    t.push_str(&format!(", next in {n}s"));
                }
                t.push(')');
            }
            if !blocked_by.is_empty() {
                t.push_str(&format!("; blocked by {}", blocked_by.join(", ")));
            }
            t
        }
        Some(Waiting::Kured { sentinel_written: true }) => {
            format!(
                ", waiting for kured to drain and reboot the node ({})",
                crate::reboot_gate::KURED_SENTINEL
            )
        }
        Some(Waiting::Kured {
            sentinel_written: false,
        }) => ", about to hand the reboot to kured".to_owned(),
    };
    match &s.update {
        UpdateState::Idle => "idle".to_owned(),
        UpdateState::Staging { trial } => format!("staging {}", trial.version),
        UpdateState::Staged { trial, .. } => format!("{} staged{waiting}", trial.version),
        UpdateState::OnTrial { trial } => format!("{} on trial (health gate)", trial.version),
        UpdateState::FallingBack { trial } => format!("{} failed its trial; cleaning up", trial.version),
        UpdateState::RollingBack { rollback, .. } => {
            format!("rollback to {} staged{waiting}", rollback.to_version)
        }
    }
}

pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    slot_line(&mut out, "staged", s.staged.as_ref());
    slot_line(&mut out, "booted", s.booted.as_ref());
    slot_line(&mut out, "rollback", s.rollback.as_ref());
    let _ = writeln!(out, "   state: {}", state_text(s));
    if let Some(t) = s.boot_tries_left {
        let _ = writeln!(out, "  trials: {t} boots left before falling back");
    }
    let _ = writeln!(
        out,
        "  stream: {} from {}",
        s.stream,
        s.url.as_deref().unwrap_or("(no update url)")
    );
    let _ = writeln!(out, " checked: {}", s.last_check.map_or("never".into(), when));
    if let Some(r) = &s.rollout {
        let _ = match r.turn_in_secs {
            Some(secs) => writeln!(
                out,
                " rollout: {} is rolling out; this host's turn comes in {}h{:02}m",
                r.version,
                secs / 3600,
                secs % 3600 / 60
            ),
            None => writeln!(
                out,
                " rollout: {} is rolling out, paused before this host's turn",
                r.version
            ),
        };
    }
    if let Some(v) = &s.available {
        let _ = writeln!(out, "   newer: {v}");
    }
    for e in &s.excluded {
        let why = match e.reason {
            ExclusionReason::FailedTrial => "failed its trial",
            ExclusionReason::RolledBack => "rolled back from",
        };
        let _ = writeln!(out, "excluded: {} ({why}, {})", e.version, when(e.at));
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "   error: {} at {}: {}", e.operation, when(e.at), e.message);
    }
    if let Some(p) = &s.platform {
        let d = &p.detected;
        let mut line = format!("platform: {} (by {})", d.platform, d.by);
        if let Some(m) = &p.metadata {
            line.push_str(&format!(
                ", instance {} from {}, {} SSH key(s)",
                m.instance_id, m.origin, m.ssh_keys
            ));
        }
        if let Some(e) = p.error.as_ref().or(d.error.as_ref()) {
            line.push_str(&format!(", error: {e}"));
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(p) = &s.provisioning {
        let from = p.source.as_ref().map_or("no config".to_owned(), |s| s.to_string());
        let what = match (&p.format, &p.error) {
            (_, Some(e)) => format!("FAILED: {e}"),
            (Some(f), None) => format!("{f}, {} effect(s)", p.applied.len()),
            (None, None) => "unprovisioned".to_owned(),
        };
        let _ = writeln!(out, "provision: {from} ({}): {what}", when(p.at));
        for w in &p.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        if let Some(c) = &p.commands {
            let _ = writeln!(
                out,
                "  runcmd: {} ran{}",
                c.ran.len(),
                c.error.as_ref().map(|e| format!(", failed: {e}")).unwrap_or_default()
            );
        }
    }
    out
}

pub fn history_text(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}  {kind:<11} {:<10} {}",
            when(e.at),
            e.version.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_in_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(1_795_420_800), "2026-11-23 08:00:00 UTC");
        assert_eq!(when(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
