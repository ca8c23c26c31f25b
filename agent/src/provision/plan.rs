//! What a provisioning config asks of a host, whatever its format: the one
//! model the Ignition and cloud-config readers produce and the applier
//! carries out. Pure data and the path rule; no I/O.

use std::path::{Component, Path, PathBuf};

use cairn_common::layout::{STATE_LINKS, USR_LOCAL_TARGET};
use serde::{Deserialize, Serialize};

/// Everything one config asks for, in the order the applier follows:
/// groups, users, hostname, directories, files, links, units, network,
/// kernel arguments, then commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub hostname: Option<String>,
    pub groups: Vec<Group>,
    pub users: Vec<User>,
    /// Keys for the image's default user (cloud-config's top-level
    /// `ssh_authorized_keys`, a cloud's metadata).
    pub default_user_keys: Vec<String>,
    pub directories: Vec<Directory>,
    pub files: Vec<File>,
    pub links: Vec<Link>,
    pub units: Vec<Unit>,
    /// systemd-networkd files for `/etc/systemd/network`.
    pub network: Vec<NetworkFile>,
    pub kernel_args: KernelArgs,
    /// Run early at every boot (cloud-config `bootcmd`).
    pub boot_commands: Vec<Command>,
    /// Run once, after everything else is in place (cloud-config `runcmd`,
    /// a `#!` script as user data).
    pub run_commands: Vec<Command>,
    /// What the reader accepted but will not do (cloud-config keys Cairn
    /// does not support), each naming the key.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    pub gecos: Option<String>,
    pub home_dir: Option<String>,
    pub no_create_home: bool,
    pub primary_group: Option<String>,
    pub no_user_group: bool,
    pub groups: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash; `None` leaves the account without a password.
    pub password_hash: Option<String>,
    pub shell: Option<String>,
    pub system: bool,
    /// sudoers rules for this user (cloud-config `sudo`), each like
    /// `ALL=(ALL) NOPASSWD:ALL`.
    pub sudo: Vec<String>,
}

/// A file's owner: by id or name, each optional (root when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub user: Option<Id>,
    pub group: Option<Id>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Number(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Where on the host (resolved: see [`host_path`]).
    pub path: PathBuf,
    pub mode: Option<u32>,
    pub owner: Owner,
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    /// `None`: the file is only created empty if absent (or its mode and
    /// owner set), as Ignition does for a file without contents.
    pub contents: Option<Content>,
    pub append: Vec<Content>,
    pub mode: Option<u32>,
    pub owner: Owner,
    /// Replace what is at the path. Without it, a file that exists and a
    /// config that gives contents is an error (Ignition's rule); cloud-config
    /// always overwrites.
    pub overwrite: bool,
    /// Written after users are created (cloud-config `defer`).
    pub defer: bool,
}

/// A file's bytes: inline (a `data:` URL, cloud-config `content`), or
/// fetched when the plan is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Inline(Vec<u8>),
    Remote(Remote),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The hash of the (decompressed) contents, checked before anything is
    /// applied.
    pub hash: Option<Hash>,
    pub gzip: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    pub algorithm: HashAlgorithm,
    /// Lower-case hex.
    pub hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }
}

impl Hash {
    /// Ignition's `<type>-<value>` form (`sha256-…`, `sha512-…`).
    pub fn parse(s: &str) -> Result<Hash, String> {
        let (kind, hex) = s
            .split_once('-')
            .ok_or_else(|| format!("hash {s:?} is not <type>-<value>"))?;
        let (algorithm, len) = match kind {
            "sha256" => (HashAlgorithm::Sha256, 64),
            "sha512" => (HashAlgorithm::Sha512, 128),
            other => return Err(format!("hash type {other:?} is not sha256 or sha512")),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("hash {s:?}: a {kind} value is {len} hex digits"));
        }
        Ok(Hash {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// Whether `data` has this hash.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.hex == digest_hex(self.algorithm, data)
    }
}

/// The hex digest of `data`.
pub fn digest_hex(algorithm: HashAlgorithm, data: &[u8]) -> String {
    use sha2::Digest as _;
    match algorithm {
        HashAlgorithm::Sha256 => hex::encode(sha2::Sha256::digest(data)),
        HashAlgorithm::Sha512 => hex::encode(sha2::Sha512::digest(data)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: PathBuf,
    pub target: String,
    pub hard: bool,
    pub overwrite: bool,
    pub owner: Owner,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub contents: Option<String>,
    /// `Some(true)`: enabled (and started in this boot); `Some(false)`:
    /// disabled; `None`: left as it is.
    pub enabled: Option<bool>,
    pub mask: bool,
    pub dropins: Vec<Dropin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropin {
    pub name: String,
    /// `None` removes the drop-in.
    pub contents: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFile {
    /// A file name in `/etc/systemd/network`.
    pub name: String,
    pub contents: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    pub should_exist: Vec<String>,
    pub should_not_exist: Vec<String>,
}

impl KernelArgs {
    pub fn is_empty(&self) -> bool {
        self.should_exist.is_empty() && self.should_not_exist.is_empty()
    }
}

/// A command: a shell line (run by `/bin/sh -c`), an argument vector, or a
/// whole script (a `#!` user data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
    Script(Vec<u8>),
}

impl Plan {
    /// One line per kind of effect, for `status` and the console: what
    /// this plan does, e.g. `2 users, 3 files, hostname web-1`.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(h) = &self.hostname {
            out.push(format!("hostname {h}"));
        }
        let mut count = |n: usize, what: &str| {
            if n > 0 {
                out.push(format!("{n} {what}{}", if n == 1 { "" } else { "s" }));
            }
        };
        count(self.groups.len(), "group");
        count(self.users.len(), "user");
        count(self.default_user_keys.len(), "default-user key");
        count(self.directories.len(), "directory");
        count(self.files.len(), "file");
        count(self.links.len(), "link");
        count(self.units.len(), "unit");
        count(self.network.len(), "network file");
        count(
            self.kernel_args.should_exist.len() + self.kernel_args.should_not_exist.len(),
            "kernel argument change",
        );
        count(self.boot_commands.len(), "boot command");
        count(self.run_commands.len(), "run command");
        out
    }
}

/// Where a config's absolute `path` lands on a Cairn host, relative to `/`:
/// through the state links (`/home` is `/var/home`, `/root` is
/// `/var/roothome`, `/usr/local` is `/var/usrlocal`, …), and only under
/// `/etc` or `/var`. `/usr` is the read-only OS; everything else is made at
/// run time. An error says why, naming the path.
pub fn host_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path}: not an absolute path"));
    }
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{path}: `..` is not allowed in a provisioned path"))
            }
        }
    }
    let Some(first) = parts.first().cloned() else {
        return Err(format!("{path}: the root itself cannot be provisioned"));
    };
    let mut resolved: Vec<String> = match STATE_LINKS.iter().find(|(name, _)| *name == first) {
        Some((_, target)) => target.split('/').map(str::to_owned).collect(),
        None if first == "usr" && parts.get(1).map(String::as_str) == Some("local") => {
            parts.remove(0);
            USR_LOCAL_TARGET.split('/').map(str::to_owned).collect()
        }
        None => vec![first],
    };
    resolved.extend(parts.into_iter().skip(1));
    match resolved[0].as_str() {
        "etc" | "var" if resolved.len() > 1 => Ok(resolved.iter().collect()),
        "etc" | "var" => Err(format!("{path}: the directory itself cannot be provisioned")),
        "usr" => Err(format!(
            "{path}: /usr is Cairn's read-only OS; provision files under /etc or /var"
        )),
        _ => Err(format!(
            "{path}: a Cairn host keeps state only under /etc and /var (and /home, /root, /opt, /srv, /mnt, /usr/local, which live in /var)"
        )),
    }
}

/// Whether `name` is a systemd unit name a config may create: one path
/// component with a unit type suffix.
pub fn check_unit_name(name: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".device",
        ".mount",
        ".automount",
        ".swap",
        ".target",
        ".path",
        ".timer",
        ".slice",
        ".scope",
    ];
    if name.is_empty() || name.contains('/') || name.starts_with('.') || !SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err(format!("{name:?} is not a systemd unit name"));
    }
    Ok(())
}

/// Whether `name` is a user or group name `useradd` takes (Debian's rule,
/// without its warning-only extensions).
pub fn check_account_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid user or group name"))
    }
}

/// Whether `name` is a host name (RFC 1123 labels, at most 64 characters
/// for the kernel's host name).
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_land_under_etc_and_var_through_the_state_links() {
        assert_eq!(host_path("/etc/motd").unwrap(), Path::new("etc/motd"));
        assert_eq!(host_path("/var/lib/x").unwrap(), Path::new("var/lib/x"));
        assert_eq!(
            host_path("/home/core/.bashrc").unwrap(),
            Path::new("var/home/core/.bashrc")
        );
        assert_eq!(
            host_path("/root/.ssh/authorized_keys").unwrap(),
            Path::new("var/roothome/.ssh/authorized_keys")
        );
        assert_eq!(
            host_path("/usr/local/bin/tool").unwrap(),
            Path::new("var/usrlocal/bin/tool")
        );
        assert_eq!(host_path("/opt/app/run").unwrap(), Path::new("var/opt/app/run"));
        assert_eq!(host_path("/etc//./a").unwrap(), Path::new("etc/a"));
    }

    #[test]
    fn paths_outside_etc_and_var_are_refused_naming_why() {
        let e = host_path("/usr/bin/evil").unwrap_err();
        assert!(e.contains("/usr/bin/evil") && e.contains("read-only"), "{e}");
        let e = host_path("/boot/x").unwrap_err();
        assert!(e.contains("only under /etc and /var"), "{e}");
        assert!(host_path("etc/relative").unwrap_err().contains("not an absolute path"));
        assert!(host_path("/etc/../usr/bin/x").unwrap_err().contains("`..`"));
        assert!(host_path("/").is_err());
        assert!(host_path("/etc").unwrap_err().contains("directory itself"));
        // /media is a link into /run: nothing provisioned there survives.
        assert!(host_path("/media/x").is_err());
    }

    #[test]
    fn hashes_parse_in_ignitions_form_and_check_data() {
        let h = Hash::parse("sha256-2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824").unwrap();
        assert_eq!(h.algorithm, HashAlgorithm::Sha256);
        assert!(h.matches(b"hello"));
        assert!(!h.matches(b"hello!"));
        let h512 = Hash::parse("sha512-9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043").unwrap();
        assert!(h512.matches(b"hello"));
        assert!(Hash::parse("md5-abc").unwrap_err().contains("not sha256 or sha512"));
        assert!(Hash::parse("sha256-abc").unwrap_err().contains("64 hex digits"));
        assert!(Hash::parse("nohash").unwrap_err().contains("<type>-<value>"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_unit_name("web.service").is_ok());
        assert!(check_unit_name("getty@tty2.service").is_ok());
        assert!(check_unit_name("../x.service").is_err());
        assert!(check_unit_name("web").is_err());
        assert!(check_account_name("core").is_ok());
        assert!(check_account_name("svc_1.a-b").is_ok());
        assert!(check_account_name("Root").is_err());
        assert!(check_account_name("-x").is_err());
        assert!(check_account_name("123").is_err());
        assert!(check_hostname("web-1.example.com").is_ok());
        assert!(check_hostname("-bad").is_err());
        assert!(check_hostname("a_b").is_err());
    }

    #[test]
    fn summary_counts_each_kind_of_effect() {
        let plan = Plan {
            hostname: Some("web-1".into()),
            users: vec![User::default(), User::default()],
            files: vec![File {
                path: "etc/x".into(),
                contents: None,
                append: vec![],
                mode: None,
                owner: Owner::default(),
                overwrite: false,
                defer: false,
            }],
            ..Plan::default()
        };
        assert_eq!(plan.summary(), ["hostname web-1", "2 users", "1 file"]);
    }
}
