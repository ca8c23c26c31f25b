//! OpenStack's metadata, from its config drive (a volume labelled
//! `config-2` holding `openstack/latest/meta_data.json` and `user_data`)
//! or its metadata service at 169.254.169.254 (the same two files under
//! `/openstack/latest/`). Huawei Cloud serves the same; Tencent Cloud's
//! config drive has this layout too.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{get_optional, get_text, Budget, Error, Http, Metadata, Request};
use crate::platform::Platform;

const BASE: &str = "http://169.254.169.254/openstack/latest";

/// The fields of `meta_data.json` Cairn reads.
#[derive(Debug, Deserialize)]
struct MetaData {
    uuid: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    availability_zone: Option<String>,
    /// `{"name": "ssh-ed25519 …"}`
    #[serde(default)]
    public_keys: BTreeMap<String, String>,
}

/// Metadata from the two files (`meta_data.json`, `user_data` if any),
/// wherever they were read.
pub fn parse(
    platform: Platform,
    meta_data: &[u8],
    user_data: Option<Vec<u8>>,
    origin: &str,
) -> Result<Metadata, Error> {
    let m: MetaData = serde_json::from_slice(meta_data).map_err(|e| Error::Bad {
        url: origin.to_owned(),
        why: format!("not OpenStack's meta_data.json: {e}"),
    })?;
    let mut attributes = BTreeMap::new();
    if let Some(z) = m.availability_zone.filter(|z| !z.is_empty()) {
        attributes.insert("zone".to_owned(), z);
    }
    if let Some(n) = &m.name {
        attributes.insert("instance_name".to_owned(), n.clone());
    }
    Ok(Metadata {
        origin: origin.to_owned(),
        platform: Some(platform),
        instance_id: m.uuid,
        hostname: m.hostname.or(m.name).filter(|h| !h.is_empty()),
        ssh_keys: m
            .public_keys
            .into_values()
            .flat_map(|k| k.lines().map(|l| l.trim().to_owned()).collect::<Vec<_>>())
            .filter(|k| !k.is_empty())
            .collect(),
        user_data: user_data.filter(|u| !u.is_empty()),
        attributes,
        warnings: Vec::new(),
    })
}

/// From the metadata service.
pub fn read(platform: Platform, http: &dyn Http, budget: &Budget) -> Result<Metadata, Error> {
    let meta_url = format!("{BASE}/meta_data.json");
    let meta = get_text(http, &Request::get(&meta_url), budget)?;
    let user_data = get_optional(http, &Request::get(format!("{BASE}/user_data")), budget)?;
    let mut m = parse(platform, meta.as_bytes(), user_data, &meta_url)?;
    m.origin = format!("the metadata service {BASE}");
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::super::fake::Service as Fake;
    use super::super::BUDGET;
    use super::*;

    /// `meta_data.json` as Nova writes it (fields Cairn ignores included).
    const META: &str = r#"{"uuid": "d8e02d56-2648-49a3-bf97-6be8f1204f38", "meta": {"role": "web"},
        "public_keys": {"mykey": "ssh-ed25519 AAAAC3Nza mykey\n"}, "keys": [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 AAAAC3Nza mykey\n"}],
        "hostname": "web-1.novalocal", "name": "web-1", "launch_index": 0, "availability_zone": "nova", "random_seed": "abc", "project_id": "p", "devices": []}"#;

    #[test]
    fn the_metadata_service_gives_nova_s_meta_data_and_user_data() {
        let svc = Fake::default()
            .answer("GET", &format!("{BASE}/meta_data.json"), 200, META)
            .answer("GET", &format!("{BASE}/user_data"), 200, "#cloud-config\n");
        let m = read(Platform::Huawei, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.platform, Some(Platform::Huawei));
        assert_eq!(m.instance_id, "d8e02d56-2648-49a3-bf97-6be8f1204f38");
        assert_eq!(m.hostname.as_deref(), Some("web-1.novalocal"));
        assert_eq!(m.ssh_keys, ["ssh-ed25519 AAAAC3Nza mykey"]);
        assert_eq!(m.attributes["zone"], "nova");
        assert_eq!(m.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
    }

    #[test]
    fn a_config_drive_without_user_data_and_a_broken_one() {
        let m = parse(Platform::Openstack, META.as_bytes(), None, "/dev/sr0").unwrap();
        assert_eq!(m.user_data, None);
        let e = parse(Platform::Openstack, b"{\"name\": 1}", None, "/dev/sr0").unwrap_err();
        assert!(
            e.to_string().starts_with("/dev/sr0: not OpenStack's meta_data.json"),
            "{e}"
        );
    }
}
