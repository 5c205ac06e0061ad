//! Capped exponential backoff with full jitter, for reconnects and delivery retries.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling) spreads
//! the retries of many clients that failed together, so a recovering server is not
//! hit by all of them at the same instant.

use std::time::Duration;

use rand::Rng;

/// The shape of a backoff: the first ceiling and the largest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// No delay is ever longer than this.
    pub max: Duration,
}

impl BackoffPolicy {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        BackoffPolicy { initial, max }
    }

    /// The ceiling of the delay after `failures` consecutive failures (the first failure is 1):
    /// `initial * 2^(failures-1)`, capped at `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = self.initial.as_nanos().saturating_mul(u128::from(factor));
        let capped = nanos.min(self.max.as_nanos());
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }

    /// A delay drawn uniformly from `[0, ceiling(failures)]`.
    pub fn delay<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(failures);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }
}

impl Default for BackoffPolicy {
    /// One second, doubling up to five minutes.
    fn default() -> Self {
        BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// A running backoff: counts consecutive failures and is reset by a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures, rng)
    }

    /// Records a success: the next failure waits at most `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const POLICY: BackoffPolicy =
        BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(10));

    #[test]
    fn the_ceiling_doubles_then_stays_at_the_cap() {
        let ceilings: Vec<u128> = (1..=10).map(|n| POLICY.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        assert_eq!(POLICY.ceiling(u32::MAX), Duration::from_secs(10));
        let unbounded = BackoffPolicy::new(Duration::MAX, Duration::MAX);
        assert_eq!(unbounded.ceiling(200), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn every_delay_lies_between_zero_and_its_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..=12 {
            for _ in 0..200 {
                let delay = POLICY.delay(failures, &mut rng);
                assert!(delay <= POLICY.ceiling(failures), "{failures}: {delay:?}");
            }
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        // Full jitter: draws must reach both the lower and the upper quarter.
        let mut rng = StdRng::seed_from_u64(11);
        let ceiling = POLICY.ceiling(8);
        let draws: Vec<Duration> = (0..400).map(|_| POLICY.delay(8, &mut rng)).collect();
        assert!(draws.iter().any(|d| *d < ceiling / 4));
        assert!(draws.iter().any(|d| *d > ceiling * 3 / 4));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut backoff = Backoff::new(POLICY);
            (0..6)
                .map(|_| backoff.next_delay(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut backoff = Backoff::new(POLICY);
        for _ in 0..5 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.failures(), 5);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        // The first delay after a reset is bounded by the initial ceiling again.
        for _ in 0..50 {
            let mut fresh = backoff.clone();
            assert!(fresh.next_delay(&mut rng) <= POLICY.initial);
        }
    }
}
