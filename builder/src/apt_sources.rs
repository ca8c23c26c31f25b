//! Which Debian mirror to build from.
//!
//! Cairn never names a mirror in its sources: it takes the one the host's own
//! apt uses (deb822 `*.sources` files, or one-line `*.list` files), unless the
//! manifest overrides it. Parsing is pure; [`host_sources`] and [`resolve`] do the reading.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One `deb` source: a URI and the suites it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
}

/// The mirrors a build uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// Serves `<release>`, `<release>-updates`, `<release>-backports`.
    pub main: String,
    /// Serves `<release>-security`.
    pub security: String,
}

impl Mirrors {
    /// The mirror that serves `suite`.
    pub fn for_suite(&self, suite: &str) -> &str {
        if suite.ends_with("-security") {
            &self.security
        } else {
            &self.main
        }
    }
}

/// Parse a deb822 `.sources` file. Only `Types: deb` stanzas count.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        let mut key = String::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (field, value) = if line.starts_with(char::is_whitespace) {
                (key.as_str(), line.trim())
            } else if let Some((k, v)) = line.split_once(':') {
                key = k.trim().to_ascii_lowercase();
                (key.as_str(), v.trim())
            } else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_owned);
            match field {
                "types" => types.extend(words),
                "uris" => uris.extend(words),
                "suites" => suites.extend(words),
                "enabled" => enabled = !value.eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            for uri in uris {
                out.push(Source {
                    uri: uri.trim_end_matches('/').to_owned(),
                    suites: suites.clone(),
                });
            }
        }
    }
    out
}

/// Parse a one-line-style `.list` file.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.trim_end_matches('/').to_owned(),
                suites: vec![suite.to_owned()],
            });
        }
    }
    out
}

/// Pick the mirrors for `release` from the host's sources. A host of
/// another release (a Debian 12 host building Debian 13) names no source
/// for `release`; its mirror is the one serving its own release,
/// `host_release`, and `<host_release>-security` names its security mirror:
/// every release is on the same mirror.
pub fn choose_mirrors(sources: &[Source], release: &str, host_release: Option<&str>) -> Result<Mirrors> {
    let serving = |suite: &str| {
        sources
            .iter()
            .find(|s| s.suites.iter().any(|x| x == suite))
            .map(|s| s.uri.clone())
    };
    let serving_either = |suffix: &str| {
        serving(&format!("{release}{suffix}")).or_else(|| host_release.and_then(|h| serving(&format!("{h}{suffix}"))))
    };
    let Some(main) = serving_either("") else {
        let host = host_release
            .map(|h| format!(" or this host's own `{h}`"))
            .unwrap_or_default();
        bail!("no apt source of this host serves `{release}`{host}; set `mirror` in the manifest's [debian] table");
    };
    let security = serving_either("-security").unwrap_or_else(|| main.clone());
    Ok(Mirrors { main, security })
}

/// The release codename (`VERSION_CODENAME`) of an `os-release` file.
pub fn parse_os_release_codename(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("VERSION_CODENAME=")?.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// Read every apt source of the host below `apt_dir` (normally `/etc/apt`).
pub fn host_sources(apt_dir: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let list = apt_dir.join("sources.list");
    if list.exists() {
        let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        out.extend(parse_one_line(&text));
    }
    let dir = apt_dir.join("sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let parse: fn(&str) -> Vec<Source> = match f.extension().and_then(|e| e.to_str()) {
                Some("sources") => parse_deb822,
                Some("list") => parse_one_line,
                _ => continue,
            };
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out.extend(parse(&text));
        }
    }
    Ok(out)
}

/// The host's own release, from the `os-release` next to its apt folder
/// (`/etc/os-release` for `/etc/apt`).
fn host_release(apt_dir: &Path) -> Option<String> {
    let etc = apt_dir.parent()?;
    let text = std::fs::read_to_string(etc.join("os-release"))
        .or_else(|_| std::fs::read_to_string(etc.join("../usr/lib/os-release")))
        .ok()?;
    parse_os_release_codename(&text)
}

/// The mirrors to build `release` from: the manifest's, else the host's.
pub fn resolve(apt_dir: &Path, release: &str, mirror: Option<&str>, security_mirror: Option<&str>) -> Result<Mirrors> {
    let host = match mirror {
        Some(_) => None,
        None => Some(
            choose_mirrors(&host_sources(apt_dir)?, release, host_release(apt_dir).as_deref())
                .with_context(|| format!("finding a Debian mirror in {}", apt_dir.display()))?,
        ),
    };
    let main = mirror
        .map(str::to_owned)
        .or_else(|| host.as_ref().map(|h| h.main.clone()))
        .expect("either the manifest or the host names a mirror");
    let security = security_mirror
        .map(str::to_owned)
        .or_else(|| host.as_ref().map(|h| h.security.clone()))
        .unwrap_or_else(|| main.clone());
    Ok(Mirrors { main, security })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://security.example/debian-security/
Suites: bookworm-security
Components: main
";

    #[test]
    fn picks_main_and_security_from_deb822() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 2, "deb-src stanzas are ignored");
        let m = choose_mirrors(&sources, "bookworm", None).unwrap();
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(m.security, "http://security.example/debian-security");
        assert_eq!(m.for_suite("bookworm-security"), m.security);
        assert_eq!(m.for_suite("bookworm-backports"), m.main);
    }

    #[test]
    fn a_host_of_another_release_lends_its_mirrors() {
        let sources = parse_deb822(DEB822);
        let m = choose_mirrors(&sources, "trixie", Some("bookworm")).unwrap();
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(m.security, "http://security.example/debian-security");
        assert_eq!(m.for_suite("trixie-security"), m.security);
        let err = choose_mirrors(&sources, "trixie", None).unwrap_err();
        assert!(err.to_string().contains("serves `trixie`"), "{err}");
        let err = choose_mirrors(&sources, "trixie", Some("bullseye")).unwrap_err();
        assert!(err.to_string().contains("own `bullseye`"), "{err}");
    }

    #[test]
    fn reads_the_codename_of_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_os_release_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(parse_os_release_codename("ID=debian\nVERSION_CODENAME=\n"), None);
    }

    #[test]
    fn disabled_stanzas_are_skipped() {
        let text = DEB822.replacen("Types: deb\n", "Types: deb\nEnabled: no\n", 1);
        let err = choose_mirrors(&parse_deb822(&text), "bookworm", None).unwrap_err();
        assert!(err.to_string().contains("serves `bookworm`"), "{err}");
    }

    #[test]
    fn parses_one_line_format_with_options() {
        let s = parse_one_line(
            "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n# deb http://x bookworm main\ndeb-src http://m.example/debian bookworm main\n",
        );
        assert_eq!(
            s,
            vec![Source {
                uri: "http://m.example/debian".into(),
                suites: vec!["bookworm".into()]
            }]
        );
    }

    #[test]
    fn manifest_overrides_host() {
        let dir = tempfile::tempdir().unwrap();
        let m = resolve(dir.path(), "bookworm", Some("http://own.example/debian"), None).unwrap();
        assert_eq!(m.security, "http://own.example/debian");
        let err = resolve(dir.path(), "bookworm", None, None).unwrap_err();
        assert!(format!("{err:#}").contains("set `mirror` in the manifest"), "{err:#}");
    }
}
