//! PostgreSQL's writes: a batch is one transaction of a few statements whatever its size (rows go
//! in as arrays, `unnest`ed), so a commit costs a handful of round trips. As in SQLite, search
//! indexing is the writer's second job, between commits: a commit notes new messages in
//! `words_pending`, and [`WriteDb::index_some`] moves a chunk of them into `message_words` (their
//! `tsvector`s, GIN-indexed), which costs four times what storing them does. Cluster nodes index
//! side by side (`SKIP LOCKED`): each takes chunks the others are not taking.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::Transaction;
use tracing::{error, info};

use super::{Conn, reason};
use crate::protocol::Change;
use crate::store::writer::WriteDb;
use crate::store::{
    Message, Op, PRUNE_CHUNK, Pm, Shared, Write, advance_marks, pm_pair, retention_cutoff,
    role_name, rows,
};

/// Messages indexed for search per statement (about 10 ms of PostgreSQL's time).
const INDEX_CHUNK: i64 = 500;
/// Indexing waits for a pause in the writes until this many messages wait for it (or a search
/// does): a burst is stored first (indexing costs PostgreSQL four times what storing does, on
/// cores the chat may share), and indexed as soon as it ends.
const INDEX_BACKLOG: u64 = 10_000;

/// The writer thread's connection, and the ids of the rooms it has written to.
pub(in crate::store) struct Writer {
    conn: Conn,
    rooms: HashMap<String, i64>,
}

impl Writer {
    pub(super) fn new(conn: Conn) -> Writer {
        Writer {
            conn,
            rooms: HashMap::new(),
        }
    }
}

impl WriteDb for Writer {
    fn commit(&mut self, batch: &[Write]) -> Result<u64, String> {
        let db = self.conn.client()?;
        let mut tx = db.transaction().map_err(|e| reason(&e))?;
        let stored = commit(&mut tx, batch, &mut self.rooms).map_err(|e| reason(&e))?;
        tx.commit().map_err(|e| reason(&e))?;
        Ok(stored)
    }

    fn index_some(&mut self) -> Result<u64, String> {
        let db = self.conn.client()?;
        // Changes and deleted messages are taken off the list without being indexed.
        let indexed = db
            .query_one(
                "WITH taken AS (
                 DELETE FROM words_pending WHERE id IN
                     (SELECT id FROM words_pending ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING id),
             indexed AS (
                 INSERT INTO message_words (id, words)
                 SELECT m.id, to_tsvector('simple', m.text)
                 FROM messages m JOIN taken t ON t.id = m.id
                 WHERE m.kind IS NULL AND NOT m.deleted
                 ON CONFLICT DO NOTHING)
             SELECT count(*) FROM taken",
                &[&INDEX_CHUNK],
            )
            .map(|r| r.get::<_, i64>(0) as u64);
        indexed.map_err(|e| {
            self.conn.check();
            reason(&e)
        })
    }

    fn index_backlog(&self) -> u64 {
        INDEX_BACKLOG
    }

    fn forget(&mut self) {
        self.rooms.clear();
        self.conn.check();
    }

    fn mark_clean(&mut self) -> Result<(), String> {
        let db = self.conn.client()?;
        db.execute("DELETE FROM meta WHERE key = 'running'", &[])
            .map(|_| ())
            .map_err(|e| reason(&e))
    }

    fn prune(&mut self, shared: &Shared, budget: Duration) -> bool {
        let budget = Instant::now() + budget;
        let mut deleted = 0;
        let result = match self.conn.client() {
            Ok(db) => prune(db, shared, budget, &mut deleted).map_err(|e| reason(&e)),
            Err(e) => Err(e),
        };
        if deleted > 0 {
            info!(deleted, "storage: pruned old messages");
        }
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "storage: pruning failed");
            self.conn.check();
            false
        })
    }
}

/// Writes `batch` into `tx`: rooms first (made if new), then the messages (noted for indexing)
/// and PMs as arrays, then the rooms' last seqs and the next id. The number of messages stored.
fn commit(
    tx: &mut Transaction<'_>,
    batch: &[Write],
    rooms: &mut HashMap<String, i64>,
) -> Result<u64, postgres::Error> {
    let mut new_rooms: Vec<(String, String)> = Vec::new();
    for write in batch {
        if let Op::Message { msg, epoch } = &write.op
            && !rooms.contains_key(&*msg.room)
            && !new_rooms.iter().any(|(n, _)| **n == *msg.room)
        {
            new_rooms.push((msg.room.to_string(), epoch.to_string()));
        }
    }
    if !new_rooms.is_empty() {
        let (names, epochs): (Vec<String>, Vec<String>) = new_rooms.into_iter().unzip();
        tx.execute(
            "INSERT INTO rooms (name, epoch) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (name) DO NOTHING",
            &[&names, &epochs],
        )?;
        for row in tx.query("SELECT id, name FROM rooms WHERE name = ANY($1)", &[&names])? {
            rooms.insert(row.get(1), row.get(0));
        }
    }
    let mut m = Columns::default();
    let mut c = ChangeColumns::default();
    let mut changed: Vec<&Message> = Vec::new();
    let mut p = Columns::default();
    let mut pm_changes: Vec<&Pm> = Vec::new();
    let mut pairs = Vec::new();
    let mut recipients = Vec::new();
    let mut last_seqs: HashMap<i64, i64> = HashMap::new();
    let mut max_id = 0i64;
    for write in batch {
        match &write.op {
            Op::Message { msg, .. } => {
                let room = rooms[&*msg.room];
                let seq = msg.seq as i64;
                m.push(msg.id, &msg.ts, &msg.from, msg.role, &msg.text, msg.action);
                m.rooms.push(room);
                m.seqs.push(seq);
                let (kind, target, emoji, added) = rows::columns(msg);
                c.reply_tos.push(msg.reply_to.map(|id| id as i64));
                c.kinds.push(kind);
                c.targets.push(target);
                c.emojis.push(emoji);
                c.addeds.push(added);
                if msg.change.is_some() {
                    changed.push(msg);
                }
                let last = last_seqs.entry(room).or_default();
                *last = (*last).max(seq);
                max_id = max_id.max(msg.id as i64);
            }
            Op::Pm(pm) => {
                p.push(pm.id, &pm.ts, &pm.from, pm.role, &pm.text, pm.action);
                pairs.push(pm_pair(&pm.from, &pm.to));
                recipients.push(pm.to.clone());
                max_id = max_id.max(pm.id as i64);
            }
            Op::PmChange(pm) => pm_changes.push(&**pm),
            Op::Flush(_) => {}
        }
    }
    let mut stored = 0;
    if !m.ids.is_empty() {
        let ids: Vec<i64> = tx
            .query(
                "INSERT INTO messages (id, room_id, seq, ts, sender, role, text, action,
                                       reply_to, kind, target, emoji, added)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                                      $5::text[], $6::text[], $7::text[], $8::bool[],
                                      $9::bigint[], $10::text[], $11::bigint[], $12::text[],
                                      $13::bool[])
                 ON CONFLICT DO NOTHING RETURNING id",
                &[
                    &m.ids,
                    &m.rooms,
                    &m.seqs,
                    &m.ts,
                    &m.senders,
                    &m.roles,
                    &m.texts,
                    &m.actions,
                    &c.reply_tos,
                    &c.kinds,
                    &c.targets,
                    &c.emojis,
                    &c.addeds,
                ],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        stored = ids.len() as u64;
        lost(m.ids.len(), stored, "messages");
        tx.execute(
            "INSERT INTO words_pending (id) SELECT unnest($1::bigint[])",
            &[&ids],
        )?;
        for change in changed {
            if ids.contains(&(change.id as i64)) {
                apply_change(tx, change, rooms[&*change.room])?;
            }
        }
        let (ids, seqs): (Vec<i64>, Vec<i64>) = last_seqs.into_iter().unzip();
        tx.execute(
            "UPDATE rooms r SET last_seq = GREATEST(r.last_seq, v.seq)
             FROM unnest($1::bigint[], $2::bigint[]) AS v(id, seq) WHERE r.id = v.id",
            &[&ids, &seqs],
        )?;
    }
    if !p.ids.is_empty() {
        let stored = tx.execute(
            "INSERT INTO pms (id, pair, ts, sender, recipient, role, text, action)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::text[], $8::bool[])
             ON CONFLICT DO NOTHING",
            &[
                &p.ids,
                &pairs,
                &p.ts,
                &p.senders,
                &recipients,
                &p.roles,
                &p.texts,
                &p.actions,
            ],
        )?;
        lost(p.ids.len(), stored, "private messages");
    }
    // After the PMs of the same batch, which they may change.
    for pm in pm_changes {
        tx.execute(
            "UPDATE pms SET text = $2, edited_ts = $3, deleted = $4
             WHERE id = $1 AND lower(sender) = lower($5)",
            &[
                &(pm.id as i64),
                &pm.text,
                &pm.edited_ts,
                &pm.deleted,
                &pm.from,
            ],
        )?;
    }
    if max_id > 0 {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', $1)
             ON CONFLICT (key) DO UPDATE
             SET value = GREATEST(meta.value::bigint, EXCLUDED.value::bigint)::text",
            &[&(max_id + 1).to_string()],
        )?;
    }
    Ok(stored)
}

/// Rows whose id (or room and seq) was already taken are skipped, not allowed to fail the batch:
/// that happens only if two numberings overlapped (a cluster's Redis reseeded below a node's
/// uncommitted messages), and is said loudly.
fn lost(written: usize, stored: u64, what: &str) {
    if (stored as usize) < written {
        error!(
            skipped = written - stored as usize,
            "storage: {what} were not stored because their numbers were already taken (two numberings overlapped)"
        );
    }
}

/// A batch's change columns (see `store::changes`).
#[derive(Default)]
struct ChangeColumns<'a> {
    reply_tos: Vec<Option<i64>>,
    kinds: Vec<Option<&'a str>>,
    targets: Vec<Option<i64>>,
    emojis: Vec<Option<&'a str>>,
    addeds: Vec<Option<bool>>,
}

/// What a change does to the message it changes (as SQLite's writer does): an edit's new text,
/// in the search index too; a delete's tombstone, its words, reactions and edits' texts gone; a
/// reaction added or taken back.
fn apply_change(
    tx: &mut Transaction<'_>,
    change: &Message,
    room_id: i64,
) -> Result<(), postgres::Error> {
    let Some(c) = change.change.as_deref() else {
        return Ok(());
    };
    let target = c.target() as i64;
    let key = crate::protocol::name_key(&change.from);
    match c {
        Change::Edit { .. } => {
            let n = tx.execute(
                "UPDATE messages SET text = $2, edited_ts = $3
                 WHERE id = $1 AND room_id = $4 AND kind IS NULL AND NOT deleted",
                &[&target, &&*change.text, &&*change.ts, &room_id],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE message_words SET words = to_tsvector('simple', $2) WHERE id = $1",
                    &[&target, &&*change.text],
                )?;
            }
        }
        Change::Delete { .. } => {
            let n = tx.execute(
                "UPDATE messages SET text = '', deleted = true
                 WHERE id = $1 AND room_id = $2 AND kind IS NULL",
                &[&target, &room_id],
            )?;
            if n > 0 {
                tx.execute("DELETE FROM message_words WHERE id = $1", &[&target])?;
                tx.execute("DELETE FROM words_pending WHERE id = $1", &[&target])?;
                tx.execute(
                    "UPDATE messages SET text = '' WHERE target = $1 AND kind = 'edit' AND room_id = $2",
                    &[&target, &room_id],
                )?;
                tx.execute("DELETE FROM reactions WHERE msg = $1", &[&target])?;
            }
        }
        Change::React {
            emoji, on: true, ..
        } => {
            tx.execute(
                "INSERT INTO reactions (msg, emoji, account, name, at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[
                    &target,
                    &&**emoji,
                    &key,
                    &&*change.from,
                    &(change.id as i64),
                ],
            )?;
        }
        Change::React {
            emoji, on: false, ..
        } => {
            tx.execute(
                "DELETE FROM reactions WHERE msg = $1 AND emoji = $2 AND account = $3",
                &[&target, &&**emoji, &key],
            )?;
        }
    }
    Ok(())
}

/// A batch's rows, column by column.
#[derive(Default)]
struct Columns {
    ids: Vec<i64>,
    rooms: Vec<i64>,
    seqs: Vec<i64>,
    ts: Vec<String>,
    senders: Vec<String>,
    roles: Vec<&'static str>,
    texts: Vec<String>,
    actions: Vec<bool>,
}

impl Columns {
    fn push(
        &mut self,
        id: u64,
        ts: &str,
        from: &str,
        role: crate::protocol::Role,
        text: &str,
        action: bool,
    ) {
        self.ids.push(id as i64);
        self.ts.push(ts.to_string());
        self.senders.push(from.to_string());
        self.roles.push(role_name(role));
        self.texts.push(text.to_string());
        self.actions.push(action);
    }
}

/// As SQLite's pruner: what retention and the per-room cap no longer keep, oldest first, in
/// chunks, until `budget`; true when more is left. Several nodes may prune at once: deleting
/// twice deletes once.
fn prune(
    db: &mut postgres::Client,
    shared: &Shared,
    budget: Instant,
    deleted: &mut u64,
) -> Result<bool, postgres::Error> {
    let s = &shared.settings;
    let mut cuts: HashMap<i64, (String, u64)> = HashMap::new();
    let cutoff = retention_cutoff(s);
    if let Some(cutoff) = &cutoff {
        for r in db.query(
            "SELECT m.room_id, r.name, MAX(m.seq) FROM messages m JOIN rooms r ON r.id = m.room_id
             WHERE m.ts < $1 GROUP BY m.room_id, r.name",
            &[cutoff],
        )? {
            cuts.insert(r.get(0), (r.get(1), r.get::<_, i64>(2) as u64));
        }
    }
    if s.max_messages_per_room > 0 {
        let keep = s.max_messages_per_room as i64;
        for r in db.query(
            "SELECT id, name, last_seq - $1 FROM rooms WHERE last_seq > $1
             AND EXISTS (SELECT 1 FROM messages WHERE room_id = rooms.id AND seq <= last_seq - $1)",
            &[&keep],
        )? {
            let cut = cuts.entry(r.get(0)).or_insert((r.get(1), 0));
            cut.1 = cut.1.max(r.get::<_, i64>(2) as u64);
        }
    }
    advance_marks(shared, cuts.values());
    for (id, (_, seq)) in &cuts {
        loop {
            let n = db
                .query_one(
                    "WITH gone AS (
                         DELETE FROM messages WHERE id IN
                             (SELECT id FROM messages WHERE room_id = $1 AND seq <= $2
                              ORDER BY seq LIMIT $3)
                         RETURNING id),
                     words AS (DELETE FROM message_words WHERE id IN (SELECT id FROM gone)),
                     pending AS (DELETE FROM words_pending WHERE id IN (SELECT id FROM gone)),
                     reacted AS (DELETE FROM reactions WHERE msg IN (SELECT id FROM gone))
                     SELECT count(*) FROM gone",
                    &[id, &(*seq as i64), &PRUNE_CHUNK],
                )?
                .get::<_, i64>(0) as u64;
            *deleted += n;
            if (n as i64) < PRUNE_CHUNK {
                break;
            }
            if Instant::now() >= budget {
                return Ok(true);
            }
        }
    }
    if let Some(cutoff) = &cutoff {
        loop {
            let n = db.execute(
                "DELETE FROM pms WHERE id IN (SELECT id FROM pms WHERE ts < $1 LIMIT $2)",
                &[cutoff, &PRUNE_CHUNK],
            )?;
            *deleted += n;
            if (n as i64) < PRUNE_CHUNK {
                break;
            }
            if Instant::now() >= budget {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
