//! Power cuts at ten moments of an update (check, download, stage,
//! finalize, trial boot, commit, and the cleanup after a failed trial):
//! after each, the host boots by itself into the old or the new release,
//! healthy, with `ostree fsck` clean. Needs
//! `cargo xtask test`. `cargo xtask bench power-cut` cuts at random moments,
//! many more times.

use cairn_qemu_tests::power_cut::{standard_points, Landed, Rig};
use cairn_qemu_tests::Artifacts;

const RELAY: &str = env!("CARGO_BIN_EXE_cairn-test-relay");

#[test]
#[ignore = "boots a VM; run by `cargo xtask test`"]
fn a_power_cut_at_any_moment_of_an_update_leaves_a_bootable_healthy_host() {
    let a = Artifacts::load().unwrap();
    let scratch = tempfile::Builder::new()
        .prefix("cairn-power-cut-test-")
        .tempdir()
        .unwrap();
    let mut rig = Rig::start(&a, scratch.path(), std::path::Path::new(RELAY)).unwrap();
    let mut reports = Vec::new();
    for point in standard_points() {
        let report = rig.cut(&point).unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!(
            "cut at `{}` ({:.1}s into {} → {}): back on the {} release after {:.0}s",
            report.point,
            report.cut_after_secs,
            report.from,
            report.to,
            if report.landed == Landed::New { "new" } else { "old" },
            report.recovery_secs
        );
        reports.push(report);
    }
    // Cuts before the staged deployment is finalized keep the old release;
    // cuts once the trial boot began come back on the new one.
    let landed = |name: &str| reports.iter().find(|r| r.point.starts_with(name)).unwrap().landed;
    assert_eq!(landed("check:"), Landed::Old);
    assert_eq!(landed("download:"), Landed::Old);
    assert_eq!(landed("trial boot: health gate running"), Landed::New);
    assert_eq!(landed("after commit"), Landed::New);
    // The failed trial stays marked bad through a cut in its cleanup (the
    // rig also checks it is not staged again); no other cut marks one bad.
    assert_eq!(landed("fall-back:"), Landed::Old);
    assert!(
        reports
            .iter()
            .all(|r| r.marked_bad == r.point.starts_with("fall-back:")),
        "only the failed trial may be marked bad: {reports:#?}"
    );
}
