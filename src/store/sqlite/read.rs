//! SQLite's answers to reads: pages of a room (by seq), of a conversation (by id), full-text
//! search through FTS5 (stopped by the progress handler past its budget), and a room's mark.

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::{COLUMNS, message_row, role_of, with_reactions};
use crate::store::read::{Found, Query, ReadDb, ReadError, bound, trim};
use crate::store::{Mark, Message, Pm};

/// A reader thread's connection (read-only).
pub(in crate::store) struct Reader(pub Connection);

impl ReadDb for Reader {
    fn answer(&mut self, query: &Query, budget: Option<Duration>) -> Result<Found, ReadError> {
        let db = &self.0;
        let failed = |e: rusqlite::Error| ReadError::Failed(e.to_string());
        match query {
            Query::Page {
                room,
                before,
                after,
                limit,
            } => page(db, room, *before, *after, *limit)
                .map(|(m, more)| Found::Page(m, more))
                .map_err(failed),
            Query::Pms {
                pair,
                before,
                limit,
            } => pms(db, pair, *before, *limit)
                .map(|(m, more)| Found::Pms(m, more))
                .map_err(failed),
            Query::Message { room, id } => {
                message(db, room, *id).map(Found::Message).map_err(failed)
            }
            Query::Pm { pair, id } => one_pm(db, pair, *id).map(Found::Pm).map_err(failed),
            Query::Mark { room } => mark(db, room)
                .map(|(m, next)| Found::Mark(m, next))
                .map_err(failed),
            Query::Search {
                rooms,
                query,
                before,
                limit,
            } => {
                if let Some(budget) = budget {
                    let started = Instant::now();
                    // A connection this thread owns: it cannot fail.
                    let _ = db.progress_handler(1_000, Some(move || started.elapsed() > budget));
                }
                let result = search(db, rooms, query, *before, *limit);
                let _ = db.progress_handler(0, None::<fn() -> bool>);
                match result {
                    Ok((m, more)) => Ok(Found::Search(m, more)),
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::OperationInterrupted =>
                    {
                        Err(ReadError::TooBroad)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        }
    }
}

/// Up to `limit` messages of `room`, oldest first: those with `seq < before` (the newest of
/// them), or with `seq > after` (the oldest of them). The flag says more exist that way.
fn page(
    db: &Connection,
    room: &str,
    before: Option<u64>,
    after: Option<u64>,
    limit: usize,
) -> rusqlite::Result<(Vec<Message>, bool)> {
    let fetch = limit as i64 + 1;
    let rows: Vec<Message> = match after {
        Some(after) => db
            .prepare_cached(&format!(
                "SELECT {COLUMNS}
                 FROM messages m JOIN rooms r ON r.id = m.room_id
                 WHERE r.name = ?1 AND m.seq > ?2 ORDER BY m.seq ASC LIMIT ?3"
            ))?
            .query_map(params![room, bound(Some(after)), fetch], |r| {
                message_row(r, room)
            })?
            .collect::<Result<_, _>>()?,
        None => {
            let mut rows: Vec<Message> = db
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}
                     FROM messages m JOIN rooms r ON r.id = m.room_id
                     WHERE r.name = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3"
                ))?
                .query_map(params![room, bound(before), fetch], |r| {
                    message_row(r, room)
                })?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            rows
        }
    };
    let (mut rows, more) = trim(rows, limit, after.is_some());
    with_reactions(db, &mut rows)?;
    Ok((rows, more))
}

/// Message `id` of `room` as it is now.
fn message(db: &Connection, room: &str, id: u64) -> rusqlite::Result<Option<Message>> {
    let mut found: Vec<Message> = db
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages m JOIN rooms r ON r.id = m.room_id
             WHERE m.id = ?1 AND r.name = ?2"
        ))?
        .query_map(params![id as i64, room], |r| message_row(r, room))?
        .collect::<Result<_, _>>()?;
    with_reactions(db, &mut found)?;
    Ok(found.pop())
}

/// Full-text search in `rooms`, newest first, ids below `before`. The query's words are
/// matched as words (all of them), never as FTS syntax.
fn search(
    db: &Connection,
    rooms: &[String],
    query: &str,
    before: Option<u64>,
    limit: usize,
) -> rusqlite::Result<(Vec<Message>, bool)> {
    // Each word is quoted, so nothing in a query is FTS syntax, and none is a phrase (the index
    // keeps no positions). The session refused queries with too many words.
    let terms: Vec<String> = crate::protocol::search_words(query)
        .unwrap_or_default()
        .into_iter()
        .map(|w| format!("\"{w}\""))
        .collect();
    if terms.is_empty() || rooms.is_empty() {
        return Ok((Vec::new(), false));
    }
    let placeholders = vec!["?"; rooms.len()].join(", ");
    let sql = format!(
        "SELECT {COLUMNS}, r.name
         FROM messages_fts f JOIN messages m ON m.id = f.rowid JOIN rooms r ON r.id = m.room_id
         WHERE messages_fts MATCH ? AND m.id < ? AND r.name IN ({placeholders})
         ORDER BY m.id DESC LIMIT ?"
    );
    let mut args: Vec<rusqlite::types::Value> = vec![terms.join(" ").into(), bound(before).into()];
    args.extend(rooms.iter().map(|r| r.clone().into()));
    args.push((limit as i64 + 1).into());
    let mut stmt = db.prepare(&sql)?;
    let rows: Vec<Message> = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let room: String = r.get(14)?;
            message_row(r, &room)
        })?
        .collect::<Result<_, _>>()?;
    Ok(trim(rows, limit, true))
}

/// The conversation between two users, oldest first, ids below `before`.
fn pms(
    db: &Connection,
    pair: &str,
    before: Option<u64>,
    limit: usize,
) -> rusqlite::Result<(Vec<Pm>, bool)> {
    let mut rows: Vec<Pm> = db
        .prepare_cached(
            "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
             WHERE pair = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(params![pair, bound(before), limit as i64 + 1], pm_of)?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(trim(rows, limit, false))
}

/// `room`'s mark, if it has a record, and the next message id.
fn mark(db: &Connection, room: &str) -> rusqlite::Result<(Option<Mark>, u64)> {
    let mark = db
        .prepare_cached(
            "SELECT r.epoch, r.last_seq,
                    COALESCE((SELECT MIN(seq) FROM messages WHERE room_id = r.id), r.last_seq + 1)
             FROM rooms r WHERE r.name = ?1",
        )?
        .query_row([room], |r| {
            Ok(Mark {
                epoch: r.get::<_, String>(0)?.into(),
                last_seq: r.get(1)?,
                first_seq: r.get(2)?,
            })
        })
        .optional()?;
    let next: u64 = db.query_row(
        "SELECT max(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_id'), 1),
                    COALESCE((SELECT max(id) FROM messages), 0) + 1,
                    COALESCE((SELECT max(id) FROM pms), 0) + 1)",
        [],
        |r| r.get(0),
    )?;
    Ok((mark, next))
}

/// A PM from a row of `id, ts, sender, recipient, role, text, action`.
pub(super) fn pm_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pm> {
    Ok(Pm {
        id: r.get(0)?,
        ts: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        role: role_of(&r.get::<_, String>(4)?),
        text: r.get(5)?,
        action: r.get(6)?,
        edited_ts: r.get(7)?,
        deleted: r.get(8)?,
    })
}

/// PM `id` of the conversation `pair`, as it is now.
fn one_pm(db: &Connection, pair: &str, id: u64) -> rusqlite::Result<Option<Pm>> {
    db.prepare_cached(
        "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
         WHERE id = ?1 AND pair = ?2",
    )?
    .query_row(params![id as i64, pair], pm_of)
    .optional()
}
