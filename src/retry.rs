//! Retry decisions: after a failed attempt, retry after some delay or give up (dead).
//!
//! Pure: the attempt count and the jitter are passed in, so the schedule is exact in tests.
//! The delay before retry `n` (after `n` failed attempts) is
//! `min(max, initial × multiplier^(n-1))`, scaled by a jitter factor in `[1 - JITTER, 1 + JITTER)`
//! so that many messages failing together do not retry in lockstep.

use std::time::Duration;

/// How far jitter moves a delay either way (±20 %).
pub const JITTER: f64 = 0.2;

/// A route's retry schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after this many failures the message is dead.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Each retry waits this many times longer than the previous one.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up: the message is dead.
    Dead,
}

impl RetryPolicy {
    /// The decision after `failed_attempts` failures in all (1 after the first failure),
    /// with `jitter` drawn uniformly from `[0, 1)`.
    pub fn decide(&self, failed_attempts: u32, jitter: f64) -> Decision {
        if failed_attempts >= self.max_attempts {
            return Decision::Dead;
        }
        Decision::RetryAfter(self.delay(failed_attempts, jitter))
    }

    /// The delay before the next attempt after `failed_attempts` failures (at least 1).
    pub fn delay(&self, failed_attempts: u32, jitter: f64) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(1000) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let factor = 1.0 - JITTER + 2.0 * JITTER * jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            multiplier: 2.0,
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let delays: Vec<u128> = (1..=4)
            .map(|n| policy().delay(n, 0.5).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500]);
    }

    #[test]
    fn jitter_moves_a_delay_at_most_a_fifth_either_way() {
        assert_eq!(policy().delay(1, 0.0).as_millis(), 80);
        assert_eq!(policy().delay(1, 0.999_999).as_millis(), 119);
        assert_eq!(policy().delay(1, 7.0).as_millis(), 120);
    }

    #[test]
    fn dead_after_max_attempts() {
        assert_eq!(
            policy().decide(4, 0.5),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(policy().decide(5, 0.5), Decision::Dead);
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(once.decide(1, 0.5), Decision::Dead);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(policy().delay(u32::MAX, 0.5), Duration::from_millis(500));
    }
}
