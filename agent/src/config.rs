//! The agent's configuration: TOML drop-ins merged in systemd's manner.
//!
//! Files named `*.toml` are read from `/usr/lib/cairn/agent.d` (shipped in
//! the image) and `/etc/cairn/agent.d` (the host's own); a file in `/etc`
//! shadows the file of the same name in `/usr/lib`. The files are applied in
//! the order of their names, each key of a later file replacing the same key
//! of an earlier one. Every file is checked on its own, so each error names
//! its file, line and column. Parsing and merging are pure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_common::fsutil::line_col;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where the image's drop-ins live (read-only, part of each deployment).
pub const IMAGE_DIR: &str = "/usr/lib/cairn/agent.d";
/// Where the host's own drop-ins live.
pub const HOST_DIR: &str = "/etc/cairn/agent.d";

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Line and column, 1-based, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// When the agent may reboot into a staged update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum RebootStrategy {
    /// As soon as the update is staged.
    Immediate,
    /// Only inside a maintenance window (days of the week, start, length,
    /// time zone).
    MaintenanceWindow(crate::schedule::Window),
    /// Only holding a slot of a FleetLock server's (Zincati's protocol):
    /// `POST <url>/v1/pre-reboot` before rebooting, `POST
    /// <url>/v1/steady-state` once committed and at every start.
    FleetLock { url: String, group: String },
    /// kured drains the node and reboots it: the agent writes kured's
    /// sentinel (`/var/run/reboot-required`) once an update is staged.
    Kured,
    /// The agent drains its Kubernetes node first, holding a slot (a
    /// Lease) of its group: see [`crate::kubernetes`].
    Kubernetes(crate::kubernetes::Settings),
    /// Never by itself: an operator reboots.
    Off,
}

/// The merged configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Base URL of the update repository (`<url>/tuf/…`, `<url>/ostree/…`).
    pub url: Option<String>,
    /// Release stream the host follows.
    pub stream: String,
    /// Whether the daemon checks for and stages updates by itself.
    pub auto_update: bool,
    pub check_interval: Duration,
    /// Up to this much is added at random to every check interval, so a
    /// fleet does not check at the same moment.
    pub check_jitter: Duration,
    pub reboot: RebootStrategy,
    /// Everything the health gate checks must pass within this time.
    pub health_timeout: Duration,
    /// Each executable of the `health.d` folders must finish within this time.
    pub health_check_timeout: Duration,
    /// Whether the health gate asks containerd for its version.
    pub health_containerd: bool,
    /// Boots a trial deployment gets before GRUB falls back.
    pub boot_tries: u32,
    /// Retries of one download before a check fails.
    pub download_retries: u32,
    /// A download that receives nothing for this long is abandoned (and retried).
    pub download_stall_timeout: Duration,
    /// The image's default user (provisioning gives it SSH keys).
    pub default_user: String,
    /// NTP servers by cloud platform (`[platform.ec2] ntp = [...]`), used
    /// on a host that platform detection puts there.
    pub ntp: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: None,
            stream: "stable".into(),
            auto_update: true,
            check_interval: Duration::from_secs(6 * 3600),
            check_jitter: Duration::from_secs(30 * 60),
            reboot: RebootStrategy::Immediate,
            health_timeout: Duration::from_secs(600),
            health_check_timeout: Duration::from_secs(120),
            health_containerd: true,
            boot_tries: 3,
            download_retries: 5,
            download_stall_timeout: Duration::from_secs(60),
            default_user: "cairn".into(),
            ntp: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default)]
    update: UpdateSection,
    #[serde(default)]
    reboot: RebootSection,
    #[serde(default)]
    health: HealthSection,
    #[serde(default)]
    boot: BootSection,
    #[serde(default)]
    provision: ProvisionSection,
    /// Facts of each cloud platform, by its name.
    #[serde(default)]
    platform: std::collections::BTreeMap<String, toml::Spanned<PlatformSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PlatformSection {
    ntp: Option<Vec<toml::Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProvisionSection {
    default_user: Option<toml::Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UpdateSection {
    url: Option<toml::Spanned<String>>,
    stream: Option<toml::Spanned<String>>,
    auto: Option<bool>,
    check_interval: Option<toml::Spanned<String>>,
    check_jitter: Option<toml::Spanned<String>>,
    download_retries: Option<toml::Spanned<u32>>,
    download_stall_timeout: Option<toml::Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RebootSection {
    strategy: Option<toml::Spanned<String>>,
    /// `HH:MM`, local time.
    window_start: Option<toml::Spanned<String>>,
    window_length: Option<toml::Spanned<String>>,
    /// `["mon", …]`: the days windows start on (every day by default).
    window_days: Option<Vec<toml::Spanned<String>>>,
    /// An IANA time zone (`UTC` by default).
    window_time_zone: Option<toml::Spanned<String>>,
    /// The FleetLock server's base URL.
    fleet_lock_url: Option<toml::Spanned<String>>,
    /// This node's FleetLock group.
    fleet_lock_group: Option<toml::Spanned<String>>,
    kubeconfig: Option<toml::Spanned<String>>,
    kubernetes_node_name: Option<toml::Spanned<String>>,
    kubernetes_group: Option<toml::Spanned<String>>,
    kubernetes_max_unavailable: Option<toml::Spanned<u32>>,
    kubernetes_lease_namespace: Option<toml::Spanned<String>>,
    kubernetes_lease_duration: Option<toml::Spanned<String>>,
    drain_timeout: Option<toml::Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HealthSection {
    timeout: Option<toml::Spanned<String>>,
    check_timeout: Option<toml::Spanned<String>>,
    containerd: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BootSection {
    tries: Option<toml::Spanned<u32>>,
}

/// What a reboot into a staged update may take before its health gate
/// starts: a Kubernetes slot lasts at least this plus the health timeout.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(300);

/// The reboot settings seen so far; checked once all files are merged,
/// because the strategy and its window may come from different files.
#[derive(Debug, Default)]
struct PendingReboot {
    strategy: Option<(String, Located)>,
    window_start: Option<(u32, Located)>,
    window_length: Option<(Duration, Located)>,
    window_days: Option<[bool; 7]>,
    window_time_zone: Option<String>,
    fleet_lock_url: Option<String>,
    fleet_lock_group: Option<String>,
    kubernetes: crate::kubernetes::Settings,
}

#[derive(Debug, Clone)]
struct Located {
    file: PathBuf,
    at: (usize, usize),
}

/// Merges drop-in files one by one, in order.
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    config: Config,
    reboot: PendingReboot,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one drop-in file's text on top of what was applied before.
    pub fn apply(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let parsed: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            ConfigError {
                file: file.to_owned(),
                at,
                message: e.message().to_owned(),
            }
        })?;
        let locate = |span: std::ops::Range<usize>| Located {
            file: file.to_owned(),
            at: line_col(text, span.start),
        };
        let err = |span: std::ops::Range<usize>, message: String| ConfigError {
            file: file.to_owned(),
            at: Some(line_col(text, span.start)),
            message,
        };
        let duration = |v: &toml::Spanned<String>| -> Result<Duration, ConfigError> {
            parse_duration(v.get_ref()).map_err(|m| err(v.span(), m))
        };
        // A server's base URL, without its trailing `/`.
        let http_url = |what: &str, v: &toml::Spanned<String>| -> Result<String, ConfigError> {
            let url = v.get_ref().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
                return Err(err(
                    v.span(),
                    format!("{what} `{}` is not an http:// or https:// URL", v.get_ref()),
                ));
            }
            Ok(url.to_owned())
        };

        let u = parsed.update;
        if let Some(url) = u.url {
            self.config.url = Some(http_url("update url", &url)?);
        }
        if let Some(stream) = u.stream {
            let s = stream.get_ref();
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(err(
                    stream.span(),
                    format!("stream `{s}` must be letters, digits, `-` or `_`"),
                ));
            }
            self.config.stream = s.clone();
        }
        if let Some(auto) = u.auto {
            self.config.auto_update = auto;
        }
        if let Some(v) = u.check_interval {
            let d = duration(&v)?;
            if d < Duration::from_secs(60) {
                return Err(err(v.span(), "check-interval must be at least 1m".into()));
            }
            self.config.check_interval = d;
        }
        if let Some(v) = u.check_jitter {
            self.config.check_jitter = duration(&v)?;
        }
        if let Some(v) = u.download_retries {
            self.config.download_retries = *v.get_ref();
        }
        if let Some(v) = u.download_stall_timeout {
            let d = duration(&v)?;
            if d.is_zero() {
                return Err(err(v.span(), "download-stall-timeout must be more than 0".into()));
            }
            self.config.download_stall_timeout = d;
        }

        let r = parsed.reboot;
        if let Some(v) = r.strategy {
            let s = v.get_ref().as_str();
            if !matches!(
                s,
                "immediate" | "maintenance-window" | "fleet-lock" | "kubernetes" | "kured" | "off"
            ) {
                return Err(err(
                    v.span(),
                    format!(
                        "reboot strategy `{s}` is not one of immediate, maintenance-window, fleet-lock, kubernetes, kured, off"
                    ),
                ));
            }
            self.reboot.strategy = Some((s.to_owned(), locate(v.span())));
        }
        if let Some(v) = r.window_start {
            let minute = parse_clock(v.get_ref()).map_err(|m| err(v.span(), m))?;
            self.reboot.window_start = Some((minute, locate(v.span())));
        }
        if let Some(v) = r.window_length {
            let d = duration(&v)?;
            if d < Duration::from_secs(60) || d > Duration::from_secs(24 * 3600) {
                return Err(err(v.span(), "window-length must be between 1m and 24h".into()));
            }
            self.reboot.window_length = Some((d, locate(v.span())));
        }
        if let Some(days) = r.window_days {
            let mut set = [false; 7];
            for v in &days {
                let name = v.get_ref().to_ascii_lowercase();
                let i = crate::schedule::DAYS
                    .iter()
                    .position(|d| name == *d || (name.len() > 3 && name.starts_with(d) && name.ends_with("day")))
                    .ok_or_else(|| {
                        err(
                            v.span(),
                            format!(
                                "window-days: `{}` is not a day (mon, tue, wed, thu, fri, sat, sun)",
                                v.get_ref()
                            ),
                        )
                    })?;
                set[i] = true;
            }
            if !set.contains(&true) {
                return Err(ConfigError {
                    file: file.to_owned(),
                    at: None,
                    message: "window-days names no day: the window would never open".into(),
                });
            }
            self.reboot.window_days = Some(set);
        }
        if let Some(v) = r.window_time_zone {
            jiff::tz::TimeZone::get(v.get_ref()).map_err(|e| {
                err(
                    v.span(),
                    format!("window-time-zone `{}` is not a known time zone: {e}", v.get_ref()),
                )
            })?;
            self.reboot.window_time_zone = Some(v.get_ref().clone());
        }
        if let Some(v) = r.fleet_lock_url {
            self.reboot.fleet_lock_url = Some(http_url("fleet-lock-url", &v)?);
        }
        if let Some(v) = r.fleet_lock_group {
            let g = v.get_ref();
            // Zincati's rule for group names (`^[a-zA-Z0-9.-]+$`), so a
            // fleet moving from Zincati keeps its groups.
            let ok = !g.is_empty() && g.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok {
                return Err(err(
                    v.span(),
                    format!("fleet-lock-group `{g}` must be letters, digits, `.` and `-` (Zincati's rule)"),
                ));
            }
            self.reboot.fleet_lock_group = Some(g.clone());
        }
        let k = &mut self.reboot.kubernetes;
        if let Some(v) = r.kubeconfig {
            if !v.get_ref().starts_with('/') {
                return Err(err(
                    v.span(),
                    format!("kubeconfig `{}` is not an absolute path", v.get_ref()),
                ));
            }
            k.kubeconfig = v.get_ref().into();
        }
        if let Some(v) = r.kubernetes_node_name {
            crate::kubernetes::check_group(v.get_ref())
                .map_err(|e| err(v.span(), format!("kubernetes-node-name {e}")))?;
            k.node_name = Some(v.get_ref().clone());
        }
        if let Some(v) = r.kubernetes_group {
            crate::kubernetes::check_group(v.get_ref()).map_err(|e| err(v.span(), format!("kubernetes-group {e}")))?;
            k.group = v.get_ref().clone();
        }
        if let Some(v) = r.kubernetes_max_unavailable {
            if *v.get_ref() == 0 {
                return Err(err(v.span(), "kubernetes-max-unavailable must be at least 1".into()));
            }
            k.max_unavailable = *v.get_ref();
        }
        if let Some(v) = r.kubernetes_lease_namespace {
            crate::kubernetes::check_namespace(v.get_ref())
                .map_err(|e| err(v.span(), format!("kubernetes-lease-namespace {e}")))?;
            k.lease_namespace = v.get_ref().clone();
        }
        if let Some(v) = r.kubernetes_lease_duration {
            let d = duration(&v)?;
            if d < Duration::from_secs(300) {
                return Err(err(
                    v.span(),
                    "kubernetes-lease-duration must be at least 5m: a node must reboot and commit within it".into(),
                ));
            }
            k.lease_duration = d;
        }
        if let Some(v) = r.drain_timeout {
            let d = duration(&v)?;
            if d.is_zero() {
                return Err(err(v.span(), "drain-timeout must be more than 0".into()));
            }
            k.drain_timeout = d;
        }

        let h = parsed.health;
        if let Some(v) = h.timeout {
            self.config.health_timeout = duration(&v)?;
        }
        if let Some(v) = h.check_timeout {
            self.config.health_check_timeout = duration(&v)?;
        }
        if let Some(v) = h.containerd {
            self.config.health_containerd = v;
        }

        if let Some(v) = parsed.provision.default_user {
            let name = v.get_ref();
            if let Err(e) = crate::provision::plan::check_account_name(name) {
                return Err(err(v.span(), format!("default-user: {e}")));
            }
            self.config.default_user = name.clone();
        }

        for (name, section) in parsed.platform {
            cairn_common::layout::check_cloud_platform(&name)
                .map_err(|e| err(section.span(), format!("[platform.{name}]: {e}")))?;
            if let Some(servers) = &section.get_ref().ntp {
                let mut list = Vec::new();
                for v in servers {
                    cairn_common::layout::check_ntp_server(v.get_ref())
                        .map_err(|e| err(v.span(), format!("ntp: {e}")))?;
                    list.push(v.get_ref().clone());
                }
                self.config.ntp.insert(name, list);
            }
        }

        if let Some(v) = parsed.boot.tries {
            let n = *v.get_ref();
            if !(1..=cairn_common::bootcfg::MAX_TRIES).contains(&n) {
                return Err(err(
                    v.span(),
                    format!("boot tries must be 1 to {}, not {n}", cairn_common::bootcfg::MAX_TRIES),
                ));
            }
            self.config.boot_tries = n;
        }
        Ok(())
    }

    /// The merged configuration, once every file is applied.
    pub fn finish(self) -> Result<Config, ConfigError> {
        let mut config = self.config;
        let p = self.reboot;
        config.reboot = match p.strategy.as_ref().map(|(s, _)| s.as_str()) {
            None | Some("immediate") => RebootStrategy::Immediate,
            Some("off") => RebootStrategy::Off,
            Some("kured") => RebootStrategy::Kured,
            Some("kubernetes") => {
                // A slot must outlast the reboot and the health gate, or a
                // second node goes down while this one is on trial.
                let needed = config.health_timeout + BOOT_ALLOWANCE;
                if p.kubernetes.lease_duration < needed {
                    let (_, at) = p.strategy.as_ref().expect("matched Some");
                    return Err(ConfigError {
                        file: at.file.clone(),
                        at: Some(at.at),
                        message: format!(
                            "kubernetes-lease-duration ({}s) must be at least the health timeout plus {}s for the reboot ({}s)",
                            p.kubernetes.lease_duration.as_secs(),
                            BOOT_ALLOWANCE.as_secs(),
                            needed.as_secs()
                        ),
                    });
                }
                RebootStrategy::Kubernetes(p.kubernetes.clone())
            }
            Some("fleet-lock") => {
                let (_, at) = p.strategy.as_ref().expect("matched Some");
                let url = p.fleet_lock_url.clone().ok_or_else(|| ConfigError {
                    file: at.file.clone(),
                    at: Some(at.at),
                    message: "reboot strategy fleet-lock needs fleet-lock-url".into(),
                })?;
                RebootStrategy::FleetLock {
                    url,
                    group: p.fleet_lock_group.clone().unwrap_or_else(|| "default".into()),
                }
            }
            Some(_) => {
                let (_, at) = p.strategy.as_ref().expect("matched Some");
                let start = p.window_start.as_ref().ok_or_else(|| ConfigError {
                    file: at.file.clone(),
                    at: Some(at.at),
                    message: "reboot strategy maintenance-window needs window-start (HH:MM)".into(),
                })?;
                let length = p.window_length.as_ref().ok_or_else(|| ConfigError {
                    file: at.file.clone(),
                    at: Some(at.at),
                    message: "reboot strategy maintenance-window needs window-length".into(),
                })?;
                RebootStrategy::MaintenanceWindow(crate::schedule::Window {
                    start_minute: start.0,
                    length: length.0,
                    days: p.window_days.unwrap_or([true; 7]),
                    time_zone: p.window_time_zone.clone().unwrap_or_else(|| "UTC".into()),
                })
            }
        };
        if config.health_check_timeout > config.health_timeout {
            config.health_check_timeout = config.health_timeout;
        }
        Ok(config)
    }
}

/// The drop-in files to read, in the order they apply: names from both
/// folders, sorted; `/etc`'s file wins over `/usr/lib`'s of the same name.
pub fn drop_in_files(dirs: &[&Path]) -> anyhow::Result<Vec<PathBuf>> {
    crate::dropins::merged(dirs, |p| p.extension().is_some_and(|e| e == "toml"))
}

/// Load the configuration from drop-in folders (later folders shadow earlier).
pub fn load(dirs: &[&Path]) -> anyhow::Result<Config> {
    let mut builder = ConfigBuilder::new();
    for file in drop_in_files(dirs)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        builder.apply(&file, &text)?;
    }
    Ok(builder.finish()?)
}

/// The configuration of this host.
pub fn load_host() -> anyhow::Result<Config> {
    load(&[Path::new(IMAGE_DIR), Path::new(HOST_DIR)])
}

pub use cairn_common::duration::parse as parse_duration;

/// `HH:MM` → minutes after midnight.
fn parse_clock(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a time of day as HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || s.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut b = ConfigBuilder::new();
        for (name, text) in files {
            b.apply(Path::new(name), text)?;
        }
        b.finish()
    }

    #[test]
    fn later_files_override_key_by_key() {
        let c = merged(&[
            (
                "10-image.toml",
                "[update]\nurl = \"http://10.0.2.100/\"\nstream = \"stable\"\ncheck-interval = \"6h\"\n",
            ),
            ("50-host.toml", "[update]\nstream = \"canary\"\n[boot]\ntries = 2\n"),
        ])
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://10.0.2.100"));
        assert_eq!(c.stream, "canary");
        assert_eq!(c.check_interval, Duration::from_secs(6 * 3600));
        assert_eq!(c.boot_tries, 2);
        assert_eq!(c.reboot, RebootStrategy::Immediate);
    }

    #[test]
    fn etc_shadows_usr_lib_file_of_the_same_name() {
        let image = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(image.path().join("10-update.toml"), "[update]\nstream = \"a\"\n").unwrap();
        std::fs::write(image.path().join("20-boot.toml"), "[boot]\ntries = 4\n").unwrap();
        std::fs::write(host.path().join("10-update.toml"), "[update]\nstream = \"b\"\n").unwrap();
        std::fs::write(host.path().join("notes.txt"), "ignored").unwrap();
        let files = drop_in_files(&[image.path(), host.path()]).unwrap();
        assert_eq!(
            files,
            vec![host.path().join("10-update.toml"), image.path().join("20-boot.toml")]
        );
        let c = load(&[image.path(), host.path()]).unwrap();
        assert_eq!((c.stream.as_str(), c.boot_tries), ("b", 4));
        // Missing folders are no configuration, not an error.
        assert_eq!(load(&[Path::new("/nonexistent/cairn")]).unwrap(), Config::default());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = merged(&[("a.toml", "[update]\nstream = \"x\"\nspeed = 3\n")]).unwrap_err();
        assert_eq!(e.file, Path::new("a.toml"));
        assert_eq!(e.at, Some((3, 1)), "{e}");
        assert!(e.message.contains("unknown field `speed`"), "{e}");
        let e = merged(&[("b.toml", "[update]\ncheck-interval = \"soon\"\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "b.toml:2:18: `soon` is not a duration (examples: 90s, 15m, 6h, 1h30m)"
        );
        let e = merged(&[("c.toml", "[boot]\ntries = 12\n")]).unwrap_err();
        assert!(
            e.to_string().starts_with("c.toml:2:9: boot tries must be 1 to 9"),
            "{e}"
        );
        let e = merged(&[("d.toml", "[update\n")]).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
        let e = merged(&[("e.toml", "[update]\nurl = \"ftp://x\"\n")]).unwrap_err();
        assert!(e.to_string().contains("not an http:// or https:// URL"), "{e}");
    }

    #[test]
    fn each_cloud_s_ntp_servers_are_a_fact_of_the_image_a_host_may_override() {
        let c = merged(&[
            ("00-image.toml", "[platform.ec2]\nntp = [\"169.254.169.123\"]\n\n[platform.aliyun]\nntp = [\"ntp.cloud.aliyuncs.com\"]\n"),
            ("50-site.toml", "[platform.ec2]\nntp = [\"time.example.net\"]\n"),
        ])
        .unwrap();
        assert_eq!(c.ntp["ec2"], ["time.example.net"]);
        assert_eq!(c.ntp["aliyun"], ["ntp.cloud.aliyuncs.com"]);
        let e = merged(&[("f.toml", "[platform.aws]\nntp = [\"x\"]\n")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f.toml:1:1: [platform.aws]: not a cloud platform (one of: ec2, gce,"),
            "{e}"
        );
        let e = merged(&[("g.toml", "[platform.gce]\nntp = [\"a b\"]\n")]).unwrap_err();
        assert_eq!(e.to_string(), "g.toml:2:8: ntp: `a b` is not a host name or address");
    }

    #[test]
    fn kubernetes_takes_its_settings_and_refuses_bad_ones_where_they_are() {
        let c = merged(&[(
            "k.toml",
            "[reboot]\nstrategy = \"kubernetes\"\nkubeconfig = \"/etc/k\"\nkubernetes-group = \"zone-a\"\nkubernetes-max-unavailable = 2\ndrain-timeout = \"5m\"\n",
        )])
        .unwrap();
        assert_eq!(
            c.reboot,
            RebootStrategy::Kubernetes(crate::kubernetes::Settings {
                kubeconfig: "/etc/k".into(),
                group: "zone-a".into(),
                max_unavailable: 2,
                drain_timeout: Duration::from_secs(300),
                ..crate::kubernetes::Settings::default()
            })
        );
        let e = |t: &str| merged(&[("k.toml", t)]).unwrap_err().to_string();
        assert_eq!(
            e("[reboot]\nkubernetes-group = \"Zone_A\"\n"),
            "k.toml:2:20: kubernetes-group `Zone_A` must be lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (it names Leases)"
        );
        assert_eq!(
            e("[reboot]\nkubernetes-max-unavailable = 0\n"),
            "k.toml:2:30: kubernetes-max-unavailable must be at least 1"
        );
        assert_eq!(
            e("[reboot]\nkubeconfig = \"kube.yaml\"\n"),
            "k.toml:2:14: kubeconfig `kube.yaml` is not an absolute path"
        );
        assert!(e("[reboot]\nkubernetes-lease-duration = \"1m\"\n")
            .starts_with("k.toml:2:29: kubernetes-lease-duration must be at least 5m"));
        assert_eq!(
            e("[reboot]\nstrategy = \"kubernetes\"\nkubernetes-lease-duration = \"10m\"\n"),
            "k.toml:2:12: kubernetes-lease-duration (600s) must be at least the health timeout plus 300s for the reboot (900s)"
        );
        assert!(e("[reboot]\nkubernetes-lease-namespace = \"kube.system\"\n").contains("(a namespace)"));
    }

    #[test]
    fn fleet_lock_needs_its_server_and_takes_zincati_s_group_names() {
        let c = merged(&[
            ("10.toml", "[reboot]\nstrategy = \"fleet-lock\"\n"),
            (
                "20.toml",
                "[reboot]\nfleet-lock-url = \"http://lock.example:8080/\"\nfleet-lock-group = \"workers-1\"\n",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.reboot,
            RebootStrategy::FleetLock {
                url: "http://lock.example:8080".into(),
                group: "workers-1".into()
            }
        );
        let c = merged(&[(
            "a.toml",
            "[reboot]\nstrategy = \"fleet-lock\"\nfleet-lock-url = \"https://lock\"\n",
        )])
        .unwrap();
        assert_eq!(
            c.reboot,
            RebootStrategy::FleetLock {
                url: "https://lock".into(),
                group: "default".into()
            }
        );
        let e = merged(&[("a.toml", "[reboot]\nstrategy = \"fleet-lock\"\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.toml:2:12: reboot strategy fleet-lock needs fleet-lock-url"
        );
        let e = merged(&[("a.toml", "[reboot]\nfleet-lock-url = \"lock:8080\"\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.toml:2:18: fleet-lock-url `lock:8080` is not an http:// or https:// URL"
        );
        let e = merged(&[("a.toml", "[reboot]\nfleet-lock-group = \"workers/1\"\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.toml:2:20: fleet-lock-group `workers/1` must be letters, digits, `.` and `-` (Zincati's rule)"
        );
        assert!(merged(&[("a.toml", "[reboot]\nfleet-lock-group = \"Zone.a-1\"\n")]).is_ok());
        let c = merged(&[("a.toml", "[reboot]\nstrategy = \"kured\"\n")]).unwrap();
        assert_eq!(c.reboot, RebootStrategy::Kured);
    }

    #[test]
    fn maintenance_window_may_be_split_across_files_but_must_be_complete() {
        let c = merged(&[
            (
                "10.toml",
                "[reboot]\nwindow-start = \"03:30\"\nwindow-length = \"2h\"\n",
            ),
            ("20.toml", "[reboot]\nstrategy = \"maintenance-window\"\n"),
        ])
        .unwrap();
        assert_eq!(
            c.reboot,
            RebootStrategy::MaintenanceWindow(crate::schedule::Window::daily_utc(210, Duration::from_secs(7200)))
        );
        let c = merged(&[(
            "w.toml",
            "[reboot]\nstrategy = \"maintenance-window\"\nwindow-start = \"03:30\"\nwindow-length = \"2h\"\nwindow-days = [\"sat\", \"Sunday\"]\nwindow-time-zone = \"Asia/Shanghai\"\n",
        )])
        .unwrap();
        assert_eq!(
            c.reboot,
            RebootStrategy::MaintenanceWindow(crate::schedule::Window {
                start_minute: 210,
                length: Duration::from_secs(7200),
                days: [false, false, false, false, false, true, true],
                time_zone: "Asia/Shanghai".into(),
            })
        );
        let e = merged(&[("w.toml", "[reboot]\nwindow-days = [\"sat\", \"caturday\"]\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w.toml:2:23: window-days: `caturday` is not a day (mon, tue, wed, thu, fri, sat, sun)"
        );
        let e = merged(&[("w.toml", "[reboot]\nwindow-time-zone = \"Mars/Olympus\"\n")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("w.toml:2:20: window-time-zone `Mars/Olympus` is not a known time zone"),
            "{e}"
        );
        let e = merged(&[("w.toml", "[reboot]\nstrategy = \"maintenance-window\"\n")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w.toml:2:12: reboot strategy maintenance-window needs window-start (HH:MM)"
        );
        let e = merged(&[("w.toml", "[reboot]\nwindow-start = \"25:00\"\n")]).unwrap_err();
        assert!(e.to_string().contains("not a time of day"), "{e}");
    }
}
