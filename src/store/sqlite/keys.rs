//! The API's keys in the SQLite file, on the accounts' connection.

use rusqlite::{OptionalExtension, params};

use super::super::accounts::DbError;
use super::super::keys::{ApiKey, Claim, KeysDb, found, joined, split};
use super::accounts::Accounts;

fn text(e: rusqlite::Error) -> DbError {
    super::sqlite_reason(&e)
}

const COLUMNS: &str =
    "id, name, account, hash, scopes, rooms, created_ms, expires_ms, revoked FROM api_keys";

fn key_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        account: r.get(2)?,
        hash: r.get(3)?,
        scopes: split(&r.get::<_, String>(4)?),
        rooms: split(&r.get::<_, String>(5)?),
        created_ms: r.get(6)?,
        expires_ms: r.get(7)?,
        revoked: r.get(8)?,
    })
}

impl KeysDb for Accounts {
    fn add_key(&mut self, key: &ApiKey) -> Result<bool, DbError> {
        let added = self
            .0
            .execute(
                "INSERT INTO api_keys (id, name, account, hash, scopes, rooms, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params![
                    key.id,
                    key.name,
                    key.account,
                    key.hash,
                    joined(&key.scopes),
                    joined(&key.rooms),
                    key.created_ms,
                    key.expires_ms
                ],
            )
            .map_err(text)?;
        Ok(added == 1)
    }

    fn find_key(&mut self, id: &str) -> Result<Option<ApiKey>, DbError> {
        self.0
            .query_row(&format!("SELECT {COLUMNS} WHERE id = ?1"), [id], key_of)
            .optional()
            .map_err(text)
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, DbError> {
        let mut statement = self
            .0
            .prepare(&format!("SELECT {COLUMNS} ORDER BY created_ms, id"))
            .map_err(text)?;
        let rows = statement.query_map([], key_of).map_err(text)?;
        rows.collect::<Result<_, _>>().map_err(text)
    }

    fn revoke_key(&mut self, name: &str) -> Result<bool, DbError> {
        let n = self
            .0
            .execute(
                "UPDATE api_keys SET revoked = 1 WHERE name = ?1 OR id = ?1",
                [name],
            )
            .map_err(text)?;
        Ok(n > 0)
    }

    fn claim(
        &mut self,
        key_id: &str,
        idem: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_ms: i64,
    ) -> Result<Claim, DbError> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(text)?;
        tx.execute(
            "DELETE FROM api_requests WHERE created_ms < ?1",
            [expired_ms],
        )
        .map_err(text)?;
        let added = tx
            .execute(
                "INSERT INTO api_requests (key_id, idem, fingerprint, created_ms)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![key_id, idem, fingerprint, now_ms],
            )
            .map_err(text)?;
        let claim = if added == 1 {
            Claim::New
        } else {
            let row = tx
                .query_row(
                    "SELECT fingerprint, status, response FROM api_requests
                     WHERE key_id = ?1 AND idem = ?2",
                    [key_id, idem],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(text)?;
            found(fingerprint, row)
        };
        tx.commit().map_err(text)?;
        Ok(claim)
    }

    fn complete(
        &mut self,
        key_id: &str,
        idem: &str,
        status: u16,
        response: &str,
    ) -> Result<(), DbError> {
        self.0
            .execute(
                "UPDATE api_requests SET status = ?3, response = ?4 WHERE key_id = ?1 AND idem = ?2",
                params![key_id, idem, status, response],
            )
            .map_err(text)?;
        Ok(())
    }

    fn release(&mut self, key_id: &str, idem: &str) -> Result<(), DbError> {
        self.0
            .execute(
                "DELETE FROM api_requests WHERE key_id = ?1 AND idem = ?2 AND status IS NULL",
                [key_id, idem],
            )
            .map_err(text)?;
        Ok(())
    }
}
