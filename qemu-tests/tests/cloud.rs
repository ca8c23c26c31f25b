//! Cloud platforms in QEMU: the firmware's DMI strings set with `-smbios`
//! as each cloud's firmware shows them, the provider's metadata service
//! played by a loopback server that implements its documented behaviour,
//! reached at the provider's own address through the restricted user
//! network (whose range is set to contain that address). Each machine
//! boots from the disk format its first cloud imports (VMDK for EC2, VHD
//! for Azure, qcow2 for OpenStack), written by the builder's own
//! `disk_formats` and read by QEMU's driver for that format, on the disk
//! bus that cloud gives (NVMe, SCSI, virtio), and a second cloud then takes
//! the same disk as a new instance. What only the real clouds can verify
//! is listed in the README.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_builder::disk_formats::{self, DiskFormat};
use cairn_qemu_tests::guest_checks::{assert_booted, assert_root_fills_disk, assert_running_without_failures};
use cairn_qemu_tests::metadata_server::{Asked, MetadataServer};
use cairn_qemu_tests::seed::iso9660;
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::{Artifacts, DiskInterface};
use serde_json::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;
/// The VM's disk: bigger than the image, so the root must grow to fill it.
const DISK_SIZE: u64 = 5 * GIB;

/// The development image in `format`, written by the builder's own code
/// into `dir`; the VM boots from an overlay QEMU reads it through.
fn dev_disk_in(a: &Artifacts, format: DiskFormat, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(format.file_name("cairn-dev"));
    disk_formats::write_format(&a.dev.raw, format, &out).unwrap();
    out
}

/// A VM on the development image in `format`, on `bus`, with the cloud's
/// DMI strings and its metadata address inside the user network.
fn cloud_vm_options(a: &Artifacts, disk: &Path, bus: DiskInterface, smbios: &[&str], net: &str) -> VmOptions {
    let mut opts = VmOptions::of(&a.dev);
    opts.image = disk.to_owned();
    opts.disk_interface = bus;
    opts.disk_size = DISK_SIZE;
    opts.smbios = smbios.iter().map(|s| (*s).to_owned()).collect();
    opts.net = Some(net.to_owned());
    opts
}

/// A cloud-config that writes `content` to `file`.
fn user_data(file: &str, content: &str) -> String {
    format!("#cloud-config\nwrite_files:\n  - path: {file}\n    content: {content}\n")
}

/// What provisioning applied, checked from inside the guest: the platform
/// detected, the instance recorded, the user data's file, the host name.
fn assert_provisioned(vm: &Vm, platform: &str, instance: &str, file: &str, content: &str, hostname: &str) {
    let s = status(vm);
    assert_eq!(s["platform"]["detected"]["platform"], platform, "{:#}", s["platform"]);
    assert_eq!(
        s["platform"]["metadata"]["instance_id"], instance,
        "{:#}",
        s["platform"]
    );
    assert!(s["platform"]["error"].is_null(), "{:#}", s["platform"]);
    assert_eq!(s["provisioning"]["instance_id"], instance, "{:#}", s["provisioning"]);
    assert!(s["provisioning"]["error"].is_null(), "{:#}", s["provisioning"]);
    let c = &vm.console;
    assert_eq!(c.run_ok(&format!("cat {file}"), COMMAND).unwrap().trim(), content);
    assert_eq!(c.run_ok("hostname", COMMAND).unwrap().trim(), hostname);
    let env = c.run_ok("cat /run/cairn/metadata.env", COMMAND).unwrap();
    assert!(env.contains(&format!("CAIRN_PLATFORM=\"{platform}\"")), "{env}");
}

/// The keys the metadata gave the default user, as the guest holds them.
fn metadata_keys(vm: &Vm) -> String {
    vm.console
        .run_ok("cat /var/home/cairn/.ssh/authorized_keys.d/cairn-metadata", COMMAND)
        .unwrap()
}

/// Switch the machine off, move its disk to `smbios`'s cloud with `net`,
/// its metadata service at `guest_addr` served on 127.0.0.1:`port`, and
/// no media; then wait for the first boot there.
fn move_to_cloud(vm: &mut Vm, smbios: &[&str], net: &str, guest_addr: &str, port: u16) {
    let relay = Path::new(RELAY).to_owned();
    let smbios: Vec<String> = smbios.iter().map(|s| (*s).to_owned()).collect();
    let (net, guest_addr) = (net.to_owned(), guest_addr.to_owned());
    vm.power_cycle_with(move |machine| {
        machine.smbios = smbios;
        machine.net = Some(net);
        machine.cdroms.clear();
        machine.forwards.retain(|f| !f.starts_with("guestfwd"));
        machine
            .forwards
            .push(format!("guestfwd=tcp:{guest_addr}-cmd:{} {port}", relay.display()));
    })
    .unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
}

/// A request's path without its query.
fn path_of(r: &Asked) -> &str {
    r.path.split('?').next().unwrap_or(&r.path)
}

/// An EC2-style metadata service with session tokens, as EC2's IMDSv2
/// (and Alibaba's hardened mode, with its own header names) document it:
/// `PUT /latest/api/token` with a TTL header gives a token; every other
/// request without it is refused with 401.
fn token_service(
    ttl_header: &'static str,
    token_header: &'static str,
    answers: Vec<(&'static str, String)>,
) -> impl Fn(&Asked) -> (u16, Vec<u8>) + Send + Sync {
    const TOKEN: &str = "AQAEAL-cairn-test-token==";
    move |r: &Asked| {
        if r.method == "PUT" && r.path == "/latest/api/token" {
            return match r.headers.get(ttl_header) {
                Some(_) => (200, TOKEN.into()),
                None => (400, b"missing TTL".to_vec()),
            };
        }
        if r.headers.get(token_header).map(String::as_str) != Some(TOKEN) {
            return (401, Vec::new());
        }
        match answers.iter().find(|(p, _)| *p == r.path) {
            Some((_, body)) if r.method == "GET" => (200, body.clone().into_bytes()),
            _ => (404, Vec::new()),
        }
    }
}

fn status(vm: &Vm) -> Value {
    let text = vm.console.run_ok("cairn-agent status --json", COMMAND).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn ec2_then_alibaba_metadata_with_session_tokens_provision_the_host() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let key = ssh.public_key().unwrap();

    let ec2 = MetadataServer::start(token_service(
        "x-aws-ec2-metadata-token-ttl-seconds",
        "x-aws-ec2-metadata-token",
        vec![
            ("/latest/meta-data/instance-id", "i-0cairn00000000001".into()),
            (
                "/latest/meta-data/local-hostname",
                "ip-169-254-169-15.ec2.internal".into(),
            ),
            ("/latest/meta-data/placement/region", "us-east-1".into()),
            ("/latest/meta-data/placement/availability-zone", "us-east-1a".into()),
            ("/latest/meta-data/public-keys/", "0=cairn-test".into()),
            ("/latest/meta-data/public-keys/0/openssh-key", format!("{key}\n")),
            ("/latest/user-data", user_data("/etc/cairn-cloud-test", "from-ec2")),
        ],
    ))
    .unwrap();

    // EC2 imports VMDK; Nitro instances' EBS volumes are NVMe.
    let disk = dev_disk_in(&a, DiskFormat::Vmdk, scratch.path());
    let mut opts = cloud_vm_options(
        &a,
        &disk,
        DiskInterface::Nvme,
        &["type=1,manufacturer=Amazon EC2,product=m6i.large"],
        "169.254.169.0/24",
    );
    opts.forward_to_loopback(Path::new(RELAY), "169.254.169.254:80", ec2.port);
    opts.forwards.push(ssh.forward(None));
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
    // Booted from the VMDK, through NVMe, the root grown to fill the disk.
    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
    assert_root_fills_disk(&vm, "/dev/nvme0n1p2", DISK_SIZE);
    // The network stage reads the metadata before sysinit.target, so
    // before the autologin shell: it is all in place now.
    let s = status(&vm);
    assert_eq!(s["platform"]["detected"]["platform"], "ec2", "{:#}", s["platform"]);
    assert_eq!(s["platform"]["metadata"]["instance_id"], "i-0cairn00000000001");
    assert_eq!(
        s["provisioning"]["instance_id"], "i-0cairn00000000001",
        "{:#}",
        s["provisioning"]
    );
    assert!(s["provisioning"]["error"].is_null(), "{:#}", s["provisioning"]);
    let c = &vm.console;
    assert_eq!(
        c.run_ok("cat /etc/cairn-cloud-test", COMMAND).unwrap().trim(),
        "from-ec2"
    );
    assert_eq!(
        c.run_ok("hostname", COMMAND).unwrap().trim(),
        "ip-169-254-169-15.ec2.internal"
    );
    let env = c.run_ok("cat /run/cairn/metadata.env", COMMAND).unwrap();
    assert!(
        env.contains("CAIRN_ZONE=\"us-east-1a\"") && env.contains("CAIRN_PLATFORM=\"ec2\""),
        "{env}"
    );
    // The image's fact for EC2: its own time server.
    let ntp = c
        .run_ok("cat /run/systemd/timesyncd.conf.d/50-cairn-platform.conf", COMMAND)
        .unwrap();
    assert!(ntp.contains("NTP=169.254.169.123"), "{ntp}");
    // The key from the metadata logs the default user in.
    ssh.wait_ready("cairn", BOOT).unwrap();
    assert_eq!(ssh.ok("cairn", "id -un").unwrap(), "cairn");
    // IMDSv2: a token first, then every request carried it.
    let asked = ec2.requests();
    assert_eq!(asked[0].0.method, "PUT", "{:?}", asked[0].0);
    assert!(
        asked.iter().all(|(_, status)| *status != 401),
        "a request without the token"
    );

    // The same disk on Alibaba Cloud (a new instance): its hardened-mode
    // token under its own header names, at its own address.
    let seen = Arc::new(Mutex::new(0usize));
    let counted = Arc::clone(&seen);
    let ali_answers = token_service(
        "x-aliyun-ecs-metadata-token-ttl-seconds",
        "x-aliyun-ecs-metadata-token",
        vec![
            ("/latest/meta-data/instance-id", "i-bp1cairntest".into()),
            ("/latest/meta-data/hostname", "iZbp1cairntest".into()),
            ("/latest/meta-data/region-id", "cn-hangzhou".into()),
            ("/latest/user-data", user_data("/etc/cairn-cloud-test-2", "from-aliyun")),
        ],
    );
    let ali = MetadataServer::start(move |r: &Asked| {
        *counted.lock().unwrap() += 1;
        ali_answers(r)
    })
    .unwrap();
    move_to_cloud(
        &mut vm,
        &["type=1,manufacturer=Alibaba Cloud,product=Alibaba Cloud ECS"],
        "100.100.100.0/24",
        "100.100.100.200:80",
        ali.port,
    );
    let s = status(&vm);
    assert_eq!(s["platform"]["detected"]["platform"], "aliyun", "{:#}", s["platform"]);
    assert_eq!(
        s["provisioning"]["instance_id"], "i-bp1cairntest",
        "{:#}",
        s["provisioning"]
    );
    let c = &vm.console;
    assert_eq!(
        c.run_ok("cat /etc/cairn-cloud-test-2", COMMAND).unwrap().trim(),
        "from-aliyun"
    );
    assert_eq!(c.run_ok("hostname", COMMAND).unwrap().trim(), "iZbp1cairntest");
    // Alibaba gave no keys: the platform's key file is emptied, the
    // metadata of the old instance is gone.
    assert_eq!(metadata_keys(&vm).trim(), "");
    assert!(*seen.lock().unwrap() > 0);
    assert!(
        ali.requests().iter().all(|(_, status)| *status != 401),
        "a request without the token"
    );
}

/// Azure's WireServer as its protocol documents it: the versions it
/// speaks, a goal state (only for `x-ms-version: 2012-11-30`), and the
/// health report, accepted with 200.
fn wireserver(r: &Asked) -> (u16, Vec<u8>) {
    const VERSIONS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Versions><Preferred><Version>2015-04-05</Version></Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version></Supported></Versions>"#;
    const GOAL_STATE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>7</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState></Machine>
  <Container>
    <ContainerId>c0ffee00-cafe-4b1d-9e57-000000000001</ContainerId>
    <RoleInstanceList>
      <RoleInstance><InstanceId>vm-cairn-azure._cairn-azure-1</InstanceId><State>Started</State></RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>"#;
    let versioned = r.headers.get("x-ms-version").map(String::as_str) == Some("2012-11-30");
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/?comp=versions") => (200, VERSIONS.into()),
        ("GET", "/machine/?comp=goalstate") if versioned => (200, GOAL_STATE.into()),
        ("POST", "/machine/?comp=health") if versioned => (200, Vec::new()),
        _ => (400, Vec::new()),
    }
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn azure_with_its_ready_report_then_gce_provision_the_host_from_a_vhd() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let key = ssh.public_key().unwrap();

    // Azure: IMDS (`Metadata: true`) with the instance and its key but no
    // user data; the custom data comes in ovf-env.xml on the provisioning
    // CD-ROM; the WireServer must get the ready report.
    let instance = serde_json::json!({
        "compute": {
            "vmId": "5c08b38e-4d57-4c23-ac45-aca61037f084",
            "name": "cairn-azure-1",
            "osProfile": {"computerName": "cairn-azure-1"},
            "location": "westeurope",
            "zone": "1",
            "vmSize": "Standard_D2s_v5",
            "publicKeys": [{"keyData": key, "path": "/home/azureuser/.ssh/authorized_keys"}]
        },
        "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.1.0.4", "publicIpAddress": ""}]}}]}
    })
    .to_string();
    let imds = MetadataServer::start(move |r: &Asked| {
        if r.headers.get("metadata").map(String::as_str) != Some("true") {
            return (400, b"Bad request. Required metadata header not specified".to_vec());
        }
        let versioned = r.path.contains("api-version=2021-02-01");
        match path_of(r) {
            "/metadata/instance" if versioned => (200, instance.clone().into_bytes()),
            "/metadata/instance/compute/userData" if versioned => (200, Vec::new()),
            _ => (404, Vec::new()),
        }
    })
    .unwrap();
    let wire = MetadataServer::start(wireserver).unwrap();
    let media = scratch.path().join("azure-media");
    std::fs::create_dir_all(&media).unwrap();
    let custom_data =
        base64::engine::general_purpose::STANDARD.encode(user_data("/etc/cairn-cloud-test", "from-azure"));
    std::fs::write(
        media.join("ovf-env.xml"),
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>cairn-azure-1</HostName>
      <UserName>azureuser</UserName>
      <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>
      <CustomData>{custom_data}</CustomData>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
</Environment>
"#
        ),
    )
    .unwrap();
    let media_iso = scratch.path().join("azure-media.iso");
    iso9660(&media_iso, "rd_rdfe_stable", &media).unwrap();

    // Azure imports fixed VHDs; its disks are SCSI. One user network holds
    // both of Azure's addresses: IMDS 169.254.169.254, WireServer
    // 168.63.129.16.
    let disk = dev_disk_in(&a, DiskFormat::Vhd, scratch.path());
    let mut opts = cloud_vm_options(
        &a,
        &disk,
        DiskInterface::VirtioScsi,
        &[
            "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
            "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77",
        ],
        "168.0.0.0/7",
    );
    opts.cdroms.push(media_iso);
    opts.forward_to_loopback(Path::new(RELAY), "169.254.169.254:80", imds.port);
    opts.forward_to_loopback(Path::new(RELAY), "168.63.129.16:80", wire.port);
    opts.forwards.push(ssh.forward(None));
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
    assert_root_fills_disk(&vm, "/dev/sda2", DISK_SIZE);
    assert_provisioned(
        &vm,
        "azure",
        "5c08b38e-4d57-4c23-ac45-aca61037f084",
        "/etc/cairn-cloud-test",
        "from-azure",
        "cairn-azure-1",
    );
    ssh.wait_ready("cairn", BOOT).unwrap();
    assert_eq!(ssh.ok("cairn", "id -un").unwrap(), "cairn");
    // The ready report: versions, goal state, then `Ready` for the goal
    // state's incarnation, container and role instance.
    let asked: Vec<(Asked, u16)> = wire.requests();
    let sequence: Vec<String> = asked
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
    let report = String::from_utf8_lossy(&asked[2].0.body).into_owned();
    for part in [
        "<GoalStateIncarnation>7</GoalStateIncarnation>",
        "<ContainerId>c0ffee00-cafe-4b1d-9e57-000000000001</ContainerId>",
        "<InstanceId>vm-cairn-azure._cairn-azure-1</InstanceId>",
        "<State>Ready</State>",
    ] {
        assert!(report.contains(part), "{part} is not in the ready report:\n{report}");
    }
    assert!(
        imds.requests().iter().all(|(_, st)| *st == 200),
        "{:?}",
        imds.requests()
    );

    // The same disk on GCE (a new instance): `Metadata-Flavor: Google` on
    // every request, the instance's keys only, since it blocks the
    // project's.
    let gce_answers: Vec<(&str, String)> = vec![
        ("instance/id", "4520031799277581759".into()),
        (
            "instance/hostname",
            "cairn-gce-1.europe-west1-b.c.cairn-test.internal".into(),
        ),
        ("instance/zone", "projects/123456789/zones/europe-west1-b".into()),
        (
            "instance/machine-type",
            "projects/123456789/machineTypes/e2-medium".into(),
        ),
        ("instance/attributes/ssh-keys", format!("cairn:{key}")),
        ("instance/attributes/block-project-ssh-keys", "TRUE".into()),
        (
            "project/attributes/ssh-keys",
            "alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectWideKeyMustNotBeUsed alice".into(),
        ),
        (
            "instance/attributes/user-data",
            user_data("/etc/cairn-cloud-test-2", "from-gce"),
        ),
    ];
    let gce = MetadataServer::start(move |r: &Asked| {
        if r.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
            return (403, Vec::new());
        }
        let path = path_of(r).strip_prefix("/computeMetadata/v1/").unwrap_or("");
        match gce_answers.iter().find(|(p, _)| *p == path) {
            Some((_, body)) if r.method == "GET" => (200, body.clone().into_bytes()),
            _ => (404, Vec::new()),
        }
    })
    .unwrap();
    move_to_cloud(
        &mut vm,
        &["type=1,manufacturer=Google,product=Google Compute Engine,serial=GoogleCloud-4520031799277581759"],
        "169.254.169.0/24",
        "169.254.169.254:80",
        gce.port,
    );
    assert_provisioned(
        &vm,
        "gce",
        "4520031799277581759",
        "/etc/cairn-cloud-test-2",
        "from-gce",
        "cairn-gce-1.europe-west1-b.c.cairn-test.internal",
    );
    let keys = metadata_keys(&vm);
    assert_eq!(keys.trim(), key.trim(), "only the instance's key:\n{keys}");
    ssh.wait_ready("cairn", BOOT).unwrap();
    assert!(
        gce.requests().iter().all(|(_, st)| *st != 403),
        "a request without Metadata-Flavor"
    );
    assert!(
        !gce.requests()
            .iter()
            .any(|(r, _)| r.path.contains("project/attributes/ssh-keys")),
        "the project's keys were asked for although the instance blocks them"
    );
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn openstack_config_drive_then_tencent_metadata_provision_the_host_from_qcow2() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let key = ssh.public_key().unwrap();

    // OpenStack: everything on the config drive (ISO 9660 labelled
    // `config-2`); no metadata service is reachable, so none is needed.
    let drive = scratch.path().join("config-drive");
    let latest = drive.join("openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    std::fs::write(
        latest.join("meta_data.json"),
        serde_json::json!({
            "uuid": "83679162-1378-4288-a2d4-70e13ec132aa",
            "name": "cairn-os-1",
            "hostname": "cairn-os-1.novalocal",
            "availability_zone": "nova",
            "launch_index": 0,
            "public_keys": {"cairn-test": key},
            "keys": [{"name": "cairn-test", "type": "ssh", "data": key}],
            "meta": {}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        latest.join("user_data"),
        user_data("/etc/cairn-cloud-test", "from-openstack"),
    )
    .unwrap();
    let drive_iso = scratch.path().join("config-2.iso");
    iso9660(&drive_iso, "config-2", &drive).unwrap();

    let disk = dev_disk_in(&a, DiskFormat::Qcow2, scratch.path());
    let mut opts = cloud_vm_options(
        &a,
        &disk,
        DiskInterface::VirtioBlk,
        &["type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova"],
        "10.0.2.0/24",
    );
    opts.cdroms.push(drive_iso);
    opts.forwards.push(ssh.forward(None));
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
    assert_running_without_failures(&vm);
    assert_booted(&vm, &a.dev);
    assert_root_fills_disk(&vm, "/dev/vda2", DISK_SIZE);
    assert_provisioned(
        &vm,
        "openstack",
        "83679162-1378-4288-a2d4-70e13ec132aa",
        "/etc/cairn-cloud-test",
        "from-openstack",
        "cairn-os-1.novalocal",
    );
    let s = status(&vm);
    assert!(
        s["platform"]["metadata"]["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("config drive")),
        "{:#}",
        s["platform"]
    );
    ssh.wait_ready("cairn", BOOT).unwrap();
    assert_eq!(ssh.ok("cairn", "id -un").unwrap(), "cairn");

    // The same disk on Tencent Cloud (a new instance, no config drive):
    // its metadata service at 169.254.0.23, EC2's layout without tokens.
    let tencent_answers: Vec<(&str, String)> = vec![
        ("/latest/meta-data/instance-id", "ins-cairn0001".into()),
        ("/latest/meta-data/hostname", "VM-0-15-cairn".into()),
        ("/latest/meta-data/placement/region", "ap-guangzhou".into()),
        ("/latest/meta-data/placement/zone", "ap-guangzhou-3".into()),
        ("/latest/meta-data/public-keys/", "0/\n".into()),
        ("/latest/meta-data/public-keys/0/openssh-key", format!("{key}\n")),
        (
            "/latest/user-data",
            user_data("/etc/cairn-cloud-test-2", "from-tencent"),
        ),
    ];
    let tencent = MetadataServer::start(
        move |r: &Asked| match tencent_answers.iter().find(|(p, _)| *p == r.path) {
            Some((_, body)) if r.method == "GET" => (200, body.clone().into_bytes()),
            _ => (404, Vec::new()),
        },
    )
    .unwrap();
    move_to_cloud(
        &mut vm,
        &["type=1,manufacturer=Tencent Cloud,product=CVM"],
        "169.254.0.0/24",
        "169.254.0.23:80",
        tencent.port,
    );
    assert_provisioned(
        &vm,
        "tencent",
        "ins-cairn0001",
        "/etc/cairn-cloud-test-2",
        "from-tencent",
        "VM-0-15-cairn",
    );
    let env = vm.console.run_ok("cat /run/cairn/metadata.env", COMMAND).unwrap();
    assert!(env.contains("CAIRN_ZONE=\"ap-guangzhou-3\""), "{env}");
    ssh.wait_ready("cairn", BOOT).unwrap();
    assert!(
        tencent.requests().iter().all(|(r, _)| r.method == "GET"),
        "Tencent has no token call"
    );
}
