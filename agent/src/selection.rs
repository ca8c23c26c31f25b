//! Which release to take, among those TUF vouched for (pure).

use std::collections::BTreeSet;

use cairn_common::identity::Variant;
use cairn_common::layout::Arch;
use cairn_common::release::Release;
use semver::{Version, VersionReq};
use thiserror::Error;

/// A newer release this host waits for in a phased rollout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub version: String,
    /// When this host's turn comes (seconds since the epoch); `None` while
    /// the rollout is paused before it.
    pub at: Option<u64>,
}

/// Cairn's application id for a host's place in rollouts (see
/// [`rollout_position`]).
pub const ROLLOUT_APP_ID: &str = "5f0c2d7a3b8e4f6190a4c1e2d3b5a697";

/// A host's place in every phased rollout, in [0, 1): from its machine id
/// made app-specific (so it says nothing of the machine id), stable across
/// boots and releases.
pub fn rollout_position(machine_id: &str) -> Result<f64, String> {
    let id = crate::reboot_gate::app_specific_id(machine_id, ROLLOUT_APP_ID)?;
    let bytes = hex::decode(&id[..16]).map_err(|e| e.to_string())?;
    let n = u64::from_be_bytes(bytes.try_into().map_err(|_| "8 bytes".to_owned())?);
    // 53 bits: exactly representable, and below 1.
    Ok((n >> 11) as f64 / (1u64 << 53) as f64)
}

/// The releases a host at `position` may take at `now`: those without a
/// rollout, and those whose rollout has reached it. Also the newest of the
/// others this host would take, and its turn.
pub fn in_turn(
    releases: &[Release],
    rollouts: &[cairn_common::release::Rollout],
    host: &Host<'_>,
    position: f64,
    now: u64,
) -> (Vec<Release>, Option<Turn>) {
    let turn_of = |r: &Release| {
        let name = r.target_name();
        rollouts.iter().find(|o| o.release == name).map(|o| o.turn_of(position))
    };
    let (ready, waiting): (Vec<Release>, Vec<Release>) = releases.iter().cloned().partition(|r| match turn_of(r) {
        None => true,
        Some(turn) => turn.is_some_and(|at| at <= now),
    });
    let next = match select(&waiting, host, &Request::Latest) {
        Ok(Selection::Update(r)) => Some(Turn {
            at: turn_of(&r).flatten(),
            version: r.version,
        }),
        _ => None,
    };
    // A release in turn at least as new makes the wait moot.
    let next = next.filter(|t| match select(&ready, host, &Request::Latest) {
        Ok(Selection::Update(r)) => match (Version::parse(&r.version), Version::parse(&t.version)) {
            (Ok(ready), Ok(waiting)) => waiting > ready,
            _ => true,
        },
        _ => true,
    });
    (ready, next)
}

/// What the user (or the daemon) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The newest release this host may take.
    Latest,
    /// One version, named by an operator.
    Exact { version: Version, allow_downgrade: bool },
}

/// The host as the decision sees it.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    pub arch: Arch,
    pub variant: &'a Variant,
    pub stream: &'a str,
    pub booted: &'a Version,
    /// Versions not to take automatically (a failed trial, or one an
    /// operator rolled back from); taken only when named explicitly.
    pub excluded: &'a BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    UpToDate,
    Update(Release),
}

/// Why a release the user asked for is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("release {0} is not in the update repository for this stream")]
    NotFound(Version),
    #[error("release {version} is for {arch}, this host is {host}")]
    WrongArch { version: Version, arch: Arch, host: Arch },
    #[error("release {target} is older than the booted {booted}: a downgrade needs --allow-downgrade")]
    Downgrade { target: Version, booted: Version },
    #[error("release {version} requires the host to run {requires}, it runs {booted}")]
    Unreachable {
        version: Version,
        requires: String,
        booted: Version,
    },
    #[error("release record is invalid: {0}")]
    Invalid(String),
}

/// A release record's version and requirement, checked.
fn parse(release: &Release) -> Result<(Version, Option<VersionReq>), Refusal> {
    let version = Version::parse(&release.version)
        .map_err(|e| Refusal::Invalid(format!("version `{}`: {e}", release.version)))?;
    let requires = match &release.requires {
        Some(r) => Some(VersionReq::parse(r).map_err(|e| Refusal::Invalid(format!("requires `{r}`: {e}")))?),
        None => None,
    };
    if !Release::is_checksum(&release.commit) {
        return Err(Refusal::Invalid(format!(
            "commit `{}` is not a SHA-256 checksum",
            release.commit
        )));
    }
    Ok((version, requires))
}

/// Choose the release to update to, among those TUF vouched for.
pub fn select(releases: &[Release], host: &Host<'_>, request: &Request) -> Result<Selection, Refusal> {
    let in_stream = releases
        .iter()
        .filter(|r| r.stream == host.stream && r.variant == *host.variant);
    match request {
        Request::Latest => {
            let mut best: Option<(Version, &Release)> = None;
            for r in in_stream.filter(|r| r.arch == host.arch) {
                // A malformed record is not a reason to stop updating to a good one.
                let Ok((version, requires)) = parse(r) else { continue };
                if &version <= host.booted || host.excluded.contains(&r.version) {
                    continue;
                }
                if requires.is_some_and(|req| !req.matches(host.booted)) {
                    continue;
                }
                if best.as_ref().is_none_or(|(v, _)| &version > v) {
                    best = Some((version, r));
                }
            }
            Ok(best.map_or(Selection::UpToDate, |(_, r)| Selection::Update(r.clone())))
        }
        Request::Exact {
            version,
            allow_downgrade,
        } => {
            let same_version: Vec<&Release> = in_stream
                .filter(|r| Version::parse(&r.version).is_ok_and(|v| &v == version))
                .collect();
            let Some(release) = same_version.iter().find(|r| r.arch == host.arch) else {
                return Err(match same_version.first() {
                    Some(other) => Refusal::WrongArch {
                        version: version.clone(),
                        arch: other.arch,
                        host: host.arch,
                    },
                    None => Refusal::NotFound(version.clone()),
                });
            };
            let (_, requires) = parse(release)?;
            if version == host.booted {
                return Ok(Selection::UpToDate);
            }
            if version < host.booted && !allow_downgrade {
                return Err(Refusal::Downgrade {
                    target: version.clone(),
                    booted: host.booted.clone(),
                });
            }
            if let Some(req) = requires.filter(|req| !req.matches(host.booted)) {
                return Err(Refusal::Unreachable {
                    version: version.clone(),
                    requires: req.to_string(),
                    booted: host.booted.clone(),
                });
            }
            Ok(Selection::Update((*release).clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: &str, arch: Arch) -> Release {
        Release {
            version: version.into(),
            arch,
            variant: "dev".parse().unwrap(),
            stream: "stable".into(),
            ostree_ref: format!("cairn/{arch}/stable"),
            commit: format!("{:0>64}", version.replace('.', "")),
            requires: None,
        }
    }

    static DEV: std::sync::LazyLock<Variant> = std::sync::LazyLock::new(|| "dev".parse().unwrap());

    fn host<'a>(booted: &'a Version, bad: &'a BTreeSet<String>) -> Host<'a> {
        Host {
            arch: Arch::X86_64,
            variant: &DEV,
            stream: "stable",
            booted,
            excluded: bad,
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn a_rollout_holds_a_release_until_the_host_s_turn() {
        use cairn_common::release::Rollout;
        let releases = [rel("1.1.0", Arch::X86_64), rel("1.2.0", Arch::X86_64)];
        let rollout = |r: &Release, start, paused_at| Rollout {
            release: r.target_name(),
            start,
            duration_secs: 1000,
            paused_at,
        };
        let (booted, bad) = (v("1.0.0"), BTreeSet::new());
        let h = host(&booted, &bad);
        // 1.2.0 rolls out from 10_000: a host at 0.25 takes it from 10_250,
        // and meanwhile 1.1.0, which is out to everyone.
        let rollouts = [rollout(&releases[1], 10_000, None)];
        let (ready, turn) = in_turn(&releases, &rollouts, &h, 0.25, 10_249);
        assert_eq!(ready, [releases[0].clone()]);
        assert_eq!(
            turn,
            Some(Turn {
                version: "1.2.0".into(),
                at: Some(10_250)
            })
        );
        let (ready, turn) = in_turn(&releases, &rollouts, &h, 0.25, 10_250);
        assert_eq!(ready, releases);
        assert_eq!(turn, None);
        // Paused before this host's turn: no time to give.
        let paused = [rollout(&releases[1], 10_000, Some(10_100))];
        let (_, turn) = in_turn(&releases, &paused, &h, 0.25, 20_000);
        assert_eq!(turn.unwrap().at, None);
        // A host that will not take the release waits for nothing.
        let booted = v("1.2.0");
        let (_, turn) = in_turn(&releases, &rollouts, &host(&booted, &bad), 0.25, 0);
        assert_eq!(turn, None);
    }

    #[test]
    fn rollout_positions_are_stable_spread_and_not_the_machine_id() {
        let a = rollout_position("3d1219c7c4c5404aaa1f6d2a48adfda4").unwrap();
        assert_eq!(a, rollout_position("3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap());
        assert!((0.0..1.0).contains(&a));
        // 400 machine ids fall in every tenth of [0, 1).
        let mut tenths = [0u32; 10];
        for i in 0u32..400 {
            let id = format!(
                "{:032x}",
                u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            tenths[(rollout_position(&id).unwrap() * 10.0) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| (20..=60).contains(&n)), "{tenths:?}");
        assert!(rollout_position("not hex").is_err());
    }

    #[test]
    fn latest_takes_the_newest_allowed_release() {
        let releases = [
            rel("1.0.0", Arch::X86_64),
            rel("1.2.0", Arch::X86_64),
            rel("1.1.0", Arch::X86_64),
            rel("9.0.0", Arch::Aarch64),
        ];
        let (booted, bad) = (v("1.0.0"), BTreeSet::new());
        let got = select(&releases, &host(&booted, &bad), &Request::Latest).unwrap();
        assert_eq!(got, Selection::Update(releases[1].clone()));
        let booted = v("1.2.0");
        assert_eq!(
            select(&releases, &host(&booted, &bad), &Request::Latest).unwrap(),
            Selection::UpToDate
        );
    }

    #[test]
    fn bad_versions_are_skipped_until_a_newer_release_appears() {
        let mut releases = vec![rel("1.0.0", Arch::X86_64), rel("1.1.0", Arch::X86_64)];
        let booted = v("1.0.0");
        let bad = BTreeSet::from(["1.1.0".to_owned()]);
        assert_eq!(
            select(&releases, &host(&booted, &bad), &Request::Latest).unwrap(),
            Selection::UpToDate
        );
        releases.push(rel("1.1.1", Arch::X86_64));
        assert_eq!(
            select(&releases, &host(&booted, &bad), &Request::Latest).unwrap(),
            Selection::Update(releases[2].clone())
        );
    }

    #[test]
    fn requirements_on_the_booted_version_are_honoured() {
        let mut r = rel("2.0.0", Arch::X86_64);
        r.requires = Some(">=1.5.0".into());
        let (booted, bad) = (v("1.0.0"), BTreeSet::new());
        let releases = [r];
        assert_eq!(
            select(&releases, &host(&booted, &bad), &Request::Latest).unwrap(),
            Selection::UpToDate
        );
        let exact = Request::Exact {
            version: v("2.0.0"),
            allow_downgrade: false,
        };
        assert!(matches!(
            select(&releases, &host(&booted, &bad), &exact),
            Err(Refusal::Unreachable { .. })
        ));
    }

    #[test]
    fn exact_requests_refuse_downgrade_wrong_arch_and_unknown_versions() {
        let releases = [
            rel("1.0.0", Arch::X86_64),
            rel("2.0.0", Arch::X86_64),
            rel("3.0.0", Arch::Aarch64),
        ];
        let (booted, bad) = (v("2.0.0"), BTreeSet::new());
        let h = host(&booted, &bad);
        let ask = |s: &str, allow_downgrade| Request::Exact {
            version: v(s),
            allow_downgrade,
        };
        assert_eq!(
            select(&releases, &h, &ask("1.0.0", false)).unwrap_err().to_string(),
            "release 1.0.0 is older than the booted 2.0.0: a downgrade needs --allow-downgrade"
        );
        assert_eq!(
            select(&releases, &h, &ask("1.0.0", true)).unwrap(),
            Selection::Update(releases[0].clone())
        );
        assert_eq!(
            select(&releases, &h, &ask("3.0.0", false)).unwrap_err().to_string(),
            "release 3.0.0 is for aarch64, this host is x86_64"
        );
        assert_eq!(
            select(&releases, &h, &ask("4.0.0", false)).unwrap_err(),
            Refusal::NotFound(v("4.0.0"))
        );
        assert_eq!(
            select(&releases, &h, &ask("2.0.0", false)).unwrap(),
            Selection::UpToDate
        );
    }

    #[test]
    fn malformed_records_are_skipped_by_latest_and_refused_when_named() {
        let mut broken = rel("1.5.0", Arch::X86_64);
        broken.commit = "not-a-checksum".into();
        let releases = [broken, rel("1.1.0", Arch::X86_64)];
        let (booted, bad) = (v("1.0.0"), BTreeSet::new());
        let h = host(&booted, &bad);
        assert_eq!(
            select(&releases, &h, &Request::Latest).unwrap(),
            Selection::Update(releases[1].clone())
        );
        let exact = Request::Exact {
            version: v("1.5.0"),
            allow_downgrade: false,
        };
        assert!(matches!(select(&releases, &h, &exact), Err(Refusal::Invalid(_))));
    }
}
