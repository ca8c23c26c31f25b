//! The VM and builder tests of `qemu-tests`, one `cargo test` per test so
//! each one's wall time is known: `cargo xtask test` records them in
//! `target/cairn/<arch>/suite-times-<platform>.json`, and `cargo xtask
//! bench` prints the last record. Pure: which tests run ([`select`]), from
//! libtest's `--list` output ([`parse_list`]); the record ([`SuiteTimes`]).

use serde::{Deserialize, Serialize};

/// One test of a test file (`qemu-tests/tests/<file>.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestId {
    pub file: String,
    pub name: String,
}

/// The test names of libtest's `--list` output (`name: test` lines;
/// benches, blank lines and the summary are not tests).
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

/// The tests that run, in order: those whose name contains one of
/// `filters` (all when there is none), less those whose name contains one
/// of `skipped` — libtest's own rules for its filters and `--skip`.
pub fn select(tests: Vec<TestId>, filters: &[String], skipped: &[&str]) -> Vec<TestId> {
    tests
        .into_iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str())))
        .filter(|t| !skipped.iter().any(|s| t.name.contains(s)))
        .collect()
}

/// How one test went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestTime {
    pub file: String,
    pub name: String,
    pub secs: f64,
    pub passed: bool,
}

/// The record of one run of the VM and builder tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteTimes {
    /// `date -u`-style UTC time the run ended, seconds since the epoch.
    pub finished_at: u64,
    pub accel: String,
    pub tests: Vec<TestTime>,
}

impl SuiteTimes {
    pub fn total_secs(&self) -> f64 {
        self.tests.iter().map(|t| t.secs).sum()
    }

    /// The failed tests' names, in order.
    pub fn failed(&self) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|t| !t.passed)
            .map(|t| t.name.as_str())
            .collect()
    }

    /// A table: one line per test, slowest first, and the total.
    pub fn table(&self) -> String {
        let mut sorted: Vec<&TestTime> = self.tests.iter().collect();
        sorted.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        let mut out = String::new();
        for t in sorted {
            let verdict = if t.passed { "" } else { "  FAILED" };
            out.push_str(&format!("{:>7.0} s  {}::{}{verdict}\n", t.secs, t.file, t.name));
        }
        out.push_str(&format!(
            "{:>7.0} s  total ({} tests, {})\n",
            self.total_secs(),
            self.tests.len(),
            self.accel
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(file: &str, name: &str) -> TestId {
        TestId {
            file: file.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_list_holds_only_test_lines() {
        let text = "dev_image_boots: test\nprod_image_has_no_login: test\nsome_bench: bench\n\n2 tests, 1 benchmark\n";
        assert_eq!(parse_list(text), ["dev_image_boots", "prod_image_has_no_login"]);
        assert!(parse_list("0 tests, 0 benchmarks\n").is_empty());
    }

    #[test]
    fn filters_pick_and_skips_drop_by_substring_like_libtest() {
        let all = vec![
            id("boot", "dev_image_boots"),
            id("update", "long_update"),
            id("update", "short_update"),
        ];
        let picked = select(all.clone(), &[], &["short"]);
        assert_eq!(picked, [id("boot", "dev_image_boots"), id("update", "long_update")]);
        let picked = select(all, &["update".to_owned()], &["long"]);
        assert_eq!(picked, [id("update", "short_update")]);
    }

    #[test]
    fn the_table_puts_the_slowest_first_and_names_failures() {
        let t = |name: &str, secs: f64, passed: bool| TestTime {
            file: "update".into(),
            name: name.into(),
            secs,
            passed,
        };
        let run = SuiteTimes {
            finished_at: 0,
            accel: "tcg".into(),
            tests: vec![t("fast", 10.0, true), t("slow", 600.0, false)],
        };
        let table = run.table();
        assert!(table.find("slow").unwrap() < table.find("fast").unwrap(), "{table}");
        assert!(table.contains("update::slow  FAILED"), "{table}");
        assert!(table.contains("610 s  total (2 tests, tcg)"), "{table}");
        assert_eq!(run.failed(), ["slow"]);
    }
}
