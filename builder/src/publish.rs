//! `cairn-build publish`: a built commit → an update repository of static
//! files that any web server or CDN can serve.
//!
//! ```text
//! <update-repo>/ostree/                    archive repo: the commit, its objects, static deltas, summary
//! <update-repo>/targets/<name>             one release record (JSON) per release: what publish signs
//! <update-repo>/targets/<sha256>.<name>    the same records by content: what TUF clients fetch
//! <update-repo>/tuf/                       TUF metadata, consistent snapshots: N.root.json,
//!                                          N.targets.json, N.snapshot.json, timestamp.json
//! ```
//!
//! Order matters for clients reading while it runs: objects first, then the
//! release record, then the TUF writes in [`tuf_repo::WRITE_ORDER`] (records
//! by content, root versions, targets, snapshot, and the timestamp last,
//! replaced atomically). Every file but the timestamp is new and never
//! rewritten, so a client that read the old timestamp finds all it names,
//! and one that sees the new timestamp finds everything it names.
//!
//! A repository published before consistent snapshots (unversioned
//! `targets.json` and `snapshot.json`) is read as it is (its release records
//! are the same) and carried over by the next publish, with the key folder's
//! root upgraded (see [`tuf_repo`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cairn_common::identity::{ImageId, Variant};
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use cairn_common::release::{Release, Rollout, OSTREE_DIR, TARGETS_DIR, TUF_DIR};
use semver::{Version, VersionReq};
use serde::Serialize;

use crate::ostree;
use crate::tuf_repo::{self, Expiry};

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Archive repo the image was committed to.
    pub build_repo: PathBuf,
    /// Ref (or commit) of the image in `build_repo`.
    pub rev: String,
    /// The update repository folder (created if missing).
    pub update_repo: PathBuf,
    /// Signing-key folder holding the TUF keys (`<keys>/tuf`).
    pub keys: PathBuf,
    /// Static deltas from this many previous releases of the same line.
    pub deltas: usize,
    /// Versions a host must run to take this release (semver requirement).
    pub requires: Option<String>,
    /// Roll the release out in waves over this long, from now (a
    /// [`Rollout`] target beside the release's); `None`: to every host at
    /// once (a rollout published before for this release stays).
    pub rollout: Option<Duration>,
    pub timestamp_ttl: Duration,
    pub metadata_ttl: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub release: Release,
    pub target: String,
    pub deltas_from: Vec<String>,
    pub releases_in_repo: usize,
    /// The release's rollout, if it has one.
    pub rollout: Option<Rollout>,
}

/// What `cairn-build rollout` does to a published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutChange {
    /// Hosts whose turn has not come wait.
    Pause,
    /// The waves go on (the pause's length added to the start).
    Resume,
    /// Over this long, from the rollout's start (from now if it had none).
    Duration(Duration),
    /// The release is no longer offered (hosts that took it keep it).
    Withdraw,
}

pub struct RolloutOptions {
    pub update_repo: PathBuf,
    pub keys: PathBuf,
    /// The version changed, in every variant, arch and stream published.
    pub version: String,
    pub change: RolloutChange,
    pub timestamp_ttl: Duration,
    pub metadata_ttl: Duration,
}

/// What a rollout change did, per release target.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutChanged {
    /// Rollouts as they are now (none for a withdrawn release).
    pub rollouts: Vec<Rollout>,
    /// Release targets no longer offered.
    pub withdrawn: Vec<String>,
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn expiry(timestamp_ttl: Duration, metadata_ttl: Duration) -> Expiry {
    let now = chrono::Utc::now();
    let ttl = |d: Duration| now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365));
    Expiry {
        targets: ttl(metadata_ttl),
        snapshot: ttl(metadata_ttl),
        timestamp: ttl(timestamp_ttl),
    }
}

fn read_rollout(targets_dir: &Path, release_target: &str) -> Result<Option<Rollout>> {
    let path = targets_dir.join(Rollout::target_name_of(release_target));
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a rollout record", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Pause, resume, stretch or withdraw the rollout of a published version,
/// and sign the repository's metadata again (timestamp last).
pub fn change_rollout(opts: &RolloutOptions) -> Result<RolloutChanged> {
    tuf_repo::upgrade_root(&opts.keys)?;
    let targets_dir = opts.update_repo.join(TARGETS_DIR);
    let releases: Vec<Release> = read_releases(&targets_dir)?
        .into_iter()
        .filter(|r| r.version == opts.version)
        .collect();
    if releases.is_empty() {
        bail!(
            "version {} is not published in {}",
            opts.version,
            opts.update_repo.display()
        );
    }
    let now = now_secs();
    let mut changed = RolloutChanged {
        rollouts: Vec::new(),
        withdrawn: Vec::new(),
    };
    for release in &releases {
        let target = release.target_name();
        let current = read_rollout(&targets_dir, &target)?;
        let rollout_path = targets_dir.join(Rollout::target_name_of(&target));
        let next = match (opts.change, current) {
            (RolloutChange::Withdraw, _) => {
                for path in [targets_dir.join(&target), rollout_path.clone()] {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
                    }
                }
                changed.withdrawn.push(target);
                continue;
            }
            (RolloutChange::Pause | RolloutChange::Resume, None) => {
                bail!("{target} has no rollout: it is offered to every host already (withdraw it instead)")
            }
            (RolloutChange::Pause, Some(mut r)) => {
                r.pause(now);
                r
            }
            (RolloutChange::Resume, Some(mut r)) => {
                r.resume(now);
                r
            }
            (RolloutChange::Duration(d), current) => Rollout {
                duration_secs: d.as_secs(),
                ..current.unwrap_or(Rollout {
                    release: target.clone(),
                    start: now,
                    duration_secs: 0,
                    paused_at: None,
                })
            },
        };
        cairn_common::fsutil::write_atomic(&rollout_path, &serde_json::to_vec_pretty(&next)?)?;
        changed.rollouts.push(next);
    }
    let tuf_dir = opts.update_repo.join(TUF_DIR);
    tuf_repo::sign_metadata(
        &opts.keys,
        &targets_dir,
        &tuf_dir,
        expiry(opts.timestamp_ttl, opts.metadata_ttl),
    )?;
    Ok(changed)
}

/// The previous releases of the same line a delta should start from: the
/// newest `n` other commits, newest first.
pub fn delta_sources(existing: &[Release], new: &Release, n: usize) -> Vec<Release> {
    let mut same: Vec<(Version, &Release)> = existing
        .iter()
        .filter(|r| r.arch == new.arch && r.variant == new.variant && r.stream == new.stream && r.commit != new.commit)
        .filter_map(|r| Version::parse(&r.version).ok().map(|v| (v, r)))
        .collect();
    same.sort_by(|a, b| b.0.cmp(&a.0));
    same.into_iter().take(n).map(|(_, r)| r.clone()).collect()
}

fn read_releases(targets_dir: &Path) -> Result<Vec<Release>> {
    let mut out = Vec::new();
    for path in tuf_repo::release_records(targets_dir)? {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        out.push(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a Cairn release record", path.display()))?,
        );
    }
    Ok(out)
}

/// The variant a commit was built as (`cairn.flavor` held it before
/// `cairn.variant` existed).
fn commit_variant(repo: &Path, commit: &str) -> Result<Variant> {
    let text = match ostree::metadata(repo, commit, meta::VARIANT) {
        Ok(v) => ostree::unquote(&v),
        Err(_) => ostree::unquote(&ostree::metadata(repo, commit, meta::FLAVOR)?),
    };
    text.parse()
        .with_context(|| format!("commit {commit}: its variant `{text}`"))
}

pub fn publish(opts: &PublishOptions) -> Result<Published> {
    // Everything that can be refused is checked before anything is written
    // (a root from before consistent snapshots is upgraded here, or refused
    // when the key folder lacks the root keys to sign its successor).
    tuf_repo::upgrade_root(&opts.keys)?;
    if let Some(req) = &opts.requires {
        VersionReq::parse(req).with_context(|| format!("--requires `{req}` is not a semver requirement"))?;
    }
    let commit = ostree::rev_parse(&opts.build_repo, &opts.rev)?
        .with_context(|| format!("{} has no commit {}", opts.build_repo.display(), opts.rev))?;
    let version = ostree::unquote(&ostree::metadata(&opts.build_repo, &commit, meta::VERSION)?);
    Version::parse(&version)
        .with_context(|| format!("commit {commit} has version `{version}`, not a semantic version"))?;
    if opts.rev.len() == 64 {
        bail!("publish takes the image's ref (cairn/<arch>/<variant>/<stream>), not a bare commit")
    }
    let id = ImageId::from_ref(&opts.rev)?;
    let ostree_ref = id.ostree_ref();
    let committed = commit_variant(&opts.build_repo, &commit)?;
    if committed != id.variant {
        bail!(
            "ref {ostree_ref} says variant {} but its commit says {committed}",
            id.variant
        );
    }
    let release = Release {
        version,
        arch: id.arch,
        variant: id.variant,
        stream: id.stream,
        ostree_ref: ostree_ref.clone(),
        commit: commit.clone(),
        requires: opts.requires.clone(),
    };

    let targets_dir = opts.update_repo.join(TARGETS_DIR);
    let existing = read_releases(&targets_dir)?;
    if let Some(clash) = existing
        .iter()
        .find(|r| r.target_name() == release.target_name() && r.commit != release.commit)
    {
        bail!(
            "{} {} is already published as commit {}; publish a new version instead of replacing a release",
            release.ostree_ref,
            release.version,
            clash.commit
        );
    }

    // 1. Objects.
    let repo = opts.update_repo.join(OSTREE_DIR);
    ostree::ensure_archive_repo(&repo)?;
    ostree::pull_local(&repo, &opts.build_repo, &ostree_ref, None)?;
    let sources = delta_sources(&existing, &release, opts.deltas);
    let to_debian = debian_release(&repo, &commit);
    for from in &sources {
        let bsdiff = bsdiff_pays(debian_release(&repo, &from.commit).as_deref(), to_debian.as_deref());
        Cmd::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            // Parts as files of their own: `--inline` put them in the
            // superblock, which the client refuses over 10 MiB (a release
            // on a new Debian base changes nearly every file: ~100 MB).
            .args(["static-delta", "generate"])
            .args((!bsdiff).then_some("--disable-bsdiff"))
            .arg(format!("--from={}", from.commit))
            .arg(format!("--to={commit}"))
            .progress()
            .run()
            .with_context(|| format!("static delta {} → {}", from.version, release.version))?;
    }
    ensure_superblocks_fit(&repo)?;
    Cmd::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["summary", "--update"])
        .run()?;

    // 2. The release record.
    std::fs::create_dir_all(&targets_dir)?;
    let target = release.target_name();
    cairn_common::fsutil::write_atomic(&targets_dir.join(&target), &serde_json::to_vec_pretty(&release)?)?;

    // 2b. Its rollout, signed with it.
    let rollout = match opts.rollout {
        Some(d) => {
            let r = Rollout {
                release: target.clone(),
                start: now_secs(),
                duration_secs: d.as_secs(),
                paused_at: None,
            };
            cairn_common::fsutil::write_atomic(&targets_dir.join(r.target_name()), &serde_json::to_vec_pretty(&r)?)?;
            Some(r)
        }
        None => read_rollout(&targets_dir, &target)?,
    };

    // 3. Signed metadata (consistent snapshots), timestamp last.
    let tuf_dir = opts.update_repo.join(TUF_DIR);
    std::fs::create_dir_all(&tuf_dir)?;
    let all = tuf_repo::sign_metadata(
        &opts.keys,
        &targets_dir,
        &tuf_dir,
        expiry(opts.timestamp_ttl, opts.metadata_ttl),
    )?;
    tracing::info!(version = %release.version, commit = %commit, target = %target, "published");
    Ok(Published {
        release,
        target,
        deltas_from: sources.into_iter().map(|r| r.version).collect(),
        releases_in_repo: all.len(),
        rollout,
    })
}

/// The Debian release a commit of `repo` was built from, if it says.
fn debian_release(repo: &Path, commit: &str) -> Option<String> {
    let value = ostree::metadata(repo, commit, meta::DEBIAN_RELEASE).ok()?;
    Some(ostree::unquote(&value)).filter(|r| !r.is_empty())
}

/// Whether a static delta between commits of these Debian releases should
/// diff changed files with bsdiff. Within one release a changed file is
/// usually a package's small fix, which bsdiff shrinks. Across releases
/// every binary is rebuilt: measured for bookworm → trixie (x86_64 dev),
/// bsdiff took 9.5 minutes for a 98 MB delta, LZMA alone 80 s for 53 MB.
/// A commit that does not say its release (from before Cairn recorded
/// it) counts as another release.
fn bsdiff_pays(from: Option<&str>, to: Option<&str>) -> bool {
    matches!((from, to), (Some(a), Some(b)) if a == b)
}

/// The largest delta superblock ostree's client accepts (its
/// `OSTREE_MAX_METADATA_SIZE`, 10 MiB): a bigger one fails every host's pull.
const MAX_SUPERBLOCK_BYTES: u64 = 10 << 20;

/// Fail, naming the file, if a static delta of `repo` has a superblock no
/// client would download.
fn ensure_superblocks_fit(repo: &Path) -> Result<()> {
    let deltas = repo.join("deltas");
    if !deltas.is_dir() {
        return Ok(());
    }
    for prefix in std::fs::read_dir(&deltas)? {
        for delta in std::fs::read_dir(prefix?.path())? {
            let superblock = delta?.path().join("superblock");
            let Ok(meta) = std::fs::metadata(&superblock) else {
                continue;
            };
            if meta.len() > MAX_SUPERBLOCK_BYTES {
                bail!(
                    "{} is {} bytes, over the {MAX_SUPERBLOCK_BYTES} bytes ostree's client accepts: hosts could not pull this delta",
                    superblock.display(),
                    meta.len()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsdiff_only_within_one_debian_release() {
        assert!(bsdiff_pays(Some("trixie"), Some("trixie")));
        assert!(!bsdiff_pays(Some("bookworm"), Some("trixie")));
        assert!(!bsdiff_pays(None, Some("trixie")), "a commit from before the key");
        assert!(!bsdiff_pays(None, None));
    }

    #[test]
    fn a_delta_superblock_over_the_clients_limit_is_refused() {
        let repo = tempfile::tempdir().unwrap();
        ensure_superblocks_fit(repo.path()).unwrap();
        let delta = repo.path().join("deltas/ab/cdef-ghij");
        std::fs::create_dir_all(&delta).unwrap();
        std::fs::write(delta.join("0"), vec![0u8; 16]).unwrap();
        let superblock = delta.join("superblock");
        std::fs::File::create(&superblock)
            .unwrap()
            .set_len(MAX_SUPERBLOCK_BYTES)
            .unwrap();
        ensure_superblocks_fit(repo.path()).unwrap();
        std::fs::File::create(&superblock)
            .unwrap()
            .set_len(MAX_SUPERBLOCK_BYTES + 1)
            .unwrap();
        let err = ensure_superblocks_fit(repo.path()).unwrap_err().to_string();
        assert!(err.contains("deltas/ab/cdef-ghij/superblock"), "{err}");
        assert!(err.contains("hosts could not pull"), "{err}");
    }
    use cairn_common::layout::Arch;

    fn rel(version: &str, commit: char) -> Release {
        Release {
            version: version.into(),
            arch: Arch::X86_64,
            variant: "dev".parse().unwrap(),
            stream: "stable".into(),
            ostree_ref: "cairn/x86_64/dev/stable".into(),
            commit: commit.to_string().repeat(64),
            requires: None,
        }
    }

    #[test]
    fn deltas_come_from_the_newest_previous_releases_of_the_same_line() {
        let mut other_variant = rel("0.9.0", 'f');
        other_variant.variant = "prod".parse().unwrap();
        let existing = [
            rel("0.1.0", 'a'),
            rel("0.3.0", 'c'),
            rel("0.2.0", 'b'),
            other_variant,
            rel("0.4.0", 'd'),
        ];
        let new = rel("0.4.0", 'd');
        let got: Vec<String> = delta_sources(&existing, &new, 2)
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(got, ["0.3.0", "0.2.0"]);
        assert!(delta_sources(&existing, &new, 0).is_empty());
    }
}
