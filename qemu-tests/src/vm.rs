//! A running VM: QEMU child, serial console, scratch folder. Dropping it
//! kills QEMU, so a failing (panicking) test never leaves a VM behind.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use cairn_common::process::Cmd;

use crate::console::{Console, GuestStalled};
use crate::qemu::{self, DiskInterface, QemuConfig};

/// How to start a VM from a built image.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub arch: Arch,
    /// Which QEMU machine and CPU stand in for the platform.
    pub platform: Platform,
    /// The built raw image; the VM writes to a copy-on-write overlay.
    pub image: PathBuf,
    pub disk_interface: DiskInterface,
    /// Virtual size of the VM's disk (bigger than the image: root grows).
    pub disk_size: u64,
    pub extra_disks: Vec<(PathBuf, String)>,
    /// ISO 9660 images attached as CD-ROMs.
    pub cdroms: Vec<PathBuf>,
    pub memory_mib: u32,
    /// `hostfwd=`/`guestfwd=` rules of the restricted user network.
    pub forwards: Vec<String>,
    /// QEMU fw_cfg files (`name`, host file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// SMBIOS entries, as a cloud's firmware shows them.
    pub smbios: Vec<String>,
    /// The user network's range (`net=`), when not 10.0.2.0/24.
    pub net: Option<String>,
}

impl VmOptions {
    pub fn new(arch: Arch, image: &Path) -> VmOptions {
        VmOptions {
            arch,
            platform: Platform::Generic,
            image: image.to_owned(),
            disk_interface: DiskInterface::VirtioBlk,
            disk_size: 4 << 30,
            extra_disks: Vec::new(),
            cdroms: Vec::new(),
            memory_mib: 2048,
            forwards: Vec::new(),
            fw_cfg: Vec::new(),
            smbios: Vec::new(),
            net: None,
        }
    }

    /// A VM for a built image: its architecture, platform and raw disk.
    pub fn of(image: &BuiltImage) -> VmOptions {
        VmOptions {
            platform: image.platform,
            ..VmOptions::new(image.arch, &image.raw)
        }
    }

    /// Let the guest reach a test server on the host's 127.0.0.1:`port` as
    /// http://10.0.2.100/ (the address Cairn's test images update from).
    /// `relay` is the `cairn-test-relay` binary, run by QEMU per connection.
    pub fn forward_update_server(&mut self, relay: &Path, port: u16) {
        self.forward_to_loopback(relay, "10.0.2.100:80", port);
    }

    /// Guest connections to `guest_addr` (`ip:port`, inside the user
    /// network) reach 127.0.0.1:`port` on this machine, each through the
    /// relay.
    pub fn forward_to_loopback(&mut self, relay: &Path, guest_addr: &str, port: u16) {
        self.forwards
            .push(format!("guestfwd=tcp:{guest_addr}-cmd:{} {port}", relay.display()));
    }
}

pub struct Vm {
    child: Child,
    config: QemuConfig,
    pub console: Console,
    pub started: Instant,
    pub dir: tempfile::TempDir,
    /// How many times QEMU was started on this VM's disk.
    boots: u32,
}

/// How many VMs a first boot may start when the emulator stalls them.
const FIRST_BOOT_ATTEMPTS: u32 = 3;

impl Vm {
    /// Start a VM from the image and wait for root's shell (development
    /// images log root in by themselves).
    pub fn boot(opts: &VmOptions, timeout: Duration) -> Result<Vm> {
        Vm::start_until(opts, |vm| vm.wait_for_root_shell(timeout))
    }

    /// Start a VM from the image and wait until `booted` returns. A guest
    /// that reports a lost timer ([`GuestStalled`]) on this first boot is
    /// the emulated machine's fault and nothing has happened on its disk
    /// yet, so it is thrown away and a fresh VM started, up to
    /// `FIRST_BOOT_ATTEMPTS` in all, each said on stderr. Any other failure,
    /// and a stall on a later boot of the same VM, is the test's.
    pub fn start_until(opts: &VmOptions, booted: impl Fn(&Vm) -> Result<()>) -> Result<Vm> {
        let mut attempt = 1;
        loop {
            let vm = Vm::start(opts)?;
            match booted(&vm) {
                Ok(()) => return Ok(vm),
                Err(e) if attempt < FIRST_BOOT_ATTEMPTS && e.downcast_ref::<GuestStalled>().is_some() => {
                    let signature = e
                        .downcast_ref::<GuestStalled>()
                        .map(|s| s.signature.clone())
                        .unwrap_or_default();
                    eprintln!(
                        "VM {} stalled in its first boot ({signature}); starting a fresh one ({} of {FIRST_BOOT_ATTEMPTS})",
                        vm.dir.path().display(),
                        attempt + 1
                    );
                    tracing::warn!(%signature, attempt, "the guest lost a timer on its first boot; starting a fresh VM");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Start a VM from the image (a fresh overlay disk and UEFI variables).
    pub fn start(opts: &VmOptions) -> Result<Vm> {
        let dir = tempfile::Builder::new().prefix("cairn-vm-").tempdir()?;
        let disk = qemu::overlay_disk(&opts.image, dir.path(), opts.disk_size)?;
        let vars = qemu::fresh_vars(opts.arch, dir.path())?;
        // cache=unsafe (in QemuConfig) is still a faithful power cut when
        // QEMU is killed: a guest flush still writes qcow2's metadata to the
        // host file, and the host keeps what QEMU wrote. What a cut loses is
        // the guest's memory: its page cache and requests in flight.
        let config = QemuConfig {
            arch: opts.arch,
            platform: opts.platform,
            accel: qemu::accel(opts.arch),
            disk,
            disk_interface: opts.disk_interface,
            extra_disks: opts.extra_disks.clone(),
            cdroms: opts.cdroms.clone(),
            vars,
            memory_mib: opts.memory_mib,
            cpus: 2,
            forwards: opts.forwards.clone(),
            fw_cfg: opts.fw_cfg.clone(),
            smbios: opts.smbios.clone(),
            net: opts.net.clone(),
            interactive: false,
        };
        let (child, console) = launch(&config, &dir.path().join("serial.log"))?;
        Ok(Vm {
            child,
            config,
            console,
            started: Instant::now(),
            dir,
            boots: 1,
        })
    }

    /// Cut the power (kill QEMU) and switch the machine on again: the same
    /// disk and UEFI variables, a new serial console.
    pub fn power_cycle(&mut self) -> Result<()> {
        self.power_cycle_with(|_| ())
    }

    /// Power off, change the machine's hardware (its media, say), power on.
    pub fn power_cycle_with(&mut self, change: impl FnOnce(&mut QemuConfig)) -> Result<()> {
        self.kill();
        change(&mut self.config);
        self.boots += 1;
        let log = self.dir.path().join(format!("serial-{}.log", self.boots));
        let (child, console) = launch(&self.config, &log)?;
        self.child = child;
        self.console = console;
        self.started = Instant::now();
        Ok(())
    }

    /// Wait for root's shell on the serial console (development images log
    /// root in automatically), then make the shell quiet and predictable.
    /// A VM with forwards to test servers also waits for its network: the
    /// boot does not (nothing in the image waits for network-online.target).
    pub fn wait_for_root_shell(&self, timeout: Duration) -> Result<()> {
        // The host name is the image's until provisioning names the host.
        self.console
            .wait_for("login: root (automatic login)", timeout)
            .context("waiting for root's autologin shell")?;
        self.console.wait_for("# ", Duration::from_secs(30))?;
        // Kernel messages would interleave with command output.
        self.console.run_ok(
            "dmesg -n 1; stty -echo; export TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0",
            Duration::from_secs(60),
        )?;
        if !self.config.forwards.is_empty() {
            self.console
                .run_ok(
                    "/usr/lib/systemd/systemd-networkd-wait-online --timeout=120",
                    Duration::from_secs(180),
                )
                .context("waiting for the guest's network (DHCP)")?;
        }
        Ok(())
    }

    /// Kill QEMU now (power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch(config: &QemuConfig, serial_log: &Path) -> Result<(Child, Console)> {
    let mut child = Cmd::new(qemu::qemu_binary(config.arch))
        .args(config.args())
        .spawn_piped()?;
    let console = Console::attach_with_log(&mut child, Some(serial_log))?;
    tracing::info!(serial_log = %serial_log.display(), accel = config.accel.as_str(), "VM started");
    Ok((child, console))
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- serial console of the failed VM (last 4000 chars) ---\n{}",
                self.console.tail(4000)
            );
        }
    }
}
