//! Runs scenarios one after another, each under its time limit.

use std::time::Duration;

use crate::scenario::{Config, Ctx, Failure, Outcome, Scenario, ScenarioResult};
use crate::wire::Version;

/// The verdict on one scenario.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The scenario's name.
    pub name: &'static str,
    /// What happened.
    pub result: ScenarioResult,
    /// How long it took.
    pub elapsed: Duration,
    /// Copied from the scenario, so a report can say a failure was expected
    /// against Mosquitto.
    pub expected_mosquitto_difference: Option<&'static str>,
}

impl Verdict {
    /// The one-line form: `PASS name`, `FAIL name: expected X, saw Y` or
    /// `SKIP name: reason`.
    pub fn line(&self) -> String {
        match &self.result {
            Ok(Outcome::Pass) | Ok(Outcome::PassNoted(_)) => format!("PASS {}", self.name),
            Ok(Outcome::Skip(why)) => format!("SKIP {}: {why}", self.name),
            Err(f) => format!("FAIL {}: {f}", self.name),
        }
    }
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every verdict, in run order.
    pub verdicts: Vec<Verdict>,
}

impl Report {
    /// Scenarios that passed.
    pub fn passed(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::Pass | Outcome::PassNoted(_))))
    }
    /// Scenarios that failed.
    pub fn failed(&self) -> usize {
        self.count(|r| r.is_err())
    }
    /// Scenarios that were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::Skip(_))))
    }
    fn count(&self, f: impl Fn(&ScenarioResult) -> bool) -> usize {
        self.verdicts.iter().filter(|v| f(&v.result)).count()
    }
    /// The closing line: `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Which scenarios to run.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only this version (None: all).
    pub version: Option<Version>,
    /// Only names containing this text (None: all).
    pub filter: Option<String>,
}

impl Selection {
    /// True when `s` is selected.
    pub fn matches(&self, s: &Scenario) -> bool {
        self.version.is_none_or(|v| v == s.version)
            && self.filter.as_deref().is_none_or(|f| s.name.contains(f))
    }
}

/// Every scenario the suite has, in run order.
pub fn all_scenarios() -> Vec<Scenario> {
    let mut all = crate::v311::scenarios();
    all.extend(crate::v5::scenarios());
    all.extend(crate::bad_input::scenarios());
    all.extend(crate::corners::scenarios());
    all
}

/// Runs one scenario under its time limit.
pub async fn run_one(config: &Config, index: usize, scenario: &Scenario) -> Verdict {
    let cx = Ctx {
        config: config.clone(),
        version: scenario.version,
        index,
        name: scenario.name,
    };
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(scenario.time_limit, (scenario.run)(cx)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            format!(
                "the scenario to finish within {} s",
                scenario.time_limit.as_secs()
            ),
            "it still running (timed out)",
        )),
    };
    Verdict {
        name: scenario.name,
        result,
        elapsed: started.elapsed(),
        expected_mosquitto_difference: scenario.expected_mosquitto_difference,
    }
}

/// Runs the selected scenarios one after another, calling `each` as every
/// verdict is known (to print progress), and returns the report.
///
/// Scenarios run sequentially: several of them measure timing (keep alive,
/// will delay, expiry) that a loaded broker would blur.
pub async fn run(config: &Config, selection: &Selection, mut each: impl FnMut(&Verdict)) -> Report {
    let mut report = Report::default();
    for (index, scenario) in all_scenarios().iter().enumerate() {
        if !selection.matches(scenario) {
            continue;
        }
        let verdict = run_one(config, index, scenario).await;
        each(&verdict);
        report.verdicts.push(verdict);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_prefixed_by_version() {
        let all = all_scenarios();
        let mut seen = HashSet::new();
        for s in &all {
            assert!(seen.insert(s.name), "duplicate scenario {}", s.name);
            let prefix = match s.version {
                Version::V311 => "v311.",
                Version::V5 => "v5.",
            };
            assert!(s.name.starts_with(prefix), "{} lacks {prefix}", s.name);
            assert!(!s.summary.is_empty(), "{} has no summary", s.name);
        }
    }

    #[test]
    fn selection_filters_by_version_and_name() {
        let all = all_scenarios();
        let sel = Selection {
            version: Some(Version::V5),
            filter: Some("basic".into()),
        };
        let picked: Vec<_> = all
            .iter()
            .filter(|s| sel.matches(s))
            .map(|s| s.name)
            .collect();
        assert_eq!(picked, ["v5.basic"]);
    }

    #[test]
    fn summary_line_format() {
        let mut r = Report::default();
        for (name, result) in [
            ("a", Ok(Outcome::Pass)),
            ("b", Err(Failure::new("x", "y"))),
            ("c", Ok(Outcome::Skip("z".into()))),
        ] {
            r.verdicts.push(Verdict {
                name,
                result,
                elapsed: Duration::ZERO,
                expected_mosquitto_difference: None,
            });
        }
        assert_eq!(r.summary(), "1 passed, 1 failed, 1 skipped");
        assert_eq!(r.verdicts[1].line(), "FAIL b: expected x, saw y");
        assert_eq!(r.verdicts[2].line(), "SKIP c: z");
    }
}
