//! Rate limits: per-connection (requests, typing, strikes toward a close), per API key, and
//! connections per address (`server::limiter`), on tokio's clock so tests can pause time.
//!
//! A bucket is kept as the moment it will be full again (the generic cell rate algorithm): one
//! `Instant` per bucket, the same decisions as counting tokens, and the rate itself passed in
//! when a token is taken (a session's from `Chat::rates`) rather than copied into every
//! connection.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::LimitsConfig;

/// A rate: `burst` at once, then `per_sec` (0: unlimited), kept as the time one token takes to
/// come back and a whole burst's (`None`: unlimited), so taking a token does no division.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    steps: Option<(Duration, Duration)>,
}

impl Rate {
    /// `burst` at once, then `per_sec` (0 or less: unlimited).
    pub fn new(burst: u32, per_sec: f64) -> Rate {
        let steps = (per_sec > 0.0 && per_sec.is_finite()).then(|| {
            let step = Duration::from_secs_f64(1.0 / per_sec);
            (step, step.checked_mul(burst).unwrap_or(Duration::MAX))
        });
        Rate { steps }
    }

    /// Whether every take succeeds.
    pub fn is_unlimited(self) -> bool {
        self.steps.is_none()
    }
}

/// A session's three rates, from `limits` (made once, shared in `Chat`): its requests, its typing
/// notices, and the strikes (refused requests) that close it for abuse, which come back at one a
/// second while either rate is limited.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub requests: Rate,
    pub typing: Rate,
    pub strikes: Rate,
}

impl Rates {
    pub(crate) fn new(limits: &LimitsConfig) -> Rates {
        let limited = limits.rate_per_sec > 0.0 || limits.typing_rate_per_sec > 0.0;
        Rates {
            requests: Rate::new(limits.rate_burst, limits.rate_per_sec),
            typing: Rate::new(limits.typing_burst, limits.typing_rate_per_sec),
            strikes: Rate::new(limits.abuse_strikes, if limited { 1.0 } else { 0.0 }),
        }
    }
}

/// One client's use of a [`Rate`]: the moment its bucket is full again (now or earlier: full).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    full_at: Instant,
}

impl Default for TokenBucket {
    fn default() -> TokenBucket {
        TokenBucket::new()
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn new() -> TokenBucket {
        TokenBucket {
            full_at: Instant::now(),
        }
    }

    /// Takes one token at `rate` if there is one; always succeeds when unlimited.
    pub fn try_take(&mut self, rate: Rate) -> bool {
        let Some((step, burst)) = rate.steps else {
            return true;
        };
        let now = Instant::now();
        let full_at = self.full_at.max(now);
        // Tokens missing now, plus this one, must fit in the burst.
        if (full_at - now).saturating_add(step) > burst {
            return false;
        }
        self.full_at = full_at + step;
        true
    }

    /// Whether the bucket is full (nothing taken lately): forgetting it changes nothing.
    pub fn is_full(&self) -> bool {
        self.full_at <= Instant::now()
    }

    /// How long until [`TokenBucket::try_take`] at `rate` succeeds again (after it failed).
    pub fn wait(&self, rate: Rate) -> Duration {
        let Some((step, burst)) = rate.steps else {
            return Duration::ZERO;
        };
        let owed = self.full_at.saturating_duration_since(Instant::now());
        owed.saturating_add(step).saturating_sub(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_refills() {
        let rate = Rate::new(3, 2.0);
        let mut b = TokenBucket::new();
        assert!((0..3).all(|_| b.try_take(rate)));
        assert!(!b.try_take(rate));
        assert_eq!(b.wait(rate), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.wait(rate), Duration::ZERO);
        assert!(b.try_take(rate));
        assert!(!b.try_take(rate));
        assert!(!b.is_full());
        // Idle for long, it is full again, and no fuller than its burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.is_full());
        assert!((0..3).all(|_| b.try_take(rate)));
        assert!(!b.try_take(rate));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new();
        let rate = Rate::new(0, 0.0);
        assert!(rate.is_unlimited());
        assert!((0..1000).all(|_| b.try_take(rate)));
        assert_eq!(b.wait(rate), Duration::ZERO);
    }
}
