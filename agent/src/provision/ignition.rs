//! Ignition configs, spec 3.0.0 through 3.6.0, read into a [`Plan`].
//!
//! The documents are parsed by CoreOS's own data structures
//! (`ignition-config`), each version into its own types, then carried to
//! 3.6.0's (every 3.x spec is a superset of the one before, as Ignition
//! itself translates them). `ignition.config.replace` and `.merge` are
//! fetched and folded in here (a child's fields win, lists of named entries
//! merge by name or path). What Cairn cannot do (`storage.disks`,
//! `filesystems`, `raid`, `luks`, proxies, custom TLS roots, deleting
//! accounts, fetch schemes other than `data`, `http`, `https`) is refused
//! by name: the whole config is refused and nothing is applied.

use std::io::Read as _;

use ignition_config::v3_6;
use serde_json::Value;

use super::plan::{
    check_account_name, check_unit_name, host_path, Content, Directory, Dropin, File, Group, Hash, Id, KernelArgs,
    Link, Owner, Plan, Remote, Unit, User,
};

/// How deep `merge`/`replace` may nest before the config is refused.
const MAX_DEPTH: usize = 8;

/// Fetches a URL (`http`, `https`) for `merge`, `replace` and remote
/// contents; the resolver's and the tests' implementations differ.
pub trait Fetch {
    fn fetch(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, String>;
}

/// A config read and accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignition {
    /// `ignition.version` of the document the user gave.
    pub version: String,
    pub plan: Plan,
}

/// Whether `bytes` look like an Ignition config (a JSON object naming
/// `ignition`), so a source can tell it from cloud-config.
pub fn looks_like_ignition(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.trim_start().starts_with('{') && text.contains("\"ignition\"")
}

/// Read an Ignition config, folding in the configs it merges or is
/// replaced by. Every error names what is wrong and where.
pub fn read(bytes: &[u8], fetch: &dyn Fetch) -> Result<Ignition, String> {
    let (version, config, mut warnings) = read_document(bytes, fetch, 0)?;
    let mut plan = to_plan(&config)?;
    plan.warnings.append(&mut warnings);
    Ok(Ignition { version, plan })
}

/// One document (and what it references) as 3.6.0 JSON.
fn read_document(bytes: &[u8], fetch: &dyn Fetch, depth: usize) -> Result<(String, v3_6::Config, Vec<String>), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "ignition.config: merge/replace nests deeper than {MAX_DEPTH} configs"
        ));
    }
    let (parsed, warnings) = ignition_config::Config::parse_slice(bytes).map_err(|e| match e {
        ignition_config::Error::Serialization(e) => format!("not a valid Ignition config: {e}"),
        ignition_config::Error::InvalidVersion(e) => format!("ignition.version: {e}"),
        ignition_config::Error::UnknownVersion(v) => {
            format!("ignition.version {v} is not supported (Cairn reads 3.0.0 through 3.6.0)")
        }
        other => format!("not a valid Ignition config: {other}"),
    })?;
    let warnings: Vec<String> = warnings
        .iter()
        .map(|w| format!("Ignition config: {w} (ignored, as Ignition does)"))
        .collect();
    let version = version_of(bytes);
    let mut json = serde_json::to_value(&parsed).map_err(|e| format!("re-encoding the config: {e}"))?;
    let config: v3_6::Config =
        serde_json::from_value(json.clone()).map_err(|e| format!("carrying spec {version} to 3.6.0: {e}"))?;

    let mut warnings = warnings;
    if let Some(cfg) = config.ignition.config.as_ref() {
        if let Some(replace) = cfg.replace.as_ref().filter(|r| r.source.is_some()) {
            let bytes = fetch_resource(replace, "ignition.config.replace", fetch)?;
            let (_, replaced, mut more) = read_document(&bytes, fetch, depth + 1)?;
            warnings.append(&mut more);
            return Ok((version, replaced, warnings));
        }
        for (i, child) in cfg.merge.iter().flatten().enumerate() {
            let at = format!("ignition.config.merge[{i}]");
            let bytes = fetch_resource(child, &at, fetch)?;
            let (_, child_config, mut more) = read_document(&bytes, fetch, depth + 1)?;
            warnings.append(&mut more);
            let mut child_json = serde_json::to_value(&child_config).map_err(|e| format!("{at}: re-encoding: {e}"))?;
            // The child's own references were folded in already.
            if let Some(ign) = child_json.get_mut("ignition").and_then(Value::as_object_mut) {
                ign.remove("config");
                ign.remove("version");
            }
            merge(&mut json, child_json);
        }
    }
    if let Some(ign) = json.get_mut("ignition").and_then(Value::as_object_mut) {
        ign.remove("config");
    }
    let merged: v3_6::Config =
        serde_json::from_value(json).map_err(|e| format!("the merged config is not valid: {e}"))?;
    Ok((version, merged, warnings))
}

/// `ignition.version` of a document the parser accepted.
fn version_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("ignition")?.get("version")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Ignition's merge: objects field by field, the child's value winning;
/// lists of objects entry by entry, matched by `path`, `name`, `device`
/// or `source`; other lists concatenated without duplicates.
pub fn merge(parent: &mut Value, child: Value) {
    match (parent, child) {
        (Value::Object(p), Value::Object(c)) => {
            for (k, v) in c {
                match p.get_mut(&k) {
                    Some(existing) if !v.is_null() => merge(existing, v),
                    Some(_) => {}
                    None => {
                        p.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(p), Value::Array(c)) => {
            for item in c {
                let key = entry_key(&item);
                let slot = key
                    .as_ref()
                    .and_then(|k| p.iter().position(|e| entry_key(e).as_ref() == Some(k)));
                match slot {
                    Some(i) => merge(&mut p[i], item),
                    None if !p.contains(&item) => p.push(item),
                    None => {}
                }
            }
        }
        (p, c) => *p = c,
    }
}

fn entry_key(v: &Value) -> Option<(&'static str, Value)> {
    let obj = v.as_object()?;
    ["path", "name", "device", "source"]
        .into_iter()
        .find_map(|k| obj.get(k).map(|v| (k, v.clone())))
}

/// The bytes of a `merge`/`replace` resource: fetched, decompressed,
/// checked against its hash.
fn fetch_resource(r: &v3_6::Resource, at: &str, fetch: &dyn Fetch) -> Result<Vec<u8>, String> {
    match content_of(r, at)? {
        Some(Content::Inline(bytes)) => Ok(bytes),
        Some(Content::Remote(remote)) => resolve_remote(&remote, fetch).map_err(|e| format!("{at}: {e}")),
        None => Err(format!("{at}: no source")),
    }
}

/// Fetch a remote content, decompress it and check its hash. The error
/// names the URL.
pub fn resolve_remote(remote: &Remote, fetch: &dyn Fetch) -> Result<Vec<u8>, String> {
    let raw = fetch.fetch(&remote.url, &remote.headers)?;
    let data = if remote.gzip {
        gunzip(&raw).map_err(|e| format!("{}: {e}", remote.url))?
    } else {
        raw
    };
    if let Some(hash) = &remote.hash {
        if !hash.matches(&data) {
            return Err(format!(
                "{}: hash mismatch: expected {}-{} but the contents hash to {}",
                remote.url,
                hash.algorithm.name(),
                hash.hex,
                super::plan::digest_hex(hash.algorithm, &data)
            ));
        }
    }
    Ok(data)
}

pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid gzip data: {e}"))?;
    Ok(out)
}

/// A resource as a [`Content`]: `data:` URLs decoded (and decompressed,
/// and checked) here, `http(s)` left to be fetched.
fn content_of(r: &v3_6::Resource, at: &str) -> Result<Option<Content>, String> {
    let Some(source) = r.source.as_deref() else {
        return Ok(None);
    };
    let gzip = match r.compression.as_deref() {
        None | Some("") => false,
        Some("gzip") => true,
        Some(other) => return Err(format!("{at}.compression: {other:?} is not supported (null or gzip)")),
    };
    let hash = r
        .verification
        .as_ref()
        .and_then(|v| v.hash.as_deref())
        .map(Hash::parse)
        .transpose()
        .map_err(|e| format!("{at}.verification: {e}"))?;
    let scheme = source
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        "data" => {
            let url = data_url::DataUrl::process(source).map_err(|e| format!("{at}.source: not a data URL: {e:?}"))?;
            let (raw, _) = url
                .decode_to_vec()
                .map_err(|e| format!("{at}.source: invalid base64 in the data URL: {e:?}"))?;
            let data = if gzip {
                gunzip(&raw).map_err(|e| format!("{at}: {e}"))?
            } else {
                raw
            };
            if let Some(h) = &hash {
                if !h.matches(&data) {
                    return Err(format!("{at}: the data URL's contents do not match verification.hash"));
                }
            }
            Ok(Some(Content::Inline(data)))
        }
        "http" | "https" => {
            let headers = r
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone().unwrap_or_default()))
                .collect();
            Ok(Some(Content::Remote(Remote {
                url: source.to_owned(),
                headers,
                hash,
                gzip,
            })))
        }
        "" => Err(format!("{at}.source: {source:?} is not a URL")),
        other => Err(format!(
            "{at}.source: the {other}: scheme is not supported (Cairn fetches data:, http: and https:)"
        )),
    }
}

fn non_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

fn id(number: Option<i64>, name: &Option<String>, at: &str) -> Result<Option<Id>, String> {
    match (number, name) {
        (Some(_), Some(_)) => Err(format!("{at}: give id or name, not both")),
        (Some(n), None) => u32::try_from(n)
            .map(|n| Some(Id::Number(n)))
            .map_err(|_| format!("{at}.id: {n} is not a valid id")),
        (None, Some(n)) => Ok(Some(Id::Name(n.clone()))),
        (None, None) => Ok(None),
    }
}

/// A uid or gid as Ignition gives it (a JSON number).
fn account_id(n: Option<i64>, at: &str) -> Result<Option<u32>, String> {
    n.map(|n| u32::try_from(n).map_err(|_| format!("{at}: {n} is not a valid id")))
        .transpose()
}

fn owner(user: &Option<v3_6::NodeUser>, group: &Option<v3_6::NodeGroup>, at: &str) -> Result<Owner, String> {
    Ok(Owner {
        user: match user {
            Some(u) => id(u.id, &u.name, &format!("{at}.user"))?,
            None => None,
        },
        group: match group {
            Some(g) => id(g.id, &g.name, &format!("{at}.group"))?,
            None => None,
        },
    })
}

fn mode(m: Option<i64>, at: &str) -> Result<Option<u32>, String> {
    match m {
        None => Ok(None),
        Some(m) if (0..=0o7777).contains(&m) => Ok(Some(m as u32)),
        Some(m) => Err(format!("{at}.mode: {m} is not a file mode (decimal of 0 to 0o7777)")),
    }
}

fn path(p: &str, at: &str) -> Result<std::path::PathBuf, String> {
    host_path(p).map_err(|e| format!("{at}.path: {e}"))
}

/// A 3.6.0 config as a plan, refusing what Cairn cannot apply.
fn to_plan(c: &v3_6::Config) -> Result<Plan, String> {
    let mut plan = Plan::default();
    if let Some(p) = &c.ignition.proxy {
        if p.http_proxy.is_some() || p.https_proxy.is_some() || non_empty(&p.no_proxy) {
            return Err("ignition.proxy: fetching through a proxy is not supported".into());
        }
    }
    if let Some(tls) = c.ignition.security.as_ref().and_then(|s| s.tls.as_ref()) {
        if non_empty(&tls.certificate_authorities) {
            return Err("ignition.security.tls.certificateAuthorities: extra TLS roots are not supported".into());
        }
    }
    if let Some(s) = &c.storage {
        for (name, present) in [
            ("storage.disks", non_empty(&s.disks)),
            ("storage.filesystems", non_empty(&s.filesystems)),
            ("storage.raid", non_empty(&s.raid)),
            ("storage.luks", non_empty(&s.luks)),
        ] {
            if present {
                return Err(format!(
                    "{name}: Cairn does not partition, format or encrypt disks at provisioning; its root fills the boot disk by itself"
                ));
            }
        }
        for (i, d) in s.directories.iter().flatten().enumerate() {
            let at = format!("storage.directories[{i}]");
            plan.directories.push(Directory {
                path: path(&d.path, &at)?,
                mode: mode(d.mode, &at)?,
                owner: owner(&d.user, &d.group, &at)?,
                overwrite: d.overwrite.unwrap_or(false),
            });
        }
        for (i, f) in s.files.iter().flatten().enumerate() {
            let at = format!("storage.files[{i}] ({})", f.path);
            let contents = match &f.contents {
                Some(r) => content_of(r, &format!("{at}.contents"))?,
                None => None,
            };
            let overwrite = f.overwrite.unwrap_or(false);
            if overwrite && contents.is_none() {
                return Err(format!("{at}: overwrite needs contents"));
            }
            let mut append = Vec::new();
            for (j, r) in f.append.iter().flatten().enumerate() {
                let a = format!("{at}.append[{j}]");
                append.push(content_of(r, &a)?.ok_or_else(|| format!("{a}: no source"))?);
            }
            plan.files.push(File {
                path: path(&f.path, &at)?,
                contents,
                append,
                mode: mode(f.mode, &at)?,
                owner: owner(&f.user, &f.group, &at)?,
                overwrite,
                defer: false,
            });
        }
        for (i, l) in s.links.iter().flatten().enumerate() {
            let at = format!("storage.links[{i}] ({})", l.path);
            let target = l.target.clone().ok_or_else(|| format!("{at}: no target"))?;
            plan.links.push(Link {
                path: path(&l.path, &at)?,
                target,
                hard: l.hard.unwrap_or(false),
                overwrite: l.overwrite.unwrap_or(false),
                owner: owner(&l.user, &l.group, &at)?,
            });
        }
    }
    if let Some(p) = &c.passwd {
        for (i, g) in p.groups.iter().flatten().enumerate() {
            let at = format!("passwd.groups[{i}] ({})", g.name);
            check_account_name(&g.name).map_err(|e| format!("{at}: {e}"))?;
            if g.should_exist == Some(false) {
                return Err(format!("{at}.shouldExist: removing groups is not supported"));
            }
            if g.password_hash.is_some() {
                return Err(format!("{at}.passwordHash: group passwords are not supported"));
            }
            plan.groups.push(Group {
                name: g.name.clone(),
                gid: account_id(g.gid, &format!("{at}.gid"))?,
                system: g.system.unwrap_or(false),
            });
        }
        for (i, u) in p.users.iter().flatten().enumerate() {
            let at = format!("passwd.users[{i}] ({})", u.name);
            check_account_name(&u.name).map_err(|e| format!("{at}: {e}"))?;
            if u.should_exist == Some(false) {
                return Err(format!("{at}.shouldExist: removing users is not supported"));
            }
            plan.users.push(User {
                name: u.name.clone(),
                uid: account_id(u.uid, &format!("{at}.uid"))?,
                gecos: u.gecos.clone(),
                home_dir: u.home_dir.clone(),
                no_create_home: u.no_create_home.unwrap_or(false),
                primary_group: u.primary_group.clone(),
                no_user_group: u.no_user_group.unwrap_or(false),
                groups: u.groups.clone().unwrap_or_default(),
                ssh_authorized_keys: u.ssh_authorized_keys.clone().unwrap_or_default(),
                password_hash: u.password_hash.clone(),
                shell: u.shell.clone(),
                system: u.system.unwrap_or(false),
                sudo: Vec::new(),
            });
        }
    }
    if let Some(s) = &c.systemd {
        for (i, u) in s.units.iter().flatten().enumerate() {
            let at = format!("systemd.units[{i}] ({})", u.name);
            check_unit_name(&u.name).map_err(|e| format!("{at}: {e}"))?;
            let mut dropins = Vec::new();
            for d in u.dropins.iter().flatten() {
                if d.name.contains('/') || !d.name.ends_with(".conf") {
                    return Err(format!(
                        "{at}.dropins: {:?} is not a drop-in file name (*.conf)",
                        d.name
                    ));
                }
                dropins.push(Dropin {
                    name: d.name.clone(),
                    contents: d.contents.clone(),
                });
            }
            plan.units.push(Unit {
                name: u.name.clone(),
                contents: u.contents.clone(),
                enabled: u.enabled,
                mask: u.mask.unwrap_or(false),
                dropins,
            });
        }
    }
    if let Some(k) = &c.kernel_arguments {
        let args = KernelArgs {
            should_exist: k.should_exist.clone().unwrap_or_default(),
            should_not_exist: k.should_not_exist.clone().unwrap_or_default(),
        };
        for (list, words) in [
            ("shouldExist", &args.should_exist),
            ("shouldNotExist", &args.should_not_exist),
        ] {
            for w in words {
                crate::kargs::check_config_arg(w).map_err(|e| format!("kernelArguments.{list}: {e}"))?;
            }
        }
        if let Some(both) = args.should_exist.iter().find(|w| args.should_not_exist.contains(w)) {
            return Err(format!(
                "kernelArguments: `{both}` is in both shouldExist and shouldNotExist"
            ));
        }
        plan.kernel_args = args;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::provision::plan::HashAlgorithm;

    /// Serves fixed bodies by URL.
    struct Fake(HashMap<String, Vec<u8>>);

    impl Fetch for Fake {
        fn fetch(&self, url: &str, _headers: &[(String, String)]) -> Result<Vec<u8>, String> {
            self.0.get(url).cloned().ok_or_else(|| format!("{url}: 404 Not Found"))
        }
    }

    fn none() -> Fake {
        Fake(HashMap::new())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// What Butane 0.2x emits for a user, a file, a unit and a drop-in
    /// (fcos variant, spec 3.4.0).
    const BUTANE_3_4: &str = r#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"groups":["sudo","docker"],"name":"core","sshAuthorizedKeys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk core@example"]}]},"storage":{"files":[{"path":"/etc/hostname","contents":{"compression":"","source":"data:,web-1"},"mode":420,"overwrite":true},{"path":"/etc/cairn/agent.d/50-stream.toml","contents":{"compression":"gzip","source":"data:;base64,H4sIAAAAAAACA4suLUhJLEmN5SouKUpNzFWwVVAqLklMyklV4gIAJwpAvRsAAAA="},"mode":420}],"directories":[{"path":"/var/lib/app","mode":493}],"links":[{"path":"/etc/localtime","target":"../usr/share/zoneinfo/UTC","overwrite":true}]},"systemd":{"units":[{"contents":"[Unit]\nDescription=hello\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n","enabled":true,"name":"hello.service"},{"dropins":[{"contents":"[Service]\nEnvironment=A=1\n","name":"10-a.conf"}],"name":"containerd.service"},{"mask":true,"name":"apt-daily.timer"}]},"kernelArguments":{"shouldExist":["mitigations=auto"],"shouldNotExist":["quiet"]}}"#;

    #[test]
    fn a_butane_config_becomes_a_plan() {
        let ign = read(BUTANE_3_4.as_bytes(), &none()).unwrap();
        assert_eq!(ign.version, "3.4.0");
        let p = ign.plan;
        assert_eq!(p.users.len(), 1);
        assert_eq!(p.users[0].name, "core");
        assert_eq!(p.users[0].groups, ["sudo", "docker"]);
        assert_eq!(p.users[0].ssh_authorized_keys.len(), 1);
        assert_eq!(p.files[0].path, std::path::Path::new("etc/hostname"));
        assert_eq!(p.files[0].contents, Some(Content::Inline(b"web-1".to_vec())));
        assert_eq!(p.files[0].mode, Some(0o644));
        assert!(p.files[0].overwrite);
        // gzip'd data URL, decompressed at read time
        match &p.files[1].contents {
            Some(Content::Inline(b)) => assert!(String::from_utf8_lossy(b).starts_with('['), "{b:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.directories[0].mode, Some(0o755));
        assert_eq!(p.directories[0].path, std::path::Path::new("var/lib/app"));
        assert_eq!(p.links[0].target, "../usr/share/zoneinfo/UTC");
        assert_eq!(p.units.len(), 3);
        assert_eq!(p.units[0].enabled, Some(true));
        assert_eq!(p.units[1].dropins[0].name, "10-a.conf");
        assert!(p.units[2].mask);
        assert_eq!(p.kernel_args.should_exist, ["mitigations=auto"]);
        assert_eq!(p.kernel_args.should_not_exist, ["quiet"]);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn kernel_arguments_that_the_boot_owns_or_that_contradict_are_refused_by_name() {
        let doc = |ka: &str| format!(r#"{{"ignition":{{"version":"3.3.0"}},"kernelArguments":{ka}}}"#);
        let refused = |ka: &str| read(doc(ka).as_bytes(), &none()).unwrap_err();
        assert!(
            refused(r#"{"shouldExist":["root=/dev/sda1"]}"#).contains("kernelArguments.shouldExist: `root=/dev/sda1`"),
            "{}",
            refused(r#"{"shouldExist":["root=/dev/sda1"]}"#)
        );
        assert!(refused(r#"{"shouldNotExist":["a b"]}"#)
            .contains("kernelArguments.shouldNotExist: `a b` is more than one word"));
        assert_eq!(
            refused(r#"{"shouldExist":["nosmt"],"shouldNotExist":["nosmt"]}"#),
            "kernelArguments: `nosmt` is in both shouldExist and shouldNotExist"
        );
        let ok = read(
            doc(r#"{"shouldExist":["nosmt"],"shouldNotExist":["quiet"]}"#).as_bytes(),
            &none(),
        )
        .unwrap();
        assert_eq!(ok.plan.kernel_args.should_exist, ["nosmt"]);
    }

    #[test]
    fn every_3x_spec_version_is_read() {
        for v in ["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0", "3.6.0"] {
            let doc = format!(
                r#"{{"ignition":{{"version":"{v}"}},"storage":{{"files":[{{"path":"/etc/motd","contents":{{"source":"data:,hi"}},"mode":420}}]}}}}"#
            );
            let ign = read(doc.as_bytes(), &none()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(ign.version, v);
            assert_eq!(ign.plan.files[0].contents, Some(Content::Inline(b"hi".to_vec())));
        }
    }

    #[test]
    fn other_versions_and_broken_json_are_refused_naming_why() {
        let e = read(br#"{"ignition":{"version":"2.3.0"}}"#, &none()).unwrap_err();
        assert!(e.contains("2.3.0 is not supported"), "{e}");
        let e = read(br#"{"ignition":{"version":"3.7.0-experimental"}}"#, &none()).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = read(b"{\"ignition\": {\"version\": \"3.4.0\"},\n  \"storage\": [}", &none()).unwrap_err();
        assert!(e.contains("not a valid Ignition config") && e.contains("line 2"), "{e}");
        // A field of the wrong type.
        let e = read(
            br#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":7}]}}"#,
            &none(),
        )
        .unwrap_err();
        assert!(e.contains("not a valid Ignition config"), "{e}");
    }

    #[test]
    fn what_cairn_cannot_apply_is_refused_by_name() {
        for (doc, name) in [
            (
                r#""storage":{"disks":[{"device":"/dev/vdb","wipeTable":true}]}"#,
                "storage.disks",
            ),
            (
                r#""storage":{"filesystems":[{"device":"/dev/vdb","format":"xfs"}]}"#,
                "storage.filesystems",
            ),
            (
                r#""storage":{"raid":[{"name":"md0","level":"raid1","devices":["/dev/a","/dev/b"]}]}"#,
                "storage.raid",
            ),
            (
                r#""storage":{"luks":[{"name":"x","device":"/dev/vdb"}]}"#,
                "storage.luks",
            ),
            (
                r#""passwd":{"users":[{"name":"old","shouldExist":false}]}"#,
                "shouldExist",
            ),
            (
                r#""storage":{"files":[{"path":"/usr/bin/x","contents":{"source":"data:,x"}}]}"#,
                "/usr is Cairn's read-only OS",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","contents":{"source":"s3://bucket/x"}}]}"#,
                "s3: scheme is not supported",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","contents":{"source":"data:,x","compression":"xz"}}]}"#,
                "\"xz\" is not supported",
            ),
            (
                r#""systemd":{"units":[{"name":"../evil.service"}]}"#,
                "not a systemd unit name",
            ),
        ] {
            let full = format!(r#"{{"ignition":{{"version":"3.4.0"}},{doc}}}"#);
            let e = read(full.as_bytes(), &none()).unwrap_err();
            assert!(e.contains(name), "{name}: {e}");
        }
        let e = read(
            br#"{"ignition":{"version":"3.4.0","proxy":{"httpProxy":"http://p:3128"}}}"#,
            &none(),
        )
        .unwrap_err();
        assert!(e.contains("ignition.proxy"), "{e}");
    }

    #[test]
    fn unknown_keys_are_warnings_as_in_ignition() {
        let ign = read(br#"{"ignition":{"version":"3.4.0"},"storage":{"filez":[]}}"#, &none()).unwrap();
        assert_eq!(ign.plan.warnings.len(), 1);
        assert!(
            ign.plan.warnings[0].contains("storage.filez"),
            "{:?}",
            ign.plan.warnings
        );
    }

    #[test]
    fn remote_contents_are_left_to_resolve_and_checked_by_hash() {
        let doc = br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/app.conf","contents":{"source":"http://10.0.2.100/app.conf.gz","compression":"gzip","verification":{"hash":"sha256-2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},"httpHeaders":[{"name":"X-Token","value":"t"}]}}]}}"#;
        let plan = read(doc, &none()).unwrap().plan;
        let Some(Content::Remote(remote)) = &plan.files[0].contents else {
            panic!("{:?}", plan.files[0]);
        };
        assert_eq!(remote.headers, [("X-Token".to_owned(), "t".to_owned())]);
        assert_eq!(remote.hash.as_ref().unwrap().algorithm, HashAlgorithm::Sha256);
        // The hash is of the decompressed contents.
        let good = Fake(HashMap::from([(
            "http://10.0.2.100/app.conf.gz".into(),
            gzip(b"hello"),
        )]));
        assert_eq!(resolve_remote(remote, &good).unwrap(), b"hello");
        let bad = Fake(HashMap::from([(
            "http://10.0.2.100/app.conf.gz".into(),
            gzip(b"tampered"),
        )]));
        let e = resolve_remote(remote, &bad).unwrap_err();
        assert!(
            e.contains("hash mismatch") && e.contains("app.conf.gz") && e.contains("sha256-2cf24"),
            "{e}"
        );
        let e = resolve_remote(remote, &none()).unwrap_err();
        assert!(e.contains("404"), "{e}");
    }

    #[test]
    fn merged_configs_fold_in_with_the_childs_fields_winning() {
        let child = br#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/etc/a","contents":{"source":"data:,child"},"mode":384},{"path":"/etc/b","contents":{"source":"data:,b"}}]},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["key-2"]}]}}"#;
        let hash = format!(
            "sha512-{}",
            crate::provision::plan::digest_hex(HashAlgorithm::Sha512, child)
        );
        let parent = format!(
            r#"{{"ignition":{{"version":"3.4.0","config":{{"merge":[{{"source":"http://10.0.2.100/child.ign","verification":{{"hash":"{hash}"}}}}]}}}},"storage":{{"files":[{{"path":"/etc/a","contents":{{"source":"data:,parent"}},"mode":420,"overwrite":true}}]}},"passwd":{{"users":[{{"name":"core","sshAuthorizedKeys":["key-1"]}}]}}}}"#
        );
        let fake = Fake(HashMap::from([("http://10.0.2.100/child.ign".into(), child.to_vec())]));
        let p = read(parent.as_bytes(), &fake).unwrap().plan;
        assert_eq!(p.files.len(), 2);
        let a = p.files.iter().find(|f| f.path.ends_with("a")).unwrap();
        assert_eq!(a.contents, Some(Content::Inline(b"child".to_vec())));
        assert_eq!(a.mode, Some(0o600));
        assert!(a.overwrite, "the parent's field stays where the child has none");
        assert_eq!(p.users.len(), 1);
        assert_eq!(p.users[0].ssh_authorized_keys, ["key-1", "key-2"]);
        // A tampered child refuses the whole config.
        let bad = Fake(HashMap::from([("http://10.0.2.100/child.ign".into(), b"{}".to_vec())]));
        let e = read(parent.as_bytes(), &bad).unwrap_err();
        assert!(
            e.contains("ignition.config.merge[0]") && e.contains("hash mismatch"),
            "{e}"
        );
    }

    #[test]
    fn a_replaced_config_is_the_one_applied() {
        let other = br#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/replaced","contents":{"source":"data:,r"}}]}}"#;
        let doc = br#"{"ignition":{"version":"3.4.0","config":{"replace":{"source":"https://cfg.example/r.ign"}}},"storage":{"files":[{"path":"/etc/original","contents":{"source":"data:,o"}}]}}"#;
        let fake = Fake(HashMap::from([("https://cfg.example/r.ign".into(), other.to_vec())]));
        let p = read(doc, &fake).unwrap().plan;
        assert_eq!(p.files.len(), 1);
        assert!(p.files[0].path.ends_with("replaced"));
    }

    #[test]
    fn a_config_merging_itself_is_refused_not_looped() {
        let doc = br#"{"ignition":{"version":"3.4.0","config":{"merge":[{"source":"http://x/self.ign"}]}}}"#;
        let fake = Fake(HashMap::from([("http://x/self.ign".into(), doc.to_vec())]));
        let e = read(doc, &fake).unwrap_err();
        assert!(e.contains("nests deeper"), "{e}");
    }

    #[test]
    fn ignition_is_told_from_cloud_config() {
        assert!(looks_like_ignition(BUTANE_3_4.as_bytes()));
        assert!(!looks_like_ignition(b"#cloud-config\nhostname: a\n"));
        assert!(!looks_like_ignition(b"{\"a\": 1}"));
    }
}
