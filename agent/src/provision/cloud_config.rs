//! User data in cloud-init's formats: `#cloud-config` read into a [`Plan`],
//! a `#!` script, and telling them from an Ignition config.
//!
//! As cloud-init does, a key Cairn does not support is a warning naming it,
//! not a failure; a document that is not YAML, or a supported key with a
//! value of the wrong kind, is an error naming the key, and nothing of the
//! document is applied. YAML 1.1's spellings cloud-init users write
//! (`yes`/`no`, octal `0644` unquoted) are read as cloud-init reads them.

use serde_yaml_ng::{Mapping, Value};

use super::ignition::{gunzip, looks_like_ignition};
use super::plan::{
    check_account_name, check_hostname, host_path, Command, Content, File, Group, Hash, Id, Owner, Plan, Remote, User,
};
use super::yaml::{boolean, kind, string, strings};

/// What a user-data blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    Ignition(Vec<u8>),
    CloudConfig(String),
    Script(Vec<u8>),
    /// Nothing to do (an empty document).
    Empty,
}

/// Tell an Ignition config, `#cloud-config` and a `#!` script apart
/// (gzip-compressed ones too, as cloud-init accepts them). Formats of
/// cloud-init Cairn does not run are refused by name.
pub fn classify(bytes: &[u8]) -> Result<UserData, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let plain = gunzip(bytes).map_err(|e| format!("user data: {e}"))?;
        return classify(&plain);
    }
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(UserData::Empty);
    }
    if looks_like_ignition(bytes) {
        return Ok(UserData::Ignition(bytes.to_vec()));
    }
    let first = trimmed.lines().next().unwrap_or("").trim_end();
    if first == "#cloud-config" || first.starts_with("#cloud-config ") {
        return Ok(UserData::CloudConfig(text.into_owned()));
    }
    if first.starts_with("#!") {
        return Ok(UserData::Script(bytes.to_vec()));
    }
    for (prefix, what) in [
        ("Content-Type: multipart", "MIME multi-part user data"),
        ("#include", "#include user data"),
        ("## template: jinja", "Jinja-templated user data"),
        ("#cloud-boothook", "#cloud-boothook user data"),
        ("#part-handler", "#part-handler user data"),
        ("#cloud-config-archive", "#cloud-config-archive user data"),
    ] {
        if first.starts_with(prefix) {
            return Err(format!(
                "{what} is not supported (Cairn reads an Ignition config, #cloud-config or a #! script)"
            ));
        }
    }
    Err(format!(
        "user data is neither an Ignition config, #cloud-config nor a #! script (it begins {:?})",
        first.chars().take(40).collect::<String>()
    ))
}

/// A user-data script as a plan: run once, after everything else.
pub fn script_plan(script: Vec<u8>) -> Plan {
    Plan {
        run_commands: vec![Command::Script(script)],
        ..Plan::default()
    }
}

/// Read a `#cloud-config` document. `default_user` is the image's default
/// user, whom `users: [default]` and top-level `ssh_authorized_keys` mean.
pub fn read(text: &str, default_user: &str) -> Result<Plan, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("#cloud-config is not valid YAML: {e}"))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        other => return Err(format!("#cloud-config must be a mapping of keys, not {}", kind(&other))),
    };
    let mut plan = Plan::default();
    let mut hostname: Option<String> = None;
    let mut fqdn: Option<String> = None;
    let mut preserve_hostname = false;
    for (k, v) in &map {
        let key = k
            .as_str()
            .ok_or_else(|| format!("#cloud-config: the key {k:?} is not a string"))?;
        match key {
            "hostname" => hostname = Some(string(v, key)?),
            "fqdn" => fqdn = Some(string(v, key)?),
            "preserve_hostname" => preserve_hostname = boolean(v, key)?,
            "users" => read_users(v, default_user, &mut plan)?,
            "groups" => read_groups(v, &mut plan)?,
            "ssh_authorized_keys" => plan.default_user_keys.extend(strings(v, key)?),
            "write_files" => read_write_files(v, &mut plan)?,
            "bootcmd" => plan.boot_commands = commands(v, key)?,
            "runcmd" => plan.run_commands = commands(v, key)?,
            "disable_root" => {
                if !boolean(v, key)? {
                    plan.warnings
                        .push("disable_root: false is not supported: root never logs in over SSH".into());
                }
            }
            "ssh_pwauth" => {
                if boolean(v, key)? {
                    plan.warnings
                        .push("ssh_pwauth: true is not supported: SSH takes keys only".into());
                }
            }
            other => plan.warnings.push(format!(
                "cloud-config key `{other}` is not supported by Cairn and was ignored"
            )),
        }
    }
    if !preserve_hostname {
        let short = fqdn.as_deref().map(|f| f.split('.').next().unwrap_or(f).to_owned());
        if let Some(h) = hostname.or(short) {
            check_hostname(&h).map_err(|e| format!("hostname: {e}"))?;
            plan.hostname = Some(h.clone());
            if let Some(f) = fqdn {
                check_hostname(&f).map_err(|e| format!("fqdn: {e}"))?;
                plan.files.push(File {
                    path: "etc/hosts".into(),
                    contents: None,
                    append: vec![Content::Inline(format!("127.0.1.1 {f} {h}\n").into_bytes())],
                    mode: None,
                    owner: Owner::default(),
                    overwrite: false,
                    defer: false,
                });
            }
        }
    }
    Ok(plan)
}

/// `bootcmd`/`runcmd`: each item a shell line or an argument list.
fn commands(v: &Value, at: &str) -> Result<Vec<Command>, String> {
    let Value::Sequence(items) = v else {
        return Err(format!("{at}: expected a list of commands, found {}", kind(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Sequence(_) => Ok(Command::Argv(strings(item, &format!("{at}[{i}]"))?)),
            _ => Ok(Command::Shell(string(item, &format!("{at}[{i}]"))?)),
        })
        .collect()
}

fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(Value::String(key.to_owned())).filter(|v| !v.is_null())
}

fn read_groups(v: &Value, plan: &mut Plan) -> Result<(), String> {
    let items: Vec<Value> = match v {
        Value::String(s) => s.split(',').map(|g| Value::String(g.trim().to_owned())).collect(),
        Value::Sequence(items) => items.clone(),
        other => return Err(format!("groups: expected a list, found {}", kind(other))),
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("groups[{i}]");
        let name = match item {
            Value::Mapping(m) => {
                let (name, members) = m.iter().next().ok_or_else(|| format!("{at}: empty"))?;
                if !members.is_null() {
                    plan.warnings.push(format!(
                        "{at}: group members are not supported; list the group in each user's groups"
                    ));
                }
                string(name, &at)?
            }
            other => string(other, &at)?,
        };
        check_account_name(&name).map_err(|e| format!("{at}: {e}"))?;
        plan.groups.push(Group {
            name,
            gid: None,
            system: false,
        });
    }
    Ok(())
}

/// `groups: "a, b"` or `[a, b]`.
fn group_list(v: &Value, at: &str) -> Result<Vec<String>, String> {
    Ok(match v {
        Value::String(s) => s
            .split(',')
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect(),
        other => strings(other, at)?,
    })
}

fn read_users(v: &Value, default_user: &str, plan: &mut Plan) -> Result<(), String> {
    let items: Vec<Value> = match v {
        Value::Sequence(items) => items.clone(),
        Value::String(s) => s.split(',').map(|u| Value::String(u.trim().to_owned())).collect(),
        other => return Err(format!("users: expected a list, found {}", kind(other))),
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("users[{i}]");
        let m = match item {
            Value::String(s) if s == "default" => continue, // the default user always exists
            Value::String(s) => {
                let mut m = Mapping::new();
                m.insert(Value::String("name".into()), Value::String(s.clone()));
                m
            }
            Value::Mapping(m) => m.clone(),
            other => return Err(format!("{at}: expected a user, found {}", kind(other))),
        };
        let name = string(
            get(&m, "name").ok_or_else(|| format!("{at}: no name"))?,
            &format!("{at}.name"),
        )?;
        let at = format!("users[{i}] ({name})");
        check_account_name(&name).map_err(|e| format!("{at}: {e}"))?;
        let mut user = User {
            name: name.clone(),
            ..User::default()
        };
        let mut lock_passwd = true;
        let mut hashed: Option<String> = None;
        for (k, v) in &m {
            let key = k.as_str().unwrap_or_default();
            let field = format!("{at}.{key}");
            if v.is_null() {
                continue;
            }
            match key {
                "name" => {}
                "groups" => user.groups = group_list(v, &field)?,
                "sudo" => match v {
                    Value::Bool(false) => {}
                    _ => user.sudo = strings(v, &field)?,
                },
                "shell" => user.shell = Some(string(v, &field)?),
                "ssh_authorized_keys" => user.ssh_authorized_keys = strings(v, &field)?,
                "lock_passwd" => lock_passwd = boolean(v, &field)?,
                "hashed_passwd" | "passwd" => hashed = Some(string(v, &field)?),
                "gecos" => user.gecos = Some(string(v, &field)?),
                "homedir" => user.home_dir = Some(string(v, &field)?),
                "primary_group" => user.primary_group = Some(string(v, &field)?),
                "no_create_home" => user.no_create_home = boolean(v, &field)?,
                "no_user_group" => user.no_user_group = boolean(v, &field)?,
                "system" => user.system = boolean(v, &field)?,
                "uid" => {
                    let s = string(v, &field)?;
                    user.uid = Some(s.parse().map_err(|_| format!("{field}: {s:?} is not a user id"))?);
                }
                "plain_text_passwd" => plan.warnings.push(format!(
                    "{field}: plain-text passwords are not supported; use hashed_passwd"
                )),
                other => plan.warnings.push(format!(
                    "{at}: user key `{other}` is not supported by Cairn and was ignored"
                )),
            }
        }
        if !lock_passwd {
            user.password_hash = hashed;
        } else if hashed.is_some() {
            plan.warnings.push(format!(
                "{at}: hashed_passwd is not set because lock_passwd is true (cloud-init's default)"
            ));
        }
        if name == default_user {
            plan.default_user_keys.append(&mut user.ssh_authorized_keys);
        }
        plan.users.push(user);
    }
    Ok(())
}

/// cloud-init's `encoding` values.
fn decode(content: &str, encoding: Option<&str>, at: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = |s: &str| {
        let compact: String = s.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("{at}: content is not valid base64: {e}"))
    };
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("text/plain") => Ok(content.as_bytes().to_vec()),
        Some("b64") | Some("base64") => b64(content),
        Some("gz") | Some("gzip") => gunzip(content.as_bytes()).map_err(|e| format!("{at}: {e}")),
        Some("gz+b64") | Some("gz+base64") | Some("gzip+b64") | Some("gzip+base64") => {
            gunzip(&b64(content)?).map_err(|e| format!("{at}: {e}"))
        }
        Some(other) => Err(format!(
            "{at}.encoding: {other:?} is not one of b64, base64, gzip, gz+b64, text/plain"
        )),
    }
}

/// `permissions`: `'0644'` (a string, as cloud-init's docs write it), or
/// an unquoted number read as YAML 1.1 reads `0644`: octal digits.
fn permissions(v: &Value, at: &str) -> Result<u32, String> {
    let digits = match v {
        Value::String(s) => s.trim().trim_start_matches("0o").to_owned(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "{at}: expected an octal mode like '0644', found {}",
                kind(other)
            ))
        }
    };
    u32::from_str_radix(&digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{at}: {digits:?} is not an octal file mode"))
}

/// `owner: user:group` (either part by name or number).
fn owner(s: &str) -> Owner {
    let id = |p: &str| match p.parse::<u32>() {
        Ok(n) => Id::Number(n),
        Err(_) => Id::Name(p.to_owned()),
    };
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    Owner {
        user: (!u.is_empty()).then(|| id(u)),
        group: (!g.is_empty()).then(|| id(g)),
    }
}

fn read_write_files(v: &Value, plan: &mut Plan) -> Result<(), String> {
    let Value::Sequence(items) = v else {
        return Err(format!("write_files: expected a list, found {}", kind(v)));
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("write_files[{i}]");
        let Value::Mapping(m) = item else {
            return Err(format!("{at}: expected a mapping, found {}", kind(item)));
        };
        let path = string(
            get(m, "path").ok_or_else(|| format!("{at}: no path"))?,
            &format!("{at}.path"),
        )?;
        let at = format!("write_files[{i}] ({path})");
        for (k, _) in m {
            let key = k.as_str().unwrap_or_default();
            if ![
                "path",
                "content",
                "encoding",
                "permissions",
                "owner",
                "append",
                "defer",
                "source",
            ]
            .contains(&key)
            {
                plan.warnings
                    .push(format!("{at}: key `{key}` is not supported by Cairn and was ignored"));
            }
        }
        let source = get(m, "source")
            .map(|v| read_source(v, &format!("{at}.source"), &mut plan.warnings))
            .transpose()?;
        if source.is_some() && (get(m, "content").is_some() || get(m, "encoding").is_some()) {
            plan.warnings.push(format!(
                "{at}: content and encoding are cloud-init's fallback when source cannot be fetched; Cairn fails naming the URL instead, and ignored them"
            ));
        }
        let encoding = get(m, "encoding")
            .map(|e| string(e, &format!("{at}.encoding")))
            .transpose()?;
        let content = get(m, "content")
            .map(|c| string(c, &format!("{at}.content")))
            .transpose()?
            .unwrap_or_default();
        let data = decode(&content, encoding.as_deref(), &at)?;
        let append = get(m, "append")
            .map(|a| boolean(a, &format!("{at}.append")))
            .transpose()?
            .unwrap_or(false);
        let mode = get(m, "permissions")
            .map(|p| permissions(p, &format!("{at}.permissions")))
            .transpose()?
            .unwrap_or(0o644);
        let owner = get(m, "owner")
            .map(|o| string(o, &format!("{at}.owner")))
            .transpose()?
            .map(|o| owner(&o))
            .unwrap_or_default();
        let defer = get(m, "defer")
            .map(|d| boolean(d, &format!("{at}.defer")))
            .transpose()?
            .unwrap_or(false);
        let content = match source {
            Some(remote) => Content::Remote(remote),
            None => Content::Inline(data),
        };
        let (contents, append_list) = if append {
            (None, vec![content])
        } else {
            (Some(content), vec![])
        };
        plan.files.push(File {
            path: host_path(&path).map_err(|e| format!("{at}: {e}"))?,
            contents,
            append: append_list,
            mode: Some(mode),
            owner,
            overwrite: !append,
            defer,
        });
    }
    Ok(())
}

/// A `write_files` entry's `source` (cloud-init 23.1): `uri` (http or
/// https) and `headers`; and, a Cairn addition cloud-init does not read,
/// `hash` in Ignition's form (`sha256-<hex>`), checked before anything is
/// applied.
fn read_source(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<Remote, String> {
    let Value::Mapping(m) = v else {
        return Err(format!("{at}: expected a mapping with uri, found {}", kind(v)));
    };
    for (k, _) in m {
        let key = k.as_str().unwrap_or_default();
        if !["uri", "headers", "hash"].contains(&key) {
            warnings.push(format!("{at}: key `{key}` is not supported by Cairn and was ignored"));
        }
    }
    let url = string(
        get(m, "uri").ok_or_else(|| format!("{at}: no uri"))?,
        &format!("{at}.uri"),
    )?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{at}.uri: {url:?} is not an http:// or https:// URL"));
    }
    let mut headers = Vec::new();
    if let Some(h) = get(m, "headers") {
        let Value::Mapping(h) = h else {
            return Err(format!("{at}.headers: expected a mapping, found {}", kind(h)));
        };
        for (k, v) in h {
            let name = k
                .as_str()
                .ok_or_else(|| format!("{at}.headers: a header name is not a string"))?;
            headers.push((name.to_owned(), string(v, &format!("{at}.headers.{name}"))?));
        }
    }
    let hash = get(m, "hash")
        .map(|h| string(h, &format!("{at}.hash")).and_then(|h| Hash::parse(&h).map_err(|e| format!("{at}.hash: {e}"))))
        .transpose()?;
    Ok(Remote {
        url,
        headers,
        hash,
        gzip: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cloud-init's documented examples (users-groups, write-files,
    /// bootcmd/runcmd), combined.
    const DOCS_EXAMPLE: &str = r#"#cloud-config
hostname: web-1
fqdn: web-1.example.com
groups:
  - admingroup: [root, sys]
  - cloud-users
users:
  - default
  - name: foobar
    gecos: Foo B. Bar
    primary_group: foobar
    groups: users, admingroup
    lock_passwd: false
    hashed_passwd: $6$j212wezy$7H/1LT4f9/N3wpgNunhsIqtMj62OKiS3nyNwuizouQc3u7MbYCarYeAHWYPYb2FT.lHpaKLcKjQfCsJDGj1bAl.
    ssh_authorized_keys:
      - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC foobar@host
  - name: barfoo
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/bash
    lock_passwd: yes
    uid: 1500
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA default@host
write_files:
  - encoding: b64
    content: Q2Fpcm4K
    owner: root:root
    path: /etc/motd
    permissions: '0644'
  - content: |
      [update]
      stream = "beta"
    path: /etc/cairn/agent.d/50-stream.toml
  - path: /var/lib/app/data
    content: "x"
    permissions: 0600
    owner: foobar:foobar
    defer: true
  - path: /etc/hosts.extra
    content: "more\n"
    append: true
bootcmd:
  - echo booted > /run/bootcmd
  - [ sh, -c, "echo $(date) > /run/bootcmd-argv" ]
runcmd:
  - [ ls, -l, / ]
  - echo done
packages:
  - nginx
"#;

    #[test]
    fn cloud_inits_documented_example_becomes_a_plan() {
        let p = read(DOCS_EXAMPLE, "cairn").unwrap();
        assert_eq!(p.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            p.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["admingroup", "cloud-users"]
        );
        assert_eq!(p.users.len(), 2, "`default` is the image's default user, not a new one");
        let foobar = &p.users[0];
        assert_eq!(foobar.groups, ["users", "admingroup"]);
        assert!(foobar.password_hash.as_deref().unwrap().starts_with("$6$"));
        assert_eq!(foobar.primary_group.as_deref(), Some("foobar"));
        assert_eq!(foobar.ssh_authorized_keys.len(), 1);
        let barfoo = &p.users[1];
        assert_eq!(barfoo.sudo, ["ALL=(ALL) NOPASSWD:ALL"]);
        assert_eq!(barfoo.uid, Some(1500));
        assert_eq!(barfoo.password_hash, None);
        assert_eq!(
            p.default_user_keys,
            ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA default@host"]
        );
        // write_files, then the fqdn's /etc/hosts line
        assert_eq!(p.files.len(), 5);
        assert_eq!(p.files[0].contents, Some(Content::Inline(b"Cairn\n".to_vec())));
        assert_eq!(p.files[0].mode, Some(0o644));
        assert!(p.files[0].overwrite);
        assert_eq!(p.files[2].mode, Some(0o600), "unquoted 0600 is octal, as in YAML 1.1");
        assert!(p.files[2].defer);
        assert_eq!(
            p.files[2].owner,
            Owner {
                user: Some(Id::Name("foobar".into())),
                group: Some(Id::Name("foobar".into()))
            }
        );
        assert_eq!(p.files[3].contents, None);
        assert_eq!(p.files[3].append, [Content::Inline(b"more\n".to_vec())]);
        assert_eq!(p.files[4].path, std::path::Path::new("etc/hosts"));
        assert_eq!(p.boot_commands[0], Command::Shell("echo booted > /run/bootcmd".into()));
        assert!(matches!(&p.boot_commands[1], Command::Argv(a) if a[0] == "sh"));
        assert_eq!(p.run_commands.len(), 2);
        // Unsupported keys are warnings naming them.
        assert!(p.warnings.iter().any(|w| w.contains("`packages`")), "{:?}", p.warnings);
        assert!(
            p.warnings.iter().any(|w| w.contains("group members")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn write_files_from_a_url_are_remote_contents_checked_by_their_hash() {
        let hex = "ab".repeat(32);
        let p = read(
            &format!(
                "#cloud-config\nwrite_files:\n  - path: /var/lib/extensions/kubelet.raw\n    permissions: '0644'\n    source:\n      uri: https://ext.example/kubelet.raw\n      headers:\n        Authorization: Bearer t\n      hash: sha256-{hex}\n  - path: /etc/x\n    source: {{uri: 'http://h/x'}}\n    content: fallback\n"
            ),
            "cairn",
        )
        .unwrap();
        let Some(Content::Remote(r)) = &p.files[0].contents else {
            panic!("{:?}", p.files[0]);
        };
        assert_eq!(r.url, "https://ext.example/kubelet.raw");
        assert_eq!(r.headers, [("Authorization".to_owned(), "Bearer t".to_owned())]);
        assert_eq!(r.hash.as_ref().unwrap().hex, hex);
        assert!(matches!(&p.files[1].contents, Some(Content::Remote(r)) if r.hash.is_none()));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("write_files[1] (/etc/x): content and encoding are cloud-init's fallback")),
            "{:?}",
            p.warnings
        );
        for (source, says) in [
            (
                "{uri: 'ftp://h/x'}",
                "write_files[0] (/etc/x).source.uri: \"ftp://h/x\" is not an http:// or https:// URL",
            ),
            ("{headers: {}}", "write_files[0] (/etc/x).source: no uri"),
            (
                "{uri: 'http://h/x', hash: 'md5-00'}",
                "write_files[0] (/etc/x).source.hash: hash type \"md5\"",
            ),
            (
                "'http://h/x'",
                "write_files[0] (/etc/x).source: expected a mapping with uri",
            ),
        ] {
            let e = read(
                &format!("#cloud-config\nwrite_files:\n  - path: /etc/x\n    source: {source}\n"),
                "cairn",
            )
            .unwrap_err();
            assert!(e.contains(says), "{source}: {e}");
        }
    }

    #[test]
    fn the_default_users_keys_come_from_its_entry_too() {
        let p = read(
            "#cloud-config\nusers:\n  - name: cairn\n    ssh_authorized_keys: [k1]\n",
            "cairn",
        )
        .unwrap();
        assert_eq!(p.default_user_keys, ["k1"]);
    }

    #[test]
    fn not_yaml_and_wrong_kinds_are_errors_naming_the_key() {
        let e = read("#cloud-config\nusers: [\n", "cairn").unwrap_err();
        assert!(e.contains("not valid YAML") && e.contains("line"), "{e}");
        let e = read("#cloud-config\n- a\n- b\n", "cairn").unwrap_err();
        assert!(e.contains("must be a mapping"), "{e}");
        let e = read(
            "#cloud-config\nwrite_files:\n  - path: /etc/x\n    encoding: zip\n    content: a\n",
            "cairn",
        )
        .unwrap_err();
        assert!(
            e.contains("write_files[0] (/etc/x).encoding") && e.contains("zip"),
            "{e}"
        );
        let e = read(
            "#cloud-config\nwrite_files:\n  - path: /usr/bin/x\n    content: a\n",
            "cairn",
        )
        .unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        let e = read(
            "#cloud-config\nwrite_files:\n  - path: /etc/x\n    permissions: '0999'\n",
            "cairn",
        )
        .unwrap_err();
        assert!(e.contains("not an octal file mode"), "{e}");
        let e = read("#cloud-config\nhostname: bad_name\n", "cairn").unwrap_err();
        assert!(e.contains("not a valid host name"), "{e}");
        let e = read("#cloud-config\nusers:\n  - name: Bad\n", "cairn").unwrap_err();
        assert!(e.contains("users[0] (Bad)"), "{e}");
        let e = read("#cloud-config\nruncmd: echo\n", "cairn").unwrap_err();
        assert!(e.contains("runcmd: expected a list"), "{e}");
    }

    #[test]
    fn preserve_hostname_keeps_the_hosts_name() {
        let p = read("#cloud-config\nhostname: a\npreserve_hostname: true\n", "cairn").unwrap();
        assert_eq!(p.hostname, None);
    }

    #[test]
    fn user_data_is_classified() {
        assert!(matches!(
            classify(b"#cloud-config\na: 1\n").unwrap(),
            UserData::CloudConfig(_)
        ));
        assert!(matches!(
            classify(b"#!/bin/sh\necho hi\n").unwrap(),
            UserData::Script(_)
        ));
        assert!(matches!(
            classify(br#"{"ignition":{"version":"3.4.0"}}"#).unwrap(),
            UserData::Ignition(_)
        ));
        assert_eq!(classify(b"  \n").unwrap(), UserData::Empty);
        let gz = {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b"#cloud-config\nhostname: z\n").unwrap();
            e.finish().unwrap()
        };
        assert!(matches!(classify(&gz).unwrap(), UserData::CloudConfig(_)));
        let e = classify(b"Content-Type: multipart/mixed; boundary=x\n").unwrap_err();
        assert!(e.contains("MIME multi-part"), "{e}");
        let e = classify(b"hello world").unwrap_err();
        assert!(e.contains("neither") && e.contains("hello world"), "{e}");
    }
}
