//! `cargo xtask test`: the whole suite, in tiers.
//!
//! 0. The conventions, with the whole suite (not when filters pick tests):
//!    `cargo fmt --check`, `cargo clippy --all-targets -D warnings` (which
//!    also enforces `clippy.toml`: no `std::process::Command` outside the
//!    process helper) and `cargo doc` with warnings denied.
//! 1. `cargo test --workspace`: unit tests (no root, no network, no VM);
//!    for a foreign `--arch`, also the agent's unit tests under qemu-user.
//! 2. Build the dev image, and the prod image if a selected test boots it
//!    (host tools installed first).
//! 3. The ignored tests of `qemu-tests`, one `cargo test` each (each VM
//!    takes both cores), with the images handed over in a JSON file and
//!    python-tuf installed (the TUF conformance tests); under emulation of
//!    a foreign arch the long ones are left out (see `skipped_tests`). Each
//!    test's wall time is printed and recorded ([`crate::suite`]).

use anyhow::{Context, Result};
use cairn_common::process::Cmd;
use cairn_qemu_tests::{artifacts, qemu, Artifacts};

use crate::{build, cross, host, paths, suite, Target};

pub fn test(target: &Target, filters: &[String]) -> Result<()> {
    let arch = target.arch;
    build::validate(&target.image("dev"))?;
    host::prepare(host::Task::Vm, arch)?;
    if filters.is_empty() {
        conventions()?;
    }
    cargo(&["test", "--workspace"]).context("unit tests")?;
    // The agent's unit tests built for a foreign arch, under qemu-user
    // (minutes to compile): with the whole suite, not when a filter picks
    // VM tests.
    if cairn_common::layout::Arch::host() != Some(arch) && filters.is_empty() {
        cross::unit_tests(arch)?;
    }

    let needs_prod = filters.is_empty()
        || filters
            .iter()
            .any(|f| artifacts::PROD_TESTS.iter().any(|t| t.contains(f.as_str())));
    let (_, file) = artifacts(target, needs_prod)?;
    let python_tuf = host::ensure_python_tuf(&paths::cache())?;

    // Probe KVM once here rather than in every test process.
    let accel = qemu::accel(arch);
    let native = accel == qemu::Accel::Kvm || cairn_common::layout::Arch::host() == Some(arch);
    let tests = suite::select(list_vm_tests()?, filters, skipped_tests(native));
    anyhow::ensure!(!tests.is_empty(), "no VM or builder test matches {filters:?}");
    // One `cargo test` per test, each VM alone (it takes both cores), so
    // every test's wall time is known; a failure does not stop the others.
    let mut run = suite::SuiteTimes {
        finished_at: 0,
        accel: accel.as_str().to_owned(),
        tests: Vec::new(),
    };
    for t in &tests {
        eprintln!("── {}::{} ──", t.file, t.name);
        let started = std::time::Instant::now();
        let passed = Cmd::new(env!("CARGO"))
            .args(["test", "--package", "cairn-qemu-tests", "--test", &t.file, "--"])
            .args(["--ignored", "--exact", &t.name, "--test-threads=1"])
            .env(artifacts::ENV, &file)
            .env("CAIRN_ACCEL", accel.as_str())
            // The interpreter `tuf_conformance.rs` runs python-tuf with.
            .env("CAIRN_PYTHON_TUF", &python_tuf)
            .current_dir(paths::workspace())
            .run_inherited()
            .is_ok();
        run.tests.push(suite::TestTime {
            file: t.file.clone(),
            name: t.name.clone(),
            secs: started.elapsed().as_secs_f64(),
            passed,
        });
    }
    run.finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = suite_times_path(target);
    std::fs::write(&record, serde_json::to_vec_pretty(&run)?)
        .with_context(|| format!("writing {}", record.display()))?;
    eprintln!(
        "VM and builder tests, wall time each ({}):\n{}",
        record.display(),
        run.table()
    );
    let failed = run.failed();
    anyhow::ensure!(failed.is_empty(), "VM and builder tests failed: {}", failed.join(", "));
    Ok(())
}

/// Where `cargo xtask test` records each VM and builder test's wall time.
pub fn suite_times_path(target: &Target) -> std::path::PathBuf {
    paths::out(target.arch).join(format!("suite-times-{}.json", target.platform))
}

/// Every ignored test of each `qemu-tests/tests/*.rs` file, by libtest's
/// own `--list`.
fn list_vm_tests() -> Result<Vec<suite::TestId>> {
    let dir = paths::workspace().join("qemu-tests/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut tests = Vec::new();
    for file in files {
        let listed = Cmd::new(env!("CARGO"))
            .args(["test", "--package", "cairn-qemu-tests", "--test", &file, "--"])
            .args(["--ignored", "--list"])
            .current_dir(paths::workspace())
            .output()
            .with_context(|| format!("listing the tests of qemu-tests/tests/{file}.rs"))?;
        tests.extend(suite::parse_list(&listed.stdout).into_iter().map(|name| suite::TestId {
            file: file.clone(),
            name,
        }));
    }
    Ok(tests)
}

/// Host tools, binaries, the dev image and (if asked) the prod image,
/// described for the VM tests (and written to
/// `target/cairn/<arch>/test-artifacts-<platform>.json`).
pub fn artifacts(target: &Target, with_prod: bool) -> Result<(Artifacts, std::path::PathBuf)> {
    let arch = target.arch;
    host::prepare(host::Task::Vm, arch)?;
    let agent_dir = build::binaries(arch)?;
    let dev = build::image_with(&target.image("dev"), &paths::manifest(), &paths::cache(), &agent_dir)?;
    let prod = if with_prod {
        Some(build::image_with(
            &target.image("prod"),
            &paths::manifest(),
            &paths::cache(),
            &agent_dir,
        )?)
    } else {
        None
    };
    let a = Artifacts {
        arch,
        platform: target.platform,
        dev,
        prod,
        builder: build::builder(),
        manifest: paths::manifest(),
        repo: paths::repo(arch),
        cache: paths::cache(),
        keys: paths::keys(),
        agent_dir,
        busybox: host::static_busybox(arch, &paths::cache())?,
    };
    let file = paths::out(arch).join(format!("test-artifacts-{}.json", target.platform));
    std::fs::write(&file, serde_json::to_vec_pretty(&a)?)?;
    Ok((a, file))
}

/// VM tests left out of a run. Under emulation of a foreign architecture
/// (TCG runs an aarch64 guest two to three times slower than an x86_64 one)
/// the long update and power-cut tests would take hours: the short update
/// test covers their core there. The update from the previous Debian base
/// (the same agent and update path, another package layer) runs natively. With KVM, or on the host's own
/// architecture, the long ones run and the short one (their subset) is left out.
fn skipped_tests(native: bool) -> &'static [&'static str] {
    if native {
        &["update_is_committed_and_a_failed_health_gate_rolls_back"]
    } else {
        &[
            "healthy_update_is_committed_and_unhealthy_one_rolls_back_by_itself",
            "a_power_cut_at_any_moment",
            // The agent's Kubernetes and rollout logic is the same on every arch.
            "a_kubernetes_node_takes_a_phased_release_in_its_turn_and_reboots_only_once_drained",
            // Its own package layer of the previous Debian release first.
            "a_host_on_the_previous_debian_takes_the_current_one_and_falls_back_from_a_failing_release",
            // The node image's own package layer first (through qemu-user),
            // then two boots; what it checks is configuration and the
            // agent's provisioning, the same on every arch.
            "a_node_image_with_the_users_own_package_runs_pod_sandboxes_through_cri_and_merges_system_extensions",
        ]
    }
}

/// Formatting, lints and documentation, each with warnings as errors.
fn conventions() -> Result<()> {
    cargo(&["fmt", "--all", "--check"]).context("cargo fmt --check: run `cargo fmt --all`")?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]).context("cargo clippy")?;
    Cmd::new(env!("CARGO"))
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .current_dir(paths::workspace())
        .run_inherited()
        .context("cargo doc")
}

fn cargo(args: &[&str]) -> Result<()> {
    Cmd::new(env!("CARGO"))
        .args(args)
        .current_dir(paths::workspace())
        .run_inherited()
}
