//! The health gate a trial deployment must pass before it is committed:
//! the boot finished with no failed units, containerd answers, and every
//! executable in the `health.d` folders succeeds within its timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_common::process::Cmd;

/// Folders of health checks, image first; `/etc` shadows a same-named check.
pub const CHECK_DIRS: [&str; 2] = ["/usr/lib/cairn/health.d", "/etc/cairn/health.d"];

#[derive(Debug, Clone)]
pub struct Gate {
    pub timeout: Duration,
    pub check_timeout: Duration,
    pub containerd: bool,
    pub check_dirs: Vec<PathBuf>,
}

/// The result of one check, for the log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub check: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.reason)
    }
}

/// Executables of the check folders, in name order; a later folder's file
/// replaces an earlier folder's file of the same name.
pub fn checks(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt as _;
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let mut out = Vec::new();
    for path in crate::dropins::merged(&dirs, |_| true)? {
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        // A symlink to /dev/null masks a check, as in systemd.
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        } else if meta.is_file() {
            tracing::warn!(check = %path.display(), "health check is not executable; skipped");
        }
    }
    Ok(out)
}

impl Gate {
    /// Run every check; the first failure ends the gate.
    pub fn run(&self) -> Result<(), Failure> {
        let deadline = Instant::now() + self.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let fail = |check: &str, reason: String| Failure {
            check: check.to_owned(),
            reason,
        };

        // 1. The boot finished, and nothing failed.
        let (status, out) = Cmd::new("systemctl")
            .args(["is-system-running", "--wait"])
            .timeout(left())
            .status_output()
            .map_err(|e| fail("boot", format!("{e:#}")))?;
        let state = out.stdout.trim().to_owned();
        if !status.success() {
            let failed = crate::boot_report::failed_units().join(", ");
            return Err(fail("boot", format!("system is {state}; failed units: {failed}")));
        }

        // 2. The container runtime answers.
        if self.containerd {
            Cmd::new("ctr")
                .args(["--timeout", "10s", "version"])
                .timeout(self.check_timeout.min(left()))
                .run()
                .map_err(|e| fail("containerd", format!("{e:#}")))?;
        }

        // 3. The image's and the host's own checks.
        let list = checks(&self.check_dirs).map_err(|e| fail("health.d", format!("{e:#}")))?;
        for check in list {
            let name = check.display().to_string();
            let limit = self.check_timeout.min(left());
            if limit.is_zero() {
                return Err(fail(
                    &name,
                    format!("the health gate's {}s ran out", self.timeout.as_secs()),
                ));
            }
            Cmd::new(&check)
                .timeout(limit)
                .run()
                .map_err(|e| fail(&name, format!("{e:#}")))?;
        }
        Ok(())
    }
}

/// The check folders of the host.
pub fn host_dirs() -> Vec<PathBuf> {
    CHECK_DIRS.iter().map(|d| Path::new(d).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn checks_are_ordered_and_host_shadows_image() {
        let image = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        script(image.path(), "10-net", "true");
        script(image.path(), "20-disk", "true");
        script(host.path(), "10-net", "true");
        std::fs::write(image.path().join("30-notes"), "not executable").unwrap();
        std::os::unix::fs::symlink("/dev/null", host.path().join("20-disk")).unwrap();
        let got = checks(&[image.path().to_owned(), host.path().to_owned(), "/nonexistent".into()]).unwrap();
        assert_eq!(got, vec![host.path().join("10-net")]);
    }
}
