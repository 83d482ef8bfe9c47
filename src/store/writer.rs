//! The writer thread: gathers queued messages for up to one commit interval, commits them in one
//! transaction, indexes for search between commits, prunes when due.
//!
//! What it tells the rest of the store, under the queue's lock: since when it holds a batch
//! (`in_flight_since`: the store's lag), since when it is inside a commit (`busy_since`: a frozen
//! disk), and, after each commit, how far writes are durable (`Progress::committed`, which reads
//! wait for). A commit that fails keeps its batch and tries again every second, trying smaller
//! pieces first (what fits in a nearly full database goes in); meanwhile new messages are refused.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{BATCH, Op, QueueState, RETRY, Shared, Write, lock};

/// The writer thread's hold on the database: what SQLite and PostgreSQL each do.
pub(super) trait WriteDb: Send {
    /// Writes `batch` in one transaction; the number of room messages it adds to the search
    /// index's backlog (0 for a database that indexes as it writes).
    fn commit(&mut self, batch: &[Write]) -> Result<u64, String>;
    /// Indexes some stored messages for search: how many (0: none waited).
    fn index_some(&mut self) -> Result<u64, String> {
        Ok(0)
    }
    /// While a batch gathers, index only once this many messages wait for it (or a search waits
    /// for them); below it indexing waits for a pause in the writes. 0: always.
    fn index_backlog(&self) -> u64 {
        0
    }
    /// A commit failed: forget what was cached about the database (room ids), and reconnect if
    /// the connection is gone.
    fn forget(&mut self);
    /// The last act of a graceful stop: nothing acknowledged is missing.
    fn mark_clean(&mut self) -> Result<(), String>;
    /// Deletes what retention and the per-room cap no longer keep, for at most `budget`; true
    /// when more is left.
    fn prune(&mut self, shared: &Shared, budget: Duration) -> bool;
}

/// Longest the pruner holds the writer in one go; it carries on after the next batch.
const PRUNE_BUDGET: Duration = Duration::from_millis(200);

/// When the pruner runs next: at once (after the next batch) if it left work, else in an
/// interval.
fn next_prune(more: bool, shared: &Shared) -> Instant {
    if more {
        Instant::now()
    } else {
        Instant::now() + shared.settings.prune_interval
    }
}

pub(super) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>) -> Writer {
        Writer { shared }
    }

    /// Indexes some stored messages for search; false when none was waiting (or indexing failed:
    /// it is tried again after the next commit).
    fn index_some(&self, db: &mut dyn WriteDb) -> bool {
        let shared = &self.shared;
        if shared.unindexed.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match db.index_some() {
            Ok(0) => {
                shared.set_unindexed(0);
                false
            }
            Ok(n) => {
                let left = shared.unindexed.load(Ordering::Relaxed).saturating_sub(n);
                shared.set_unindexed(left);
                true
            }
            Err(e) => {
                warn!(error = %e, "storage: indexing for search failed; trying again later");
                false
            }
        }
    }

    /// While the writer would otherwise wait: indexes one chunk with the queue unlocked (when
    /// writes succeed), and relocks it. True when it indexed something, so the caller looks at the
    /// queue again before sleeping.
    fn index_unlocked<'a>(
        &self,
        shared: &'a Shared,
        db: &mut dyn WriteDb,
        state: MutexGuard<'a, QueueState>,
    ) -> (MutexGuard<'a, QueueState>, bool) {
        if !shared.writes_ok.load(Ordering::Relaxed) {
            return (state, false);
        }
        drop(state);
        let indexed = self.index_some(db);
        (shared.queue(), indexed)
    }

    /// Waits for work (indexing meanwhile), gathers a batch for up to one commit interval,
    /// commits it; prunes when due. Returns once the store is closed and everything is written.
    pub(super) fn run(self, mut db: Box<dyn WriteDb>) {
        let shared = self.shared.clone();
        let s = &shared.settings;
        let db = &mut *db;
        // The first run is at startup: what retention no longer keeps goes at once.
        let mut next_prune = Instant::now();
        loop {
            let mut batch = Vec::new();
            let mut state = shared.queue();
            // Until there is work or the pruner is due: index, or sleep.
            while state.items.is_empty() && !state.closed {
                let wait = next_prune.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                let indexed;
                (state, indexed) = self.index_unlocked(&shared, db, state);
                if indexed {
                    continue;
                }
                state.idle = true;
                state = crate::sync::wait_timeout(&shared.work, state, wait);
            }
            state.idle = false;
            let mut generation = state.queued - state.items.len() as u64;
            if !state.items.is_empty() {
                // Let one commit interval's worth gather behind the first (less, when a full
                // batch waits or chatd is stopping), indexing meanwhile; then take a batch.
                let deadline = state.items[0].queued + s.commit_interval;
                loop {
                    let now = Instant::now();
                    if state.items.len() >= BATCH || state.closed || now >= deadline {
                        break;
                    }
                    let eager = shared.unindexed.load(Ordering::Relaxed) >= db.index_backlog()
                        || shared.searches_waiting.load(Ordering::Relaxed) > 0;
                    if eager {
                        let indexed;
                        (state, indexed) = self.index_unlocked(&shared, db, state);
                        if indexed {
                            continue;
                        }
                    }
                    state = crate::sync::wait_timeout(&shared.work, state, deadline - now);
                }
                generation = state.queued - state.items.len() as u64;
                state.in_flight_since = state.items.front().map(|w| w.queued);
                while let Some(write) = state.items.pop_front() {
                    state.bytes -= write.bytes();
                    generation += 1;
                    let flush = matches!(write.op, Op::Flush(_));
                    batch.push(write);
                    if flush || batch.len() >= BATCH {
                        break;
                    }
                }
                state.in_flight = batch.len();
            }
            shared.metrics.queued.set(state.items.len() as i64);
            let closed = state.closed && state.items.is_empty();
            drop(state);
            self.commit_batch(db, batch, generation, &mut next_prune);
            if Instant::now() >= next_prune {
                next_prune = next_prune_after(db, &shared);
            }
            if closed {
                return;
            }
        }
    }

    /// Commits `batch` (whose last write has `generation`), then answers its flush. A failed
    /// commit keeps its batch and tries again: nothing accepted is dropped while chatd runs.
    fn commit_batch(
        &self,
        db: &mut dyn WriteDb,
        mut batch: Vec<Write>,
        generation: u64,
        next_prune: &mut Instant,
    ) {
        let shared = &self.shared;
        let s = &shared.settings;
        let mut chunk = batch.len();
        let mut failing = false;
        while !batch.is_empty() {
            let n = chunk.min(batch.len());
            shared.queue().busy_since = Some(Instant::now());
            let result = db.commit(&batch[..n]);
            shared.queue().busy_since = None;
            match result {
                Ok(stored) => {
                    if failing || !shared.writes_ok.load(Ordering::Relaxed) {
                        info!("storage: writes succeed again; messages are accepted again");
                    }
                    failing = false;
                    shared.writes_ok.store(true, Ordering::Relaxed);
                    let unindexed = shared.unindexed.load(Ordering::Relaxed) + stored;
                    shared.set_unindexed(unindexed);
                    let done: Vec<Write> = batch.drain(..n).collect();
                    let mut state = shared.queue();
                    state.in_flight -= done.len();
                    if batch.is_empty() {
                        state.in_flight_since = None;
                    } else {
                        state.in_flight_since = batch.first().map(|w| w.queued);
                    }
                    drop(state);
                    if batch.is_empty() {
                        lock(&shared.progress).committed = generation;
                        shared.progressed.notify_all();
                    }
                    for write in done {
                        if let Op::Flush(answer) = write.op {
                            // The last batch of a graceful stop: nothing is missing.
                            if let Err(e) = db.mark_clean() {
                                warn!(error = %e, "storage: could not mark the database as cleanly stopped");
                            }
                            let _ = answer.send(());
                        }
                    }
                }
                Err(e) => {
                    shared.metrics.errors.inc();
                    db.forget();
                    if n > 1 {
                        chunk = n / 2;
                        continue;
                    }
                    if shared.writes_ok.swap(false, Ordering::Relaxed) {
                        error!(error = %e, store = %s.place, "storage: cannot write; new messages are refused and the written-off batch is retried every second; /readyz is 503 meanwhile");
                    }
                    failing = true;
                    std::thread::sleep(RETRY);
                    chunk = batch.len();
                    // Pruning may be what frees the space.
                    if Instant::now() >= *next_prune {
                        *next_prune = next_prune_after(db, shared);
                    }
                }
            }
        }
    }
}

/// Prunes (for at most [`PRUNE_BUDGET`]) and says when to next.
fn next_prune_after(db: &mut dyn WriteDb, shared: &Shared) -> Instant {
    let more = db.prune(shared, PRUNE_BUDGET);
    next_prune(more, shared)
}
