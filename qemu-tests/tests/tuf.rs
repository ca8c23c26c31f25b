//! The agent's trust decisions on real TUF repositories made by the
//! builder's publish code, served over HTTP on 127.0.0.1. No VM, no root:
//! these run with plain `cargo test`.

use std::path::Path;
use std::time::Duration;

use cairn_agent::releases::UpdateRepo;
use cairn_builder::tuf_repo::{self, Expiry};
use cairn_common::layout::Arch;
use cairn_common::release::Release;
use cairn_qemu_tests::http::Server;
use chrono::{Duration as Days, Utc};

fn release(version: &str) -> Release {
    Release {
        version: version.into(),
        arch: Arch::X86_64,
        flavor: "dev".into(),
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

fn keys(dir: &Path) -> std::path::PathBuf {
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
    format!("{:#}", repo.releases().expect_err("metadata must be refused"))
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
    let mut got = client(&keys, &server, d.path()).releases().unwrap();
    got.sort_by(|a, b| a.version.cmp(&b.version));
    assert_eq!(got, vec![release("0.1.0"), release("0.2.0")]);
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
    let targets = r.path().join("tuf/targets.json");
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
    assert_eq!(repo.releases().unwrap().len(), 2);
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
