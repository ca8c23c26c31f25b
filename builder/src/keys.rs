//! Commit signing keys: a GnuPG home holding one signing key.
//!
//! Debian 12's ostree signs and verifies with GPG (it has no ed25519 `sign`
//! backend), so a key is a GnuPG home directory. Development keys live
//! outside the git tree (see `cargo xtask`); production keys are the
//! operator's and are only ever referred to by path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::process::Cmd;

const KEY_ID_FILE: &str = "key-id";
const PUBLIC_KEY_FILE: &str = "cairn-signing.gpg";

/// A usable signing key.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub homedir: PathBuf,
    pub key_id: String,
}

impl SigningKey {
    /// Open the key in `homedir`, or explain how to create one.
    pub fn open(homedir: &Path) -> Result<SigningKey> {
        let id_file = homedir.join(KEY_ID_FILE);
        let key_id = match std::fs::read_to_string(&id_file) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no signing key in {} (missing {}); create a development key with `cairn-build keygen --keys {}`",
                homedir.display(),
                id_file.display(),
                homedir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", id_file.display())),
        };
        if key_id.is_empty() || !key_id.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("{} does not hold a key fingerprint", id_file.display());
        }
        let key = SigningKey {
            homedir: homedir.to_owned(),
            key_id,
        };
        // The secret key must really be there, not just its id.
        let (status, _) = key.gpg().args(["--list-secret-keys", &key.key_id]).status_output()?;
        if !status.success() {
            bail!(
                "signing key {} named in {} is not in the GnuPG home {}",
                key.key_id,
                id_file.display(),
                homedir.display()
            );
        }
        Ok(key)
    }

    /// The public key, exported in binary form (ostree's trusted.gpg.d format).
    pub fn public_key(&self) -> Result<Vec<u8>> {
        let path = self.homedir.join(PUBLIC_KEY_FILE);
        std::fs::read(&path).with_context(|| format!("reading public key {}", path.display()))
    }

    fn gpg(&self) -> Cmd {
        gpg(&self.homedir)
    }
}

fn gpg(homedir: &Path) -> Cmd {
    Cmd::new("gpg")
        .arg("--homedir")
        .arg(homedir)
        .args(["--batch", "--no-tty"])
}

/// Create a new signing key in `homedir` unless one is there already.
pub fn keygen(homedir: &Path, owner: &str) -> Result<SigningKey> {
    if homedir.join(KEY_ID_FILE).exists() {
        tracing::info!(keys = %homedir.display(), "signing key exists; keeping it");
        return SigningKey::open(homedir);
    }
    std::fs::create_dir_all(homedir).with_context(|| format!("creating {}", homedir.display()))?;
    set_private(homedir)?;
    let uid = format!("{owner} <signing@cairn.invalid>");
    gpg(homedir)
        .args(["--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--quick-generate-key", &uid, "ed25519", "sign", "never"])
        .run()
        .context("generating the signing key")?;
    let listing = gpg(homedir)
        .args(["--with-colons", "--list-secret-keys", &uid])
        .output()?
        .stdout;
    let fingerprint = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .filter(|f| !f.is_empty())
        .context("gpg listed no fingerprint for the new key")?
        .to_owned();
    gpg(homedir)
        .arg("--output")
        .arg(homedir.join(PUBLIC_KEY_FILE))
        .args(["--yes", "--export", &fingerprint])
        .run()?;
    std::fs::write(homedir.join(KEY_ID_FILE), format!("{fingerprint}\n"))?;
    tracing::info!(key = %fingerprint, keys = %homedir.display(), "created signing key");
    SigningKey::open(homedir)
}

fn set_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}
