//! Which platform the host runs on (pure): from the firmware's DMI strings,
//! as cloud-init's `ds-identify` reads them, or from `cairn.platform=` on
//! the kernel command line. Only the detected platform's metadata service
//! is ever asked: a host never probes an address its platform does not own.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A platform whose metadata Cairn reads (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// AWS EC2 (IMDSv2, IMDSv1 where the token call is refused).
    Ec2,
    /// Google Compute Engine.
    Gce,
    /// Microsoft Azure (IMDS and the WireServer's ready report).
    Azure,
    /// OpenStack (config drive `config-2`, then the metadata service).
    Openstack,
    /// Tencent Cloud CVM.
    Tencent,
    /// Alibaba Cloud ECS (with the hardened-mode token).
    Aliyun,
    /// Huawei Cloud ECS (OpenStack-compatible metadata).
    Huawei,
    /// QEMU without a cloud: fw_cfg and NoCloud only.
    Qemu,
    /// Anything else (bare metal, an unknown hypervisor): local sources only.
    Metal,
}

impl Platform {
    pub const ALL: [Platform; 9] = [
        Platform::Ec2,
        Platform::Gce,
        Platform::Azure,
        Platform::Openstack,
        Platform::Tencent,
        Platform::Aliyun,
        Platform::Huawei,
        Platform::Qemu,
        Platform::Metal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Platform::Ec2 => "ec2",
            Platform::Gce => "gce",
            Platform::Azure => "azure",
            Platform::Openstack => "openstack",
            Platform::Tencent => "tencent",
            Platform::Aliyun => "aliyun",
            Platform::Huawei => "huawei",
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
        }
    }

    /// Whether the platform has a metadata service to ask.
    pub fn is_cloud(self) -> bool {
        !matches!(self, Platform::Qemu | Platform::Metal)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Platform::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            format!(
                "`{s}` is not a platform (one of: {})",
                Platform::ALL.map(Platform::name).join(", ")
            )
        })
    }
}

/// The DMI strings detection reads (`/sys/class/dmi/id/*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub product_serial: String,
    pub product_uuid: String,
    pub chassis_asset_tag: String,
}

impl Dmi {
    /// Read the strings under `dir` (`/sys/class/dmi/id`); one that is
    /// missing or unreadable (`product_serial` is root's only) is empty.
    pub fn read(dir: &Path) -> Dmi {
        let get = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Dmi {
            sys_vendor: get("sys_vendor"),
            product_name: get("product_name"),
            product_serial: get("product_serial"),
            product_uuid: get("product_uuid"),
            chassis_asset_tag: get("chassis_asset_tag"),
        }
    }
}

/// Azure's chassis asset tag (every Azure VM carries it).
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// The platform the DMI strings say, by the rules of cloud-init's
/// `ds-identify` (Tencent's, which it lacks, from the strings Tencent's
/// CVM firmware reports).
pub fn from_dmi(d: &Dmi) -> Platform {
    let lower = |s: &str| s.to_ascii_lowercase();
    if d.chassis_asset_tag == AZURE_ASSET_TAG {
        return Platform::Azure;
    }
    // Huawei Cloud's firmware also says "OpenStack Nova": its tag decides.
    if d.chassis_asset_tag == "HUAWEICLOUD" {
        return Platform::Huawei;
    }
    if d.sys_vendor == "Amazon EC2"
        || (lower(&d.product_uuid).starts_with("ec2") && lower(&d.product_serial).starts_with("ec2"))
    {
        return Platform::Ec2;
    }
    if d.product_name == "Google Compute Engine" || d.product_serial.starts_with("GoogleCloud") {
        return Platform::Gce;
    }
    if d.product_name == "Alibaba Cloud ECS" {
        return Platform::Aliyun;
    }
    if d.sys_vendor == "Tencent Cloud" || (d.product_name == "CVM" && d.sys_vendor.contains("Tencent")) {
        return Platform::Tencent;
    }
    if matches!(d.product_name.as_str(), "OpenStack Nova" | "OpenStack Compute")
        || matches!(d.chassis_asset_tag.as_str(), "OpenTelekomCloud" | "SAP CCloud VM")
        || d.sys_vendor == "OpenStack Foundation"
    {
        return Platform::Openstack;
    }
    if d.sys_vendor == "QEMU" {
        return Platform::Qemu;
    }
    Platform::Metal
}

/// How the platform was decided, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    pub platform: Platform,
    /// `dmi` or `kernel argument`.
    pub by: String,
    /// A `cairn.platform=` that named no platform (detection was used).
    pub error: Option<String>,
}

/// The platform: `cairn.platform=` when the command line names one,
/// else the DMI strings'.
pub fn detect(cmdline: &str, dmi: &Dmi) -> Detected {
    let asked = cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("cairn.platform="));
    match asked.map(Platform::from_str) {
        Some(Ok(platform)) => Detected {
            platform,
            by: "kernel argument".into(),
            error: None,
        },
        Some(Err(e)) => Detected {
            platform: from_dmi(dmi),
            by: "dmi".into(),
            error: Some(format!("cairn.platform={}: {e}", asked.unwrap_or_default())),
        },
        None => Detected {
            platform: from_dmi(dmi),
            by: "dmi".into(),
            error: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(vendor: &str, product: &str, tag: &str) -> Dmi {
        Dmi {
            sys_vendor: vendor.into(),
            product_name: product.into(),
            chassis_asset_tag: tag.into(),
            ..Dmi::default()
        }
    }

    #[test]
    fn each_cloud_is_known_by_its_firmware_strings() {
        let cases = [
            (dmi("Amazon EC2", "m6i.large", "Amazon EC2"), Platform::Ec2),
            (dmi("Google", "Google Compute Engine", ""), Platform::Gce),
            (
                dmi("Microsoft Corporation", "Virtual Machine", AZURE_ASSET_TAG),
                Platform::Azure,
            ),
            (dmi("OpenStack Foundation", "OpenStack Nova", ""), Platform::Openstack),
            (dmi("Tencent Cloud", "CVM", ""), Platform::Tencent),
            (dmi("Alibaba Cloud", "Alibaba Cloud ECS", ""), Platform::Aliyun),
            (
                dmi("OpenStack Foundation", "OpenStack Nova", "HUAWEICLOUD"),
                Platform::Huawei,
            ),
            (dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", ""), Platform::Qemu),
            (dmi("Supermicro", "SYS-1029P", ""), Platform::Metal),
            (Dmi::default(), Platform::Metal),
        ];
        for (d, want) in cases {
            assert_eq!(from_dmi(&d), want, "{d:?}");
        }
        // A Xen-era EC2 instance: its UUID and serial start with ec2.
        let xen = Dmi {
            sys_vendor: "Xen".into(),
            product_uuid: "EC2E1916-9099-7CAF-FD21-012345ABCDEF".into(),
            product_serial: "ec2e1916-9099-7caf-fd21-012345abcdef".into(),
            ..Dmi::default()
        };
        assert_eq!(from_dmi(&xen), Platform::Ec2);
    }

    #[test]
    fn the_kernel_argument_overrides_and_a_wrong_one_is_said() {
        let qemu = dmi("QEMU", "Standard PC", "");
        assert_eq!(detect("root=x cairn.platform=aliyun", &qemu).platform, Platform::Aliyun);
        assert_eq!(detect("root=x", &qemu).platform, Platform::Qemu);
        let wrong = detect("cairn.platform=aws", &qemu);
        assert_eq!(wrong.platform, Platform::Qemu);
        assert_eq!(
            wrong.error.as_deref(),
            Some("cairn.platform=aws: `aws` is not a platform (one of: ec2, gce, azure, openstack, tencent, aliyun, huawei, qemu, metal)")
        );
    }

    #[test]
    fn dmi_strings_are_read_trimmed_and_missing_ones_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        let d = Dmi::read(dir.path());
        assert_eq!(d.sys_vendor, "Amazon EC2");
        assert_eq!(d.chassis_asset_tag, "");
    }

    #[test]
    fn the_cloud_names_are_the_ones_manifests_and_settings_use() {
        let clouds: Vec<&str> = Platform::ALL
            .iter()
            .filter(|p| p.is_cloud())
            .map(|p| p.name())
            .collect();
        assert_eq!(clouds, cairn_common::layout::CLOUD_PLATFORMS);
    }
}
