//! Flood control: chatctl paces what it sends under the rate the server enforces (advertised in
//! `welcome.server`), so pasting, piping or rejoining many rooms never gets it `rate_limited` or
//! disconnected. Lines wait in order instead.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket on tokio's clock, set a little under the server's so the two never disagree.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

/// The share of the server's rate chatctl uses (clocks and network jitter differ a little).
const RATE_SHARE: f64 = 0.9;
/// Tokens of the server's burst chatctl leaves unused (the hello took one).
const BURST_MARGIN: u32 = 2;

impl Pacer {
    /// A pacer under a server allowing `per_sec` requests per second in bursts of `burst`
    /// (0 = unlimited), starting as full as the server's bucket is after a hello.
    pub fn under(per_sec: f64, burst: u32) -> Pacer {
        let burst = f64::from(burst.saturating_sub(BURST_MARGIN).max(1));
        Pacer {
            tokens: burst,
            burst,
            per_sec: per_sec * RATE_SHARE,
            last: Instant::now(),
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Pacer {
        Pacer::under(0.0, 0)
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + gained).min(self.burst);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (now, if one is).
    pub fn ready_at(&mut self) -> Instant {
        let now = Instant::now();
        if self.per_sec <= 0.0 {
            return now;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stays_under_the_server_rate_with_a_margin() {
        // The server's default: 10/s in bursts of 20.
        let mut p = Pacer::under(10.0, 20);
        let start = Instant::now();
        let mut sent = 0;
        while sent < 18 {
            assert!(p.try_take());
            sent += 1;
        }
        assert!(!p.try_take(), "the burst keeps a margin");
        // Then 9 per second.
        let at = p.ready_at();
        assert_eq!(at - start, Duration::from_secs_f64(1.0 / 9.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut more = 0;
        while p.try_take() {
            more += 1;
        }
        assert_eq!(more, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_lines_never_outrun_the_server_bucket() {
        // Simulate the server's own bucket alongside: it must never run dry.
        let (server_rate, server_burst) = (10.0, 20.0);
        let mut server_tokens = server_burst - 1.0; // the hello
        let mut p = Pacer::under(10.0, 20);
        let mut last = Instant::now();
        for _ in 0..1000 {
            tokio::time::sleep_until(p.ready_at()).await;
            assert!(p.try_take());
            let now = Instant::now();
            server_tokens =
                (server_tokens + (now - last).as_secs_f64() * server_rate).min(server_burst);
            last = now;
            assert!(server_tokens >= 1.0, "the server would refuse this line");
            server_tokens -= 1.0;
        }
    }

    #[test]
    fn zero_means_unlimited() {
        let mut p = Pacer::unlimited();
        assert!((0..10_000).all(|_| p.try_take()));
    }
}
