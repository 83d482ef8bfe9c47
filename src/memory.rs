//! Giving memory back once a crowd has gone, so that RSS returns to about where it started.
//!
//! Two things kept the high-water mark of 10,000 connections after they left (measured with
//! jemalloc's statistics, RSS from `/proc`):
//! - A `HashMap` or `Vec` keeps the capacity of its largest moment: the directory's and a room's
//!   tables of 16,384 slots, with no one in them, about 0.8 MiB. Removals that can empty a large
//!   table call [`Shrink::shrink_if_sparse`] after them.
//! - Each thread's allocator cache keeps freed blocks to hand out again, and each of them keeps
//!   the whole page run it sits in from going back to the system: about 1.5 MiB for a connection
//!   task's run of 12 KiB holding a few cached 1.5 KiB blocks. Nothing empties those caches on an
//!   idle thread, so when most of the connections have gone [`release_epoch`] moves on, and the
//!   daemon's runtime threads empty their caches the next time they go idle (`bin/chatd/alloc.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

/// Below this capacity nothing is given back: a small table costs little and is often refilled.
const KEEP: usize = 64;

/// A collection that can give back spare room.
pub(crate) trait Shrink {
    /// Once at most a quarter of its room is used, keeps room for twice what it holds. Amortised
    /// O(1): after a shrink, half of what is left must go before the next one, and as much again
    /// must come before it grows.
    fn shrink_if_sparse(&mut self);
}

fn sparse(len: usize, capacity: usize) -> bool {
    capacity > KEEP && len.saturating_mul(4) <= capacity
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn shrink_if_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T> Shrink for Vec<T> {
    fn shrink_if_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

/// Fewer connections than this gone since the peak ask for nothing: the caches are worth keeping
/// through ordinary comings and goings.
const RELEASE_AFTER: usize = 256;

static RELEASE: AtomicU64 = AtomicU64::new(0);

/// Moves on each time most of the connections have gone: a thread that saw another value when it
/// last went idle has cached memory worth giving back.
pub fn release_epoch() -> u64 {
    RELEASE.load(Ordering::Relaxed)
}

/// Connections went from `peak` down to `open`: when at least half of them (and
/// `RELEASE_AFTER`) have gone, asks the threads to give back their caches and returns true (the
/// caller counts its peak from `open` again).
pub(crate) fn connections_left(open: usize, peak: usize) -> bool {
    let gone = peak.saturating_sub(open);
    if gone < RELEASE_AFTER || gone < open {
        return false;
    }
    RELEASE.fetch_add(1, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_asked_to_give_back_memory_once_most_connections_have_gone() {
        let before = release_epoch();
        assert!(!connections_left(9_000, 10_000), "a tenth gone");
        assert!(!connections_left(100, 300), "too few to matter");
        assert_eq!(release_epoch(), before);
        assert!(connections_left(5_000, 10_000));
        assert!(release_epoch() > before);
    }

    #[test]
    fn a_table_gives_back_its_room_as_it_empties_and_keeps_a_small_one() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        for i in 0..10_000 {
            map.remove(&i);
            map.shrink_if_sparse();
        }
        assert!(map.is_empty());
        assert!(map.capacity() <= KEEP, "{} of {full} kept", map.capacity());

        let mut small: Vec<u32> = Vec::with_capacity(KEEP);
        small.push(1);
        small.shrink_if_sparse();
        assert_eq!(small.capacity(), KEEP, "a small one is left alone");

        let mut members: Vec<u32> = (0..1_000).collect();
        members.truncate(250);
        members.shrink_if_sparse();
        assert!(members.capacity() >= 250 && members.capacity() <= 500);
        members.truncate(200);
        members.shrink_if_sparse();
        assert!(
            members.capacity() >= 250,
            "no shrink until a quarter is used"
        );
    }
}
