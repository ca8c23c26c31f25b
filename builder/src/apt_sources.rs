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

/// Pick the mirrors for `release` from the host's sources.
pub fn choose_mirrors(sources: &[Source], release: &str) -> Result<Mirrors> {
    let serving = |suite: &str| {
        sources
            .iter()
            .find(|s| s.suites.iter().any(|x| x == suite))
            .map(|s| s.uri.clone())
    };
    let Some(main) = serving(release) else {
        bail!("no apt source of this host serves `{release}`; set `mirror` in the manifest's [debian] table");
    };
    let security = serving(&format!("{release}-security")).unwrap_or_else(|| main.clone());
    Ok(Mirrors { main, security })
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

/// The mirrors to build `release` from: the manifest's, else the host's.
pub fn resolve(apt_dir: &Path, release: &str, mirror: Option<&str>, security_mirror: Option<&str>) -> Result<Mirrors> {
    let host = match mirror {
        Some(_) => None,
        None => Some(
            choose_mirrors(&host_sources(apt_dir)?, release)
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
        let m = choose_mirrors(&sources, "bookworm").unwrap();
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(m.security, "http://security.example/debian-security");
        assert_eq!(m.for_suite("bookworm-security"), m.security);
        assert_eq!(m.for_suite("bookworm-backports"), m.main);
    }

    #[test]
    fn disabled_stanzas_are_skipped() {
        let text = DEB822.replacen("Types: deb\n", "Types: deb\nEnabled: no\n", 1);
        let err = choose_mirrors(&parse_deb822(&text), "bookworm").unwrap_err();
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
