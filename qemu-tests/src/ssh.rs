//! OpenSSH's own client against a guest, through a `hostfwd` on
//! 127.0.0.1: a second implementation checks what Cairn's sshd offers, and
//! forwards a guest's Unix socket (containerd's CRI) to the host.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
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

/// How long [`Ssh::forward_socket`] waits for the local socket: ssh's
/// connect timeout (20 s), login and the forward's setup.
const FORWARD_READY: Duration = Duration::from_secs(45);

/// An OpenSSH local forward of a guest's Unix socket to [`SocketForward::local`]:
/// the `ssh -N` process lives as long as this value.
pub struct SocketForward {
    /// The socket on the host.
    pub local: PathBuf,
    child: Child,
}

impl SocketForward {
    /// Wait until `child` (a forwarding `ssh` said by `shown`) listens on
    /// `local`, for at most `limit`; fail with its error output if it
    /// exits first.
    fn wait_ready(mut child: Child, local: &Path, shown: &str, limit: Duration) -> Result<SocketForward> {
        // Collected as it comes, so the child never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let said = String::from_utf8_lossy(&buf[..n]);
                    tracing::debug!("ssh forward: {}", said.trim_end());
                    stderr.lock().unwrap_or_else(|e| e.into_inner()).push_str(&said);
                }
            })
        });
        let said = || stderr.lock().unwrap_or_else(|e| e.into_inner()).trim().to_owned();
        // Killed (and `local` removed) on every way out but success.
        let mut forward = SocketForward {
            local: local.to_owned(),
            child,
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = forward
                .child
                .try_wait()
                .with_context(|| format!("{shown}: waiting for ssh"))?
            {
                if let Some(reader) = reader {
                    let _ = reader.join();
                }
                bail!("{shown}: ssh exited ({status}): {}", said());
            }
            if local.exists() {
                return Ok(forward);
            }
            if Instant::now() > deadline {
                bail!("{shown}: no socket after {}s; ssh said: {}", limit.as_secs(), said());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SocketForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // ssh leaves its listening socket behind.
        let _ = std::fs::remove_file(&self.local);
    }
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

    /// Forward the guest's Unix socket `remote` to a new socket `local` on
    /// the host (`ssh -N -L local:remote` as `user`), until the value
    /// returned is dropped. Returns once `local` exists, that is once ssh
    /// logged in and listens there; fails with ssh's error output if ssh
    /// exits first (a login refused, `local` that cannot be bound) or if
    /// it takes too long.
    pub fn forward_socket(&self, user: &str, local: &Path, remote: &str) -> Result<SocketForward> {
        // A socket left by an earlier ssh would look ready at once.
        match std::fs::remove_file(local) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the old {}", local.display()))
            }
            _ => {}
        }
        let child = self
            .base(&[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "StreamLocalBindUnlink=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
            ])
            .arg(&self.key)
            .arg("-L")
            .arg(format!("{}:{remote}", local.display()))
            .arg(format!("{user}@127.0.0.1"))
            .spawn_piped()?;
        let shown = format!("forwarding {remote} of {user}@ to {}", local.display());
        SocketForward::wait_ready(child, local, &shown, FORWARD_READY)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn child(script: &str) -> Child {
        Cmd::new("sh").args(["-c", script]).spawn_piped().unwrap()
    }

    #[test]
    fn a_forward_is_ready_once_its_socket_exists_and_ends_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("cri.sock");
        let script = format!("sleep 0.3; touch '{}'; exec sleep 60", local.display());
        let forward = SocketForward::wait_ready(child(&script), &local, "test", Duration::from_secs(20)).unwrap();
        assert!(local.exists());
        let proc = PathBuf::from(format!("/proc/{}", forward.child.id()));
        assert!(proc.exists());
        drop(forward);
        assert!(!local.exists(), "the socket is removed");
        assert!(!proc.exists(), "the child is killed and reaped");
    }

    #[test]
    fn a_forward_whose_ssh_exits_fails_with_what_ssh_said() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("cri.sock");
        let script = "echo 'Permission denied (publickey).' >&2; exit 255";
        let e = SocketForward::wait_ready(child(script), &local, "forwarding x", Duration::from_secs(20))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("forwarding x: ssh exited"), "{e}");
        assert!(
            e.contains("255") && e.ends_with("Permission denied (publickey)."),
            "{e}"
        );
    }

    #[test]
    fn a_forward_that_never_listens_times_out() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("cri.sock");
        let script = "echo connecting >&2; exec sleep 60";
        let started = Instant::now();
        let e = SocketForward::wait_ready(child(script), &local, "forwarding x", Duration::from_millis(500))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no socket after 0s; ssh said: connecting"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
