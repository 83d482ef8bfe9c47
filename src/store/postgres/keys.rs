//! The API's keys in PostgreSQL, on the accounts' connection.

use postgres::Row;

use super::super::accounts::DbError;
use super::super::keys::{ApiKey, Claim, KeysDb, found, joined, split};
use super::accounts::Accounts;

const COLUMNS: &str =
    "id, name, account, hash, scopes, rooms, created_ms, expires_ms, revoked FROM api_keys";

fn key_of(r: &Row) -> ApiKey {
    ApiKey {
        id: r.get(0),
        name: r.get(1),
        account: r.get(2),
        hash: r.get(3),
        scopes: split(r.get(4)),
        rooms: split(r.get(5)),
        created_ms: r.get(6),
        expires_ms: r.get(7),
        revoked: r.get(8),
    }
}

impl KeysDb for Accounts {
    fn add_key(&mut self, key: &ApiKey) -> Result<bool, DbError> {
        let (scopes, rooms) = (joined(&key.scopes), joined(&key.rooms));
        let added = self.with(|db| {
            db.execute(
                "INSERT INTO api_keys (id, name, account, hash, scopes, rooms, created_ms, expires_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &key.id,
                    &key.name,
                    &key.account,
                    &key.hash,
                    &scopes,
                    &rooms,
                    &key.created_ms,
                    &key.expires_ms,
                ],
            )
        })?;
        Ok(added == 1)
    }

    fn find_key(&mut self, id: &str) -> Result<Option<ApiKey>, DbError> {
        let row =
            self.with(|db| db.query_opt(&format!("SELECT {COLUMNS} WHERE id = $1"), &[&id]))?;
        Ok(row.as_ref().map(key_of))
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, DbError> {
        let rows =
            self.with(|db| db.query(&format!("SELECT {COLUMNS} ORDER BY created_ms, id"), &[]))?;
        Ok(rows.iter().map(key_of).collect())
    }

    fn revoke_key(&mut self, name: &str) -> Result<bool, DbError> {
        let n = self.with(|db| {
            db.execute(
                "UPDATE api_keys SET revoked = true WHERE name = $1 OR id = $1",
                &[&name],
            )
        })?;
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
        let row = self.with(|db| {
            let mut tx = db.transaction()?;
            tx.execute(
                "DELETE FROM api_requests WHERE created_ms < $1",
                &[&expired_ms],
            )?;
            let added = tx.execute(
                "INSERT INTO api_requests (key_id, idem, fingerprint, created_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&key_id, &idem, &fingerprint, &now_ms],
            )?;
            let row = if added == 1 {
                None
            } else {
                let r = tx.query_one(
                    "SELECT fingerprint, status, response FROM api_requests
                     WHERE key_id = $1 AND idem = $2",
                    &[&key_id, &idem],
                )?;
                let status: Option<i32> = r.get(1);
                Some((r.get(0), status.map(i64::from), r.get(2)))
            };
            tx.commit()?;
            Ok(row)
        })?;
        Ok(row.map_or(Claim::New, |row| found(fingerprint, row)))
    }

    fn complete(
        &mut self,
        key_id: &str,
        idem: &str,
        status: u16,
        response: &str,
    ) -> Result<(), DbError> {
        let status = i32::from(status);
        self.with(|db| {
            db.execute(
                "UPDATE api_requests SET status = $3, response = $4 WHERE key_id = $1 AND idem = $2",
                &[&key_id, &idem, &status, &response],
            )
        })?;
        Ok(())
    }

    fn release(&mut self, key_id: &str, idem: &str) -> Result<(), DbError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM api_requests WHERE key_id = $1 AND idem = $2 AND status IS NULL",
                &[&key_id, &idem],
            )
        })?;
        Ok(())
    }
}
