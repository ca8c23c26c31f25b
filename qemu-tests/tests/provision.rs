//! First-boot provisioning, end to end: an Ignition config through QEMU's
//! fw_cfg on the prod image, a NoCloud seed with cloud-config on the dev
//! image, and a config refused for a tampered remote file; checked with
//! OpenSSH's own client through a `hostfwd` on 127.0.0.1. Needs
//! `cargo xtask test`.

use std::path::Path;
use std::time::Duration;

use cairn_qemu_tests::http::Server;
use cairn_qemu_tests::oci;
use cairn_qemu_tests::seed::{Seed, SeedVolume};
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::{extensions, Artifacts};
use serde_json::{json, Value};
use sha2::Digest as _;

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);
const FW_CFG: &str = "opt/com.coreos/config";

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos)
}

/// The kernel argument the Ignition test's config adds.
const KARG: &str = "cairn.test.provisioned=1";

fn data_url(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("data:,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The guest's SSH host public keys (`type base64`), sorted.
fn guest_host_keys(ssh: &Ssh) -> Vec<String> {
    let out = ssh
        .ok(
            "core",
            "cat /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ecdsa_key.pub /etc/ssh/ssh_host_rsa_key.pub",
        )
        .unwrap();
    let mut keys: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    keys.sort();
    keys
}

/// The provisioning part of `cairn-agent status --json`.
fn provisioning(status_json: &str) -> Value {
    let v: Value = serde_json::from_str(status_json).unwrap_or_else(|e| panic!("{e}: {status_json}"));
    v["provisioning"].clone()
}

#[test]
#[ignore = "boots VMs; run by `cargo xtask test`"]
fn prod_image_provisioned_by_ignition_over_fw_cfg_takes_ssh_logins_once_per_machine() {
    let a = Artifacts::load().unwrap();
    let prod = a.prod.as_ref().expect("xtask builds the prod image for this test");
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let marker = unique();

    // A container image to run from a provisioned unit, and a remote file
    // (checked by its hash) served on loopback.
    let oci_archive = scratch.path().join("oci.tar");
    oci::write_archive(&oci_archive, a.arch, &a.busybox, &marker).unwrap();
    let www = scratch.path().join("www");
    std::fs::create_dir_all(www.join("provision")).unwrap();
    let remote = format!("fetched-{marker}\n");
    std::fs::write(www.join("provision/remote.txt"), &remote).unwrap();
    let server = Server::start(&www).unwrap();

    let unit = format!(
        "[Unit]\nDescription=Cairn test: a container from a provisioned unit\nRequires=containerd.service\nAfter=containerd.service\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'ctr images import /dev/disk/by-id/virtio-cairn-oci && ctr run --rm {} provisioned /bin/busybox cat /etc/cairn-oci-marker > /run/cairn-test-container.out'\n\
         [Install]\nWantedBy=multi-user.target\n",
        oci::IMAGE_NAME
    );
    let config = json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [
            {"name": "core", "groups": ["sudo"], "sshAuthorizedKeys": [ssh.public_key().unwrap()]}
        ]},
        "storage": {
            "files": [
                {"path": "/etc/hostname", "mode": 420, "contents": {"source": "data:,ign-host"}},
                {"path": "/etc/cairn-provision-test", "mode": 420, "contents": {"source": data_url(&format!("provisioned-{marker}\n"))}},
                {"path": "/etc/cairn/agent.d/60-provisioned.toml", "mode": 420,
                 "contents": {"source": data_url("[update]\nstream = \"provisioned\"\n")}},
                {"path": "/var/lib/cairn-test/remote", "mode": 384, "user": {"name": "core"},
                 "contents": {"source": "http://10.0.2.100/provision/remote.txt",
                              "verification": {"hash": format!("sha256-{}", hex::encode(sha2::Sha256::digest(remote.as_bytes())))}}}
            ],
            "directories": [{"path": "/var/lib/cairn-test", "mode": 493}]
        },
        "systemd": {"units": [
            {"name": "cairn-test-container.service", "enabled": true, "contents": unit}
        ]},
        "kernelArguments": {"shouldExist": [KARG], "shouldNotExist": ["panic=10"]}
    });
    let config_file = scratch.path().join("config.ign");
    std::fs::write(&config_file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let mut opts = VmOptions::of(prod);
    opts.fw_cfg.push((FW_CFG.into(), config_file.clone()));
    opts.extra_disks.push((oci_archive.clone(), "cairn-oci".into()));
    opts.forward_update_server(Path::new(RELAY), server.port);
    opts.forwards.push(ssh.forward(None));
    // The config is applied in the first boot, which then reboots once to
    // boot with its kernel arguments; that second boot provisions nothing.
    let vm = Vm::start_until(&opts, |vm| {
        vm.console
            .wait_for("cairn-provision: provisioned (ignition 3.4.0)", BOOT)
            .map(drop)
    })
    .unwrap();
    vm.console
        .wait_for(
            "cairn-provision: rebooting once to boot with the provisioned kernel arguments",
            BOOT,
        )
        .unwrap();
    vm.console.wait_for("Linux version", BOOT).unwrap();
    let fingerprints_block = vm
        .console
        .transcript()
        .split("BEGIN SSH HOST KEY FINGERPRINTS")
        .nth(1)
        .unwrap_or_else(|| panic!("no host key fingerprints on the console:\n{}", vm.console.tail(3000)))
        .to_owned();
    ssh.wait_ready("core", BOOT).unwrap();
    let second_boot = vm
        .console
        .transcript()
        .split("Linux version")
        .last()
        .unwrap()
        .to_owned();
    assert!(
        !second_boot.contains("provisioning from"),
        "the second boot provisioned again"
    );
    let cmdline = ssh.ok("core", "cat /proc/cmdline").unwrap();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    assert!(words.contains(&KARG) && !words.contains(&"panic=10"), "{cmdline}");

    // What the config asked for is in force.
    assert_eq!(ssh.ok("core", "hostname").unwrap(), "ign-host");
    assert_eq!(
        ssh.ok("core", "cat /etc/cairn-provision-test").unwrap(),
        format!("provisioned-{marker}")
    );
    assert_eq!(ssh.ok("core", "cat /var/lib/cairn-test/remote").unwrap(), remote.trim());
    assert_eq!(
        ssh.ok("core", "stat -c %U:%a /var/lib/cairn-test/remote").unwrap(),
        "core:600"
    );
    let container = ssh
        .ok(
            "core",
            "for i in $(seq 150); do systemctl is-active -q cairn-test-container.service && break; sleep 1; done; cat /run/cairn-test-container.out",
        )
        .unwrap_or_else(|e| {
            let why = ssh
                .run(
                    "core",
                    "systemctl status --no-pager cairn-test-container.service; sudo -n journalctl --no-pager -b -u cairn-test-container.service -u containerd.service | tail -n 40",
                )
                .map(|r| r.stdout + &r.stderr)
                .unwrap_or_default();
            panic!("the provisioned unit's container did not run: {e:#}\n{why}")
        });
    assert!(container.ends_with(&marker), "{container}");
    assert!(ssh
        .ok("core", "id -nG")
        .unwrap()
        .split_whitespace()
        .any(|g| g == "sudo"));
    let status = ssh.ok("core", "sudo -n cairn-agent status --json").unwrap();
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["stream"], "provisioned", "the provisioned agent drop-in is in force");
    let p = provisioning(&status);
    assert_eq!(p["format"], "ignition 3.4.0", "{p:#}");
    assert_eq!(p["source"]["kind"], "fw-cfg", "{p:#}");
    assert!(p["error"].is_null(), "{p:#}");

    // Keys only, never root; password logins are refused by sshd itself.
    let sshd = ssh.ok("core", "sudo -n sshd -T").unwrap();
    for setting in [
        "permitrootlogin no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
    ] {
        assert!(sshd.lines().any(|l| l == setting), "sshd -T lacks `{setting}`");
    }
    let password = ssh.try_password("core").unwrap();
    assert!(!password.success);
    assert!(
        password.stderr.contains("Permission denied (publickey)"),
        "{}",
        password.stderr
    );
    assert!(!ssh.run("root", "true").unwrap().success, "root logged in");

    // The machine's host keys, as its files say and as sshd serves them
    // (ssh-keyscan under TCG may miss a type: a subset is enough there),
    // and the console showed their fingerprints.
    let keys = guest_host_keys(&ssh);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let scanned = ssh.host_keys().unwrap();
    assert!(
        !scanned.is_empty() && scanned.iter().all(|k| keys.contains(k)),
        "sshd serves {scanned:?}, the machine has {keys:?}"
    );
    for fp in Ssh::fingerprints(&keys).unwrap() {
        assert!(
            fingerprints_block.contains(&fp),
            "{fp} not on the console:\n{fingerprints_block}"
        );
    }
    let machine_id = ssh.ok("core", "cat /etc/machine-id").unwrap();

    // The host keys made in the first boot are the ones the second serves.
    assert!(
        !second_boot.contains("BEGIN SSH HOST KEY FINGERPRINTS"),
        "the second boot made new host keys"
    );
    assert!(
        p["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("kernel arguments of the next boot")),
        "{p:#}"
    );
    drop(vm);

    // A second machine from the same image: its own identity. Its config
    // has only the login (no remote file, unit or kernel arguments), so it
    // boots once.
    let login_only = json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [config["passwd"]["users"][0].clone()]}
    });
    let login_file = scratch.path().join("login.ign");
    std::fs::write(&login_file, serde_json::to_vec(&login_only).unwrap()).unwrap();
    let mut opts2 = VmOptions::of(prod);
    opts2.fw_cfg.push((FW_CFG.into(), login_file));
    opts2.forwards.push(ssh.forward(None));
    let vm2 = Vm::start_until(&opts2, |vm| {
        vm.console.wait_for("cairn-provision: provisioned", BOOT).map(drop)
    })
    .unwrap();
    ssh.wait_ready("core", BOOT).unwrap();
    let keys2 = guest_host_keys(&ssh);
    assert!(keys2.iter().all(|k| !keys.contains(k)), "two machines share a host key");
    assert_ne!(ssh.ok("core", "cat /etc/machine-id").unwrap(), machine_id);
    drop(vm2);
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn nocloud_seed_with_cloud_config_and_a_static_address_provisions_each_new_instance() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    let key = ssh.public_key().unwrap();
    // A system extension fetched by URL and checked by its hash
    // (`write_files` `source`), served on loopback.
    let www = scratch.path().join("www");
    let extension = extensions::make(&a, &a.manifest, &www, "cairn-test-seeded", &[]).unwrap();
    let hash = extension["hash"].as_str().unwrap().to_owned();
    let server = Server::start(&www).unwrap();
    let user_data = |host: &str, content: &str| {
        format!(
            "#cloud-config\nhostname: {host}\nusers:\n  - default\n  - name: ops\n    groups: sudo\n    shell: /bin/bash\n    ssh_authorized_keys: [\"{key}\"]\n\
             ssh_authorized_keys:\n  - {key}\n\
             write_files:\n  - path: /etc/cairn-seed-test\n    content: {content}\n    permissions: '0640'\n\
             \x20 - path: /var/lib/extensions/cairn-test-seeded.raw\n    source:\n      uri: http://10.0.2.100/cairn-test-seeded.raw\n      hash: {hash}\n\
             runcmd:\n  - printf '[update]\\nstream = \"seeded\"\\n' > /etc/cairn/agent.d/70-seed.toml\n  - echo ran-$(cat /etc/cairn-seed-test) > /var/lib/cairn-runcmd\n\
             packages: [nginx]\n"
        )
    };
    // QEMU's first NIC has this MAC; the static address is not the one
    // QEMU's DHCP hands out (10.0.2.15), so reaching it proves the config.
    let network = "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    addresses: [10.0.2.20/24]\n    gateway4: 10.0.2.2\n    nameservers:\n      addresses: [10.0.2.3]\n";
    // The first instance's seed is an ISO 9660 CD-ROM (cloud-init's
    // documented form), the second's a FAT disk.
    let seed_iso = scratch.path().join("seed.iso");
    let mut seed = Seed::new("i-first", user_data("seeded-1", "one"));
    seed.network_config = Some(network.into());
    seed.write(&seed_iso, SeedVolume::Iso9660).unwrap();

    let mut opts = VmOptions::of(&a.dev);
    opts.cdroms.push(seed_iso);
    opts.forwards.push(ssh.forward(Some("10.0.2.20")));
    opts.forward_update_server(Path::new(RELAY), server.port);
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
    let c = &vm.console;
    let status = c.run_ok("cairn-agent status --json", COMMAND).unwrap();
    let p = provisioning(&status);
    assert_eq!(p["format"], "cloud-config", "{p:#}");
    assert_eq!(p["instance_id"], "i-first", "{p:#}");
    assert!(
        p["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("`packages`")),
        "{p:#}"
    );
    let addrs = c.run_ok("ip -4 -o addr show scope global", COMMAND).unwrap();
    assert!(
        addrs.contains("10.0.2.20/24") && !addrs.contains("10.0.2.15"),
        "{addrs}"
    );

    ssh.wait_ready("ops", BOOT).unwrap();
    assert_eq!(ssh.ok("ops", "hostname").unwrap(), "seeded-1");
    assert_eq!(ssh.ok("ops", "sudo -n cat /etc/cairn-seed-test").unwrap(), "one");
    assert_eq!(ssh.ok("ops", "stat -c %a /etc/cairn-seed-test").unwrap(), "640");
    // The extension it fetched is merged, in the first boot.
    assert_eq!(
        ssh.ok("ops", "cat /usr/lib/cairn-test-seeded/marker").unwrap(),
        "cairn-test-seeded"
    );
    // The image's default user got the top-level keys, and sudo without a password.
    assert_eq!(ssh.ok("cairn", "sudo -n id -u").unwrap(), "0");
    // runcmd ran once the network was online.
    let ran = ssh
        .ok(
            "ops",
            "for i in $(seq 120); do [ -s /var/lib/cairn-runcmd ] && break; sleep 1; done; cat /var/lib/cairn-runcmd",
        )
        .unwrap();
    assert_eq!(ran, "ran-one");
    // The agent's drop-in written by runcmd, after the daemon started, is
    // taken without a reboot: the daemon restarts and settles again.
    let settled = ssh
        .ok(
            "ops",
            "n() { sudo -n journalctl -b -u cairn-agent.service --output cat | grep -c 'boot settled'; }; \
             for i in $(seq 60); do [ \"$(n)\" -ge 2 ] && break; sleep 1; done; n",
        )
        .unwrap();
    assert!(
        settled.parse::<u32>().unwrap() >= 2,
        "the agent did not restart for its new settings (settled {settled} times)"
    );
    let status: Value = serde_json::from_str(&ssh.ok("ops", "sudo -n cairn-agent status --json").unwrap()).unwrap();
    assert_eq!(status["stream"], "seeded");

    // The disk under a new instance id is provisioned again.
    let seed_img = scratch.path().join("seed.img");
    let mut seed = Seed::new("i-second", user_data("seeded-2", "two"));
    seed.network_config = Some(network.into());
    seed.write(&seed_img, SeedVolume::Vfat).unwrap();
    vm.power_cycle_with(|machine| {
        machine.cdroms.clear();
        machine.extra_disks.push((seed_img, "cidata".into()));
    })
    .unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let p = provisioning(&vm.console.run_ok("cairn-agent status --json", COMMAND).unwrap());
    assert_eq!(p["instance_id"], "i-second", "{p:#}");
    ssh.wait_ready("ops", BOOT).unwrap();
    assert_eq!(ssh.ok("ops", "hostname").unwrap(), "seeded-2");
    assert_eq!(ssh.ok("ops", "sudo -n cat /etc/cairn-seed-test").unwrap(), "two");
}

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn provisioning_refuses_a_config_with_a_tampered_remote_file_and_bad_configs_by_name() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let www = scratch.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("tampered.txt"), "not what was hashed\n").unwrap();
    let server = Server::start(&www).unwrap();
    let config = json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{"name": "never"}]},
        "storage": {"files": [
            {"path": "/etc/cairn-not-applied", "contents": {"source": "data:,x"}},
            {"path": "/etc/cairn-tampered", "contents": {"source": "http://10.0.2.100/tampered.txt",
             "verification": {"hash": format!("sha256-{}", hex::encode(sha2::Sha256::digest(b"what was hashed\n")))}}}
        ]}
    });
    let config_file = scratch.path().join("config.ign");
    std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
    let mut opts = VmOptions::of(&a.dev);
    opts.fw_cfg.push((FW_CFG.into(), config_file));
    opts.forward_update_server(Path::new(RELAY), server.port);
    let mut vm = Vm::boot(&opts, BOOT).unwrap();
    let c = &vm.console;
    let said = c.transcript();
    assert!(
        said.contains("provisioning refused the config from QEMU fw_cfg") && said.contains("hash mismatch"),
        "the console does not say why:\n{}",
        c.tail(3000)
    );
    let p = provisioning(&c.run_ok("cairn-agent status --json", COMMAND).unwrap());
    assert!(p["error"].as_str().unwrap().contains("/etc/cairn-tampered"), "{p:#}");
    assert!(p["applied"].as_array().unwrap().is_empty(), "{p:#}");
    let none = c
        .run("ls /etc/cairn-not-applied /etc/cairn-tampered; id never", COMMAND)
        .unwrap();
    assert_ne!(none.status, 0, "something was applied: {}", none.output);
    assert_eq!(
        c.run_ok("systemctl is-system-running", COMMAND).unwrap().trim(),
        "running",
        "a refused config left a failed unit"
    );

    // A refused config consumed nothing: the same disk, now with a NoCloud
    // seed whose cloud-config is not YAML, is refused again, by its reason.
    let seed_iso = scratch.path().join("seed.iso");
    Seed::new("i-broken", "#cloud-config\nusers: [\n")
        .write(&seed_iso, SeedVolume::Iso9660)
        .unwrap();
    vm.power_cycle_with(|machine| {
        machine.fw_cfg.clear();
        machine.cdroms.push(seed_iso);
    })
    .unwrap();
    vm.wait_for_root_shell(BOOT).unwrap();
    let c = &vm.console;
    let said = c.transcript();
    assert!(
        said.contains("provisioning refused the config from NoCloud") && said.contains("not valid YAML"),
        "the console does not say why:\n{}",
        c.tail(3000)
    );
    let p = provisioning(&c.run_ok("cairn-agent status --json", COMMAND).unwrap());
    assert!(p["error"].as_str().unwrap().contains("not valid YAML"), "{p:#}");
    assert_eq!(p["instance_id"], "i-broken", "{p:#}");
    assert!(p["applied"].as_array().unwrap().is_empty(), "{p:#}");

    // The same reader, asked from the command line, names each refusal.
    for (name, text, why) in [
        (
            "malformed.ign",
            "{\"ignition\": {\"version\": \"3.4.0\"}, \"storage\": [",
            "not a valid Ignition config",
        ),
        (
            "disks.ign",
            "{\"ignition\":{\"version\":\"3.4.0\"},\"storage\":{\"disks\":[{\"device\":\"/dev/vdb\"}]}}",
            "storage.disks",
        ),
        ("not-yaml.yaml", "#cloud-config\nusers: [\n", "not valid YAML"),
    ] {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        c.run_ok(&format!("echo {encoded} | base64 -d > /tmp/{name}"), COMMAND)
            .unwrap();
        let out = c
            .run(&format!("cairn-agent provision --check /tmp/{name} 2>&1"), COMMAND)
            .unwrap();
        assert_ne!(out.status, 0, "{name} was accepted: {}", out.output);
        assert!(out.output.contains(why), "{name}: {}", out.output);
    }
}
