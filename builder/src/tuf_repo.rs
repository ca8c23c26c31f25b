//! TUF keys, the root of trust, and the signed metadata of an update
//! repository, made with the `tough` crate.
//!
//! Keys live in `<keys>/tuf/`: one Ed25519 PKCS#8 key per top-level role
//! (`root-N.pk8`, `targets.pk8`, `snapshot.pk8`, `timestamp.pk8`) and the
//! signed `root.json` that names them. The root role may hold several keys
//! with a threshold; every image bakes `root.json` in, and the agent trusts
//! nothing that does not chain to it.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use cairn_common::release::Release;
use chrono::{DateTime, Utc};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};
use tough::sign::Sign;

/// Folder of the TUF keys inside a signing-key folder.
pub const TUF_KEYS_DIR: &str = "tuf";
/// The root of trust, as baked into images.
pub const ROOT_FILE: &str = "root.json";
const SPEC_VERSION: &str = "1.0.0";
const ROLES: [RoleType; 3] = [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

fn role_key_file(role: RoleType) -> &'static str {
    match role {
        RoleType::Targets => "targets.pk8",
        RoleType::Snapshot => "snapshot.pk8",
        RoleType::Timestamp => "timestamp.pk8",
        _ => "root-1.pk8",
    }
}

/// The TUF key folder of a signing-key folder.
pub fn keys_dir(keys: &Path) -> PathBuf {
    keys.join(TUF_KEYS_DIR)
}

/// The root of trust in a signing-key folder, or how to make one.
pub fn root_path(keys: &Path) -> Result<PathBuf> {
    let path = keys_dir(keys).join(ROOT_FILE);
    if !path.is_file() {
        bail!(
            "no TUF root of trust at {}; create development keys with `cairn-build keygen --keys {}`",
            path.display(),
            keys.display()
        );
    }
    Ok(path)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn key_id(path: &Path) -> Result<(Decoded<Hex>, tough::schema::key::Key)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading TUF key {}", path.display()))?;
    let pair = tough::sign::parse_keypair(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a TUF signing key: {e}", path.display()))?;
    let key = pair.tuf_key();
    let id = key
        .key_id()
        .map_err(|e| anyhow::anyhow!("key id of {}: {e}", path.display()))?;
    Ok((id, key))
}

/// Create TUF keys and a signed root in `<keys>/tuf` unless a root exists.
/// The root role gets `root_keys` keys, any `root_threshold` of which sign.
pub fn keygen(keys: &Path, root_keys: u64, root_threshold: u64, expires: DateTime<Utc>) -> Result<PathBuf> {
    ensure!(root_keys >= 1, "the root role needs at least one key");
    ensure!(
        (1..=root_keys).contains(&root_threshold),
        "root threshold {root_threshold} must be between 1 and the number of root keys ({root_keys})"
    );
    let dir = keys_dir(keys);
    let root_file = dir.join(ROOT_FILE);
    if root_file.exists() {
        tracing::info!(root = %root_file.display(), "TUF root exists; keeping it");
        return Ok(root_file);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rng = SystemRandom::new();
    let mut files: Vec<(Option<RoleType>, PathBuf)> = Vec::new();
    for n in 1..=root_keys {
        files.push((None, dir.join(format!("root-{n}.pk8"))));
    }
    for role in ROLES {
        files.push((Some(role), dir.join(role_key_file(role))));
    }
    for (_, path) in &files {
        if !path.exists() {
            let pkcs8 =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating an Ed25519 key"))?;
            write_private(path, pkcs8.as_ref())?;
        }
    }
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: false,
        version: NonZeroU64::MIN,
        expires,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut root_ids = Vec::new();
    for (role, path) in &files {
        let (id, key) = key_id(path)?;
        root.keys.insert(id.clone(), key);
        match role {
            None => root_ids.push(id),
            Some(role) => {
                root.roles.insert(
                    *role,
                    RoleKeys {
                        keyids: vec![id],
                        threshold: NonZeroU64::MIN,
                        _extra: HashMap::new(),
                    },
                );
            }
        }
    }
    root.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: root_ids,
            threshold: NonZeroU64::new(root_threshold).expect("checked above"),
            _extra: HashMap::new(),
        },
    );
    // A dev root signs with all its keys; production roots are signed by
    // their key holders, `threshold` of them.
    let sources: Vec<Box<dyn KeySource>> = files
        .iter()
        .filter(|(role, _)| role.is_none())
        .map(|(_, path)| Box::new(LocalKeySource { path: path.clone() }) as Box<dyn KeySource>)
        .collect();
    let signed = runtime()?
        .block_on(SignedRole::new(root.clone(), &KeyHolder::Root(root), &sources, &rng))
        .map_err(|e| anyhow::anyhow!("signing the TUF root: {e}"))?;
    cairn_common::fsutil::write_atomic(&root_file, signed.buffer())?;
    tracing::info!(root = %root_file.display(), "created TUF keys and root");
    Ok(root_file)
}

/// How long each role's metadata stays valid, counted from now.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub targets: DateTime<Utc>,
    pub snapshot: DateTime<Utc>,
    pub timestamp: DateTime<Utc>,
}

/// Versions of the metadata already published (0 when none).
fn published_version(tuf_dir: &Path, role: &str) -> Result<u64> {
    let path = tuf_dir.join(format!("{role}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
            v["signed"]["version"]
                .as_u64()
                .with_context(|| format!("{} has no signed.version", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Sign new targets, snapshot and timestamp metadata naming every release
/// file in `targets_dir`, into `tuf_dir`. Each role's version goes up by one.
/// The timestamp is written last, so a client never sees it before what it names.
pub fn sign_metadata(keys: &Path, targets_dir: &Path, tuf_dir: &Path, expiry: Expiry) -> Result<Vec<Release>> {
    let root = root_path(keys)?;
    let dir = keys_dir(keys);
    let mut releases = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(targets_dir)
        .with_context(|| format!("listing {}", targets_dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.retain(|p| p.extension().is_some_and(|e| e == "json"));
    entries.sort();
    let version = |role: &str| -> Result<NonZeroU64> {
        Ok(NonZeroU64::new(published_version(tuf_dir, role)? + 1).expect("n + 1 > 0"))
    };
    let (targets_v, snapshot_v, timestamp_v) = (version("targets")?, version("snapshot")?, version("timestamp")?);
    let rt = runtime()?;
    let signed = rt.block_on(async {
        let mut editor = RepositoryEditor::new(&root)
            .await
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", root.display()))?;
        for path in &entries {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let release: Release = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a Cairn release record", path.display()))?;
            let (name, mut target) = RepositoryEditor::build_target(path)
                .await
                .map_err(|e| anyhow::anyhow!("hashing {}: {e}", path.display()))?;
            target.custom = release_custom(&release)?;
            editor
                .add_target(name, target)
                .map_err(|e| anyhow::anyhow!("adding target {}: {e}", path.display()))?;
            releases.push(release);
        }
        editor
            .targets_version(targets_v)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .targets_expires(expiry.targets)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .snapshot_version(snapshot_v)
            .snapshot_expires(expiry.snapshot)
            .timestamp_version(timestamp_v)
            .timestamp_expires(expiry.timestamp);
        let sources: Vec<Box<dyn KeySource>> = ROLES
            .iter()
            .map(|r| {
                Box::new(LocalKeySource {
                    path: dir.join(role_key_file(*r)),
                }) as Box<dyn KeySource>
            })
            .collect();
        let signed = editor
            .sign(&sources)
            .await
            .map_err(|e| anyhow::anyhow!("signing TUF metadata: {e}"))?;
        signed
            .write(tuf_dir)
            .await
            .map_err(|e| anyhow::anyhow!("writing TUF metadata to {}: {e}", tuf_dir.display()))?;
        anyhow::Ok(())
    });
    signed?;
    Ok(releases)
}

/// A release's fields as the target's signed `custom` metadata.
pub fn release_custom(release: &Release) -> Result<HashMap<String, serde_json::Value>> {
    match serde_json::to_value(release)? {
        serde_json::Value::Object(map) => Ok(map.into_iter().collect()),
        _ => bail!("a release record is not a JSON object"),
    }
}
