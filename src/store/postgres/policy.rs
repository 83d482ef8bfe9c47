//! Rooms' policies in PostgreSQL, on the accounts' connection (see `store::policy`).

use postgres::{GenericClient, Transaction};

use super::super::accounts::DbError;
use super::super::policy::{
    AUDIT_KEPT, Audit, CHANGES_KEPT, Change, Kind, PolicyDb, RoomRecord, RoomRole, Sanction,
    Settings,
};
use super::accounts::Accounts;

impl PolicyDb for Accounts {
    fn policy_version(&mut self) -> Result<u64, DbError> {
        self.with(version)
    }

    fn changed_since(&mut self, since: u64) -> Result<(Vec<String>, u64), DbError> {
        self.with(|db| {
            let oldest: Option<i64> = db
                .query_one("SELECT min(version) FROM policy_changes", &[])?
                .get(0);
            let latest = version(db)?;
            if since > 0 && oldest.is_some_and(|o| o as u64 > since + 1) {
                return Ok((rooms(db)?, latest));
            }
            let rows = db.query(
                "SELECT DISTINCT room FROM policy_changes WHERE version > $1 AND version <= $2",
                &[&(since as i64), &(latest as i64)],
            )?;
            Ok((rows.iter().map(|r| r.get(0)).collect(), latest))
        })
    }

    fn policy_rooms(&mut self) -> Result<Vec<String>, DbError> {
        self.with(rooms)
    }

    fn room_record(&mut self, room: &str) -> Result<RoomRecord, DbError> {
        self.with(|db| record(db, room))
    }

    fn apply(&mut self, change: &Change, audit: Option<&Audit>) -> Result<bool, DbError> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            let changed = apply(&mut tx, change)?;
            if changed {
                log(&mut tx, change.room(), audit)?;
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    fn audit_log(&mut self, room: &str, limit: usize) -> Result<Vec<Audit>, DbError> {
        self.with(|db| {
            let rows = db.query(
                "SELECT room, actor, action, target, reason, ts FROM audit
                 WHERE room = $1 ORDER BY id DESC LIMIT $2",
                &[&room, &(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| Audit {
                    room: r.get(0),
                    actor: r.get(1),
                    action: r.get(2),
                    target: r.get(3),
                    reason: r.get(4),
                    ts: r.get(5),
                })
                .collect())
        })
    }
}

fn version(db: &mut impl GenericClient) -> Result<u64, postgres::Error> {
    let v: i64 = db
        .query_one("SELECT COALESCE(max(version), 0) FROM policy_changes", &[])?
        .get(0);
    Ok(v as u64)
}

fn rooms(db: &mut postgres::Client) -> Result<Vec<String>, postgres::Error> {
    let rows = db.query(
        "SELECT room FROM room_settings UNION SELECT room FROM room_roles
         UNION SELECT room FROM room_invites UNION SELECT room FROM sanctions",
        &[],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn record(db: &mut postgres::Client, room: &str) -> Result<RoomRecord, postgres::Error> {
    let settings = db
        .query_opt(
            "SELECT owner, topic, private, invite_only, moderated FROM room_settings
             WHERE room = $1",
            &[&room],
        )?
        .map(|r| Settings {
            owner: r.get(0),
            topic: r.get(1),
            private: r.get(2),
            invite_only: r.get(3),
            moderated: r.get(4),
        });
    let roles = db
        .query(
            "SELECT account, role FROM room_roles WHERE room = $1",
            &[&room],
        )?
        .iter()
        .filter_map(|r| RoomRole::parse(r.get(1)).map(|role| (r.get(0), role)))
        .collect();
    let invites = db
        .query("SELECT account FROM room_invites WHERE room = $1", &[&room])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sanctions = db
        .query(
            "SELECT target, kind, by_name, reason, created, until_ms FROM sanctions
             WHERE room = $1",
            &[&room],
        )?
        .iter()
        .filter_map(|r| {
            Kind::parse(r.get(1)).map(|kind| Sanction {
                room: room.to_string(),
                target: r.get(0),
                kind,
                by: r.get(2),
                reason: r.get(3),
                created: r.get(4),
                until_ms: r.get(5),
            })
        })
        .collect();
    Ok(RoomRecord {
        settings,
        roles,
        invites,
        sanctions,
    })
}

fn apply(tx: &mut Transaction<'_>, change: &Change) -> Result<bool, postgres::Error> {
    let now = crate::protocol::timestamp();
    let n = match change {
        Change::Claim { room, owner } => tx.execute(
            "INSERT INTO room_settings (room, owner, created) VALUES ($1, $2, $3)
             ON CONFLICT (room) DO NOTHING",
            &[room, owner, &now],
        )?,
        Change::Set { room, settings } => tx.execute(
            "INSERT INTO room_settings (room, owner, topic, private, invite_only, moderated, created)
             VALUES ($1, NULL, $2, $3, $4, $5, $6)
             ON CONFLICT (room) DO UPDATE SET topic = excluded.topic, private = excluded.private,
               invite_only = excluded.invite_only, moderated = excluded.moderated",
            &[
                room,
                &settings.topic,
                &settings.private,
                &settings.invite_only,
                &settings.moderated,
                &now,
            ],
        )?,
        Change::Role { room, account, role } => match role {
            Some(role) => tx.execute(
                "INSERT INTO room_roles (room, account, role) VALUES ($1, $2, $3)
                 ON CONFLICT (room, account) DO UPDATE SET role = excluded.role",
                &[room, account, &role.as_str()],
            )?,
            None => tx.execute(
                "DELETE FROM room_roles WHERE room = $1 AND account = $2",
                &[room, account],
            )?,
        },
        Change::Transfer { room, to } => {
            let old: Option<Option<String>> = tx
                .query_opt("SELECT owner FROM room_settings WHERE room = $1", &[room])?
                .map(|r| r.get(0));
            if let Some(Some(old)) = &old {
                tx.execute(
                    "INSERT INTO room_roles (room, account, role) VALUES ($1, $2, 'op')
                     ON CONFLICT (room, account) DO UPDATE SET role = 'op'",
                    &[room, old],
                )?;
            }
            tx.execute(
                "DELETE FROM room_roles WHERE room = $1 AND account = $2",
                &[room, to],
            )?;
            tx.execute(
                "INSERT INTO room_settings (room, owner, created) VALUES ($1, $2, $3)
                 ON CONFLICT (room) DO UPDATE SET owner = excluded.owner",
                &[room, to, &now],
            )?
        }
        Change::Invite { room, account, on } => match on {
            true => tx.execute(
                "INSERT INTO room_invites (room, account, created) VALUES ($1, $2, $3)
                 ON CONFLICT (room, account) DO NOTHING",
                &[room, account, &now],
            )?,
            false => tx.execute(
                "DELETE FROM room_invites WHERE room = $1 AND account = $2",
                &[room, account],
            )?,
        },
        Change::Sanction(s) => {
            // Ended ones go first: the room's cap counts what is in force.
            tx.execute(
                "DELETE FROM sanctions WHERE room = $1 AND until_ms IS NOT NULL AND until_ms <= $2",
                &[&s.room, &super::super::now_millis()],
            )?;
            tx.execute(
            "INSERT INTO sanctions (room, target, kind, by_name, reason, created, until_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (room, target, kind) DO UPDATE SET by_name = excluded.by_name,
               reason = excluded.reason, created = excluded.created, until_ms = excluded.until_ms",
            &[
                &s.room,
                &s.target,
                &s.kind.as_str(),
                &s.by,
                &s.reason,
                &s.created,
                &s.until_ms,
            ],
        )?
        }
        Change::Lift { room, target, kind } => tx.execute(
            "DELETE FROM sanctions WHERE room = $1 AND target = $2 AND kind = $3",
            &[room, target, &kind.as_str()],
        )?,
    };
    Ok(n > 0)
}

/// The change logged (and the log kept bounded), and its audit entry.
fn log(tx: &mut Transaction<'_>, room: &str, audit: Option<&Audit>) -> Result<(), postgres::Error> {
    tx.execute("INSERT INTO policy_changes (room) VALUES ($1)", &[&room])?;
    tx.execute(
        "DELETE FROM policy_changes
         WHERE version <= (SELECT max(version) FROM policy_changes) - $1",
        &[&CHANGES_KEPT],
    )?;
    if let Some(a) = audit {
        tx.execute(
            "INSERT INTO audit (room, actor, action, target, reason, ts)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&a.room, &a.actor, &a.action, &a.target, &a.reason, &a.ts],
        )?;
        tx.execute(
            "DELETE FROM audit WHERE room = $1 AND id <= (SELECT id FROM audit WHERE room = $1
             ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&a.room, &AUDIT_KEPT],
        )?;
    }
    Ok(())
}
