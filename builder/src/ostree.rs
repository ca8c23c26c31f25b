//! The ostree command-line operations the builder uses.
//!
//! The builder drives the `ostree` CLI (through the one process helper)
//! rather than libostree: these are the operations recorded as working on a
//! plain directory with no mounts, and the CLI keeps the builder free of a
//! native link dependency so it cross-builds trivially.

use std::path::Path;

use anyhow::{Context, Result};
use cairn_common::process::Cmd;

use crate::keys::SigningKey;

fn ostree(repo: &Path) -> Cmd {
    Cmd::new("ostree").arg(format!("--repo={}", repo.display()))
}

/// Create an archive-mode repo at `repo` unless one is there.
pub fn ensure_archive_repo(repo: &Path) -> Result<()> {
    if repo.join("config").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(repo).with_context(|| format!("creating {}", repo.display()))?;
    ostree(repo).args(["init", "--mode=archive"]).run()
}

/// The commit a ref points to, if the ref exists.
pub fn rev_parse(repo: &Path, rev: &str) -> Result<Option<String>> {
    let (status, out) = ostree(repo).args(["rev-parse", rev]).status_output()?;
    Ok(status.success().then(|| out.stdout.trim().to_owned()))
}

/// One layer of a commit's tree.
pub enum Tree<'a> {
    Dir(&'a Path),
    Commit(&'a str),
}

/// What to commit.
pub struct Commit<'a> {
    pub branch: &'a str,
    pub subject: &'a str,
    pub trees: Vec<Tree<'a>>,
    /// `--add-metadata-string` pairs.
    pub strings: Vec<(&'a str, String)>,
    /// `--add-metadata` pairs, values in GVariant text format.
    pub variants: Vec<(&'a str, String)>,
    pub sign: Option<&'a SigningKey>,
    /// Let ostree delete the source directory as it commits (faster).
    pub consume: bool,
}

/// Commit and return the new checksum.
pub fn commit(repo: &Path, c: &Commit<'_>) -> Result<String> {
    // No --owner-uid/--owner-gid: they would re-process every file of a
    // layered tree (seconds → tens of seconds) and flatten the packages'
    // own ownership (e.g. /etc/shadow's group). The builder runs as root,
    // so the files it stages are root's.
    let mut cmd = ostree(repo).args(["commit", "--branch", c.branch, "--subject", c.subject]);
    for t in &c.trees {
        cmd = match t {
            Tree::Dir(p) => cmd.arg(format!("--tree=dir={}", p.display())),
            Tree::Commit(rev) => cmd.arg(format!("--tree=ref={rev}")),
        };
    }
    for (k, v) in &c.strings {
        cmd = cmd.arg(format!("--add-metadata-string={k}={v}"));
    }
    for (k, v) in &c.variants {
        cmd = cmd.arg(format!("--add-metadata={k}={v}"));
    }
    if let Some(key) = c.sign {
        cmd = cmd
            .arg(format!("--gpg-sign={}", key.key_id))
            .arg(format!("--gpg-homedir={}", key.homedir.display()));
    }
    if c.consume {
        cmd = cmd.arg("--consume");
    }
    let out = cmd
        .progress()
        .output()
        .with_context(|| format!("committing {}", c.branch))?;
    let checksum = out.stdout.lines().last().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        checksum.len() == 64 && checksum.chars().all(|c| c.is_ascii_hexdigit()),
        "ostree commit printed no checksum: {:?}",
        out.stdout
    );
    Ok(checksum)
}

/// Copy `rev` and its objects from `src` into `dst` (hardlinks when it can).
pub fn pull_local(dst: &Path, src: &Path, rev: &str, remote: Option<&str>) -> Result<()> {
    let mut cmd = ostree(dst).arg("pull-local");
    if let Some(r) = remote {
        cmd = cmd.arg(format!("--remote={r}"));
    }
    cmd.arg(src)
        .arg(rev)
        .run()
        .with_context(|| format!("pulling {rev} from {}", src.display()))
}

/// Check out the folder `subpath` of `rev` to `dest` (which must not exist).
pub fn checkout_subpath(repo: &Path, rev: &str, subpath: &str, dest: &Path) -> Result<()> {
    ostree(repo)
        .args(["checkout", &format!("--subpath={subpath}"), rev])
        .arg(dest)
        .run()
        .with_context(|| format!("checking out {subpath} of {rev}"))
}

/// A metadata value of a commit, in GVariant text form.
pub fn metadata(repo: &Path, rev: &str, key: &str) -> Result<String> {
    Ok(ostree(repo)
        .args(["show", rev, &format!("--print-metadata-key={key}")])
        .output()
        .with_context(|| format!("reading `{key}` of {rev}"))?
        .stdout
        .trim()
        .to_owned())
}

/// Strip GVariant text quoting from a string value (`'1.0.0'` → `1.0.0`).
pub fn unquote(v: &str) -> String {
    v.trim().trim_matches('\'').to_owned()
}

/// Render name → version pairs as a GVariant `a{ss}` text literal.
pub fn string_dict<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let items: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("'{}': '{}'", escape(k), escape(v)))
        .collect();
    if items.is_empty() {
        "@a{ss} {}".to_owned()
    } else {
        format!("{{{}}}", items.join(", "))
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_literal_is_gvariant_text() {
        assert_eq!(
            string_dict([("a", "1:2.0"), ("b'", "x")]),
            "{'a': '1:2.0', 'b\\'': 'x'}"
        );
        assert_eq!(string_dict([]), "@a{ss} {}");
        assert_eq!(unquote(" '1.2.3'\n"), "1.2.3");
    }
}
