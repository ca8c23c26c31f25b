//! When the daemon acts: check intervals with jitter, and reboot windows.
//! Pure functions of the current time (and, for a window, the time zone
//! database).

use std::time::Duration;

use crate::config::RebootStrategy;

/// Time until the next check: the interval plus `jitter_fraction` (0..1)
/// of the configured jitter.
pub fn next_check(interval: Duration, jitter: Duration, jitter_fraction: f64) -> Duration {
    interval + jitter.mul_f64(jitter_fraction.clamp(0.0, 1.0))
}

/// The first retry of a failed check comes this long after it; each
/// further consecutive failure doubles the wait, up to the check interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// Time until the check after `failures` consecutive failed ones (a check
/// made before the network is up, a server that is down): soon at first,
/// then backing off, never later than the regular `next` check.
pub fn retry_after(failures: u32, next: Duration) -> Duration {
    let backoff = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    backoff.min(next)
}

/// A maintenance window: on some days of the week, from a time of day, for
/// a length, in a time zone. A window belongs to the day it starts on (one
/// from Saturday 23:00 for 2 hours ends on Sunday 01:00).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    /// Minutes after midnight, local time of `time_zone`.
    pub start_minute: u32,
    pub length: Duration,
    /// The days windows start on, Monday first.
    pub days: [bool; 7],
    /// An IANA time zone (`Europe/Berlin`), or `UTC`.
    pub time_zone: String,
}

impl Window {
    /// Every day, UTC.
    pub fn daily_utc(start_minute: u32, length: Duration) -> Window {
        Window {
            start_minute,
            length,
            days: [true; 7],
            time_zone: "UTC".into(),
        }
    }

    /// Time from `now` (seconds since the epoch) until a window is open:
    /// zero inside one. A start that a daylight-saving change skips is
    /// taken as the moment after the gap.
    pub fn delay(&self, now: u64) -> Duration {
        let Ok(tz) = jiff::tz::TimeZone::get(&self.time_zone) else {
            // Checked when the configuration was read; the database went
            // missing since: UTC rather than never.
            return Window {
                time_zone: "UTC".into(),
                ..self.clone()
            }
            .delay(now);
        };
        let Ok(now_ts) = jiff::Timestamp::from_second(i64::try_from(now).unwrap_or(i64::MAX)) else {
            return Duration::ZERO;
        };
        let today = now_ts.to_zoned(tz.clone()).date();
        let (hour, minute) = ((self.start_minute / 60) as i8, (self.start_minute % 60) as i8);
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let length = i64::try_from(self.length.as_secs()).unwrap_or(i64::MAX);
        let mut soonest: Option<i64> = None;
        // The window that started yesterday may still be open; a week on
        // holds the next one whatever the days.
        for offset in -1i32..=7 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.days[date.weekday().to_monday_zero_offset() as usize] {
                continue;
            }
            let Ok(start) = date.at(hour, minute, 0, 0).to_zoned(tz.clone()) else {
                continue;
            };
            let start = start.timestamp().as_second();
            if start <= now && now < start.saturating_add(length) {
                return Duration::ZERO;
            }
            if start > now {
                soonest = Some(soonest.map_or(start, |s| s.min(start)));
            }
        }
        Duration::from_secs(soonest.map_or(86_400, |s| (s - now).unsigned_abs()))
    }
}

/// The day names `window-days` takes, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// How long to wait before rebooting into a staged update, given the time
/// now (seconds since the epoch); `None` when the strategy never reboots.
pub fn reboot_delay(strategy: &RebootStrategy, now: u64) -> Option<Duration> {
    match strategy {
        // The coordinated strategies go to their gate at once (it decides).
        RebootStrategy::Immediate
        | RebootStrategy::FleetLock { .. }
        | RebootStrategy::Kubernetes(_)
        | RebootStrategy::Kured => Some(Duration::ZERO),
        RebootStrategy::Off => None,
        RebootStrategy::MaintenanceWindow(window) => Some(window.delay(now)),
    }
}

/// When the daemon checks next: at the regular time, or sooner when a
/// release rolling out reaches this host then (`turn`), unless a check was
/// made (`last_check`: tried, whatever came of it) since that turn — a
/// check that failed, a clock behind the rollout's, or a release that
/// cannot be staged now would otherwise bring checks one after another.
pub fn next_check_at(regular: u64, turn: Option<u64>, last_check: Option<u64>) -> u64 {
    match turn {
        Some(at) if last_check.is_none_or(|c| at > c) => regular.min(at),
        _ => regular,
    }
}

/// The longest the daemon sleeps before looking again: an update staged
/// by the CLI, or a clock that jumped, is noticed within this.
pub const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// What the daemon does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonStep {
    /// Check for (and stage) a newer release.
    Check,
    /// Give back the FleetLock slot this node may hold.
    ReleaseLock,
    /// Reboot into what is staged, through the strategy's gate (a
    /// FleetLock slot; kured's sentinel) where it has one.
    Reboot,
    Sleep(Duration),
}

/// What the daemon knows when it decides its next step.
#[derive(Debug, Clone, Copy)]
pub struct DaemonView<'a> {
    /// Seconds since the epoch.
    pub now: u64,
    /// When the next check is due (`None`: the daemon does not check by itself).
    pub next_check_at: Option<u64>,
    /// Whether the daemon is to reboot into something staged.
    pub reboot_pending: bool,
    pub strategy: &'a RebootStrategy,
    /// A FleetLock slot is to be given back, from this time (now, or later
    /// after a failed attempt).
    pub release_at: Option<u64>,
    /// The gate held the reboot: it is asked again from this time.
    pub gate_retry_at: Option<u64>,
}

/// The daemon's next step. One decision per wake-up, so a pending reboot
/// never delays a check or the reverse; a slot to give back comes first.
pub fn daemon_step(v: &DaemonView<'_>) -> DaemonStep {
    let now = v.now;
    let mut sleep = LONGEST_SLEEP;
    let mut until = |at: u64| sleep = sleep.min(Duration::from_secs(at.saturating_sub(now)));
    if let Some(at) = v.release_at {
        if now >= at {
            return DaemonStep::ReleaseLock;
        }
        until(at);
    }
    if v.reboot_pending {
        match reboot_delay(v.strategy, now) {
            Some(d) if d.is_zero() => match v.gate_retry_at {
                Some(at) if now < at => until(at),
                _ => return DaemonStep::Reboot,
            },
            Some(d) => sleep = sleep.min(d),
            None => {}
        }
    } else if let Some(at) = v.next_check_at {
        // Nothing is checked while an update waits to be booted.
        if now >= at {
            return DaemonStep::Check;
        }
        until(at);
    }
    DaemonStep::Sleep(sleep.max(Duration::from_secs(1)))
}

/// A number in 0..1 from the kernel's random source (0.5 if unreadable).
pub fn random_fraction() -> f64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_checks_are_retried_soon_then_less_often_never_later_than_the_interval() {
        let hour = Duration::from_secs(3600);
        assert_eq!(retry_after(1, hour), Duration::from_secs(30));
        assert_eq!(retry_after(2, hour), Duration::from_secs(60));
        assert_eq!(retry_after(4, hour), Duration::from_secs(240));
        assert_eq!(retry_after(8, hour), hour);
        assert_eq!(retry_after(u32::MAX, hour), hour);
        // An interval shorter than the first retry wins.
        assert_eq!(retry_after(1, Duration::from_secs(10)), Duration::from_secs(10));
    }

    #[test]
    fn a_rollout_turn_brings_the_next_check_forward_once() {
        assert_eq!(next_check_at(5000, None, Some(100)), 5000);
        assert_eq!(next_check_at(5000, Some(300), Some(100)), 300);
        assert_eq!(next_check_at(5000, Some(9000), Some(100)), 5000);
        assert_eq!(
            next_check_at(5000, Some(300), Some(300)),
            5000,
            "checked at its turn already"
        );
        assert_eq!(next_check_at(5000, Some(300), None), 300);
    }

    #[test]
    fn jitter_is_bounded() {
        let (i, j) = (Duration::from_secs(3600), Duration::from_secs(600));
        assert_eq!(next_check(i, j, 0.0), i);
        assert_eq!(next_check(i, j, 1.0), i + j);
        assert_eq!(next_check(i, j, 7.0), i + j);
        let f = random_fraction();
        assert!((0.0..1.0).contains(&f));
    }

    fn view(now: u64, next_check_at: Option<u64>, reboot_pending: bool, strategy: &RebootStrategy) -> DaemonView<'_> {
        DaemonView {
            now,
            next_check_at,
            reboot_pending,
            strategy,
            release_at: None,
            gate_retry_at: None,
        }
    }

    #[test]
    fn a_slot_is_given_back_first_and_a_held_reboot_waits_for_its_next_attempt() {
        let lock = RebootStrategy::FleetLock {
            url: "http://lock".into(),
            group: "default".into(),
        };
        let t = 1_000_000;
        // Released before anything else, even a due check or reboot.
        let v = DaemonView {
            release_at: Some(t),
            ..view(t, Some(t), true, &lock)
        };
        assert_eq!(daemon_step(&v), DaemonStep::ReleaseLock);
        // A failed release is tried again when due; meanwhile the rest goes on.
        let v = DaemonView {
            release_at: Some(t + 20),
            ..view(t, Some(t), false, &lock)
        };
        assert_eq!(daemon_step(&v), DaemonStep::Check);
        let v = DaemonView {
            release_at: Some(t + 20),
            ..view(t, Some(t + 50), false, &lock)
        };
        assert_eq!(daemon_step(&v), DaemonStep::Sleep(Duration::from_secs(20)));
        // A staged update goes to the gate at once; held, it waits for the
        // next attempt (and wakes for it), then goes again.
        assert_eq!(daemon_step(&view(t, None, true, &lock)), DaemonStep::Reboot);
        let held = DaemonView {
            gate_retry_at: Some(t + 30),
            ..view(t, None, true, &lock)
        };
        assert_eq!(daemon_step(&held), DaemonStep::Sleep(Duration::from_secs(30)));
        let due = DaemonView { now: t + 30, ..held };
        assert_eq!(daemon_step(&due), DaemonStep::Reboot);
        assert_eq!(
            daemon_step(&view(t, None, true, &RebootStrategy::Kured)),
            DaemonStep::Reboot
        );
    }

    #[test]
    fn the_daemon_checks_when_due_and_reboots_in_the_window_even_without_auto_updates() {
        let window = RebootStrategy::MaintenanceWindow(Window::daily_utc(3 * 60, Duration::from_secs(3600)));
        let day = 20_000 * 86_400;
        // Due: check; not due: sleep until it is (at most LONGEST_SLEEP).
        assert_eq!(
            daemon_step(&view(day + 100, Some(day + 100), false, &window)),
            DaemonStep::Check
        );
        assert_eq!(
            daemon_step(&view(day + 100, Some(day + 130), false, &window)),
            DaemonStep::Sleep(Duration::from_secs(30))
        );
        assert_eq!(
            daemon_step(&view(day + 100, Some(day + 9_999), false, &window)),
            DaemonStep::Sleep(LONGEST_SLEEP)
        );
        // A staged update with auto updates off (no check due, ever): the
        // reboot still happens, in the window and only there.
        assert_eq!(
            daemon_step(&view(day + 3600, None, true, &window)),
            DaemonStep::Sleep(LONGEST_SLEEP)
        );
        assert_eq!(
            daemon_step(&view(day + 3 * 3600 - 10, None, true, &window)),
            DaemonStep::Sleep(Duration::from_secs(10))
        );
        assert_eq!(
            daemon_step(&view(day + 3 * 3600 + 5, None, true, &window)),
            DaemonStep::Reboot
        );
        assert_eq!(
            daemon_step(&view(day, Some(day), true, &RebootStrategy::Immediate)),
            DaemonStep::Reboot
        );
        // Strategy off: never a reboot, and no checks while staged.
        assert_eq!(
            daemon_step(&view(day, Some(day), true, &RebootStrategy::Off)),
            DaemonStep::Sleep(LONGEST_SLEEP)
        );
        assert_eq!(
            daemon_step(&view(day, None, false, &RebootStrategy::Off)),
            DaemonStep::Sleep(LONGEST_SLEEP)
        );
    }

    #[test]
    fn maintenance_window_including_one_across_midnight() {
        let w = RebootStrategy::MaintenanceWindow(Window::daily_utc(23 * 60, Duration::from_secs(2 * 3600)));
        assert_eq!(reboot_delay(&w, 23 * 3600 + 5), Some(Duration::ZERO));
        assert_eq!(reboot_delay(&w, 30 * 60), Some(Duration::ZERO)); // 00:30, inside
        assert_eq!(reboot_delay(&w, 3600), Some(Duration::from_secs(22 * 3600))); // 01:00, just after
        assert_eq!(reboot_delay(&w, 22 * 3600), Some(Duration::from_secs(3600)));
        assert_eq!(reboot_delay(&RebootStrategy::Immediate, 1234), Some(Duration::ZERO));
        assert_eq!(reboot_delay(&RebootStrategy::Off, 1234), None);
    }

    #[test]
    fn windows_keep_to_their_days_and_their_time_zone_through_daylight_saving() {
        // 2026-03-28 is a Saturday; Berlin moves from +01:00 to +02:00 at
        // 02:00 on Sunday the 29th.
        let at = |s: &str| u64::try_from(s.parse::<jiff::Timestamp>().unwrap().as_second()).unwrap();
        let weekend_night = Window {
            start_minute: 2 * 60 + 30,
            length: Duration::from_secs(3600),
            days: [false, false, false, false, false, true, true],
            time_zone: "Europe/Berlin".into(),
        };
        // Friday noon in Berlin: the next window is Saturday 02:30 +01:00.
        assert_eq!(
            weekend_night.delay(at("2026-03-27T11:00:00Z")),
            Duration::from_secs(at("2026-03-28T01:30:00Z") - at("2026-03-27T11:00:00Z"))
        );
        assert_eq!(weekend_night.delay(at("2026-03-28T01:45:00Z")), Duration::ZERO);
        // Sunday's 02:30 does not exist in Berlin: the window opens at
        // 03:30 +02:00 (01:30Z), the moment after the gap.
        assert_eq!(
            weekend_night.delay(at("2026-03-29T00:00:00Z")),
            Duration::from_secs(at("2026-03-29T01:30:00Z") - at("2026-03-29T00:00:00Z"))
        );
        // After Sunday's, the next is the next Saturday, in summer time.
        assert_eq!(
            weekend_night.delay(at("2026-03-29T03:00:00Z")),
            Duration::from_secs(at("2026-04-04T00:30:00Z") - at("2026-03-29T03:00:00Z"))
        );
        // A window across midnight belongs to the day it starts on: Sunday
        // 23:00 UTC for 2 hours is open on Monday at 00:30, not on Tuesday.
        let sunday_late = Window {
            start_minute: 23 * 60,
            length: Duration::from_secs(2 * 3600),
            days: [false, false, false, false, false, false, true],
            time_zone: "UTC".into(),
        };
        assert_eq!(sunday_late.delay(at("2026-03-30T00:30:00Z")), Duration::ZERO);
        assert_eq!(
            sunday_late.delay(at("2026-03-31T00:30:00Z")),
            Duration::from_secs(at("2026-04-05T23:00:00Z") - at("2026-03-31T00:30:00Z"))
        );
    }
}
