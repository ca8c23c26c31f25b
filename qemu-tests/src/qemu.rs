//! QEMU command lines for Cairn images.

use cairn_builder::disk_formats::DiskFormat;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_common::layout::{Arch, Platform};
use cairn_common::process::Cmd;

/// How the boot disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskInterface {
    VirtioBlk,
    Nvme,
    VirtioScsi,
}

/// CPU virtualisation: KVM where it really works, else TCG emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Firmware files of an architecture (Debian's ovmf / qemu-efi-aarch64).
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

pub fn firmware(arch: Arch) -> Firmware {
    match arch {
        Arch::X86_64 => Firmware {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        },
        Arch::Aarch64 => Firmware {
            code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
            vars_template: "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
        },
    }
}

/// The QEMU machine that stands in for a platform. No QEMU model of the
/// Kunpeng 920 or of Phytium's SoCs exists: the server platforms run on
/// `virt` with GICv3 (and, for the Kunpeng 920, an SMMUv3) and a CPU of
/// the same generation.
pub fn machine(arch: Arch, platform: Platform) -> &'static str {
    match (arch, platform) {
        (Arch::X86_64, _) => "q35",
        (Arch::Aarch64, Platform::Kunpeng920) => "virt,gic-version=3,iommu=smmuv3",
        (Arch::Aarch64, _) => "virt,gic-version=3",
    }
}

/// The `-cpu` of a VM: the host's under KVM, else the platform's stand-in.
pub fn cpu(arch: Arch, platform: Platform, accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => tcg_cpu(arch, platform),
    }
}

/// The emulated CPU (TCG) of a platform.
pub fn tcg_cpu(arch: Arch, platform: Platform) -> &'static str {
    match (arch, platform) {
        // TCG cannot run nested guests; advertising SVM/VMX only makes the
        // guest load kvm_amd/kvm_intel (seen: a guest that stopped right
        // after kvm_amd initialised under TCG).
        (Arch::X86_64, _) => "max,svm=off,vmx=off",
        // ARMv8.2 like the Kunpeng 920's TaiShan v110 cores.
        (Arch::Aarch64, Platform::Kunpeng920) => "neoverse-n1",
        // ARMv8.0 like Phytium's FTC662/FTC663 cores (and AWS Graviton 1).
        (Arch::Aarch64, _) => "cortex-a72",
    }
}

pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    }
}

/// A VM to start.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub arch: Arch,
    pub platform: Platform,
    pub accel: Accel,
    /// Boot disk (qcow2 overlay or raw).
    pub disk: PathBuf,
    pub disk_interface: DiskInterface,
    /// Read-only raw disks with a serial, seen in the guest as
    /// `/dev/disk/by-id/virtio-<serial>`.
    pub extra_disks: Vec<(PathBuf, String)>,
    /// Read-only CD-ROMs (ISO 9660 images) on a virtio-scsi controller of
    /// their own, as clouds attach seeds and config drives.
    pub cdroms: Vec<PathBuf>,
    /// Writable copy of the UEFI variable store.
    pub vars: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `hostfwd`/`guestfwd` rules, each bound to 127.0.0.1 only.
    pub forwards: Vec<String>,
    /// QEMU fw_cfg files (`name`, host file), e.g. Ignition's
    /// `opt/com.coreos/config`.
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// SMBIOS entries (`type=1,manufacturer=Amazon EC2`): the DMI strings a
    /// cloud's firmware would show.
    pub smbios: Vec<String>,
    /// The user network's address range (`net=`) when not QEMU's
    /// 10.0.2.0/24: a cloud's metadata address must lie inside it to be
    /// forwarded.
    pub net: Option<String>,
    /// Serial console on a terminal, with QEMU's monitor keys (Ctrl-a x).
    pub interactive: bool,
}

impl QemuConfig {
    /// The full argument list (without the binary).
    pub fn args(&self) -> Vec<String> {
        let fw = firmware(self.arch);
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_owned());
        push("-machine");
        push(&format!(
            "{},accel={}",
            machine(self.arch, self.platform),
            self.accel.as_str()
        ));
        push("-cpu");
        push(cpu(self.arch, self.platform, self.accel));
        a.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
        ]);
        let serial = if self.interactive { "mon:stdio" } else { "stdio" };
        a.extend([
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            serial.into(),
        ]);
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            fw.code.display()
        ));
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,unit=1,file={}", self.vars.display()));
        let format = if self.disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        a.push("-drive".into());
        a.push(format!(
            "if=none,id=disk0,file={},format={format},cache=unsafe",
            self.disk.display()
        ));
        match self.disk_interface {
            DiskInterface::VirtioBlk => a.extend(["-device".into(), "virtio-blk-pci,drive=disk0,bootindex=0".into()]),
            DiskInterface::Nvme => a.extend(["-device".into(), "nvme,serial=cairn0,drive=disk0,bootindex=0".into()]),
            DiskInterface::VirtioScsi => a.extend([
                "-device".into(),
                "virtio-scsi-pci,id=scsi0".into(),
                "-device".into(),
                "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0".into(),
            ]),
        }
        for (i, (path, serial)) in self.extra_disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!(
                "if=none,id=extra{i},file={},format=raw,readonly=on",
                path.display()
            ));
            a.push("-device".into());
            a.push(format!("virtio-blk-pci,drive=extra{i},serial={serial}"));
        }
        if !self.cdroms.is_empty() {
            a.extend(["-device".into(), "virtio-scsi-pci,id=cdbus".into()]);
        }
        for (i, path) in self.cdroms.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!(
                "if=none,id=cd{i},file={},format=raw,media=cdrom,readonly=on",
                path.display()
            ));
            a.push("-device".into());
            a.push(format!("scsi-cd,drive=cd{i},bus=cdbus.0"));
        }
        // Guest networking never reaches past this machine.
        for entry in &self.smbios {
            a.push("-smbios".into());
            a.push(entry.clone());
        }
        let mut netdev = "user,id=net0,restrict=on".to_owned();
        if let Some(net) = &self.net {
            netdev.push_str(",net=");
            netdev.push_str(net);
        }
        for f in &self.forwards {
            netdev.push(',');
            netdev.push_str(f);
        }
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]);
        a.extend(["-device".into(), "virtio-rng-pci".into()]);
        for (name, file) in &self.fw_cfg {
            a.push("-fw_cfg".into());
            a.push(format!("name={name},file={}", file.display()));
        }
        a
    }
}

/// Which accelerator to use: `CAIRN_ACCEL=kvm|tcg` decides; otherwise KVM
/// only if a probe VM really runs firmware under it (on some hosts `/dev/kvm`
/// exists but guests hang). Probed once per process.
pub fn accel(arch: Arch) -> Accel {
    static PROBED: OnceLock<Accel> = OnceLock::new();
    match std::env::var("CAIRN_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    *PROBED.get_or_init(|| {
        let result = probe_kvm(arch);
        match &result {
            Ok(true) => tracing::info!("KVM works: using it"),
            Ok(false) => tracing::info!("KVM unusable here: using TCG emulation"),
            Err(e) => tracing::info!("KVM probe failed ({e:#}): using TCG emulation"),
        }
        if matches!(result, Ok(true)) {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    })
}

/// Whether an x86 CPU can run KVM guests at all, from `/proc/cpuinfo`:
/// its `flags` name `vmx` (Intel VT-x) or `svm` (AMD-V). `None` when the
/// text says nothing either way (another architecture's cpuinfo has no
/// `flags` line), so only the probe VM can tell.
pub fn cpu_has_virtualization(cpuinfo: &str) -> Option<bool> {
    let mut saw_flags = false;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() == "flags" {
            saw_flags = true;
            if value.split_whitespace().any(|f| f == "vmx" || f == "svm") {
                return Some(true);
            }
        }
    }
    saw_flags.then_some(false)
}

fn probe_kvm(arch: Arch) -> Result<bool> {
    if Arch::host() != Some(arch) {
        return Ok(false);
    }
    // A CPU without VT-x/AMD-V cannot run a guest under KVM even where
    // /dev/kvm exists: say so at once instead of waiting out a probe VM.
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        if cpu_has_virtualization(&cpuinfo) == Some(false) {
            tracing::info!("the CPU has no vmx/svm flag in /proc/cpuinfo");
            return Ok(false);
        }
    }
    let kvm = Path::new("/dev/kvm");
    if std::fs::OpenOptions::new().read(true).write(true).open(kvm).is_err() {
        return Ok(false);
    }
    let dir = tempfile::tempdir()?;
    let fw = firmware(arch);
    let vars = dir.path().join("vars.fd");
    std::fs::copy(&fw.vars_template, &vars).with_context(|| format!("copying {}", fw.vars_template.display()))?;
    let machine = format!("{},accel=kvm", machine(arch, Platform::Generic));
    let mut child = Cmd::new(qemu_binary(arch))
        .args([
            "-machine",
            &machine,
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-net", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            fw.code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
        .spawn_piped()?;
    let console = crate::console::Console::attach(&mut child)?;
    // Firmware with no bootable disk reports its boot manager within seconds.
    let ok = console.wait_for_quietly("BdsDxe", Duration::from_secs(25)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    Ok(ok)
}

/// QEMU's name for the format of a disk file, by its extension: the
/// builder's raw image, or a cloud format `cairn-build image --format`
/// wrote (VHD is QEMU's `vpc`), which QEMU then reads through its own
/// driver for that format.
pub fn backing_format(disk: &Path) -> &'static str {
    disk.extension()
        .and_then(|e| e.to_str())
        .and_then(|e| DiskFormat::ALL.into_iter().find(|f| f.name() == e))
        .map_or("raw", DiskFormat::qemu_img_name)
}

/// Create a copy-on-write overlay of `base` of `size_bytes` in `dir`.
pub fn overlay_disk(base: &Path, dir: &Path, size_bytes: u64) -> Result<PathBuf> {
    let disk = dir.join("disk.qcow2");
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", backing_format(base), "-b"])
        .arg(base)
        .arg(&disk)
        .arg(size_bytes.to_string())
        .run()?;
    Ok(disk)
}

/// A fresh writable UEFI variable store for one VM.
pub fn fresh_vars(arch: Arch, dir: &Path) -> Result<PathBuf> {
    let fw = firmware(arch);
    let vars = dir.join("vars.fd");
    if !fw.code.exists() {
        bail!(
            "UEFI firmware {} is missing (install ovmf / qemu-efi-aarch64)",
            fw.code.display()
        );
    }
    std::fs::copy(&fw.vars_template, &vars).with_context(|| format!("copying {}", fw.vars_template.display()))?;
    Ok(vars)
}

/// Seconds since `start`, for logs.
pub fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(iface: DiskInterface) -> QemuConfig {
        QemuConfig {
            arch: Arch::X86_64,
            platform: Platform::Generic,
            accel: Accel::Tcg,
            disk: "/d/disk.qcow2".into(),
            disk_interface: iface,
            extra_disks: vec![("/d/oci.tar".into(), "cairn-oci".into())],
            cdroms: vec![],
            smbios: vec![],
            net: None,
            vars: "/d/vars.fd".into(),
            memory_mib: 2048,
            cpus: 2,
            forwards: vec!["hostfwd=tcp:127.0.0.1:2222-:22".into()],
            fw_cfg: vec![("opt/com.coreos/config".into(), "/tmp/c.ign".into())],
            interactive: false,
        }
    }

    #[test]
    fn network_is_restricted_and_forwards_are_explicit() {
        let args = config(DiskInterface::VirtioBlk).args();
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(netdev, "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22");
        assert!(args.windows(2).any(|w| w == ["-machine", "q35,accel=tcg"]));
        assert!(args.iter().any(|a| a.contains("format=qcow2")));
        assert!(args.contains(&"virtio-blk-pci,drive=extra0,serial=cairn-oci".to_owned()));
        assert!(args
            .windows(2)
            .any(|w| w == ["-fw_cfg", "name=opt/com.coreos/config,file=/tmp/c.ign"]));
    }

    #[test]
    fn a_cloud_stand_in_has_the_cloud_s_dmi_strings_and_address_range() {
        let args = QemuConfig {
            smbios: vec!["type=1,manufacturer=Amazon EC2".into()],
            net: Some("169.254.169.0/24".into()),
            forwards: vec!["guestfwd=tcp:169.254.169.254:80-cmd:relay 8080".into()],
            ..config(DiskInterface::VirtioBlk)
        }
        .args();
        assert!(args
            .windows(2)
            .any(|w| w == ["-smbios", "type=1,manufacturer=Amazon EC2"]));
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=net0,restrict=on,net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:relay 8080"
        );
    }

    #[test]
    fn server_platforms_get_their_stand_in_machine_and_cpu() {
        let kunpeng = QemuConfig {
            arch: Arch::Aarch64,
            platform: Platform::Kunpeng920,
            ..config(DiskInterface::VirtioBlk)
        }
        .args();
        assert!(kunpeng
            .windows(2)
            .any(|w| w == ["-machine", "virt,gic-version=3,iommu=smmuv3,accel=tcg"]));
        assert!(kunpeng.windows(2).any(|w| w == ["-cpu", "neoverse-n1"]));
        let phytium = QemuConfig {
            arch: Arch::Aarch64,
            platform: Platform::Phytium,
            ..config(DiskInterface::VirtioBlk)
        }
        .args();
        assert!(phytium
            .windows(2)
            .any(|w| w == ["-machine", "virt,gic-version=3,accel=tcg"]));
        assert!(phytium.windows(2).any(|w| w == ["-cpu", "cortex-a72"]));
    }

    #[test]
    fn kvm_needs_a_cpu_flag_that_only_x86_cpuinfo_can_deny() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let amd = "flags\t\t: fpu svm\n";
        let tcg = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\nprocessor\t: 1\nflags\t\t: fpu\n";
        let arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n";
        assert_eq!(cpu_has_virtualization(intel), Some(true));
        assert_eq!(cpu_has_virtualization(amd), Some(true));
        assert_eq!(cpu_has_virtualization(tcg), Some(false));
        // "svmx" or "vmxnope" are not the flags.
        assert_eq!(cpu_has_virtualization("flags : svmx vmxnope\n"), Some(false));
        assert_eq!(cpu_has_virtualization(arm), None);
    }

    #[test]
    fn each_disk_interface_has_its_device() {
        let nvme = config(DiskInterface::Nvme).args();
        assert!(nvme.contains(&"nvme,serial=cairn0,drive=disk0,bootindex=0".to_owned()));
        let scsi = config(DiskInterface::VirtioScsi).args();
        assert!(scsi.contains(&"scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0".to_owned()));
    }
}
