//! `cargo xtask bench power-cut`: a campaign of power cuts at random
//! moments of updates, to find the moments the fixed points of the
//! `power_cut` test miss. One update is timed first (command → committed);
//! each cut then falls uniformly at random within that span. Reports how
//! many cuts of N the host survived (booted by itself into the old or new
//! release, healthy, `ostree fsck` clean), and writes every cut to
//! `target/cairn/<arch>/bench-power-cut.json`.

use std::time::Instant;

use anyhow::Result;
use cairn_common::layout::Arch;
use cairn_qemu_tests::power_cut::{CutPoint, CutReport, Landed, Moment, Rig};
use serde::Serialize;

use crate::{build, paths, test};

#[derive(Debug, Serialize)]
struct Campaign {
    arch: Arch,
    seed: u64,
    full_update_secs: f64,
    points: usize,
    survived: usize,
    landed_old: usize,
    landed_new: usize,
    wall_secs: f64,
    cuts: Vec<CutReport>,
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct Failure {
    cut_after_secs: f64,
    error: String,
}

/// SplitMix64: reproducible cut times from a seed, no dependency.
struct Random(u64);

impl Random {
    fn next_fraction(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn campaign(target: &crate::Target, points: usize, seed: Option<u64>) -> Result<()> {
    let arch = target.arch;
    let (artifacts, _) = test::artifacts(target, false)?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let mut random = Random(seed);
    let started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("cairn-bench-power-cut-").tempdir()?;
    let relay = build::relay();
    let mut rig_number = 0;
    let new_rig = |rig_number: &mut u32| {
        *rig_number += 1;
        let dir = scratch.path().join(format!("rig-{rig_number}"));
        std::fs::create_dir_all(&dir)?;
        Rig::start(&artifacts, &dir, &relay)
    };
    let mut rig = new_rig(&mut rig_number)?;
    let full_update = rig.time_full_update()?;
    tracing::info!(
        secs = full_update.as_secs_f64(),
        seed,
        points,
        "one whole update timed; cutting at random within it"
    );

    let (mut cuts, mut failures) = (Vec::new(), Vec::new());
    for i in 0..points {
        let after = full_update.mul_f64(random.next_fraction());
        let point = CutPoint {
            name: format!("random cut {}/{points} at {:.1}s", i + 1, after.as_secs_f64()),
            moment: Moment::UpdateStarted,
            delay: after,
        };
        match rig.cut(&point) {
            Ok(report) => cuts.push(report),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the host did not survive a power cut");
                failures.push(Failure {
                    cut_after_secs: after.as_secs_f64(),
                    error: format!("{e:#}"),
                });
                // The host is in an unknown state: go on with a fresh one.
                rig = new_rig(&mut rig_number)?;
            }
        }
    }
    let count = |l| cuts.iter().filter(|c| c.landed == l).count();
    let campaign = Campaign {
        arch,
        seed,
        full_update_secs: full_update.as_secs_f64(),
        points,
        survived: cuts.len(),
        landed_old: count(Landed::Old),
        landed_new: count(Landed::New),
        wall_secs: started.elapsed().as_secs_f64(),
        cuts,
        failures,
    };
    println!(
        "power cuts survived: {} of {} (back on the old release {}, on the new {}); one update takes {:.0} s; seed {}",
        campaign.survived, campaign.points, campaign.landed_old, campaign.landed_new, campaign.full_update_secs, seed
    );
    for f in &campaign.failures {
        println!("  not survived: cut at {:.1}s: {}", f.cut_after_secs, f.error);
    }
    let out = paths::out(arch).join("bench-power-cut.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&campaign)?)?;
    println!("{}", out.display());
    if campaign.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} power cuts left a host that did not recover",
            campaign.failures.len(),
            points
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Random;

    #[test]
    fn cut_times_are_fractions_replayed_from_the_seed() {
        let draw = |seed| {
            let mut r = Random(seed);
            (0..1000).map(|_| r.next_fraction()).collect::<Vec<f64>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|f| (0.0..1.0).contains(f)));
        // Spread over the whole update, not bunched at one end.
        let early = a.iter().filter(|f| **f < 0.5).count();
        assert!((400..600).contains(&early), "{early} of 1000 in the first half");
    }
}
