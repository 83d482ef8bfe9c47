//! The pruner: deletes what `storage.retention_days` and `storage.max_messages_per_room` no
//! longer keep, oldest first, in small chunks and a bounded time per run, so writes go on
//! between its chunks; then gives the space back, so pruning does not grow the files it is
//! meant to keep small (the deletes pass through the WAL, which stays as large as its largest
//! burst unless truncated; and freed pages are returned to the file system where the database
//! was made with incremental auto-vacuum, as chatd makes new ones).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tracing::{info, warn};

use crate::store::{Shared, advance_marks, retention_cutoff};

/// After a prune that deleted something: the WAL is truncated (it grew by every deleted page),
/// and free pages go back to the file system (a database made with `auto_vacuum = INCREMENTAL`;
/// elsewhere they are reused by later writes, which `storage.max_db_bytes` counts as used).
/// Vacuuming moves pages, and every moved page passes through the WAL: it goes in steps of
/// [`VACUUM_STEP`] pages with the WAL emptied between, so the files never grow by more than a
/// step while they shrink (in one go, 30,000 pruned messages grew the WAL by 6.8 MB first).
fn give_back(db: &Connection) {
    let step = || -> rusqlite::Result<u64> {
        let mut stmt = db.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        db.query_row("PRAGMA freelist_count", [], |r| r.get(0))
    };
    loop {
        let left = step();
        truncate_wal(db);
        match left {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "storage: could not give freed pages back after pruning");
                return;
            }
        }
    }
}

/// Pages moved per vacuum step (1 MiB at 4 KiB pages).
const VACUUM_STEP: u32 = 256;

/// Runs `chunk` (one delete of at most [`PRUNE_CHUNK`] rows) until it deletes fewer, emptying the
/// WAL after each and adding to `deleted`: true when done, false when `budget` ran out first.
fn in_chunks(
    db: &Connection,
    budget: Instant,
    deleted: &mut usize,
    mut chunk: impl FnMut() -> rusqlite::Result<usize>,
) -> rusqlite::Result<bool> {
    loop {
        let n = chunk()?;
        *deleted += n;
        truncate_wal(db);
        if (n as i64) < PRUNE_CHUNK {
            return Ok(true);
        }
        if Instant::now() >= budget {
            return Ok(false);
        }
    }
}

/// Folds the WAL into the database and empties it: each chunk of deletes passes through it, and
/// without this it keeps the size of the largest burst.
fn truncate_wal(db: &Connection) {
    if let Err(e) = db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        warn!(error = %e, "storage: could not truncate the WAL after pruning");
    }
}

use crate::store::PRUNE_CHUNK;

/// Deletes what retention and the per-room cap no longer keep, oldest first, in small chunks and
/// for at most `budget`; true when more is left (the writer calls again soon). A room's
/// mark moves past what is about to go *before* it goes, so no resume is promised a message
/// that is being deleted.
pub(super) fn prune(db: &Connection, shared: &Shared, budget: Duration) -> bool {
    let s = &shared.settings;
    let unindexed = &shared.unindexed;
    let budget = Instant::now() + budget;
    let mut deleted = 0;
    let result = (|| -> rusqlite::Result<bool> {
        // Per room, the last seq to delete.
        let mut cuts: HashMap<i64, (String, u64)> = HashMap::new();
        let cutoff = retention_cutoff(s);
        if let Some(cutoff) = &cutoff {
            let mut stmt = db.prepare_cached(
                "SELECT m.room_id, r.name, MAX(m.seq) FROM messages m JOIN rooms r ON r.id = m.room_id
                 WHERE m.ts < ?1 GROUP BY m.room_id",
            )?;
            for row in stmt.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                let (id, name, seq): (i64, String, u64) = row?;
                cuts.insert(id, (name, seq));
            }
        }
        if s.max_messages_per_room > 0 {
            let keep = s.max_messages_per_room;
            let mut stmt = db.prepare_cached(
                "SELECT id, name, last_seq - ?1 FROM rooms WHERE last_seq > ?1
                 AND EXISTS (SELECT 1 FROM messages WHERE room_id = rooms.id AND seq <= last_seq - ?1)",
            )?;
            for row in stmt.query_map([keep as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                let (id, name, seq): (i64, String, u64) = row?;
                let cut = cuts.entry(id).or_insert((name, 0));
                cut.1 = cut.1.max(seq);
            }
        }
        advance_marks(shared, cuts.values());
        let mut delete = db.prepare_cached(
            "DELETE FROM messages WHERE room_id = ?1 AND seq IN
             (SELECT seq FROM messages WHERE room_id = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3)",
        )?;
        for (id, (_, seq)) in &cuts {
            let chunk = || delete.execute(params![id, seq, PRUNE_CHUNK]);
            if !in_chunks(db, budget, &mut deleted, chunk)? {
                return Ok(true);
            }
        }
        if let Some(cutoff) = &cutoff {
            let mut delete = db.prepare_cached(
                "DELETE FROM pms WHERE id IN (SELECT id FROM pms WHERE ts < ?1 LIMIT ?2)",
            )?;
            let chunk = || delete.execute(params![cutoff, PRUNE_CHUNK]);
            if !in_chunks(db, budget, &mut deleted, chunk)? {
                return Ok(true);
            }
        }
        Ok(false)
    })();
    if deleted > 0 {
        info!(deleted, "storage: pruned old messages");
        // Deleting a message deletes its pending index entry too.
        if let Ok(n) = db.query_row("SELECT count(*) FROM fts_pending", [], |r| {
            r.get::<_, u64>(0)
        }) {
            unindexed.store(n, Ordering::Relaxed);
        }
        give_back(db);
    }
    result.unwrap_or_else(|e| {
        warn!(error = %e, "storage: pruning failed");
        false
    })
}
