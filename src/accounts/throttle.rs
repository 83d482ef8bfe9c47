//! How often sign-ins may fail and registrations happen, per account name and per address:
//! token buckets in tables bounded in entries (and so in bytes: a key is at most a name or an
//! address). A full table forgets its stalest bucket, never refuses a newcomer: a flood of new
//! names or addresses cannot lock anyone else out, it only resets its own oldest limits.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Buckets per table at most.
pub(super) const MAX_ENTRIES: usize = 10_000;

/// A bucket of `burst` tokens refilled evenly over `period`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rate {
    pub burst: u32,
    pub period: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One table of buckets.
#[derive(Debug)]
pub(super) struct Table<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    pub(super) fn new(rate: Rate) -> Table<K> {
        Table {
            rate,
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let burst = f64::from(self.rate.burst);
        let per_sec = burst / self.rate.period.as_secs_f64().max(1e-3);
        (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * per_sec)
            .min(burst)
    }

    /// `None` if `key` may go on now, else how long until it may (a rate of 0 never limits).
    pub(super) fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        if self.rate.burst == 0 {
            return None;
        }
        let bucket = self.buckets.get(key)?;
        let tokens = self.refilled(bucket, now);
        if tokens >= 1.0 {
            return None;
        }
        let per_sec = f64::from(self.rate.burst) / self.rate.period.as_secs_f64().max(1e-3);
        Some(Duration::from_secs_f64((1.0 - tokens) / per_sec))
    }

    /// Takes one token from `key`'s bucket (it may go below one: `wait` then says how long).
    pub(super) fn take(&mut self, key: &K, now: Instant) {
        if self.rate.burst == 0 {
            return;
        }
        let tokens = match self.buckets.get(key) {
            Some(bucket) => self.refilled(bucket, now),
            None => {
                if self.buckets.len() >= MAX_ENTRIES {
                    self.forget_stalest(now);
                }
                f64::from(self.rate.burst)
            }
        };
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Drops every full bucket (it holds nothing a new one would not); if none is full, the one
    /// touched longest ago.
    fn forget_stalest(&mut self, now: Instant) {
        let burst = f64::from(self.rate.burst);
        let before = self.buckets.len();
        let full: Vec<K> = self
            .buckets
            .iter()
            .filter(|(_, b)| self.refilled(b, now) >= burst)
            .map(|(k, _)| k.clone())
            .collect();
        for k in full {
            self.buckets.remove(&k);
        }
        if self.buckets.len() < before {
            return;
        }
        if let Some(k) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&k);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_runs_out_and_refills() {
        let rate = Rate {
            burst: 2,
            period: Duration::from_secs(10),
        };
        let mut t = Table::new(rate);
        let now = Instant::now();
        assert_eq!(t.wait(&"a", now), None);
        t.take(&"a", now);
        assert_eq!(t.wait(&"a", now), None);
        t.take(&"a", now);
        let wait = t.wait(&"a", now).expect("empty");
        assert!(wait > Duration::from_secs(4) && wait <= Duration::from_secs(5));
        assert_eq!(t.wait(&"b", now), None, "another key is not limited");
        assert_eq!(t.wait(&"a", now + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_full_table_forgets_instead_of_refusing() {
        let rate = Rate {
            burst: 1,
            period: Duration::from_secs(3600),
        };
        let mut t = Table::new(rate);
        let now = Instant::now();
        for i in 0..MAX_ENTRIES + 50 {
            t.take(&i, now + Duration::from_millis(i as u64));
        }
        assert!(t.len() <= MAX_ENTRIES);
        assert_eq!(
            t.wait(&usize::MAX, now),
            None,
            "a newcomer is never refused"
        );
        assert!(
            t.wait(&(MAX_ENTRIES + 49), now).is_some(),
            "the newest are kept"
        );
    }
}
