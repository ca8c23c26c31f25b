//! Microsoft Azure: the instance metadata service (IMDS, `Metadata: true`)
//! for the instance, its keys and user data, and the WireServer's ready
//! report, without which Azure marks a new VM as failed to provision:
//! `GET /?comp=versions`, the goal state, then `POST
//! /machine/?comp=health` with `Ready` (or `NotReady`, `ProvisioningFailed`
//! and why) for the goal state's incarnation, container and role instance,
//! once provisioning has run. Custom data may also come in the
//! provisioning media's `ovf-env.xml` ([`custom_data_of_ovf_env`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::{get_optional, get_text, send, Budget, Error, Http, Metadata, Request};
use crate::platform::Platform;

const IMDS: &str = "http://169.254.169.254/metadata";
const IMDS_VERSION: &str = "2021-02-01";
/// The WireServer's fixed address on every Azure VM.
pub const WIRESERVER: &str = "http://168.63.129.16";
/// The WireServer protocol version Cairn speaks (the one every agent does).
const WIRE_VERSION: &str = "2012-11-30";

#[derive(Debug, Deserialize)]
struct Instance {
    compute: Compute,
    #[serde(default)]
    network: Option<Network>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Compute {
    vm_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    os_profile: Option<OsProfile>,
    #[serde(default)]
    location: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    vm_size: String,
    #[serde(default)]
    public_keys: Vec<PublicKey>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OsProfile {
    #[serde(default)]
    computer_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKey {
    key_data: String,
}

#[derive(Debug, Deserialize)]
struct Network {
    #[serde(default)]
    interface: Vec<Interface>,
}

#[derive(Debug, Deserialize)]
struct Interface {
    ipv4: Option<Ipv4>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipv4 {
    #[serde(default)]
    ip_address: Vec<Address>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Address {
    #[serde(default)]
    private_ip_address: String,
    #[serde(default)]
    public_ip_address: String,
}

fn imds(path: &str, query: &str) -> Request {
    Request::get(format!("{IMDS}/{path}?api-version={IMDS_VERSION}{query}")).header("Metadata", "true")
}

/// The instance's metadata from IMDS.
pub fn read(http: &dyn Http, budget: &Budget) -> Result<Metadata, Error> {
    let req = imds("instance", "");
    let text = get_text(http, &req, budget)?;
    let i: Instance = serde_json::from_str(&text).map_err(|e| Error::Bad {
        url: req.url.clone(),
        why: format!("not IMDS's instance document: {e}"),
    })?;
    let c = i.compute;
    let mut attributes = BTreeMap::new();
    for (k, v) in [
        ("region", &c.location),
        ("zone", &c.zone),
        ("instance_type", &c.vm_size),
    ] {
        if !v.is_empty() {
            attributes.insert(k.to_owned(), v.clone());
        }
    }
    if let Some(a) = i
        .network
        .and_then(|n| n.interface.into_iter().next())
        .and_then(|i| i.ipv4)
        .and_then(|v| v.ip_address.into_iter().next())
    {
        for (k, v) in [
            ("local_ipv4", a.private_ip_address),
            ("public_ipv4", a.public_ip_address),
        ] {
            if !v.is_empty() {
                attributes.insert(k.to_owned(), v);
            }
        }
    }
    let hostname = c
        .os_profile
        .map(|o| o.computer_name)
        .filter(|n| !n.is_empty())
        .or_else(|| (!c.name.is_empty()).then(|| c.name.clone()));
    // User data is base64 (empty when none was given).
    let req = imds("instance/compute/userData", "&format=text");
    let user_data = match get_optional(http, &req, budget)? {
        Some(b) if !b.is_empty() => Some(
            base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&b).trim())
                .map_err(|e| Error::Bad {
                    url: req.url.clone(),
                    why: format!("user data is not base64: {e}"),
                })?,
        ),
        _ => None,
    };
    Ok(Metadata {
        platform: Some(Platform::Azure),
        origin: format!("the instance metadata service {IMDS}"),
        instance_id: c.vm_id,
        hostname,
        ssh_keys: c
            .public_keys
            .into_iter()
            .map(|k| k.key_data.trim().to_owned())
            .collect(),
        user_data,
        attributes,
        warnings: Vec::new(),
    })
}

/// The texts of every element named `name` (any namespace prefix), in
/// document order.
fn element_texts(xml: &str, name: &str) -> Result<Vec<String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut inside = false;
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| format!("not XML: {e}"))? {
            Event::Start(e) if e.local_name().as_ref() == name.as_bytes() => {
                inside = true;
                text.clear();
            }
            Event::Text(t) if inside => {
                text.push_str(&t.unescape().map_err(|e| format!("not XML: {e}"))?);
            }
            Event::CData(t) if inside => text.push_str(&String::from_utf8_lossy(&t)),
            Event::End(e) if inside && e.local_name().as_ref() == name.as_bytes() => {
                inside = false;
                out.push(text.trim().to_owned());
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

fn first(xml: &str, name: &str, url: &str) -> Result<String, Error> {
    element_texts(xml, name)
        .map_err(|why| Error::Bad {
            url: url.to_owned(),
            why,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Bad {
            url: url.to_owned(),
            why: format!("no <{name}>"),
        })
}

/// What the goal state names, for the ready report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
}

/// What the health report tells the WireServer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Provisioned: Azure marks the VM's provisioning succeeded.
    Ready,
    /// Provisioning failed, and why: Azure marks it failed at once (with
    /// the reason in the VM's status) rather than when its wait runs out.
    ProvisioningFailed(String),
}

/// The health report for the goal state `g`: `Ready`, or `NotReady` with
/// the `ProvisioningFailed` substatus and its description (as Azure's
/// Linux agent and cloud-init report a failed provisioning).
pub fn health_report(g: &GoalState, health: &Health) -> String {
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let state = match health {
        Health::Ready => "<State>Ready</State>".to_owned(),
        // At most 512 characters of why, as cloud-init sends.
        Health::ProvisioningFailed(why) => format!(
            "<State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>{}</Description></Details>",
            esc(&why.chars().take(512).collect::<String>())
        ),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\
         <GoalStateIncarnation>{}</GoalStateIncarnation>\
         <Container><ContainerId>{}</ContainerId>\
         <RoleInstanceList><Role><InstanceId>{}</InstanceId>\
         <Health>{state}</Health></Role></RoleInstanceList></Container></Health>",
        esc(&g.incarnation),
        esc(&g.container_id),
        esc(&g.instance_id)
    )
}

/// Tell the WireServer how provisioning went; returns the goal state
/// reported on.
pub fn report_health(http: &dyn Http, budget: &Budget, health: &Health) -> Result<GoalState, Error> {
    let versions = Request::get(format!("{WIRESERVER}/?comp=versions"));
    let text = get_text(http, &versions, budget)?;
    let known = element_texts(&text, "Version").map_err(|why| Error::Bad {
        url: versions.url.clone(),
        why,
    })?;
    if !known.iter().any(|v| v == WIRE_VERSION) {
        return Err(Error::Bad {
            url: versions.url,
            why: format!(
                "the WireServer does not speak {WIRE_VERSION} (it lists {})",
                known.join(", ")
            ),
        });
    }
    let req = Request::get(format!("{WIRESERVER}/machine/?comp=goalstate")).header("x-ms-version", WIRE_VERSION);
    let xml = get_text(http, &req, budget)?;
    let goal = GoalState {
        incarnation: first(&xml, "Incarnation", &req.url)?,
        container_id: first(&xml, "ContainerId", &req.url)?,
        instance_id: first(&xml, "InstanceId", &req.url)?,
    };
    let post = Request::post(
        format!("{WIRESERVER}/machine/?comp=health"),
        health_report(&goal, health),
    )
    .header("x-ms-version", WIRE_VERSION)
    .header("x-ms-agent-name", "cairn")
    .header("Content-Type", "text/xml;charset=utf-8");
    let r = send(http, &post, budget)?;
    if !(200..300).contains(&r.status) {
        return Err(Error::Bad {
            url: post.url,
            why: format!("HTTP {} to the ready report", r.status),
        });
    }
    Ok(goal)
}

/// The custom data in the provisioning media's `ovf-env.xml` (base64 in
/// `<CustomData>`), if any.
pub fn custom_data_of_ovf_env(xml: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(text) = element_texts(xml, "CustomData")?.into_iter().next() else {
        return Ok(None);
    };
    if text.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.split_whitespace().collect::<String>())
        .map(Some)
        .map_err(|e| format!("ovf-env.xml: CustomData is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::fake::Service as Fake;
    use super::super::BUDGET;
    use super::*;

    /// IMDS's instance document, abridged from Azure's documentation.
    const INSTANCE: &str = r#"{"compute": {"azEnvironment": "AzurePublicCloud", "location": "westeurope", "name": "vm-1",
        "osProfile": {"adminUsername": "azureuser", "computerName": "cairn-az-1", "disablePasswordAuthentication": "true"},
        "publicKeys": [{"keyData": "ssh-rsa AAAAB3Nza azure\r\n", "path": "/home/azureuser/.ssh/authorized_keys"}],
        "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6", "vmSize": "Standard_D2s_v5", "zone": "1"},
        "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}]}}]}}"#;

    const GOAL_STATE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>1</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState></Machine>
  <Container>
    <ContainerId>56b6bb28-9a5a-4f56-8a19-b0e8ab8c49cf</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>e4b29cf4-5c5b-4c2e-a7a4-2e0f3b6e5a43.vm-1</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>"#;

    fn azure() -> Fake {
        Fake::default()
            .answer("GET", &format!("{IMDS}/instance?api-version=2021-02-01"), 200, INSTANCE)
            .answer(
                "GET",
                &format!("{IMDS}/instance/compute/userData?api-version=2021-02-01&format=text"),
                200,
                "I2Nsb3VkLWNvbmZpZwo=",
            )
            .answer(
                "GET",
                &format!("{WIRESERVER}/?comp=versions"),
                200,
                "<Versions><Preferred><Version>2015-04-05</Version></Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version></Supported></Versions>",
            )
            .answer("GET", &format!("{WIRESERVER}/machine/?comp=goalstate"), 200, GOAL_STATE)
            .answer("POST", &format!("{WIRESERVER}/machine/?comp=health"), 200, "")
            .require(IMDS, "Metadata", "true")
            .require(&format!("{WIRESERVER}/machine"), "x-ms-version", "2012-11-30")
    }

    #[test]
    fn imds_gives_the_instance_its_keys_and_user_data() {
        let svc = azure();
        let m = read(&svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.instance_id, "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
        assert_eq!(m.hostname.as_deref(), Some("cairn-az-1"));
        assert_eq!(m.ssh_keys, ["ssh-rsa AAAAB3Nza azure"]);
        assert_eq!(m.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(m.attributes["region"], "westeurope");
        assert_eq!(m.attributes["local_ipv4"], "10.0.0.4");
        assert!(!m.attributes.contains_key("public_ipv4"));
    }

    #[test]
    fn the_ready_report_names_the_goal_state_s_incarnation_container_and_instance() {
        let svc = azure();
        let g = report_health(&svc, &Budget::starting_now(&svc, BUDGET), &Health::Ready).unwrap();
        assert_eq!(g.incarnation, "1");
        assert_eq!(g.container_id, "56b6bb28-9a5a-4f56-8a19-b0e8ab8c49cf");
        assert_eq!(g.instance_id, "e4b29cf4-5c5b-4c2e-a7a4-2e0f3b6e5a43.vm-1");
        assert_eq!(
            svc.requests(),
            [
                "GET http://168.63.129.16/?comp=versions",
                "GET http://168.63.129.16/machine/?comp=goalstate",
                "POST http://168.63.129.16/machine/?comp=health"
            ]
        );
        let report = health_report(&g, &Health::Ready);
        assert_eq!(element_texts(&report, "State").unwrap(), ["Ready"]);
        assert_eq!(element_texts(&report, "GoalStateIncarnation").unwrap(), ["1"]);
        assert_eq!(element_texts(&report, "InstanceId").unwrap(), [g.instance_id.as_str()]);
        assert!(element_texts(&report, "SubStatus").unwrap().is_empty());
    }

    #[test]
    fn a_failed_provisioning_is_reported_not_ready_with_its_reason_escaped() {
        let g = GoalState {
            incarnation: "3".into(),
            container_id: "c".into(),
            instance_id: "i".into(),
        };
        let report = health_report(
            &g,
            &Health::ProvisioningFailed("user data: line 2: expected <key>: & found".into()),
        );
        assert_eq!(element_texts(&report, "State").unwrap(), ["NotReady"]);
        assert_eq!(element_texts(&report, "SubStatus").unwrap(), ["ProvisioningFailed"]);
        assert_eq!(
            element_texts(&report, "Description").unwrap(),
            ["user data: line 2: expected <key>: & found"]
        );
        let long = health_report(&g, &Health::ProvisioningFailed("é".repeat(600)));
        assert_eq!(element_texts(&long, "Description").unwrap()[0].chars().count(), 512);
    }

    #[test]
    fn a_wireserver_without_the_protocol_version_is_refused_by_name() {
        let svc = Fake::default().answer(
            "GET",
            &format!("{WIRESERVER}/?comp=versions"),
            200,
            "<Versions><Supported><Version>2099-01-01</Version></Supported></Versions>",
        );
        let e = report_health(&svc, &Budget::starting_now(&svc, BUDGET), &Health::Ready).unwrap_err();
        assert_eq!(
            e.to_string(),
            "http://168.63.129.16/?comp=versions: the WireServer does not speak 2012-11-30 (it lists 2099-01-01)"
        );
    }

    #[test]
    fn custom_data_comes_out_of_ovf_env() {
        let ovf = r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
 <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
  <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
   <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
   <HostName>cairn-az-1</HostName><UserName>azureuser</UserName>
   <CustomData>I2Nsb3VkLWNvbmZpZwpob3N0
   bmFtZTogeAo=</CustomData>
  </LinuxProvisioningConfigurationSet></wa:ProvisioningSection></Environment>"#;
        assert_eq!(
            custom_data_of_ovf_env(ovf).unwrap().as_deref(),
            Some(&b"#cloud-config\nhostname: x\n"[..])
        );
        assert_eq!(custom_data_of_ovf_env("<Environment/>").unwrap(), None);
        assert!(custom_data_of_ovf_env("<Environment><CustomData>!!</CustomData></Environment>").is_err());
    }
}
