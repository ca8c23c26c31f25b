//! Releases for update tests, made the way an operator makes them:
//! `cairn-build compose` and `cairn-build publish` into an update
//! repository that [`crate::http::Server`] serves. Also the ways a broken or
//! compromised pipeline can get a bad release signed, to test refusals.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_common::process::Cmd;
use cairn_common::release::{Release, TARGETS_DIR, TUF_DIR};
use serde_json::Value;

use cairn_builder::image::BuiltImage;

use crate::Artifacts;

/// Where test releases are built and published.
pub struct TestReleases<'a> {
    pub artifacts: &'a Artifacts,
    /// OSTree repo the new releases are committed to.
    pub build_repo: PathBuf,
    /// Root the HTTP server serves; the update repository is `repo/` in it
    /// (the images update from `http://10.0.2.100/repo`).
    pub www: PathBuf,
}

impl<'a> TestReleases<'a> {
    pub fn new(artifacts: &'a Artifacts, scratch: &Path) -> Self {
        Self {
            artifacts,
            build_repo: scratch.join("build"),
            www: scratch.join("www"),
        }
    }

    /// The update repository (`tuf/`, `targets/`, `ostree/`).
    pub fn updates(&self) -> PathBuf {
        self.www.join("repo")
    }

    fn cairn_build(&self, args: &[&str]) -> Result<String> {
        let out = Cmd::new(&self.artifacts.builder).args(args).output()?;
        Ok(out.stdout)
    }

    /// Which image (`--manifest`, `--flavor`, `--arch`, `--platform`) in
    /// which repository, for `verb`.
    fn image_args<'s>(&'s self, verb: &'s str, repo: &'s Path) -> Vec<&'s str> {
        let a = self.artifacts;
        vec![
            verb,
            "--manifest",
            path(&a.manifest),
            "--flavor",
            "dev",
            "--arch",
            a.arch.as_str(),
            "--platform",
            a.platform.as_str(),
            "--repo",
            path(repo),
        ]
    }

    /// [`TestReleases::image_args`] and the signing keys.
    fn common_args<'s>(&'s self, verb: &'s str, repo: &'s Path) -> Vec<&'s str> {
        let mut args = self.image_args(verb, repo);
        args.extend(["--keys", path(&self.artifacts.keys)]);
        args
    }

    /// Publish the booted image's release (v1, from the image's own repo).
    pub fn publish_booted(&self) -> Result<Value> {
        self.publish_from(&self.artifacts.repo)
    }

    /// Commit a new release of the dev image (its package layer comes from
    /// the cache), with `overlays` laid over it.
    pub fn compose(&self, version: &str, overlays: &[PathBuf]) -> Result<()> {
        self.compose_from(None, version, overlays)
    }

    /// [`TestReleases::compose`] from another Debian release than the
    /// manifest's (`cairn-build compose --debian-release`).
    pub fn compose_on_debian(&self, release: &str, version: &str, overlays: &[PathBuf]) -> Result<()> {
        self.compose_from(Some(release), version, overlays)
    }

    fn compose_from(&self, debian_release: Option<&str>, version: &str, overlays: &[PathBuf]) -> Result<()> {
        let a = self.artifacts;
        let mut args = self.common_args("compose", &self.build_repo);
        args.extend([
            "--cache",
            path(&a.cache),
            "--agent-dir",
            path(&a.agent_dir),
            "--version",
            version,
        ]);
        if let Some(release) = debian_release {
            args.extend(["--debian-release", release]);
        }
        for o in overlays {
            args.extend(["--overlay", path(o)]);
        }
        self.cairn_build(&args)?;
        Ok(())
    }

    /// The disk image of the newest release committed by
    /// [`TestReleases::compose`], written into `output`.
    pub fn image(&self, output: &Path) -> Result<BuiltImage> {
        let mut args = self.image_args("image", &self.build_repo);
        args.extend(["--output", path(output)]);
        let out = self.cairn_build(&args)?;
        serde_json::from_str(&out).with_context(|| format!("image printed no JSON report:\n{out}"))
    }

    /// Publish the newest release committed by [`TestReleases::compose`];
    /// returns `cairn-build publish`'s JSON report.
    pub fn publish(&self) -> Result<Value> {
        self.publish_from(&self.build_repo)
    }

    fn publish_from(&self, repo: &Path) -> Result<Value> {
        self.publish_with(repo, &[])
    }

    /// [`TestReleases::publish`] rolled out over `duration` (`--rollout-duration`).
    pub fn publish_rolled_out(&self, duration: &str) -> Result<Value> {
        self.publish_with(&self.build_repo, &["--rollout-duration", duration])
    }

    /// `cairn-build rollout --version <version> <change…>` on the update
    /// repository; returns its JSON report.
    pub fn change_rollout(&self, version: &str, change: &[&str]) -> Result<Value> {
        let updates = self.updates();
        let mut args = vec![
            "rollout",
            "--update-repo",
            path(&updates),
            "--keys",
            path(&self.artifacts.keys),
            "--version",
            version,
        ];
        args.extend(change);
        let out = self.cairn_build(&args)?;
        serde_json::from_str(&out).with_context(|| format!("rollout printed no JSON report:\n{out}"))
    }

    fn publish_with(&self, repo: &Path, more: &[&str]) -> Result<Value> {
        let updates = self.updates();
        let mut args = self.common_args("publish", repo);
        args.extend(["--update-repo", path(&updates)]);
        args.extend(more);
        let out = self.cairn_build(&args)?;
        serde_json::from_str(&out).with_context(|| format!("publish printed no JSON report:\n{out}"))
    }

    /// Compose and publish `version` with a file of `random_bytes` of fresh
    /// random data, so its update has real content to download.
    pub fn compose_and_publish_with_payload(
        &self,
        version: &str,
        random_bytes: usize,
        scratch: &Path,
    ) -> Result<Value> {
        let overlay = scratch.join(format!("payload-{version}"));
        let dir = overlay.join("usr/share/cairn-test");
        std::fs::create_dir_all(&dir)?;
        let mut data = vec![0u8; random_bytes];
        getrandom(&mut data)?;
        std::fs::write(dir.join("payload"), data)?;
        self.compose(version, &[overlay])?;
        self.publish()
    }

    /// A release record of this test image's line for `commit`.
    pub fn record(&self, version: &str, commit: &str) -> Release {
        let a = self.artifacts;
        Release {
            version: version.into(),
            arch: a.arch,
            variant: cairn_common::identity::Variant::new("dev", a.platform).expect("dev is a valid flavor"),
            stream: "stable".into(),
            ostree_ref: a.dev.ostree_ref.clone(),
            commit: commit.into(),
            requires: None,
        }
    }

    /// Sign `release` into the update repository's TUF metadata, as a
    /// compromised or mistaken build pipeline could.
    pub fn sign_release(&self, release: &Release) -> Result<()> {
        let targets = self.updates().join(TARGETS_DIR);
        std::fs::write(targets.join(release.target_name()), serde_json::to_vec(release)?)?;
        self.resign()
    }

    /// Withdraw every record of `version` from the signed targets.
    pub fn remove_release(&self, version: &str) -> Result<()> {
        let targets = self.updates().join(TARGETS_DIR);
        for e in std::fs::read_dir(&targets)? {
            let p = e?.path();
            if p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .ends_with(&format!("-{version}.json"))
            {
                std::fs::remove_file(p)?;
            }
        }
        self.resign()
    }

    fn resign(&self) -> Result<()> {
        let in_days = |d| chrono::Utc::now() + chrono::Duration::days(d);
        let expiry = cairn_builder::tuf_repo::Expiry {
            targets: in_days(30),
            snapshot: in_days(30),
            timestamp: in_days(7),
        };
        let updates = self.updates();
        cairn_builder::tuf_repo::sign_metadata(
            &self.artifacts.keys,
            &updates.join(TARGETS_DIR),
            &updates.join(TUF_DIR),
            expiry,
        )?;
        Ok(())
    }

    /// `ostree` on the served (archive) repository.
    pub fn served_ostree(&self) -> Cmd {
        Cmd::new("ostree").arg(format!("--repo={}", self.updates().join("ostree").display()))
    }

    /// Commit `base`'s tree again into the served repository as an orphan
    /// commit with Cairn's metadata for `version` and `arch`, signed only
    /// when `sign` is set. Returns its checksum.
    pub fn commit_copy(&self, base: &str, version: &str, arch: &str, sign: bool) -> Result<String> {
        use cairn_common::metadata as meta;
        let mut cmd = self
            .served_ostree()
            .args(["commit", "--orphan", "--no-bindings"])
            .arg(format!("--tree=ref={base}"))
            .arg(format!("--add-metadata-string={}={version}", meta::VERSION))
            .arg(format!("--add-metadata-string={}={arch}", meta::ARCH))
            .arg(format!(
                "--add-metadata-string={}={}",
                meta::VARIANT,
                cairn_common::identity::Variant::new("dev", self.artifacts.platform)?
            ))
            .arg(format!("--subject=test copy of {base} as {version}"));
        if sign {
            let key = cairn_builder::keys::SigningKey::open(&self.artifacts.keys)?;
            cmd = cmd
                .arg(format!("--gpg-sign={}", key.key_id))
                .arg(format!("--gpg-homedir={}", key.homedir.display()));
        }
        let out = cmd.output()?;
        let commit = out.stdout.trim().to_owned();
        if commit.len() != 64 {
            bail!("ostree commit printed {commit:?}, not a checksum");
        }
        Ok(commit)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
