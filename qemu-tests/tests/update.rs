//! Signed updates end to end: releases published with `cairn-build publish`
//! into an update repository served over HTTP on 127.0.0.1, reached by the
//! guest through a restricted user network's guestfwd. Needs `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_builder::image::BuiltImage;
use cairn_common::layout::Arch;

use cairn_qemu_tests::agent_status::{
    self, booted_version, is_bad, versions, ExclusionReason, Status, UpdateState, Waiting,
};
use cairn_qemu_tests::fleet_lock::FleetLockServer;
use cairn_qemu_tests::guest_checks::assert_running_without_failures;
use cairn_qemu_tests::http::{Fault, Server};
use cairn_qemu_tests::kube_api::{KubeApi, RunBy};
use cairn_qemu_tests::releases::TestReleases;
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::Artifacts;

const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(300);
const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// Nothing staged, no trial, still on `version`.
fn assert_unchanged(s: &Status, version: &str) {
    assert_eq!(booted_version(s), version, "{s:#?}");
    assert!(s.settled(), "{s:#?}");
    assert!(s.boot_tries_left.is_none(), "{s:#?}");
}

fn status(vm: &Vm) -> Status {
    agent_status::status(&vm.console).unwrap()
}

/// Poll `status` until `done` holds (the daemon settles a boot after the boot finishes).
fn wait_status(vm: &Vm, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    agent_status::wait_status(&vm.console, what, BOOT, done).unwrap()
}

/// `cairn-agent update` to `version`, whose trial boot fails: see
/// [`falls_back`].
fn update_and_fall_back(vm: &Vm, version: &str, trial_ends: &[&str]) -> Status {
    vm.console.send("cairn-agent update\n").unwrap();
    falls_back(vm, version, trial_ends)
}

/// A reboot into `version` is on its way, and its trial boot fails: after
/// the trial boot starts, the console shows `trial_ends` (in order), then
/// the boot GRUB falls back to. Returns the settled status, `version`
/// marked bad.
fn falls_back(vm: &Vm, version: &str, trial_ends: &[&str]) -> Status {
    let c = &vm.console;
    c.wait_for("Linux version", BOOT).unwrap(); // the trial boot
    for line in trial_ends {
        c.wait_for(line, BOOT).unwrap();
    }
    c.wait_for("Linux version", BOOT).unwrap(); // the boot GRUB fell back to
    vm.wait_for_root_shell(BOOT).unwrap();
    wait_status(vm, &format!("{version} to be rolled back"), |s| {
        is_bad(s, version) && s.settled()
    })
}

/// `cairn-agent update` to a healthy release: its trial boot is committed.
fn update_and_commit(vm: &Vm) -> Status {
    vm.console.send("cairn-agent update\n").unwrap();
    vm.console.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    wait_status(vm, "the update to be committed", |s| s.settled())
}

/// Serve `releases` on loopback, boot the dev image with it forwarded as
/// the update server, and give the agent `agent_toml` (printf-escaped) as
/// `/etc/cairn/agent.d/50-test.toml`.
fn boot_with_update_server(a: &Artifacts, releases: &TestReleases, agent_toml: &str) -> (Server, Vm) {
    boot_image_with_update_server(&a.dev, releases, agent_toml, &[])
}

/// [`boot_with_update_server`] for another image than the dev image, with
/// more loopback servers reached at guest addresses (`ip:port`, port).
fn boot_image_with_update_server(
    image: &BuiltImage,
    releases: &TestReleases,
    agent_toml: &str,
    more: &[(&str, u16)],
) -> (Server, Vm) {
    let server = Server::start(&releases.www).unwrap();
    let mut opts = VmOptions::of(image);
    opts.forward_update_server(Path::new(RELAY), server.port);
    for (addr, port) in more {
        opts.forward_to_loopback(Path::new(RELAY), addr, *port);
    }
    let vm = Vm::boot(&opts, BOOT).unwrap();
    vm.console
        .run_ok(
            &format!("mkdir -p /etc/cairn/agent.d && printf '{agent_toml}' > /etc/cairn/agent.d/50-test.toml && systemctl restart cairn-agent"),
            COMMAND,
        )
        .unwrap();
    (server, vm)
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn healthy_update_is_committed_and_unhealthy_one_rolls_back_by_itself() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("cairn-update-test-").tempdir().unwrap();
    // The image's agent updates from http://10.0.2.100/repo (rootfs/image.toml).
    let releases = TestReleases::new(&a, scratch.path());

    // v1 is the booted image; v2 a healthy release that adds a kernel argument.
    let v1 = releases.publish_booted().unwrap();
    assert_eq!(v1["release"]["commit"], a.dev.commit.as_str());
    releases.compose("0.2.0", &[fixture("added-karg")]).unwrap();
    let v2 = releases.publish().unwrap();
    assert_eq!(v2["deltas_from"], serde_json::json!([a.dev.version]));

    // The test drives updates itself, and one failed trial boot is enough.
    // A FleetLock server with one slot per group, at 10.0.2.101.
    let lock = FleetLockServer::start(1).unwrap();
    let (server, vm) = boot_image_with_update_server(
        &a.dev,
        &releases,
        "[update]\\nauto = false\\ndownload-retries = 5\\ndownload-stall-timeout = \"15s\"\\n[boot]\\ntries = 1\\n",
        &[("10.0.2.101:80", lock.port())],
    );
    let c = &vm.console;
    let s = status(&vm);
    assert_eq!(booted_version(&s), a.dev.version, "{s:#?}");

    // A downgrade or an unknown version is refused, and changes nothing.
    let refused = c
        .run("cairn-agent update --version 0.0.1 --no-reboot", COMMAND)
        .unwrap();
    assert_ne!(refused.status, 0);
    assert!(
        refused.output.contains("release 0.0.1 is not in the update repository"),
        "{}",
        refused.output
    );

    // The update server is down: a clear error, and nothing changes.
    server.inject("/repo/tuf/", Fault::Status(503), 1000);
    let down = c.run("cairn-agent check 2>&1", COMMAND).unwrap();
    assert_ne!(down.status, 0, "{}", down.output);
    let s = status(&vm);
    assert!(
        s.last_error.as_ref().is_some_and(|e| e.message.contains("503")),
        "{s:#?}"
    );
    assert_unchanged(&s, &a.dev.version);
    server.clear_faults();

    // A release whose commit the server does not have: refused, nothing staged.
    releases
        .sign_release(&releases.record("0.2.1", &"e".repeat(64)))
        .unwrap();
    let missing = c
        .run("cairn-agent update --version 0.2.1 --no-reboot 2>&1", COMMAND)
        .unwrap();
    assert_ne!(missing.status, 0, "{}", missing.output);
    let s = status(&vm);
    assert!(s.last_error.as_ref().is_some_and(|e| e.operation == "update"), "{s:#?}");
    assert_unchanged(&s, &a.dev.version);
    releases.remove_release("0.2.1").unwrap();

    // v1 → v2, keeping /etc and /var, through a flaky server: 5xx answers,
    // a truncated body and a reset connection are retried.
    server.inject("/repo/tuf/timestamp.json", Fault::Status(503), 1);
    // (ostree does not retry these itself; each one costs the agent an
    // attempt, and the test's config allows 5 retries.)
    server.inject("/repo/ostree/", Fault::Status(502), 1);
    server.inject("/repo/ostree/", Fault::Truncate, 1);
    server.inject("/repo/ostree/", Fault::Reset, 1);
    // A server that stops sending mid-download: the agent kills a pull that
    // makes no progress for download-stall-timeout (15 s here) and retries.
    server.inject("/repo/ostree/deltas/", Fault::Stall(Duration::from_secs(900)), 1);
    c.run_ok("echo kept > /etc/cairn-update-test && mkdir -p /var/lib/cairn-test && echo kept > /var/lib/cairn-test/data && sync", COMMAND)
        .unwrap();
    let staged = c.run_ok("cairn-agent update --no-reboot 2>&1", COMMAND).unwrap();
    assert!(staged.contains("staged 0.2.0"), "{staged}");
    let injected: Vec<u16> = server
        .requests()
        .iter()
        .map(|r| r.1)
        .filter(|c| *c != 200 && *c != 404)
        .collect();
    assert!(injected.len() >= 3, "the faults were not exercised: {injected:?}");
    let stalled = server
        .requests()
        .iter()
        .filter(|r| r.0.contains("/repo/ostree/deltas/"))
        .count();
    assert!(
        stalled >= 2,
        "the stalled delta was not fetched again: {:?}",
        server.requests()
    );
    server.clear_faults();
    let s = status(&vm);
    assert!(matches!(s.update, UpdateState::Staged { .. }), "{s:#?}");
    assert_eq!(s.boot_tries_left, Some(1), "{s:#?}");
    c.send("systemctl reboot\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "v2 to be committed", |s| s.settled());
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert!(s.boot_tries_left.is_none(), "{s:#?}");
    assert_eq!(
        c.run_ok("cat /etc/cairn-update-test /var/lib/cairn-test/data", COMMAND)
            .unwrap()
            .trim(),
        "kept\nkept"
    );
    let history = c.run_ok("cairn-agent history", COMMAND).unwrap();
    assert!(history.contains("committed") && history.contains("0.2.0"), "{history}");
    assert_cmdline(&vm, ADDED_KARG, true);

    // An operator rolls back to v1: it sticks. The daemon, checking every
    // minute (the shortest interval allowed) with immediate reboots, does
    // not take v2 again; v2's kernel argument goes with it; `status` reads
    // idle after the reboot.
    c.run_ok(
        "printf '[update]\\nauto = true\\ncheck-interval = \"1m\"\\ncheck-jitter = \"0s\"\\n[reboot]\\nstrategy = \"immediate\"\\n' > /etc/cairn/agent.d/70-rollback-test.toml && sync",
        COMMAND,
    )
    .unwrap();
    c.send("cairn-agent rollback\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "the rollback to settle", |s| s.settled());
    assert_eq!(booted_version(&s), a.dev.version, "{s:#?}");
    assert!(s.is_excluded("0.2.0", ExclusionReason::RolledBack), "{s:#?}");
    // The daemon checked once right after the boot settled; wait for the
    // next check, a minute later.
    let settled_at: u64 = c.run_ok("date +%s", COMMAND).unwrap().trim().parse().unwrap();
    let s = wait_status(&vm, "a second daemon check after the rollback", |s| {
        s.last_check.is_some_and(|t| t > settled_at)
    });
    assert_unchanged(&s, &a.dev.version);
    assert_eq!(s.available, None, "{s:#?}");
    assert_cmdline(&vm, ADDED_KARG, false);
    // Named explicitly, v2 is taken again (and its argument comes back),
    // its reboot coordinated by the FleetLock server: held while another
    // node has the group's one slot, taken once that frees, given back
    // once v2 is committed.
    lock.hold("default", "another-node");
    c.run_ok(
        &format!("rm /etc/cairn/agent.d/70-rollback-test.toml && printf '{FLEET_LOCK_TOML}' > /etc/cairn/agent.d/75-fleet-lock.toml && sync && systemctl restart cairn-agent"),
        COMMAND,
    )
    .unwrap();
    let staged = c.run_ok("cairn-agent update --version 0.2.0 2>&1", COMMAND).unwrap();
    assert!(staged.contains("reboots once the fleet lock"), "{staged}");
    let s = wait_status(&vm, "the fleet lock to hold the reboot", |s| {
        matches!(&s.waiting, Some(Waiting::Lock { reason: Some(_), .. }))
    });
    let Some(Waiting::Lock { reason: Some(why), .. }) = &s.waiting else {
        unreachable!()
    };
    assert!(
        why.contains("HTTP 409") && why.contains("semaphore currently full"),
        "{why}"
    );
    let text = c.run_ok("cairn-agent status", COMMAND).unwrap();
    assert!(text.contains("waiting for a slot of the fleet lock"), "{text}");
    // The same, as metrics: printed, and in node_exporter's textfile.
    let metrics = c.run_ok("cairn-agent metrics", COMMAND).unwrap();
    assert!(metrics.contains("cairn_reboot_waiting{for=\"lock\"} 1"), "{metrics}");
    c.run_ok(
        "grep -q '^cairn_update_state{state=\"staged\"} 1$' /run/cairn/metrics/cairn-agent.prom",
        COMMAND,
    )
    .unwrap();
    lock.free("default", "another-node");
    c.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "v2 to be committed again", |s| s.settled());
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert!(s.excluded.is_empty(), "{s:#?}");
    assert_cmdline(&vm, ADDED_KARG, true);
    let node = assert_slot_taken_then_given_back(&lock);

    // Each of these is refused, names why, and leaves the host as it was.
    let v2_commit = v2["release"]["commit"].as_str().unwrap().to_owned();
    let other = other_arch(a.arch);
    let refused = |version: &str, why: &[&str]| {
        let out = c
            .run(
                &format!("cairn-agent update --version {version} --no-reboot 2>&1"),
                COMMAND,
            )
            .unwrap();
        assert_ne!(out.status, 0, "{version} was not refused:\n{}", out.output);
        let s = status(&vm);
        let message = s
            .last_error
            .as_ref()
            .map(|e| e.message.to_lowercase())
            .unwrap_or_default();
        assert!(
            why.iter().any(|w| message.contains(w)),
            "{version}: expected one of {why:?} in the last error:\n{s:#?}"
        );
        assert_unchanged(&s, "0.2.0");
    };
    // A downgrade, unless asked for.
    refused("0.1.0", &["downgrade needs --allow-downgrade"]);
    // A release for another architecture.
    let mut foreign = releases.record("0.2.1", &v2_commit);
    foreign.arch = other;
    releases.sign_release(&foreign).unwrap();
    refused("0.2.1", &[&format!("is for {other}")]);
    releases.remove_release("0.2.1").unwrap();
    // A commit TUF names but nobody signed with the image's GPG key.
    let unsigned = releases
        .commit_copy(&v2_commit, "0.2.2", a.arch.as_str(), false)
        .unwrap();
    releases.sign_release(&releases.record("0.2.2", &unsigned)).unwrap();
    refused("0.2.2", &["gpg", "signature"]);
    releases.remove_release("0.2.2").unwrap();
    // A signed commit built for another architecture, which TUF calls ours.
    let mislabelled = releases.commit_copy(&v2_commit, "0.2.3", other.as_str(), true).unwrap();
    releases.sign_release(&releases.record("0.2.3", &mislabelled)).unwrap();
    refused("0.2.3", &[&format!("is built for {other}")]);
    releases.remove_release("0.2.3").unwrap();
    // A release whose bytes were corrupted on the server: first in its
    // static delta, then (the delta withdrawn) in a file object.
    let deltas_before = files_under(&releases.updates().join("ostree/deltas"));
    let v2_4 = releases
        .compose_and_publish_with_payload("0.2.4", 1 << 20, scratch.path())
        .unwrap();
    let new_deltas: Vec<PathBuf> = files_under(&releases.updates().join("ostree/deltas"))
        .into_iter()
        .filter(|f| !deltas_before.contains(f))
        .collect();
    assert!(!new_deltas.is_empty(), "publish made no static delta for 0.2.4");
    for f in &new_deltas {
        flip_bytes_near_end(f);
    }
    refused("0.2.4", &["checksum", "corrupt", "invalid"]);
    for f in &new_deltas {
        std::fs::remove_file(f).unwrap();
    }
    let v2_4_commit = v2_4["release"]["commit"].as_str().unwrap();
    swap_in_other_content(&releases, v2_4_commit, "/usr/share/cairn-test/payload");
    refused("0.2.4", &["corrupted file object"]);
    releases.remove_release("0.2.4").unwrap();
    let s = status(&vm);
    assert!(s.excluded.is_empty(), "a refusal excludes nothing: {s:#?}");

    // v3's boot never finishes: the health gate times out, the trial boot
    // reboots, GRUB's counter runs out, and the host comes back on v2
    // unattended, with v3 marked bad and its deployment gone. (A health
    // check that fails outright is the shorter test below, the power-cut
    // rig's fall-back cut, and the previous-Debian test's.)
    c.run_ok(
        "printf '[health]\\ntimeout = \"1m\"\\n' > /etc/cairn/agent.d/60-test-health.toml",
        COMMAND,
    )
    .unwrap();
    releases.compose("0.3.0", &[fixture("hanging-boot")]).unwrap();
    releases.publish().unwrap();
    // Still under the fleet lock: the node takes the slot for the trial,
    // and the boot GRUB falls back to gives it back.
    let s = update_and_fall_back(&vm, "0.3.0", &[]); // it hangs; the health gate times out
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert_eq!(assert_slot_taken_then_given_back(&lock), node, "the same id every boot");
    assert!(
        !versions(&s).contains(&"0.3.0".to_owned()),
        "the failed deployment is still there: {s:#?}"
    );
    assert!(
        s.last_error.as_ref().is_some_and(|e| e.message.contains("0.3.0")),
        "{s:#?}"
    );
    // A bad version is not taken again.
    let again = c.run_ok("cairn-agent update --no-reboot 2>&1", COMMAND).unwrap();
    assert!(again.contains("up to date"), "{again}");

    // v4's kernel cannot mount its root (its initramfs is empty): the kernel
    // panics, panic=10 reboots, and GRUB's counter brings back v2.
    releases
        .compose("0.4.0", &[empty_initramfs_overlay(&releases, scratch.path())])
        .unwrap();
    releases.publish().unwrap();
    // Under kured: the agent stages and writes kured's sentinel; kured
    // (here the test) drains and reboots. panic=10 reboots; GRUB falls back.
    c.run_ok(
        "rm /etc/cairn/agent.d/75-fleet-lock.toml && printf '[reboot]\\nstrategy = \"kured\"\\n' > /etc/cairn/agent.d/75-kured.toml && sync && systemctl restart cairn-agent",
        COMMAND,
    )
    .unwrap();
    let staged = c.run_ok("cairn-agent update 2>&1", COMMAND).unwrap();
    assert!(staged.contains("kured drains and reboots"), "{staged}");
    wait_status(&vm, "the sentinel for kured", |s| {
        s.waiting == Some(Waiting::Kured { sentinel_written: true })
    });
    c.run_ok("test -e /var/run/reboot-required", COMMAND).unwrap();
    c.send("systemctl reboot\n").unwrap(); // kured's reboot
    let s = falls_back(&vm, "0.4.0", &["Unable to mount root fs"]);
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert_eq!(s.waiting, None, "{s:#?}");
    // The boot GRUB fell back to hands nothing to kured.
    c.run_ok(
        "test ! -e /var/run/reboot-required && rm /etc/cairn/agent.d/75-kured.toml && sync && systemctl restart cairn-agent",
        COMMAND,
    )
    .unwrap();

    // v5 hangs userspace hard (PID 1 starved): nothing in userspace can act,
    // systemd stops feeding the watchdog, the watchdog reboots, and GRUB's
    // counter brings back v2.
    releases.compose("0.5.0", &[fixture("userspace-hang")]).unwrap();
    releases.publish().unwrap();
    let s = update_and_fall_back(
        &vm,
        "0.5.0",
        &[
            "hanging userspace (watchdog active, fair server off)",
            "softdog: Initiating system reboot",
        ],
    );
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    let history = c.run_ok("cairn-agent history", COMMAND).unwrap();
    for v in ["0.3.0", "0.4.0", "0.5.0"] {
        assert!(
            history.lines().any(|l| l.contains(v) && l.contains("fell-back")),
            "no fall-back of {v} in:\n{history}"
        );
    }
    assert_running_without_failures(&vm);
}

/// The agent's settings for the FleetLock server the long test runs at
/// 10.0.2.101 (printf-escaped).
const FLEET_LOCK_TOML: &str = "[reboot]\\nstrategy = \"fleet-lock\"\\nfleet-lock-url = \"http://10.0.2.101\"\\n";

/// The node took a slot of group `default` (its last `pre-reboot` was
/// granted) and gave it back once after (one `steady-state` later,
/// accepted, which the daemon sends once it has settled a boot: waited
/// for) — once: a failed trial going down gives nothing back, only the
/// boot GRUB falls back to does —, holding nothing now; returns its
/// FleetLock id.
fn assert_slot_taken_then_given_back(lock: &FleetLockServer) -> String {
    let given_back = |log: &[cairn_qemu_tests::fleet_lock::LockRequest]| {
        log.iter()
            .rposition(|r| r.op == "pre-reboot" && r.status == 200)
            .is_some_and(|t| {
                log[t..]
                    .iter()
                    .any(|r| r.op == "steady-state" && r.status == 200 && r.id == log[t].id)
            })
    };
    let deadline = std::time::Instant::now() + COMMAND;
    while !given_back(&lock.requests()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = lock.requests();
    let taken = log
        .iter()
        .rposition(|r| r.op == "pre-reboot" && r.status == 200)
        .unwrap_or_else(|| panic!("no slot was taken: {log:?}"));
    let node = log[taken].id.clone();
    let given_back = log[taken..]
        .iter()
        .filter(|r| r.op == "steady-state" && r.status == 200 && r.id == node)
        .count();
    assert_eq!(given_back, 1, "the slot was given back {given_back} times: {log:?}");
    assert!(log.iter().all(|r| r.group == "default"), "{log:?}");
    assert!(lock.holders("default").is_empty(), "{:?}", lock.holders("default"));
    assert_eq!(node.len(), 32, "{node}");
    node
}

/// The kernel argument the `added-karg` fixture ships in kargs.d.
const ADDED_KARG: &str = "cairn.test-karg=added";

/// Whether the running kernel's command line has `karg`.
fn assert_cmdline(vm: &Vm, karg: &str, present: bool) {
    let cmdline = vm.console.run_ok("cat /proc/cmdline", COMMAND).unwrap();
    assert_eq!(
        cmdline.split_whitespace().any(|w| w == karg),
        present,
        "{karg} {} in /proc/cmdline: {cmdline}",
        if present { "missing" } else { "still" }
    );
}

fn other_arch(arch: Arch) -> Arch {
    match arch {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Corrupt a file's payload (a delta part's compressed objects, or the end of its superblock).
fn flip_bytes_near_end(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - n / 4..n - n / 4 + 64.min(n / 4)] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Replace the served file object of `file` in `commit` with another valid
/// object: it decompresses fine but its checksum is not its name.
fn swap_in_other_content(releases: &TestReleases, commit: &str, file: &str) {
    let listing = releases
        .served_ostree()
        .args(["ls", "-C", commit, file])
        .output()
        .unwrap()
        .stdout;
    let checksum = listing
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no checksum in `ostree ls -C`: {listing}"));
    let objects = releases.updates().join("ostree/objects");
    let target = objects.join(&checksum[..2]).join(format!("{}.filez", &checksum[2..]));
    let other = files_under(&objects)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "filez") && *p != target)
        .unwrap();
    std::fs::copy(other, &target).unwrap();
}

/// An overlay that replaces the kernel's initramfs with an empty cpio
/// archive (only its trailer): the kernel then tries to mount
/// `root=LABEL=…` itself, cannot, and panics.
fn empty_initramfs_overlay(releases: &TestReleases, scratch: &Path) -> PathBuf {
    let a = releases.artifacts;
    let kernel = cairn_common::process::Cmd::new("ostree")
        .arg(format!("--repo={}", releases.build_repo.display()))
        .args([
            "show",
            &format!("--print-metadata-key={}", cairn_common::metadata::KERNEL),
        ])
        .arg(&a.dev.ostree_ref)
        .output()
        .unwrap()
        .stdout;
    let kver = kernel.trim().trim_matches('\'');
    let overlay = scratch.join("empty-initramfs");
    let dir = overlay.join("usr/lib/modules").join(kver);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cpio = format!(
        "070701{}",
        ["0", "0", "0", "0", "1", "0", "0", "0", "0", "0", "0", "b", "0"]
            .map(|f| format!("{f:0>8}"))
            .concat()
    )
    .into_bytes();
    cpio.extend_from_slice(b"TRAILER!!!\0");
    cpio.resize(512, 0);
    std::fs::write(dir.join("initramfs.img"), cpio).unwrap();
    overlay
}

/// The core of the test above, short enough for an emulated foreign
/// architecture (`cargo xtask test --arch aarch64` runs it instead of the
/// long one): v1 → v2 is committed keeping `/etc` and `/var`; v3 fails its
/// health gate and the host comes back on v2 by itself, v3 marked bad.
#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn update_is_committed_and_a_failed_health_gate_rolls_back() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("cairn-update-test-").tempdir().unwrap();
    let releases = TestReleases::new(&a, scratch.path());
    releases.publish_booted().unwrap();
    releases.compose("0.2.0", &[fixture("added-karg")]).unwrap();
    releases.publish().unwrap();

    let (_server, vm) = boot_with_update_server(&a, &releases, "[update]\\nauto = false\\n[boot]\\ntries = 1\\n");
    let c = &vm.console;
    assert_eq!(booted_version(&status(&vm)), a.dev.version);

    c.run_ok("echo kept > /etc/cairn-update-test && mkdir -p /var/lib/cairn-test && echo kept > /var/lib/cairn-test/data && sync", COMMAND)
        .unwrap();
    let s = update_and_commit(&vm);
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert_eq!(
        c.run_ok("cat /etc/cairn-update-test /var/lib/cairn-test/data", COMMAND)
            .unwrap()
            .trim(),
        "kept\nkept"
    );
    assert_eq!(c.run_ok("uname -m", COMMAND).unwrap().trim(), a.arch.as_str());
    assert_cmdline(&vm, ADDED_KARG, true);

    releases.compose("0.3.0", &[fixture("failing-health")]).unwrap();
    releases.publish().unwrap();
    let s = update_and_fall_back(&vm, "0.3.0", &[]); // its health gate fails
    assert_eq!(booted_version(&s), "0.2.0", "{s:#?}");
    assert!(
        !versions(&s).contains(&"0.3.0".to_owned()),
        "the failed deployment is still there: {s:#?}"
    );
}

/// Where the guest reaches the Kubernetes API stand-in (over HTTPS).
const KUBE_API: &str = "10.0.2.102:6443";
const KUBE_TOKEN: &str = "cairn-vm-test-token";
/// The guest's Node.
const NODE: &str = "cairn-test-node";
/// The slot of the agent's group (`default`) it takes.
const SLOT: &str = "kube-system/cairn-reboot-default-0";

fn unix_now() -> u64 {
    cairn_agent::state::now()
}

fn base64(text: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn a_kubernetes_node_takes_a_phased_release_in_its_turn_and_reboots_only_once_drained() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("cairn-k8s-test-").tempdir().unwrap();
    let releases = TestReleases::new(&a, scratch.path());
    releases.publish_booted().unwrap();
    releases.compose("0.2.0", &[]).unwrap();
    // Over 1000 hours: this host's turn is far off.
    let published = releases.publish_rolled_out("1000h").unwrap();
    let start = published["rollout"]["start"].as_u64().unwrap();

    // A cluster of two nodes; the guest's runs a pod that a disruption
    // budget protects, and a DaemonSet's pod.
    let kube = KubeApi::start(KUBE_TOKEN).unwrap();
    kube.add_node(NODE);
    kube.add_node("other-node");
    kube.add_pod("apps", "web-0", NODE, RunBy::ReplicaSet);
    kube.add_pod("kube-system", "cni-agent", NODE, RunBy::DaemonSet);
    kube.protect("apps/web-0", true);
    let (tls, ca) = kube
        .serve_tls(scratch.path(), KUBE_API.split(':').next().unwrap())
        .unwrap();

    let (_server, vm) =
        boot_image_with_update_server(&a.dev, &releases, "[update]\\nauto = false\\n", &[(KUBE_API, tls.port)]);
    let c = &vm.console;
    let kubeconfig = kube.kubeconfig(&format!("https://{KUBE_API}"), &ca);
    let settings = format!(
        "[update]\nauto = true\n[reboot]\nstrategy = \"kubernetes\"\nkubernetes-node-name = \"{NODE}\"\ndrain-timeout = \"20s\"\n"
    );
    c.run_ok(
        &format!(
            "echo {} | base64 -d > /etc/cairn/kubeconfig && echo {} | base64 -d > /etc/cairn/agent.d/60-kubernetes.toml && systemctl restart cairn-agent",
            base64(kubeconfig.as_bytes()),
            base64(settings.as_bytes())
        ),
        COMMAND,
    )
    .unwrap();

    // The daemon's check sees 0.2.0 rolling out and this host's turn: its
    // place in the fleet, from its machine id, times the rollout's length.
    let machine_id = c.run_ok("cat /etc/machine-id", COMMAND).unwrap();
    let position = cairn_agent::selection::rollout_position(machine_id.trim()).unwrap();
    let turn = |secs: u64| start + (secs as f64 * position).floor() as u64;
    let s = wait_status(&vm, "the rollout's turn", |s| s.rollout.is_some());
    assert_eq!(s.rollout.as_ref().unwrap().version, "0.2.0");
    assert_eq!(s.rollout.as_ref().unwrap().turn_at, Some(turn(3_600_000)), "{s:#?}");
    assert_unchanged(&s, &a.dev.version);

    // The rollout is shortened so that this host's turn comes in about 40 s;
    // a check learns it, and the daemon checks again then.
    let soon = unix_now() + 40 - start;
    let length = if position > 0.0 {
        (soon as f64 / position).ceil() as u64
    } else {
        1
    };
    releases
        .change_rollout("0.2.0", &["--duration", &format!("{length}s")])
        .unwrap();
    c.run_ok("cairn-agent check", COMMAND).unwrap();
    let s = status(&vm);
    let turn_at = s.rollout.as_ref().and_then(|r| r.turn_at).unwrap();
    assert_eq!(turn_at, turn(length), "{s:#?}");
    assert!(s.staged.is_none(), "{s:#?}");

    // At its turn the daemon stages 0.2.0 and drains the node: the budget
    // never allows the eviction; after the drain timeout the node is back
    // in service, its slot free, nothing rebooted, and status names the pod.
    let s = wait_status(
        &vm,
        "the drain to be refused",
        |s| matches!(&s.waiting, Some(Waiting::Drain { blocked_by, .. }) if !blocked_by.is_empty()),
    );
    assert!(unix_now() >= turn_at);
    assert_eq!(s.staged.as_ref().and_then(|d| d.version.as_deref()), Some("0.2.0"));
    let Some(Waiting::Drain { reason, blocked_by, .. }) = &s.waiting else {
        unreachable!()
    };
    assert_eq!(blocked_by, &["apps/web-0"]);
    let reason = reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("timed out after 20s") && reason.contains("disruption budget"),
        "{reason}"
    );
    assert!(!kube.unschedulable(NODE));
    assert_eq!(kube.lease_holder(SLOT), None);
    assert_eq!(kube.pods_on(NODE).len(), 2);
    assert_eq!(booted_version(&s), a.dev.version);
    let text = c.run_ok("cairn-agent status", COMMAND).unwrap();
    assert!(
        text.contains("waiting for the node's drain") && text.contains("blocked by apps/web-0"),
        "{text}"
    );

    // The budget allows it now: the next attempt drains and reboots.
    kube.protect("apps/web-0", false);
    c.wait_for("Linux version", BOOT).unwrap();
    assert!(kube.unschedulable(NODE), "rebooting cordoned");
    assert_eq!(kube.lease_holder(SLOT).as_deref(), Some(NODE));
    assert_eq!(
        kube.pods_on(NODE),
        ["kube-system/cni-agent"],
        "the DaemonSet's pod stays"
    );
    vm.wait_for_root_shell(BOOT).unwrap();
    let s = wait_status(&vm, "0.2.0 to be committed", |s| {
        s.settled() && booted_version(s) == "0.2.0"
    });
    assert_eq!(s.rollout, None);

    // Committed: the node is uncordoned and its slot given back.
    let deadline = std::time::Instant::now() + COMMAND;
    while (kube.unschedulable(NODE) || kube.lease_holder(SLOT).is_some()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(!kube.unschedulable(NODE), "{}", kube.node(NODE));
    assert_eq!(kube.lease_holder(SLOT), None, "{}", kube.lease(SLOT));
    assert!(kube.node(NODE)["metadata"]["annotations"]
        .get(cairn_agent::kubernetes::CORDONED_ANNOTATION)
        .is_none());
    let log = kube.requests();
    assert!(log.iter().any(|r| r.ends_with("/pods/web-0/eviction 429")), "{log:?}");
    assert!(log.iter().any(|r| r.ends_with("/pods/web-0/eviction 201")), "{log:?}");
    assert!(
        log.iter().all(|r| !r.ends_with(" 401")),
        "every request carried the token: {log:?}"
    );
}

/// The Debian release Cairn was based on before the current one: hosts
/// built from it must be able to take releases of the current base.
const PREVIOUS_DEBIAN: &str = "bookworm";

/// The Debian release the booted deployment was built from.
fn debian_release(vm: &Vm) -> String {
    let out = vm
        .console
        .run_ok(". /usr/lib/os-release && echo \"$VERSION_CODENAME\"", COMMAND)
        .unwrap();
    out.trim().to_owned()
}

/// A host of the previous Debian base takes releases of the current one
/// through the normal signed update path: a release whose health gate
/// fails falls back to the old base by itself and is marked bad; a
/// healthy one is committed, with `/etc` and `/var` kept.
#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn a_host_on_the_previous_debian_takes_the_current_one_and_falls_back_from_a_failing_release() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new().prefix("cairn-rebase-test-").tempdir().unwrap();
    let releases = TestReleases::new(&a, scratch.path());
    let current = debian_of_manifest(&a);
    assert_ne!(
        current, PREVIOUS_DEBIAN,
        "the manifest still builds from {PREVIOUS_DEBIAN}"
    );

    releases.compose_on_debian(PREVIOUS_DEBIAN, "0.1.0", &[]).unwrap();
    let old = releases.image(&scratch.path().join("images")).unwrap();
    releases.publish().unwrap();
    releases.compose("0.2.0", &[fixture("failing-health")]).unwrap();
    releases.publish().unwrap();

    let (_server, vm) =
        boot_image_with_update_server(&old, &releases, "[update]\\nauto = false\\n[boot]\\ntries = 1\\n", &[]);
    let c = &vm.console;
    assert_eq!(booted_version(&status(&vm)), "0.1.0");
    assert_eq!(debian_release(&vm), PREVIOUS_DEBIAN);
    let old_kernel = c.run_ok("uname -r", COMMAND).unwrap();
    c.run_ok("echo kept > /etc/cairn-rebase-test && mkdir -p /var/lib/cairn-test && echo kept > /var/lib/cairn-test/data && sync", COMMAND)
        .unwrap();

    // The new base's release fails its health gate: back on the old base.
    let s = update_and_fall_back(&vm, "0.2.0", &[]); // its health gate fails
    assert_eq!(booted_version(&s), "0.1.0", "{s:#?}");
    assert_eq!(debian_release(&vm), PREVIOUS_DEBIAN);
    assert_eq!(c.run_ok("uname -r", COMMAND).unwrap(), old_kernel);

    // A healthy release of the new base is committed, /etc and /var kept.
    releases.compose("0.3.0", &[]).unwrap();
    releases.publish().unwrap();
    let s = update_and_commit(&vm);
    assert_eq!(booted_version(&s), "0.3.0", "{s:#?}");
    assert_eq!(debian_release(&vm), current);
    assert_ne!(c.run_ok("uname -r", COMMAND).unwrap(), old_kernel);
    assert_eq!(
        c.run_ok("cat /etc/cairn-rebase-test /var/lib/cairn-test/data", COMMAND)
            .unwrap()
            .trim(),
        "kept\nkept"
    );
    assert_running_without_failures(&vm);
}

/// The Debian release `rootfs/image.toml` builds from.
fn debian_of_manifest(a: &Artifacts) -> String {
    cairn_builder::manifest::Manifest::load(&a.manifest)
        .unwrap()
        .resolve("dev", a.arch, a.platform)
        .unwrap()
        .release
}
