//! When the daemon acts: check intervals with jitter, and reboot windows.
//! Pure functions of the current time.

use std::time::Duration;

use crate::config::RebootStrategy;

/// Time until the next check: the interval plus `jitter_fraction` (0..1)
/// of the configured jitter.
pub fn next_check(interval: Duration, jitter: Duration, jitter_fraction: f64) -> Duration {
    interval + jitter.mul_f64(jitter_fraction.clamp(0.0, 1.0))
}

/// How long to wait before rebooting into a staged update, given the
/// seconds since midnight UTC now; `None` when the strategy never reboots.
pub fn reboot_delay(strategy: &RebootStrategy, now_secs_of_day: u64) -> Option<Duration> {
    match strategy {
        RebootStrategy::Immediate => Some(Duration::ZERO),
        RebootStrategy::Off => None,
        RebootStrategy::MaintenanceWindow { start_minute, length } => {
            const DAY: u64 = 86_400;
            let start = u64::from(*start_minute) * 60;
            let now = now_secs_of_day % DAY;
            let since_start = (now + DAY - start) % DAY;
            if since_start < length.as_secs() {
                Some(Duration::ZERO)
            } else {
                Some(Duration::from_secs(DAY - since_start))
            }
        }
    }
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
    fn jitter_is_bounded() {
        let (i, j) = (Duration::from_secs(3600), Duration::from_secs(600));
        assert_eq!(next_check(i, j, 0.0), i);
        assert_eq!(next_check(i, j, 1.0), i + j);
        assert_eq!(next_check(i, j, 7.0), i + j);
        let f = random_fraction();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn maintenance_window_including_one_across_midnight() {
        let w = RebootStrategy::MaintenanceWindow {
            start_minute: 23 * 60,
            length: Duration::from_secs(2 * 3600),
        };
        assert_eq!(reboot_delay(&w, 23 * 3600 + 5), Some(Duration::ZERO));
        assert_eq!(reboot_delay(&w, 30 * 60), Some(Duration::ZERO)); // 00:30, inside
        assert_eq!(reboot_delay(&w, 3600), Some(Duration::from_secs(22 * 3600))); // 01:00, just after
        assert_eq!(reboot_delay(&w, 22 * 3600), Some(Duration::from_secs(3600)));
        assert_eq!(reboot_delay(&RebootStrategy::Immediate, 1234), Some(Duration::ZERO));
        assert_eq!(reboot_delay(&RebootStrategy::Off, 1234), None);
    }
}
