//! Retry delays: exponential backoff with full jitter (AWS Architecture Blog, "Exponential
//! Backoff And Jitter"), bounded.
//!
//! The delay before retry `n` (1-based: the retry after the first failed attempt is 1) is
//! drawn uniformly from `[0, min(max, base · 2^(n-1))]`. Full jitter spreads the retries of
//! many commands that failed together (a peer restart) instead of having them return in
//! lockstep; the cap bounds how long a command can wait.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first retry's delay.
    pub base: Duration,
    /// No delay exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 200 ms, doubling, capped at 30 s.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `retry` (1-based; 0 is treated as 1):
    /// `min(max, base · 2^(retry-1))`, without overflow.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let max_ms = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(max_ms))
    }

    /// A delay for retry `retry`, uniformly drawn from `[0, ceiling(retry)]` with `rng`.
    pub fn delay_with(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.gen_range(0..=ceiling))
    }

    /// [`delay_with`](Self::delay_with) with the thread's RNG.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn delays_stay_within_their_ceiling_and_the_cap(
            base_ms in 1u64..10_000,
            max_ms in 1u64..3_600_000,
            retry in 0u32..200,
            seed in any::<u64>(),
        ) {
            let b = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = b.delay_with(retry, &mut rng);
            prop_assert!(d <= b.ceiling(retry));
            prop_assert!(d <= b.max);
        }

        #[test]
        fn ceilings_double_until_the_cap(base_ms in 1u64..10_000, max_ms in 1u64..3_600_000, retry in 1u32..100) {
            let b = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let (this, next) = (b.ceiling(retry), b.ceiling(retry + 1));
            prop_assert!(next >= this);
            prop_assert!(next == b.max || next == this * 2);
        }
    }

    #[test]
    fn jitter_covers_the_whole_range() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..2_000).map(|_| b.delay_with(3, &mut rng)).collect();
        // Retry 3: uniform in [0, 400 ms].
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(40)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(360)));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(400), Duration::from_secs(30));
    }
}
