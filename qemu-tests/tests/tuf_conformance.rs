//! An independent TUF client reads what `cairn-build publish` makes:
//! python-tuf's `ngclient.Updater` (the reference implementation) refreshes
//! the metadata of a repository published by the builder's publish code,
//! served over HTTP on 127.0.0.1, and downloads a release record through
//! it.
//!
//! Needs python-tuf (not in Debian 12, nor its backports): `cargo xtask
//! test` installs a pinned version from PyPI into a virtual environment in
//! the cache (xtask `host::ensure_python_tuf`) and names its interpreter in
//! `CAIRN_PYTHON_TUF`; nothing is downloaded while the tests run. Ignored,
//! so plain `cargo test` needs nothing but Rust. Also needs the `ostree`
//! CLI (publish's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_builder::ostree::{self, Commit, Tree};
use cairn_builder::publish::{self, PublishOptions};
use cairn_builder::tuf_repo;
use cairn_common::layout::Arch;
use cairn_common::metadata as meta;
use cairn_common::process::Cmd;
use cairn_common::release::Release;
use cairn_qemu_tests::http::Server;
use chrono::Utc;

#[path = "support/legacy_tuf.rs"]
mod legacy_tuf;

/// The variable naming a Python interpreter that has python-tuf.
const PYTHON_ENV: &str = "CAIRN_PYTHON_TUF";
const REF: &str = "cairn/x86_64/dev/stable";

/// A python-tuf client: trust `root`, refresh from `base`, download `target`.
/// Prints python-tuf's version, then the target's custom metadata as JSON.
const CLIENT: &str = r#"
import json, sys, tuf
from tuf.ngclient import Updater

root, base, target, work = sys.argv[1:5]
print("python-tuf", tuf.__version__, file=sys.stderr)
with open(root, "rb") as f:
    trusted = f.read()
updater = Updater(
    metadata_dir=work + "/metadata",
    metadata_base_url=base + "/tuf/",
    target_base_url=base + "/targets/",
    target_dir=work + "/downloads",
    bootstrap=trusted,
)
updater.refresh()
info = updater.get_targetinfo(target)
if info is None:
    sys.exit("python-tuf: no target " + target)
path = updater.download_target(info)
with open(path, "rb") as f:
    record = json.load(f)
print(json.dumps({"version": tuf.__version__, "custom": info.custom, "record": record}))
"#;

fn python() -> PathBuf {
    std::env::var_os(PYTHON_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{PYTHON_ENV} is not set: `cargo xtask test` installs python-tuf and sets it; by hand: \
             python3 -m venv DIR && DIR/bin/pip install tuf, then {PYTHON_ENV}=DIR/bin/python"
        )
    })
}

/// What python-tuf said: its version and the target it fetched, or why it refused.
fn python_tuf(root: &Path, server: &Server, target: &str) -> Result<serde_json::Value, String> {
    let work = tempfile::tempdir().unwrap();
    for d in ["metadata", "downloads"] {
        std::fs::create_dir_all(work.path().join(d)).unwrap();
    }
    let (status, out) = Cmd::new(python())
        .args(["-c", CLIENT])
        .arg(root)
        .arg(format!("http://127.0.0.1:{}", server.port))
        .arg(target)
        .arg(work.path())
        .timeout(Duration::from_secs(120))
        .status_output()
        .unwrap();
    if status.success() {
        Ok(serde_json::from_str(out.stdout.lines().last().unwrap_or("")).unwrap())
    } else {
        Err(out.stderr_tail)
    }
}

/// Commit a small tree as `version` of the dev line and publish it with
/// the builder's publish code.
fn publish_version(build_repo: &Path, update_repo: &Path, keys: &Path, version: &str, deltas: usize) -> Release {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("usr/lib")).unwrap();
    std::fs::write(
        tree.path().join("usr/lib/os-release"),
        format!("VERSION_ID={version}\n"),
    )
    .unwrap();
    ostree::ensure_archive_repo(build_repo).unwrap();
    ostree::commit(
        build_repo,
        &Commit {
            branch: REF,
            subject: version,
            trees: vec![Tree::Dir(tree.path())],
            strings: vec![(meta::VERSION, version.to_owned()), (meta::FLAVOR, "dev".to_owned())],
            variants: Vec::new(),
            sign: None,
            consume: false,
        },
    )
    .unwrap();
    publish::publish(&PublishOptions {
        build_repo: build_repo.to_owned(),
        rev: REF.to_owned(),
        update_repo: update_repo.to_owned(),
        keys: keys.to_owned(),
        deltas,
        requires: None,
        rollout: None,
        timestamp_ttl: Duration::from_secs(7 * 86_400),
        metadata_ttl: Duration::from_secs(30 * 86_400),
    })
    .unwrap()
    .release
}

fn assert_fetched(got: &serde_json::Value, release: &Release) {
    let want = serde_json::to_value(release).unwrap();
    assert_eq!(got["record"], want, "the record python-tuf downloaded");
    assert_eq!(got["custom"], want, "the target's signed custom metadata");
}

#[test]
#[ignore = "needs python-tuf (CAIRN_PYTHON_TUF) and ostree; run by `cargo xtask test`"]
fn python_tuf_reads_a_published_repository() {
    let (k, build, updates) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    tuf_repo::keygen(k.path(), 1, 1, Utc::now() + chrono::Duration::days(365)).unwrap();
    let (build, repo) = (build.path().join("repo"), updates.path());
    let first = publish_version(&build, repo, k.path(), "0.1.0", 1);
    let second = publish_version(&build, repo, k.path(), "0.2.0", 1);
    let server = Server::start(repo).unwrap();
    // Trust the first root, as an image does, and walk from there.
    let root = repo.join("tuf/1.root.json");
    let got = python_tuf(&root, &server, &second.target_name()).unwrap_or_else(|e| panic!("python-tuf: {e}"));
    eprintln!("python-tuf {} read the repository", got["version"]);
    assert_fetched(&got, &second);
    let got = python_tuf(&root, &server, &first.target_name()).unwrap();
    assert_fetched(&got, &first);
    // Versioned metadata and records by content, nothing else.
    let asked: Vec<String> = server.requests().into_iter().map(|(p, _, _)| p).collect();
    for p in &asked {
        let file = p.rsplit('/').next().unwrap();
        assert!(
            file == "timestamp.json" || tuf_repo::versioned_name(file).is_some() || tuf_repo::is_hashed_target(file),
            "python-tuf asked for {p}: {asked:?}"
        );
    }
}

#[test]
#[ignore = "needs python-tuf (CAIRN_PYTHON_TUF) and ostree; run by `cargo xtask test`"]
fn python_tuf_reads_a_repository_carried_over_from_the_old_layout() {
    let (k, build, updates) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let old_root = legacy_tuf::keys(k.path());
    let repo = updates.path();
    let old = Release {
        version: "0.1.0".into(),
        arch: Arch::X86_64,
        variant: "dev".parse().unwrap(),
        stream: "stable".into(),
        ostree_ref: REF.into(),
        commit: "1".repeat(64),
        requires: None,
    };
    legacy_tuf::publish(k.path(), repo, std::slice::from_ref(&old));
    let server = Server::start(repo).unwrap();
    // What the issue reported: an independent client refuses the old metadata.
    let refused = python_tuf(&old_root, &server, &old.target_name()).expect_err("the old layout is not conformant");
    assert!(
        refused.contains("does not match format '%Y-%m-%dT%H:%M:%SZ'"),
        "{refused}"
    );

    let new = publish_version(&build.path().join("repo"), repo, k.path(), "0.2.0", 0);
    let root2 = repo.join("tuf/2.root.json");
    for release in [&new, &old] {
        let got = python_tuf(&root2, &server, &release.target_name()).unwrap_or_else(|e| panic!("python-tuf: {e}"));
        assert_fetched(&got, release);
    }
}
