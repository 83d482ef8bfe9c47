//! Token buckets for per-connection rate limits, on tokio's clock so tests can pause time.

use tokio::time::Instant;

/// A token bucket: `burst` tokens, refilled at `per_sec`. A rate of 0 means unlimited.
/// (`f32`s: every connection holds three of these, and 24 bits are plenty for a rate.)
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    burst: f32,
    per_sec: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: f64) -> TokenBucket {
        TokenBucket {
            tokens: burst as f32,
            burst: burst as f32,
            per_sec: per_sec as f32,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one; always succeeds when unlimited.
    pub fn try_take(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f32() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until [`TokenBucket::try_take`] succeeds again (after it failed).
    pub fn wait(&self) -> std::time::Duration {
        if self.per_sec <= 0.0 || self.tokens >= 1.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f32((1.0 - self.tokens) / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn allows_burst_then_refills() {
        let mut b = TokenBucket::new(3, 2.0);
        assert!((0..3).all(|_| b.try_take()));
        assert!(!b.try_take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.try_take());
        assert!(!b.try_take());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0.0);
        assert!((0..1000).all(|_| b.try_take()));
    }
}
