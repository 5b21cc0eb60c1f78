//! Reconnect backoff with jitter: one formula for every link that retries
//! (MQTT brokers, PLCs, the `watch` tool), and the small PRNG that draws
//! the jitter. A leaf module: it depends on nothing in the crate.
//!
//! Invariants: the first wait after a failure is `min`; each further
//! failure doubles it up to `max`; jitter scales each wait into
//! `[wait/2, wait)`, so links that failed together do not retry in step;
//! no failure count overflows.

use std::time::Duration;

/// The wait before the next attempt after `failures` failures in a row
/// (1 for the first), with `random` drawing the jitter.
pub fn delay(min: Duration, max: Duration, failures: u32, random: u64) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let frac = 0.5 + (random % 1000) as f64 / 2000.0;
    exp.min(max).mul_f64(frac)
}

/// Small, fast, seedable PRNG (xorshift64*), so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_min_to_its_cap_with_jitter_and_never_overflows() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let top = |n| delay(min, max, n, 999);
        let bottom = |n| delay(min, max, n, 0);
        assert_eq!(bottom(1), Duration::from_millis(500), "jitter halves at most");
        assert_eq!([bottom(2), bottom(3), bottom(5)], [1, 2, 8].map(Duration::from_secs));
        assert!(top(1) < min && top(1) > Duration::from_millis(999));
        assert_eq!(bottom(6), max / 2, "capped");
        assert_eq!(bottom(1000), max / 2, "no overflow");
        assert_eq!(bottom(0), bottom(1), "zero failures waits like one");
    }

    #[test]
    fn jitter_spreads_the_waits_of_links_that_failed_together() {
        let mut rng = Rng::new(7);
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| delay(Duration::from_secs(1), Duration::from_secs(30), 3, rng.next_u64()))
            .collect();
        assert!(waits.len() > 40, "{} distinct waits of 50", waits.len());
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(2) && *w < Duration::from_secs(4)));
    }
}
