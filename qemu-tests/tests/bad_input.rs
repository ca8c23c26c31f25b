//! Bad input to `cairn-build`: each gives a clear error that names what is
//! wrong and where, and leaves nothing behind that looks like a result.
//! Runs the real binary against real inputs; needs `cargo xtask test`
//! (root for mmdebstrap, the Debian mirror, and a built repo).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_qemu_tests::http::Server;
use cairn_qemu_tests::{apt_repo, Artifacts};

struct Run {
    ok: bool,
    stderr: String,
}

#[allow(
    clippy::disallowed_methods,
    reason = "the builder under test: its whole stderr is the subject, not a log"
)]
fn build(a: &Artifacts, args: &[&str]) -> Run {
    let out = Command::new(&a.builder)
        .args(args)
        .output()
        .expect("running cairn-build");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Run {
        ok: out.status.success(),
        stderr,
    }
}

/// A copy of the image definition folder with `edit` applied to the manifest.
fn manifest_copy(a: &Artifacts, edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = cairn_qemu_tests::artifacts::copy_image_definition(&a.manifest, dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).unwrap();
    (dir, path)
}

fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.contains(needle)).expect("needle in file") + 1
}

fn compose(a: &Artifacts, manifest: &Path, repo: &Path, keys: &Path) -> Run {
    build(
        a,
        &[
            "compose",
            "--manifest",
            manifest.to_str().unwrap(),
            "--flavor",
            "dev",
            "--arch",
            a.arch.as_str(),
            "--platform",
            a.platform.as_str(),
            "--repo",
            repo.to_str().unwrap(),
            "--cache",
            a.cache.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--agent-dir",
            a.agent_dir.to_str().unwrap(),
        ],
    )
}

/// Compose must fail with `message` at `file:line:`, creating no repo.
fn assert_compose_refused(a: &Artifacts, manifest: &Path, line: usize, message: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    let run = compose(a, manifest, &repo, &a.keys);
    assert!(!run.ok, "compose accepted a bad manifest");
    let location = format!("{}:{line}:", manifest.display());
    assert!(
        run.stderr.contains(&location),
        "error does not point at {location}:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains(message), "error lacks {message:?}:\n{}", run.stderr);
    assert!(!repo.exists(), "a repo was created for a refused manifest");
}

#[test]
#[ignore = "runs the builder; run by `cargo xtask test`"]
fn malformed_toml_is_refused_with_its_location() {
    let a = Artifacts::load().unwrap();
    let (_d, m) = manifest_copy(&a, |t| t.replacen("stream = \"stable\"", "stream = \"stable", 1));
    assert_compose_refused(&a, &m, line_of(&m, "stream = "), "invalid basic string");
}

#[test]
#[ignore = "runs the builder; run by `cargo xtask test`"]
fn unknown_key_is_refused_with_its_location() {
    let a = Artifacts::load().unwrap();
    let (_d, m) = manifest_copy(&a, |t| t.replacen("[disk]\n", "[disk]\nesp-sise = \"64MiB\"\n", 1));
    assert_compose_refused(&a, &m, line_of(&m, "esp-sise"), "unknown field `esp-sise`");
}

#[test]
#[ignore = "runs the builder; run by `cargo xtask test`"]
fn overlay_escaping_the_tree_is_refused() {
    let a = Artifacts::load().unwrap();
    let (_d, m) = manifest_copy(&a, |t| {
        t.replacen(
            "overlays = [\"overlay/base\"]",
            "overlays = [\"overlay/../../../etc\"]",
            1,
        )
    });
    assert_compose_refused(
        &a,
        &m,
        line_of(&m, "overlay/../../../etc"),
        "escapes the manifest's folder",
    );
}

/// The test apt repository (see `apt_repo`), served on loopback.
fn served_apt_repo(a: &Artifacts, signing: apt_repo::Signing) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    apt_repo::write(dir.path(), a.arch, signing).unwrap();
    let server = Server::start(dir.path()).unwrap();
    (dir, server)
}

#[test]
#[ignore = "runs mmdebstrap against the Debian mirror; run by `cargo xtask test`"]
fn unknown_package_is_refused_where_the_manifest_names_it() {
    let a = Artifacts::load().unwrap();
    // With one of the user's own repositories, pinned: apt takes its
    // source line and pin, reads it, and the package is in neither.
    let (_repo, server) = served_apt_repo(&a, apt_repo::Signing::Signed);
    let url = format!("http://127.0.0.1:{}", server.port);
    let (_d, m) = manifest_copy(&a, |t| {
        let t = t.replacen(
            "debug = [\"procps\"",
            "debug = [\"cairn-no-such-package\", \"procps\"",
            1,
        );
        apt_repo::in_manifest(&t, "dev", &url, &apt_repo::public_key(), Some(100))
    });
    assert_compose_refused(
        &a,
        &m,
        line_of(&m, "cairn-no-such-package"),
        "package `cairn-no-such-package` is not in the configured Debian suites",
    );
    let run = compose(&a, &m, &tempfile::tempdir().unwrap().path().join("repo"), &a.keys);
    assert!(
        run.stderr
            .contains("nor in the manifest's repositories `cairn-test` (http://127.0.0.1:"),
        "{}",
        run.stderr
    );
    let asked: Vec<String> = server.requests().into_iter().map(|(path, _, _)| path).collect();
    assert!(
        asked.iter().any(|p| p.contains("binary-") && p.contains("Packages")),
        "apt did not read the repository's package list: {asked:?}"
    );
}

/// Compose with the test repository served signed as `signing` and
/// trusted through `key` must be refused at the entry's table header
/// (the line above its name) with `says(url)`; returns the paths the
/// repository's server was asked for.
fn assert_repository_refused(
    a: &Artifacts,
    signing: apt_repo::Signing,
    key: &Path,
    says: impl Fn(&str) -> String,
) -> Vec<String> {
    let (_repo, server) = served_apt_repo(a, signing);
    let url = format!("http://127.0.0.1:{}", server.port);
    let (_d, m) = manifest_copy(a, |t| apt_repo::in_manifest(t, "dev", &url, key, None));
    assert_compose_refused(a, &m, line_of(&m, "name = \"cairn-test\"") - 1, &says(&url));
    server.requests().into_iter().map(|(path, _, _)| path).collect()
}

#[test]
#[ignore = "runs the builder against a loopback apt repository; run by `cargo xtask test`"]
fn a_repository_unsigned_or_signed_by_another_key_is_refused_before_any_download() {
    let a = Artifacts::load().unwrap();
    assert_repository_refused(&a, apt_repo::Signing::Unsigned, &apt_repo::public_key(), |url| {
        format!("repository `cairn-test` ({url}): the repository is unsigned")
    });
    let asked = assert_repository_refused(&a, apt_repo::Signing::Signed, &apt_repo::other_key(), |url| {
        format!("{url}/dists/stable/InRelease is not signed by the key")
    });
    assert_eq!(
        asked,
        ["/dists/stable/InRelease"],
        "nothing but the release file was fetched"
    );
    // A repository with a detached Release.gpg only, by another key.
    assert_repository_refused(&a, apt_repo::Signing::Detached, &apt_repo::other_key(), |url| {
        format!("{url}/dists/stable/Release is not signed by the key")
    });
}

#[test]
#[ignore = "runs the builder; run by `cargo xtask test`"]
fn a_kernel_missing_fragment_options_is_refused_naming_each_one() {
    let a = Artifacts::load().unwrap();
    let (d, m) = manifest_copy(&a, |t| {
        t.replacen(
            "config = [\n",
            "config = [\n  \"../kernel-config/test-missing.config\",\n",
            1,
        )
    });
    std::fs::write(
        d.path().join("kernel-config/test-missing.config"),
        "# Options no kernel has.\n# A made-up feature.\nCONFIG_CAIRN_TEST_MISSING=y\n# Another.\n# cairn: module=cairn_test_missing\nCONFIG_CAIRN_TEST_MISSING_TOO=m\n",
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    let run = compose(&a, &m, &repo, &a.keys);
    assert!(!run.ok, "compose accepted a kernel that misses options");
    for expected in [
        "test-missing.config:3: CONFIG_CAIRN_TEST_MISSING: required =y",
        "test-missing.config:6: CONFIG_CAIRN_TEST_MISSING_TOO: required =m",
    ] {
        assert!(
            run.stderr.contains(expected),
            "error lacks {expected:?}:\n{}",
            run.stderr
        );
    }
    assert!(!repo.exists(), "a repo was created for a refused kernel");
}

#[test]
#[ignore = "runs the builder; run by `cargo xtask test`"]
fn missing_signing_key_is_refused_before_any_work() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let keys = scratch.path().join("no-keys");
    let repo = scratch.path().join("repo");
    let run = compose(&a, &a.manifest, &repo, &keys);
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&format!("no signing key in {}", keys.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cairn-build keygen"),
        "the error says how to make one: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("mmdebstrap"),
        "work started before the key was checked"
    );
    assert!(!repo.exists());
}

#[test]
#[ignore = "writes a disk image; run by `cargo xtask test`"]
fn disk_too_small_for_the_os_is_refused_and_leaves_no_image() {
    let a = Artifacts::load().unwrap();
    let (_d, m) = manifest_copy(&a, |t| t.replacen("root-size = \"2GiB\"", "root-size = \"300MiB\"", 1));
    let out = tempfile::tempdir().unwrap();
    let run = build(
        &a,
        &[
            "image",
            "--manifest",
            m.to_str().unwrap(),
            "--flavor",
            "dev",
            "--arch",
            a.arch.as_str(),
            "--platform",
            a.platform.as_str(),
            "--repo",
            a.repo.to_str().unwrap(),
            "--output",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(!run.ok, "an image was written to a too-small disk");
    assert!(
        run.stderr
            .contains("disk.root-size is 300 MiB but the OS needs at least"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&m.display().to_string()), "{}", run.stderr);
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
