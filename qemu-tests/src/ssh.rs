//! OpenSSH's own client against a guest, through a `hostfwd` on
//! 127.0.0.1: a second implementation checks what Cairn's sshd offers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cairn_common::process::Cmd;

/// A key pair made for one test, and the forwarded port.
pub struct Ssh {
    pub key: PathBuf,
    pub port: u16,
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct Remote {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A free TCP port on 127.0.0.1 (for a `hostfwd`).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Ssh {
    /// An ed25519 key pair in `dir` for `port`.
    pub fn new(dir: &Path, port: u16) -> Result<Ssh> {
        let key = dir.join("id_ed25519");
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-test", "-f"])
            .arg(&key)
            .run()?;
        Ok(Ssh { key, port })
    }

    pub fn public_key(&self) -> Result<String> {
        let p = self.key.with_extension("pub");
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_owned())
    }

    /// The `hostfwd` rule for a guest's port 22 (at `guest_ip`, or the
    /// DHCP address when `None`).
    pub fn forward(&self, guest_ip: Option<&str>) -> String {
        format!("hostfwd=tcp:127.0.0.1:{}-{}:22", self.port, guest_ip.unwrap_or(""))
    }

    fn base(&self, extra: &[&str]) -> Cmd {
        Cmd::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &self.port.to_string(),
            ])
            .args(extra)
    }

    /// Run `command` as `user` with the test's key.
    pub fn run(&self, user: &str, command: &str) -> Result<Remote> {
        let (status, out) = self
            .base(&["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&self.key)
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .timeout(Duration::from_secs(180))
            .status_output()?;
        Ok(Remote {
            success: status.success(),
            stdout: out.stdout,
            stderr: out.stderr_tail,
        })
    }

    /// Run `command` as `user`; it must succeed. Returns its output, trimmed.
    pub fn ok(&self, user: &str, command: &str) -> Result<String> {
        let r = self.run(user, command)?;
        if !r.success {
            bail!("ssh {user}@: `{command}` failed:\n{}{}", r.stdout, r.stderr);
        }
        Ok(r.stdout.trim().to_owned())
    }

    /// Wait until `user` can log in (sshd up, keys in place).
    pub fn wait_ready(&self, user: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.run(user, "true") {
                Ok(r) if r.success => return Ok(()),
                Ok(r) if Instant::now() > deadline => bail!("{user} could not log in over SSH: {}", r.stderr),
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_secs(3)),
            }
        }
    }

    /// A password login attempt (no key offered): what sshd answered.
    pub fn try_password(&self, user: &str) -> Result<Remote> {
        let (status, out) = self
            .base(&[
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .arg("true")
            .timeout(Duration::from_secs(60))
            .status_output()?;
        Ok(Remote {
            success: status.success(),
            stdout: out.stdout,
            stderr: out.stderr_tail,
        })
    }

    /// The host's public keys as `ssh-keyscan` sees them, sorted.
    pub fn host_keys(&self) -> Result<Vec<String>> {
        let out = Cmd::new("ssh-keyscan")
            .args(["-T", "20", "-p", &self.port.to_string(), "127.0.0.1"])
            .output()?;
        let mut keys: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// SHA256 fingerprints of `keys` (as `ssh-keygen -l` prints them).
    pub fn fingerprints(keys: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for k in keys {
            let o = Cmd::new("ssh-keygen")
                .args(["-l", "-f", "-"])
                .stdin_bytes(format!("127.0.0.1 {k}\n"))
                .output()?;
            if let Some(fp) = o.stdout.split_whitespace().nth(1) {
                out.push(fp.to_owned());
            }
        }
        Ok(out)
    }
}
