//! TUF keys and repositories as Cairn made them before consistent
//! snapshots, for the tests that check hosts and clients follow the
//! upgrade: `root.json` alone with `consistent_snapshot: false`,
//! unversioned `targets.json` and `snapshot.json`, and expiry times with
//! fractions of a second, all written by `tough`'s editor as publish did.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use cairn_builder::tuf_repo;
use cairn_common::release::Release;
use chrono::{Duration, Utc};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, Root, Signed};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn key_sources(keys: &Path, files: &[&str]) -> Vec<Box<dyn KeySource>> {
    files
        .iter()
        .map(|f| {
            Box::new(LocalKeySource {
                path: keys.join("tuf").join(f),
            }) as Box<dyn KeySource>
        })
        .collect()
}

/// Keys in `dir` as `cairn-build keygen` made them before consistent
/// snapshots. Returns a copy of the root, as images of then baked it.
pub fn keys(dir: &Path) -> PathBuf {
    tuf_repo::keygen(dir, 1, 1, Utc::now() + Duration::days(365)).unwrap();
    let root_file = dir.join("tuf/root.json");
    let mut root: Signed<Root> = serde_json::from_slice(&std::fs::read(&root_file).unwrap()).unwrap();
    root.signed.consistent_snapshot = false;
    root.signed.expires = Utc::now() + Duration::days(365) + Duration::nanoseconds(123_456_789);
    let signed = runtime()
        .block_on(SignedRole::new(
            root.signed.clone(),
            &KeyHolder::Root(root.signed),
            &key_sources(dir, &["root-1.pk8"]),
            &SystemRandom::new(),
        ))
        .unwrap();
    std::fs::write(&root_file, signed.buffer()).unwrap();
    std::fs::remove_file(dir.join("tuf/1.root.json")).unwrap();
    let baked = dir.join("baked-root.json");
    std::fs::write(&baked, signed.buffer()).unwrap();
    baked
}

/// Publish `releases` into `repo` as `cairn-build publish` did before
/// consistent snapshots (metadata version 1).
pub fn publish(keys: &Path, repo: &Path, releases: &[Release]) {
    let targets = repo.join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    let fraction = Duration::nanoseconds(987_654_321);
    runtime().block_on(async {
        let mut editor = RepositoryEditor::new(keys.join("tuf/root.json")).await.unwrap();
        for r in releases {
            let path = targets.join(r.target_name());
            std::fs::write(&path, serde_json::to_vec(r).unwrap()).unwrap();
            let (name, mut target) = RepositoryEditor::build_target(&path).await.unwrap();
            target.custom = tuf_repo::custom_of(r).unwrap();
            editor.add_target(name, target).unwrap();
        }
        let one = std::num::NonZeroU64::MIN;
        editor
            .targets_version(one)
            .unwrap()
            .targets_expires(Utc::now() + Duration::days(30) + fraction)
            .unwrap()
            .snapshot_version(one)
            .snapshot_expires(Utc::now() + Duration::days(30) + fraction)
            .timestamp_version(one)
            .timestamp_expires(Utc::now() + Duration::days(7) + fraction);
        let signed = editor
            .sign(&key_sources(keys, &["targets.pk8", "snapshot.pk8", "timestamp.pk8"]))
            .await
            .unwrap();
        signed.write(repo.join("tuf")).await.unwrap();
    });
    for f in ["targets.json", "snapshot.json", "timestamp.json", "1.root.json"] {
        assert!(repo.join("tuf").join(f).is_file(), "the old layout has {f}");
    }
}
