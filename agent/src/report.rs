//! Human-readable renderings of `status` and `history` (pure).

use std::fmt::Write as _;

use crate::state::{Event, Phase};
use crate::updater::Status;

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

pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    for d in &s.deployments {
        let role = if d.booted {
            "booted"
        } else if d.staged {
            "staged"
        } else if d.rollback {
            "rollback"
        } else if d.pending {
            "pending"
        } else {
            "other"
        };
        let _ = writeln!(
            out,
            "{role:>8}: {} ({}.{})",
            d.version.as_deref().unwrap_or("unversioned"),
            &d.commit[..d.commit.len().min(12)],
            d.serial
        );
    }
    let phase = match &s.phase {
        Phase::Idle => "idle".to_owned(),
        Phase::Staged { version } => format!("{version} staged, waiting for a reboot"),
        Phase::Trial { version } => format!("{version} on trial"),
    };
    let _ = writeln!(out, "   state: {phase}");
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
    if let Some(v) = &s.available {
        let _ = writeln!(out, "   newer: {v}");
    }
    if !s.bad_versions.is_empty() {
        let _ = writeln!(out, "     bad: {}", s.bad_versions.join(", "));
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "   error: {} at {}: {}", e.operation, when(e.at), e.message);
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
