//! The SQLite store (`storage.path`): one file, written by the writer thread, read by two
//! read-only connections. Opening checks it before anything is trusted (a regular file, chatd's
//! own, not damaged), migrates it, notes whether the last stop was clean, and loads it.
//!
//! An unclean stop (a kill, a crash, power loss, or a graceful stop whose last write failed) may
//! have lost messages that were acknowledged, delivered and numbered but not committed. Their
//! numbers must never be given out again to different messages: every room gets a new epoch
//! (clients resuming from the old numbering are told `resumed: false` and reload), and the message
//! ids skip past the most that could have been handed out uncommitted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::{info, warn};

use super::{
    Loaded, LoadedRoom, Mark, Message, Opened, StoreSettings, keep_newest, kept, retention_cutoff,
    role_of, uncommitted_bound,
};
use crate::config::ConfigError;
use crate::protocol::ChatMessage;

mod accounts;
mod keys;
mod policy;
mod prune;
mod read;
mod schema;
mod write;

/// `PRAGMA application_id` of a chatd database ("chat"): a SQLite file with another id belongs
/// to another program, and chatd leaves it alone.
pub(super) const APPLICATION_ID: i32 = 0x6368_6174;
/// The longest the integrity check at startup may take; a larger database is checked that far.
const QUICK_CHECK_BUDGET: Duration = Duration::from_secs(10);

/// The error an unusable `storage.path` becomes: it names the key and the file.
fn path_error(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::File {
        key: "storage.path",
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn sqlite_reason(e: &rusqlite::Error) -> String {
    let text = e.to_string();
    if text.contains("file is not a database") {
        "not a SQLite database (or it is corrupt)".to_string()
    } else if text.contains("malformed") {
        "the database file is corrupt (database disk image is malformed)".to_string()
    } else if text.contains("unable to open") || text.contains("readonly") {
        format!("cannot write there: {text} (check the directory exists and chatd may write to it)")
    } else {
        text
    }
}

/// A database file must be a regular file (opening a FIFO or a device could block, or worse), or
/// not exist yet.
fn check_kind(path: &Path) -> Result<bool, ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(path_error(path, "is a directory, not a database file")),
        Ok(m) if !m.is_file() => Err(path_error(
            path,
            "is not a regular file (a FIFO, a socket or a device)",
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(path_error(path, e.to_string())),
    }
}

fn connection(
    path: &Path,
    settings: &StoreSettings,
    flags: OpenFlags,
) -> rusqlite::Result<Connection> {
    let db = Connection::open_with_flags(path, flags)?;
    db.busy_timeout(Duration::from_secs(5))?;
    // A new database gives pruned space back to the file system (`prune::give_back`): chosen
    // before anything (WAL included) writes its first page, or it cannot be chosen at all.
    let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 && !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        db.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.pragma_update(None, "foreign_keys", "ON")?;
    if settings.max_db_bytes > 0 {
        let page: u64 = db.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        db.pragma_update(
            None,
            "max_page_count",
            (settings.max_db_bytes / page).max(16),
        )?;
    }
    Ok(db)
}

/// Whose database this is: chatd's (by its application id, or an older chatd's by its tables),
/// an empty file, or someone else's. Reads only.
fn owner(db: &Connection) -> rusqlite::Result<Result<(), String>> {
    let app: i32 = db.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app == APPLICATION_ID {
        return Ok(Ok(()));
    }
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let version: u32 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let ours = ["messages", "meta", "rooms"]
        .iter()
        .all(|t| tables.iter().any(|n| n == t));
    if app == 0 && (tables.is_empty() || (ours && (1..=2).contains(&version))) {
        // A new file, or one written by a chatd from before the application id.
        return Ok(Ok(()));
    }
    let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
    Ok(Err(if app != 0 {
        format!(
            "not a chatd database: it belongs to another program (application_id {app:#x}); chatd never writes to it"
        )
    } else {
        format!(
            "not a chatd database: it holds another program's tables ({}); chatd never writes to it",
            shown.join(", ")
        )
    }))
}

/// `PRAGMA quick_check` for at most [`QUICK_CHECK_BUDGET`]: `Err` names what is damaged.
fn integrity(db: &Connection, path: &Path) -> Result<(), ConfigError> {
    let started = Instant::now();
    let _ = db.progress_handler(10_000, Some(move || started.elapsed() > QUICK_CHECK_BUDGET));
    let result: rusqlite::Result<Vec<String>> = db
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let _ = db.progress_handler(0, None::<fn() -> bool>);
    match result {
        Ok(rows) if rows.first().map(String::as_str) == Some("ok") => Ok(()),
        Ok(rows) => Err(path_error(
            path,
            format!(
                "the database is damaged ({}); restore a backup, or move the file away to start afresh",
                rows.join("; ")
            ),
        )),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            warn!(path = %path.display(), "storage: the integrity check took longer than {QUICK_CHECK_BUDGET:?}; checked that far");
            Ok(())
        }
        Err(e) => Err(path_error(path, sqlite_reason(&e))),
    }
}

pub(super) fn open(path: &Path, settings: &StoreSettings) -> Result<Opened, ConfigError> {
    let existed = check_kind(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let err = |e: rusqlite::Error| path_error(path, sqlite_reason(&e));
    // Before WAL or anything else is written: is this file ours, and whole?
    if existed {
        let probe =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        owner(&probe)
            .map_err(err)?
            .map_err(|why| path_error(path, why))?;
        integrity(&probe, path)?;
    }
    let mut writer = connection(path, settings, flags).map_err(err)?;
    let found = schema::migrate_to(&mut writer, schema::VERSION).map_err(|e| match e {
        schema::SchemaError::Newer { .. } => path_error(path, e.to_string()),
        schema::SchemaError::Sqlite(e) => err(e),
    })?;
    if found < schema::VERSION {
        info!(path = %path.display(), from = found, to = schema::VERSION, "storage schema migrated");
    }
    // A write proves the file and its directory are writable (WAL needs both); the first one
    // gives the database its epoch. `running` stays until a graceful stop removes it.
    let unclean = begin_run(&mut writer, settings).map_err(err)?;
    let started = Instant::now();
    let loaded = load(&writer, settings).map_err(err)?;
    let stored: usize = loaded.rooms.iter().map(|r| r.recent.len()).sum();
    info!(
        path = %path.display(),
        rooms = loaded.rooms.len(),
        recent = stored,
        secs = started.elapsed().as_secs_f64(),
        "storage loaded"
    );
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let reader = connection(path, settings, read_only).map_err(err)?;
    let searcher = connection(path, settings, read_only).map_err(err)?;
    let marks = load_marks(&writer, settings).map_err(err)?;
    let unindexed: u64 = writer
        .query_row("SELECT count(*) FROM fts_pending", [], |r| r.get(0))
        .map_err(err)?;
    Ok(Opened {
        writer: Box::new(write::Writer::new(writer)),
        reader: Box::new(read::Reader(reader)),
        searcher: Box::new(read::Reader(searcher)),
        loaded,
        marks,
        unindexed,
        unclean,
    })
}

/// Marks the database as in use (`meta.running`), and if it already was (the last run did not
/// stop cleanly), renumbers: a new epoch for the database and every room, and the next message
/// id past any that may have been handed out uncommitted. True after an unclean stop.
fn begin_run(db: &mut Connection, settings: &StoreSettings) -> rusqlite::Result<bool> {
    let tx = db.transaction()?;
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
        [super::new_epoch()],
    )?;
    let unclean = tx
        .query_row("SELECT 1 FROM meta WHERE key = 'running'", [], |_| Ok(()))
        .optional()?
        .is_some();
    if unclean {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
            [super::new_epoch()],
        )?;
        // Each room its own new epoch (randomblob runs once per row).
        tx.execute("UPDATE rooms SET epoch = lower(hex(randomblob(8)))", [])?;
        let highest: u64 = tx.query_row(
            "SELECT max(
                 COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_id'), 1),
                 COALESCE((SELECT max(id) FROM messages), 0) + 1,
                 COALESCE((SELECT max(id) FROM pms), 0) + 1)",
            [],
            |r| r.get(0),
        )?;
        let skip = uncommitted_bound(settings);
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = ?1",
            [(highest + skip).to_string()],
        )?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('running', ?1)
         ON CONFLICT (key) DO UPDATE SET value = ?1",
        [std::process::id().to_string()],
    )?;
    tx.commit()?;
    Ok(unclean)
}

/// Loads every room's epoch, last seq, oldest stored seq and most recent messages.
fn load(db: &Connection, s: &StoreSettings) -> rusqlite::Result<Loaded> {
    let next_id: u64 = db
        .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rooms = Vec::new();
    let mut stmt = db.prepare(
        "SELECT r.id, r.name, r.epoch, r.last_seq,
                (SELECT MIN(seq) FROM messages
                 WHERE room_id = r.id AND ts >= ?2 AND seq > r.last_seq - ?3),
                (SELECT MAX(id) FROM messages WHERE room_id = r.id) AS latest
         FROM rooms r ORDER BY latest DESC LIMIT ?1",
    )?;
    // Nothing past retention or the per-room cap is warmed, nor counted as stored (the pruner
    // deletes it right after startup; until then no history reply may reach for it).
    let cutoff = retention_cutoff(s).unwrap_or_default();
    let listed: Vec<(i64, String, String, u64, Option<u64>)> = stmt
        .query_map(
            params![s.max_rooms.saturating_sub(1) as i64, cutoff, kept(s)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut recent = db.prepare(&format!(
        "SELECT {COLUMNS} FROM messages m
         WHERE m.room_id = ?1 AND m.ts >= ?3 ORDER BY m.seq DESC LIMIT ?2"
    ))?;
    for (id, name, epoch, last_seq, first) in listed.into_iter().rev() {
        let mut messages: Vec<Message> = recent
            .query_map(params![id, s.recent_per_room as i64, cutoff], |r| {
                message_row(r, &name)
            })?
            .collect::<Result<_, _>>()?;
        messages.reverse();
        keep_newest(&mut messages, s.recent_bytes_per_room);
        with_reactions(db, &mut messages)?;
        rooms.push(LoadedRoom {
            first_seq: first.unwrap_or(last_seq + 1),
            name,
            epoch,
            last_seq,
            recent: messages,
        });
    }
    let epoch: String = db.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })?;
    Ok(Loaded {
        rooms,
        next_id,
        epoch,
    })
}

/// Every room's mark (one indexed lookup per room).
/// Messages past retention do not count (see `load`).
fn load_marks(db: &Connection, s: &StoreSettings) -> rusqlite::Result<HashMap<String, Mark>> {
    let mut stmt = db.prepare(
        "SELECT r.name, r.epoch, r.last_seq,
                COALESCE((SELECT MIN(seq) FROM messages
                          WHERE room_id = r.id AND ts >= ?1 AND seq > r.last_seq - ?2),
                         r.last_seq + 1)
         FROM rooms r",
    )?;
    let cutoff = retention_cutoff(s).unwrap_or_default();
    stmt.query_map(params![cutoff, kept(s)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Mark {
                epoch: r.get::<_, String>(1)?.into(),
                last_seq: r.get(2)?,
                first_seq: r.get(3)?,
            },
        ))
    })?
    .collect()
}

/// Checks `storage.path` without changing anything (for `chatd check-config`): an existing file
/// must be a regular file, a chatd database this binary can read, and undamaged; a missing one
/// must be creatable.
pub(super) fn check(path: &Path) -> Result<(), ConfigError> {
    if check_kind(path)? {
        let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| path_error(path, sqlite_reason(&e)))?;
        owner(&db)
            .map_err(|e| path_error(path, sqlite_reason(&e)))?
            .map_err(|why| path_error(path, why))?;
        let version: u32 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| path_error(path, sqlite_reason(&e)))?;
        if version > schema::VERSION {
            return Err(path_error(
                path,
                schema::SchemaError::Newer { found: version }.to_string(),
            ));
        }
        return integrity(&db, path);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(".chatd-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| path_error(path, format!("cannot create it in {}: {e}", dir.display())))
}

/// The accounts in the file at `path`: checked like the store's (chatd's, undamaged) and
/// migrated, on a connection of their own.
pub(super) fn accounts(
    path: &Path,
    settings: &StoreSettings,
) -> Result<Box<dyn super::accounts::AccountsDb>, ConfigError> {
    let err = |e: rusqlite::Error| path_error(path, sqlite_reason(&e));
    if check_kind(path)? {
        let probe =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        owner(&probe)
            .map_err(err)?
            .map_err(|why| path_error(path, why))?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut db = connection(path, settings, flags).map_err(err)?;
    schema::migrate_to(&mut db, schema::VERSION).map_err(|e| match e {
        schema::SchemaError::Newer { .. } => path_error(path, e.to_string()),
        schema::SchemaError::Sqlite(e) => err(e),
    })?;
    Ok(Box::new(accounts::Accounts(db)))
}

/// For tests of migrations: creates a database at an older schema version.
pub(super) fn create_at_version(path: &Path, version: u32) -> Result<(), String> {
    let mut db = Connection::open(path).map_err(|e| e.to_string())?;
    schema::migrate_to(&mut db, version)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The columns [`message_row`] reads, from `messages m`.
pub(super) const COLUMNS: &str = "m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action, \
     m.reply_to, m.edited_ts, m.deleted, m.kind, m.target, m.emoji, m.added";

/// A `messages` row ([`COLUMNS`]) in `room`.
fn message_row(r: &rusqlite::Row<'_>, room: &str) -> rusqlite::Result<Message> {
    Ok(ChatMessage {
        id: r.get(0)?,
        seq: r.get(1)?,
        ts: r.get::<_, String>(2)?.into(),
        room: room.to_string().into(),
        from: r.get::<_, String>(3)?.into(),
        role: role_of(&r.get::<_, String>(4)?),
        text: r.get::<_, String>(5)?.into(),
        action: r.get(6)?,
        reply_to: r.get(7)?,
        edited_ts: r.get::<_, Option<String>>(8)?.map(Into::into),
        deleted: r.get(9)?,
        reactions: Vec::new(),
        change: super::rows::change_of(
            r.get::<_, Option<String>>(10)?.as_deref(),
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
        ),
    })
}

/// Reads the reactions to `rows` (a room's, in seq order).
fn with_reactions(db: &Connection, rows: &mut [Message]) -> rusqlite::Result<()> {
    let Some((lo, hi)) = super::rows::id_span(rows) else {
        return Ok(());
    };
    let found: Vec<(u64, String, String)> = db
        .prepare_cached(
            "SELECT msg, emoji, name FROM reactions WHERE msg BETWEEN ?1 AND ?2 ORDER BY at",
        )?
        .query_map(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    super::rows::attach(rows, found.into_iter());
    Ok(())
}
