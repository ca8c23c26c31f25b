//! Boot the built images under UEFI firmware and check, from inside the
//! guest, what a user of Cairn relies on. Needs `cargo xtask test`.

use std::time::Duration;

use cairn_common::layout::{Platform, REMOTE};
use cairn_qemu_tests::guest_checks::{assert_booted, assert_running_without_failures, root_fs_bytes};
use cairn_qemu_tests::oci;
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::Artifacts;

/// First boot under TCG emulation on a busy 2-core machine.
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// The machine is the one the platform stands for: the guest's CPU
/// architecture, and on the server platforms the ACPI path real firmware
/// takes (IORT) with an interrupt translation service, plus, for the
/// Kunpeng 920, devices behind the SMMUv3.
fn assert_platform(vm: &Vm, a: &Artifacts) {
    let c = &vm.console;
    assert_eq!(c.run_ok("uname -m", COMMAND).unwrap().trim(), a.arch.as_str());
    if a.platform == Platform::Generic {
        return;
    }
    let acpi = c.run_ok("ls /sys/firmware/acpi/tables", COMMAND).unwrap();
    assert!(
        acpi.split_whitespace().any(|t| t == "IORT"),
        "no ACPI IORT table (acpi=force): {acpi}"
    );
    let its = c.run_ok("dmesg | grep -c 'ITS@' || true", COMMAND).unwrap();
    assert!(
        its.trim().parse::<u32>().unwrap_or(0) > 0,
        "the GICv3 ITS was not set up"
    );
    if a.platform == Platform::Kunpeng920 {
        let groups = c.run_ok("ls /sys/kernel/iommu_groups | wc -l", COMMAND).unwrap();
        assert!(
            groups.trim().parse::<u32>().unwrap_or(0) > 0,
            "no device sits behind the SMMUv3"
        );
    }
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn dev_image_boots_with_read_only_usr_persistent_state_and_containers() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let marker = unique();
    let oci_archive = scratch.path().join("oci.tar");
    oci::write_archive(&oci_archive, a.arch, &a.busybox, &marker).unwrap();

    let mut opts = VmOptions::of(&a.dev);
    opts.disk_size = 6 * GIB;
    opts.extra_disks.push((oci_archive, "cairn-oci".into()));
    let vm = Vm::boot(&opts, BOOT).unwrap();
    let c = &vm.console;

    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
    assert_platform(&vm, &a);

    // The commit's signature verifies against the key baked into the image.
    let sig = c
        .run_ok(
            &format!(
                "ostree --repo=/ostree/repo show --gpg-verify-remote={REMOTE} {}",
                a.dev.commit
            ),
            COMMAND,
        )
        .unwrap();
    assert!(sig.contains("Good signature"), "{sig}");

    // networkd configured the NIC by DHCP (QEMU's user network serves 10.0.2.15).
    let addr = c
        .run_ok("for i in $(seq 60); do ip -4 -o addr show scope global | grep -q . && break; sleep 1; done; ip -4 -o addr show scope global", COMMAND)
        .unwrap();
    assert!(addr.contains("10.0.2.15/24"), "no DHCP address: {addr}");

    // /usr is read-only.
    let write = c.run("touch /usr/cairn-write-test", COMMAND).unwrap();
    assert_ne!(write.status, 0, "writing under /usr succeeded");
    assert!(write.output.contains("Read-only file system"), "{}", write.output);

    // The root's mode is the one Cairn's prepare-root.conf chose, not
    // ostree's default: the initramfs read Cairn's file, /sysroot is
    // writable, /etc is persistent (not a transient overlay) and no
    // composefs image is mounted as the root.
    assert_eq!(
        c.run_ok("cat /usr/lib/ostree/prepare-root.conf", COMMAND)
            .unwrap()
            .trim(),
        cairn_builder::compose::PREPARE_ROOT_CONF.trim()
    );
    let mounts = c
        .run_ok(
            "findmnt -no FSTYPE,OPTIONS / && findmnt -no OPTIONS /sysroot && findmnt -no FSTYPE -T /etc",
            COMMAND,
        )
        .unwrap();
    let mounts: Vec<&str> = mounts.lines().map(str::trim).collect();
    assert!(
        mounts[0].starts_with("ext4 "),
        "the root is not the ext4 deployment: {mounts:?}"
    );
    assert!(mounts[1].starts_with("rw,"), "/sysroot is not writable: {mounts:?}");
    assert_eq!(mounts[2], "ext4", "/etc is not the deployment's own: {mounts:?}");

    // The root filesystem grew from the image's size to the disk's.
    assert!(a.dev.root_size < 3 * GIB);
    let fs = root_fs_bytes(&vm);
    assert!(fs > 5 * GIB + GIB / 2, "root filesystem is {fs} bytes on a 6 GiB disk");

    // cgroup v2, and containerd runs a container from a locally built image.
    assert_eq!(
        c.run_ok("stat -fc %T /sys/fs/cgroup", COMMAND).unwrap().trim(),
        "cgroup2fs"
    );
    c.run_ok("ctr images import /dev/disk/by-id/virtio-cairn-oci", COMMAND)
        .unwrap();
    let ran = c
        .run_ok(
            &format!(
                "ctr run --rm {} cairn-test /bin/sh -c 'echo container-says-$(cat /etc/cairn-oci-marker)'",
                oci::IMAGE_NAME
            ),
            COMMAND,
        )
        .unwrap();
    assert!(ran.contains(&format!("container-says-{marker}")), "{ran}");

    // /etc and /var survive a reboot.
    c.run_ok(
        &format!("echo etc-{marker} > /etc/cairn-persist && mkdir -p /var/lib/cairn-test && echo var-{marker} > /var/lib/cairn-test/persist && sync"),
        COMMAND,
    )
    .unwrap();
    c.send("systemctl reboot\n").unwrap();
    c.wait_for("Linux version", BOOT).unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    assert_eq!(
        c.run_ok("cat /etc/cairn-persist", COMMAND).unwrap().trim(),
        format!("etc-{marker}")
    );
    assert_eq!(
        c.run_ok("cat /var/lib/cairn-test/persist", COMMAND).unwrap().trim(),
        format!("var-{marker}")
    );
    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn prod_image_reaches_multi_user_and_offers_no_login() {
    let a = Artifacts::load().unwrap();
    let prod = a
        .prod
        .as_ref()
        .expect("xtask builds the prod image when this test is selected (artifacts::PROD_TESTS)");
    // systemd stops printing unit status once the serial getty owns the
    // console; the agent's verdict in the kernel log says how the boot ended.
    // It and the login prompt come in either order.
    let vm = Vm::start_until(&VmOptions::of(prod), |vm| {
        vm.console.wait_for("is up: system", BOOT).map(drop)
    })
    .unwrap();
    let c = &vm.console;
    let verdict = c.wait_for("\n", COMMAND).unwrap();
    assert_eq!(
        verdict.trim(),
        "running",
        "the boot did not end well:\n{}",
        c.tail(3000)
    );
    if !c.transcript().contains("cairn login:") {
        c.wait_for("cairn login:", BOOT).unwrap();
    }
    let transcript = c.transcript();
    assert!(
        !transcript.contains("Failed to start"),
        "a unit failed:\n{}",
        c.tail(3000)
    );
    assert!(!transcript.contains("automatic login"), "prod logs someone in");

    // root has no password: an empty one is refused and no shell appears.
    c.send("root\n").unwrap();
    c.wait_for("Password:", COMMAND).unwrap();
    c.send("\n").unwrap();
    c.wait_for("Login incorrect", COMMAND).unwrap();
    c.wait_for("cairn login:", COMMAND).unwrap();
    // (The SSH host keys' fingerprints on the console end in `root@cairn`
    // too: the prompt is what gives a shell away.)
    assert!(!c.transcript().contains("root@cairn:"), "a root shell appeared");
}
