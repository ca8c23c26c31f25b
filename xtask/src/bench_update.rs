//! The update figures of `cargo xtask bench`: a release that adds one
//! package, published next to the booted one and applied by the agent in a
//! VM, over the loopback test server.
//!
//! - bytes transferred for that update, against the full image's bytes;
//! - time to stage (`cairn-agent update --no-reboot`);
//! - reboot → committed (the health gate passed);
//! - the agent daemon's resident memory while idle.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_builder::image::BuiltImage;
use cairn_common::process::Cmd;
use cairn_qemu_tests::http::Server;
use cairn_qemu_tests::vm::{Vm, VmOptions};
use serde::Serialize;

use crate::build::{self, ImageTarget};
use crate::paths;

/// The package the benchmark release adds (small, no dependencies).
const ADDED_PACKAGE: &str = "tree";
const BOOT: Duration = Duration::from_secs(900);
const COMMAND: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize)]
pub struct UpdateFigures {
    pub added_package: &'static str,
    pub update_bytes: u64,
    pub full_image_bytes: u64,
    pub update_percent_of_image: f64,
    pub stage_secs: f64,
    pub reboot_to_committed_secs: f64,
    pub agent_idle_rss_kib: u64,
}

/// `cairn-build <verb>` for one manifest, image target and repo, plus `extra`.
fn cairn_build(verb: &str, manifest: &Path, t: &ImageTarget, repo: &Path, extra: &[&OsStr]) -> Result<String> {
    Ok(build::cairn_build(verb, manifest, t)
        .arg("--repo")
        .arg(repo)
        .args(extra)
        .progress()
        .output()?
        .stdout)
}

pub fn measure(t: &ImageTarget, agent_dir: &Path, v1: &BuiltImage, full_image_bytes: u64) -> Result<UpdateFigures> {
    let arch = t.arch;
    let scratch = tempfile::Builder::new().prefix("cairn-bench-update-").tempdir()?;
    let www = scratch.path().join("www");
    let updates = www.join("repo");
    let build_repo = scratch.path().join("build");
    let keys = paths::keys();
    // v1: the image under test, as built.
    let publish = |manifest: &Path, repo: &Path| -> Result<String> {
        let extra = [
            OsStr::new("--update-repo"),
            updates.as_os_str(),
            OsStr::new("--keys"),
            keys.as_os_str(),
        ];
        cairn_build("publish", manifest, t, repo, &extra)
    };
    publish(&paths::manifest(), &paths::repo(arch))?;

    // v2: the same manifest with one package more.
    let manifest = cairn_qemu_tests::artifacts::copy_image_definition(&paths::manifest(), scratch.path())?;
    let text = std::fs::read_to_string(&manifest)?;
    let anchor = "debug = [";
    if !text.contains(anchor) {
        bail!(
            "{}: no `debug` package set to add {ADDED_PACKAGE} to",
            manifest.display()
        );
    }
    std::fs::write(
        &manifest,
        text.replacen(anchor, &format!("{anchor}\"{ADDED_PACKAGE}\", "), 1),
    )?;
    let mut v2 = semver::Version::parse(&v1.version)?;
    v2.patch += 1;
    let (cache, version) = (paths::cache(), v2.to_string());
    let extra = [
        OsStr::new("--cache"),
        cache.as_os_str(),
        OsStr::new("--keys"),
        keys.as_os_str(),
        OsStr::new("--agent-dir"),
        agent_dir.as_os_str(),
        OsStr::new("--version"),
        OsStr::new(&version),
    ];
    cairn_build("compose", &manifest, t, &build_repo, &extra)?;
    publish(&manifest, &build_repo)?;

    // The agent in a VM applies it.
    Cmd::new(env!("CARGO"))
        .args(["build", "--package", "cairn-qemu-tests", "--bin", "cairn-test-relay"])
        .current_dir(paths::workspace())
        .run()?;
    let relay = paths::workspace().join("target/debug/cairn-test-relay");
    let server = Server::start(&www)?;
    let mut opts = VmOptions::of(v1);
    opts.forward_update_server(&relay, server.port);
    let vm = Vm::boot(&opts, BOOT)?;
    let c = &vm.console;
    c.run_ok(
        "mkdir -p /etc/cairn/agent.d && printf '[update]\\nauto = false\\n' > /etc/cairn/agent.d/50-bench.toml && systemctl restart cairn-agent && systemctl is-system-running --wait",
        COMMAND,
    )?;
    std::thread::sleep(Duration::from_secs(20));
    let rss = c.run_ok("ps -o rss= -C cairn-agent | head -n 1", COMMAND)?;
    let agent_idle_rss_kib: u64 = rss.trim().parse().with_context(|| format!("ps printed {rss:?}"))?;

    let before = server.bytes_sent();
    let t = Instant::now();
    let staged = c.run_ok("cairn-agent update --no-reboot 2>&1 | tail -n 3", COMMAND)?;
    let stage_secs = t.elapsed().as_secs_f64();
    if !staged.contains(&format!("staged {v2}")) {
        bail!("the benchmark update did not stage:\n{staged}");
    }
    let update_bytes = server.bytes_sent() - before;

    let t = Instant::now();
    c.send("systemctl reboot\n")?;
    c.wait_for("Linux version", BOOT)?;
    vm.wait_for_root_shell(BOOT)?;
    cairn_qemu_tests::agent_status::wait_status(c, "the update to be committed", BOOT, |s| s.settled())?;
    let reboot_to_committed_secs = t.elapsed().as_secs_f64();
    Ok(UpdateFigures {
        added_package: ADDED_PACKAGE,
        update_bytes,
        full_image_bytes,
        update_percent_of_image: 100.0 * update_bytes as f64 / full_image_bytes.max(1) as f64,
        stage_secs,
        reboot_to_committed_secs,
        agent_idle_rss_kib,
    })
}
