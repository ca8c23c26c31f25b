//! `cargo xtask bench`: the figures the targets are judged by. Prints a
//! table and writes `target/cairn/<arch>/bench.json`.
//!
//! - cold build: compose + image with an empty cache (packages downloaded);
//! - warm rebuild: the same after changing one overlay file;
//! - sizes: raw image allocated, qcow2, zstd-compressed raw, OS on disk;
//! - boot: QEMU start → `systemctl is-system-running --wait` returns on the
//!   dev image's console, on the platform's stand-in QEMU machine and CPU;
//! - updates: see [`crate::bench_update`].

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::layout::{Arch, Platform};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::{build, host, paths};

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
    boot_to_running_secs: f64,
    /// Measured on the host's own architecture only: under emulation the
    /// release it adds needs a second package layer (another ~15 min).
    update: Option<crate::bench_update::UpdateFigures>,
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
    let boot = boot_time(&built)?;
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
        qcow2_bytes: std::fs::metadata(&built.qcow2)?.len(),
        zstd_raw_bytes: zstd_size(&built.raw)?,
        os_bytes: built.os_bytes,
        boot_to_running_secs: boot.as_secs_f64(),
        update,
    };
    print_table(&results);
    let out = paths::out(arch).join(format!("bench-{}.json", target.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    println!("{}", out.display());
    Ok(())
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

/// QEMU start → every unit started (systemd stops printing unit status once
/// the console's getty starts, so ask systemd on the console instead).
fn boot_time(built: &BuiltImage) -> Result<Duration> {
    let limit = Duration::from_secs(900);
    let vm = Vm::boot(&VmOptions::of(built), limit)?;
    let state = vm.console.run_ok("systemctl is-system-running --wait", limit)?;
    let elapsed = vm.started.elapsed();
    anyhow::ensure!(state.trim() == "running", "the benchmark boot ended {:?}", state.trim());
    Ok(elapsed)
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
            format!("{:.1} s ({} {})", r.boot_to_running_secs, r.accel, r.cpu),
            "",
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
}
