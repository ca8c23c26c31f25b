//! cloud-init's network configuration, version 2 (netplan's format; the
//! NoCloud seed's `network-config`), rendered as systemd-networkd files.
//!
//! Ethernet devices are rendered (match by name, MAC address or driver;
//! DHCP, static addresses, gateways, routes, name servers, MTU); other
//! device kinds are warnings naming them. The files sort before the image's
//! own DHCP default (`80-cairn-dhcp.network`), so they win for the devices
//! they match.

use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

use super::plan::NetworkFile;
use super::yaml::{boolean, string, strings};

/// The rendered files and the warnings, or an error naming the key.
pub fn render(text: &str) -> Result<(Vec<NetworkFile>, Vec<String>), String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("network-config is not valid YAML: {e}"))?;
    let Value::Mapping(top) = doc else {
        return Err("network-config must be a mapping".into());
    };
    let net = match top.get(Value::String("network".into())) {
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err("network-config: `network` must be a mapping".into()),
        None => top,
    };
    match net.get(Value::String("version".into())).and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => return Err("network-config version 1 is not supported; write version 2".into()),
        _ => return Err("network-config: `version: 2` is missing".into()),
    }
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for (k, v) in &net {
        match k.as_str().unwrap_or_default() {
            "version" | "renderer" => {}
            "ethernets" => {
                let Value::Mapping(devices) = v else {
                    return Err("network-config ethernets: expected a mapping of devices".into());
                };
                for (id, dev) in devices {
                    let id = id
                        .as_str()
                        .ok_or("network-config ethernets: a device id is not a string")?;
                    let Value::Mapping(dev) = dev else {
                        return Err(format!("network-config ethernets.{id}: expected a mapping"));
                    };
                    files.push(ethernet(id, dev, &mut warnings)?);
                }
            }
            other => warnings.push(format!(
                "network-config `{other}` is not supported by Cairn and was ignored"
            )),
        }
    }
    Ok((files, warnings))
}

/// An optional list of strings (absent: none).
fn list(v: Option<&Value>, at: &str) -> Result<Vec<String>, String> {
    v.map_or(Ok(Vec::new()), |v| strings(v, at))
}

/// An optional boolean (absent or empty: false).
fn flag(v: Option<&Value>, at: &str) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(v) => boolean(v, at),
    }
}

fn get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(Value::String(k.into()))
}

fn ethernet(id: &str, dev: &Mapping, warnings: &mut Vec<String>) -> Result<NetworkFile, String> {
    let at = format!("network-config ethernets.{id}");
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(format!("{at}: {id:?} is not a usable device id"));
    }
    let mut out = String::from("# Written by cairn-agent provision from the NoCloud network-config.\n[Match]\n");
    match get(dev, "match") {
        Some(Value::Mapping(m)) => {
            for (key, networkd) in [("name", "Name"), ("macaddress", "MACAddress"), ("driver", "Driver")] {
                if let Some(v) = get(m, key) {
                    let _ = writeln!(out, "{networkd}={}", string(v, &format!("{at}.match.{key}"))?);
                }
            }
        }
        Some(_) => return Err(format!("{at}.match: expected a mapping")),
        None => {
            let _ = writeln!(out, "Name={id}");
        }
    }
    if get(dev, "set-name").is_some() {
        warnings.push(format!(
            "{at}.set-name: renaming devices is not supported and was ignored"
        ));
    }
    if let Some(mtu) = get(dev, "mtu") {
        let _ = writeln!(out, "\n[Link]\nMTUBytes={}", string(mtu, &format!("{at}.mtu"))?);
    }
    out.push_str("\n[Network]\n");
    let dhcp4 = flag(get(dev, "dhcp4"), &format!("{at}.dhcp4"))?;
    let dhcp6 = flag(get(dev, "dhcp6"), &format!("{at}.dhcp6"))?;
    let dhcp = match (dhcp4, dhcp6) {
        (true, true) => "yes",
        (true, false) => "ipv4",
        (false, true) => "ipv6",
        (false, false) => "no",
    };
    let _ = writeln!(out, "DHCP={dhcp}");
    for a in list(get(dev, "addresses"), &format!("{at}.addresses"))? {
        if !a.contains('/') {
            return Err(format!(
                "{at}.addresses: {a:?} has no prefix length (e.g. 192.0.2.10/24)"
            ));
        }
        let _ = writeln!(out, "Address={a}");
    }
    for g in ["gateway4", "gateway6"] {
        if let Some(v) = get(dev, g) {
            let _ = writeln!(out, "Gateway={}", string(v, &format!("{at}.{g}"))?);
        }
    }
    if let Some(Value::Mapping(ns)) = get(dev, "nameservers") {
        for a in list(get(ns, "addresses"), &format!("{at}.nameservers.addresses"))? {
            let _ = writeln!(out, "DNS={a}");
        }
        let search = list(get(ns, "search"), &format!("{at}.nameservers.search"))?;
        if !search.is_empty() {
            let _ = writeln!(out, "Domains={}", search.join(" "));
        }
    }
    if let Some(routes) = get(dev, "routes") {
        let Value::Sequence(routes) = routes else {
            return Err(format!("{at}.routes: expected a list"));
        };
        for (i, r) in routes.iter().enumerate() {
            let ra = format!("{at}.routes[{i}]");
            let Value::Mapping(r) = r else {
                return Err(format!("{ra}: expected a mapping"));
            };
            let via = string(get(r, "via").ok_or_else(|| format!("{ra}: no via"))?, &ra)?;
            let to = match get(r, "to").map(|t| string(t, &ra)).transpose()?.as_deref() {
                None | Some("default") if via.contains(':') => "::/0".to_owned(),
                None | Some("default") => "0.0.0.0/0".to_owned(),
                Some(t) => t.to_owned(),
            };
            let _ = write!(out, "\n[Route]\nDestination={to}\nGateway={via}\n");
            if let Some(m) = get(r, "metric") {
                let _ = writeln!(out, "Metric={}", string(m, &ra)?);
            }
        }
    }
    Ok(NetworkFile {
        name: format!("10-cairn-provisioned-{id}.network"),
        contents: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_address_renders_for_networkd() {
        let (files, warnings) = render(
            r#"
network:
  version: 2
  ethernets:
    lan:
      match:
        macaddress: "52:54:00:12:34:56"
      addresses: [10.0.2.20/24, "2001:db8::20/64"]
      gateway4: 10.0.2.2
      nameservers:
        addresses: [10.0.2.3]
        search: [example.com]
      routes:
        - to: 192.168.0.0/16
          via: 10.0.2.1
          metric: 100
"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(files[0].name, "10-cairn-provisioned-lan.network");
        let c = &files[0].contents;
        for line in [
            "MACAddress=52:54:00:12:34:56",
            "DHCP=no",
            "Address=10.0.2.20/24",
            "Address=2001:db8::20/64",
            "Gateway=10.0.2.2",
            "DNS=10.0.2.3",
            "Domains=example.com",
            "Destination=192.168.0.0/16",
            "Metric=100",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from:\n{c}");
        }
    }

    #[test]
    fn the_top_level_form_and_dhcp_render() {
        let (files, warnings) = render("version: 2\nethernets:\n  eth0:\n    dhcp4: true\nbonds: {}\n").unwrap();
        assert!(files[0].contents.contains("Name=eth0\n") && files[0].contents.contains("DHCP=ipv4\n"));
        assert!(warnings[0].contains("`bonds`"), "{warnings:?}");
    }

    #[test]
    fn wrong_versions_and_values_are_errors() {
        assert!(render("version: 1\nconfig: []\n").unwrap_err().contains("version 1"));
        assert!(render("network: {ethernets: {}}\n").unwrap_err().contains("version: 2"));
        let e = render("version: 2\nethernets:\n  e:\n    addresses: [10.0.0.1]\n").unwrap_err();
        assert!(
            e.contains("ethernets.e.addresses") && e.contains("prefix length"),
            "{e}"
        );
        assert!(render(": :\n -").unwrap_err().contains("not valid YAML"));
    }
}
