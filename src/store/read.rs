//! Reads: typed requests ([`Query`]) answered on a reader thread, each with its own connection.
//! History and conversations go to one thread, searches to another, so a costly search never
//! delays someone's history; a search also runs under a time budget (SQLite's progress handler
//! stops it) and is answered [`ReadError::TooBroad`] past it.
//!
//! Every read first waits for the writes queued before it to be committed (so it sees every
//! acknowledged message), at most until its deadline: with a failing or frozen writer it then
//! answers from what is committed rather than not at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{Message, Pm, Shared, message_row, role_of};

/// What a reader is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Up to `limit` messages of `room`, oldest first: those with `seq < before` (the newest of
    /// them), or with `seq > after` (the oldest of them).
    Page {
        /// Normalised room name.
        room: String,
        /// Messages below this seq.
        before: Option<u64>,
        /// Messages above this seq (wins over `before`).
        after: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// A conversation between two users (`pm_pair`), oldest first, ids below `before`.
    Pms {
        /// The conversation's key.
        pair: String,
        /// Messages below this id.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// Messages in `rooms` holding every word of `query`, newest first, ids below `before`.
    Search {
        /// Normalised room names.
        rooms: Vec<String>,
        /// Words as the user typed them; never passed to the index as syntax.
        query: String,
        /// Messages below this id.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
}

impl Query {
    pub(super) fn is_search(&self) -> bool {
        matches!(self, Query::Search { .. })
    }
}

/// What a reader found; each flag says more exist in the direction paged.
#[derive(Debug)]
pub enum Found {
    /// A page of a room.
    Page(Vec<Message>, bool),
    /// A page of a conversation.
    Pms(Vec<Pm>, bool),
    /// Search results, newest first.
    Search(Vec<Message>, bool),
}

/// Why a read found nothing to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A search that would take longer than its budget (`storage.search_budget_ms`).
    #[error("the search matches too much to finish in time")]
    TooBroad,
    /// The database refused (logged; the client sees `unavailable`).
    #[error("{0}")]
    Failed(String),
}

/// A read waiting for its thread.
pub(super) struct Job {
    pub query: Query,
    /// The writes it must see: those queued before it.
    pub generation: u64,
    /// When it stops waiting for them.
    pub deadline: Instant,
    pub reply: Box<dyn FnOnce(Result<Found, ReadError>) + Send>,
}

/// One reader thread's world.
pub(super) struct Reader {
    shared: Arc<Shared>,
    db: Connection,
    /// For searches: how long one may run.
    budget: Option<Duration>,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, db: Connection, budget: Option<Duration>) -> Reader {
        Reader { shared, db, budget }
    }

    /// Answers jobs until the store is dropped.
    pub(super) fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        for job in jobs {
            self.shared
                .wait_for(job.generation, job.query.is_search(), job.deadline);
            let result = self.answer(&job.query);
            if let Err(ReadError::Failed(e)) = &result {
                tracing::warn!(error = %e, "storage: a read failed");
            }
            (job.reply)(result);
        }
    }

    fn answer(&self, query: &Query) -> Result<Found, ReadError> {
        let failed = |e: rusqlite::Error| ReadError::Failed(e.to_string());
        match query {
            Query::Page {
                room,
                before,
                after,
                limit,
            } => page(&self.db, room, *before, *after, *limit)
                .map(|(m, more)| Found::Page(m, more))
                .map_err(failed),
            Query::Pms {
                pair,
                before,
                limit,
            } => pms(&self.db, pair, *before, *limit)
                .map(|(m, more)| Found::Pms(m, more))
                .map_err(failed),
            Query::Search {
                rooms,
                query,
                before,
                limit,
            } => {
                if let Some(budget) = self.budget {
                    let started = Instant::now();
                    // A connection this thread owns: it cannot fail.
                    let _ = self
                        .db
                        .progress_handler(1_000, Some(move || started.elapsed() > budget));
                }
                let result = search(&self.db, rooms, query, *before, *limit);
                let _ = self.db.progress_handler(0, None::<fn() -> bool>);
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

/// A seq or id bound as SQLite takes it (the protocol keeps them below 2^63).
fn bound(v: Option<u64>) -> i64 {
    v.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX))
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
    let mut rows: Vec<Message> = match after {
        Some(after) => db
            .prepare_cached(
                "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action
                 FROM messages m JOIN rooms r ON r.id = m.room_id
                 WHERE r.name = ?1 AND m.seq > ?2 ORDER BY m.seq ASC LIMIT ?3",
            )?
            .query_map(params![room, bound(Some(after)), fetch], |r| {
                message_row(r, room)
            })?
            .collect::<Result<_, _>>()?,
        None => {
            let mut rows: Vec<Message> = db
                .prepare_cached(
                    "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action
                     FROM messages m JOIN rooms r ON r.id = m.room_id
                     WHERE r.name = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3",
                )?
                .query_map(params![room, bound(before), fetch], |r| {
                    message_row(r, room)
                })?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            rows
        }
    };
    let more = rows.len() > limit;
    if more {
        if after.is_some() {
            rows.truncate(limit);
        } else {
            rows.remove(0);
        }
    }
    Ok((rows, more))
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
        "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action, r.name
         FROM messages_fts f JOIN messages m ON m.id = f.rowid JOIN rooms r ON r.id = m.room_id
         WHERE messages_fts MATCH ? AND m.id < ? AND r.name IN ({placeholders})
         ORDER BY m.id DESC LIMIT ?"
    );
    let mut args: Vec<rusqlite::types::Value> = vec![terms.join(" ").into(), bound(before).into()];
    args.extend(rooms.iter().map(|r| r.clone().into()));
    args.push((limit as i64 + 1).into());
    let mut stmt = db.prepare(&sql)?;
    let mut rows: Vec<Message> = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let room: String = r.get(7)?;
            message_row(r, &room)
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
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
            "SELECT id, ts, sender, recipient, role, text, action FROM pms
             WHERE pair = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?
        .query_map(params![pair, bound(before), limit as i64 + 1], |r| {
            Ok(Pm {
                id: r.get(0)?,
                ts: r.get(1)?,
                from: r.get(2)?,
                to: r.get(3)?,
                role: role_of(&r.get::<_, String>(4)?),
                text: r.get(5)?,
                action: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    rows.reverse();
    Ok((rows, more))
}
