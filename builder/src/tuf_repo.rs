//! TUF keys, the root of trust, and the signed metadata of an update
//! repository, made with the `tough` crate.
//!
//! Keys live in `<keys>/tuf/`: one Ed25519 PKCS#8 key per top-level role
//! (`root-N.pk8`, `targets.pk8`, `snapshot.pk8`, `timestamp.pk8`), the
//! signed `root.json` that names them (the newest root: what images bake
//! in) and every version of the root as `N.root.json` (the chain a client
//! walks from the root it has to the newest). The root role may hold
//! several keys with a threshold; the agent trusts nothing that does not
//! chain to the root its image carries.
//!
//! Repositories use TUF's consistent snapshots (specification §7):
//!
//! ```text
//! tuf/N.root.json            every version of the root
//! tuf/N.targets.json         targets metadata, a new file per version
//! tuf/N.snapshot.json        snapshot metadata, likewise
//! tuf/timestamp.json         the one unversioned file, replaced last and atomically
//! targets/<sha256>.<name>    each release record by content: what clients fetch
//! targets/<name>             the release records a publish signs (its input)
//! ```
//!
//! A file is never rewritten once named: a client that read `timestamp.json`
//! finds what it names, unchanged, however long it takes; so a client reading
//! during a publish sees the old repository or the new one, never a mix.
//! Expiry times are whole seconds in UTC (`YYYY-MM-DDTHH:MM:SSZ`, the
//! specification's format).
//!
//! A root made before consistent snapshots (`consistent_snapshot: false`,
//! expiry with fractional seconds) is upgraded on the next signing: root
//! N+1 names the same keys with `consistent_snapshot: true` and is signed by
//! the root keys in the key folder, so hosts holding root N accept it. A
//! repository in the old layout (unversioned `targets.json` and
//! `snapshot.json`) gets versioned copies of those before the new root, so
//! a client that takes the new root before the new timestamp still finds
//! what the old timestamp names.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use cairn_common::release::{Release, Rollout, ROLLOUT_PREFIX};
use chrono::{DateTime, SubsecRound as _, Utc};
use sha2::{Digest as _, Sha256};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};
use tough::sign::Sign;

/// Folder of the TUF keys inside a signing-key folder.
pub const TUF_KEYS_DIR: &str = "tuf";
/// The root of trust, as baked into images.
pub const ROOT_FILE: &str = "root.json";
/// The one metadata file whose name carries no version.
pub const TIMESTAMP_FILE: &str = "timestamp.json";
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

/// An expiry time as TUF metadata carries it: whole seconds, UTC. (The
/// specification's format, `YYYY-MM-DDTHH:MM:SSZ`, has no fraction; chrono
/// writes one whenever the time has nanoseconds.)
pub fn tuf_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

/// `N.<name>` → (N, name), for versioned metadata file names.
pub fn versioned_name(file: &str) -> Option<(u64, &str)> {
    let (n, rest) = file.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    Some((n.parse().ok()?, rest))
}

/// Whether a file in `targets/` is a content-addressed copy (`<sha256>.<name>`)
/// rather than a release record publish signs.
pub fn is_hashed_target(file: &str) -> bool {
    file.split_once('.')
        .is_some_and(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The release records in `targets_dir` that publish signs (`*.json`, not
/// the content-addressed copies nor the rollouts), sorted.
pub fn release_records(targets_dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(records(targets_dir)?.into_iter().filter(|p| !is_rollout(p)).collect())
}

/// The rollout records in `targets_dir` (`rollout.<release>.json`), sorted.
pub fn rollout_records(targets_dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(records(targets_dir)?.into_iter().filter(|p| is_rollout(p)).collect())
}

fn is_rollout(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(ROLLOUT_PREFIX))
}

fn records(targets_dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = match std::fs::read_dir(targets_dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", targets_dir.display())),
    };
    let mut out = Vec::new();
    for entry in listing {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".json") && !name.starts_with('.') && !is_hashed_target(&name) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
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

/// The root keys in a TUF key folder (`root-N.pk8`).
fn root_key_sources(dir: &Path) -> Result<Vec<Box<dyn KeySource>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("root-") && n.ends_with(".pk8"))
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
        .collect())
}

/// Sign `root` with every root key in `dir` that it names.
fn sign_root(dir: &Path, root: Root) -> Result<SignedRole<Root>> {
    let sources = root_key_sources(dir)?;
    runtime()?
        .block_on(SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &sources,
            &SystemRandom::new(),
        ))
        .map_err(|e| anyhow::anyhow!("signing the TUF root: {e}"))
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
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: tuf_time(expires),
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
    let signed = sign_root(&dir, root)?;
    cairn_common::fsutil::write_atomic(&dir.join("1.root.json"), signed.buffer())?;
    cairn_common::fsutil::write_atomic(&root_file, signed.buffer())?;
    tracing::info!(root = %root_file.display(), "created TUF keys and root");
    Ok(root_file)
}

/// One version of the root, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFile {
    pub version: u64,
    pub bytes: Vec<u8>,
}

impl RootFile {
    pub fn file_name(&self) -> String {
        format!("{}.root.json", self.version)
    }
}

fn parse_root(bytes: &[u8], path: &Path) -> Result<Signed<Root>> {
    serde_json::from_slice(bytes).with_context(|| format!("{} is not a TUF root", path.display()))
}

/// Every version of the root in the key folder, oldest first: the
/// `N.root.json` files and `root.json` (a key folder from before root
/// versions were kept holds only `root.json`). The versions must follow
/// one another.
pub fn root_chain(keys: &Path) -> Result<Vec<RootFile>> {
    let dir = keys_dir(keys);
    let current = root_path(keys)?;
    let mut chain: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((n, ROOT_FILE)) = versioned_name(name) {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let v = parse_root(&bytes, &path)?.signed.version.get();
            ensure!(v == n, "{} holds root version {v}", path.display());
            chain.insert(n, bytes);
        }
    }
    let bytes = std::fs::read(&current).with_context(|| format!("reading {}", current.display()))?;
    let v = parse_root(&bytes, &current)?.signed.version.get();
    match chain.get(&v) {
        Some(same) if *same == bytes => {}
        Some(_) => bail!(
            "{} and {v}.root.json differ: both are root version {v}",
            current.display()
        ),
        None => {
            chain.insert(v, bytes);
        }
    }
    let versions: Vec<u64> = chain.keys().copied().collect();
    if let Some(gap) = versions.windows(2).find(|w| w[1] != w[0] + 1) {
        bail!(
            "the roots in {} skip from version {} to {}: a client cannot walk that chain",
            dir.display(),
            gap[0],
            gap[1]
        );
    }
    Ok(chain
        .into_iter()
        .map(|(version, bytes)| RootFile { version, bytes })
        .collect())
}

/// Make the key folder's root one that uses consistent snapshots, keeping
/// every root version as `N.root.json`; returns the chain.
///
/// An older root is followed by version N+1: the same keys, roles and
/// expiry (in whole seconds), `consistent_snapshot: true`, signed by the
/// root keys in the key folder, and checked against both roots' thresholds
/// before it is written (`N+1.root.json`, then `root.json`).
pub fn upgrade_root(keys: &Path) -> Result<Vec<RootFile>> {
    let dir = keys_dir(keys);
    let current = root_path(keys)?;
    let mut chain = root_chain(keys)?;
    for r in &chain {
        let path = dir.join(r.file_name());
        if !path.exists() {
            cairn_common::fsutil::write_atomic(&path, &r.bytes)?;
        }
    }
    let newest = chain.last().expect("root.json is in the chain").clone();
    if std::fs::read(&current)? != newest.bytes {
        // An upgrade stopped between N+1.root.json and root.json.
        cairn_common::fsutil::write_atomic(&current, &newest.bytes)?;
    }
    let root = parse_root(&newest.bytes, &current)?;
    if root.signed.consistent_snapshot {
        return Ok(chain);
    }
    let mut next = root.signed.clone();
    next.version = NonZeroU64::new(newest.version + 1).expect("n + 1 > 0");
    next.consistent_snapshot = true;
    next.expires = tuf_time(next.expires);
    let signed = sign_root(&dir, next)?;
    let threshold = |r: &Root| r.roles.get(&RoleType::Root).map_or(0, |k| k.threshold.get());
    root.signed.verify_role(signed.signed()).map_err(|e| {
        anyhow::anyhow!(
            "root {} must be signed by {} of root {}'s keys and {} has fewer: {e}",
            newest.version + 1,
            threshold(&root.signed),
            newest.version,
            dir.display()
        )
    })?;
    signed
        .signed()
        .signed
        .verify_role(signed.signed())
        .map_err(|e| anyhow::anyhow!("root {} does not meet its own threshold: {e}", newest.version + 1))?;
    let next = RootFile {
        version: newest.version + 1,
        bytes: signed.buffer().clone(),
    };
    cairn_common::fsutil::write_atomic(&dir.join(next.file_name()), &next.bytes)?;
    cairn_common::fsutil::write_atomic(&current, &next.bytes)?;
    tracing::info!(
        version = next.version,
        "TUF root upgraded to consistent snapshots; images built from now on carry it"
    );
    chain.push(next);
    Ok(chain)
}

/// How long each role's metadata stays valid, counted from now.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub targets: DateTime<Utc>,
    pub snapshot: DateTime<Utc>,
    pub timestamp: DateTime<Utc>,
}

/// What one write of a publish puts in place. Writes happen in this order
/// ([`WRITE_ORDER`]); a client holds only `timestamp.json` unversioned,
/// so everything it names exists before it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// A release record by content: `targets/<sha256>.<name>`.
    Target,
    /// A versioned copy of an old-layout `targets.json` or `snapshot.json`.
    LegacyCopy,
    /// A root version the repository lacks: `tuf/N.root.json`.
    Root,
    /// `tuf/N.targets.json`.
    Targets,
    /// `tuf/N.snapshot.json`.
    Snapshot,
    /// `tuf/timestamp.json`, replaced atomically: the switch to the new state.
    Timestamp,
}

/// The reader-safe order of a publish's metadata writes. (Before them,
/// publish writes the ostree objects and the release record, which no
/// signed metadata names yet.)
pub const WRITE_ORDER: [Stage; 6] = [
    Stage::Target,
    Stage::LegacyCopy,
    Stage::Root,
    Stage::Targets,
    Stage::Snapshot,
    Stage::Timestamp,
];

/// One file to write.
#[derive(Debug, Clone)]
pub struct Write {
    pub stage: Stage,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl Write {
    /// Put the file in place atomically (temporary file, fsync, rename).
    pub fn apply(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        cairn_common::fsutil::write_atomic(&self.path, &self.bytes)
    }
}

/// The signed state of a repository and the writes that put it in place.
#[derive(Debug)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// The releases the new targets metadata names.
    pub releases: Vec<Release>,
}

impl Plan {
    pub fn apply(&self) -> Result<()> {
        for w in &self.writes {
            w.apply()?;
        }
        Ok(())
    }
}

fn json_version(path: &Path) -> Result<Option<u64>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
            let n = v["signed"]["version"]
                .as_u64()
                .with_context(|| format!("{} has no signed.version", path.display()))?;
            Ok(Some(n))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The highest version of `role` (`targets`, `snapshot`) in `tuf_dir`, in
/// either layout, 0 when none: the next publish takes the one after, even
/// over files a stopped publish left unnamed, so no versioned file is ever
/// rewritten.
fn highest_version(tuf_dir: &Path, role: &str) -> Result<u64> {
    let file = format!("{role}.json");
    let mut highest = json_version(&tuf_dir.join(&file))?.unwrap_or(0);
    let listing = match std::fs::read_dir(tuf_dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(highest),
        Err(e) => return Err(e).with_context(|| format!("listing {}", tuf_dir.display())),
    };
    for entry in listing {
        let name = entry?.file_name();
        if let Some((n, rest)) = name.to_str().and_then(versioned_name) {
            if rest == file {
                highest = highest.max(n);
            }
        }
    }
    Ok(highest)
}

fn next_version(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n + 1).expect("n + 1 > 0")
}

/// Sign new targets, snapshot and timestamp metadata naming every release
/// record in `targets_dir`, for `tuf_dir`, and list the writes in
/// [`WRITE_ORDER`]; nothing in the repository is written yet. Upgrades the
/// key folder's root first ([`upgrade_root`]). Versions go up by one from
/// the highest present; expiry times are cut to whole seconds.
pub fn plan_metadata(keys: &Path, targets_dir: &Path, tuf_dir: &Path, expiry: Expiry) -> Result<Plan> {
    let chain = upgrade_root(keys)?;
    let root = root_path(keys)?;
    let dir = keys_dir(keys);
    let records = release_records(targets_dir)?;
    let rollouts = rollout_records(targets_dir)?;
    let targets_v = next_version(highest_version(tuf_dir, "targets")?);
    let snapshot_v = next_version(highest_version(tuf_dir, "snapshot")?);
    let timestamp_v = next_version(json_version(&tuf_dir.join(TIMESTAMP_FILE))?.unwrap_or(0));
    let mut writes = Vec::new();
    let mut releases = Vec::new();
    let staging = tempfile::tempdir().context("creating a staging folder for TUF metadata")?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut editor = RepositoryEditor::new(&root)
            .await
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", root.display()))?;
        for path in &records {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let release: Release = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a Cairn release record", path.display()))?;
            add_record(&mut editor, targets_dir, path, bytes, custom_of(&release)?, &mut writes).await?;
            releases.push(release);
        }
        for path in &rollouts {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let rollout: Rollout = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a Cairn rollout record", path.display()))?;
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            ensure!(
                file == rollout.target_name(),
                "{} is the rollout of {}: its name must be {}",
                path.display(),
                rollout.release,
                rollout.target_name()
            );
            ensure!(
                releases.iter().any(|r| r.target_name() == rollout.release),
                "{} rolls out {}, which is not published",
                path.display(),
                rollout.release
            );
            add_record(&mut editor, targets_dir, path, bytes, custom_of(&rollout)?, &mut writes).await?;
        }
        editor
            .targets_version(targets_v)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .targets_expires(tuf_time(expiry.targets))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .snapshot_version(snapshot_v)
            .snapshot_expires(tuf_time(expiry.snapshot))
            .timestamp_version(timestamp_v)
            .timestamp_expires(tuf_time(expiry.timestamp));
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
            .write(staging.path())
            .await
            .map_err(|e| anyhow::anyhow!("writing TUF metadata to {}: {e}", staging.path().display()))?;
        anyhow::Ok(())
    })?;

    // An old-layout repository: versioned copies of what its timestamp names.
    for role in ["targets", "snapshot"] {
        let old = tuf_dir.join(format!("{role}.json"));
        if let Some(v) = json_version(&old)? {
            let copy = tuf_dir.join(format!("{v}.{role}.json"));
            if !copy.exists() {
                writes.push(Write {
                    stage: Stage::LegacyCopy,
                    path: copy,
                    bytes: std::fs::read(&old).with_context(|| format!("reading {}", old.display()))?,
                });
            }
        }
    }
    for r in &chain {
        let path = tuf_dir.join(r.file_name());
        match std::fs::read(&path) {
            Ok(bytes) if bytes == r.bytes => {}
            Ok(_) => bail!(
                "{} is not the key folder's root version {}: this repository was signed with other keys",
                path.display(),
                r.version
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => writes.push(Write {
                stage: Stage::Root,
                path,
                bytes: r.bytes.clone(),
            }),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    for (stage, file) in [
        (Stage::Targets, format!("{targets_v}.targets.json")),
        (Stage::Snapshot, format!("{snapshot_v}.snapshot.json")),
        (Stage::Timestamp, TIMESTAMP_FILE.to_owned()),
    ] {
        let staged = staging.path().join(&file);
        writes.push(Write {
            stage,
            path: tuf_dir.join(&file),
            bytes: std::fs::read(&staged).with_context(|| format!("reading {}", staged.display()))?,
        });
    }
    debug_assert!(writes.windows(2).all(|w| w[0].stage <= w[1].stage));
    Ok(Plan { writes, releases })
}

/// Sign and write new metadata naming every release record in
/// `targets_dir` ([`plan_metadata`], then its writes in order: the
/// timestamp last). Returns the releases it names.
pub fn sign_metadata(keys: &Path, targets_dir: &Path, tuf_dir: &Path, expiry: Expiry) -> Result<Vec<Release>> {
    let plan = plan_metadata(keys, targets_dir, tuf_dir, expiry)?;
    plan.apply()?;
    Ok(plan.releases)
}

/// A record's fields (a release's, a rollout's) as its target's signed
/// `custom` metadata.
pub fn custom_of(record: &impl serde::Serialize) -> Result<HashMap<String, serde_json::Value>> {
    match serde_json::to_value(record)? {
        serde_json::Value::Object(map) => Ok(map.into_iter().collect()),
        _ => bail!("a record is not a JSON object"),
    }
}

/// Add the record at `path` (read as `bytes`) as a target with `custom`
/// metadata, and its copy by content (`<sha256>.<name>`) to the writes if
/// it is not there yet.
async fn add_record(
    editor: &mut RepositoryEditor,
    targets_dir: &Path,
    path: &Path,
    bytes: Vec<u8>,
    custom: HashMap<String, serde_json::Value>,
    writes: &mut Vec<Write>,
) -> Result<()> {
    let (name, mut target) = RepositoryEditor::build_target(path)
        .await
        .map_err(|e| anyhow::anyhow!("hashing {}: {e}", path.display()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    ensure!(
        hex::encode(&target.hashes.sha256) == sha256,
        "{} changed while it was read",
        path.display()
    );
    let hashed = targets_dir.join(format!("{sha256}.{}", name.resolved()));
    if !hashed.exists() {
        writes.push(Write {
            stage: Stage::Target,
            path: hashed,
            bytes,
        });
    }
    target.custom = custom;
    editor
        .add_target(name, target)
        .map_err(|e| anyhow::anyhow!("adding target {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::layout::Arch;

    fn release(version: &str) -> Release {
        Release {
            version: version.into(),
            arch: Arch::X86_64,
            variant: "dev".parse().unwrap(),
            stream: "stable".into(),
            ostree_ref: "cairn/x86_64/dev/stable".into(),
            commit: "a".repeat(64),
            requires: None,
        }
    }

    /// A time with nanoseconds, as `Utc::now()` gives.
    fn fractional(days: i64) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(0) + chrono::Duration::days(days) + chrono::Duration::nanoseconds(123_456_789)
    }

    fn expiry() -> Expiry {
        Expiry {
            targets: fractional(30),
            snapshot: fractional(30),
            timestamp: fractional(7),
        }
    }

    fn is_tuf_time(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 20
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    fn expires_of(bytes: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v["signed"]["expires"].as_str().unwrap().to_owned()
    }

    fn add_record(targets: &Path, r: &Release) {
        std::fs::create_dir_all(targets).unwrap();
        std::fs::write(targets.join(r.target_name()), serde_json::to_vec(r).unwrap()).unwrap();
    }

    /// Files a metadata file names, as paths in the repository.
    fn named_by(w: &Write, repo: &Path) -> Vec<PathBuf> {
        let v: serde_json::Value = serde_json::from_slice(&w.bytes).unwrap();
        let meta_version = |file: &str| v["signed"]["meta"][file]["version"].as_u64().unwrap();
        match w.stage {
            Stage::Timestamp => vec![repo.join(format!("tuf/{}.snapshot.json", meta_version("snapshot.json")))],
            Stage::Snapshot => vec![repo.join(format!("tuf/{}.targets.json", meta_version("targets.json")))],
            Stage::Targets => v["signed"]["targets"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, t)| repo.join(format!("targets/{}.{name}", t["hashes"]["sha256"].as_str().unwrap())))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The plan's writes follow WRITE_ORDER, the timestamp comes last and
    /// alone replaces a file, and every file a metadata file names is there
    /// before it.
    fn assert_reader_safe(plan: &Plan, repo: &Path) {
        let rank = |s: Stage| WRITE_ORDER.iter().position(|o| *o == s).unwrap();
        assert!(plan.writes.windows(2).all(|w| rank(w[0].stage) <= rank(w[1].stage)));
        let last = plan.writes.last().unwrap();
        assert_eq!(last.stage, Stage::Timestamp);
        assert_eq!(last.path, repo.join("tuf/timestamp.json"));
        for (i, w) in plan.writes.iter().enumerate() {
            if w.stage != Stage::Timestamp {
                assert!(!w.path.exists(), "{} would be rewritten", w.path.display());
            }
            for named in named_by(w, repo) {
                assert!(
                    named.exists() || plan.writes[..i].iter().any(|e| e.path == named),
                    "{} names {} before it is written",
                    w.path.display(),
                    named.display()
                );
            }
        }
    }

    #[test]
    fn expiry_times_are_whole_seconds_in_utc() {
        let t = DateTime::parse_from_rfc3339("2030-01-02T03:04:05.678901234+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            serde_json::to_value(tuf_time(t)).unwrap(),
            serde_json::json!("2030-01-02T01:04:05Z")
        );
        assert!(is_tuf_time("2030-01-02T01:04:05Z"));
        assert!(!is_tuf_time("2030-01-02T01:04:05.678Z"));
        assert!(!is_tuf_time("2030-01-02T01:04:05+00:00"));

        // Every expiry a publish writes, from times with nanoseconds.
        let (k, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        keygen(k.path(), 1, 1, fractional(365)).unwrap();
        add_record(&repo.path().join("targets"), &release("0.1.0"));
        let plan = plan_metadata(
            k.path(),
            &repo.path().join("targets"),
            &repo.path().join("tuf"),
            expiry(),
        )
        .unwrap();
        let metadata: Vec<&Write> = plan.writes.iter().filter(|w| w.stage >= Stage::Root).collect();
        assert_eq!(metadata.len(), 4, "root, targets, snapshot, timestamp");
        for w in metadata {
            let e = expires_of(&w.bytes);
            assert!(is_tuf_time(&e), "{}: expires {e}", w.path.display());
        }
    }

    #[test]
    fn versioned_names_and_content_addressed_targets_are_told_apart() {
        assert_eq!(versioned_name("12.root.json"), Some((12, "root.json")));
        assert_eq!(versioned_name("root.json"), None);
        assert_eq!(versioned_name("012.root.json"), None);
        assert_eq!(versioned_name("x1.root.json"), None);
        let name = release("0.1.0").target_name();
        assert!(!is_hashed_target(&name));
        assert!(is_hashed_target(&format!("{}.{name}", "0f".repeat(32))));
        let d = tempfile::tempdir().unwrap();
        for f in [
            name.clone(),
            format!("{}.{name}", "0f".repeat(32)),
            format!(".{name}.1.tmp"),
        ] {
            std::fs::write(d.path().join(f), b"{}").unwrap();
        }
        assert_eq!(release_records(d.path()).unwrap(), vec![d.path().join(&name)]);
    }

    #[test]
    fn publishes_write_in_reader_safe_order_and_never_rewrite_a_named_file() {
        let (k, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        keygen(k.path(), 1, 1, fractional(365)).unwrap();
        let (targets, tuf) = (repo.path().join("targets"), repo.path().join("tuf"));
        add_record(&targets, &release("0.1.0"));
        let first = plan_metadata(k.path(), &targets, &tuf, expiry()).unwrap();
        let stages: Vec<Stage> = first.writes.iter().map(|w| w.stage).collect();
        assert_eq!(
            stages,
            WRITE_ORDER
                .iter()
                .copied()
                .filter(|s| *s != Stage::LegacyCopy)
                .collect::<Vec<_>>()
        );
        assert_reader_safe(&first, repo.path());
        first.apply().unwrap();
        for f in ["1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"] {
            assert!(tuf.join(f).is_file(), "{f}");
        }

        add_record(&targets, &release("0.2.0"));
        let second = plan_metadata(k.path(), &targets, &tuf, expiry()).unwrap();
        assert_reader_safe(&second, repo.path());
        let files: Vec<String> = second
            .writes
            .iter()
            .map(|w| w.path.strip_prefix(repo.path()).unwrap().display().to_string())
            .collect();
        let sha = hex::encode(Sha256::digest(
            std::fs::read(targets.join(release("0.2.0").target_name())).unwrap(),
        ));
        assert_eq!(
            files,
            [
                format!("targets/{sha}.dev-stable-x86_64-0.2.0.json"),
                "tuf/2.targets.json".into(),
                "tuf/2.snapshot.json".into(),
                "tuf/timestamp.json".into()
            ]
        );
        assert_eq!(second.releases, vec![release("0.1.0"), release("0.2.0")]);
    }

    #[test]
    fn an_old_root_is_followed_by_a_signed_consistent_version() {
        let k = tempfile::tempdir().unwrap();
        keygen(k.path(), 2, 1, fractional(365)).unwrap();
        let dir = keys_dir(k.path());
        // What keygen made before consistent snapshots: root.json alone,
        // consistent_snapshot false, expiry with a fraction of a second.
        let mut old: Signed<Root> = serde_json::from_slice(&std::fs::read(dir.join(ROOT_FILE)).unwrap()).unwrap();
        old.signed.consistent_snapshot = false;
        old.signed.expires = fractional(365);
        let old = sign_root(&dir, old.signed).unwrap();
        std::fs::write(dir.join(ROOT_FILE), old.buffer()).unwrap();
        std::fs::remove_file(dir.join("1.root.json")).unwrap();
        assert!(expires_of(old.buffer()).contains('.'));

        let chain = upgrade_root(k.path()).unwrap();
        assert_eq!(chain.iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(chain[0].bytes, *old.buffer());
        let new: Signed<Root> = serde_json::from_slice(&chain[1].bytes).unwrap();
        assert!(new.signed.consistent_snapshot);
        assert!(is_tuf_time(&expires_of(&chain[1].bytes)));
        assert_eq!(new.signed.keys, old.signed().signed.keys);
        assert_eq!(new.signatures.len(), 2, "signed by both root keys");
        old.signed().signed.verify_role(&new).unwrap();
        new.signed.verify_role(&new).unwrap();
        assert_eq!(std::fs::read(dir.join(ROOT_FILE)).unwrap(), chain[1].bytes);
        assert_eq!(std::fs::read(dir.join("1.root.json")).unwrap(), chain[0].bytes);
        // Once is enough.
        assert_eq!(upgrade_root(k.path()).unwrap(), chain);
    }
}
