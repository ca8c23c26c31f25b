//! Where a boot's time goes: firmware + boot loader, kernel, initramfs and
//! userspace, as systemd recorded them and as the host saw them.
//!
//! systemd keeps the moments of a boot as monotonic timestamps (µs since the
//! kernel started): the initramfs's start (`InitRDTimestampMonotonic`), the
//! real root's `/sbin/init` (`UserspaceTimestampMonotonic`) and the end of
//! the boot transaction (`FinishTimestampMonotonic`), the figures
//! `systemd-analyze` prints. GRUB does not report the firmware's and its own
//! time (only systemd-boot does), so the host works out when the kernel
//! started: when it reads the guest's uptime (its monotonic clock, which
//! starts with the kernel) it subtracts it from the time since QEMU's start.
//! That holds however late the console's shell comes up (an autologin
//! session can wait for the rest of the boot): the boot's total is
//! firmware + loader + the guest's own `FinishTimestampMonotonic`.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::vm::Vm;

/// The manager properties [`GuestTimes::parse`] reads, for `systemctl show -p`.
pub const PROPERTIES: &str = "InitRDTimestampMonotonic,UserspaceTimestampMonotonic,FinishTimestampMonotonic";

/// One boot's figures, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootTimes {
    /// QEMU start → kernel start: UEFI firmware and GRUB.
    pub firmware_and_loader_secs: f64,
    pub kernel_secs: f64,
    pub initrd_secs: f64,
    pub userspace_secs: f64,
    /// Kernel start → every unit started.
    pub guest_secs: f64,
    /// QEMU start → every unit started (`systemctl is-system-running`
    /// says `running`): firmware and loader + guest.
    pub total_secs: f64,
}

/// The guest's share of a boot, from `systemctl show -p` [`PROPERTIES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestTimes {
    pub initrd_start_us: u64,
    pub userspace_start_us: u64,
    pub finish_us: u64,
}

impl GuestTimes {
    /// Parse `Key=value` lines. A boot without an initramfs has
    /// `InitRDTimestampMonotonic=0`; a boot still running has
    /// `FinishTimestampMonotonic=0`, which is an error here.
    pub fn parse(text: &str) -> Result<GuestTimes> {
        let value = |key: &str| -> Result<u64> {
            let line = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("`systemctl show` printed no {key} in {text:?}"))?;
            line.trim()
                .parse()
                .with_context(|| format!("{key}={line:?} is not a number of microseconds"))
        };
        let times = GuestTimes {
            initrd_start_us: value("InitRDTimestampMonotonic")?,
            userspace_start_us: value("UserspaceTimestampMonotonic")?,
            finish_us: value("FinishTimestampMonotonic")?,
        };
        ensure!(
            times.finish_us > 0,
            "the boot has not finished (FinishTimestampMonotonic=0)"
        );
        ensure!(
            times.userspace_start_us <= times.finish_us && times.initrd_start_us <= times.userspace_start_us,
            "boot timestamps out of order: {times:?}"
        );
        Ok(times)
    }

    /// Combine with when the kernel started, counted from QEMU's start
    /// (see [`kernel_started_after`]).
    pub fn with_kernel_start(self, kernel_started_after: Duration) -> BootTimes {
        let s = |us: u64| us as f64 / 1e6;
        // Without an initramfs the kernel runs until userspace starts.
        let kernel_end = if self.initrd_start_us > 0 {
            self.initrd_start_us
        } else {
            self.userspace_start_us
        };
        let firmware = kernel_started_after.as_secs_f64();
        let guest_secs = s(self.finish_us);
        BootTimes {
            firmware_and_loader_secs: firmware,
            kernel_secs: s(kernel_end),
            initrd_secs: s(self.userspace_start_us - kernel_end),
            userspace_secs: s(self.finish_us - self.userspace_start_us),
            guest_secs,
            total_secs: firmware + guest_secs,
        }
    }
}

/// When the guest's kernel started, counted from QEMU's start: the host's
/// time since QEMU started when it read the guest's uptime, less that
/// uptime (`/proc/uptime`'s first field). Never negative.
pub fn kernel_started_after(read_at: Duration, uptime_text: &str) -> Result<Duration> {
    let field = uptime_text.split_whitespace().next().unwrap_or_default();
    let uptime: f64 = field
        .parse()
        .with_context(|| format!("/proc/uptime said {uptime_text:?}, not seconds"))?;
    ensure!(uptime.is_finite() && uptime >= 0.0, "/proc/uptime said {uptime_text:?}");
    Ok(read_at.saturating_sub(Duration::from_secs_f64(uptime)))
}

/// A booted VM at root's shell (started at `vm.started`): wait for every
/// unit, then read where the time went.
pub fn measure(vm: &Vm, limit: Duration) -> Result<(BootTimes, String)> {
    let state = vm.console.run("systemctl is-system-running --wait", limit)?;
    if state.output.trim() != "running" {
        let failed = vm
            .console
            .run("systemctl --failed --no-legend", Duration::from_secs(60))
            .map(|o| o.output)
            .unwrap_or_default();
        bail!("the boot ended {:?}; failed units:\n{failed}", state.output.trim());
    }
    let shown = vm
        .console
        .run_ok(&format!("systemctl show -p {PROPERTIES}"), Duration::from_secs(60))?;
    // The reading's own console round trip (milliseconds) is charged to
    // the firmware: the figure is an upper bound.
    let uptime = vm.console.run_ok("cat /proc/uptime", Duration::from_secs(60))?;
    let kernel_start = kernel_started_after(vm.started.elapsed(), &uptime)?;
    let times = GuestTimes::parse(&shown)?.with_kernel_start(kernel_start);
    let chain = vm
        .console
        .run_ok("systemd-analyze critical-chain --no-pager", Duration::from_secs(120))?;
    Ok((times, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOWN: &str =
        "InitRDTimestampMonotonic=2100000\nUserspaceTimestampMonotonic=6600000\nFinishTimestampMonotonic=12350000\n";

    #[test]
    fn splits_the_boot_at_systemds_moments_after_the_firmware() {
        let t = GuestTimes::parse(SHOWN)
            .unwrap()
            .with_kernel_start(Duration::from_millis(4_650));
        assert_eq!(t.kernel_secs, 2.1);
        assert_eq!(t.initrd_secs, 4.5);
        assert!((t.userspace_secs - 5.75).abs() < 1e-9);
        assert_eq!(t.guest_secs, 12.35);
        assert_eq!(t.firmware_and_loader_secs, 4.65);
        assert!((t.total_secs - 17.0).abs() < 1e-9);
    }

    #[test]
    fn a_boot_without_initramfs_is_all_kernel_until_userspace() {
        let shown = "InitRDTimestampMonotonic=0\nUserspaceTimestampMonotonic=3000000\nFinishTimestampMonotonic=9000000";
        let t = GuestTimes::parse(shown)
            .unwrap()
            .with_kernel_start(Duration::from_secs(3));
        assert_eq!((t.kernel_secs, t.initrd_secs, t.userspace_secs), (3.0, 0.0, 6.0));
    }

    #[test]
    fn the_kernel_started_when_the_host_clock_less_the_guests_uptime_says() {
        let read_at = Duration::from_millis(41_500);
        assert_eq!(
            kernel_started_after(read_at, "36.20 70.11\n").unwrap(),
            Duration::from_millis(5_300)
        );
        // An uptime longer than the host's count (clock skew) is no time.
        assert_eq!(kernel_started_after(read_at, "50.00 1.0").unwrap(), Duration::ZERO);
        let err = kernel_started_after(read_at, "soon").unwrap_err();
        assert!(format!("{err:#}").contains("\"soon\""), "{err:#}");
    }

    #[test]
    fn an_unfinished_boot_or_missing_property_is_an_error_that_names_it() {
        let unfinished = SHOWN.replace("12350000", "0");
        assert!(format!("{:#}", GuestTimes::parse(&unfinished).unwrap_err()).contains("not finished"));
        let missing = "InitRDTimestampMonotonic=1\nFinishTimestampMonotonic=2";
        assert!(format!("{:#}", GuestTimes::parse(missing).unwrap_err()).contains("UserspaceTimestampMonotonic"));
        let garbage = SHOWN.replace("6600000", "soon");
        assert!(format!("{:#}", GuestTimes::parse(&garbage).unwrap_err()).contains("\"soon\""));
    }
}
