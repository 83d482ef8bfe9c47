//! Rooms' policies in the SQLite file, on the accounts' connection (see `store::policy`).

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::super::accounts::DbError;
use super::super::policy::{
    AUDIT_KEPT, Audit, CHANGES_KEPT, Change, Kind, PolicyDb, RoomRecord, RoomRole, Sanction,
    Settings,
};
use super::accounts::Accounts;

fn text(e: rusqlite::Error) -> DbError {
    super::sqlite_reason(&e)
}

impl PolicyDb for Accounts {
    fn policy_version(&mut self) -> Result<u64, DbError> {
        self.0
            .query_row(
                "SELECT COALESCE(max(version), 0) FROM policy_changes",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(text)
    }

    fn changed_since(&mut self, version: u64) -> Result<(Vec<String>, u64), DbError> {
        let oldest: Option<i64> = self
            .0
            .query_row("SELECT min(version) FROM policy_changes", [], |r| r.get(0))
            .map_err(text)?;
        let latest = self.policy_version()?;
        if oldest.is_some_and(|o| o as u64 > version + 1) && version > 0 {
            // Fell behind what the log keeps: everything.
            return Ok((self.policy_rooms()?, latest));
        }
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT DISTINCT room FROM policy_changes WHERE version > ?1 AND version <= ?2",
            )
            .map_err(text)?;
        let rooms = statement
            .query_map(params![version as i64, latest as i64], |r| r.get(0))
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)?;
        Ok((rooms, latest))
    }

    fn policy_rooms(&mut self) -> Result<Vec<String>, DbError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT room FROM room_settings UNION SELECT room FROM room_roles
                 UNION SELECT room FROM room_invites UNION SELECT room FROM sanctions",
            )
            .map_err(text)?;
        statement
            .query_map([], |r| r.get(0))
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)
    }

    fn room_record(&mut self, room: &str) -> Result<RoomRecord, DbError> {
        record(&self.0, room).map_err(text)
    }

    fn apply(&mut self, change: &Change, audit: Option<&Audit>) -> Result<bool, DbError> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(text)?;
        let changed = apply(&tx, change).map_err(text)?;
        if changed {
            log(&tx, change.room(), audit).map_err(text)?;
        }
        tx.commit().map_err(text)?;
        Ok(changed)
    }

    fn audit_log(&mut self, room: &str, limit: usize) -> Result<Vec<Audit>, DbError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT room, actor, action, target, reason, ts FROM audit
                 WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(text)?;
        statement
            .query_map(params![room, limit as i64], |r| {
                Ok(Audit {
                    room: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    reason: r.get(4)?,
                    ts: r.get(5)?,
                })
            })
            .map_err(text)?
            .collect::<Result<_, _>>()
            .map_err(text)
    }
}

fn record(db: &Connection, room: &str) -> rusqlite::Result<RoomRecord> {
    let settings = db
        .query_row(
            "SELECT owner, topic, private, invite_only, moderated FROM room_settings
             WHERE room = ?1",
            [room],
            |r| {
                Ok(Settings {
                    owner: r.get(0)?,
                    topic: r.get(1)?,
                    private: r.get(2)?,
                    invite_only: r.get(3)?,
                    moderated: r.get(4)?,
                })
            },
        )
        .optional()?;
    let roles = db
        .prepare_cached("SELECT account, role FROM room_roles WHERE room = ?1")?
        .query_map([room], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .filter_map(|row| match row {
            Ok((account, role)) => RoomRole::parse(&role).map(|role| Ok((account, role))),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    let invites = db
        .prepare_cached("SELECT account FROM room_invites WHERE room = ?1")?
        .query_map([room], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let sanctions = db
        .prepare_cached(
            "SELECT target, kind, by_name, reason, created, until_ms FROM sanctions
             WHERE room = ?1",
        )?
        .query_map([room], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .filter_map(|row| match row {
            Ok((target, kind, by, reason, created, until_ms)) => Kind::parse(&kind).map(|kind| {
                Ok(Sanction {
                    room: room.to_string(),
                    target,
                    kind,
                    by,
                    reason,
                    created,
                    until_ms,
                })
            }),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    Ok(RoomRecord {
        settings,
        roles,
        invites,
        sanctions,
    })
}

fn apply(tx: &Transaction<'_>, change: &Change) -> rusqlite::Result<bool> {
    let now = crate::protocol::timestamp();
    let n = match change {
        Change::Claim { room, owner } => tx.execute(
            "INSERT INTO room_settings (room, owner, created) VALUES (?1, ?2, ?3)
             ON CONFLICT (room) DO NOTHING",
            params![room, owner, now],
        )?,
        Change::Set { room, settings } => tx.execute(
            "INSERT INTO room_settings (room, owner, topic, private, invite_only, moderated, created)
             VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (room) DO UPDATE SET topic = excluded.topic, private = excluded.private,
               invite_only = excluded.invite_only, moderated = excluded.moderated",
            params![
                room,
                settings.topic,
                settings.private,
                settings.invite_only,
                settings.moderated,
                now
            ],
        )?,
        Change::Role { room, account, role } => match role {
            Some(role) => tx.execute(
                "INSERT INTO room_roles (room, account, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room, account) DO UPDATE SET role = excluded.role",
                params![room, account, role.as_str()],
            )?,
            None => tx.execute(
                "DELETE FROM room_roles WHERE room = ?1 AND account = ?2",
                params![room, account],
            )?,
        },
        Change::Transfer { room, to } => {
            let old: Option<Option<String>> = tx
                .query_row(
                    "SELECT owner FROM room_settings WHERE room = ?1",
                    [room],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(Some(old)) = &old {
                tx.execute(
                    "INSERT INTO room_roles (room, account, role) VALUES (?1, ?2, 'op')
                     ON CONFLICT (room, account) DO UPDATE SET role = 'op'",
                    params![room, old],
                )?;
            }
            tx.execute(
                "DELETE FROM room_roles WHERE room = ?1 AND account = ?2",
                params![room, to],
            )?;
            tx.execute(
                "INSERT INTO room_settings (room, owner, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room) DO UPDATE SET owner = excluded.owner",
                params![room, to, now],
            )?
        }
        Change::Invite { room, account, on } => match on {
            true => tx.execute(
                "INSERT INTO room_invites (room, account, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room, account) DO NOTHING",
                params![room, account, now],
            )?,
            false => tx.execute(
                "DELETE FROM room_invites WHERE room = ?1 AND account = ?2",
                params![room, account],
            )?,
        },
        Change::Sanction(s) => {
            // Ended ones go first: the room's cap counts what is in force.
            tx.execute(
                "DELETE FROM sanctions WHERE room = ?1 AND until_ms IS NOT NULL AND until_ms <= ?2",
                params![s.room, super::super::now_millis()],
            )?;
            tx.execute(
            "INSERT INTO sanctions (room, target, kind, by_name, reason, created, until_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (room, target, kind) DO UPDATE SET by_name = excluded.by_name,
               reason = excluded.reason, created = excluded.created, until_ms = excluded.until_ms",
            params![
                s.room,
                s.target,
                s.kind.as_str(),
                s.by,
                s.reason,
                s.created,
                s.until_ms
            ],
        )?
        }
        Change::Lift { room, target, kind } => tx.execute(
            "DELETE FROM sanctions WHERE room = ?1 AND target = ?2 AND kind = ?3",
            params![room, target, kind.as_str()],
        )?,
    };
    Ok(n > 0)
}

/// The change logged (and the log kept bounded), and its audit entry.
fn log(tx: &Transaction<'_>, room: &str, audit: Option<&Audit>) -> rusqlite::Result<()> {
    tx.execute("INSERT INTO policy_changes (room) VALUES (?1)", [room])?;
    tx.execute(
        "DELETE FROM policy_changes WHERE version <= (SELECT max(version) FROM policy_changes) - ?1",
        [CHANGES_KEPT],
    )?;
    if let Some(a) = audit {
        tx.execute(
            "INSERT INTO audit (room, actor, action, target, reason, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![a.room, a.actor, a.action, a.target, a.reason, a.ts],
        )?;
        tx.execute(
            "DELETE FROM audit WHERE room = ?1 AND id <= (SELECT id FROM audit WHERE room = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![a.room, AUDIT_KEPT],
        )?;
    }
    Ok(())
}
