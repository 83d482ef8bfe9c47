//! Accounts in PostgreSQL: a connection of their own, which comes back by itself like the store's,
//! and migrates the schema the first time it connects (`chatd user` may run before chatd has).

use postgres::Client;

use super::super::accounts::{
    Account, AccountsDb, Change, Conversation, Created, DbError, Noted, UNREAD_CAP, Unread,
    mention_pattern, other_of, role_text,
};
use super::super::{Pm, pm_pair, role_of};
use super::{Conn, reason, schema};
use crate::protocol::Role;

/// The accounts of one PostgreSQL database.
pub(in crate::store) struct Accounts {
    pub(super) conn: Conn,
    pub(super) migrated: bool,
}

impl Accounts {
    fn client(&mut self) -> Result<&mut Client, DbError> {
        let migrated = self.migrated;
        let db = self.conn.client()?;
        if !migrated {
            schema::migrate(db).map_err(|e| e.to_string())?;
            self.migrated = true;
        }
        self.conn.client()
    }

    /// Runs `f` on the connection; a failure drops a closed connection, so the next use
    /// connects again.
    pub(super) fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let result = f(self.client()?).map_err(|e| reason(&e));
        if result.is_err() {
            self.conn.check();
        }
        result
    }
}

impl AccountsDb for Accounts {
    fn find(&mut self, key: &str) -> Result<Option<Account>, DbError> {
        let row = self.with(|db| {
            db.query_opt(
                "SELECT name, hash, role, disabled FROM accounts WHERE key = $1",
                &[&key],
            )
        })?;
        Ok(row.map(|r| Account {
            name: r.get(0),
            hash: r.get(1),
            role: role_of(r.get::<_, &str>(2)),
            disabled: r.get(3),
        }))
    }

    fn create(
        &mut self,
        key: &str,
        account: &Account,
        invite: Option<&str>,
        now_ms: i64,
    ) -> Result<Created, DbError> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            if let Some(hash) = invite {
                let spent = tx.execute(
                    "UPDATE invites SET uses_left = uses_left - 1
                     WHERE hash = $1 AND uses_left > 0 AND expires_ms > $2",
                    &[&hash, &now_ms],
                )?;
                if spent == 0 {
                    return Ok(Created::BadInvite);
                }
            }
            let inserted = tx.execute(
                "INSERT INTO accounts (key, name, hash, role, disabled, created)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                &[
                    &key,
                    &account.name,
                    &account.hash,
                    &role_text(account.role),
                    &account.disabled,
                    &crate::protocol::timestamp(),
                ],
            )?;
            if inserted == 0 {
                // The invite's use is given back with the rollback.
                return Ok(Created::Taken);
            }
            tx.execute(
                "DELETE FROM invites WHERE uses_left <= 0 OR expires_ms <= $1",
                &[&now_ms],
            )?;
            tx.commit()?;
            Ok(Created::Created)
        })
    }

    fn update(&mut self, key: &str, change: &Change) -> Result<bool, DbError> {
        let changed = self.with(|db| match change {
            Change::Password(hash) => db.execute(
                "UPDATE accounts SET hash = $2 WHERE key = $1",
                &[&key, hash],
            ),
            Change::Role(role) => db.execute(
                "UPDATE accounts SET role = $2 WHERE key = $1",
                &[&key, &role_text(*role)],
            ),
            Change::Disabled(disabled) => db.execute(
                "UPDATE accounts SET disabled = $2 WHERE key = $1",
                &[&key, disabled],
            ),
        })?;
        Ok(changed == 1)
    }

    fn add_invite(&mut self, hash: &str, uses: u32, expires_ms: i64) -> Result<(), DbError> {
        let uses = i32::try_from(uses).unwrap_or(i32::MAX);
        self.with(|db| {
            db.execute(
                "INSERT INTO invites (hash, uses_left, expires_ms) VALUES ($1, $2, $3)",
                &[&hash, &uses, &expires_ms],
            )
        })?;
        Ok(())
    }

    fn count(&mut self) -> Result<u64, DbError> {
        let n: i64 = self
            .with(|db| db.query_one("SELECT count(*) FROM accounts", &[]))?
            .get(0);
        Ok(n as u64)
    }

    fn rooms(&mut self, key: &str, limit: usize) -> Result<Vec<(String, u64)>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with(|db| {
            db.query(
                "SELECT room, read_seq FROM memberships WHERE account = $1
                 ORDER BY joined, room LIMIT $2",
                &[&key, &limit],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn memberships(&mut self, changes: &[Noted]) -> Result<(), DbError> {
        let now = crate::protocol::timestamp();
        self.with(|db| {
            let mut tx = db.transaction()?;
            for n in changes {
                match n.joined {
                    Some(Some(start)) => {
                        tx.execute(
                            "INSERT INTO memberships (account, room, joined, read_seq)
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&n.account, &n.room, &now, &(start as i64)],
                        )?;
                    }
                    Some(None) => {
                        tx.execute(
                            "DELETE FROM memberships WHERE account = $1 AND room = $2",
                            &[&n.account, &n.room],
                        )?;
                    }
                    None => {}
                }
                if let Some(read) = n.read {
                    tx.execute(
                        "UPDATE memberships SET read_seq = GREATEST(read_seq, $3)
                         WHERE account = $1 AND room = $2",
                        &[&n.account, &n.room, &(read as i64)],
                    )?;
                }
            }
            tx.commit()
        })
    }

    fn unread(&mut self, key: &str, name: &str, room: &str, read: u64) -> Result<Unread, DbError> {
        let read = read.min(i64::MAX as u64) as i64;
        let cap = UNREAD_CAP as i64;
        let pattern = mention_pattern(name);
        self.with(|db| {
            let Some(row) =
                db.query_opt("SELECT id, epoch FROM rooms WHERE name = $1", &[&room])?
            else {
                return Ok(Unread::default());
            };
            let room_id: i64 = row.get(0);
            let epoch: String = row.get(1);
            let head: i64 = db
                .query_one(
                    "SELECT COALESCE(max(seq), 0) FROM messages WHERE room_id = $1",
                    &[&room_id],
                )?
                .get(0);
            let count: i64 = db
                .query_one(
                    "SELECT count(*) FROM (SELECT 1 FROM messages
                     WHERE room_id = $1 AND seq > $2 AND lower(sender) <> $3 LIMIT $4) AS past",
                    &[&room_id, &read, &key, &cap],
                )?
                .get(0);
            let mentioning = db
                .query(
                    "SELECT text FROM messages WHERE room_id = $1 AND seq > $2
                     AND lower(sender) <> $3 AND lower(text) LIKE $4 LIMIT $5",
                    &[&room_id, &read, &key, &pattern, &cap],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(Unread {
                epoch,
                head: head as u64,
                count: count as u64,
                mentioning,
            })
        })
    }

    fn remember(&mut self, key: &str, name: &str, role: Role) -> Result<(), DbError> {
        let now = crate::protocol::timestamp();
        self.with(|db| {
            db.execute(
                "INSERT INTO accounts (key, name, hash, role, disabled, created)
                 VALUES ($1, $2, '', $3, false, $4) ON CONFLICT (key) DO NOTHING",
                &[&key, &name, &role_text(role), &now],
            )
        })?;
        Ok(())
    }

    fn conversations(&mut self, key: &str, limit: usize) -> Result<Vec<Conversation>, DbError> {
        let limit = limit as i64;
        self.with(|db| {
            let recent = db.query(
                "SELECT pair, max(id) AS last FROM pms
                 WHERE lower(sender) = $1 OR lower(recipient) = $1
                 GROUP BY pair ORDER BY last DESC LIMIT $2",
                &[&key, &limit],
            )?;
            recent
                .iter()
                .map(|r| conversation(db, key, r.get(0), r.get(1)))
                .collect()
        })
    }

    fn conversation(&mut self, key: &str, with: &str) -> Result<Option<Conversation>, DbError> {
        let pair = pm_pair(key, with);
        self.with(|db| {
            let last: Option<i64> = db
                .query_one("SELECT max(id) FROM pms WHERE pair = $1", &[&pair])?
                .get(0);
            last.map(|last| conversation(db, key, &pair, last))
                .transpose()
        })
    }

    fn read_pm(&mut self, key: &str, with: &str, id: u64) -> Result<(), DbError> {
        let id = id.min(i64::MAX as u64) as i64;
        self.with(|db| {
            db.execute(
                "INSERT INTO pm_reads (account, other, read_id) VALUES ($1, $2, $3)
                 ON CONFLICT (account, other)
                 DO UPDATE SET read_id = GREATEST(pm_reads.read_id, excluded.read_id)",
                &[&key, &with, &id],
            )
        })?;
        Ok(())
    }

    fn unread_pms(
        &mut self,
        key: &str,
        with: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Pm>, DbError> {
        let (pair, after, limit) = (
            pm_pair(key, with),
            after.min(i64::MAX as u64) as i64,
            limit as i64,
        );
        let mut rows: Vec<Pm> = self.with(|db| {
            let rows = db.query(
                "SELECT id, ts, sender, recipient, role, text, action, edited_ts, deleted FROM pms
                 WHERE pair = $1 AND id > $2 AND lower(sender) <> $3 ORDER BY id DESC LIMIT $4",
                &[&pair, &after, &key, &limit],
            )?;
            Ok(rows.iter().map(super::read::pm_of).collect())
        })?;
        rows.reverse();
        Ok(rows)
    }
}

/// The conversation `pair` of `key`, whose last message is `last`.
fn conversation(
    db: &mut Client,
    key: &str,
    pair: &str,
    last: i64,
) -> Result<Conversation, postgres::Error> {
    let row = db.query_one("SELECT sender, recipient FROM pms WHERE id = $1", &[&last])?;
    let (sender, recipient): (String, String) = (row.get(0), row.get(1));
    let with = if sender.eq_ignore_ascii_case(key) {
        recipient
    } else {
        sender
    };
    let other = other_of(pair, key);
    let marked: i64 = db
        .query_opt(
            "SELECT read_id FROM pm_reads WHERE account = $1 AND other = $2",
            &[&key, &other],
        )?
        .map_or(0, |r| r.get(0));
    // Writing to someone reads what they wrote before.
    let sent: i64 = db
        .query_one(
            "SELECT COALESCE(max(id), 0) FROM pms WHERE pair = $1 AND lower(sender) = $2",
            &[&pair, &key],
        )?
        .get(0);
    let read = marked.max(sent);
    let cap = UNREAD_CAP as i64;
    let unread: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM pms
             WHERE pair = $1 AND id > $2 AND lower(sender) <> $3 LIMIT $4) AS past",
            &[&pair, &read, &key, &cap],
        )?
        .get(0);
    Ok(Conversation {
        with,
        last: last as u64,
        read: read as u64,
        unread: unread as u64,
    })
}
