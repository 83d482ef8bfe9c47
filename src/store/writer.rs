//! The writer thread: gathers queued messages for up to one commit interval, commits them in one
//! transaction, indexes for search between commits, prunes when due.
//!
//! What it tells the rest of the store, under the queue's lock: since when it holds a batch
//! (`in_flight_since`: the store's lag), since when it is inside a commit (`busy_since`: a frozen
//! disk), and, after each commit, how far writes are durable (`Progress::committed`, which reads
//! wait for). A commit that fails keeps its batch and tries again every second, trying smaller
//! pieces first (what fits in a nearly full database goes in); meanwhile new messages are refused.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use rusqlite::{Connection, params};
use tracing::{error, info, warn};

use super::{BATCH, Op, QueueState, RETRY, Shared, Write, lock, pm_pair, prune, role_name};

/// Messages indexed for search per transaction: the indexer runs between commits, so this
/// bounds how long a commit can wait for it (about 15 ms).
const INDEX_CHUNK: i64 = 500;

pub(super) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>) -> Writer {
        Writer { shared }
    }

    /// Indexes up to [`INDEX_CHUNK`] stored messages for search; false when none was waiting
    /// (or indexing failed: it is tried again after the next commit).
    fn index_some(&self, db: &mut Connection) -> bool {
        let shared = &self.shared;
        if shared.unindexed.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let indexed = (|| -> rusqlite::Result<usize> {
            let tx = db.transaction()?;
            // Every pending id has its message (deleting a message deletes its pending row).
            let n = tx
                .prepare_cached(
                    "INSERT INTO messages_fts (rowid, text)
                 SELECT m.id, m.text FROM fts_pending p JOIN messages m ON m.id = p.id
                 ORDER BY p.id LIMIT ?1",
                )?
                .execute([INDEX_CHUNK])?;
            tx.prepare_cached(
                "DELETE FROM fts_pending WHERE id IN (SELECT id FROM fts_pending ORDER BY id LIMIT ?1)",
            )?
            .execute([INDEX_CHUNK])?;
            tx.commit()?;
            Ok(n)
        })();
        match indexed {
            Ok(0) => {
                shared.set_unindexed(0);
                false
            }
            Ok(n) => {
                let left = shared
                    .unindexed
                    .load(Ordering::Relaxed)
                    .saturating_sub(n as u64);
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
        db: &mut Connection,
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
    pub(super) fn run(self, mut db: Connection) {
        let shared = self.shared.clone();
        let s = &shared.settings;
        let mut rooms: HashMap<String, i64> = HashMap::new();
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
                (state, indexed) = self.index_unlocked(&shared, &mut db, state);
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
                    let indexed;
                    (state, indexed) = self.index_unlocked(&shared, &mut db, state);
                    if indexed {
                        continue;
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
            self.commit_batch(&mut db, batch, generation, &mut rooms, &mut next_prune);
            if Instant::now() >= next_prune {
                next_prune = prune::next_after(prune::prune(&db, &shared), s);
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
        db: &mut Connection,
        mut batch: Vec<Write>,
        generation: u64,
        rooms: &mut HashMap<String, i64>,
        next_prune: &mut Instant,
    ) {
        let shared = &self.shared;
        let s = &shared.settings;
        let mut chunk = batch.len();
        let mut failing = false;
        while !batch.is_empty() {
            let n = chunk.min(batch.len());
            shared.queue().busy_since = Some(Instant::now());
            let result = commit(db, &batch[..n], rooms);
            shared.queue().busy_since = None;
            match result {
                Ok(stored) => {
                    if failing || !shared.writes_ok.load(Ordering::Relaxed) {
                        info!("storage: writes succeed again; messages are accepted again");
                    }
                    failing = false;
                    shared.writes_ok.store(true, Ordering::Relaxed);
                    let unindexed = shared.unindexed.load(Ordering::Relaxed) + stored as u64;
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
                            if let Err(e) = mark_clean(db) {
                                warn!(error = %e, "storage: could not mark the database as cleanly stopped");
                            }
                            let _ = answer.send(());
                        }
                    }
                }
                Err(e) => {
                    shared.metrics.errors.inc();
                    rooms.clear();
                    if n > 1 {
                        chunk = n / 2;
                        continue;
                    }
                    if shared.writes_ok.swap(false, Ordering::Relaxed) {
                        error!(error = %e, path = %s.path.display(), "storage: cannot write; new messages are refused and the written-off batch is retried every second; /readyz is 503 meanwhile");
                    }
                    failing = true;
                    std::thread::sleep(RETRY);
                    chunk = batch.len();
                    // Pruning may be what frees the space.
                    if Instant::now() >= *next_prune {
                        *next_prune = prune::next_after(prune::prune(db, shared), s);
                    }
                }
            }
        }
    }
}

/// The last run stopped cleanly: nothing acknowledged is missing, so the next start keeps every
/// room's numbering.
/// The WAL is folded into the file too, so the database rests in one file.
fn mark_clean(db: &Connection) -> rusqlite::Result<()> {
    db.execute("DELETE FROM meta WHERE key = 'running'", [])?;
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
}

/// Writes `batch` in one transaction; the number of room messages written.
fn commit(
    db: &mut Connection,
    batch: &[Write],
    rooms: &mut HashMap<String, i64>,
) -> rusqlite::Result<usize> {
    let tx = db.transaction()?;
    let mut max_id = 0u64;
    let mut stored = 0;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (id, room_id, seq, ts, sender, role, text, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut insert_pm = tx.prepare_cached(
            "INSERT OR IGNORE INTO pms (id, pair, ts, sender, recipient, role, text, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut last_seqs: HashMap<i64, u64> = HashMap::new();
        for write in batch {
            match &write.op {
                Op::Message { msg, epoch } => {
                    let room_id = match rooms.get(&*msg.room) {
                        Some(id) => *id,
                        None => {
                            tx.execute(
                                "INSERT OR IGNORE INTO rooms (name, epoch) VALUES (?1, ?2)",
                                params![&*msg.room, &**epoch],
                            )?;
                            let id: i64 = tx.query_row(
                                "SELECT id FROM rooms WHERE name = ?1",
                                [&*msg.room],
                                |r| r.get(0),
                            )?;
                            rooms.insert(msg.room.to_string(), id);
                            id
                        }
                    };
                    insert.execute(params![
                        msg.id,
                        room_id,
                        msg.seq,
                        &*msg.ts,
                        &*msg.from,
                        role_name(msg.role),
                        &*msg.text,
                        msg.action
                    ])?;
                    stored += 1;
                    let last = last_seqs.entry(room_id).or_default();
                    *last = (*last).max(msg.seq);
                    max_id = max_id.max(msg.id);
                }
                Op::Pm(pm) => {
                    insert_pm.execute(params![
                        pm.id,
                        pm_pair(&pm.from, &pm.to),
                        &pm.ts,
                        &pm.from,
                        &pm.to,
                        role_name(pm.role),
                        &pm.text,
                        pm.action
                    ])?;
                    max_id = max_id.max(pm.id);
                }
                Op::Flush(_) => {}
            }
        }
        let mut bump =
            tx.prepare_cached("UPDATE rooms SET last_seq = MAX(last_seq, ?2) WHERE id = ?1")?;
        for (room, seq) in last_seqs {
            bump.execute(params![room, seq])?;
        }
    }
    if max_id > 0 {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(?1 AS INTEGER))",
            [(max_id + 1).to_string()],
        )?;
    }
    tx.commit()?;
    Ok(stored)
}
