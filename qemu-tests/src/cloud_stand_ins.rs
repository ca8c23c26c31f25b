//! Each cloud Cairn runs on, as a QEMU machine can be made to look like
//! it: the DMI strings its firmware shows, a user network whose range
//! holds its metadata addresses, loopback stand-ins of its metadata
//! services (each implementing the provider's documented behaviour: EC2's
//! and Alibaba's session tokens, GCE's `Metadata-Flavor`, Azure's IMDS
//! header and WireServer protocol), the media it attaches (OpenStack's
//! `config-2` drive, Azure's `ovf-env.xml` CD-ROM), and the bus its VMs'
//! disks are on (the disk format is the manifest's fact:
//! [`Cloud::boot_format`]). Shared by the cloud VM tests and `cargo xtask
//! bench cloud`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine as _;
use cairn_builder::disk_formats::{self, DiskFormat};

use crate::metadata_server::{Asked, MetadataServer};
use crate::qemu::DiskInterface;
use crate::seed::iso9660;

/// A cloud, as Cairn's platform detection names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Ec2,
    Aliyun,
    Azure,
    Gce,
    Openstack,
    Tencent,
}

/// What an instance is given: the same facts on every cloud, each serves
/// them in its own form.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub hostname: String,
    /// The default user's key, if the cloud is given one.
    pub ssh_key: Option<String>,
    pub user_data: Option<String>,
    pub zone: String,
}

/// A key the GCE stand-in lists for the whole project while the instance
/// blocks project keys: it must never reach the host.
pub const GCE_PROJECT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectWideKeyMustNotBeUsed alice";

/// The goal state the Azure WireServer stand-in gives, for checking the
/// report against.
pub const AZURE_INCARNATION: &str = "7";
pub const AZURE_CONTAINER_ID: &str = "c0ffee00-cafe-4b1d-9e57-000000000001";
pub const AZURE_ROLE_INSTANCE: &str = "vm-cairn-azure._cairn-azure-1";

/// A running stand-in of one cloud for one instance.
pub struct StandIn {
    pub cloud: Cloud,
    /// Its metadata service (`None`: OpenStack's stand-in offers only the
    /// config drive).
    pub service: Option<MetadataServer>,
    /// Azure's WireServer.
    pub wireserver: Option<MetadataServer>,
    /// The ISO 9660 image the cloud attaches as a CD-ROM, if any.
    pub media: Option<PathBuf>,
}

impl Cloud {
    pub const ALL: [Cloud; 6] = [
        Cloud::Ec2,
        Cloud::Aliyun,
        Cloud::Azure,
        Cloud::Gce,
        Cloud::Openstack,
        Cloud::Tencent,
    ];

    /// The platform's name in `cairn.platform=` and `status`.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Ec2 => "ec2",
            Cloud::Aliyun => "aliyun",
            Cloud::Azure => "azure",
            Cloud::Gce => "gce",
            Cloud::Openstack => "openstack",
            Cloud::Tencent => "tencent",
        }
    }

    /// `-smbios` entries with the DMI strings the cloud's firmware shows.
    pub fn smbios(self) -> Vec<String> {
        let entries: &[&str] = match self {
            Cloud::Ec2 => &["type=1,manufacturer=Amazon EC2,product=m6i.large"],
            Cloud::Aliyun => &["type=1,manufacturer=Alibaba Cloud,product=Alibaba Cloud ECS"],
            Cloud::Azure => &[
                "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
                "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77",
            ],
            Cloud::Gce => {
                &["type=1,manufacturer=Google,product=Google Compute Engine,serial=GoogleCloud-4520031799277581759"]
            }
            Cloud::Openstack => &["type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova"],
            Cloud::Tencent => &["type=1,manufacturer=Tencent Cloud,product=CVM"],
        };
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    /// The user network's range: it must hold every address the cloud's
    /// services answer on (Azure's two lie in 168.0.0.0/7).
    pub fn net(self) -> &'static str {
        match self {
            Cloud::Ec2 | Cloud::Gce => "169.254.169.0/24",
            Cloud::Aliyun => "100.100.100.0/24",
            Cloud::Azure => "168.0.0.0/7",
            Cloud::Openstack => "10.0.2.0/24",
            Cloud::Tencent => "169.254.0.0/24",
        }
    }

    /// The disk format a VM of this cloud boots from: the first its image
    /// import takes (`import`: the manifest's `[clouds.<name>] formats`),
    /// GCE's tarball being the raw disk it holds.
    pub fn boot_format(import: &[DiskFormat]) -> DiskFormat {
        match import.first() {
            Some(DiskFormat::Gce) | None => DiskFormat::Raw,
            Some(f) => *f,
        }
    }

    /// A disk of the image `raw` in [`Cloud::boot_format`], written by the
    /// builder's own code into `dir` (the raw image itself where that is
    /// raw); a VM's overlay reads it through QEMU's driver for it.
    pub fn disk_of(import: &[DiskFormat], raw: &Path, dir: &Path) -> Result<PathBuf> {
        let format = Cloud::boot_format(import);
        if format == DiskFormat::Raw {
            return Ok(raw.to_owned());
        }
        let stem = raw.file_stem().and_then(|s| s.to_str()).unwrap_or("cairn");
        let out = dir.join(format.file_name(stem));
        disk_formats::write_format(raw, format, &out)?;
        Ok(out)
    }

    /// The bus its VMs' boot disks are on (EBS on Nitro is NVMe; Azure's
    /// and GCE's disks are SCSI).
    pub fn disk_bus(self) -> DiskInterface {
        match self {
            Cloud::Ec2 => DiskInterface::Nvme,
            Cloud::Azure | Cloud::Gce => DiskInterface::VirtioScsi,
            Cloud::Aliyun | Cloud::Openstack | Cloud::Tencent => DiskInterface::VirtioBlk,
        }
    }

    /// Start the cloud's stand-ins for `instance`, media written in `scratch`.
    pub fn start(self, instance: &Instance, scratch: &Path) -> Result<StandIn> {
        let mut stand_in = StandIn {
            cloud: self,
            service: None,
            wireserver: None,
            media: None,
        };
        match self {
            Cloud::Ec2 => {
                stand_in.service = Some(MetadataServer::start(token_service(
                    "x-aws-ec2-metadata-token-ttl-seconds",
                    "x-aws-ec2-metadata-token",
                    ec2_layout(
                        instance,
                        "local-hostname",
                        "placement/availability-zone",
                        "0=cairn-test",
                    ),
                ))?)
            }
            Cloud::Aliyun => {
                stand_in.service = Some(MetadataServer::start(token_service(
                    "x-aliyun-ecs-metadata-token-ttl-seconds",
                    "x-aliyun-ecs-metadata-token",
                    ec2_layout(instance, "hostname", "zone-id", "0/"),
                ))?)
            }
            Cloud::Tencent => {
                let answers = ec2_layout(instance, "hostname", "placement/zone", "0/");
                stand_in.service = Some(MetadataServer::start(move |r: &Asked| answer(&answers, r, &r.path))?)
            }
            Cloud::Gce => {
                let answers = gce_layout(instance);
                stand_in.service = Some(MetadataServer::start(move |r: &Asked| {
                    if r.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
                        return (403, Vec::new());
                    }
                    let path = format!("/{}", path_of(r).strip_prefix("/computeMetadata/v1/").unwrap_or(""));
                    answer(&answers, r, &path)
                })?)
            }
            Cloud::Azure => {
                let document = azure_instance(instance);
                stand_in.service = Some(MetadataServer::start(move |r: &Asked| {
                    if r.headers.get("metadata").map(String::as_str) != Some("true") {
                        return (400, b"Bad request. Required metadata header not specified".to_vec());
                    }
                    let versioned = r.path.contains("api-version=2021-02-01");
                    match path_of(r) {
                        "/metadata/instance" if versioned => (200, document.clone().into_bytes()),
                        // No user data in IMDS: the custom data is on the CD-ROM.
                        "/metadata/instance/compute/userData" if versioned => (200, Vec::new()),
                        _ => (404, Vec::new()),
                    }
                })?);
                stand_in.wireserver = Some(MetadataServer::start(wireserver)?);
                let media = scratch.join("azure-media");
                std::fs::create_dir_all(&media)?;
                std::fs::write(media.join("ovf-env.xml"), ovf_env(instance))?;
                let iso = scratch.join("azure-media.iso");
                iso9660(&iso, "rd_rdfe_stable", &media)?;
                stand_in.media = Some(iso);
            }
            Cloud::Openstack => {
                let drive = scratch.join("config-drive");
                let latest = drive.join("openstack/latest");
                std::fs::create_dir_all(&latest)?;
                std::fs::write(latest.join("meta_data.json"), openstack_meta_data(instance))?;
                if let Some(u) = &instance.user_data {
                    std::fs::write(latest.join("user_data"), u)?;
                }
                let iso = scratch.join("config-2.iso");
                iso9660(&iso, "config-2", &drive)?;
                stand_in.media = Some(iso);
            }
        }
        Ok(stand_in)
    }
}

/// Where a machine's cloud shows: the parts of a QEMU machine a cloud
/// decides (`VmOptions` and `QemuConfig` both have them).
struct Placement<'m> {
    pub smbios: &'m mut Vec<String>,
    pub net: &'m mut Option<String>,
    pub forwards: &'m mut Vec<String>,
    pub cdroms: &'m mut Vec<PathBuf>,
}

impl StandIn {
    /// What [`StandIn::place_vm`] and [`StandIn::place_machine`] do.
    fn place(&self, m: Placement<'_>, relay: &Path) {
        *m.smbios = self.cloud.smbios();
        *m.net = Some(self.cloud.net().to_owned());
        m.forwards.retain(|f| !f.starts_with("guestfwd"));
        let mut forward = |addr: &str, server: &Option<MetadataServer>| {
            if let Some(s) = server {
                m.forwards
                    .push(format!("guestfwd=tcp:{addr}-cmd:{} {}", relay.display(), s.port));
            }
        };
        let address = match self.cloud {
            Cloud::Aliyun => "100.100.100.200:80",
            Cloud::Tencent => "169.254.0.23:80",
            _ => "169.254.169.254:80",
        };
        forward(address, &self.service);
        forward("168.63.129.16:80", &self.wireserver);
        m.cdroms.clear();
        m.cdroms.extend(self.media.clone());
    }

    /// Make a VM about to start this cloud's: its DMI strings, network
    /// range, forwards of its addresses to the stand-ins (through `relay`,
    /// the `cairn-test-relay` binary) and its media, in place of another
    /// cloud's (`hostfwd` rules stay).
    pub fn place_vm(&self, opts: &mut crate::vm::VmOptions, relay: &Path) {
        self.place(
            Placement {
                smbios: &mut opts.smbios,
                net: &mut opts.net,
                forwards: &mut opts.forwards,
                cdroms: &mut opts.cdroms,
            },
            relay,
        );
    }

    /// The same for a machine switched off, to power on again
    /// (`Vm::power_cycle_with`).
    pub fn place_machine(&self, machine: &mut crate::qemu::QemuConfig, relay: &Path) {
        self.place(
            Placement {
                smbios: &mut machine.smbios,
                net: &mut machine.net,
                forwards: &mut machine.forwards,
                cdroms: &mut machine.cdroms,
            },
            relay,
        );
    }
}

/// A request's path without its query.
fn path_of(r: &Asked) -> &str {
    r.path.split('?').next().unwrap_or(&r.path)
}

/// The answer to a GET of `path` from `answers`; 404 for anything else.
fn answer(answers: &[(String, String)], r: &Asked, path: &str) -> (u16, Vec<u8>) {
    match answers.iter().find(|(p, _)| p == path) {
        Some((_, body)) if r.method == "GET" => (200, body.clone().into_bytes()),
        _ => (404, Vec::new()),
    }
}

/// EC2's `/latest/` layout (Alibaba's and Tencent's follow it, with their
/// own names for the host name and zone, and their own key listings).
fn ec2_layout(i: &Instance, hostname: &str, zone: &str, key_listing: &str) -> Vec<(String, String)> {
    let mut a = vec![
        ("/latest/meta-data/instance-id".to_owned(), i.id.clone()),
        (format!("/latest/meta-data/{hostname}"), i.hostname.clone()),
        (format!("/latest/meta-data/{zone}"), i.zone.clone()),
    ];
    if let Some(k) = &i.ssh_key {
        a.push(("/latest/meta-data/public-keys/".into(), format!("{key_listing}\n")));
        a.push(("/latest/meta-data/public-keys/0/openssh-key".into(), format!("{k}\n")));
    }
    if let Some(u) = &i.user_data {
        a.push(("/latest/user-data".into(), u.clone()));
    }
    a
}

/// An EC2-style metadata service with session tokens, as EC2's IMDSv2
/// (and Alibaba's hardened mode, with its own header names) document it:
/// `PUT /latest/api/token` with a TTL header gives a token; every other
/// request without it is refused with 401.
fn token_service(
    ttl_header: &'static str,
    token_header: &'static str,
    answers: Vec<(String, String)>,
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
        answer(&answers, r, &r.path)
    }
}

/// GCE's `computeMetadata/v1/` answers: the instance's key, a project key,
/// and the instance blocking project keys.
fn gce_layout(i: &Instance) -> Vec<(String, String)> {
    let mut a = vec![
        ("/instance/id".to_owned(), i.id.clone()),
        ("/instance/hostname".to_owned(), i.hostname.clone()),
        (
            "/instance/zone".to_owned(),
            format!("projects/123456789/zones/{}", i.zone),
        ),
        (
            "/instance/machine-type".to_owned(),
            "projects/123456789/machineTypes/e2-medium".to_owned(),
        ),
        (
            "/instance/attributes/block-project-ssh-keys".to_owned(),
            "TRUE".to_owned(),
        ),
        (
            "/project/attributes/ssh-keys".to_owned(),
            format!("alice:{GCE_PROJECT_KEY}"),
        ),
    ];
    if let Some(k) = &i.ssh_key {
        a.push(("/instance/attributes/ssh-keys".into(), format!("cairn:{k}")));
    }
    if let Some(u) = &i.user_data {
        a.push(("/instance/attributes/user-data".into(), u.clone()));
    }
    a
}

/// IMDS's instance document.
fn azure_instance(i: &Instance) -> String {
    let keys: Vec<serde_json::Value> = i
        .ssh_key
        .iter()
        .map(|k| serde_json::json!({"keyData": k, "path": "/home/azureuser/.ssh/authorized_keys"}))
        .collect();
    serde_json::json!({
        "compute": {
            "vmId": i.id,
            "name": i.hostname,
            "osProfile": {"computerName": i.hostname},
            "location": "westeurope",
            "zone": i.zone,
            "vmSize": "Standard_D2s_v5",
            "publicKeys": keys
        },
        "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.1.0.4", "publicIpAddress": ""}]}}]}
    })
    .to_string()
}

/// The provisioning media's `ovf-env.xml`, the user data as its CustomData.
fn ovf_env(i: &Instance) -> String {
    let custom_data = base64::engine::general_purpose::STANDARD.encode(i.user_data.as_deref().unwrap_or(""));
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>{}</HostName>
      <UserName>azureuser</UserName>
      <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>
      <CustomData>{custom_data}</CustomData>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
</Environment>
"#,
        i.hostname
    )
}

/// Azure's WireServer as its protocol documents it: the versions it
/// speaks, a goal state (only for `x-ms-version: 2012-11-30`), and the
/// health report, accepted with 200.
fn wireserver(r: &Asked) -> (u16, Vec<u8>) {
    const VERSIONS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Versions><Preferred><Version>2015-04-05</Version></Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version></Supported></Versions>"#;
    let goal_state = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>{AZURE_INCARNATION}</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState></Machine>
  <Container>
    <ContainerId>{AZURE_CONTAINER_ID}</ContainerId>
    <RoleInstanceList>
      <RoleInstance><InstanceId>{AZURE_ROLE_INSTANCE}</InstanceId><State>Started</State></RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>"#
    );
    let versioned = r.headers.get("x-ms-version").map(String::as_str) == Some("2012-11-30");
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/?comp=versions") => (200, VERSIONS.into()),
        ("GET", "/machine/?comp=goalstate") if versioned => (200, goal_state.into_bytes()),
        ("POST", "/machine/?comp=health") if versioned => (200, Vec::new()),
        _ => (400, Vec::new()),
    }
}

/// The config drive's `openstack/latest/meta_data.json`, as Nova writes it.
fn openstack_meta_data(i: &Instance) -> String {
    let name = i.hostname.split('.').next().unwrap_or(&i.hostname);
    let mut m = serde_json::json!({
        "uuid": i.id,
        "name": name,
        "hostname": i.hostname,
        "availability_zone": i.zone,
        "launch_index": 0,
        "meta": {}
    });
    if let Some(k) = &i.ssh_key {
        m["public_keys"] = serde_json::json!({"cairn-test": k});
        m["keys"] = serde_json::json!([{"name": "cairn-test", "type": "ssh", "data": k}]);
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_s_vms_boot_the_first_format_its_import_takes() {
        use DiskFormat::*;
        assert_eq!(Cloud::boot_format(&[Vmdk, Raw]), Vmdk);
        assert_eq!(Cloud::boot_format(&[Gce]), Raw);
        assert_eq!(Cloud::boot_format(&[]), Raw);
    }

    #[test]
    fn each_cloud_s_addresses_lie_in_its_network() {
        let inside = |net: &str, addr: &str| {
            let (base, bits) = net.split_once('/').unwrap();
            let ip = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
            let mask = u32::MAX << (32 - bits.parse::<u32>().unwrap());
            ip(base) & mask == ip(addr) & mask
        };
        for cloud in Cloud::ALL {
            let stand_in = StandIn {
                cloud,
                service: None,
                wireserver: None,
                media: None,
            };
            let (mut smbios, mut net, mut forwards, mut cdroms) =
                (vec![], None, vec!["hostfwd=tcp:127.0.0.1:2222-:22".to_owned()], vec![]);
            stand_in.place(
                Placement {
                    smbios: &mut smbios,
                    net: &mut net,
                    forwards: &mut forwards,
                    cdroms: &mut cdroms,
                },
                Path::new("/relay"),
            );
            assert_eq!(forwards, ["hostfwd=tcp:127.0.0.1:2222-:22"], "{cloud:?}");
            assert!(!smbios.is_empty());
            let net = net.unwrap();
            for addr in match cloud {
                Cloud::Aliyun => vec!["100.100.100.200"],
                Cloud::Tencent => vec!["169.254.0.23"],
                Cloud::Azure => vec!["169.254.169.254", "168.63.129.16"],
                // Its stand-in is the config drive alone.
                Cloud::Openstack => vec![],
                Cloud::Ec2 | Cloud::Gce => vec!["169.254.169.254"],
            } {
                assert!(inside(&net, addr), "{cloud:?}: {addr} is not in {net}");
            }
        }
    }
}
