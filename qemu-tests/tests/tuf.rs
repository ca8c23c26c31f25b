//! The agent's trust decisions on real TUF repositories made by the
//! builder's publish code, served over HTTP on 127.0.0.1. No VM, no root:
//! these run with plain `cargo test`. Also: hosts whose root predates
//! consistent snapshots follow the upgrade, and a client reading while a
//! publish writes sees the old releases or the new, never a mix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_agent::releases::UpdateRepo;
use cairn_builder::tuf_repo::{self, Expiry, Stage};
use cairn_common::layout::Arch;
use cairn_common::release::Release;
use cairn_qemu_tests::http::Server;
use chrono::{Duration as Days, Utc};

#[path = "support/legacy_tuf.rs"]
mod legacy_tuf;

fn release(version: &str) -> Release {
    Release {
        version: version.into(),
        arch: Arch::X86_64,
        variant: "dev".parse().unwrap(),
        stream: "stable".into(),
        ostree_ref: "cairn/x86_64/dev/stable".into(),
        commit: format!("{:0>64}", version.replace('.', "")),
        requires: None,
    }
}

fn expiry(timestamp_days: i64) -> Expiry {
    Expiry {
        targets: Utc::now() + Days::days(30),
        snapshot: Utc::now() + Days::days(30),
        timestamp: Utc::now() + Days::days(timestamp_days),
    }
}

fn keys(dir: &Path) -> PathBuf {
    tuf_repo::keygen(dir, 1, 1, Utc::now() + Days::days(365)).unwrap();
    dir.to_owned()
}

/// Publish release records `versions` into `repo` (metadata versions go up each time).
fn publish(keys: &Path, repo: &Path, versions: &[&str], exp: Expiry) {
    let targets = repo.join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    for v in versions {
        let r = release(v);
        std::fs::write(targets.join(r.target_name()), serde_json::to_vec(&r).unwrap()).unwrap();
    }
    tuf_repo::sign_metadata(keys, &targets, &repo.join("tuf"), exp).unwrap();
}

fn client(keys: &Path, server: &Server, datastore: &Path) -> UpdateRepo {
    UpdateRepo {
        url: format!("http://127.0.0.1:{}", server.port),
        root: keys.join("tuf/root.json"),
        datastore: datastore.to_owned(),
        tries: 1,
        request_timeout: Duration::from_secs(10),
    }
}

fn error_of(repo: &UpdateRepo) -> String {
    format!(
        "{:#}",
        repo.offer().map(|o| o.releases).expect_err("metadata must be refused")
    )
}

#[test]
fn valid_metadata_yields_the_releases_it_signs() {
    let (k, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keys = keys(k.path());
    publish(&keys, r.path(), &["0.1.0", "0.2.0"], expiry(7));
    let server = Server::start(r.path()).unwrap();
    let mut got = client(&keys, &server, d.path()).offer().map(|o| o.releases).unwrap();
    got.sort_by(|a, b| a.version.cmp(&b.version));
    assert_eq!(got, vec![release("0.1.0"), release("0.2.0")]);
}

#[test]
fn rollouts_are_signed_beside_their_releases_paused_resumed_and_withdrawn() {
    use cairn_builder::publish::{change_rollout, RolloutChange, RolloutOptions};
    let (k, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keys = keys(k.path());
    publish(&keys, r.path(), &["0.1.0", "0.2.0"], expiry(7));
    let server = Server::start(r.path()).unwrap();
    let change = |version: &str, change| {
        change_rollout(&RolloutOptions {
            update_repo: r.path().to_owned(),
            keys: keys.clone(),
            version: version.into(),
            change,
            timestamp_ttl: Duration::from_secs(86_400),
            metadata_ttl: Duration::from_secs(86_400),
        })
    };
    let offer = || client(&keys, &server, d.path()).offer().unwrap();

    let before = chrono::Utc::now().timestamp() as u64;
    change("0.2.0", RolloutChange::Duration(Duration::from_secs(3600))).unwrap();
    let o = offer();
    assert_eq!(o.releases.len(), 2, "the release is still offered");
    let [rollout] = o.rollouts.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!(rollout.release, release("0.2.0").target_name());
    assert_eq!(rollout.duration_secs, 3600);
    assert!(rollout.start >= before && rollout.paused_at.is_none(), "{rollout:?}");

    change("0.2.0", RolloutChange::Pause).unwrap();
    assert!(offer().rollouts[0].paused_at.is_some());
    change("0.2.0", RolloutChange::Resume).unwrap();
    assert_eq!(offer().rollouts[0].paused_at, None);
    let e = change("0.1.0", RolloutChange::Pause).unwrap_err();
    assert!(
        e.to_string()
            .contains("has no rollout: it is offered to every host already"),
        "{e}"
    );
    let e = change("0.9.0", RolloutChange::Withdraw).unwrap_err();
    assert!(e.to_string().starts_with("version 0.9.0 is not published in"), "{e}");

    let withdrawn = change("0.2.0", RolloutChange::Withdraw).unwrap();
    assert_eq!(withdrawn.withdrawn, [release("0.2.0").target_name()]);
    let o = offer();
    assert_eq!(o.releases, [release("0.1.0")]);
    assert!(o.rollouts.is_empty());
}

#[test]
fn expired_timestamp_is_refused() {
    let (k, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keys = keys(k.path());
    publish(&keys, r.path(), &["0.1.0"], expiry(-1));
    let server = Server::start(r.path()).unwrap();
    let e = error_of(&client(&keys, &server, d.path()));
    assert!(
        e.contains("did not verify") && e.to_lowercase().contains("expired"),
        "{e}"
    );
}

#[test]
fn metadata_signed_by_another_key_is_refused() {
    let (k, other, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let trusted = keys(k.path());
    let attacker = keys(other.path());
    publish(&attacker, r.path(), &["9.0.0"], expiry(7));
    let server = Server::start(r.path()).unwrap();
    let e = error_of(&client(&trusted, &server, d.path()));
    assert!(e.contains("Signature threshold of 1 not met"), "{e}");
}

#[test]
fn tampered_or_unsigned_metadata_is_refused() {
    let (k, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keys = keys(k.path());
    publish(&keys, r.path(), &["0.1.0"], expiry(7));
    let server = Server::start(r.path()).unwrap();
    let targets = r.path().join("tuf/1.targets.json");
    let original = std::fs::read_to_string(&targets).unwrap();
    // Point the release at another commit: the signature no longer covers it.
    std::fs::write(&targets, original.replace(&release("0.1.0").commit, &"f".repeat(64))).unwrap();
    let e = error_of(&client(&keys, &server, d.path()));
    assert!(e.contains("Hash mismatch") && e.contains("targets.json"), "{e}");

    std::fs::write(&targets, &original).unwrap();
    let timestamp = r.path().join("tuf/timestamp.json");
    let mut ts: serde_json::Value = serde_json::from_slice(&std::fs::read(&timestamp).unwrap()).unwrap();
    ts["signatures"] = serde_json::json!([]);
    std::fs::write(&timestamp, serde_json::to_vec(&ts).unwrap()).unwrap();
    let e = error_of(&client(&keys, &server, d.path()));
    assert!(e.contains("Signature threshold of 1 not met for role timestamp"), "{e}");
}

#[test]
fn rolled_back_metadata_is_refused_once_newer_was_seen() {
    let (k, r, old, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keys = keys(k.path());
    publish(&keys, r.path(), &["0.1.0"], expiry(7));
    // Keep a copy of version 1 of the metadata, then publish version 2.
    copy_tree(r.path(), old.path());
    publish(&keys, r.path(), &["0.1.0", "0.2.0"], expiry(7));
    let server = Server::start(r.path()).unwrap();
    let repo = client(&keys, &server, d.path());
    assert_eq!(repo.offer().map(|o| o.releases).unwrap().len(), 2);
    // A server (or a man in the middle) now replays the older, validly signed metadata.
    server.set_root(old.path());
    let e = error_of(&repo);
    assert!(
        e.contains("Found version 1 of timestamp metadata when we had previously fetched version 2"),
        "{e}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), dst).unwrap();
        }
    }
}

fn versions_of(repo: &UpdateRepo) -> Vec<String> {
    let mut v: Vec<String> = repo
        .offer()
        .map(|o| o.releases)
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    v.sort();
    v
}

#[test]
fn hosts_with_a_root_from_before_consistent_snapshots_follow_the_upgrade() {
    let (k, r, d, fresh) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let baked = legacy_tuf::keys(k.path());
    let keys = k.path().to_owned();
    legacy_tuf::publish(&keys, r.path(), &[release("0.1.0")]);
    let server = Server::start(r.path()).unwrap();
    // A host in the field: the old root baked in, a datastore of what it trusted.
    let host = UpdateRepo {
        root: baked.clone(),
        ..client(&keys, &server, d.path())
    };
    assert_eq!(versions_of(&host), ["0.1.0"]);

    // The next publish upgrades the root and moves the repository to the new layout.
    publish(&keys, r.path(), &["0.2.0"], expiry(7));
    let tuf = r.path().join("tuf");
    for f in [
        "1.root.json",
        "2.root.json",
        "1.targets.json",
        "2.targets.json",
        "2.snapshot.json",
    ] {
        assert!(tuf.join(f).is_file(), "{f}");
    }
    let root2: serde_json::Value = serde_json::from_slice(&std::fs::read(tuf.join("2.root.json")).unwrap()).unwrap();
    assert_eq!(root2["signed"]["consistent_snapshot"], true);
    assert_eq!(
        std::fs::read(keys.join("tuf/root.json")).unwrap(),
        std::fs::read(tuf.join("2.root.json")).unwrap()
    );

    assert_eq!(versions_of(&host), ["0.1.0", "0.2.0"]);
    // The host fetched the versioned files, not the old unversioned ones.
    let asked: Vec<String> = server.requests().into_iter().map(|(p, _, _)| p).collect();
    assert!(asked.iter().any(|p| p == "/tuf/2.root.json"), "{asked:?}");
    assert!(asked.iter().any(|p| p == "/tuf/2.snapshot.json"), "{asked:?}");
    // A host installed from then on (root 2 baked in) and a host with the old root and no datastore.
    assert_eq!(versions_of(&client(&keys, &server, fresh.path())), ["0.1.0", "0.2.0"]);
    let (d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old_fresh = UpdateRepo {
        root: baked,
        ..client(&keys, &server, d2.path())
    };
    assert_eq!(versions_of(&old_fresh), ["0.1.0", "0.2.0"]);
    // And the publish after that needs no upgrade.
    publish(&keys, r.path(), &["0.3.0"], expiry(7));
    assert!(!tuf.join("3.root.json").exists());
    assert_eq!(versions_of(&host), ["0.1.0", "0.2.0", "0.3.0"]);
    assert_eq!(
        versions_of(&client(&keys, &server, d3.path())),
        ["0.1.0", "0.2.0", "0.3.0"]
    );
}

/// Publish 0.2.0 over a repository offering 0.1.0 one write at a time; after
/// each write, clients (a host that knew the repository before, and a new
/// one) must see exactly one of the two states.
fn check_every_step_of_a_publish(legacy: bool) {
    let (k, r, d) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (keys, baked) = if legacy {
        let baked = legacy_tuf::keys(k.path());
        legacy_tuf::publish(k.path(), r.path(), &[release("0.1.0")]);
        (k.path().to_owned(), baked)
    } else {
        let keys = keys(k.path());
        publish(&keys, r.path(), &["0.1.0"], expiry(7));
        (keys.clone(), keys.join("tuf/root.json"))
    };
    let server = Server::start(r.path()).unwrap();
    let known = UpdateRepo {
        root: baked.clone(),
        ..client(&keys, &server, d.path())
    };
    assert_eq!(versions_of(&known), ["0.1.0"]);

    let targets = r.path().join("targets");
    let record = release("0.2.0");
    std::fs::write(targets.join(record.target_name()), serde_json::to_vec(&record).unwrap()).unwrap();
    let plan = tuf_repo::plan_metadata(&keys, &targets, &r.path().join("tuf"), expiry(7)).unwrap();
    let stages: Vec<Stage> = plan.writes.iter().map(|w| w.stage).collect();
    if legacy {
        assert!(
            stages.contains(&Stage::LegacyCopy) && stages.contains(&Stage::Root),
            "{stages:?}"
        );
    }
    for (i, write) in plan.writes.iter().enumerate() {
        write.apply().unwrap();
        let done = i + 1 == plan.writes.len();
        let want: &[&str] = if done { &["0.1.0", "0.2.0"] } else { &["0.1.0"] };
        let step = format!("after writing {} ({:?})", write.path.display(), write.stage);
        let fresh = tempfile::tempdir().unwrap();
        let new_host = UpdateRepo {
            root: baked.clone(),
            ..client(&keys, &server, fresh.path())
        };
        for (who, repo) in [("a host that knew the repository", &known), ("a new host", &new_host)] {
            let got = repo.offer().map(|o| o.releases).map(|mut v| {
                v.sort_by(|a, b| a.version.cmp(&b.version));
                v.into_iter().map(|r| r.version).collect::<Vec<_>>()
            });
            match got {
                Ok(got) => assert_eq!(got, want, "{who} {step}"),
                Err(e) => panic!("{who} {step}: {e:#}"),
            }
        }
    }
}

#[test]
fn a_reader_during_a_publish_sees_the_old_releases_or_the_new_never_a_mix() {
    check_every_step_of_a_publish(false);
}

#[test]
fn a_reader_during_the_publish_that_upgrades_an_old_repository_sees_the_old_releases_or_the_new() {
    check_every_step_of_a_publish(true);
}
