//! Where a host's provisioning config comes from, in the order they are
//! asked: the kernel argument `cairn.config.url=`, QEMU's fw_cfg key
//! `opt/com.coreos/config` (Ignition's), a NoCloud seed (a vfat or iso9660
//! volume labelled `cidata`/`CIDATA`). The parsing here is pure; the
//! readers of the running system are [`find`] and [`HttpFetch`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cairn_common::process::Cmd;
use serde::{Deserialize, Serialize};

use super::ignition::Fetch;
use crate::metadata::{self, Metadata};
use crate::platform::Platform;

/// The kernel argument naming a config URL.
pub const URL_KARG: &str = "cairn.config.url";
/// QEMU's fw_cfg file Ignition reads (`-fw_cfg name=opt/com.coreos/config,file=…`).
pub const FW_CFG_NAME: &str = "opt/com.coreos/config";
const FW_CFG_SYSFS: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// Where a NoCloud seed is mounted while it is read.
const SEED_MOUNT: &str = "/run/cairn/provision/seed";

/// Which source gave the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    KernelArgument {
        url: String,
    },
    FwCfg,
    NoCloud {
        device: String,
    },
    /// The platform's metadata: its service, or its config drive.
    Platform {
        platform: Platform,
        origin: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::KernelArgument { url } => write!(f, "{URL_KARG}={url}"),
            Source::FwCfg => write!(f, "QEMU fw_cfg {FW_CFG_NAME}"),
            Source::NoCloud { device } => write!(f, "NoCloud seed {device}"),
            Source::Platform { platform, origin } => write!(f, "{platform} metadata ({origin})"),
        }
    }
}

/// A config found, with what the source says about the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub source: Source,
    pub user_data: Vec<u8>,
    /// NoCloud's `meta-data` `instance-id` (cloud-config applies once per id).
    pub instance_id: Option<String>,
    /// NoCloud's `meta-data` `local-hostname`.
    pub local_hostname: Option<String>,
    /// NoCloud's `network-config`.
    pub network_config: Option<String>,
}

/// The value of `cairn.config.url=` on a kernel command line (the last one wins).
pub fn config_url(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(URL_KARG).and_then(|r| r.strip_prefix('=')))
        .map(str::to_owned)
}

/// NoCloud's `meta-data`: YAML (or the older `key: value` lines, which are
/// YAML too) with `instance-id` and optionally `local-hostname`.
pub fn meta_data(text: &str) -> Result<(String, Option<String>), String> {
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("meta-data is not valid YAML: {e}"))?;
    let get = |k: &str| {
        v.get(k).and_then(|x| match x {
            serde_yaml_ng::Value::String(s) => Some(s.clone()),
            serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let id = get("instance-id").ok_or("meta-data has no instance-id")?;
    Ok((id, get("local-hostname")))
}

/// The two moments of a boot provisioning runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before the network is configured (`network-pre.target`): sources on
    /// the machine (fw_cfg, a NoCloud seed), whose network configuration is
    /// then in place when networkd starts.
    Local,
    /// Once the network is up: sources on the network (`cairn.config.url=`).
    Network,
}

impl Stage {
    /// Whether this stage asks the sources, given the command line and
    /// whether the local stage found a config that fetches over the
    /// network: a config URL (first in the order) leaves the question to
    /// the network stage, which otherwise asks only for such a config.
    pub fn asks_sources(self, cmdline: &str, local_needs_network: bool) -> bool {
        let url = config_url(cmdline).is_some();
        match self {
            Stage::Local => !url,
            Stage::Network => url || local_needs_network,
        }
    }
}

/// Look for a config on this host, in order: the kernel argument's URL,
/// fw_cfg, a NoCloud seed, then the user data of the platform's metadata.
/// `Ok(None)`: no source has one. A source that is present but unreadable
/// is an error naming it.
pub fn find(cmdline: &str, fetch: &dyn Fetch, platform: Option<&Metadata>) -> Result<Option<Found>> {
    let local = find_local(cmdline, fetch)?;
    Ok(local.or_else(|| platform.and_then(from_metadata)))
}

/// The config in a platform's metadata, if it has user data.
pub fn from_metadata(m: &Metadata) -> Option<Found> {
    let user_data = m.user_data.clone()?;
    Some(Found {
        source: Source::Platform {
            platform: m.platform?,
            origin: m.origin.clone(),
        },
        user_data,
        instance_id: Some(m.instance_id.clone()),
        local_hostname: m.hostname.clone(),
        network_config: None,
    })
}

fn find_local(cmdline: &str, fetch: &dyn Fetch) -> Result<Option<Found>> {
    if let Some(url) = config_url(cmdline) {
        let user_data = fetch.fetch(&url, &[]).map_err(|e| anyhow::anyhow!("{URL_KARG}: {e}"))?;
        return Ok(Some(Found {
            source: Source::KernelArgument { url },
            user_data,
            instance_id: None,
            local_hostname: None,
            network_config: None,
        }));
    }
    if let Some(user_data) = read_fw_cfg()? {
        return Ok(Some(Found {
            source: Source::FwCfg,
            user_data,
            instance_id: None,
            local_hostname: None,
            network_config: None,
        }));
    }
    read_nocloud()
}

fn read_fw_cfg() -> Result<Option<Vec<u8>>> {
    // The driver is a module; loading it on a machine without fw_cfg fails
    // harmlessly.
    let _ = Cmd::new("modprobe").args(["-q", "qemu_fw_cfg"]).output();
    let raw = Path::new(FW_CFG_SYSFS).join(FW_CFG_NAME).join("raw");
    match std::fs::read(&raw) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", raw.display())),
    }
}

/// The device of the first volume labelled `label`, by libblkid's own probe
/// (no udev database needed).
fn device_labelled(label: &str) -> Option<String> {
    let out = Cmd::new("blkid")
        .args([
            "--list-one",
            "--match-token",
            &format!("LABEL={label}"),
            "--output",
            "device",
        ])
        .output()
        .ok()?;
    let dev = out.stdout.trim();
    (!dev.is_empty()).then(|| dev.to_owned())
}

/// Mount the volume `device` read-only at a private place, run `read` on
/// its folder, unmount.
fn with_volume<T>(device: &str, read: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let mount = PathBuf::from(SEED_MOUNT);
    std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
    Cmd::new("mount")
        .args(["-o", "ro,nosuid,nodev,noexec", device])
        .arg(&mount)
        .run()
        .with_context(|| format!("mounting {device}"))?;
    let result = read(&mount);
    let _ = Cmd::new("umount").arg(&mount).run();
    result
}

/// The first volume with one of `labels`, once udev has seen the devices
/// the kernel found late (a CD-ROM's driver is a module).
fn volume_labelled(labels: &[&str]) -> Option<String> {
    let _ = Cmd::new("udevadm").args(["settle", "--timeout=30"]).output();
    labels.iter().find_map(|l| device_labelled(l))
}

fn read_nocloud() -> Result<Option<Found>> {
    let Some(device) = volume_labelled(&["cidata", "CIDATA"]) else {
        return Ok(None);
    };
    with_volume(&device, |dir| {
        let meta = std::fs::read_to_string(dir.join("meta-data"))
            .with_context(|| format!("the NoCloud seed {device} has no meta-data"))?;
        let (instance_id, local_hostname) =
            meta_data(&meta).map_err(|e| anyhow::anyhow!("the NoCloud seed {device}: {e}"))?;
        let user_data = match std::fs::read(dir.join("user-data")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => bail!("the NoCloud seed {device}: reading user-data: {e}"),
        };
        let network_config = std::fs::read_to_string(dir.join("network-config")).ok();
        Ok(Some(Found {
            source: Source::NoCloud { device: device.clone() },
            user_data,
            instance_id: Some(instance_id),
            local_hostname,
            network_config,
        }))
    })
}

/// Azure's custom data from the provisioning media: the CD-ROM holding
/// `ovf-env.xml` (UDF, no fixed label), for when IMDS has no user data.
pub fn read_azure_custom_data() -> Result<Option<Vec<u8>>> {
    let _ = Cmd::new("udevadm").args(["settle", "--timeout=30"]).output();
    for n in 0..4 {
        let device = format!("/dev/sr{n}");
        if !Path::new(&device).exists() {
            continue;
        }
        let found = with_volume(&device, |dir| match std::fs::read_to_string(dir.join("ovf-env.xml")) {
            Ok(xml) => metadata::azure::custom_data_of_ovf_env(&xml)
                .map(|d| Some(d.unwrap_or_default()))
                .map_err(|e| anyhow::anyhow!("{device}: {e}")),
            Err(_) => Ok(None),
        });
        match found {
            Ok(Some(data)) => return Ok((!data.is_empty()).then_some(data)),
            // An empty drive, or one without ovf-env.xml: the next.
            Ok(None) => {}
            Err(e) if format!("{e:#}").contains("ovf-env.xml") => return Err(e),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// The platforms whose metadata may come on a config drive (a volume
/// labelled `config-2` in OpenStack's layout).
pub fn has_config_drive(platform: Platform) -> bool {
    matches!(platform, Platform::Openstack | Platform::Huawei | Platform::Tencent)
}

/// The platform's config drive, if it has one attached.
pub fn read_config_drive(platform: Platform) -> Result<Option<Metadata>> {
    let Some(device) = volume_labelled(&["config-2", "CONFIG-2"]) else {
        return Ok(None);
    };
    with_volume(&device, |dir| {
        let latest = dir.join("openstack/latest");
        let meta = std::fs::read(latest.join("meta_data.json"))
            .with_context(|| format!("the config drive {device} has no openstack/latest/meta_data.json"))?;
        let user_data = std::fs::read(latest.join("user_data")).ok();
        let origin = format!("config drive {device}");
        let mut m = metadata::openstack::parse(platform, &meta, user_data, &origin)?;
        m.origin = origin;
        Ok(Some(m))
    })
}

/// HTTP(S) with a timeout per attempt and bounded retries: a server that
/// never answers costs at most `attempts` × (`timeout` + backoff).
pub struct HttpFetch {
    pub attempts: u32,
    pub timeout: Duration,
}

impl Default for HttpFetch {
    fn default() -> Self {
        HttpFetch {
            attempts: 5,
            timeout: Duration::from_secs(20),
        }
    }
}

impl Fetch for HttpFetch {
    fn fetch(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP client: {e}"))?;
        let client = crate::metadata::host::http_client(reqwest::Client::builder().timeout(self.timeout))?;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut req = client.get(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let result = runtime.block_on(async {
                let resp = req.send().await.map_err(|e| (true, format!("{url}: {e}")))?;
                let status = resp.status();
                if status.is_server_error() || status.as_u16() == 429 {
                    return Err((true, format!("{url}: {status}")));
                }
                if !status.is_success() {
                    return Err((false, format!("{url}: {status}")));
                }
                resp.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| (true, format!("{url}: reading the body: {e}")))
            });
            match result {
                Ok(body) => return Ok(body),
                Err((false, e)) => return Err(e),
                Err((true, e)) => {
                    tracing::warn!(attempt, attempts = self.attempts, "{e}");
                    last = e;
                    if attempt < self.attempts {
                        std::thread::sleep(Duration::from_secs(1 << attempt.min(4)));
                    }
                }
            }
        }
        Err(format!("{last} (gave up after {} attempts)", self.attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_url_is_read_from_the_command_line() {
        assert_eq!(
            config_url("root=x cairn.config.url=http://10.0.2.100/c.ign quiet").as_deref(),
            Some("http://10.0.2.100/c.ign")
        );
        assert_eq!(
            config_url("a=b cairn.config.url=x cairn.config.url=y").as_deref(),
            Some("y")
        );
        assert_eq!(config_url("cairn.config.urlx=1 root=x"), None);
    }

    #[test]
    fn a_config_url_moves_the_question_to_the_network_stage() {
        let url = "root=x cairn.config.url=http://h/c.ign";
        assert!(!Stage::Local.asks_sources(url, false));
        assert!(Stage::Network.asks_sources(url, false));
        assert!(Stage::Local.asks_sources("root=x", false));
        assert!(!Stage::Network.asks_sources("root=x", false));
        // A local config that fetches is the network stage's too.
        assert!(Stage::Network.asks_sources("root=x", true));
    }

    #[test]
    fn nocloud_meta_data_gives_the_instance() {
        assert_eq!(
            meta_data("instance-id: iid-local01\nlocal-hostname: cloudimg\n").unwrap(),
            ("iid-local01".into(), Some("cloudimg".into()))
        );
        assert_eq!(meta_data("{instance-id: 42}").unwrap(), ("42".into(), None));
        assert!(meta_data("local-hostname: x\n").unwrap_err().contains("no instance-id"));
        assert!(meta_data(": [").unwrap_err().contains("not valid YAML"));
    }
}
