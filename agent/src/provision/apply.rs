//! Carrying out a resolved [`Plan`] on a host: files under a root folder
//! (`/` on a host, a temporary folder in tests), and the system's own
//! tools (`useradd`, `systemctl`, …) behind [`System`], so the order and
//! the arguments are unit-tested without root.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_common::fsutil::write_atomic;

use super::plan::{host_path, Command, Content, File, Id, KernelArgs, Owner, Plan, User};

/// What the applier asks of the running system.
pub trait System {
    /// Run a program to completion; an error carries its output.
    fn run(&mut self, argv: &[String]) -> Result<(), String>;
    /// Run a program and return what it printed.
    fn output(&mut self, argv: &[String]) -> Result<String, String>;
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String>;
    /// The kernel's host name, for this boot (`/etc/hostname` is written too).
    fn set_hostname(&mut self, name: &str) -> Result<(), String>;
    /// Deploy the booted release again, to boot next with exactly `args`
    /// (as the agent's updates do, with `--karg-none`).
    fn deploy_kernel_args(&mut self, args: &[String]) -> Result<(), String>;
}

/// Where provisioned units, drop-ins and sudo rules go, relative to the root.
const UNIT_DIR: &str = "etc/systemd/system";
const NETWORK_DIR: &str = "etc/systemd/network";
const SUDOERS_DIR: &str = "etc/sudoers.d";
/// Where systemd-sysext looks for system extensions that provisioning can
/// place (state lives under /etc and /var), relative to the root.
const EXTENSION_DIRS: &[&str] = &["etc/extensions", "var/lib/extensions"];

/// Is `path` (relative to the root) an extension systemd-sysext would merge?
fn is_extension(path: &Path) -> bool {
    EXTENSION_DIRS
        .iter()
        .any(|d| path.starts_with(d) && path != Path::new(d))
}

/// What applying did, one line per effect, for the console and `status`.
pub type Log = Vec<String>;

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Only the systemd-networkd files of `plan`, for a config whose other
/// parts wait for the network: written before networkd starts, as
/// cloud-init's local stage writes the network configuration whatever the
/// rest of the user data needs.
pub fn apply_network(plan: &Plan, root: &Path, sys: &mut dyn System) -> Result<Log, (String, Log)> {
    let mut a = Applier {
        root,
        sys,
        log: Vec::new(),
    };
    match a.network(plan) {
        Ok(()) => Ok(a.log),
        Err(e) => Err((e, a.log)),
    }
}

/// Apply `plan` to the host rooted at `root`. `default_user` receives
/// `plan.default_user_keys`. Every content must be inline already (see
/// `resolve`). The first failure stops and is returned with what was done
/// before it.
pub fn apply(plan: &Plan, root: &Path, default_user: &str, sys: &mut dyn System) -> Result<Log, (String, Log)> {
    let mut a = Applier {
        root,
        sys,
        log: Vec::new(),
    };
    match a.apply(plan, default_user) {
        Ok(()) => Ok(a.log),
        Err(e) => Err((e, a.log)),
    }
}

struct Applier<'a> {
    root: &'a Path,
    sys: &'a mut dyn System,
    log: Log,
}

impl Applier<'_> {
    fn apply(&mut self, plan: &Plan, default_user: &str) -> Result<(), String> {
        for g in &plan.groups {
            if group_id(self.root, &g.name).is_some() {
                continue;
            }
            let mut cmd = argv(&["groupadd"]);
            if let Some(gid) = g.gid {
                cmd.extend(["--gid".into(), gid.to_string()]);
            }
            if g.system {
                cmd.push("--system".into());
            }
            cmd.push(g.name.clone());
            self.sys.run(&cmd)?;
            self.log.push(format!("group {} created", g.name));
        }
        for u in &plan.users {
            self.user(u)?;
        }
        if !plan.default_user_keys.is_empty() {
            self.authorized_keys(default_user, &plan.default_user_keys)?;
        }
        if let Some(h) = &plan.hostname {
            self.write(Path::new("etc/hostname"), format!("{h}\n").as_bytes(), 0o644)?;
            self.log.push(format!("hostname {h}"));
        }
        for d in &plan.directories {
            let path = self.root.join(&d.path);
            if d.overwrite && path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                fs::remove_file(&path).map_err(|e| format!("/{}: {e}", d.path.display()))?;
            }
            fs::create_dir_all(&path).map_err(|e| format!("/{}: {e}", d.path.display()))?;
            set_mode(&path, d.mode.unwrap_or(0o755))?;
            self.own(&path, &d.owner)?;
            self.log.push(format!("directory /{}", d.path.display()));
        }
        for f in plan.files.iter().filter(|f| !f.defer) {
            self.file(f)?;
        }
        for l in &plan.links {
            let path = self.root.join(&l.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("/{}: {e}", l.path.display()))?;
            }
            if path.symlink_metadata().is_ok() {
                let same = !l.hard && fs::read_link(&path).is_ok_and(|t| t == Path::new(&l.target));
                if same {
                    continue;
                }
                if !l.overwrite {
                    return Err(format!(
                        "/{}: something is there already; set overwrite to replace it",
                        l.path.display()
                    ));
                }
                fs::remove_file(&path).map_err(|e| format!("/{}: {e}", l.path.display()))?;
            }
            if l.hard {
                let target = host_path(&l.target)?;
                fs::hard_link(self.root.join(target), &path)
            } else {
                symlink(&l.target, &path)
            }
            .map_err(|e| format!("/{} -> {}: {e}", l.path.display(), l.target))?;
            self.log.push(format!("link /{} -> {}", l.path.display(), l.target));
        }
        // Extensions are merged before units are enabled: a unit a config
        // enables may come in one (kubelet.service in a kubelet extension).
        let placed_early = plan.files.iter().filter(|f| !f.defer).map(|f| f.path.as_path());
        self.merge_extensions(placed_early.chain(plan.links.iter().map(|l| l.path.as_path())))?;
        self.units(plan)?;
        // Network files come from a NoCloud seed, read by the local stage,
        // before networkd starts: it reads them when it does.
        self.network(plan)?;
        for f in plan.files.iter().filter(|f| f.defer) {
            self.file(f)?;
        }
        self.merge_extensions(plan.files.iter().filter(|f| f.defer).map(|f| f.path.as_path()))?;
        // `/etc/hostname`, written by `hostname` or as a file, names the
        // host in this boot.
        sync_hostname(self.root, &mut *self.sys)?;
        Ok(())
    }

    fn network(&mut self, plan: &Plan) -> Result<(), String> {
        for n in &plan.network {
            self.write(&Path::new(NETWORK_DIR).join(&n.name), n.contents.as_bytes(), 0o644)?;
            self.log.push(format!("network /{NETWORK_DIR}/{}", n.name));
        }
        Ok(())
    }

    fn write(&mut self, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("/{}: {e}", parent.strip_prefix(self.root).unwrap_or(parent).display()))?;
        }
        write_atomic(&path, bytes).map_err(|e| format!("/{}: {e:#}", rel.display()))?;
        set_mode(&path, mode)
    }

    fn ids(&self, owner: &Owner) -> Result<Option<(u32, u32)>, String> {
        if owner.user.is_none() && owner.group.is_none() {
            return Ok(None);
        }
        let uid = match &owner.user {
            None => 0,
            Some(Id::Number(n)) => *n,
            Some(Id::Name(n)) => passwd_entry(self.root, n)
                .map(|e| e.uid)
                .ok_or_else(|| format!("owner {n}: no such user"))?,
        };
        let gid = match &owner.group {
            None => match &owner.user {
                Some(Id::Name(n)) => passwd_entry(self.root, n).map(|e| e.gid).unwrap_or(0),
                _ => 0,
            },
            Some(Id::Number(n)) => *n,
            Some(Id::Name(n)) => group_id(self.root, n).ok_or_else(|| format!("group {n}: no such group"))?,
        };
        Ok(Some((uid, gid)))
    }

    fn own(&mut self, path: &Path, owner: &Owner) -> Result<(), String> {
        if let Some((uid, gid)) = self.ids(owner)? {
            self.sys.chown(path, uid, gid)?;
        }
        Ok(())
    }

    fn file(&mut self, f: &File) -> Result<(), String> {
        let path = self.root.join(&f.path);
        let shown = format!("/{}", f.path.display());
        let exists = path.symlink_metadata().is_ok();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{shown}: {e}"))?;
        }
        match &f.contents {
            Some(c) => {
                if exists && !f.overwrite {
                    return Err(format!("{shown}: a file is there already; set overwrite to replace it"));
                }
                if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    return Err(format!("{shown}: is a directory"));
                }
                write_atomic(&path, inline(c, &shown)?).map_err(|e| format!("{shown}: {e:#}"))?;
            }
            None if !exists => {
                fs::write(&path, b"").map_err(|e| format!("{shown}: {e}"))?;
            }
            None => {}
        }
        if !f.append.is_empty() {
            use std::io::Write as _;
            let mut out = fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("{shown}: {e}"))?;
            for c in &f.append {
                out.write_all(inline(c, &shown)?).map_err(|e| format!("{shown}: {e}"))?;
            }
            out.sync_all().map_err(|e| format!("{shown}: {e}"))?;
        }
        let keep_mode = exists && f.contents.is_none() && f.mode.is_none();
        if !keep_mode {
            set_mode(&path, f.mode.unwrap_or(0o644))?;
        }
        self.own(&path, &f.owner)?;
        self.log.push(format!("file {shown}"));
        Ok(())
    }

    fn user(&mut self, u: &User) -> Result<(), String> {
        match passwd_entry(self.root, &u.name) {
            None => {
                let mut cmd = argv(&["useradd"]);
                cmd.push(
                    if u.no_create_home {
                        "--no-create-home"
                    } else {
                        "--create-home"
                    }
                    .into(),
                );
                if let Some(uid) = u.uid {
                    cmd.extend(["--uid".into(), uid.to_string()]);
                }
                if let Some(g) = &u.gecos {
                    cmd.extend(["--comment".into(), g.clone()]);
                }
                if let Some(h) = &u.home_dir {
                    cmd.extend(["--home-dir".into(), h.clone()]);
                }
                if let Some(g) = &u.primary_group {
                    if group_id(self.root, g).is_some() {
                        cmd.extend(["--gid".into(), g.clone()]);
                    } else {
                        // cloud-init's primary_group names a group to create;
                        // useradd's user group has the user's name.
                        cmd.push("--user-group".into());
                    }
                } else if u.no_user_group {
                    cmd.push("--no-user-group".into());
                }
                if !u.groups.is_empty() {
                    cmd.extend(["--groups".into(), u.groups.join(",")]);
                }
                if let Some(s) = &u.shell {
                    cmd.extend(["--shell".into(), s.clone()]);
                }
                if u.system {
                    cmd.push("--system".into());
                }
                // Without a hash, no password at all (`*`): keys log in,
                // passwords never do.
                cmd.extend([
                    "--password".into(),
                    u.password_hash.clone().unwrap_or_else(|| "*".into()),
                ]);
                cmd.push(u.name.clone());
                self.sys.run(&cmd)?;
                self.log.push(format!("user {} created", u.name));
            }
            Some(_) => {
                let mut cmd = argv(&["usermod"]);
                if !u.groups.is_empty() {
                    cmd.extend(["--append".into(), "--groups".into(), u.groups.join(",")]);
                }
                if let Some(s) = &u.shell {
                    cmd.extend(["--shell".into(), s.clone()]);
                }
                if let Some(h) = &u.password_hash {
                    cmd.extend(["--password".into(), h.clone()]);
                }
                if cmd.len() > 1 {
                    cmd.push(u.name.clone());
                    self.sys.run(&cmd)?;
                    self.log.push(format!("user {} updated", u.name));
                }
            }
        }
        if !u.ssh_authorized_keys.is_empty() {
            self.authorized_keys(&u.name, &u.ssh_authorized_keys)?;
        }
        if !u.sudo.is_empty() {
            let file = Path::new(SUDOERS_DIR).join(format!("90-cairn-provision-{}", u.name));
            let rules: String = u.sudo.iter().map(|r| format!("{} {r}\n", u.name)).collect();
            let staged = Path::new(SUDOERS_DIR).join(format!(".90-cairn-provision-{}.new", u.name));
            self.write(&staged, rules.as_bytes(), 0o440)?;
            let check = self.sys.run(&argv(&[
                "visudo",
                "--check",
                "--quiet",
                "--file",
                &format!("/{}", staged.display()),
            ]));
            if let Err(e) = check {
                let _ = fs::remove_file(self.root.join(&staged));
                return Err(format!("sudo rules of {}: {e}", u.name));
            }
            fs::rename(self.root.join(&staged), self.root.join(&file))
                .map_err(|e| format!("/{}: {e}", file.display()))?;
            self.log.push(format!("sudo rules of {}", u.name));
        }
        Ok(())
    }

    /// Add `keys` to the user's `~/.ssh/authorized_keys`, where stock sshd
    /// reads them, keeping the keys already there.
    fn authorized_keys(&mut self, name: &str, keys: &[String]) -> Result<(), String> {
        let entry = passwd_entry(self.root, name).ok_or_else(|| format!("{name}: no such user for its SSH keys"))?;
        let home = host_path(&entry.home).map_err(|e| format!("the home of {name}: {e}"))?;
        let ssh = self.root.join(&home).join(".ssh");
        fs::create_dir_all(&ssh).map_err(|e| format!("/{}/.ssh: {e}", home.display()))?;
        set_mode(&ssh, 0o700)?;
        self.sys.chown(&ssh, entry.uid, entry.gid)?;
        let file = ssh.join("authorized_keys");
        let existing = fs::read_to_string(&file).unwrap_or_default();
        let have: BTreeSet<&str> = existing.lines().map(str::trim).collect();
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let mut added = 0;
        for k in keys {
            let k = k.trim();
            if !k.is_empty() && !have.contains(k) && !text.lines().any(|l| l.trim() == k) {
                text.push_str(k);
                text.push('\n');
                added += 1;
            }
        }
        write_atomic(&file, text.as_bytes()).map_err(|e| format!("{}: {e:#}", file.display()))?;
        set_mode(&file, 0o600)?;
        self.sys.chown(&file, entry.uid, entry.gid)?;
        self.log.push(format!("{added} SSH key(s) for {name}"));
        Ok(())
    }

    /// systemd-sysext merged the extensions present at boot before
    /// provisioning ran: if `placed` put any in its folders, merge again.
    fn merge_extensions<'p>(&mut self, placed: impl Iterator<Item = &'p Path>) -> Result<(), String> {
        let extensions: Vec<&Path> = placed.filter(|p| is_extension(p)).collect();
        if extensions.is_empty() {
            return Ok(());
        }
        self.sys
            .run(&argv(&["systemd-sysext", "refresh"]))
            .map_err(|e| format!("merging the system extensions it placed (systemd-sysext refresh): {e}"))?;
        for e in extensions {
            self.log.push(format!("system extension /{} merged", e.display()));
        }
        Ok(())
    }

    fn units(&mut self, plan: &Plan) -> Result<(), String> {
        if plan.units.is_empty() {
            return Ok(());
        }
        for u in &plan.units {
            let unit_path = Path::new(UNIT_DIR).join(&u.name);
            if let Some(c) = &u.contents {
                self.write(&unit_path, c.as_bytes(), 0o644)?;
            }
            for d in &u.dropins {
                let rel = Path::new(UNIT_DIR).join(format!("{}.d", u.name)).join(&d.name);
                match &d.contents {
                    Some(c) => self.write(&rel, c.as_bytes(), 0o644)?,
                    None => {
                        let _ = fs::remove_file(self.root.join(&rel));
                    }
                }
            }
            if u.mask {
                let path = self.root.join(&unit_path);
                if path.symlink_metadata().is_ok() {
                    fs::remove_file(&path).map_err(|e| format!("/{}: {e}", unit_path.display()))?;
                }
                symlink("/dev/null", &path).map_err(|e| format!("/{}: {e}", unit_path.display()))?;
            }
            self.log.push(format!(
                "unit {}{}",
                u.name,
                match (u.mask, u.enabled) {
                    (true, _) => " (masked)",
                    (_, Some(true)) => " (enabled)",
                    (_, Some(false)) => " (disabled)",
                    _ => "",
                }
            ));
        }
        self.sys.run(&argv(&["systemctl", "daemon-reload"]))?;
        let enable: Vec<String> = plan
            .units
            .iter()
            .filter(|u| u.enabled == Some(true) && !u.mask)
            .map(|u| u.name.clone())
            .collect();
        let disable: Vec<String> = plan
            .units
            .iter()
            .filter(|u| u.enabled == Some(false))
            .map(|u| u.name.clone())
            .collect();
        if !disable.is_empty() {
            let mut cmd = argv(&["systemctl", "disable", "--no-reload"]);
            cmd.extend(disable);
            self.sys.run(&cmd)?;
        }
        if !enable.is_empty() {
            let mut cmd = argv(&["systemctl", "enable", "--no-reload"]);
            cmd.extend(enable);
            self.sys.run(&cmd)?;
            self.sys.run(&argv(&["systemctl", "daemon-reload"]))?;
            // The boot's transaction was computed before these units were
            // enabled: asking for the default target again adds what it now
            // wants, so they start in this boot, in their order.
            self.sys
                .run(&argv(&["systemctl", "start", "--no-block", "default.target"]))?;
        }
        Ok(())
    }
}

/// The host's name: `/etc/hostname`'s (set by a config or an operator),
/// else the one the platform's metadata gives (every boot, as Afterburn
/// does), else os-release's `DEFAULT_HOSTNAME`. A platform name that is not
/// a valid host name gives its first label.
pub fn configured_hostname(
    etc_hostname: Option<&str>,
    platform: Option<&str>,
    os_release: Option<&str>,
) -> Option<String> {
    let from_file = etc_hostname.and_then(|t| {
        t.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
    });
    let from_platform = || {
        let name = platform?.trim();
        if super::plan::check_hostname(name).is_ok() {
            return Some(name.to_owned());
        }
        let first = name.split('.').next()?;
        super::plan::check_hostname(first).is_ok().then(|| first.to_owned())
    };
    from_file.or_else(from_platform).or_else(|| {
        os_release?.lines().find_map(|l| {
            l.strip_prefix("DEFAULT_HOSTNAME=")
                .map(|v| v.trim().trim_matches('"').to_owned())
                .filter(|v| !v.is_empty())
        })
    })
}

/// Where the platform's metadata names the host for this boot (written
/// by provisioning's network stage, read by the next naming).
pub const PLATFORM_HOSTNAME: &str = "run/cairn/platform-hostname";

/// Give the kernel the host's configured name. systemd names the host in
/// the initramfs (whose files do not have this host's name) and does not
/// name it again after switching to the real root, so provisioning does,
/// every boot, after writing `/etc/hostname` and after reading the
/// platform's metadata.
pub fn sync_hostname(root: &Path, sys: &mut dyn System) -> Result<(), String> {
    let file = fs::read_to_string(root.join("etc/hostname")).ok();
    let platform = fs::read_to_string(root.join(PLATFORM_HOSTNAME)).ok();
    let os_release = fs::read_to_string(root.join("usr/lib/os-release")).ok();
    match configured_hostname(file.as_deref(), platform.as_deref(), os_release.as_deref()) {
        Some(name) => sys.set_hostname(&name),
        None => Ok(()),
    }
}

/// The file of a user's SSH keys that the platform's metadata gives,
/// replaced whole at every boot (keys removed from the metadata go too),
/// next to the keys the user keeps in `authorized_keys`; sshd reads both.
pub const METADATA_KEYS: &str = ".ssh/authorized_keys.d/cairn-metadata";

/// Write `keys` as `user`'s metadata keys ([`METADATA_KEYS`]).
pub fn write_metadata_keys(root: &Path, user: &str, keys: &[String], sys: &mut dyn System) -> Result<(), String> {
    let entry = passwd_entry(root, user).ok_or_else(|| format!("{user}: no such user for the platform's SSH keys"))?;
    let home = root.join(host_path(&entry.home).map_err(|e| format!("the home of {user}: {e}"))?);
    let file = home.join(METADATA_KEYS);
    let mut dir = home.clone();
    for part in [".ssh", "authorized_keys.d"] {
        dir.push(part);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        set_mode(&dir, 0o700)?;
        sys.chown(&dir, entry.uid, entry.gid)?;
    }
    let text: String = keys.iter().map(|k| format!("{}\n", k.trim())).collect();
    write_atomic(&file, text.as_bytes()).map_err(|e| format!("{}: {e:#}", file.display()))?;
    set_mode(&file, 0o600)?;
    sys.chown(&file, entry.uid, entry.gid)
}

fn inline<'c>(c: &'c Content, shown: &str) -> Result<&'c [u8], String> {
    match c {
        Content::Inline(b) => Ok(b),
        Content::Remote(r) => Err(format!("{shown}: {} was not fetched before applying", r.url)),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))
}

/// A line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The user `name` in `root`'s `/etc/passwd`.
pub fn passwd_entry(root: &Path, name: &str) -> Option<PasswdEntry> {
    let text = fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| PasswdEntry {
            uid: f[2].parse().unwrap_or(0),
            gid: f[3].parse().unwrap_or(0),
            home: f[5].to_owned(),
        })
    })
}

/// The id of group `name` in `root`'s `/etc/group`.
pub fn group_id(root: &Path, name: &str) -> Option<u32> {
    let text = fs::read_to_string(root.join("etc/group")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

/// Deploy the arguments `changes` asks for, given the booted `cmdline`.
/// `Ok(None)`: the booted arguments already are as asked, nothing to do;
/// `Ok(Some(line))`: deployed, the host must reboot once to boot with them.
pub fn deploy_kernel_args(changes: &KernelArgs, cmdline: &str, sys: &mut dyn System) -> Result<Option<String>, String> {
    let booted = crate::kargs::host_args(cmdline);
    let Some(args) = crate::kargs::with_changes(&booted, &changes.should_exist, &changes.should_not_exist) else {
        return Ok(None);
    };
    sys.deploy_kernel_args(&args)
        .map_err(|e| format!("kernelArguments: deploying `{}`: {e}", args.join(" ")))?;
    Ok(Some(format!("kernel arguments of the next boot: {}", args.join(" "))))
}

/// Run `commands` (cloud-config `bootcmd`/`runcmd`, a user-data script) in
/// order, each through `sys`; scripts are written to `script_dir` first.
/// Returns one line per command; the first failure stops.
pub fn run_commands(commands: &[Command], script_dir: &Path, sys: &mut dyn System) -> Result<Log, (String, Log)> {
    let mut log = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let (cmd, shown) = match c {
            Command::Shell(line) => (argv(&["/bin/sh", "-c", line]), line.clone()),
            Command::Argv(words) => (words.clone(), words.join(" ")),
            Command::Script(bytes) => {
                let path: PathBuf = script_dir.join(format!("user-data-{i}"));
                if let Err(e) = fs::create_dir_all(script_dir)
                    .and_then(|()| fs::write(&path, bytes))
                    .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o700)))
                {
                    return Err((format!("{}: {e}", path.display()), log));
                }
                (vec![path.display().to_string()], "the user-data script".to_owned())
            }
        };
        match sys.run(&cmd) {
            Ok(()) => log.push(format!("ran {shown}")),
            Err(e) => return Err((format!("{shown}: {e}"), log)),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::plan::{Directory, Dropin, Group, Link, NetworkFile, Unit};

    /// Records what it is asked, and does `useradd`'s part on the files.
    #[derive(Default)]
    struct Recorder {
        root: PathBuf,
        ran: Vec<String>,
        chowned: Vec<(PathBuf, u32, u32)>,
        hostname: Option<String>,
        fail: Option<&'static str>,
    }

    impl System for Recorder {
        fn run(&mut self, argv: &[String]) -> Result<(), String> {
            let line = argv.join(" ");
            self.ran.push(line.clone());
            if self.fail.is_some_and(|f| line.starts_with(f)) {
                return Err("exit status 1".into());
            }
            if argv[0] == "useradd" {
                let name = argv.last().unwrap();
                let mut passwd = fs::read_to_string(self.root.join("etc/passwd")).unwrap_or_default();
                passwd.push_str(&format!("{name}:x:1001:1001::/home/{name}:/bin/sh\n"));
                fs::write(self.root.join("etc/passwd"), passwd).unwrap();
            }
            Ok(())
        }
        fn output(&mut self, argv: &[String]) -> Result<String, String> {
            self.run(argv).map(|()| String::new())
        }
        fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), String> {
            self.chowned
                .push((path.strip_prefix(&self.root).unwrap().to_owned(), uid, gid));
            Ok(())
        }
        fn set_hostname(&mut self, name: &str) -> Result<(), String> {
            self.hostname = Some(name.to_owned());
            Ok(())
        }
        fn deploy_kernel_args(&mut self, args: &[String]) -> Result<(), String> {
            self.run(&[vec!["stage-kargs".to_owned()], args.to_vec()].concat())
        }
    }

    fn host() -> (tempfile::TempDir, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\ncairn:x:1000:1000::/home/cairn:/bin/bash\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nsudo:x:27:cairn\ncairn:x:1000:\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/hostname"), "cairn\n").unwrap();
        let rec = Recorder {
            root: dir.path().to_owned(),
            ..Recorder::default()
        };
        (dir, rec)
    }

    fn file(path: &str, data: &[u8], overwrite: bool) -> File {
        File {
            path: host_path(path).unwrap(),
            contents: Some(Content::Inline(data.to_vec())),
            append: vec![],
            mode: None,
            owner: Owner::default(),
            overwrite,
            defer: false,
        }
    }

    #[test]
    fn extensions_it_places_are_merged_before_units_are_enabled() {
        let (dir, mut rec) = host();
        let plan = Plan {
            files: vec![
                file("/var/lib/extensions/kubelet.raw", b"image", false),
                file("/var/lib/extensionsX/not-one", b"x", false),
            ],
            links: vec![Link {
                path: host_path("/etc/extensions/tools.raw").unwrap(),
                target: "/var/lib/store/tools.raw".into(),
                hard: false,
                overwrite: false,
                owner: Owner::default(),
            }],
            units: vec![Unit {
                name: "kubelet.service".into(),
                enabled: Some(true),
                ..Unit::default()
            }],
            ..Plan::default()
        };
        let log = apply(&plan, dir.path(), "cairn", &mut rec).unwrap();
        assert_eq!(
            rec.ran,
            [
                "systemd-sysext refresh",
                "systemctl daemon-reload",
                "systemctl enable --no-reload kubelet.service",
                "systemctl daemon-reload",
                "systemctl start --no-block default.target",
            ]
        );
        assert!(
            log.contains(&"system extension /var/lib/extensions/kubelet.raw merged".to_owned()),
            "{log:?}"
        );
        assert!(
            log.contains(&"system extension /etc/extensions/tools.raw merged".to_owned()),
            "{log:?}"
        );

        let (dir, mut rec) = host();
        let late = Plan {
            files: vec![File {
                defer: true,
                ..file("/etc/extensions/debug.raw", b"image", false)
            }],
            ..Plan::default()
        };
        apply(&late, dir.path(), "cairn", &mut rec).unwrap();
        assert_eq!(
            rec.ran,
            ["systemd-sysext refresh"],
            "a deferred one is merged once written"
        );
        let (dir, mut rec) = host();
        let none = Plan {
            files: vec![file("/etc/motd", b"hi", false)],
            ..Plan::default()
        };
        apply(&none, dir.path(), "cairn", &mut rec).unwrap();
        assert!(rec.ran.is_empty(), "{:?}", rec.ran);
    }

    #[test]
    fn before_the_network_only_the_network_files_are_written() {
        let (dir, mut rec) = host();
        let plan = Plan {
            hostname: Some("web-1".into()),
            files: vec![file("/etc/motd", b"hello\n", false)],
            network: vec![NetworkFile {
                name: "10-cairn-lan.network".into(),
                contents: "[Match]\n".into(),
            }],
            ..Plan::default()
        };
        let log = apply_network(&plan, dir.path(), &mut rec).unwrap();
        assert_eq!(log, ["network /etc/systemd/network/10-cairn-lan.network"]);
        assert!(dir.path().join("etc/systemd/network/10-cairn-lan.network").is_file());
        assert!(!dir.path().join("etc/motd").exists());
        assert_eq!(fs::read_to_string(dir.path().join("etc/hostname")).unwrap(), "cairn\n");
        assert!(rec.ran.is_empty() && rec.hostname.is_none());
    }

    #[test]
    fn a_plan_is_applied_in_order_with_the_systems_tools() {
        let (dir, mut rec) = host();
        let root = dir.path();
        let plan = Plan {
            hostname: Some("web-1".into()),
            groups: vec![Group {
                name: "docker".into(),
                gid: Some(990),
                system: true,
            }],
            users: vec![User {
                name: "core".into(),
                groups: vec!["sudo".into(), "docker".into()],
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA core".into()],
                sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
                ..User::default()
            }],
            default_user_keys: vec!["ssh-ed25519 BBBB default".into()],
            directories: vec![Directory {
                path: host_path("/var/lib/app").unwrap(),
                mode: Some(0o750),
                owner: Owner {
                    user: Some(Id::Name("core".into())),
                    group: None,
                },
                overwrite: false,
            }],
            files: vec![
                File {
                    defer: true,
                    ..file("/var/lib/app/late", b"late", false)
                },
                file("/etc/motd", b"hello\n", false),
            ],
            links: vec![Link {
                path: host_path("/etc/localtime").unwrap(),
                target: "../usr/share/zoneinfo/UTC".into(),
                hard: false,
                overwrite: false,
                owner: Owner::default(),
            }],
            units: vec![
                Unit {
                    name: "hello.service".into(),
                    contents: Some("[Service]\nExecStart=/bin/true\n".into()),
                    enabled: Some(true),
                    ..Unit::default()
                },
                Unit {
                    name: "containerd.service".into(),
                    dropins: vec![Dropin {
                        name: "10-a.conf".into(),
                        contents: Some("[Service]\n".into()),
                    }],
                    ..Unit::default()
                },
                Unit {
                    name: "apt-daily.timer".into(),
                    mask: true,
                    ..Unit::default()
                },
            ],
            network: vec![NetworkFile {
                name: "10-x.network".into(),
                contents: "[Match]\n".into(),
            }],
            ..Plan::default()
        };
        let log = apply(&plan, root, "cairn", &mut rec).unwrap();
        assert_eq!(
            rec.ran,
            [
                "groupadd --gid 990 --system docker",
                "useradd --create-home --groups sudo,docker --password * core",
                "visudo --check --quiet --file /etc/sudoers.d/.90-cairn-provision-core.new",
                "systemctl daemon-reload",
                "systemctl enable --no-reload hello.service",
                "systemctl daemon-reload",
                "systemctl start --no-block default.target",
            ]
        );
        assert_eq!(rec.hostname.as_deref(), Some("web-1"));
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "web-1\n");
        assert_eq!(
            fs::read_to_string(root.join("var/home/core/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA core\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("var/home/cairn/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 BBBB default\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/sudoers.d/90-cairn-provision-core")).unwrap(),
            "core ALL=(ALL) NOPASSWD:ALL\n"
        );
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/sudoers.d/90-cairn-provision-core"), 0o440);
        assert_eq!(mode("var/home/core/.ssh/authorized_keys"), 0o600);
        assert_eq!(mode("var/lib/app"), 0o750);
        assert_eq!(mode("etc/motd"), 0o644);
        assert!(rec.chowned.contains(&(PathBuf::from("var/lib/app"), 1001, 1001)));
        assert_eq!(fs::read_to_string(root.join("var/lib/app/late")).unwrap(), "late");
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/apt-daily.timer")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(root.join("etc/systemd/system/containerd.service.d/10-a.conf").exists());
        assert!(root.join("etc/systemd/network/10-x.network").exists());
        assert!(log.iter().any(|l| l == "unit hello.service (enabled)"), "{log:?}");
    }

    #[test]
    fn the_host_is_named_by_etc_hostname_else_os_releases_default() {
        assert_eq!(
            configured_hostname(
                Some("# comment\n\nweb-1\n"),
                Some("ip-10-0-0-1.ec2.internal"),
                Some("DEFAULT_HOSTNAME=cairn\n")
            )
            .as_deref(),
            Some("web-1")
        );
        assert_eq!(
            configured_hostname(None, None, Some("ID=cairn\nDEFAULT_HOSTNAME=\"cairn\"\n")).as_deref(),
            Some("cairn")
        );
        assert_eq!(configured_hostname(Some("\n"), None, None), None);
        // The platform's name, when no file names the host; a name too
        // long for the kernel gives its first label.
        assert_eq!(
            configured_hostname(None, Some("ip-10-0-0-1.ec2.internal\n"), Some("DEFAULT_HOSTNAME=cairn")).as_deref(),
            Some("ip-10-0-0-1.ec2.internal")
        );
        let long = format!("{}.{}.example", "a".repeat(40), "b".repeat(40));
        assert_eq!(configured_hostname(None, Some(&long), None), Some("a".repeat(40)));
        // An Ignition config names the host by writing the file.
        let (dir, mut rec) = host();
        fs::remove_file(dir.path().join("etc/hostname")).unwrap();
        let plan = Plan {
            files: vec![file("/etc/hostname", b"ign-host", false)],
            ..Plan::default()
        };
        apply(&plan, dir.path(), "cairn", &mut rec).unwrap();
        assert_eq!(rec.hostname.as_deref(), Some("ign-host"));
    }

    #[test]
    fn an_existing_file_is_kept_unless_overwrite_is_set() {
        let (dir, mut rec) = host();
        let plan = Plan {
            files: vec![file("/etc/hostname", b"other\n", false)],
            ..Plan::default()
        };
        let (e, _) = apply(&plan, dir.path(), "cairn", &mut rec).unwrap_err();
        assert!(e.contains("/etc/hostname") && e.contains("overwrite"), "{e}");
        assert_eq!(fs::read_to_string(dir.path().join("etc/hostname")).unwrap(), "cairn\n");
        let plan = Plan {
            files: vec![file("/etc/hostname", b"other\n", true)],
            ..Plan::default()
        };
        apply(&plan, dir.path(), "cairn", &mut rec).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("etc/hostname")).unwrap(), "other\n");
    }

    #[test]
    fn appends_add_to_the_file_and_keys_are_not_duplicated() {
        let (dir, mut rec) = host();
        let plan = Plan {
            files: vec![File {
                contents: None,
                append: vec![Content::Inline(b"127.0.1.1 web-1\n".to_vec())],
                ..file("/etc/hostname", b"", false)
            }],
            default_user_keys: vec!["k1".into(), "k1".into()],
            ..Plan::default()
        };
        apply(&plan, dir.path(), "cairn", &mut rec).unwrap();
        apply(&plan, dir.path(), "cairn", &mut rec).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("var/home/cairn/.ssh/authorized_keys")).unwrap(),
            "k1\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/hostname")).unwrap(),
            "cairn\n127.0.1.1 web-1\n127.0.1.1 web-1\n"
        );
    }

    #[test]
    fn a_failing_tool_stops_and_reports_what_was_done() {
        let (dir, mut rec) = host();
        rec.fail = Some("visudo");
        let plan = Plan {
            users: vec![User {
                name: "ops".into(),
                sudo: vec!["NOT A RULE".into()],
                ..User::default()
            }],
            files: vec![file("/etc/motd", b"x", false)],
            ..Plan::default()
        };
        let (e, log) = apply(&plan, dir.path(), "cairn", &mut rec).unwrap_err();
        assert!(e.contains("sudo rules of ops"), "{e}");
        assert_eq!(log, ["user ops created"]);
        assert!(!dir.path().join("etc/sudoers.d/90-cairn-provision-ops").exists());
        assert!(!dir.path().join("etc/motd").exists(), "nothing after the failure");
    }

    #[test]
    fn commands_run_in_order_and_scripts_are_written_first() {
        let (dir, mut rec) = host();
        let cmds = [
            Command::Shell("echo hi > /run/x".into()),
            Command::Argv(vec!["ls".into(), "-l".into()]),
            Command::Script(b"#!/bin/sh\necho s\n".to_vec()),
        ];
        let log = run_commands(&cmds, &dir.path().join("scripts"), &mut rec).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(rec.ran[0], "/bin/sh -c echo hi > /run/x");
        assert_eq!(rec.ran[1], "ls -l");
        assert!(rec.ran[2].ends_with("scripts/user-data-2"));
        assert_eq!(
            fs::read_to_string(dir.path().join("scripts/user-data-2")).unwrap(),
            "#!/bin/sh\necho s\n"
        );
    }

    #[test]
    fn kernel_arguments_are_staged_only_when_the_booted_ones_differ() {
        let (_dir, mut rec) = host();
        let cmdline = "BOOT_IMAGE=/ostree/x/vmlinuz root=LABEL=cairn-root rw quiet ostree=/ostree/boot.1/cairn/x/0\n";
        let change = |add: &[&str], drop: &[&str]| KernelArgs {
            should_exist: add.iter().map(|s| (*s).to_owned()).collect(),
            should_not_exist: drop.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert_eq!(
            deploy_kernel_args(&change(&["rw"], &["nosmt"]), cmdline, &mut rec),
            Ok(None)
        );
        assert!(rec.ran.is_empty());
        let line = deploy_kernel_args(&change(&["nosmt"], &["quiet"]), cmdline, &mut rec).unwrap();
        assert_eq!(
            line.as_deref(),
            Some("kernel arguments of the next boot: root=LABEL=cairn-root rw nosmt")
        );
        // What ostree and GRUB add is theirs to add again.
        assert_eq!(rec.ran, ["stage-kargs root=LABEL=cairn-root rw nosmt"]);
        rec.fail = Some("stage-kargs");
        assert_eq!(
            deploy_kernel_args(&change(&["nosmt"], &[]), cmdline, &mut rec).unwrap_err(),
            "kernelArguments: deploying `root=LABEL=cairn-root rw quiet nosmt`: exit status 1"
        );
    }

    #[test]
    fn the_platform_s_keys_replace_their_own_file_only() {
        let (dir, mut rec) = host();
        let root = dir.path();
        fs::create_dir_all(root.join("var/home/cairn/.ssh")).unwrap();
        fs::write(
            root.join("var/home/cairn/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAown me\n",
        )
        .unwrap();
        let keys = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        write_metadata_keys(
            root,
            "cairn",
            &keys(&["ssh-rsa AAAAold", "ssh-ed25519 AAAAnew "]),
            &mut rec,
        )
        .unwrap();
        write_metadata_keys(root, "cairn", &keys(&["ssh-ed25519 AAAAnew"]), &mut rec).unwrap();
        let file = root.join("var/home/cairn").join(METADATA_KEYS);
        assert_eq!(fs::read_to_string(&file).unwrap(), "ssh-ed25519 AAAAnew\n");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(root.join("var/home/cairn/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAAown me\n"
        );
        assert!(rec.chowned.iter().any(|(p, _, _)| p.ends_with("authorized_keys.d")));
        assert!(write_metadata_keys(root, "nobody", &[], &mut rec).is_err());
    }
}
