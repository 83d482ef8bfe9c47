//! Accounts in PostgreSQL: a connection of their own, which comes back by itself like the store's,
//! and migrates the schema the first time it connects (`chatd user` may run before chatd has).

use postgres::Client;

use super::super::accounts::{Account, AccountsDb, Change, Created, DbError, role_text};
use super::super::role_of;
use super::{Conn, reason, schema};

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
    fn with<T>(
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

    fn rooms(&mut self, key: &str, limit: usize) -> Result<Vec<String>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with(|db| {
            db.query(
                "SELECT room FROM memberships WHERE account = $1 ORDER BY joined, room LIMIT $2",
                &[&key, &limit],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn memberships(&mut self, changes: &[(String, String, bool)]) -> Result<(), DbError> {
        let now = crate::protocol::timestamp();
        self.with(|db| {
            let mut tx = db.transaction()?;
            for (account, room, joined) in changes {
                if *joined {
                    tx.execute(
                        "INSERT INTO memberships (account, room, joined) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[account, room, &now],
                    )?;
                } else {
                    tx.execute(
                        "DELETE FROM memberships WHERE account = $1 AND room = $2",
                        &[account, room],
                    )?;
                }
            }
            tx.commit()
        })
    }
}
