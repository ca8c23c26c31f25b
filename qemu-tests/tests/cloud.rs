//! Cloud platforms in QEMU (see `cairn_qemu_tests::cloud_stand_ins`): the
//! firmware's DMI strings set with `-smbios` as each cloud's firmware shows
//! them, the provider's metadata service played by a loopback server that
//! implements its documented behaviour, reached at the provider's own
//! address through the restricted user network (whose range is set to
//! contain that address). Each machine boots from the disk format its first
//! cloud imports (VMDK for EC2, VHD for Azure, qcow2 for OpenStack),
//! written by the builder's own `disk_formats` and read by QEMU's driver
//! for that format, on the disk bus that cloud gives (NVMe, SCSI, virtio),
//! and a second cloud then takes the same disk as a new instance. What
//! only the real clouds can verify is listed in the README.

use std::path::Path;
use std::time::Duration;

use cairn_builder::disk_formats::DiskFormat;
use cairn_builder::manifest::Manifest;
use cairn_qemu_tests::cloud_stand_ins::{self, Cloud, Instance, StandIn};
use cairn_qemu_tests::guest_checks::{assert_booted, assert_root_fills_disk, assert_running_without_failures};
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::Artifacts;
use serde_json::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;
/// The VM's disk: bigger than the image, so the root must grow to fill it.
const DISK_SIZE: u64 = 5 * GIB;

/// A cloud-config that writes `content` to `file`.
fn user_data(file: &str, content: &str) -> String {
    format!("#cloud-config\nwrite_files:\n  - path: {file}\n    content: {content}\n")
}

/// The instance each test starts on `cloud`: its own id, host name and
/// zone, the test's key (Alibaba's gets none), and user data writing
/// `/etc/cairn-cloud-test` (`-2` on a test's second cloud) with
/// `from-<cloud>`.
fn instance(cloud: Cloud, key: &str, second: bool) -> Instance {
    let (id, hostname, zone) = match cloud {
        Cloud::Ec2 => ("i-0cairn00000000001", "ip-169-254-169-15.ec2.internal", "us-east-1a"),
        Cloud::Aliyun => ("i-bp1cairntest", "iZbp1cairntest", "cn-hangzhou-h"),
        Cloud::Azure => ("5c08b38e-4d57-4c23-ac45-aca61037f084", "cairn-azure-1", "1"),
        Cloud::Gce => (
            "4520031799277581759",
            "cairn-gce-1.europe-west1-b.c.cairn-test.internal",
            "europe-west1-b",
        ),
        Cloud::Openstack => ("83679162-1378-4288-a2d4-70e13ec132aa", "cairn-os-1.novalocal", "nova"),
        Cloud::Tencent => ("ins-cairn0001", "VM-0-15-cairn", "ap-guangzhou-3"),
    };
    Instance {
        id: id.into(),
        hostname: hostname.into(),
        ssh_key: (cloud != Cloud::Aliyun).then(|| key.to_owned()),
        user_data: Some(user_data(test_file(second), &format!("from-{}", cloud.name()))),
        zone: zone.into(),
    }
}

fn test_file(second: bool) -> &'static str {
    if second {
        "/etc/cairn-cloud-test-2"
    } else {
        "/etc/cairn-cloud-test"
    }
}

fn status(vm: &Vm) -> Value {
    let text = vm.console.run_ok("cairn-agent status --json", COMMAND).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Boot the development image as a new instance on `stand_in`'s cloud,
/// from the disk format its import takes (`rootfs/image.toml`: the test
/// expects `format`) on its disk bus; the machine, its root grown and
/// nothing failed, booted the built commit.
fn first_boot(a: &Artifacts, stand_in: &StandIn, format: DiskFormat, scratch: &Path, ssh: &Ssh) -> Vm {
    let cloud = stand_in.cloud;
    let import = Manifest::load(&a.manifest)
        .unwrap()
        .resolve(&a.dev.flavor, a.arch, a.platform)
        .unwrap()
        .cloud_formats
        .remove(cloud.name())
        .unwrap_or_default();
    assert_eq!(
        Cloud::boot_format(&import),
        format,
        "{} imports {import:?}",
        cloud.name()
    );
    let mut opts = VmOptions::of(&a.dev);
    opts.image = Cloud::disk_of(&import, &a.dev.raw, scratch).unwrap();
    opts.disk_interface = cloud.disk_bus();
    opts.disk_size = DISK_SIZE;
    opts.forwards.push(ssh.forward(None));
    stand_in.place_vm(&mut opts, Path::new(RELAY));
    let vm = Vm::boot(&opts, BOOT).unwrap();
    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
    let root = match cloud.disk_bus() {
        cairn_qemu_tests::DiskInterface::Nvme => "/dev/nvme0n1p2",
        cairn_qemu_tests::DiskInterface::VirtioScsi => "/dev/sda2",
        cairn_qemu_tests::DiskInterface::VirtioBlk => "/dev/vda2",
    };
    assert_root_fills_disk(&vm, root, DISK_SIZE);
    vm
}

/// Switch the machine off, move its disk to `stand_in`'s cloud, and wait
/// for the first boot there.
fn move_to(vm: &mut Vm, stand_in: &StandIn) {
    vm.power_cycle_with(|machine| stand_in.place_machine(machine, Path::new(RELAY)))
        .unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
}

/// What provisioning applied, checked from inside the guest: the platform
/// detected, the instance recorded, the user data's file, the host name,
/// the attributes for units; and the keys the metadata gave the default
/// user, which log it in over SSH where there are any.
fn assert_provisioned(vm: &Vm, cloud: Cloud, i: &Instance, second: bool, ssh: &Ssh) {
    let platform = cloud.name();
    let s = status(vm);
    assert_eq!(s["platform"]["detected"]["platform"], platform, "{:#}", s["platform"]);
    assert_eq!(
        s["platform"]["metadata"]["instance_id"],
        i.id.as_str(),
        "{:#}",
        s["platform"]
    );
    assert!(s["platform"]["error"].is_null(), "{:#}", s["platform"]);
    assert_eq!(
        s["provisioning"]["instance_id"],
        i.id.as_str(),
        "{:#}",
        s["provisioning"]
    );
    assert!(s["provisioning"]["error"].is_null(), "{:#}", s["provisioning"]);
    let c = &vm.console;
    assert_eq!(
        c.run_ok(&format!("cat {}", test_file(second)), COMMAND).unwrap().trim(),
        format!("from-{platform}")
    );
    assert_eq!(c.run_ok("hostname", COMMAND).unwrap().trim(), i.hostname);
    let env = c.run_ok("cat /run/cairn/metadata.env", COMMAND).unwrap();
    assert!(env.contains(&format!("CAIRN_PLATFORM=\"{platform}\"")), "{env}");
    assert!(env.contains(&format!("CAIRN_ZONE=\"{}\"", i.zone)), "{env}");
    // Only the instance's own keys, replaced at each boot: the old
    // instance's are gone, and (on GCE) the blocked project's never came.
    let keys = c
        .run_ok("cat /var/home/cairn/.ssh/authorized_keys.d/cairn-metadata", COMMAND)
        .unwrap();
    assert_eq!(keys.trim(), i.ssh_key.as_deref().unwrap_or("").trim(), "{platform}");
    if i.ssh_key.is_some() {
        ssh.wait_ready("cairn", BOOT).unwrap();
        assert_eq!(ssh.ok("cairn", "id -un").unwrap(), "cairn");
    }
}

/// Every request the stand-in's service was asked, as `METHOD path status`.
fn asked(stand_in: &StandIn) -> Vec<String> {
    stand_in
        .service
        .as_ref()
        .map(|s| s.requests())
        .unwrap_or_default()
        .iter()
        .map(|(r, st)| format!("{} {} {st}", r.method, r.path))
        .collect()
}

struct Scene {
    a: Artifacts,
    scratch: tempfile::TempDir,
    ssh: Ssh,
    key: String,
}

fn scene() -> Scene {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let key = ssh.public_key().unwrap();
    Scene { a, scratch, ssh, key }
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn ec2_then_alibaba_metadata_with_session_tokens_provision_the_host() {
    let Scene { a, scratch, ssh, key } = scene();
    let ec2 = instance(Cloud::Ec2, &key, false);
    let stand_in = Cloud::Ec2.start(&ec2, scratch.path()).unwrap();
    let mut vm = first_boot(&a, &stand_in, DiskFormat::Vmdk, scratch.path(), &ssh);
    assert_provisioned(&vm, Cloud::Ec2, &ec2, false, &ssh);
    // The image's fact for EC2: its own time server.
    let ntp = vm
        .console
        .run_ok("cat /run/systemd/timesyncd.conf.d/50-cairn-platform.conf", COMMAND)
        .unwrap();
    assert!(ntp.contains("NTP=169.254.169.123"), "{ntp}");
    // IMDSv2: a token first, then every request carried it.
    let requests = asked(&stand_in);
    assert!(requests[0].starts_with("PUT /latest/api/token 200"), "{requests:?}");
    assert!(!requests.iter().any(|r| r.ends_with(" 401")), "{requests:?}");

    // The same disk on Alibaba Cloud (a new instance, no key): its
    // hardened-mode token under its own header names, at its own address.
    let aliyun = instance(Cloud::Aliyun, &key, true);
    let stand_in = Cloud::Aliyun.start(&aliyun, scratch.path()).unwrap();
    move_to(&mut vm, &stand_in);
    assert_provisioned(&vm, Cloud::Aliyun, &aliyun, true, &ssh);
    let requests = asked(&stand_in);
    assert!(requests[0].starts_with("PUT /latest/api/token 200"), "{requests:?}");
    assert!(!requests.iter().any(|r| r.ends_with(" 401")), "{requests:?}");
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn azure_with_its_ready_report_then_gce_provision_the_host_from_a_vhd() {
    let Scene { a, scratch, ssh, key } = scene();
    // Azure: IMDS (`Metadata: true`) with the instance and its key but no
    // user data; the custom data comes in ovf-env.xml on the provisioning
    // CD-ROM; the WireServer must hear that provisioning went well.
    let azure = instance(Cloud::Azure, &key, false);
    let stand_in = Cloud::Azure.start(&azure, scratch.path()).unwrap();
    let mut vm = first_boot(&a, &stand_in, DiskFormat::Vhd, scratch.path(), &ssh);
    assert_provisioned(&vm, Cloud::Azure, &azure, false, &ssh);
    assert!(
        !asked(&stand_in).iter().any(|r| !r.ends_with(" 200")),
        "{:?}",
        asked(&stand_in)
    );
    // The ready report: versions, goal state, then `Ready` for the goal
    // state's incarnation, container and role instance.
    let wire = stand_in.wireserver.as_ref().unwrap().requests();
    let sequence: Vec<String> = wire
        .iter()
        .map(|(r, st)| format!("{} {} {st}", r.method, r.path))
        .collect();
    assert_eq!(
        sequence,
        [
            "GET /?comp=versions 200",
            "GET /machine/?comp=goalstate 200",
            "POST /machine/?comp=health 200"
        ],
        "{sequence:?}"
    );
    let report = String::from_utf8_lossy(&wire[2].0.body).into_owned();
    for part in [
        format!(
            "<GoalStateIncarnation>{}</GoalStateIncarnation>",
            cloud_stand_ins::AZURE_INCARNATION
        ),
        format!("<ContainerId>{}</ContainerId>", cloud_stand_ins::AZURE_CONTAINER_ID),
        format!("<InstanceId>{}</InstanceId>", cloud_stand_ins::AZURE_ROLE_INSTANCE),
        "<State>Ready</State>".to_owned(),
    ] {
        assert!(report.contains(&part), "{part} is not in the ready report:\n{report}");
    }

    // The same disk on GCE (a new instance): `Metadata-Flavor: Google` on
    // every request, and only the instance's keys, since it blocks the
    // project's (which are never asked for).
    let gce = instance(Cloud::Gce, &key, true);
    let stand_in = Cloud::Gce.start(&gce, scratch.path()).unwrap();
    move_to(&mut vm, &stand_in);
    assert_provisioned(&vm, Cloud::Gce, &gce, true, &ssh);
    let requests = asked(&stand_in);
    assert!(!requests.iter().any(|r| r.ends_with(" 403")), "{requests:?}");
    assert!(
        !requests.iter().any(|r| r.contains("project/attributes/ssh-keys")),
        "the project's keys were asked for although the instance blocks them: {requests:?}"
    );
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn openstack_config_drive_then_tencent_metadata_provision_the_host_from_qcow2() {
    let Scene { a, scratch, ssh, key } = scene();
    // OpenStack: everything on the config drive (ISO 9660 labelled
    // `config-2`); no metadata service is reachable, so none is needed.
    let openstack = instance(Cloud::Openstack, &key, false);
    let stand_in = Cloud::Openstack.start(&openstack, scratch.path()).unwrap();
    let mut vm = first_boot(&a, &stand_in, DiskFormat::Qcow2, scratch.path(), &ssh);
    assert_provisioned(&vm, Cloud::Openstack, &openstack, false, &ssh);
    let s = status(&vm);
    assert!(
        s["platform"]["metadata"]["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("config drive")),
        "{:#}",
        s["platform"]
    );

    // The same disk on Tencent Cloud (a new instance, no config drive):
    // its metadata service at 169.254.0.23, EC2's layout without tokens.
    let tencent = instance(Cloud::Tencent, &key, true);
    let stand_in = Cloud::Tencent.start(&tencent, scratch.path()).unwrap();
    move_to(&mut vm, &stand_in);
    assert_provisioned(&vm, Cloud::Tencent, &tencent, true, &ssh);
    let requests = asked(&stand_in);
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "Tencent has no token call: {requests:?}"
    );
}
