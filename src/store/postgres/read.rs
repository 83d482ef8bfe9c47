//! PostgreSQL's answers to reads. Search matches `message_words` (GIN-indexed) against
//! `websearch_to_tsquery` of the words the user typed, joined by spaces: every word must be
//! there, and nothing the user typed is query syntax (the session passes only letters and
//! digits, and that function never fails on its input anyway). A search runs on a connection
//! whose `statement_timeout` is the search budget: past it, "too broad".

use std::time::Duration;

use postgres::error::SqlState;

use super::{COLUMNS, Conn, message_row, reason, with_reactions};
use crate::store::read::{Found, Query, ReadDb, ReadError, bound, trim};
use crate::store::{Mark, Pm, role_of};

/// A reader thread's connection.
pub(in crate::store) struct Reader(pub Conn);

impl ReadDb for Reader {
    fn answer(&mut self, query: &Query, _budget: Option<Duration>) -> Result<Found, ReadError> {
        let result = match self.0.client() {
            Ok(db) => answer(db, query),
            Err(e) => return Err(ReadError::Failed(e)),
        };
        result.map_err(|e| {
            if e.code() == Some(&SqlState::QUERY_CANCELED) && query.is_search() {
                ReadError::TooBroad
            } else {
                self.0.check();
                ReadError::Failed(reason(&e))
            }
        })
    }
}

fn answer(db: &mut postgres::Client, query: &Query) -> Result<Found, postgres::Error> {
    Ok(match query {
        Query::Page {
            room,
            before,
            after,
            limit,
        } => {
            let fetch = *limit as i64 + 1;
            let rows = match after {
                Some(after) => db
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM messages m JOIN rooms r ON r.id = m.room_id
                             WHERE r.name = $1 AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3"
                        ),
                        &[room, &bound(Some(*after)), &fetch],
                    )?
                    .iter()
                    .map(|r| message_row(r, room))
                    .collect(),
                None => {
                    let mut rows: Vec<_> = db
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM messages m JOIN rooms r ON r.id = m.room_id
                                 WHERE r.name = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
                            ),
                            &[room, &bound(*before), &fetch],
                        )?
                        .iter()
                        .map(|r| message_row(r, room))
                        .collect();
                    rows.reverse();
                    rows
                }
            };
            let (mut rows, more) = trim(rows, *limit, after.is_some());
            with_reactions(db, &mut rows)?;
            Found::Page(rows, more)
        }
        Query::Pm { pair, id } => Found::Pm(
            db.query_opt(
                "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
                 WHERE id = $1 AND pair = $2",
                &[&(*id as i64), pair],
            )?
            .map(|r| pm_of(&r)),
        ),
        Query::Message { room, id } => {
            let mut found: Vec<_> = db
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM messages m JOIN rooms r ON r.id = m.room_id
                         WHERE m.id = $1 AND r.name = $2"
                    ),
                    &[&(*id as i64), room],
                )?
                .iter()
                .map(|r| message_row(r, room))
                .collect();
            with_reactions(db, &mut found)?;
            Found::Message(found.pop())
        }
        Query::Pms {
            pair,
            before,
            limit,
        } => {
            let mut rows: Vec<Pm> = db
                .query(
                    "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
                     WHERE pair = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    &[pair, &bound(*before), &(*limit as i64 + 1)],
                )?
                .iter()
                .map(pm_of)
                .collect();
            rows.reverse();
            let (rows, more) = trim(rows, *limit, false);
            Found::Pms(rows, more)
        }
        Query::Search {
            rooms,
            query,
            before,
            limit,
        } => {
            let words = crate::protocol::search_words(query).unwrap_or_default();
            if words.is_empty() || rooms.is_empty() {
                return Ok(Found::Search(Vec::new(), false));
            }
            let rows = db
                .query(
                    &format!(
                        "SELECT {COLUMNS}, r.name FROM message_words w
                         JOIN messages m ON m.id = w.id JOIN rooms r ON r.id = m.room_id
                         WHERE w.words @@ websearch_to_tsquery('simple', $1) AND w.id < $2
                           AND r.name = ANY($3)
                         ORDER BY w.id DESC LIMIT $4"
                    ),
                    &[
                        &words.join(" "),
                        &bound(*before),
                        rooms,
                        &(*limit as i64 + 1),
                    ],
                )?
                .iter()
                .map(|r| message_row(r, r.get::<_, &str>(14)))
                .collect();
            let (rows, more) = trim(rows, *limit, true);
            Found::Search(rows, more)
        }
        Query::Mark { room } => {
            let mark = db
                .query_opt(
                    "SELECT r.epoch, r.last_seq,
                            COALESCE((SELECT MIN(seq) FROM messages WHERE room_id = r.id),
                                     r.last_seq + 1)
                     FROM rooms r WHERE r.name = $1",
                    &[room],
                )?
                .map(|r| Mark {
                    epoch: r.get::<_, String>(0).into(),
                    last_seq: r.get::<_, i64>(1) as u64,
                    first_seq: r.get::<_, i64>(2) as u64,
                });
            let next = db.query_one(super::NEXT_ID, &[])?.get::<_, i64>(0) as u64;
            Found::Mark(mark, next)
        }
    })
}

/// A PM from a row of `id, ts, sender, recipient, role, text, action`.
pub(super) fn pm_of(r: &postgres::Row) -> Pm {
    Pm {
        id: r.get::<_, i64>(0) as u64,
        ts: r.get(1),
        from: r.get(2),
        to: r.get(3),
        role: role_of(r.get(4)),
        text: r.get(5),
        action: r.get(6),
        edited_ts: r.get(7),
        deleted: r.get(8),
    }
}
