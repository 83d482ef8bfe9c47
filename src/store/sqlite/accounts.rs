//! Accounts in the SQLite file: a connection of their own (WAL lets it write beside the store's
//! writer; `chatd user` uses one while chatd runs).

use rusqlite::{Connection, OptionalExtension, params};

use crate::protocol::Role;

use super::super::accounts::{
    Account, AccountsDb, Change, Conversation, Created, DbError, Noted, UNREAD_CAP, Unread,
    mention_pattern, other_of, role_text,
};
use super::super::{Pm, pm_pair, role_of};

/// The accounts of one SQLite file.
pub(in crate::store) struct Accounts(pub(super) Connection);

fn text(e: rusqlite::Error) -> DbError {
    super::sqlite_reason(&e)
}

impl AccountsDb for Accounts {
    fn find(&mut self, key: &str) -> Result<Option<Account>, DbError> {
        self.0
            .query_row(
                "SELECT name, hash, role, disabled FROM accounts WHERE key = ?1",
                [key],
                |r| {
                    Ok(Account {
                        name: r.get(0)?,
                        hash: r.get(1)?,
                        role: role_of(&r.get::<_, String>(2)?),
                        disabled: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(text)
    }

    fn create(
        &mut self,
        key: &str,
        account: &Account,
        invite: Option<&str>,
        now_ms: i64,
    ) -> Result<Created, DbError> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(text)?;
        let taken = tx
            .query_row("SELECT 1 FROM accounts WHERE key = ?1", [key], |_| Ok(()))
            .optional()
            .map_err(text)?
            .is_some();
        if taken {
            return Ok(Created::Taken);
        }
        if let Some(hash) = invite {
            let spent = tx
                .execute(
                    "UPDATE invites SET uses_left = uses_left - 1
                     WHERE hash = ?1 AND uses_left > 0 AND expires_ms > ?2",
                    params![hash, now_ms],
                )
                .map_err(text)?;
            if spent == 0 {
                return Ok(Created::BadInvite);
            }
            tx.execute(
                "DELETE FROM invites WHERE uses_left <= 0 OR expires_ms <= ?1",
                [now_ms],
            )
            .map_err(text)?;
        }
        tx.execute(
            "INSERT INTO accounts (key, name, hash, role, disabled, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                key,
                account.name,
                account.hash,
                role_text(account.role),
                account.disabled,
                crate::protocol::timestamp()
            ],
        )
        .map_err(text)?;
        tx.commit().map_err(text)?;
        Ok(Created::Created)
    }

    fn update(&mut self, key: &str, change: &Change) -> Result<bool, DbError> {
        let changed = match change {
            Change::Password(hash) => self.0.execute(
                "UPDATE accounts SET hash = ?2 WHERE key = ?1",
                params![key, hash],
            ),
            Change::Role(role) => self.0.execute(
                "UPDATE accounts SET role = ?2 WHERE key = ?1",
                params![key, role_text(*role)],
            ),
            Change::Disabled(disabled) => self.0.execute(
                "UPDATE accounts SET disabled = ?2 WHERE key = ?1",
                params![key, disabled],
            ),
        }
        .map_err(text)?;
        Ok(changed == 1)
    }

    fn add_invite(&mut self, hash: &str, uses: u32, expires_ms: i64) -> Result<(), DbError> {
        self.0
            .execute(
                "INSERT INTO invites (hash, uses_left, expires_ms) VALUES (?1, ?2, ?3)",
                params![hash, uses, expires_ms],
            )
            .map_err(text)?;
        Ok(())
    }

    fn count(&mut self) -> Result<u64, DbError> {
        self.0
            .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))
            .map_err(text)
    }

    fn rooms(&mut self, key: &str, limit: usize) -> Result<Vec<(String, u64)>, DbError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT room, read_seq FROM memberships WHERE account = ?1
                 ORDER BY joined, room LIMIT ?2",
            )
            .map_err(text)?;
        let rows = statement
            .query_map(params![key, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(text)?;
        rows.collect::<Result<_, _>>().map_err(text)
    }

    fn memberships(&mut self, changes: &[Noted]) -> Result<(), DbError> {
        let tx = self.0.transaction().map_err(text)?;
        let now = crate::protocol::timestamp();
        for n in changes {
            match n.joined {
                Some(Some(start)) => tx.execute(
                    "INSERT OR IGNORE INTO memberships (account, room, joined, read_seq)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![n.account, n.room, now, start as i64],
                ),
                Some(None) => tx.execute(
                    "DELETE FROM memberships WHERE account = ?1 AND room = ?2",
                    params![n.account, n.room],
                ),
                None => Ok(0),
            }
            .map_err(text)?;
            if let Some(read) = n.read {
                tx.execute(
                    "UPDATE memberships SET read_seq = max(read_seq, ?3)
                     WHERE account = ?1 AND room = ?2",
                    params![n.account, n.room, read as i64],
                )
                .map_err(text)?;
            }
        }
        tx.commit().map_err(text)
    }

    fn unread(&mut self, key: &str, name: &str, room: &str, read: u64) -> Result<Unread, DbError> {
        let db = &self.0;
        let Some((room_id, epoch)): Option<(i64, String)> = db
            .query_row("SELECT id, epoch FROM rooms WHERE name = ?1", [room], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(text)?
        else {
            return Ok(Unread::default());
        };
        let head: i64 = db
            .query_row(
                "SELECT COALESCE(max(seq), 0) FROM messages WHERE room_id = ?1",
                [room_id],
                |r| r.get(0),
            )
            .map_err(text)?;
        let read = read.min(i64::MAX as u64) as i64;
        let count: i64 = db
            .query_row(
                "SELECT count(*) FROM (SELECT 1 FROM messages
                 WHERE room_id = ?1 AND seq > ?2 AND lower(sender) <> ?3 LIMIT ?4)",
                params![room_id, read, key, UNREAD_CAP as i64],
                |r| r.get(0),
            )
            .map_err(text)?;
        let mut statement = db
            .prepare_cached(
                "SELECT text FROM messages WHERE room_id = ?1 AND seq > ?2
                 AND lower(sender) <> ?3 AND text LIKE ?4 ESCAPE '\\' LIMIT ?5",
            )
            .map_err(text)?;
        let mentioning = statement
            .query_map(
                params![room_id, read, key, mention_pattern(name), UNREAD_CAP as i64],
                |r| r.get(0),
            )
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)?;
        Ok(Unread {
            epoch,
            head: head as u64,
            count: count as u64,
            mentioning,
        })
    }

    fn remember(&mut self, key: &str, name: &str, role: Role) -> Result<(), DbError> {
        self.0
            .execute(
                "INSERT INTO accounts (key, name, hash, role, disabled, created)
                 VALUES (?1, ?2, '', ?3, 0, ?4) ON CONFLICT (key) DO NOTHING",
                params![key, name, role_text(role), crate::protocol::timestamp()],
            )
            .map_err(text)?;
        Ok(())
    }

    fn conversations(&mut self, key: &str, limit: usize) -> Result<Vec<Conversation>, DbError> {
        let recent: Vec<(String, i64)> = self
            .0
            .prepare_cached(
                "SELECT pair, max(id) AS last FROM pms
                 WHERE lower(sender) = ?1 OR lower(recipient) = ?1
                 GROUP BY pair ORDER BY last DESC LIMIT ?2",
            )
            .map_err(text)?
            .query_map(params![key, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)?;
        recent
            .iter()
            .map(|(pair, last)| conversation(&self.0, key, pair, *last).map_err(text))
            .collect()
    }

    fn conversation(&mut self, key: &str, with: &str) -> Result<Option<Conversation>, DbError> {
        let pair = pm_pair(key, with);
        let last: Option<i64> = self
            .0
            .query_row("SELECT max(id) FROM pms WHERE pair = ?1", [&pair], |r| {
                r.get(0)
            })
            .map_err(text)?;
        last.map(|last| conversation(&self.0, key, &pair, last))
            .transpose()
            .map_err(text)
    }

    fn read_pm(&mut self, key: &str, with: &str, id: u64) -> Result<(), DbError> {
        self.0
            .execute(
                "INSERT INTO pm_reads (account, other, read_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account, other) DO UPDATE SET read_id = max(read_id, excluded.read_id)",
                params![key, with, id.min(i64::MAX as u64) as i64],
            )
            .map_err(text)?;
        Ok(())
    }

    fn unread_pms(
        &mut self,
        key: &str,
        with: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Pm>, DbError> {
        let mut rows: Vec<Pm> = self
            .0
            .prepare_cached(
                "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
                 WHERE pair = ?1 AND id > ?2 AND lower(sender) <> ?3 ORDER BY id DESC LIMIT ?4",
            )
            .map_err(text)?
            .query_map(
                params![
                    pm_pair(key, with),
                    after.min(i64::MAX as u64) as i64,
                    key,
                    limit as i64
                ],
                super::read::pm_of,
            )
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)?;
        rows.reverse();
        Ok(rows)
    }
}

/// The conversation `pair` of `key`, whose last message is `last`.
fn conversation(
    db: &Connection,
    key: &str,
    pair: &str,
    last: i64,
) -> rusqlite::Result<Conversation> {
    let (sender, recipient): (String, String) = db.query_row(
        "SELECT sender, recipient FROM pms WHERE id = ?1",
        [last],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let with = if sender.eq_ignore_ascii_case(key) {
        recipient
    } else {
        sender
    };
    let other = other_of(pair, key);
    let marked: i64 = db
        .query_row(
            "SELECT read_id FROM pm_reads WHERE account = ?1 AND other = ?2",
            params![key, other],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    // Writing to someone reads what they wrote before.
    let sent: i64 = db.query_row(
        "SELECT COALESCE(max(id), 0) FROM pms WHERE pair = ?1 AND lower(sender) = ?2",
        params![pair, key],
        |r| r.get(0),
    )?;
    let read = marked.max(sent);
    let unread: i64 = db.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM pms
         WHERE pair = ?1 AND id > ?2 AND lower(sender) <> ?3 LIMIT ?4)",
        params![pair, read, key, UNREAD_CAP as i64],
        |r| r.get(0),
    )?;
    Ok(Conversation {
        with,
        last: last as u64,
        read: read as u64,
        unread: unread as u64,
    })
}
