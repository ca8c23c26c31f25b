//! The state of the Debian archive a package layer is built from.
//!
//! Each suite's `InRelease` (the signed index of the suite's package
//! lists) names, through its hashes, every package version the mirror
//! serves; a new security update gives a new `InRelease`. Its SHA-256 goes
//! into the package layer's key, so a cached layer is reused only while the
//! archive has not changed: a warm build costs one small fetch per suite.
//! After the layer is built, the `InRelease` files apt itself used (and
//! verified) in the tree are checked against the key's: the layer is keyed
//! by what it was really built from.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cairn_common::process::Cmd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt_sources::Mirrors;

/// One suite's `InRelease`, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SuiteRelease {
    /// SHA-256 of the `InRelease` file, hex.
    pub inrelease_sha256: String,
    /// Its `Date:` field, RFC 3339 in UTC (when the archive made it).
    pub date: String,
}

/// The archive's state: suite → its `InRelease`.
pub type ArchiveState = BTreeMap<String, SuiteRelease>;

/// How long fetching one `InRelease` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a mirror serves `suite`'s `InRelease`.
pub fn inrelease_url(mirror: &str, suite: &str) -> String {
    format!("{}/dists/{suite}/InRelease", mirror.trim_end_matches('/'))
}

/// A release file (`InRelease`, or `Release`) read: its state and the
/// distribution it says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRelease {
    pub state: SuiteRelease,
    pub suite: String,
    pub codename: String,
}

impl ParsedRelease {
    /// Does the file say it is `suite` (its `Codename:` or `Suite:`)?
    pub fn names(&self, suite: &str) -> bool {
        self.codename == suite || self.suite == suite
    }
}

/// Read a release file (pure). A file without a `Date:` (some third-party
/// repositories) has an empty date.
pub fn parse_release(bytes: &[u8]) -> Result<ParsedRelease> {
    let text = String::from_utf8_lossy(bytes);
    let mut fields = BTreeMap::new();
    // A clearsigned file's signed part comes after the armour header's
    // blank line and ends at the signature; a plain `Release` is all fields.
    let body = if text.starts_with("-----BEGIN PGP SIGNED MESSAGE") {
        text.split_once("\n\n").map_or(text.as_ref(), |(_, b)| b)
    } else {
        text.as_ref()
    };
    for line in body.lines() {
        if line.starts_with("-----BEGIN PGP SIGNATURE") || line.is_empty() {
            break;
        }
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let date = match fields.get("date") {
        Some(d) => parse_date(d)?,
        None => String::new(),
    };
    Ok(ParsedRelease {
        state: SuiteRelease {
            inrelease_sha256: hex::encode(Sha256::digest(bytes)),
            date,
        },
        suite: field("suite"),
        codename: field("codename"),
    })
}

/// The state of `suite` from the bytes of its `InRelease` (pure). The file
/// must be the one of `suite` (its `Codename:` or `Suite:`) and dated.
pub fn parse_inrelease(suite: &str, bytes: &[u8]) -> Result<SuiteRelease> {
    let parsed = parse_release(bytes)?;
    if !parsed.names(suite) {
        bail!(
            "it is not the InRelease of `{suite}` (Codename: `{}`, Suite: `{}`)",
            parsed.codename,
            parsed.suite
        );
    }
    if parsed.state.date.is_empty() {
        bail!("it has no `Date:` field");
    }
    Ok(parsed.state)
}

/// An `InRelease` `Date:` (RFC 2822, `Sat, 10 May 2025 09:12:37 UTC`) as
/// RFC 3339 in UTC (`2025-05-10T09:12:37Z`).
pub fn parse_date(value: &str) -> Result<String> {
    // chrono's RFC 2822 parser knows `UT` and `GMT`; Debian writes `UTC`.
    let normalised = match value.trim().strip_suffix(" UTC") {
        Some(head) => format!("{head} +0000"),
        None => value.trim().to_owned(),
    };
    let t = chrono::DateTime::parse_from_rfc2822(&normalised)
        .with_context(|| format!("`Date: {value}` is not an RFC 2822 date"))?;
    Ok(t.with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The archive's state now: every suite's `InRelease`, fetched from the
/// mirror that serves it into `dir`.
pub fn fetch(suites: &[String], mirrors: &Mirrors, dir: &Path) -> Result<ArchiveState> {
    let mut state = ArchiveState::new();
    for suite in suites {
        let url = inrelease_url(mirrors.for_suite(suite), suite);
        let file = dir.join(format!("{suite}_InRelease"));
        Cmd::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location", "--retry", "2"])
            .arg("--output")
            .arg(&file)
            .arg(&url)
            .timeout(FETCH_TIMEOUT)
            .run()
            .with_context(|| format!("cannot fetch {url} from the Debian mirror"))?;
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let release = parse_inrelease(suite, &bytes).with_context(|| format!("reading {url}"))?;
        tracing::info!(%suite, date = %release.date, sha256 = %release.inrelease_sha256, "archive state");
        state.insert(suite.clone(), release);
    }
    Ok(state)
}

/// The state apt used, from the `InRelease` files of its lists folder
/// (`/var/lib/apt/lists`), each under the name apt gives the file of the
/// mirror that serves its suite.
pub fn from_apt_lists(lists: &Path, suites: &[String], mirrors: &Mirrors) -> Result<ArchiveState> {
    let mut state = ArchiveState::new();
    for suite in suites {
        let name = crate::apt_repos::apt_list_name(&inrelease_url(mirrors.for_suite(suite), suite));
        let (path, bytes) = read_list(lists, &name, &format!("`{suite}`"))?;
        state.insert(
            suite.clone(),
            parse_inrelease(suite, &bytes).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    Ok(state)
}

/// The file `name` of apt's lists folder `lists`, holding the release file
/// of `what`.
pub fn read_list(lists: &Path, name: &str, what: &str) -> Result<(std::path::PathBuf, Vec<u8>)> {
    let path = lists.join(name);
    match fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("apt left no InRelease of {what} in {} (no {name})", lists.display())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Suite → SHA-256 of its `InRelease`: what a package layer is keyed by.
pub fn hashes(state: &ArchiveState) -> BTreeMap<String, String> {
    state
        .iter()
        .map(|(suite, r)| (suite.clone(), r.inrelease_sha256.clone()))
        .collect()
}

/// The suites whose `InRelease` differs between two sets of hashes.
pub fn changed(keyed: &BTreeMap<String, String>, used: &BTreeMap<String, String>) -> Vec<String> {
    keyed
        .keys()
        .chain(used.keys())
        .filter(|s| keyed.get(*s) != used.get(*s))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The state as a GVariant `a{sa{ss}}` text literal (commit metadata).
pub fn to_gvariant(state: &ArchiveState) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let items: Vec<String> = state
        .iter()
        .map(|(suite, r)| {
            format!(
                "{}: {{'inrelease-sha256': {}, 'date': {}}}",
                quote(suite),
                quote(&r.inrelease_sha256),
                quote(&r.date)
            )
        })
        .collect();
    if items.is_empty() {
        "@a{sa{ss}} {}".to_owned()
    } else {
        format!("{{{}}}", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECURITY: &str = "-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

Origin: Debian
Label: Debian-Security
Suite: oldstable-security
Version: 12
Codename: bookworm-security
Date: Sat, 28 Nov 2026 02:53:00 UTC
Valid-Until: Sat, 05 Dec 2026 02:53:00 UTC
Acquire-By-Hash: yes
SHA256:
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855        0 contrib/Contents-amd64
 Date: not a field
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCAAdFiEE
-----END PGP SIGNATURE-----
";

    #[test]
    fn parses_date_and_hashes_the_whole_file() {
        let r = parse_inrelease("bookworm-security", SECURITY.as_bytes()).unwrap();
        assert_eq!(r.date, "2026-11-28T02:53:00Z");
        assert_eq!(r.inrelease_sha256, hex::encode(Sha256::digest(SECURITY.as_bytes())));
        // The suite's alias names it too.
        assert!(parse_inrelease("oldstable-security", SECURITY.as_bytes()).is_ok());
        // A re-signed file (same content, new signature) is another state.
        let resigned = SECURITY.replace("iQIzBAEBCAAdFiEE", "iQIzBAEBCAAdFiEF");
        assert_ne!(
            parse_inrelease("bookworm-security", resigned.as_bytes())
                .unwrap()
                .inrelease_sha256,
            r.inrelease_sha256
        );
    }

    #[test]
    fn date_forms() {
        assert_eq!(
            parse_date("Sat, 11 Jul 2026 10:16:37 UTC").unwrap(),
            "2026-07-11T10:16:37Z"
        );
        assert_eq!(
            parse_date("Sat, 11 Jul 2026 12:16:37 +0200").unwrap(),
            "2026-07-11T10:16:37Z"
        );
        assert_eq!(
            parse_date("Sat, 11 Jul 2026 10:16:37 GMT").unwrap(),
            "2026-07-11T10:16:37Z"
        );
        let e = parse_date("yesterday").unwrap_err().to_string();
        assert!(e.contains("`Date: yesterday` is not an RFC 2822 date"), "{e}");
    }

    #[test]
    fn refuses_another_suites_file_or_one_without_date() {
        let e = parse_inrelease("bookworm-updates", SECURITY.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the InRelease of `bookworm-updates`"), "{e}");
        let no_date = SECURITY.replace("Date: Sat", "Dated: Sat");
        let e = parse_inrelease("bookworm-security", no_date.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `Date:` field"), "{e}");
    }

    #[test]
    fn reads_what_apt_used_and_names_what_changed() {
        let d = tempfile::tempdir().unwrap();
        let sec = "m.example_debian-security_dists_bookworm-security_InRelease";
        fs::write(d.path().join(sec), SECURITY).unwrap();
        fs::write(
            d.path()
                .join("m.example_debian_dists_bookworm_main_binary-amd64_Packages"),
            "",
        )
        .unwrap();
        let suites = vec!["bookworm-security".to_owned()];
        let mirrors = Mirrors {
            main: "http://m.example/debian".into(),
            security: "http://m.example/debian-security/".into(),
        };
        let used = from_apt_lists(d.path(), &suites, &mirrors).unwrap();
        let fetched: ArchiveState = [(
            "bookworm-security".to_owned(),
            parse_inrelease("bookworm-security", SECURITY.as_bytes()).unwrap(),
        )]
        .into();
        assert_eq!(used, fetched);
        assert!(changed(&hashes(&fetched), &hashes(&used)).is_empty());
        let mut newer = hashes(&fetched);
        newer.insert("bookworm-security".into(), "00".into());
        assert_eq!(changed(&newer, &hashes(&used)), ["bookworm-security"]);

        let e = from_apt_lists(d.path(), &["bookworm".to_owned()], &mirrors)
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt left no InRelease of `bookworm`"), "{e}");
    }

    #[test]
    fn metadata_literal_is_a_nested_dict() {
        let state: ArchiveState = [(
            "bookworm".to_owned(),
            SuiteRelease {
                inrelease_sha256: "ab".into(),
                date: "2026-07-11T10:16:37Z".into(),
            },
        )]
        .into();
        assert_eq!(
            to_gvariant(&state),
            "{'bookworm': {'inrelease-sha256': 'ab', 'date': '2026-07-11T10:16:37Z'}}"
        );
    }

    #[test]
    fn an_unreachable_mirror_is_named() {
        let d = tempfile::tempdir().unwrap();
        let mirrors = Mirrors {
            main: format!("file://{}/nowhere", d.path().display()),
            security: String::new(),
        };
        let e = format!("{:#}", fetch(&["bookworm".to_owned()], &mirrors, d.path()).unwrap_err());
        assert!(
            e.contains(&format!(
                "cannot fetch file://{}/nowhere/dists/bookworm/InRelease from the Debian mirror",
                d.path().display()
            )),
            "{e}"
        );
    }
}
