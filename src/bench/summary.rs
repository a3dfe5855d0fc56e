//! What a benchmark run measured, in one shape for every scenario: the lines of the summary
//! table (a figure, and where there is one, the ceiling for the same work and their ratio),
//! the run's parameters and the machine it ran on. `bench --json FILE` writes it as JSON.

use serde::Serialize;
use serde_json::Value;

use super::Comparison;

/// One measured figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    pub scenario: &'static str,
    /// What was measured, e.g. `relay vs lower ceiling`.
    pub what: String,
    pub value: f64,
    /// `msg/s` for throughputs; other figures (`ms`, `rows/msg`, …) have no ceiling.
    pub unit: &'static str,
    /// The same work done by the simplest correct hand-written code, same unit.
    pub ceiling: Option<f64>,
    /// `value / ceiling`.
    pub ratio: Option<f64>,
    /// Messages behind the figure, and how long they took (throughputs only).
    pub messages: Option<u64>,
    pub seconds: Option<f64>,
}

impl Line {
    /// Our throughput next to the ceiling's.
    pub fn comparison(scenario: &'static str, what: impl Into<String>, c: &Comparison) -> Line {
        Line {
            scenario,
            what: what.into(),
            value: c.ours.per_second(),
            unit: "msg/s",
            ceiling: Some(c.ceiling.per_second()),
            ratio: Some(c.ratio()),
            messages: Some(c.ours.messages),
            seconds: Some(c.ours.elapsed.as_secs_f64()),
        }
    }

    /// A figure with no ceiling (a latency, a cost).
    pub fn figure(
        scenario: &'static str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Line {
        Line {
            scenario,
            what: what.into(),
            value,
            unit,
            ceiling: None,
            ratio: None,
            messages: None,
            seconds: None,
        }
    }
}

/// A scenario's figures, parameters and details (stage shares, peak RSS, idle cost, …).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub parameters: Value,
    pub machine: Machine,
    pub lines: Vec<Line>,
    pub details: Value,
}

/// The machine the figures come from, read from /proc (absent elsewhere).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    pub cpu_model: Option<String>,
}

impl Machine {
    pub fn this_one() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: mem_total_bytes(&meminfo),
            cpu_model: cpuinfo
                .lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned()),
        }
    }
}

/// `MemTotal:  24684084 kB` → bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Measurement;
    use std::time::Duration;

    #[test]
    fn memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        11856976 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24_684_084 * 1024));
        assert_eq!(mem_total_bytes(""), None);
    }

    #[test]
    fn a_comparison_line_carries_the_ratio_of_its_rates() {
        let c = Comparison {
            ours: Measurement {
                messages: 100,
                elapsed: Duration::from_secs(2),
            },
            ceiling: Measurement {
                messages: 100,
                elapsed: Duration::from_secs(1),
            },
        };
        let line = Line::comparison("drain", "relay", &c);
        assert_eq!(line.value, 50.0);
        assert_eq!(line.ceiling, Some(100.0));
        assert_eq!(line.ratio, Some(0.5));
    }
}
