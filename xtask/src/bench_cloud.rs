//! `cargo xtask bench cloud`: the prod image as each cloud sees it.
//!
//! - sizes: one commit written in every format a cloud imports (`cairn-build
//!   image --format raw,qcow2,vhd,vmdk,gce`), each file's length and what it
//!   takes on disk, and how long the image step took;
//! - boot to SSH: for each cloud of `cloud_stand_ins`, a new instance of the
//!   prod image booted from that cloud's disk format on its disk bus, with
//!   its DMI strings and its metadata stand-in (see `cloud_stand_ins`): QEMU
//!   start → the default user's first SSH login with the key the metadata
//!   gave. The stand-ins answer at once; a real cloud's service adds its own
//!   latency.
//!
//! Writes `target/cairn/<arch>/bench-cloud-<platform>.json`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_builder::disk_formats::DiskFormat;
use cairn_common::layout::{Arch, Platform};
use cairn_qemu_tests::cloud_stand_ins::{Cloud, Instance};
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::{build, host, paths};

const LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Serialize)]
struct CloudBench {
    arch: Arch,
    platform: Platform,
    accel: &'static str,
    formats: FormatSizes,
    boots: Vec<CloudBoot>,
}

/// One commit in every format: how long the image step took, each file.
#[derive(Debug, Serialize)]
struct FormatSizes {
    image_secs: f64,
    files: Vec<FormatSize>,
}

#[derive(Debug, Serialize)]
struct FormatSize {
    format: DiskFormat,
    file: PathBuf,
    /// The file's length.
    bytes: u64,
    /// What it takes on disk (sparse files take less).
    allocated_bytes: u64,
}

#[derive(Debug, Serialize)]
struct CloudBoot {
    cloud: &'static str,
    format: DiskFormat,
    /// QEMU start → the default user's first SSH login.
    secs_to_ssh_login: f64,
}

pub fn cloud(target: &crate::Target) -> Result<()> {
    let arch = target.arch;
    let prod = target.image("prod");
    build::validate(&prod)?;
    host::prepare(host::Task::Vm, arch)?;
    let built = build::build(&prod)?;
    let formats = format_sizes(&prod)?;
    let relay = build::relay();
    let spec =
        cairn_builder::manifest::Manifest::load(&paths::manifest())?.resolve(&prod.flavor, arch, target.platform)?;
    let mut boots = Vec::new();
    for cloud in Cloud::ALL {
        let import = spec.cloud_formats.get(cloud.name()).cloned().unwrap_or_default();
        let secs =
            boot_to_ssh(&built, cloud, &import, &relay).with_context(|| format!("booting on {}", cloud.name()))?;
        boots.push(CloudBoot {
            cloud: cloud.name(),
            format: Cloud::boot_format(&import),
            secs_to_ssh_login: secs,
        });
    }
    let accel = cairn_qemu_tests::qemu::accel(arch);
    let results = CloudBench {
        arch,
        platform: target.platform,
        accel: accel.as_str(),
        formats,
        boots,
    };
    print(&results);
    let out = paths::out(arch).join(format!("bench-cloud-{}.json", target.platform));
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    println!("{}", out.display());
    Ok(())
}

/// Write the last composed commit of `t` in every format, into a scratch
/// folder (laid out in whole GiB, GCE's unit), and measure the files.
fn format_sizes(t: &build::ImageTarget) -> Result<FormatSizes> {
    let out = tempfile::Builder::new().prefix("cairn-bench-formats-").tempdir()?;
    let started = Instant::now();
    let built = build::disk_image(t, &paths::manifest(), out.path(), &DiskFormat::ALL)?;
    let image_secs = started.elapsed().as_secs_f64();
    let mut files = Vec::new();
    for (format, file) in &built.formats {
        let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
        files.push(FormatSize {
            format: *format,
            file: file.file_name().map(PathBuf::from).unwrap_or_default(),
            bytes: meta.len(),
            allocated_bytes: meta.blocks() * 512,
        });
    }
    Ok(FormatSizes { image_secs, files })
}

/// A new instance of `built` on `cloud`'s stand-in, from the format its
/// import takes (`import`): seconds from QEMU's start to the default
/// user's first SSH login.
fn boot_to_ssh(
    built: &cairn_builder::image::BuiltImage,
    cloud: Cloud,
    import: &[DiskFormat],
    relay: &Path,
) -> Result<f64> {
    let scratch = tempfile::tempdir()?;
    let ssh = Ssh::new(scratch.path(), free_port()?)?;
    let instance = Instance {
        id: format!("cairn-bench-{}", cloud.name()),
        hostname: format!("cairn-bench-{}", cloud.name()),
        ssh_key: Some(ssh.public_key()?),
        user_data: None,
        zone: "bench-1a".into(),
    };
    let stand_in = cloud.start(&instance, scratch.path())?;
    let mut opts = VmOptions::of(built);
    opts.image = Cloud::disk_of(import, &built.raw, scratch.path())?;
    opts.disk_interface = cloud.disk_bus();
    opts.forwards.push(ssh.forward(None));
    stand_in.place_vm(&mut opts, relay);
    let started = Instant::now();
    let _vm = Vm::start(&opts)?;
    ssh.wait_ready("cairn", LIMIT)
        .context("waiting for the default user's SSH login with the metadata's key")?;
    let secs = started.elapsed().as_secs_f64();
    let env = ssh.ok("cairn", "cat /run/cairn/metadata.env")?;
    if !env.contains(&format!("CAIRN_PLATFORM=\"{}\"", cloud.name())) {
        bail!("the host did not take itself for {}: {env}", cloud.name());
    }
    Ok(secs)
}

fn print(r: &CloudBench) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    println!(
        "{} {} ({}): the prod image's commit in every format ({:.0} s for the image step)",
        r.arch, r.platform, r.accel, r.formats.image_secs
    );
    for f in &r.formats.files {
        println!(
            "  {:<6} {:>10} ({:>10} allocated)  {}",
            f.format.name(),
            mb(f.bytes),
            mb(f.allocated_bytes),
            f.file.display()
        );
    }
    println!("a new prod instance on each cloud's stand-in: QEMU start → first SSH login");
    for b in &r.boots {
        println!(
            "  {:<10} from {:<6} {:>6.1} s",
            b.cloud,
            b.format.name(),
            b.secs_to_ssh_login
        );
    }
}
