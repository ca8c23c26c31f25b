//! Signed updates end to end: releases published with `cairn-build publish`
//! into an update repository served over HTTP on 127.0.0.1, reached by the
//! guest through a restricted user network's guestfwd. Needs `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_qemu_tests::http::{Fault, Server};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::Artifacts;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(300);
const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");

/// Run `cairn-build` with the artifacts' manifest and keys; return stdout.
fn cairn_build(a: &Artifacts, args: &[&str]) -> String {
    let out = std::process::Command::new(&a.builder)
        .args(args)
        .output()
        .expect("running cairn-build");
    assert!(
        out.status.success(),
        "cairn-build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Commit a new release of the dev image into `repo` (the package layer comes from the cache).
fn compose(a: &Artifacts, repo: &Path, version: &str, overlays: &[PathBuf]) {
    let mut args = vec![
        "compose", "--manifest", path(&a.manifest), "--flavor", "dev", "--arch", a.arch.as_str(),
        "--repo", path(repo), "--cache", path(&a.cache), "--keys", path(&a.keys),
        "--agent-dir", path(&a.agent_dir), "--version", version,
    ];
    for o in overlays {
        args.extend(["--overlay", path(o)]);
    }
    cairn_build(a, &args);
}

fn publish(a: &Artifacts, repo: &Path, updates: &Path) -> Value {
    let out = cairn_build(
        a,
        &[
            "publish", "--manifest", path(&a.manifest), "--flavor", "dev", "--arch", a.arch.as_str(),
            "--repo", path(repo), "--update-repo", path(updates), "--keys", path(&a.keys),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

/// Sign a release record into the update repository's TUF metadata (as a
/// compromised or mistaken build pipeline could).
fn add_release(a: &Artifacts, updates: &Path, version: &str, commit: &str) {
    let release = cairn_common::release::Release {
        version: version.into(),
        arch: a.arch,
        flavor: "dev".into(),
        stream: "stable".into(),
        ostree_ref: format!("cairn/{}/dev/stable", a.arch),
        commit: commit.into(),
        requires: None,
    };
    let targets = updates.join("targets");
    std::fs::write(targets.join(release.target_name()), serde_json::to_vec(&release).unwrap()).unwrap();
    resign(a, updates);
}

fn remove_release(a: &Artifacts, updates: &Path, version: &str) {
    let targets = updates.join("targets");
    for e in std::fs::read_dir(&targets).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().ends_with(&format!("-{version}.json")) {
            std::fs::remove_file(p).unwrap();
        }
    }
    resign(a, updates);
}

fn resign(a: &Artifacts, updates: &Path) {
    let in_days = |d| chrono::Utc::now() + chrono::Duration::days(d);
    let expiry = cairn_builder::tuf_repo::Expiry {
        targets: in_days(30),
        snapshot: in_days(30),
        timestamp: in_days(7),
    };
    cairn_builder::tuf_repo::sign_metadata(&a.keys, &updates.join("targets"), &updates.join("tuf"), expiry).unwrap();
}

/// Nothing staged, no trial, still on `version`.
fn assert_unchanged(s: &Value, version: &str) {
    assert_eq!(booted_version(s), version, "{s:#}");
    assert!(s["trial"].is_null(), "{s:#}");
    assert_eq!(s["phase"]["phase"], "idle", "{s:#}");
    assert!(s["boot_tries_left"].is_null(), "{s:#}");
    assert!(!s["deployments"].as_array().unwrap().iter().any(|d| d["staged"] == true), "{s:#}");
}

fn status(vm: &Vm) -> Value {
    let out = vm.console.run_ok("cairn-agent status --json 2>/dev/null", COMMAND).unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"))
}

fn booted_version(s: &Value) -> String {
    s["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["booted"] == true)
        .and_then(|d| d["version"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Poll `status` until `done` holds (the daemon settles a boot after the boot finishes).
fn wait_status(vm: &Vm, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + BOOT;
    loop {
        let s = status(vm);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last status:\n{s:#}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn healthy_update_is_committed_and_unhealthy_one_rolls_back_by_itself() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("cairn-update-test-").tempdir().unwrap();
    // The image's agent updates from http://10.0.2.100/repo (rootfs/image.toml).
    let (build, www) = (scratch.path().join("build"), scratch.path().join("www"));
    let updates = www.join("repo");

    // v1 is the booted image; v2 a healthy release.
    let v1 = publish(&a, &a.repo, &updates);
    assert_eq!(v1["release"]["commit"], a.dev.commit.as_str());
    compose(&a, &build, "0.2.0", &[]);
    let v2 = publish(&a, &build, &updates);
    assert_eq!(v2["deltas_from"], serde_json::json!([a.dev.version]));

    let server = Server::start(&www).unwrap();
    let mut opts = VmOptions::new(a.arch, &a.dev.raw);
    opts.forward_update_server(Path::new(RELAY), server.port);
    let vm = Vm::start(&opts).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let c = &vm.console;
    // The test drives updates itself, and one failed trial boot is enough.
    c.run_ok(
        "mkdir -p /etc/cairn/agent.d && printf '[update]\\nauto = false\\ndownload-retries = 3\\n[boot]\\ntries = 1\\n' > /etc/cairn/agent.d/50-test.toml && systemctl restart cairn-agent",
        COMMAND,
    )
    .unwrap();
    let s = status(&vm);
    assert_eq!(booted_version(&s), a.dev.version, "{s:#}");

    // A downgrade or an unknown version is refused, and changes nothing.
    let refused = c.run("cairn-agent update --version 0.0.1 --no-reboot", COMMAND).unwrap();
    assert_ne!(refused.status, 0);
    assert!(refused.output.contains("release 0.0.1 is not in the update repository"), "{}", refused.output);

    // The update server is down: a clear error, and nothing changes.
    server.inject("/repo/tuf/", Fault::Status(503), 1000);
    let down = c.run("cairn-agent check 2>&1", COMMAND).unwrap();
    assert_ne!(down.status, 0, "{}", down.output);
    let s = status(&vm);
    assert!(s["last_error"]["message"].as_str().unwrap_or("").contains("503"), "{s:#}");
    assert_unchanged(&s, &a.dev.version);
    server.clear_faults();

    // A release whose commit the server does not have: refused, nothing staged.
    add_release(&a, &updates, "0.2.1", &"e".repeat(64));
    let missing = c.run("cairn-agent update --version 0.2.1 --no-reboot 2>&1", COMMAND).unwrap();
    assert_ne!(missing.status, 0, "{}", missing.output);
    let s = status(&vm);
    assert!(s["last_error"]["operation"] == "update", "{s:#}");
    assert_unchanged(&s, &a.dev.version);
    remove_release(&a, &updates, "0.2.1");

    // v1 → v2, keeping /etc and /var, through a flaky server: 5xx answers,
    // a truncated body and a reset connection are retried.
    server.inject("/repo/tuf/timestamp.json", Fault::Status(503), 1);
    // (ostree does not retry these itself; each one costs the agent an
    // attempt, and the test's config allows 3 retries.)
    server.inject("/repo/ostree/", Fault::Status(502), 1);
    server.inject("/repo/ostree/", Fault::Truncate, 1);
    server.inject("/repo/ostree/", Fault::Reset, 1);
    c.run_ok("echo kept > /etc/cairn-update-test && mkdir -p /var/lib/cairn-test && echo kept > /var/lib/cairn-test/data && sync", COMMAND)
        .unwrap();
    let staged = c.run_ok("cairn-agent update --no-reboot 2>&1", COMMAND).unwrap();
    assert!(staged.contains("staged 0.2.0"), "{staged}");
    let injected: Vec<u16> = server.requests().iter().map(|r| r.1).filter(|c| *c != 200 && *c != 404).collect();
    assert!(injected.len() >= 3, "the faults were not exercised: {injected:?}");
    server.clear_faults();
    let s = status(&vm);
    assert_eq!(s["phase"]["phase"], "staged", "{s:#}");
    assert_eq!(s["boot_tries_left"], 1, "{s:#}");
    c.send("systemctl reboot\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "v2 to be committed", |s| s["phase"]["phase"] == "idle" && s["trial"].is_null());
    assert_eq!(booted_version(&s), "0.2.0", "{s:#}");
    assert!(s["boot_tries_left"].is_null(), "{s:#}");
    assert_eq!(c.run_ok("cat /etc/cairn-update-test /var/lib/cairn-test/data", COMMAND).unwrap().trim(), "kept\nkept");
    let history = c.run_ok("cairn-agent history 2>/dev/null", COMMAND).unwrap();
    assert!(history.contains("committed") && history.contains("0.2.0"), "{history}");

    // v3's health check fails: the trial boot reboots, GRUB's counter runs
    // out, and the host comes back on v2 unattended, with v3 marked bad.
    compose(&a, &build, "0.3.0", &[Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/failing-health")]);
    publish(&a, &build, &updates);
    c.send("cairn-agent update\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap(); // the trial boot of v3
    c.wait_for("Linux version", BOOT).unwrap(); // after its health gate failed
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "v3 to be rolled back", |s| {
        s["bad_versions"].as_array().is_some_and(|b| b.iter().any(|v| v == "0.3.0")) && s["trial"].is_null()
    });
    assert_eq!(booted_version(&s), "0.2.0", "{s:#}");
    let versions: Vec<&str> = s["deployments"].as_array().unwrap().iter().filter_map(|d| d["version"].as_str()).collect();
    assert!(!versions.contains(&"0.3.0"), "the failed deployment is still there: {s:#}");
    assert!(s["last_error"]["message"].as_str().unwrap_or("").contains("0.3.0"), "{s:#}");
    // A bad version is not taken again.
    let again = c.run_ok("cairn-agent update --no-reboot 2>&1", COMMAND).unwrap();
    assert!(again.contains("up to date"), "{again}");

    // v4's boot never finishes: the health gate times out, the trial boot
    // reboots, and the host is back on v2.
    c.run_ok("printf '[health]\\ntimeout = \"2m\"\\n' > /etc/cairn/agent.d/60-test-health.toml", COMMAND).unwrap();
    compose(&a, &build, "0.4.0", &[Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hanging-boot")]);
    publish(&a, &build, &updates);
    c.send("cairn-agent update\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap(); // the trial boot of v4, which hangs
    c.wait_for("Linux version", BOOT).unwrap(); // after the health gate timed out
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "v4 to be rolled back", |s| {
        s["bad_versions"].as_array().is_some_and(|b| b.iter().any(|v| v == "0.4.0")) && s["trial"].is_null()
    });
    assert_eq!(booted_version(&s), "0.2.0", "{s:#}");
    assert_running_without_failures(&vm);
}

/// The system reached its default target with no failed unit.
fn assert_running_without_failures(vm: &Vm) {
    let state = vm.console.run("systemctl is-system-running --wait", BOOT).unwrap();
    assert_eq!(state.output.trim(), "running", "{}", vm.console.tail(3000));
}
