//! The on-disk contract between the image builder and the booted host.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Name of the ostree "OS" (stateroot) every Cairn deployment lives in.
pub const OSNAME: &str = "cairn";
/// The clouds whose metadata the agent reads (`cairn.platform=` names,
/// `[clouds.<name>]` in the image manifest, `[platform.<name>]` in the
/// agent's settings).
pub const CLOUD_PLATFORMS: [&str; 7] = ["ec2", "gce", "azure", "openstack", "tencent", "aliyun", "huawei"];

/// Check a name of [`CLOUD_PLATFORMS`].
pub fn check_cloud_platform(name: &str) -> Result<(), String> {
    if CLOUD_PLATFORMS.contains(&name) {
        Ok(())
    } else {
        Err(format!("not a cloud platform (one of: {})", CLOUD_PLATFORMS.join(", ")))
    }
}

/// Check an NTP server: a host name or an IPv4/IPv6 address.
pub fn check_ntp_server(host: &str) -> Result<(), String> {
    if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name or address"))
    }
}
/// Name of the ostree remote that updates come from.
pub const REMOTE: &str = "cairn";
/// GPT partition name and FAT volume label of the EFI System Partition.
pub const ESP_LABEL: &str = "CAIRN-ESP";
/// GPT partition name and ext4 label of the root partition (ostree sysroot).
pub const ROOT_LABEL: &str = "cairn-root";
/// GPT partition numbers (1-based, as the kernel and GRUB count them).
pub const ESP_PARTNUM: u32 = 1;
pub const ROOT_PARTNUM: u32 = 2;
/// Where the GRUB environment block (boot counter) lives on the ESP.
pub const GRUBENV_ESP_PATH: &str = "EFI/cairn/grubenv";
/// Where the generated GRUB configuration lives, relative to the root partition.
pub const GRUB_CFG_PATH: &str = "/boot/loader/grub.cfg";
/// Where ostree's BLS paths are rooted when read from the root partition:
/// `/boot` is a directory of the root filesystem, not a partition of its own.
pub const BOOT_PREFIX: &str = "/boot";
/// Where the GRUB config generator is installed in the image.
pub const GRUB_MKCONFIG_PATH: &str = "/usr/libexec/cairn/grub-mkconfig";

/// Top-level directories that are symlinks into `/var` (or `/run`) on a
/// Cairn host, target relative to `/`, as in Fedora CoreOS and other ostree
/// systems: the builder makes them, and whatever writes host state (the
/// provisioner) resolves paths through them.
pub const STATE_LINKS: &[(&str, &str)] = &[
    ("home", "var/home"),
    ("opt", "var/opt"),
    ("srv", "var/srv"),
    ("mnt", "var/mnt"),
    ("root", "var/roothome"),
    ("media", "run/media"),
];
/// `/usr/local`, the one link inside `/usr`: target relative to `/`.
pub const USR_LOCAL_TARGET: &str = "var/usrlocal";

/// A CPU architecture Cairn builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture of the machine this program runs on.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// GRUB's platform directory and `grub-mkimage -O` target.
    pub fn grub_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-efi",
            Arch::Aarch64 => "arm64-efi",
        }
    }

    /// Debian package holding GRUB's EFI modules for this architecture.
    pub fn grub_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "grub-efi-amd64-bin",
            Arch::Aarch64 => "grub-efi-arm64-bin",
        }
    }

    /// Debian's multiarch triplet: where this architecture's libraries live
    /// (`/usr/lib/<triplet>`).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// UEFI removable-media boot path on the ESP.
    pub fn efi_boot_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// Discoverable Partitions Specification type GUID of the root partition.
    pub fn root_partition_type(self) -> &'static str {
        match self {
            Arch::X86_64 => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            Arch::Aarch64 => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        }
    }

    /// Kernel console argument for the first serial port of the QEMU and
    /// server machines Cairn targets.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "console=ttyS0,115200",
            Arch::Aarch64 => "console=ttyAMA0,115200",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(format!("unknown architecture `{other}` (expected x86_64 or aarch64)")),
        }
    }
}

/// Where an image runs: a profile of an architecture. `generic` is a VM (any
/// cloud, QEMU) on Debian's cloud kernel; the server platforms run on bare
/// metal with Debian's full kernel and their drivers. What each one means for
/// the image (kernel, drivers, arguments, kernel-config fragments) is data in
/// the image manifest; this type only names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Generic,
    /// Huawei Kunpeng 920 (HiSilicon Hi1620, TaiShan v110 cores) servers.
    Kunpeng920,
    /// Phytium FT-2000+/64 and S2500 servers.
    Phytium,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Generic, Platform::Kunpeng920, Platform::Phytium];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Generic => "generic",
            Platform::Kunpeng920 => "kunpeng920",
            Platform::Phytium => "phytium",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown platform `{s}` (expected generic, kunpeng920 or phytium)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>().unwrap(), p);
        }
        assert!("tsv110".parse::<Platform>().unwrap_err().contains("tsv110"));
    }

    #[test]
    fn arch_round_trips_through_both_naming_schemes() {
        for arch in Arch::ALL {
            assert_eq!(arch.as_str().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.debian().parse::<Arch>().unwrap(), arch);
        }
        assert!("riscv64".parse::<Arch>().unwrap_err().contains("riscv64"));
    }
}
