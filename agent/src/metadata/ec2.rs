//! The EC2-style metadata services: `latest/meta-data/…` and
//! `latest/user-data` under a fixed address — AWS EC2 (IMDSv2 session
//! token), Alibaba Cloud ECS (its hardened-mode token, the same protocol
//! under its own header names) and Tencent Cloud CVM (no token). One
//! sequence, each service's differences as data ([`Service`]).

use std::collections::BTreeMap;

use super::{get_optional, get_text, send, Budget, Error, Http, Metadata, Request};
use crate::platform::Platform;

/// A session token protocol: `PUT <base>/latest/api/token` with a TTL
/// header, then the token on every request.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    pub ttl_header: &'static str,
    pub header: &'static str,
}

/// What differs between the EC2-style services.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub platform: Platform,
    pub base: &'static str,
    pub token: Option<Token>,
    pub hostname: &'static str,
    /// (`CAIRN_*` attribute, path under `latest/meta-data/`); a 404 leaves
    /// the attribute out.
    pub attributes: &'static [(&'static str, &'static str)],
}

pub const EC2: Service = Service {
    platform: Platform::Ec2,
    base: "http://169.254.169.254",
    token: Some(Token {
        ttl_header: "X-aws-ec2-metadata-token-ttl-seconds",
        header: "X-aws-ec2-metadata-token",
    }),
    hostname: "local-hostname",
    attributes: &[
        ("region", "placement/region"),
        ("zone", "placement/availability-zone"),
        ("instance_type", "instance-type"),
        ("local_ipv4", "local-ipv4"),
        ("public_ipv4", "public-ipv4"),
    ],
};

pub const ALIYUN: Service = Service {
    platform: Platform::Aliyun,
    base: "http://100.100.100.200",
    token: Some(Token {
        ttl_header: "X-aliyun-ecs-metadata-token-ttl-seconds",
        header: "X-aliyun-ecs-metadata-token",
    }),
    hostname: "hostname",
    attributes: &[
        ("region", "region-id"),
        ("zone", "zone-id"),
        ("instance_type", "instance/instance-type"),
        ("local_ipv4", "private-ipv4"),
        ("public_ipv4", "eipv4"),
    ],
};

/// `metadata.tencentyun.com`.
pub const TENCENT: Service = Service {
    platform: Platform::Tencent,
    base: "http://169.254.0.23",
    token: None,
    hostname: "hostname",
    attributes: &[
        ("region", "placement/region"),
        ("zone", "placement/zone"),
        ("instance_type", "instance/instance-type"),
        ("local_ipv4", "local-ipv4"),
        ("public_ipv4", "public-ipv4"),
    ],
};

/// The token's lifetime asked for (6 hours, the longest EC2 grants).
const TOKEN_TTL: &str = "21600";

/// Statuses with which a service refuses the token call itself (it does
/// not speak the token protocol): only then are requests made without one.
fn refuses_tokens(status: u16) -> bool {
    (403..=405).contains(&status)
}

/// Read the instance's metadata from `svc`.
pub fn read(svc: &Service, http: &dyn Http, budget: &Budget) -> Result<Metadata, Error> {
    let token = match svc.token {
        Some(t) => {
            let req = Request::put(format!("{}/latest/api/token", svc.base)).header(t.ttl_header, TOKEN_TTL);
            let r = send(http, &req, budget)?;
            match r.status {
                200 => Some((t.header, r.text())),
                s if refuses_tokens(s) => {
                    tracing::warn!(
                        status = s,
                        "the metadata service refused a session token; reading without one"
                    );
                    None
                }
                s => {
                    return Err(Error::Bad {
                        url: req.url,
                        why: format!("HTTP {s} to the token request"),
                    })
                }
            }
        }
        None => None,
    };
    let request = |path: &str| {
        let r = Request::get(format!("{}/latest/{path}", svc.base));
        match &token {
            Some((h, t)) => r.header(h, t),
            None => r,
        }
    };
    let meta = |path: &str| request(&format!("meta-data/{path}"));

    let instance_id = get_text(http, &meta("instance-id"), budget)?;
    let hostname = get_optional(http, &meta(svc.hostname), budget)?
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|h| !h.is_empty());
    let mut attributes = BTreeMap::new();
    for (name, path) in svc.attributes {
        if let Some(v) = get_optional(http, &meta(path), budget)? {
            let v = String::from_utf8_lossy(&v).trim().to_owned();
            if !v.is_empty() {
                attributes.insert((*name).to_owned(), v);
            }
        }
    }
    let mut ssh_keys = Vec::new();
    if let Some(listing) = get_optional(http, &meta("public-keys/"), budget)? {
        for id in key_ids(&String::from_utf8_lossy(&listing)) {
            if let Some(key) = get_optional(http, &meta(&format!("public-keys/{id}/openssh-key")), budget)? {
                ssh_keys.extend(
                    String::from_utf8_lossy(&key)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
        }
    }
    let user_data = get_optional(http, &request("user-data"), budget)?.filter(|b| !b.is_empty());
    Ok(Metadata {
        origin: format!("the metadata service {}", svc.base),
        platform: Some(svc.platform),
        instance_id,
        hostname,
        ssh_keys,
        user_data,
        attributes,
        warnings: Vec::new(),
    })
}

/// The key ids of a `public-keys/` listing: EC2 says `0=name`, others
/// `0/` or `name/`.
fn key_ids(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('=').next().unwrap_or(l).trim_end_matches('/').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fake::Service as Fake;
    use super::super::BUDGET;
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGd7 ops@example";

    /// EC2's answers, as its documentation shows them.
    fn ec2(token_status: u16) -> Fake {
        let b = "http://169.254.169.254/latest";
        Fake::default()
            .answer("PUT", &format!("{b}/api/token"), token_status, "AQAEAFTk-token==")
            .answer("GET", &format!("{b}/meta-data/instance-id"), 200, "i-0123456789abcdef0")
            .answer(
                "GET",
                &format!("{b}/meta-data/local-hostname"),
                200,
                "ip-10-0-1-5.ec2.internal",
            )
            .answer("GET", &format!("{b}/meta-data/placement/region"), 200, "us-east-1")
            .answer(
                "GET",
                &format!("{b}/meta-data/placement/availability-zone"),
                200,
                "us-east-1a",
            )
            .answer("GET", &format!("{b}/meta-data/instance-type"), 200, "m6i.large")
            .answer("GET", &format!("{b}/meta-data/local-ipv4"), 200, "10.0.1.5")
            .answer("GET", &format!("{b}/meta-data/public-keys/"), 200, "0=my-key")
            .answer(
                "GET",
                &format!("{b}/meta-data/public-keys/0/openssh-key"),
                200,
                &format!("{KEY}\n"),
            )
            .answer("GET", &format!("{b}/user-data"), 200, "#cloud-config\nhostname: web\n")
    }

    #[test]
    fn ec2_takes_a_session_token_and_sends_it_with_every_request() {
        let svc = ec2(200).require(
            "http://169.254.169.254/latest/meta-data",
            "X-aws-ec2-metadata-token",
            "AQAEAFTk-token==",
        );
        let m = read(&EC2, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.instance_id, "i-0123456789abcdef0");
        assert_eq!(m.hostname.as_deref(), Some("ip-10-0-1-5.ec2.internal"));
        assert_eq!(m.ssh_keys, [KEY]);
        assert_eq!(m.user_data.as_deref(), Some(&b"#cloud-config\nhostname: web\n"[..]));
        assert_eq!(m.attributes["zone"], "us-east-1a");
        // No public address: left out, not an error.
        assert!(!m.attributes.contains_key("public_ipv4"));
        assert_eq!(svc.requests()[0], "PUT http://169.254.169.254/latest/api/token");
    }

    #[test]
    fn imdsv1_is_used_only_when_the_token_call_is_refused() {
        let svc = ec2(405);
        let m = read(&EC2, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.instance_id, "i-0123456789abcdef0");
        // A token call that fails otherwise is an error, not a downgrade.
        let svc = ec2(500);
        let budget = Budget::starting_now(&svc, std::time::Duration::from_secs(5));
        assert!(matches!(read(&EC2, &svc, &budget), Err(Error::NoAnswer { .. })));
        assert!(svc.requests().iter().all(|r| r.starts_with("PUT")));
        let svc = ec2(400);
        let e = read(&EC2, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "http://169.254.169.254/latest/api/token: HTTP 400 to the token request"
        );
    }

    #[test]
    fn alibaba_in_hardened_mode_gets_its_own_token_headers() {
        let b = "http://100.100.100.200/latest";
        let svc = Fake::default()
            .answer("PUT", &format!("{b}/api/token"), 200, "ali-token")
            .answer(
                "GET",
                &format!("{b}/meta-data/instance-id"),
                200,
                "i-bp67acfmxazb4p****",
            )
            .answer("GET", &format!("{b}/meta-data/hostname"), 200, "iZbp1example")
            .answer("GET", &format!("{b}/meta-data/region-id"), 200, "cn-hangzhou")
            .answer("GET", &format!("{b}/meta-data/public-keys/"), 200, "0/\n")
            .answer("GET", &format!("{b}/meta-data/public-keys/0/openssh-key"), 200, KEY)
            .require(&format!("{b}/meta-data"), "X-aliyun-ecs-metadata-token", "ali-token");
        let m = read(&ALIYUN, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.platform, Some(Platform::Aliyun));
        assert_eq!(m.hostname.as_deref(), Some("iZbp1example"));
        assert_eq!(m.attributes["region"], "cn-hangzhou");
        assert_eq!(m.ssh_keys, [KEY]);
        assert_eq!(m.user_data, None);
    }

    #[test]
    fn tencent_asks_without_a_token() {
        let b = "http://169.254.0.23/latest";
        let svc = Fake::default()
            .answer("GET", &format!("{b}/meta-data/instance-id"), 200, "ins-abcd1234")
            .answer("GET", &format!("{b}/meta-data/placement/zone"), 200, "ap-guangzhou-3")
            .answer("GET", &format!("{b}/user-data"), 200, "#!/bin/sh\necho hi\n");
        let m = read(&TENCENT, &svc, &Budget::starting_now(&svc, BUDGET)).unwrap();
        assert_eq!(m.instance_id, "ins-abcd1234");
        assert_eq!(m.hostname, None);
        assert!(m.ssh_keys.is_empty());
        assert!(svc.requests().iter().all(|r| r.starts_with("GET")));
    }

    #[test]
    fn key_listings_of_each_service_give_their_ids() {
        assert_eq!(key_ids("0=my-key\n1=other\n"), ["0", "1"]);
        assert_eq!(key_ids("0/\nskey-abc/\n"), ["0", "skey-abc"]);
    }
}
