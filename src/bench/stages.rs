//! Where the relay's time went: the `outbox_stage_seconds_total{group, stage}` counters the
//! relay exports on `run --http ADDR` `/metrics` (seconds spent per stage, summed), read from
//! the Prometheus text and added up over groups. A relay without the metric has no breakdown.

use serde::Serialize;

/// The stages in the order a batch goes through them.
pub const STAGES: [&str; 5] = ["read", "decode", "handle", "append", "cursor"];

const METRIC: &str = "outbox_stage_seconds_total";

/// Seconds per stage, summed over groups; known stages first, in [`STAGES`] order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageBreakdown {
    pub seconds: Vec<(String, f64)>,
}

impl StageBreakdown {
    /// The counters in `metrics` (Prometheus text), or `None` when there are none.
    pub fn parse(metrics: &str) -> Option<StageBreakdown> {
        let mut seconds: Vec<(String, f64)> = Vec::new();
        for line in metrics.lines() {
            let Some((stage, value)) = stage_sample(line) else {
                continue;
            };
            match seconds.iter_mut().find(|(name, _)| *name == stage) {
                Some((_, total)) => *total += value,
                None => seconds.push((stage.to_owned(), value)),
            }
        }
        seconds.sort_by_key(|(name, _)| {
            STAGES
                .iter()
                .position(|known| known == name)
                .unwrap_or(STAGES.len())
        });
        (!seconds.is_empty()).then_some(StageBreakdown { seconds })
    }

    /// Each stage's seconds as a share of `wall_seconds`.
    pub fn shares(&self, wall_seconds: f64) -> Vec<(String, f64)> {
        self.seconds
            .iter()
            .map(|(name, s)| (name.clone(), s / wall_seconds.max(f64::EPSILON)))
            .collect()
    }
}

/// `outbox_stage_seconds_total{group="g",stage="read"} 1.5` → `("read", 1.5)`.
fn stage_sample(line: &str) -> Option<(&str, f64)> {
    let labels = line.strip_prefix(METRIC)?.strip_prefix('{')?;
    let (labels, value) = labels.rsplit_once('}')?;
    let stage = labels
        .split(',')
        .find_map(|label| label.trim().strip_prefix("stage=\""))?
        .strip_suffix('"')?;
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    Some((stage, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_summed_over_groups_and_ordered() {
        let text = "# TYPE outbox_stage_seconds_total counter\n\
            outbox_stage_seconds_total{group=\"a\",stage=\"append\"} 2\n\
            outbox_stage_seconds_total{group=\"a\",stage=\"read\"} 1.5\n\
            outbox_stage_seconds_total{group=\"b\",stage=\"read\"} 0.5\n\
            outbox_stage_seconds_total_other{stage=\"read\"} 9\n\
            outbox_messages_forwarded_total{group=\"a\"} 10\n";
        let breakdown = StageBreakdown::parse(text).unwrap();
        assert_eq!(
            breakdown.seconds,
            vec![("read".to_owned(), 2.0), ("append".to_owned(), 2.0)]
        );
        assert_eq!(breakdown.shares(4.0)[0], ("read".to_owned(), 0.5));
    }

    #[test]
    fn no_metric_no_breakdown() {
        assert_eq!(StageBreakdown::parse("outbox_x_total 1\n"), None);
    }
}
