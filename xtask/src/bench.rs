//! `cargo xtask bench`: the figures the targets are judged by. Prints a
//! table and writes `target/cairn/<arch>/bench-<platform>.json`.
//!
//! - cold build: compose + image with an empty cache (packages downloaded);
//! - warm rebuild: the same after changing one overlay file;
//! - sizes: raw image allocated, qcow2, zstd-compressed raw, OS on disk
//!   (each cloud format's: `bench cloud`);
//! - boot: QEMU start → `systemctl is-system-running --wait` returns on the
//!   dev image's console, on the platform's stand-in QEMU machine and CPU;
//!   then the same for a plain Debian image of the same release, packages
//!   and kernel (see [`crate::baseline`]) on the same QEMU line, and
//!   Cairn's total as a ratio to its;
//! - updates: see [`crate::bench_update`].

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use cairn_qemu_tests::boot_timing::{self, BootTimes};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::{baseline, build, host, paths};

/// Cairn's boot time over the plain-Debian baseline's.
const BOOT_RATIO_TARGET: &str = "≤ 0.8";

#[derive(Debug, Serialize)]
struct Results {
    arch: Arch,
    platform: Platform,
    cpu: &'static str,
    accel: &'static str,
    cold_build_secs: f64,
    warm_rebuild_secs: f64,
    raw_virtual_bytes: u64,
    raw_allocated_bytes: u64,
    qcow2_bytes: u64,
    zstd_raw_bytes: u64,
    os_bytes: u64,
    boot: BootTimes,
    /// `systemd-analyze critical-chain` of the measured boot.
    critical_chain: String,
    /// The plain-Debian baseline's boot, on the same QEMU line.
    baseline: BaselineBoot,
    /// Cairn's `boot.total_secs` over the baseline's (target ≤ 0.8).
    boot_ratio_to_baseline: f64,
    /// Measured on the host's own architecture only: under emulation the
    /// release it adds needs a second package layer (another ~15 min).
    update: Option<crate::bench_update::UpdateFigures>,
    /// Each VM and builder test's wall time, as the last `cargo xtask
    /// test` of this arch and platform recorded it (the bench does not run
    /// the suite: it takes most of an hour).
    suite: Option<crate::suite::SuiteTimes>,
}

/// The plain-Debian baseline (see [`crate::baseline`]) and its boot.
#[derive(Debug, Serialize)]
struct BaselineBoot {
    image: PathBuf,
    key: String,
    debian_release: String,
    kernel_release: String,
    /// Whether this run reused an image built before (`build_secs` is then
    /// that build's).
    reused: bool,
    build_secs: f64,
    /// Its kernel/initrd split comes from the kernel's log (`Run /init as
    /// init process`), as systemd, absent from its initramfs, has none.
    initrd_from_kernel_log: bool,
    boot: BootTimes,
    critical_chain: String,
}

/// `cargo xtask bench boot`'s figures (`bench-boot-<platform>.json`).
#[derive(Debug, Serialize)]
struct BootResults {
    arch: Arch,
    platform: Platform,
    cpu: &'static str,
    accel: &'static str,
    boot: BootTimes,
    critical_chain: String,
    baseline: BaselineBoot,
    boot_ratio_to_baseline: f64,
}

pub fn bench(target: &crate::Target) -> Result<()> {
    let arch = target.arch;
    let dev = target.image("dev");
    build::validate(&dev)?;
    host::prepare(host::Task::Vm, arch)?;
    let agent_dir = build::binaries(arch)?;

    // Cold: a fresh cache, so every package is downloaded and the package
    // layer built from scratch.
    let cold_cache = tempfile::Builder::new().prefix("cairn-bench-cache-").tempdir()?;
    let t = Instant::now();
    build::image_with(&dev, &paths::manifest(), cold_cache.path(), &agent_dir)?;
    let cold = t.elapsed();
    drop(cold_cache);

    // Warm: the real cache (warmed by the line below), one overlay file changed.
    build::image_with(&dev, &paths::manifest(), &paths::cache(), &agent_dir)?;
    let edited = tempfile::Builder::new().prefix("cairn-bench-rootfs-").tempdir()?;
    let manifest = cairn_qemu_tests::artifacts::copy_image_definition(&paths::manifest(), edited.path())?;
    let stamp = format!("Cairn (bench {:?})\n", std::time::SystemTime::now());
    std::fs::write(edited.path().join("rootfs/overlay/base/etc/issue.net"), stamp)?;
    let t = Instant::now();
    let built = build::image_with(&dev, &manifest, &paths::cache(), &agent_dir)?;
    let warm = t.elapsed();

    let raw_meta = std::fs::metadata(&built.raw)?;
    let (boot, critical_chain) = boot_times(&built)?;
    let baseline = baseline_boot(&built)?;
    let update = if Arch::host() == Some(arch) {
        Some(crate::bench_update::measure(
            &dev,
            &agent_dir,
            &built,
            raw_meta.blocks() * 512,
        )?)
    } else {
        None
    };
    let results = Results {
        arch,
        platform: target.platform,
        cpu: cairn_qemu_tests::qemu::cpu(arch, target.platform, cairn_qemu_tests::qemu::accel(arch)),
        accel: cairn_qemu_tests::qemu::accel(arch).as_str(),
        cold_build_secs: cold.as_secs_f64(),
        warm_rebuild_secs: warm.as_secs_f64(),
        raw_virtual_bytes: raw_meta.len(),
        raw_allocated_bytes: raw_meta.blocks() * 512,
        qcow2_bytes: std::fs::metadata(
            built
                .formats
                .get(&cairn_builder::disk_formats::DiskFormat::Qcow2)
                .context("the build wrote no qcow2 image")?,
        )?
        .len(),
        zstd_raw_bytes: zstd_size(&built.raw)?,
        os_bytes: built.os_bytes,
        boot_ratio_to_baseline: boot.total_secs / baseline.boot.total_secs,
        boot,
        critical_chain,
        baseline,
        update,
        suite: last_suite_times(target),
    };
    print_table(&results);
    match &results.suite {
        Some(suite) => println!(
            "VM and builder tests, wall time each (last `cargo xtask test`, {}):\n{}",
            crate::test::suite_times_path(target).display(),
            suite.table()
        ),
        None => println!("(no suite times: run `cargo xtask test` for this arch and platform first)"),
    }
    let out = paths::out(arch).join(format!("bench-{}.json", target.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    println!("{}", out.display());
    Ok(())
}

/// The suite's wall times recorded by the last `cargo xtask test`, if any
/// (an unreadable record is said, and left out).
fn last_suite_times(target: &crate::Target) -> Option<crate::suite::SuiteTimes> {
    let path = crate::test::suite_times_path(target);
    let text = std::fs::read(&path).ok()?;
    serde_json::from_slice(&text)
        .map_err(|e| eprintln!("ignoring {}: {e}", path.display()))
        .ok()
}

/// Bytes of the raw image compressed with zstd (level 3, as `zstd` does).
fn zstd_size(path: &Path) -> Result<u64> {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut enc = zstd::Encoder::new(Counter(0), 3)?;
    enc.multithread(2)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut enc, &buf[..n])?;
    }
    Ok(enc.finish()?.0)
}

/// Boot the image's VM and measure where the time goes (see
/// [`cairn_qemu_tests::boot_timing`]). Returns the figures and systemd's
/// critical chain.
pub fn boot_times(built: &BuiltImage) -> Result<(BootTimes, String)> {
    boot_times_of(&VmOptions::of(built))
}

fn boot_times_of(opts: &VmOptions) -> Result<(BootTimes, String)> {
    let vm = Vm::boot(opts, BOOT_LIMIT)?;
    boot_timing::measure(&vm, BOOT_LIMIT)
}

/// How long a measured boot may take.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// Build (or reuse) the plain-Debian baseline of `built`'s architecture and
/// platform and measure its boot on Cairn's QEMU line: `built`'s VM options
/// (machine, CPU, memory, disk interface and size, network) with the
/// baseline's disk.
fn baseline_boot(built: &BuiltImage) -> Result<BaselineBoot> {
    let b = baseline::ensure(built.arch, built.platform).context("making the plain-Debian baseline")?;
    let opts = VmOptions {
        image: b.raw.clone(),
        ..VmOptions::of(built)
    };
    let booting = || format!("booting the plain-Debian baseline {}", b.raw.display());
    let vm = Vm::boot(&opts, BOOT_LIMIT).with_context(booting)?;
    let (mut boot, critical_chain) = boot_timing::measure(&vm, BOOT_LIMIT).with_context(booting)?;
    // systemd is not in initramfs-tools' initramfs, so it records no
    // initrd phase: the kernel's log says when /init started.
    let mut initrd_from_kernel_log = false;
    if boot.initrd_secs == 0.0 {
        let shown = vm
            .console
            .run(
                &format!("dmesg | grep -m1 '{}'", baseline::INITRAMFS_START),
                Duration::from_secs(60),
            )
            .with_context(booting)?;
        match baseline::split_at_initramfs(&boot, &shown.output) {
            Ok(split) => {
                boot = split;
                initrd_from_kernel_log = true;
            }
            Err(e) => tracing::warn!("the baseline's kernel figure includes its initramfs: {e:#}"),
        }
    }
    Ok(BaselineBoot {
        image: b.raw,
        key: b.key,
        debian_release: b.recipe.release,
        kernel_release: b.kernel_release,
        reused: b.reused,
        build_secs: b.build_secs,
        initrd_from_kernel_log,
        boot,
        critical_chain,
    })
}

/// `cargo xtask bench boot`: only the boot: the dev image's figures and
/// critical chain, the plain-Debian baseline's, and the ratio of their
/// totals; printed and written to `bench-boot-<platform>.json`.
pub fn boot(target: &crate::Target) -> Result<()> {
    let arch = target.arch;
    let dev = target.image("dev");
    build::validate(&dev)?;
    host::prepare(host::Task::Vm, arch)?;
    let built = build::build(&dev)?;
    let (boot, critical_chain) = boot_times(&built)?;
    print_boot("dev", &boot);
    println!("{critical_chain}");
    let baseline = baseline_boot(&built)?;
    print_baseline(&baseline);
    println!("{}", baseline.critical_chain);
    let ratio = boot.total_secs / baseline.boot.total_secs;
    println!("boot time ÷ plain Debian's: {ratio:.2} (target {BOOT_RATIO_TARGET})");
    let accel = cairn_qemu_tests::qemu::accel(arch);
    let results = BootResults {
        arch,
        platform: target.platform,
        cpu: cairn_qemu_tests::qemu::cpu(arch, target.platform, accel),
        accel: accel.as_str(),
        boot,
        critical_chain,
        baseline,
        boot_ratio_to_baseline: ratio,
    };
    let out = paths::out(arch).join(format!("bench-boot-{}.json", target.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

fn print_baseline(b: &BaselineBoot) {
    print_boot(
        &format!("plain Debian {} ({})", b.debian_release, b.kernel_release),
        &b.boot,
    );
    let made = if b.reused { "reused; built" } else { "built" };
    println!("  image {} ({made} in {:.0} s)", b.image.display(), b.build_secs);
    if b.initrd_from_kernel_log {
        println!("  (kernel | initrd split where the kernel logged `Run /init`: its initramfs has no systemd)");
    }
}

fn print_boot(name: &str, t: &BootTimes) {
    println!(
        "{name}: firmware+GRUB {:.1} s, kernel {:.1} s, initrd {:.1} s, userspace {:.1} s; QEMU start → running {:.1} s",
        t.firmware_and_loader_secs, t.kernel_secs, t.initrd_secs, t.userspace_secs, t.total_secs
    );
}

fn print_table(r: &Results) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    // An emulated foreign arch runs its package scripts under qemu-user.
    let cold_target = if Arch::host() == Some(r.arch) {
        "≤ 600 s"
    } else {
        "≤ 900 s"
    };
    let rows = [
        (
            "cold build (compose + image)",
            format!("{:.0} s", r.cold_build_secs),
            cold_target,
        ),
        (
            "warm rebuild (one overlay file)",
            format!("{:.0} s", r.warm_rebuild_secs),
            "≤ 60 s",
        ),
        ("raw image, virtual", mb(r.raw_virtual_bytes), ""),
        ("raw image, allocated", mb(r.raw_allocated_bytes), ""),
        ("qcow2", mb(r.qcow2_bytes), ""),
        ("raw image, zstd -3", mb(r.zstd_raw_bytes), "≤ 150 MB"),
        ("OS bytes on disk", mb(r.os_bytes), "≤ 400 MB"),
        (
            "QEMU start → system running",
            format!("{:.1} s ({} {})", r.boot.total_secs, r.accel, r.cpu),
            "",
        ),
        (
            "plain Debian → system running",
            format!("{:.1} s", r.baseline.boot.total_secs),
            "",
        ),
        (
            "boot time ÷ plain Debian's",
            format!("{:.2}", r.boot_ratio_to_baseline),
            BOOT_RATIO_TARGET,
        ),
    ];
    let update_rows = r.update.as_ref().map(|u| {
        [
            (
                "update adding one package",
                format!("{} ({:.2} %)", mb(u.update_bytes), u.update_percent_of_image),
                "≤ 2 % of the image",
            ),
            ("update: time to stage", format!("{:.0} s", u.stage_secs), ""),
            (
                "update: reboot → committed",
                format!("{:.0} s", u.reboot_to_committed_secs),
                "",
            ),
            (
                "agent idle RSS",
                format!("{:.1} MB", u.agent_idle_rss_kib as f64 / 1024.0),
                "≤ 10 MB",
            ),
        ]
    });
    println!("{} {} ({})", r.arch, r.platform, r.cpu);
    println!("{:<34} {:>18}  target", "measure", "value");
    for (name, value, target) in rows.into_iter().chain(update_rows.into_iter().flatten()) {
        println!("{name:<34} {value:>18}  {target}");
    }
    if r.update.is_none() {
        println!("(update figures: measured on the host's own architecture only)");
    }
    print_boot("dev", &r.boot);
    print_baseline(&r.baseline);
}
