//! Cloud platforms in QEMU: the firmware's DMI strings set with `-smbios`
//! as each cloud's firmware shows them, the provider's metadata service
//! played by a loopback server that implements its documented behaviour,
//! reached at the provider's own address through the restricted user
//! network (whose range is set to contain that address). What only the
//! real clouds can verify is listed in the README.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_qemu_tests::metadata_server::{Asked, MetadataServer};
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::Artifacts;
use serde_json::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);

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

    let user_data =
        |file: &str, content: &str| format!("#cloud-config\nwrite_files:\n  - path: {file}\n    content: {content}\n");
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

    let mut opts = VmOptions::of(&a.dev);
    opts.smbios
        .push("type=1,manufacturer=Amazon EC2,product=m6i.large".into());
    opts.net = Some("169.254.169.0/24".into());
    opts.forward_to_loopback(Path::new(RELAY), "169.254.169.254:80", ec2.port);
    opts.forwards.push(ssh.forward(None));
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
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
    let relay = Path::new(RELAY).to_owned();
    vm.power_cycle_with(|machine| {
        machine.smbios = vec!["type=1,manufacturer=Alibaba Cloud,product=Alibaba Cloud ECS".into()];
        machine.net = Some("100.100.100.0/24".into());
        machine.forwards.retain(|f| !f.starts_with("guestfwd"));
        machine.forwards.push(format!(
            "guestfwd=tcp:100.100.100.200:80-cmd:{} {}",
            relay.display(),
            ali.port
        ));
    })
    .unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
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
    let keys = c
        .run_ok(
            "cat /var/home/cairn/.ssh/authorized_keys.d/cairn-metadata | wc -l",
            COMMAND,
        )
        .unwrap();
    assert_eq!(keys.trim(), "0");
    assert!(*seen.lock().unwrap() > 0);
    assert!(
        ali.requests().iter().all(|(_, status)| *status != 401),
        "a request without the token"
    );
}
