//! Google Compute Engine: `computeMetadata/v1` with `Metadata-Flavor:
//! Google` on every request. SSH keys come from the instance's `ssh-keys`
//! and, unless the instance sets `block-project-ssh-keys`, the project's;
//! each line is `user:key`, and every key goes to the image's default user
//! (as Afterburn gives them all to `core`).

use std::collections::BTreeMap;

use super::{get_optional, get_text, Budget, Error, Http, Metadata, Request};
use crate::platform::Platform;

/// `metadata.google.internal`, by its address (no DNS needed).
const BASE: &str = "http://169.254.169.254/computeMetadata/v1";

fn request(path: &str) -> Request {
    Request::get(format!("{BASE}/{path}")).header("Metadata-Flavor", "Google")
}

fn text(http: &dyn Http, path: &str, budget: &Budget) -> Result<Option<String>, Error> {
    Ok(get_optional(http, &request(path), budget)?
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|s| !s.is_empty()))
}

pub fn read(http: &dyn Http, budget: &Budget) -> Result<Metadata, Error> {
    let instance_id = get_text(http, &request("instance/id"), budget)?;
    let hostname = text(http, "instance/hostname", budget)?;
    let mut attributes = BTreeMap::new();
    if let Some(zone) = text(http, "instance/zone", budget)? {
        // projects/<number>/zones/us-central1-a
        let zone = zone.rsplit('/').next().unwrap_or(&zone).to_owned();
        if let Some((region, _)) = zone.rsplit_once('-') {
            attributes.insert("region".to_owned(), region.to_owned());
        }
        attributes.insert("zone".to_owned(), zone);
    }
    if let Some(t) = text(http, "instance/machine-type", budget)? {
        attributes.insert(
            "instance_type".to_owned(),
            t.rsplit('/').next().unwrap_or(&t).to_owned(),
        );
    }
    if let Some(ip) = text(http, "instance/network-interfaces/0/ip", budget)? {
        attributes.insert("local_ipv4".to_owned(), ip);
    }
    if let Some(ip) = text(
        http,
        "instance/network-interfaces/0/access-configs/0/external-ip",
        budget,
    )? {
        attributes.insert("public_ipv4".to_owned(), ip);
    }

    let mut lines = Vec::new();
    for key in ["instance/attributes/ssh-keys", "instance/attributes/sshKeys"] {
        lines.extend(text(http, key, budget)?);
    }
    let blocked = text(http, "instance/attributes/block-project-ssh-keys", budget)?
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !blocked {
        for key in ["project/attributes/ssh-keys", "project/attributes/sshKeys"] {
            lines.extend(text(http, key, budget)?);
        }
    }
    let ssh_keys = lines.iter().flat_map(|l| keys_of(l)).collect();
    let user_data = get_optional(http, &request("instance/attributes/user-data"), budget)?.filter(|b| !b.is_empty());
    Ok(Metadata {
        origin: format!("the metadata service {BASE}"),
        platform: Some(Platform::Gce),
        instance_id,
        hostname,
        ssh_keys,
        user_data,
        attributes,
        warnings: Vec::new(),
    })
}

/// The keys of an `ssh-keys` value: one `user:key` per line.
fn keys_of(value: &str) -> Vec<String> {
    value
        .lines()
        .map(str::trim)
        .filter_map(|l| l.split_once(':').map(|(_, k)| k.trim()))
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fake::Service as Fake;
    use super::super::BUDGET;
    use super::*;

    fn gce(block: bool) -> Fake {
        let b = BASE;
        let mut f = Fake::default()
            .answer("GET", &format!("{b}/instance/id"), 200, "4520031799277581759")
            .answer(
                "GET",
                &format!("{b}/instance/hostname"),
                200,
                "vm-1.us-central1-a.c.proj.internal",
            )
            .answer(
                "GET",
                &format!("{b}/instance/zone"),
                200,
                "projects/123456789/zones/us-central1-a",
            )
            .answer(
                "GET",
                &format!("{b}/instance/machine-type"),
                200,
                "projects/123456789/machineTypes/e2-medium",
            )
            .answer(
                "GET",
                &format!("{b}/instance/attributes/ssh-keys"),
                200,
                "alice:ssh-ed25519 AAAAinstance alice\n",
            )
            .answer(
                "GET",
                &format!("{b}/project/attributes/ssh-keys"),
                200,
                "bob:ssh-rsa AAAAproject bob\nbad-line\n",
            )
            .answer(
                "GET",
                &format!("{b}/instance/attributes/user-data"),
                200,
                "{\"ignition\":{\"version\":\"3.4.0\"}}",
            )
            .require(b, "Metadata-Flavor", "Google");
        if block {
            f = f.answer(
                "GET",
                &format!("{b}/instance/attributes/block-project-ssh-keys"),
                200,
                "TRUE",
            );
        }
        f
    }

    #[test]
    fn gce_gives_instance_and_project_keys_to_the_default_user() {
        let svc = gce(false);
        let m = read(&svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.instance_id, "4520031799277581759");
        assert_eq!(
            m.ssh_keys,
            ["ssh-ed25519 AAAAinstance alice", "ssh-rsa AAAAproject bob"]
        );
        assert_eq!(m.attributes["zone"], "us-central1-a");
        assert_eq!(m.attributes["region"], "us-central1");
        assert_eq!(m.attributes["instance_type"], "e2-medium");
        assert!(m.user_data.unwrap().starts_with(b"{\"ignition\""));
    }

    #[test]
    fn block_project_ssh_keys_keeps_only_the_instance_s() {
        let svc = gce(true);
        let m = read(&svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.ssh_keys, ["ssh-ed25519 AAAAinstance alice"]);
        assert!(!svc.requests().iter().any(|r| r.contains("project/attributes")));
    }
}
