//! The host's ostree sysroot: its deployments, and the operations the agent
//! performs on it, through the `ostree` CLI and the one process helper.
//!
//! The deployment list comes from `ostree admin status`, parsed by a pure
//! function ([`parse_status`]) so it is tested on captured output.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cairn_common::layout::{OSNAME, REMOTE};
use cairn_common::process::Cmd;
use serde::Serialize;

/// One deployment, as `ostree admin status` lists it (index 0 is the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub index: usize,
    pub stateroot: String,
    pub commit: String,
    pub serial: u32,
    pub version: Option<String>,
    pub booted: bool,
    pub staged: bool,
    pub pending: bool,
    pub rollback: bool,
}

/// Parse `ostree admin status` output.
pub fn parse_status(text: &str) -> Result<Vec<Deployment>> {
    let mut out: Vec<Deployment> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(detail) = line.strip_prefix("    ") {
            if let (Some(d), Some(v)) = (out.last_mut(), detail.trim().strip_prefix("Version: ")) {
                d.version = Some(v.trim().to_owned());
            }
            continue;
        }
        let (booted, rest) = match (line.strip_prefix("* "), line.strip_prefix("  ")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => bail!("ostree admin status line {}: unexpected {line:?}", n + 1),
        };
        let mut words = rest.split_whitespace();
        let (Some(stateroot), Some(id)) = (words.next(), words.next()) else {
            bail!("ostree admin status line {}: unexpected {line:?}", n + 1);
        };
        let (commit, serial) = id
            .split_once('.')
            .with_context(|| format!("ostree admin status line {}: `{id}` is not CHECKSUM.SERIAL", n + 1))?;
        let marks: String = words.collect::<Vec<_>>().join(" ");
        out.push(Deployment {
            index: out.len(),
            stateroot: stateroot.to_owned(),
            commit: commit.to_owned(),
            serial: serial
                .parse()
                .with_context(|| format!("ostree admin status line {}: serial `{serial}`", n + 1))?,
            version: None,
            booted,
            staged: marks.contains("(staged)"),
            pending: marks.contains("(pending)"),
            rollback: marks.contains("(rollback)"),
        });
    }
    Ok(out)
}

/// The ostree operations the agent needs. A trait so the update logic can
/// be exercised against a fake in unit tests.
pub trait Sysroot {
    fn deployments(&self) -> Result<Vec<Deployment>>;
    /// Point the update remote at `url` (GPG verification always on).
    fn set_remote(&self, url: &str) -> Result<()>;
    /// Fetch exactly `commit` as `ostree_ref`; its GPG signature must verify.
    fn pull(&self, ostree_ref: &str, commit: &str, retries: u32, stall: Duration) -> Result<()>;
    /// A string metadata value of a commit in the local repo.
    fn commit_metadata(&self, commit: &str, key: &str) -> Result<Option<String>>;
    /// Stage `commit` as the next default deployment (finalized at
    /// shutdown), booting with exactly `kargs`.
    fn stage(&self, commit: &str, kargs: &[String]) -> Result<()>;
    fn undeploy(&self, index: usize) -> Result<()>;
    /// Remove the staged deployment, if any, so no shutdown finalizes it.
    fn drop_staged(&self) -> Result<()>;
    /// The booted deployment's kernel arguments (its command line, less
    /// what ostree and GRUB add).
    fn booted_kargs(&self) -> Result<Vec<String>>;
    /// The kernel arguments a commit ships in `/usr/lib/cairn/kargs.d`
    /// (none for a release from before kargs.d).
    fn release_kargs(&self, commit: &str) -> Result<Vec<String>>;
}

/// The `.toml` files an `ostree ls` listing names (pure): lines are
/// `MODE UID GID SIZE PATH`, directories' modes start with `d`.
pub fn toml_files_of_listing(listing: &str) -> Vec<String> {
    let mut out: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.ends_with(".toml"))
        .map(str::to_owned)
        .collect();
    out.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    out
}

/// Where ostree records the staged deployment for `ostree admin
/// finalize-staged` at shutdown.
const STAGED_RECORD: &str = "/run/ostree/staged-deployment";

/// When a new deployment's boot entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deploy {
    /// At shutdown, by `ostree-finalize-staged.service` (updates: `/etc`
    /// is merged as late as possible).
    Staged,
    /// Now, with `/etc` merged now (provisioning's kernel arguments, in a
    /// boot that reboots before anything else changes `/etc`).
    Now,
}

/// `ostree admin` arguments deploying `commit` with exactly `kargs`:
/// `--karg-none` drops the booted ones, `--karg-append` keeps repeated
/// keys (console=tty0 console=ttyS0).
pub fn deploy_args(when: Deploy, commit: &str, kargs: &[String]) -> Vec<String> {
    let mut args = vec!["deploy".to_owned()];
    if when == Deploy::Staged {
        args.push("--stage".to_owned());
    }
    args.push(format!("--os={OSNAME}"));
    args.push("--karg-none".to_owned());
    args.extend(kargs.iter().map(|k| format!("--karg-append={k}")));
    args.push(commit.to_owned());
    args
}

/// The sysroot of the running host.
#[derive(Debug, Default)]
pub struct HostSysroot;

/// The system repository of a booted host.
const REPO_PATH: &str = "/ostree/repo";

impl HostSysroot {
    /// Deploy `commit` with exactly `kargs` now: its boot entry and GRUB's
    /// menu are written before this returns, and it is the next boot's
    /// default.
    pub fn deploy_now(&self, commit: &str, kargs: &[String]) -> Result<()> {
        Self::admin()
            .args(deploy_args(Deploy::Now, commit, kargs))
            .run()
            .with_context(|| format!("deploying {commit}"))
    }

    fn repo() -> Cmd {
        Cmd::new("ostree").arg(format!("--repo={REPO_PATH}"))
    }

    fn admin() -> Cmd {
        // ostree runs Cairn's GRUB generator whenever it rewrites the boot menu.
        Cmd::new("ostree")
            .arg("admin")
            .env("OSTREE_GRUB2_EXEC", cairn_common::layout::GRUB_MKCONFIG_PATH)
    }
}

impl Sysroot for HostSysroot {
    fn deployments(&self) -> Result<Vec<Deployment>> {
        let out = Cmd::new("ostree").args(["admin", "status"]).output()?;
        parse_status(&out.stdout)
    }

    fn set_remote(&self, url: &str) -> Result<()> {
        let (status, out) = Self::repo().args(["remote", "show-url", REMOTE]).status_output()?;
        let (_, gpg) = Self::repo()
            .args(["config", "get", &format!("remote \"{REMOTE}\".gpg-verify")])
            .status_output()?;
        if status.success() && out.stdout.trim() == url && gpg.stdout.trim() == "true" {
            return Ok(());
        }
        // The remote may live in the repo's config or in /etc/ostree/remotes.d:
        // delete wherever it is, then add it with verification on.
        Self::repo().args(["remote", "delete", "--if-exists", REMOTE]).run()?;
        Self::repo()
            .args(["remote", "add", "--set=gpg-verify=true", REMOTE, url])
            .run()
            .context("configuring the update remote")
    }

    fn pull(&self, ostree_ref: &str, commit: &str, retries: u32, stall: Duration) -> Result<()> {
        // ostree keeps every object it fetched: a retry (or the next
        // check) resumes where a failed pull stopped.
        let mut last = None;
        for attempt in 0..=retries {
            if attempt > 0 {
                let wait = backoff(attempt);
                tracing::warn!(attempt, wait_secs = wait.as_secs(), "pull failed; retrying");
                std::thread::sleep(wait);
            }
            let result = Self::repo()
                .args(["pull", "--network-retries=2"])
                .arg(REMOTE)
                .arg(format!("{ostree_ref}@{commit}"))
                // ostree's fetcher has no low-speed limit of its own: a
                // server that stops sending would hold the pull forever.
                .stall_timeout(stall, pull_progress)
                .run();
            match result {
                Ok(()) => return Ok(()),
                Err(e) if is_permanent_pull_error(&format!("{e:#}")) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
            .context(format!("pulling {commit} failed after {} attempts", retries + 1))
    }

    fn commit_metadata(&self, commit: &str, key: &str) -> Result<Option<String>> {
        let (status, out) = Self::repo()
            .args(["show", commit, &format!("--print-metadata-key={key}")])
            .status_output()?;
        Ok(status
            .success()
            .then(|| out.stdout.trim().trim_matches('\'').to_owned()))
    }

    fn stage(&self, commit: &str, kargs: &[String]) -> Result<()> {
        Self::admin()
            .args(deploy_args(Deploy::Staged, commit, kargs))
            .run()
            .with_context(|| format!("staging {commit}"))
    }

    fn undeploy(&self, index: usize) -> Result<()> {
        Self::admin().args(["undeploy", &index.to_string()]).run()
    }

    fn drop_staged(&self) -> Result<()> {
        // `ostree admin cleanup` keeps a staged deployment; undeploying it
        // unstages it. Should an ostree not, the record finalize-staged
        // reads goes, which makes the shutdown finalize nothing.
        if let Some(staged) = self.deployments()?.into_iter().find(|d| d.staged) {
            if let Err(e) = self.undeploy(staged.index) {
                tracing::warn!(error = %format!("{e:#}"), "undeploying the staged deployment failed");
            }
        }
        if self.deployments()?.iter().any(|d| d.staged) {
            match std::fs::remove_file(STAGED_RECORD) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {STAGED_RECORD}")),
            }
        }
        if self.deployments()?.iter().any(|d| d.staged) {
            bail!("a staged deployment is still there after undeploying it and removing {STAGED_RECORD}");
        }
        Ok(())
    }

    fn booted_kargs(&self) -> Result<Vec<String>> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        Ok(crate::kargs::host_args(&cmdline))
    }

    fn release_kargs(&self, commit: &str) -> Result<Vec<String>> {
        let dir = format!("/{}", cairn_common::kargs::KARGS_DIR);
        let (status, out) = Self::repo().args(["ls", commit, &dir]).status_output()?;
        if !status.success() {
            if out.stderr_tail.contains("No such file or directory") {
                return Ok(Vec::new());
            }
            bail!("listing {dir} of {commit}: {}", out.stderr_tail.trim());
        }
        let mut kargs = Vec::new();
        for file in toml_files_of_listing(&out.stdout) {
            let text = Self::repo().args(["cat", commit, &file]).output()?.stdout;
            kargs.extend(cairn_common::kargs::parse(
                std::path::Path::new(&format!("{commit}:{file}")),
                &text,
            )?);
        }
        Ok(kargs)
    }
}

/// How far a running `ostree pull` has got, as one number that changes
/// whenever it does: the sizes of the files it has open (downloads land in
/// unnamed temporary files in the repo) and the objects staged so far.
fn pull_progress(pid: u32) -> u64 {
    let mut total = 0u64;
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            // metadata() follows the fd link to the open file itself, even unlinked.
            if let Ok(m) = std::fs::metadata(fd.path()) {
                if m.is_file() {
                    total = total.wrapping_add(m.len());
                }
            }
        }
    }
    if let Ok(tmp) = std::fs::read_dir(format!("{REPO_PATH}/tmp")) {
        for staging in tmp
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("staging-"))
        {
            total = total.wrapping_add(count_files(&staging.path()));
        }
    }
    total
}

fn count_files(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
            .sum()
    })
}

/// Seconds to wait before retry `attempt` (1-based): 2, 4, 8, … capped at 60.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(6)).min(60))
}

/// Errors that retrying cannot fix: a bad signature, a checksum mismatch.
pub fn is_permanent_pull_error(message: &str) -> bool {
    const PERMANENT: [&str; 5] = [
        "GPG verification enabled, but no signatures found",
        "GPG signatures found, but none are in trusted keyring",
        "Corrupted",
        "corrupted",
        "Invalid checksum",
    ];
    PERMANENT.iter().any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "  cairn 2b4f9ad1c7a8e0e27ac5d2a4b1e4a7fb8b8e8d91a5f0b8c3e9a7e6d5c4b3a291.0 (staged)
    Version: 0.2.0
    origin refspec: 2b4f9ad1c7a8e0e27ac5d2a4b1e4a7fb8b8e8d91a5f0b8c3e9a7e6d5c4b3a291
* cairn 37dbfe301b49b8d094ce9d5460e07ffe734cb893d5b90112f4dbd5d797dad664.0
    Version: 0.1.0
    origin refspec: cairn:cairn/x86_64/dev/stable
    GPG: Signature made Mon 23 Nov 2026 08:59:06 AM UTC using EDDSA key ID CA6F3513B35513F8
    GPG: Good signature from \"Cairn development signing key <signing@cairn.invalid>\"
  cairn 11dbfe301b49b8d094ce9d5460e07ffe734cb893d5b90112f4dbd5d797dad611.1 (rollback)
    Version: 0.0.9
";

    #[test]
    fn parses_deployments_with_their_marks() {
        let d = parse_status(STATUS).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d[0].staged && !d[0].booted);
        assert_eq!(d[0].version.as_deref(), Some("0.2.0"));
        assert!(d[1].booted);
        assert_eq!(
            d[1].commit,
            "37dbfe301b49b8d094ce9d5460e07ffe734cb893d5b90112f4dbd5d797dad664"
        );
        assert_eq!(d[1].version.as_deref(), Some("0.1.0"));
        assert!(d[2].rollback);
        assert_eq!((d[2].index, d[2].serial), (2, 1));
    }

    #[test]
    fn unexpected_output_is_an_error_with_its_line() {
        let err = parse_status("garbage\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = parse_status("* cairn nochecksum\n").unwrap_err().to_string();
        assert!(err.contains("is not CHECKSUM.SERIAL"), "{err}");
        assert!(parse_status("").unwrap().is_empty());
    }

    #[test]
    fn a_deployment_is_made_with_exactly_the_arguments_given() {
        let kargs = vec![
            "root=LABEL=cairn-root".to_owned(),
            "console=tty0".to_owned(),
            "console=ttyS0".to_owned(),
        ];
        assert_eq!(
            deploy_args(Deploy::Staged, "c0ffee", &kargs).join(" "),
            "deploy --stage --os=cairn --karg-none --karg-append=root=LABEL=cairn-root --karg-append=console=tty0 --karg-append=console=ttyS0 c0ffee"
        );
        assert_eq!(
            deploy_args(Deploy::Now, "c0ffee", &kargs[..1]).join(" "),
            "deploy --os=cairn --karg-none --karg-append=root=LABEL=cairn-root c0ffee"
        );
    }

    #[test]
    fn kargs_files_of_a_listing_sorted_by_name() {
        let listing = "d00755 0 0      0 /usr/lib/cairn/kargs.d
-00644 0 0     40 /usr/lib/cairn/kargs.d/50-test.toml
-00644 0 0     80 /usr/lib/cairn/kargs.d/00-image.toml
-00644 0 0      3 /usr/lib/cairn/kargs.d/README
";
        assert_eq!(
            toml_files_of_listing(listing),
            [
                "/usr/lib/cairn/kargs.d/00-image.toml",
                "/usr/lib/cairn/kargs.d/50-test.toml"
            ]
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(60));
        assert!(is_permanent_pull_error("error: GPG verification enabled, but no signatures found (use gpg-verify=false in remote config to disable)"));
        assert!(!is_permanent_pull_error("error: Server returned HTTP 503"));
    }
}
