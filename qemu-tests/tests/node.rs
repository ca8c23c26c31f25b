//! The Kubernetes node image, end to end, in one boot and one reboot:
//!
//! - built from the manifest's `node` flavor with a package from the
//!   user's own apt repository (signed, served on loopback), which it runs;
//! - provisioned by Ignition, which places a system extension fetched by
//!   URL and checked by its hash;
//! - containerd's CRI answers a CRI client (`Version`, `Status`) on its
//!   socket, forwarded to the host by OpenSSH, and runs a pod sandbox whose
//!   network the bridge CNI plugin makes, in a systemd-managed cgroup;
//! - kubelet's preflight facts hold (modules, sysctls, no swap, tools);
//! - extensions made by `cairn-build sysext` merge on `systemd-sysext
//!   refresh`, survive a reboot, and those built for another OS version or
//!   Debian release are refused by systemd's own check.
//!
//! No kubelet runs: none is installable here (see the README).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_builder::image::BuiltImage;
use cairn_common::process::Cmd;
use cairn_qemu_tests::cri::{Cri, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, SandboxState};
use cairn_qemu_tests::http::Server;
use cairn_qemu_tests::ssh::{free_port, Ssh};
use cairn_qemu_tests::vm::{Vm, VmOptions};
use cairn_qemu_tests::{apt_repo, artifacts, extensions, oci, Artifacts};
use serde_json::{json, Value};

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");
const BOOT: Duration = Duration::from_secs(600);
const FW_CFG: &str = "opt/com.coreos/config";
const USER: &str = "core";

fn cairn_build(a: &Artifacts, args: &[&str]) -> Value {
    extensions::cairn_build(a, args).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn sysext(a: &Artifacts, manifest: &Path, out: &Path, name: &str, more: &[&str]) -> Value {
    extensions::make(a, manifest, out, name, more).unwrap()
}

/// Run `command` as root in the guest; it must succeed.
fn root(ssh: &Ssh, command: &str) -> String {
    ssh.ok(USER, &format!("sudo -n sh -c '{}'", command.replace('\'', "'\\''")))
        .unwrap()
}

/// Which extensions systemd-sysext has merged over /usr now.
fn merged(ssh: &Ssh) -> String {
    root(ssh, "systemd-sysext status --no-pager")
}

#[test]
#[ignore = "runs cairn-build sysext (dpkg-deb, mksquashfs); run by `cargo xtask test`"]
fn a_system_extension_made_from_a_package_holds_its_usr_files_and_says_what_it_fits() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let apt = scratch.path().join("apt");
    apt_repo::write(&apt, a.arch, apt_repo::Signing::Signed).unwrap();
    let deb = std::fs::read_dir(apt.join("pool").join(apt_repo::COMPONENT))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}_", apt_repo::HELLO)))
        })
        .expect("the test repository's package");
    // A package that also puts a file in /etc (as many do): refused by
    // name, then left out and listed when asked.
    let root = scratch.path().join("with-etc");
    std::fs::create_dir_all(root.join("etc/cairn-hello")).unwrap();
    std::fs::write(root.join("etc/cairn-hello/config"), "x\n").unwrap();
    let out = scratch.path().join("ext");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "sysext",
            "--manifest",
            s(&a.manifest),
            "--arch",
            a.arch.as_str(),
            "--name",
            "hello",
            "--deb",
            s(&deb),
            "--dir",
            s(&root),
            "--output",
            s(&out),
        ]
        .map(str::to_owned)
        .to_vec();
        v.extend(extra.iter().map(|e| e.to_string()));
        v
    };
    let refused = Cmd::new(&a.builder).args(args(&[])).output();
    let Err(e) = refused else {
        panic!("a file outside /usr was taken");
    };
    let e = format!("{e:#}");
    assert!(e.contains("holds /etc outside /usr"), "{e}");
    assert!(!out.join("hello.raw").exists(), "a refused extension was written");
    let built = cairn_build(
        &a,
        &args(&["--drop-outside-usr"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        built["dropped"],
        json!([format!("--dir {}: /etc", root.display())]),
        "{built}"
    );
    let image = out.join("hello.raw");
    let hash = format!(
        "sha256-{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&image).unwrap()))
    );
    assert_eq!(built["hash"], json!(hash), "the printed hash is the image's");
    // An independent reader of the image: squashfs-tools' unsquashfs.
    let listing = Cmd::new("unsquashfs")
        .args(["-lc"])
        .arg(&image)
        .output()
        .unwrap()
        .stdout;
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("squashfs-root/"))
        .collect();
    assert_eq!(
        files,
        [
            format!("usr/bin/{}", apt_repo::HELLO).as_str(),
            "usr/lib/extension-release.d/extension-release.hello"
        ],
        "{listing}"
    );
    let release = Cmd::new("unsquashfs")
        .args(["-cat"])
        .arg(&image)
        .arg("usr/lib/extension-release.d/extension-release.hello")
        .output()
        .unwrap()
        .stdout;
    let arch = if a.arch == cairn_common::layout::Arch::X86_64 {
        "x86-64"
    } else {
        "arm64"
    };
    assert_eq!(
        release,
        format!("# Written by cairn-build sysext.\nID=cairn\nSYSEXT_LEVEL=trixie\nARCHITECTURE={arch}\n")
    );
    // The same inputs make the same image.
    let again = cairn_build(
        &a,
        &args(&["--drop-outside-usr"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(again["hash"], built["hash"], "the image is reproducible");
}

#[test]
#[ignore = "builds the node image and boots it; run by `cargo xtask test`"]
fn a_node_image_with_the_users_own_package_runs_pod_sandboxes_through_cri_and_merges_system_extensions() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // The user's own apt repository, and the node image built with a
    // package from it.
    // A repository signed the older way (Release and Release.gpg), pinned
    // at 1001: its `hello` 1.0~cairn wins over Debian's 2.10.
    let apt = scratch.path().join("apt");
    apt_repo::write(&apt, a.arch, apt_repo::Signing::Detached).unwrap();
    let apt_server = Server::start(&apt).unwrap();
    let manifest = artifacts::copy_image_definition(&a.manifest, &scratch.path().join("definition")).unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    let set = "kubernetes-node = [";
    assert!(text.contains(set), "the manifest has no `kubernetes-node` package set");
    let text = text.replacen(
        set,
        &format!("{set}\"{}\", \"{}\", ", apt_repo::HELLO, apt_repo::PINNED),
        1,
    );
    let url = format!("http://127.0.0.1:{}", apt_server.port);
    let edited = apt_repo::in_manifest(&text, "node", &url, &apt_repo::public_key(), Some(1001));
    std::fs::write(&manifest, edited).unwrap();
    let build_repo = scratch.path().join("build");
    let image_args = |verb: &'static str| -> Vec<String> {
        [
            verb,
            "--manifest",
            s(&manifest),
            "--flavor",
            "node",
            "--arch",
            a.arch.as_str(),
            "--platform",
            a.platform.as_str(),
            "--repo",
            s(&build_repo),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut compose = image_args("compose");
    compose.extend(
        [
            "--cache",
            s(&a.cache),
            "--keys",
            s(&a.keys),
            "--agent-dir",
            s(&a.agent_dir),
        ]
        .map(str::to_owned),
    );
    let composed = cairn_build(&a, &compose.iter().map(String::as_str).collect::<Vec<_>>());
    let mut image = image_args("image");
    image.extend(["--output".to_owned(), s(&scratch.path().join("images")).to_owned()]);
    let built: BuiltImage =
        serde_json::from_value(cairn_build(&a, &image.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    // Its packages' versions and the repository's state are in the commit.
    let commit = composed["commit"].as_str().unwrap();
    let metadata = |key: &str| {
        Cmd::new("ostree")
            .arg(format!("--repo={}", build_repo.display()))
            .args(["show", "--print-metadata-key", key, commit])
            .output()
            .unwrap()
            .stdout
    };
    let packages = metadata("cairn.packages");
    assert!(
        packages.contains(&format!("'{}': '1.0'", apt_repo::HELLO)),
        "the repository's package is not among the commit's packages"
    );
    assert!(
        packages.contains(&format!("'{}': '{}'", apt_repo::PINNED, apt_repo::PINNED_VERSION)),
        "the pin did not take the repository's `hello` over Debian's"
    );
    // The repository leaves no trace in the OS: no source naming the
    // build's keyring, no pin.
    let ostree = |args: &[&str]| {
        Cmd::new("ostree")
            .arg(format!("--repo={}", build_repo.display()))
            .args(args)
            .output()
            .unwrap()
            .stdout
    };
    for line in ostree(&["ls", "-R", commit, "/usr/etc/apt"]).lines() {
        let path = line.split_whitespace().last().unwrap_or_default();
        assert!(!path.contains("cairn-repository"), "{path} is in the image");
        if line.starts_with('-') {
            let text = ostree(&["cat", commit, path]);
            assert!(
                !text.contains("cairn-repository"),
                "{path} names the repository:\n{text}"
            );
        }
    }
    assert!(
        metadata("cairn.apt-repositories").contains("'cairn-test stable'"),
        "{}",
        metadata("cairn.apt-repositories")
    );

    // System extensions: one placed by provisioning, one by hand, and two
    // systemd must refuse (another OS version; another Debian release).
    let ext = scratch.path().join("ext");
    let provisioned = sysext(&a, &manifest, &ext, "cairn-test-provisioned", &[]);
    let tools = sysext(&a, &manifest, &ext, "cairn-test-tools", &[]);
    let pinned = sysext(&a, &manifest, &ext, "cairn-test-pinned", &["--os-version", "9.9.9"]);
    let bookworm = sysext(
        &a,
        &manifest,
        &ext,
        "cairn-test-bookworm",
        &["--debian-release", "bookworm"],
    );
    assert_eq!(tools["fits"], json!({"level": "trixie"}), "{tools}");
    let www = scratch.path().join("www");
    std::fs::create_dir_all(www.join("ext")).unwrap();
    std::fs::copy(
        ext.join("cairn-test-provisioned.raw"),
        www.join("ext/cairn-test-provisioned.raw"),
    )
    .unwrap();
    let server = Server::start(&www).unwrap();

    let ssh = Ssh::new(scratch.path(), free_port().unwrap()).unwrap();
    // The extension's own unit, enabled by the same config.
    let config = json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [
            {"name": USER, "groups": ["sudo"], "sshAuthorizedKeys": [ssh.public_key().unwrap()]}
        ]},
        "storage": {"files": [
            {"path": "/var/lib/extensions/cairn-test-provisioned.raw", "mode": 420,
             "contents": {"source": "http://10.0.2.100/ext/cairn-test-provisioned.raw",
                          "verification": {"hash": provisioned["hash"]}}}
        ]},
        "systemd": {"units": [{"name": "cairn-test-provisioned.service", "enabled": true}]}
    });
    let config_file = scratch.path().join("config.ign");
    std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
    let pause = scratch.path().join("pause.tar");
    oci::write_pause_archive(&pause, a.arch, &a.busybox).unwrap();

    let mut opts = VmOptions::of(&built);
    opts.fw_cfg.push((FW_CFG.into(), config_file));
    opts.forward_update_server(Path::new(RELAY), server.port);
    opts.forwards.push(ssh.forward(None));
    for (file, serial) in [
        (pause.clone(), "cairn-pause"),
        (PathBuf::from(tools["path"].as_str().unwrap()), "cairn-tools"),
        (PathBuf::from(pinned["path"].as_str().unwrap()), "cairn-pinned"),
        (PathBuf::from(bookworm["path"].as_str().unwrap()), "cairn-bookworm"),
    ] {
        opts.extra_disks.push((file, serial.into()));
    }
    let mut vm = Vm::start_until(&opts, |vm| {
        vm.console
            .wait_for("cairn-provision: provisioned (ignition 3.4.0)", BOOT)
            .map(drop)
    })
    .unwrap();
    ssh.wait_ready(USER, BOOT).unwrap();
    let running = ssh
        .run(
            USER,
            "systemctl is-system-running --wait; systemctl --failed --no-legend",
        )
        .unwrap();
    assert!(
        running.stdout.starts_with("running"),
        "{}{}",
        running.stdout,
        running.stderr
    );

    // The user's packages run, the pinned one from the repository.
    assert_eq!(ssh.ok(USER, apt_repo::HELLO).unwrap(), apt_repo::HELLO_SAYS);
    assert_eq!(ssh.ok(USER, apt_repo::PINNED).unwrap(), apt_repo::PINNED_SAYS);

    // The extension provisioning placed is merged, in the first boot, and
    // its unit, enabled by the config, has run.
    assert_eq!(
        root(&ssh, "cat /usr/lib/cairn-test-provisioned/marker"),
        "cairn-test-provisioned"
    );
    assert_eq!(
        root(&ssh, "systemctl is-active cairn-test-provisioned.service"),
        "active"
    );

    // kubelet's preflight facts.
    assert_eq!(
        root(
            &ssh,
            "test -d /sys/module/br_netfilter && test -d /sys/module/overlay && echo loaded"
        ),
        "loaded"
    );
    assert_eq!(
        root(
            &ssh,
            "sysctl -n net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory kernel.panic_on_oops"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["1", "1", "1", "1", "1"]
    );
    assert_eq!(root(&ssh, "tail -n +2 /proc/swaps | wc -l"), "0", "swap is on");
    assert_eq!(root(&ssh, "stat -fc %T /sys/fs/cgroup"), "cgroup2fs");
    root(&ssh, "command -v conntrack ethtool socat iptables nft ctr runc");
    assert!(root(&ssh, "iptables --version").contains("nf_tables"));
    assert_eq!(root(&ssh, "readlink -f /opt/cni/bin/bridge"), "/usr/lib/cni/bridge");
    root(&ssh, "touch /opt/cni/bin/.writable && rm /opt/cni/bin/.writable");
    // Cairn's containerd configuration, not containerd's defaults (the
    // systemd cgroup driver; the sandbox image, 3.8 by default).
    let dump = root(&ssh, "containerd config dump");
    assert!(dump.contains("SystemdCgroup = true"), "{dump}");
    assert!(
        dump.contains(&format!("sandbox_image = \"{}\"", oci::PAUSE_IMAGE)),
        "{dump}"
    );

    // CRI, from a CRI client on the host: containerd's socket relayed to
    // one the login user may open, forwarded by OpenSSH.
    root(
        &ssh,
        &format!("systemd-run --unit cairn-test-cri-relay socat UNIX-LISTEN:/run/cairn-test-cri.sock,fork,user={USER},mode=0600 UNIX-CONNECT:/run/containerd/containerd.sock"),
    );
    let forward = ssh
        .forward_socket(USER, &scratch.path().join("cri.sock"), "/run/cairn-test-cri.sock")
        .unwrap();
    let cri = Cri::connect(&forward.local).unwrap();
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    let condition = |name: &str| {
        cri.status()
            .unwrap()
            .into_iter()
            .find(|c| c.r#type == name)
            .unwrap_or_else(|| panic!("CRI Status has no {name} condition"))
    };
    assert!(condition("RuntimeReady").status, "{:?}", condition("RuntimeReady"));
    let no_network = condition("NetworkReady");
    assert!(
        !no_network.status,
        "NetworkReady before any CNI configuration: {no_network:?}"
    );

    // A pod sandbox on the bridge CNI plugin, as a network add-on would
    // configure it.
    root(&ssh, "ctr -n k8s.io images import /dev/disk/by-id/virtio-cairn-pause");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "cairn-test",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    root(
        &ssh,
        &format!("printf %s '{conflist}' > /etc/cni/net.d/10-cairn-test.conflist"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition("NetworkReady").status {
        assert!(
            Instant::now() < deadline,
            "NetworkReady stayed false with a CNI configuration: {:?}",
            condition("NetworkReady")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let id = cri
        .run_pod_sandbox(&PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "cairn-test".into(),
                uid: "cairn-test-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "cairn-test-pod".into(),
            log_directory: "/var/log/pods/default_cairn-test_cairn-test-uid".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "kubepods-besteffort.slice".into(),
            }),
            ..Default::default()
        })
        .unwrap_or_else(|e| {
            let journal = root(&ssh, "journalctl --no-pager -b -u containerd | tail -n 40");
            panic!("RunPodSandbox: {e:#}\n{journal}")
        });
    let sandbox = cri.pod_sandbox_status(&id).unwrap();
    assert_eq!(sandbox.state, SandboxState::Ready, "{sandbox:?}");
    assert!(
        sandbox.ip.starts_with("10.88."),
        "the bridge plugin's address: {sandbox:?}"
    );
    assert!(
        root(&ssh, "ip -4 -o addr show cni0").contains("10.88.0.1/16"),
        "the bridge is the pods' gateway"
    );
    assert_eq!(
        root(
            &ssh,
            &format!("test -d /sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{id}.scope && echo systemd")
        ),
        "systemd",
        "the sandbox's cgroup is a systemd scope under its slice"
    );
    cri.stop_pod_sandbox(&id).unwrap();
    cri.remove_pod_sandbox(&id).unwrap();
    assert!(cri.list_pod_sandbox().unwrap().iter().all(|s| s.id != id));
    drop(cri);
    drop(forward);

    // Extensions placed by hand: one merged on refresh, two refused.
    for (serial, name) in [
        ("cairn-tools", "cairn-test-tools"),
        ("cairn-pinned", "cairn-test-pinned"),
        ("cairn-bookworm", "cairn-test-bookworm"),
    ] {
        root(
            &ssh,
            &format!("cat /dev/disk/by-id/virtio-{serial} > /var/lib/extensions/{name}.raw"),
        );
    }
    let refresh = ssh.run(USER, "sudo -n systemd-sysext refresh 2>&1").unwrap();
    let status = merged(&ssh);
    assert!(
        status.contains("cairn-test-tools") && status.contains("cairn-test-provisioned"),
        "refresh: {}\nstatus: {status}",
        refresh.stdout
    );
    assert!(
        !status.contains("cairn-test-pinned") && !status.contains("cairn-test-bookworm"),
        "an extension of another OS version or Debian release was merged:\n{status}"
    );
    assert_eq!(
        root(
            &ssh,
            "/usr/lib/cairn-test-tools/busybox cat /usr/lib/cairn-test-tools/marker"
        ),
        "cairn-test-tools"
    );
    assert_eq!(
        root(
            &ssh,
            "ls /usr/lib/cairn-test-pinned /usr/lib/cairn-test-bookworm 2>/dev/null | wc -l"
        ),
        "0"
    );

    // A unit of an extension placed by hand, enabled by hand.
    root(
        &ssh,
        "systemctl daemon-reload && systemctl enable cairn-test-tools.service",
    );

    // Merged again at boot.
    let before = vm.console.transcript().matches("Linux version").count();
    let _ = ssh.run(USER, "sudo -n systemctl reboot");
    let deadline = Instant::now() + BOOT;
    while vm.console.transcript().matches("Linux version").count() == before {
        assert!(Instant::now() < deadline, "no reboot:\n{}", vm.console.tail(3000));
        std::thread::sleep(Duration::from_secs(1));
    }
    ssh.wait_ready(USER, BOOT).unwrap();
    assert_eq!(root(&ssh, "systemctl is-active systemd-sysext.service"), "active");
    let status = merged(&ssh);
    assert!(
        status.contains("cairn-test-tools")
            && status.contains("cairn-test-provisioned")
            && !status.contains("cairn-test-pinned")
            && !status.contains("cairn-test-bookworm"),
        "after the reboot: {status}"
    );
    assert_eq!(
        root(
            &ssh,
            "cat /usr/lib/cairn-test-tools/marker /usr/lib/cairn-test-provisioned/marker"
        ),
        "cairn-test-tools\ncairn-test-provisioned"
    );
    // The units extensions carry start at boot too: the one enabled by
    // provisioning, and one enabled by hand before the reboot.
    assert_eq!(
        root(
            &ssh,
            "systemctl is-active cairn-test-provisioned.service cairn-test-tools.service"
        ),
        "active\nactive"
    );
    vm.kill();
}
