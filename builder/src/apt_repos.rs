//! The user's own apt repositories (`[[repositories]]` in the manifest):
//! a Kubernetes distribution's, a vendor's, the user's own.
//!
//! A repository is trusted through one key only, the file the manifest
//! names (apt's `signed-by`), never the build host's keyrings. Its
//! `InRelease` is fetched and verified with `gpgv` against that key before
//! any slow step, so an unsigned repository or one signed by another key
//! is refused in seconds, naming the manifest line that defines it; apt
//! verifies it again when it installs from it. The verified `InRelease`'s
//! SHA-256 goes into the package layer's key, not the URL: the same
//! repository served from another mirror reuses the layer, and a change to
//! what it serves rebuilds it.
//!
//! Pure: the `deb` lines, the pin, the index file names apt gives, armour
//! removal. [`fetch_verified`] does the fetching and checking.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use cairn_common::process::Cmd;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::{self, SuiteRelease};

/// An extra apt repository, resolved from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// Names the repository in errors, in files the build writes and in the
    /// commit metadata.
    pub name: String,
    /// The repository's root, without a trailing `/`.
    pub url: String,
    /// Distributions (`stable`), or for a flat repository the folder of its
    /// `InRelease` relative to `url`, ending in `/` (`/` for `url` itself).
    pub suites: Vec<String>,
    /// Components of each distribution; none for a flat repository.
    pub components: Vec<String>,
    /// The repository's signing key file (ASCII-armoured or binary OpenPGP).
    pub key: PathBuf,
    /// That key, binary, as read once when the manifest was resolved: the
    /// bytes gpgv checks with, apt trusts and the layer's key hashes.
    pub keyring: Vec<u8>,
    /// apt pin priority of every package of the repository, if set.
    pub priority: Option<i32>,
    /// Where the manifest defines it: `file:line:column`.
    pub at: String,
}

/// Is `suite` a flat repository's folder (`/`, `sub/`) rather than a
/// distribution?
pub fn is_flat(suite: &str) -> bool {
    suite.ends_with('/')
}

impl Repository {
    /// The URL of `file` (`InRelease`, `Release`, `Release.gpg`) of `suite`.
    pub fn release_url(&self, suite: &str, file: &str) -> String {
        if is_flat(suite) {
            format!("{}/{}{file}", self.url, suite.trim_start_matches('/'))
        } else {
            format!("{}/dists/{suite}/{file}", self.url)
        }
    }

    /// One-line `deb` sources, one per suite, trusting only `keyring`.
    pub fn deb_lines(&self, keyring: &Path) -> Vec<String> {
        let signed_by = format!("[signed-by={}]", keyring.display());
        self.suites
            .iter()
            .map(|s| {
                if is_flat(s) {
                    format!("deb {signed_by} {}/ {s}", self.url)
                } else {
                    format!("deb {signed_by} {} {s} {}", self.url, self.components.join(" "))
                }
            })
            .collect()
    }

    /// The host apt pins by (`Pin: origin`): the URL's host name.
    pub fn host(&self) -> &str {
        url_host(&self.url)
    }

    /// apt preferences giving every package of the repository its
    /// priority, if one is set.
    pub fn preferences(&self) -> Option<String> {
        self.priority.map(|p| {
            format!(
                "# Written by cairn-build: repository `{}` ({}).\nPackage: *\nPin: origin \"{}\"\nPin-Priority: {p}\n",
                self.name,
                self.at,
                self.host()
            )
        })
    }

    /// Name of `suite`'s `file` (`InRelease`, `Release`) in apt's lists
    /// folder.
    pub fn list_name(&self, suite: &str, file: &str) -> String {
        apt_list_name(&self.release_url(suite, file))
    }

    /// The key of one of its suites in the archive state.
    pub fn state_key(&self, suite: &str) -> String {
        format!("{} {suite}", self.name)
    }
}

/// The host name of `url` (without port, credentials or an IPv6
/// address's brackets).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    }
}

/// The name apt gives a downloaded index file of `uri` (its
/// `URItoFileName`): the URI without scheme and credentials (an IPv6
/// address without its brackets, as apt's URI parser keeps it), a few
/// characters percent-quoted, `/` as `_`.
pub fn apt_list_name(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let unbracketed;
    let host = match host.strip_prefix('[').and_then(|h| h.split_once(']')) {
        Some((address, port)) => {
            unbracketed = format!("{address}{port}");
            unbracketed.as_str()
        }
        None => host,
    };
    let joined = if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    };
    let mut out = String::new();
    for c in joined.chars() {
        if "\\|{}[]<>\"^~_=!@#$%^&*".contains(c) || c.is_whitespace() || !c.is_ascii_graphic() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02x}"));
            }
        } else if c == '/' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// The binary OpenPGP key of a key file: ASCII armour removed (its CRC
/// checked), a binary key as it is.
pub fn keyring_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let Ok(text) = std::str::from_utf8(bytes) else {
        return binary_key(bytes);
    };
    let Some(start) = text.find(BEGIN) else {
        return binary_key(bytes);
    };
    let after = &text[start + BEGIN.len()..];
    let body = after.split_once('\n').map_or("", |(_, rest)| rest);
    let end = body
        .find("-----END PGP PUBLIC KEY BLOCK-----")
        .context("the armoured key has no END line")?;
    let lines: Vec<&str> = body[..end].lines().map(str::trim).collect();
    // Armour headers (`Comment: …`) end at the first blank line.
    let data_start = lines.iter().position(|l| l.is_empty()).map_or(0, |blank| blank + 1);
    let mut b64 = String::new();
    let mut crc = None;
    for l in &lines[data_start..] {
        if let Some(sum) = l.strip_prefix('=') {
            crc = Some(sum.to_owned());
        } else {
            b64.push_str(l);
        }
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .context("the armoured key is not valid base64")?;
    if let Some(sum) = crc {
        let want = base64::engine::general_purpose::STANDARD
            .decode(sum.as_bytes())
            .context("the armour's checksum is not valid base64")?;
        let got = crc24(&key).to_be_bytes();
        if want.as_slice() != &got[1..] {
            bail!("the armoured key's checksum does not match its contents");
        }
    }
    binary_key(&key)
}

fn binary_key(bytes: &[u8]) -> Result<Vec<u8>> {
    // An OpenPGP packet header has its top bit set; a public key packet is
    // tag 6 (old format 0x98..0x9b, new format 0xc6).
    match bytes.first() {
        Some(b) if (b & 0xc0 == 0x80 && (b >> 2) & 0x0f == 6) || *b == 0xc6 => Ok(bytes.to_vec()),
        _ => bail!("it is not an OpenPGP public key (binary, or ASCII-armoured `BEGIN PGP PUBLIC KEY BLOCK`)"),
    }
}

/// The CRC-24 of OpenPGP's armour (RFC 4880, 6.1).
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xb7_04ce;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4cfb;
            }
        }
    }
    crc & 0xff_ffff
}

/// What the package layer's key holds of a repository: what it serves and
/// how it is trusted and pinned, not where it is served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoryRecipe {
    pub name: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// SHA-256 of the binary key.
    pub key_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

impl RepositoryRecipe {
    pub fn of(repo: &Repository) -> RepositoryRecipe {
        RepositoryRecipe {
            name: repo.name.clone(),
            suites: repo.suites.clone(),
            components: repo.components.clone(),
            key_sha256: hex::encode(Sha256::digest(&repo.keyring)),
            priority: repo.priority,
        }
    }
}

/// A pin is by host (apt's `Pin: origin` has nothing finer): a pinned
/// repository's host must serve nothing else the build reads, or the pin
/// would apply to that too.
pub fn check_pins(repos: &[Repository], debian_mirrors: &[&str]) -> Result<()> {
    for r in repos.iter().filter(|r| r.priority.is_some()) {
        let host = r.host();
        if let Some(m) = debian_mirrors.iter().find(|m| url_host(m) == host) {
            bail!(
                "{}: repository `{}` sets a priority, which apt applies by host (`Pin: origin \"{host}\"`), and {host} also serves the Debian mirror {m}: the pin would apply to Debian's packages too; serve the repository from a host of its own, or drop `priority`",
                r.at,
                r.name
            );
        }
        if let Some(o) = repos.iter().find(|o| o.name != r.name && o.host() == host) {
            bail!(
                "{}: repository `{}` sets a priority, which apt applies by host (`Pin: origin \"{host}\"`), and repository `{}` ({}) is on the same host: the pin would apply to both",
                r.at,
                r.name,
                o.name,
                o.at
            );
        }
    }
    Ok(())
}

/// Write `repo`'s key, binary, into `dir` for apt's `signed-by` and gpgv.
pub fn write_keyring(repo: &Repository, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("cairn-repository-{}.gpg", repo.name));
    if path.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ']') {
        bail!(
            "the build folder {} holds a space or `]`, which apt's `signed-by` cannot name",
            dir.display()
        );
    }
    fs::write(&path, &repo.keyring).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// How long fetching one release file may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Fetch `url` into `out`; returns the HTTP status (a connection that
/// fails is an error).
fn fetch(url: &str, out: &Path) -> Result<u16> {
    let printed = Cmd::new("curl")
        .args(["--silent", "--show-error", "--location", "--retry", "2"])
        .args(["--write-out", "%{http_code}", "--output"])
        .arg(out)
        .arg(url)
        .timeout(FETCH_TIMEOUT)
        .output()
        .with_context(|| format!("cannot fetch {url}"))?;
    printed
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("cannot fetch {url}: curl printed no HTTP status"))
}

/// Is `code` the server saying it has no such file?
fn absent(code: u16) -> bool {
    matches!(code, 404 | 410)
}

/// Fetch each suite's release file of each repository into `dir` and
/// verify its signature against the repository's own key; returns the
/// state of each (keyed by [`Repository::state_key`]).
pub fn fetch_verified(repos: &[Repository], dir: &Path) -> Result<BTreeMap<String, SuiteRelease>> {
    let mut state = BTreeMap::new();
    for repo in repos {
        let keyring = write_keyring(repo, dir)?;
        let gnupg_home = dir.join(format!("gnupg-{}", repo.name));
        fs::create_dir_all(&gnupg_home)?;
        for (i, suite) in repo.suites.iter().enumerate() {
            let what = format!("{}: repository `{}` ({})", repo.at, repo.name, repo.url);
            let file = |name: &str| dir.join(format!("{}-{i}-{name}", repo.name));
            let inrelease_url = repo.release_url(suite, "InRelease");
            // As apt: an InRelease that cannot be had (404, or 403 from an
            // object store) sends it to Release and Release.gpg.
            let signed = if fetch(&inrelease_url, &file("InRelease")).context(what.clone())? == 200 {
                gpgv(&keyring, &gnupg_home, &[&file("InRelease")]).with_context(|| {
                    format!(
                        "{what}: {inrelease_url} is not signed by the key {}",
                        repo.key.display()
                    )
                })?;
                file("InRelease")
            } else {
                let release_url = repo.release_url(suite, "Release");
                match fetch(&release_url, &file("Release")).context(what.clone())? {
                    200 => {}
                    code if absent(code) => bail!(
                        "{what}: suite `{suite}` has neither InRelease nor Release at {}",
                        repo.release_url(suite, "")
                    ),
                    code => bail!("{what}: {release_url}: the server answered HTTP {code}"),
                }
                let signature_url = repo.release_url(suite, "Release.gpg");
                match fetch(&signature_url, &file("Release.gpg")).context(what.clone())? {
                    200 => {}
                    code if absent(code) => bail!(
                        "{what}: the repository is unsigned: {release_url} has no InRelease or Release.gpg beside it; apt refuses unsigned repositories and so does Cairn"
                    ),
                    code => bail!("{what}: {signature_url}: the server answered HTTP {code}"),
                }
                gpgv(&keyring, &gnupg_home, &[&file("Release.gpg"), &file("Release")]).with_context(|| {
                    format!("{what}: {release_url} is not signed by the key {}", repo.key.display())
                })?;
                file("Release")
            };
            let bytes = fs::read(&signed)?;
            let release = archive::parse_release(&bytes).with_context(|| format!("{what}: reading suite `{suite}`"))?;
            if !is_flat(suite) && !release.names(suite) {
                tracing::warn!(repository = %repo.name, %suite, "its release file names another distribution (Suite or Codename)");
            }
            tracing::info!(repository = %repo.name, %suite, sha256 = %release.state.inrelease_sha256, "repository verified");
            state.insert(repo.state_key(suite), release.state);
        }
    }
    Ok(state)
}

/// The state of each repository's suites apt used, from its lists
/// folder: the `InRelease` apt verified, or a `Release` (with its detached
/// `Release.gpg`) where the repository has no `InRelease`.
pub fn from_apt_lists(lists: &Path, repos: &[Repository]) -> Result<BTreeMap<String, SuiteRelease>> {
    let mut state = BTreeMap::new();
    for repo in repos {
        for suite in &repo.suites {
            let inrelease = repo.list_name(suite, "InRelease");
            let name = if lists.join(&inrelease).exists() {
                inrelease
            } else {
                repo.list_name(suite, "Release")
            };
            let what = format!("repository `{}` suite `{suite}`", repo.name);
            let (path, bytes) = archive::read_list(lists, &name, &what)?;
            let release = archive::parse_release(&bytes).with_context(|| format!("reading {}", path.display()))?;
            state.insert(repo.state_key(suite), release.state);
        }
    }
    Ok(state)
}

/// Verify `files` (an `InRelease`, or a detached signature and its file)
/// against `keyring` only, as apt judges a signature ([`judge_gpgv`]).
fn gpgv(keyring: &Path, home: &Path, files: &[&Path]) -> Result<()> {
    let (status, out) = Cmd::new("gpgv")
        .arg("--homedir")
        .arg(home)
        .args(["--status-fd", "1", "--keyring"])
        .arg(keyring)
        .args(files)
        .timeout(Duration::from_secs(60))
        .status_output()
        .context("running gpgv")?;
    judge_gpgv(&out.stdout, status.success())
}

/// gpgv's verdict as apt takes it, from its `--status-fd` lines: a good
/// signature (`VALIDSIG`) by an unexpired, unrevoked key, over a digest
/// apt still trusts (not MD5, SHA-1 or RIPEMD-160).
pub fn judge_gpgv(status: &str, exited_ok: bool) -> Result<()> {
    let mut valid = None;
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        match words.next() {
            Some("VALIDSIG") => valid = Some(words.collect::<Vec<_>>()),
            Some("EXPKEYSIG") => bail!("the key that made the signature has expired"),
            Some("REVKEYSIG") => bail!("the key that made the signature is revoked"),
            Some("BADSIG") => bail!("the signature does not match the file (tampered?)"),
            Some("ERRSIG") => bail!("the signature cannot be checked with this key (signed by another key?): {rest}"),
            Some("NO_PUBKEY") => bail!("it is signed by another key"),
            _ => {}
        }
    }
    let Some(fields) = valid.filter(|_| exited_ok) else {
        bail!("gpgv found no good signature");
    };
    // VALIDSIG <fpr> <date> <timestamp> <expires> <version> <reserved>
    // <pubkey-algo> <hash-algo> …
    match fields.get(7).copied() {
        Some("1") | Some("2") | Some("3") => {
            bail!("it is signed over a digest apt no longer trusts (MD5, SHA-1 or RIPEMD-160)")
        }
        Some(_) => Ok(()),
        None => bail!("gpgv's VALIDSIG line is short: {}", fields.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(url: &str, suites: &[&str], components: &[&str]) -> Repository {
        Repository {
            name: "k8s".into(),
            url: url.into(),
            suites: suites.iter().map(|s| s.to_string()).collect(),
            components: components.iter().map(|s| s.to_string()).collect(),
            key: PathBuf::from("/keys/k8s.asc"),
            keyring: vec![0x98],
            priority: Some(900),
            at: "image.toml:3:1".into(),
        }
    }

    #[test]
    fn list_names_are_the_ones_apt_gives() {
        assert_eq!(
            apt_list_name("http://deb.debian.org/debian/dists/trixie-updates/InRelease"),
            "deb.debian.org_debian_dists_trixie-updates_InRelease"
        );
        // A flat repository, as apt names pkgs.k8s.io's.
        let flat = repo("https://pkgs.k8s.io/core:/stable:/v1.32/deb", &["/"], &[]);
        assert_eq!(
            flat.list_name("/", "InRelease"),
            "pkgs.k8s.io_core:_stable:_v1.32_deb_InRelease"
        );
        assert_eq!(
            flat.list_name("/", "Release"),
            "pkgs.k8s.io_core:_stable:_v1.32_deb_Release"
        );
        assert_eq!(
            flat.release_url("/", "InRelease"),
            "https://pkgs.k8s.io/core:/stable:/v1.32/deb/InRelease"
        );
        let dist = repo("http://user:pw@127.0.0.1:8080/my_repo", &["stable"], &["main"]);
        assert_eq!(
            dist.list_name("stable", "InRelease"),
            "127.0.0.1:8080_my%5frepo_dists_stable_InRelease"
        );
        // apt's URI parser drops an IPv6 address's brackets.
        let v6 = repo("http://[::1]:8080/r", &["stable"], &["main"]);
        assert_eq!(v6.list_name("stable", "InRelease"), "::1:8080_r_dists_stable_InRelease");
        assert_eq!(
            dist.release_url("stable", "Release.gpg"),
            "http://user:pw@127.0.0.1:8080/my_repo/dists/stable/Release.gpg"
        );
        let sub = repo("http://r.example", &["amd64/"], &[]);
        assert_eq!(
            sub.release_url("amd64/", "InRelease"),
            "http://r.example/amd64/InRelease"
        );
        assert_eq!(sub.list_name("amd64/", "InRelease"), "r.example_amd64_InRelease");
    }

    #[test]
    fn deb_lines_trust_only_the_repository_key_and_pins_name_its_host() {
        let dist = repo("http://127.0.0.1:8080/repo", &["stable", "edge"], &["main", "extra"]);
        assert_eq!(
            dist.deb_lines(Path::new("/w/k.gpg")),
            [
                "deb [signed-by=/w/k.gpg] http://127.0.0.1:8080/repo stable main extra",
                "deb [signed-by=/w/k.gpg] http://127.0.0.1:8080/repo edge main extra"
            ]
        );
        let flat = repo("https://pkgs.k8s.io/core:/stable:/v1.32/deb", &["/"], &[]);
        assert_eq!(
            flat.deb_lines(Path::new("/w/k.gpg")),
            ["deb [signed-by=/w/k.gpg] https://pkgs.k8s.io/core:/stable:/v1.32/deb/ /"]
        );
        assert_eq!(dist.host(), "127.0.0.1");
        assert_eq!(repo("http://u@[::1]:80/r", &["s"], &["c"]).host(), "::1");
        let prefs = dist.preferences().unwrap();
        assert!(
            prefs.ends_with("Package: *\nPin: origin \"127.0.0.1\"\nPin-Priority: 900\n"),
            "{prefs}"
        );
        let mut unpinned = dist.clone();
        unpinned.priority = None;
        assert_eq!(unpinned.preferences(), None);
    }

    // The test repository's Ed25519 public key
    // (qemu-tests/fixtures/apt-repo/repository-key.asc).
    const ARMOURED: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----
Comment: armour headers are skipped

mDMEaw4O8hYJKwYBBAHaRw8BAQdAqHDoDk+Njthv8qLEPvSuMepC8lJRsIcOcIvV
kR+Clf20PENhaXJuIHRlc3QgcmVwb3NpdG9yeSBnMSAodGVzdCBvbmx5KSA8dGVz
dC1nMUBjYWlybi5pbnZhbGlkPoiQBBMWCAA4FiEExRZG++xDFCJm+qe/0ok4a2o4
8yMFAmsODvICGwMFCwkIBwIGFQoJCAsCBBYCAwECHgECF4AACgkQ0ok4a2o48yOP
jwD/RjN0YlHiAm5NNLt1vUf6n9zgKc/keft9LVTdABYYqZ4BAIk91csOWCCGYfZI
OvJwvb4zY6FjUHE3qnb4QtkoNUYN
=8WGa
-----END PGP PUBLIC KEY BLOCK-----
";

    #[test]
    fn armour_is_removed_and_its_checksum_checked() {
        let key = keyring_bytes(ARMOURED.as_bytes()).unwrap();
        assert_eq!(key[0], 0x98, "an old-format public key packet");
        assert_eq!(key.len(), 261, "as `gpg --dearmor` makes it");
        assert_eq!(keyring_bytes(&key).unwrap(), key, "a binary key is taken as it is");
        let tampered = ARMOURED.replace("mDMEaw4O8", "mDMEaw4O9");
        assert!(keyring_bytes(tampered.as_bytes()).is_err());
        let e = keyring_bytes(b"not a key").unwrap_err();
        assert!(format!("{e:#}").contains("not an OpenPGP public key"), "{e:#}");
        let secret = ARMOURED.replace("PUBLIC KEY", "PRIVATE KEY");
        assert!(keyring_bytes(secret.as_bytes()).is_err());
    }

    #[test]
    fn a_pin_is_refused_where_its_host_serves_something_else() {
        let mut own = repo("http://apt.example:3142/own", &["stable"], &["main"]);
        check_pins(std::slice::from_ref(&own), &["http://deb.example/debian"]).unwrap();
        let e = check_pins(std::slice::from_ref(&own), &["http://apt.example:3142/debian"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("image.toml:3:1: repository `k8s` sets a priority, which apt applies by host"),
            "{e}"
        );
        let mut other = own.clone();
        other.name = "vendor".into();
        other.priority = None;
        let e = check_pins(&[own.clone(), other], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("repository `vendor` (image.toml:3:1) is on the same host"),
            "{e}"
        );
        own.priority = None;
        check_pins(&[own], &["http://apt.example:3142/debian"]).unwrap();
    }

    #[test]
    fn gpgv_is_judged_as_apt_judges_a_signature() {
        let valid = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG D289386B6A38F323 Cairn test\n[GNUPG:] VALIDSIG C51646FBEC43142266FAA7BFD289386B6A38F323 2026-12-01 1764547500 0 4 0 22 8 01 C51646FBEC43142266FAA7BFD289386B6A38F323\n";
        judge_gpgv(valid, true).unwrap();
        let sha1 = valid.replace(" 22 8 01 ", " 22 2 01 ");
        assert!(judge_gpgv(&sha1, true).unwrap_err().to_string().contains("SHA-1"));
        let expired = format!("{valid}[GNUPG:] EXPKEYSIG D289386B6A38F323 Cairn test\n");
        assert!(judge_gpgv(&expired, true).unwrap_err().to_string().contains("expired"));
        let other = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG E8C017CE4EB14EB2 22 8 01 1764547500 9 -\n[GNUPG:] NO_PUBKEY E8C017CE4EB14EB2\n";
        assert!(judge_gpgv(other, false)
            .unwrap_err()
            .to_string()
            .contains("signed by another key"));
        assert!(judge_gpgv("", false).is_err());
        assert!(judge_gpgv(valid, false).is_err(), "gpgv's own failure stands");
    }

    #[test]
    fn crc24_is_openpgps() {
        // RFC 4880's CRC-24 of nothing is its initial value.
        assert_eq!(crc24(b""), 0xb7_04ce);
        assert_eq!(crc24(b"123456789"), 0x21_cf02);
    }
}
