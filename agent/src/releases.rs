//! The releases an update repository offers, as its TUF metadata vouches
//! for them (the `tough` client: root chain, thresholds, expiry, rollback
//! protection through a datastore of the last trusted metadata).
//!
//! Both repository layouts read through the same code: tough first walks
//! the root chain (`N.root.json`) from the root the image carries, and the
//! newest root's `consistent_snapshot` says which names come next — the
//! versioned `N.snapshot.json` and `N.targets.json` publish writes now, or
//! the unversioned files of a repository published before. A host whose
//! image carries a root from before (`consistent_snapshot: false`) takes
//! the signed root N+1 the first publish after the change adds, and reads
//! the new layout from then on. (A host whose root already says
//! `consistent_snapshot` cannot read a repository that was never published
//! with it; publish never makes one, as it copies the whole root chain.)
//! The release records themselves are not fetched: each target's signed
//! `custom` metadata carries the record.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_common::release::{Release, Rollout, ROLLOUT_PREFIX, TARGETS_DIR, TUF_DIR};
use tough::{ExpirationEnforcement, HttpTransportBuilder, RepositoryLoader};
use url::Url;

/// The root of trust baked into every image.
pub const ROOT_PATH: &str = "/usr/share/cairn/tuf/root.json";
/// The last metadata trusted: a server cannot roll it back.
pub const DATASTORE: &str = "/var/lib/cairn/agent/tuf";

#[derive(Debug, Clone)]
pub struct UpdateRepo {
    pub url: String,
    pub root: PathBuf,
    pub datastore: PathBuf,
    pub tries: u32,
    pub request_timeout: Duration,
}

impl UpdateRepo {
    pub fn host(url: &str, tries: u32, request_timeout: Duration) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            root: PathBuf::from(ROOT_PATH),
            datastore: PathBuf::from(DATASTORE),
            tries,
            request_timeout,
        }
    }

    fn dir_url(&self, dir: &str) -> Result<Url> {
        Url::parse(&format!("{}/{dir}/", self.url)).with_context(|| format!("update url `{}`", self.url))
    }

    /// Every release (and rollout) the repository's valid, signed metadata names.
    pub fn offer(&self) -> Result<Offer> {
        let root =
            std::fs::read(&self.root).with_context(|| format!("reading the TUF root {}", self.root.display()))?;
        std::fs::create_dir_all(&self.datastore).with_context(|| format!("creating {}", self.datastore.display()))?;
        let (metadata, targets) = (self.dir_url(TUF_DIR)?, self.dir_url(TARGETS_DIR)?);
        let transport = HttpTransportBuilder::new()
            .timeout(self.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .tries(self.tries.max(1))
            // tough waits this long before every request, the first included.
            .initial_backoff(Duration::from_millis(100))
            .backoff_factor(3.0)
            .max_backoff(Duration::from_secs(30))
            .build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let repo = runtime
            .block_on(
                RepositoryLoader::new(&root, metadata.clone(), targets)
                    .transport(transport)
                    .datastore(self.datastore.clone())
                    .expiration_enforcement(ExpirationEnforcement::Safe)
                    .load(),
            )
            .map_err(|e| anyhow::anyhow!("{}", tuf_error_chain(&e)))
            .with_context(|| format!("TUF metadata at {metadata} did not verify"))?;
        let mut out = Offer::default();
        for (name, target) in repo.targets().signed.targets_iter() {
            let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
            if name.raw().starts_with(ROLLOUT_PREFIX) {
                match serde_json::from_value::<Rollout>(custom) {
                    Ok(r) if r.target_name() == name.raw() => out.rollouts.push(r),
                    Ok(r) => {
                        tracing::warn!(target = name.raw(), named = %r.target_name(), "skipping a rollout whose record names another release")
                    }
                    Err(e) => {
                        tracing::warn!(target = name.raw(), error = %e, "skipping a rollout record this agent cannot read")
                    }
                }
                continue;
            }
            match serde_json::from_value::<Release>(custom) {
                Ok(r) if r.target_name() == name.raw() => out.releases.push(r),
                Ok(r) => {
                    tracing::warn!(target = name.raw(), named = %r.target_name(), "skipping a target whose record names another release")
                }
                Err(e) => {
                    tracing::warn!(target = name.raw(), error = %e, "skipping a target that is not a Cairn release")
                }
            }
        }
        Ok(out)
    }
}

/// What an update repository offers: its releases, and the rollouts of
/// some of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    pub releases: Vec<Release>,
    pub rollouts: Vec<Rollout>,
}

fn tuf_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors already print their cause.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
