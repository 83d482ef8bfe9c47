//! SQLite's writes: a batch in one transaction (rooms' ids cached), the search index filled
//! between commits in chunks (`fts_pending`), and the clean mark a graceful stop leaves.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::protocol::Change;
use crate::store::writer::WriteDb;
use crate::store::{Message, Op, Shared, Write, pm_pair, role_name, rows};

/// Messages indexed for search per transaction: the indexer runs between commits, so this
/// bounds how long a commit can wait for it (about 15 ms).
const INDEX_CHUNK: i64 = 500;

/// The writer thread's connection, and the ids of the rooms it has written to.
pub(in crate::store) struct Writer {
    pub db: Connection,
    rooms: HashMap<String, i64>,
}

impl Writer {
    pub(super) fn new(db: Connection) -> Writer {
        Writer {
            db,
            rooms: HashMap::new(),
        }
    }
}

impl WriteDb for Writer {
    fn commit(&mut self, batch: &[Write]) -> Result<u64, String> {
        commit(&mut self.db, batch, &mut self.rooms)
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }

    fn index_some(&mut self) -> Result<u64, String> {
        let db = &mut self.db;
        let indexed = (|| -> rusqlite::Result<usize> {
            let tx = db.transaction()?;
            // Every pending id has its message (deleting a message deletes its pending row).
            tx.prepare_cached(
                "INSERT INTO messages_fts (rowid, text)
                 SELECT m.id, m.text FROM fts_pending p JOIN messages m ON m.id = p.id
                 WHERE p.id IN (SELECT id FROM fts_pending ORDER BY id LIMIT ?1)
                   AND m.kind IS NULL AND m.deleted = 0",
            )?
            .execute([INDEX_CHUNK])?;
            // Changes and deleted messages are taken off the list without being indexed.
            let n = tx
                .prepare_cached(
                    "DELETE FROM fts_pending WHERE id IN (SELECT id FROM fts_pending ORDER BY id LIMIT ?1)",
                )?
                .execute([INDEX_CHUNK])?;
            tx.commit()?;
            Ok(n)
        })();
        indexed.map(|n| n as u64).map_err(|e| e.to_string())
    }

    fn forget(&mut self) {
        self.rooms.clear();
    }

    fn mark_clean(&mut self) -> Result<(), String> {
        mark_clean(&self.db).map_err(|e| e.to_string())
    }

    fn prune(&mut self, shared: &Shared, budget: Duration) -> bool {
        super::prune::prune(&self.db, shared, budget)
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
            "INSERT OR IGNORE INTO messages (id, room_id, seq, ts, sender, role, text, action,
                                             reply_to, kind, target, emoji, added)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
                    let (kind, target, emoji, added) = rows::columns(msg);
                    let inserted = insert.execute(params![
                        msg.id,
                        room_id,
                        msg.seq,
                        &*msg.ts,
                        &*msg.from,
                        role_name(msg.role),
                        &*msg.text,
                        msg.action,
                        msg.reply_to,
                        kind,
                        target,
                        emoji,
                        added
                    ])?;
                    if inserted > 0 {
                        apply_change(&tx, msg, room_id)?;
                    }
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
                Op::PmChange(pm) => {
                    tx.prepare_cached(
                        "UPDATE pms SET text = ?2, edited_ts = ?3, deleted = ?4
                         WHERE id = ?1 AND lower(sender) = lower(?5)",
                    )?
                    .execute(params![
                        pm.id as i64,
                        &pm.text,
                        &pm.edited_ts,
                        pm.deleted,
                        &pm.from
                    ])?;
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

/// What a change does to the message it changes (in `room_id`): an edit's new text, in the
/// search index too; a delete's tombstone, its text gone from the index, its reactions and the
/// texts of its edits with it; a reaction added or taken back.
fn apply_change(tx: &Connection, change: &Message, room_id: i64) -> rusqlite::Result<()> {
    let Some(c) = change.change.as_deref() else {
        return Ok(());
    };
    let target = c.target() as i64;
    let current: Option<(String, bool)> = tx
        .prepare_cached(
            "SELECT text, EXISTS (SELECT 1 FROM fts_pending WHERE id = ?1) FROM messages
             WHERE id = ?1 AND room_id = ?2 AND kind IS NULL AND deleted = 0",
        )?
        .query_row(params![target, room_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((old, pending)) = current else {
        return Ok(());
    };
    let unindex = |tx: &Connection| -> rusqlite::Result<()> {
        if !pending {
            tx.prepare_cached(
                "INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', ?1, ?2)",
            )?
            .execute(params![target, old])?;
        }
        Ok(())
    };
    match c {
        Change::Edit { .. } => {
            unindex(tx)?;
            tx.prepare_cached("UPDATE messages SET text = ?2, edited_ts = ?3 WHERE id = ?1")?
                .execute(params![target, &*change.text, &*change.ts])?;
            if !pending {
                tx.prepare_cached("INSERT INTO messages_fts (rowid, text) VALUES (?1, ?2)")?
                    .execute(params![target, &*change.text])?;
            }
        }
        Change::Delete { .. } => {
            unindex(tx)?;
            tx.prepare_cached("DELETE FROM fts_pending WHERE id = ?1")?
                .execute([target])?;
            tx.prepare_cached("UPDATE messages SET text = '', deleted = 1 WHERE id = ?1")?
                .execute([target])?;
            tx.prepare_cached(
                "UPDATE messages SET text = '' WHERE target = ?1 AND kind = 'edit' AND room_id = ?2",
            )?
            .execute(params![target, room_id])?;
            tx.prepare_cached("DELETE FROM reactions WHERE msg = ?1")?
                .execute([target])?;
        }
        Change::React {
            emoji, on: true, ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO reactions (msg, emoji, account, name, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                target,
                &**emoji,
                crate::protocol::name_key(&change.from),
                &*change.from,
                change.id as i64
            ])?;
        }
        Change::React {
            emoji, on: false, ..
        } => {
            tx.prepare_cached(
                "DELETE FROM reactions WHERE msg = ?1 AND emoji = ?2 AND account = ?3",
            )?
            .execute(params![
                target,
                &**emoji,
                crate::protocol::name_key(&change.from)
            ])?;
        }
    }
    Ok(())
}
