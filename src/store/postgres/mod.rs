//! The PostgreSQL store (`storage.url`): the durable home a cluster shares, and a single node's
//! alternative to the file. The same three threads hold a connection each (the synchronous
//! `postgres` client: the store's threads already block on their database, so a pool and an async
//! runtime would add nothing but a second way of waiting). Each connection comes back by itself
//! after PostgreSQL went away: until then writes fail (new messages are refused, `/readyz` is
//! 503) and reads answer `unavailable`.
//!
//! - A single node takes an exclusive advisory lock on the database, cluster nodes a shared one:
//!   two numberings never write to one database.
//! - A single node keeps the numbering as SQLite does (`meta.running`, a new epoch and skipped
//!   ids after an unclean stop). In a cluster Redis numbers, and seeds itself from here when it
//!   has lost a room or the id counter (`Query::Mark`).
//! - Every statement runs under a `statement_timeout`: a search under `storage.search_budget_ms`
//!   (then "too broad"), everything else under [`STATEMENT_TIMEOUT`], so a stuck server shows as a
//!   failing store rather than a hung thread.

mod accounts;
mod keys;
mod policy;
mod read;
mod schema;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::{Client, NoTls};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::info;

use super::{
    Loaded, LoadedRoom, Mark, Message, Opened, PostgresPlace, StoreSettings, keep_newest, kept,
    retention_cutoff, role_of, uncommitted_bound,
};
use crate::config::{ConfigError, SecretUrl};
use crate::protocol::ChatMessage;

/// The longest any statement but a search may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock that keeps numberings apart: exclusive for a single node, shared for
/// cluster nodes.
const NUMBERING_LOCK: i64 = 0x6368_6174_0002;

fn url_error(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: "storage.url",
        reason: reason.into(),
    }
}

/// What a failed statement says, with PostgreSQL's own message when it has one.
fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let text = e.to_string();
            match std::error::Error::source(e) {
                Some(cause) => format!("{text}: {cause}"),
                None => text,
            }
        }
    }
}

/// A connection that comes back after PostgreSQL went away: [`Conn::client`] connects again
/// when it is closed, and runs the thread's setup (its timeout, its lock).
pub(super) struct Conn {
    config: postgres::Config,
    /// TLS, when the URL asks for it.
    tls: Option<MakeRustlsConnect>,
    client: Option<Client>,
    /// Set on every new connection: `SET` statements, and for the writer its lock.
    setup: String,
}

/// Where to connect: the URL, with the password from `storage.password_file` when one is named,
/// and TLS when the URL asks for it (`sslmode=require`): verified against `storage.ca_cert`, or
/// the system's roots. Otherwise the connection is plain (`prefer`, the default, does not try
/// TLS: a server's certificate chatd cannot verify is no better than none).
fn connect_config(
    pg: &PostgresPlace,
) -> Result<(postgres::Config, Option<MakeRustlsConnect>), ConfigError> {
    let mut config: postgres::Config = pg
        .url
        .expose()
        .parse()
        .map_err(|e| url_error(format!("is not a PostgreSQL URL: {e}")))?;
    if let Some(file) = &pg.password_file {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::File {
            key: "storage.password_file",
            path: file.display().to_string(),
            reason: crate::config::read_error(&e),
        })?;
        config.password(text.lines().next().unwrap_or_default());
    }
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
        return Ok((config, None));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &pg.ca_cert {
        Some(path) => {
            let bad = |e: String| ConfigError::File {
                key: "storage.ca_cert",
                path: path.display().to_string(),
                reason: e,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(url_error(
            "sslmode=require, and no root certificate to verify PostgreSQL's with: set storage.ca_cert",
        ));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| url_error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((config, Some(MakeRustlsConnect::new(tls))))
}

impl Conn {
    fn new(
        (mut config, tls): (postgres::Config, Option<MakeRustlsConnect>),
        setup: String,
    ) -> Conn {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("chatd");
        Conn {
            config,
            tls,
            client: None,
            setup,
        }
    }

    /// The connection, made again if it was lost.
    pub(super) fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let connected = match &self.tls {
                Some(tls) => self.config.connect(tls.clone()),
                None => self.config.connect(NoTls),
            };
            let mut client = connected.map_err(|e| format!("cannot connect: {}", reason(&e)))?;
            client.batch_execute(&self.setup).map_err(|e| reason(&e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// After a failure: a closed connection is dropped, so the next use connects again.
    pub(super) fn check(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }
}

/// `SET statement_timeout` for `limit`.
fn timeout_setup(limit: Duration) -> String {
    format!("SET statement_timeout = {};", limit.as_millis().max(1))
}

/// Runs `f` on a thread of its own: the synchronous client runs a runtime of its own, which may
/// not start (or stop) on a thread that is inside the server's.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The accounts in the database `pg` names, on a connection of their own (made on first use, on
/// the thread that uses it: the synchronous client may not be made inside the server's runtime).
pub(super) fn accounts(
    pg: &PostgresPlace,
) -> Result<Box<dyn super::accounts::AccountsDb>, ConfigError> {
    let conn = Conn::new(connect_config(pg)?, timeout_setup(STATEMENT_TIMEOUT));
    Ok(Box::new(accounts::Accounts {
        conn,
        migrated: false,
    }))
}

pub(super) fn open(pg: &PostgresPlace, settings: &StoreSettings) -> Result<Opened, ConfigError> {
    let config = connect_config(pg)?;
    off_runtime(|| open_here(&pg.url, config, settings))
}

fn open_here(
    url: &SecretUrl,
    config: (postgres::Config, Option<MakeRustlsConnect>),
    settings: &StoreSettings,
) -> Result<Opened, ConfigError> {
    let lock = if settings.shared {
        "SELECT pg_try_advisory_lock_shared"
    } else {
        "SELECT pg_try_advisory_lock"
    };
    let mut writer = Conn::new(config.clone(), timeout_setup(STATEMENT_TIMEOUT));
    let err = |e: postgres::Error| url_error(format!("{url}: {}", reason(&e)));
    let db = writer
        .client()
        .map_err(|e| url_error(format!("{url}: {e}")))?;
    let found = schema::migrate(db).map_err(|e| match e {
        schema::SchemaError::Postgres(e) => err(e),
        other => url_error(format!("{url}: {other}")),
    })?;
    if found < schema::VERSION {
        info!(store = %url, from = found, to = schema::VERSION, "storage schema migrated");
    }
    let locked: bool = db
        .query_one(&format!("{lock}($1)"), &[&NUMBERING_LOCK])
        .map_err(err)?
        .get(0);
    if !locked {
        return Err(url_error(format!(
            "{url}: another chatd uses this database with another numbering ({}); give each single node, or each cluster, a database of its own",
            if settings.shared {
                "a single node"
            } else {
                "a single node or a cluster"
            }
        )));
    }
    // Every reconnection takes the lock again.
    writer.setup = format!(
        "{}{lock}({NUMBERING_LOCK});",
        timeout_setup(STATEMENT_TIMEOUT)
    );
    let db = writer.client().map_err(url_error)?;
    let unclean = if settings.shared {
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING",
            &[&super::new_epoch()],
        )
        .map_err(err)?;
        false
    } else {
        begin_run(db, settings).map_err(err)?
    };
    let loaded = load(db, settings).map_err(err)?;
    let marks = if settings.shared {
        HashMap::new()
    } else {
        load_marks(db, settings).map_err(err)?
    };
    let unindexed = db
        .query_one("SELECT count(*) FROM words_pending", &[])
        .map_err(err)?
        .get::<_, i64>(0) as u64;
    info!(store = %url, rooms = loaded.rooms.len(), shared = settings.shared, "storage loaded");
    let reader = Conn::new(config.clone(), timeout_setup(STATEMENT_TIMEOUT));
    let searcher = Conn::new(config, timeout_setup(settings.search_budget));
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

/// As SQLite's: marks the database in use, and after an unclean stop renumbers (a new epoch for
/// the database and every room, ids skipping what may have been handed out uncommitted).
fn begin_run(db: &mut Client, settings: &StoreSettings) -> Result<bool, postgres::Error> {
    let mut tx = db.transaction()?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING",
        &[&super::new_epoch()],
    )?;
    let unclean = tx
        .query_opt("SELECT 1 FROM meta WHERE key = 'running'", &[])?
        .is_some();
    if unclean {
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'epoch'",
            &[&super::new_epoch()],
        )?;
        tx.execute(
            "UPDATE rooms SET epoch = substr(md5(random()::text || id::text), 1, 16)",
            &[],
        )?;
        let highest: i64 = tx.query_one(NEXT_ID, &[])?.get(0);
        let next = highest + uncommitted_bound(settings) as i64;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&next.to_string()],
        )?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('running', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&std::process::id().to_string()],
    )?;
    tx.commit()?;
    Ok(unclean)
}

/// The next message id: past the recorded one and every stored id.
const NEXT_ID: &str = "SELECT GREATEST(
        COALESCE((SELECT value::bigint FROM meta WHERE key = 'next_id'), 1),
        COALESCE((SELECT max(id) FROM messages), 0) + 1,
        COALESCE((SELECT max(id) FROM pms), 0) + 1)";

/// What a single node loads (as SQLite's `load`); a cluster node loads only the ids.
fn load(db: &mut Client, s: &StoreSettings) -> Result<Loaded, postgres::Error> {
    let next_id = db.query_one(NEXT_ID, &[])?.get::<_, i64>(0) as u64;
    let epoch: String = db
        .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])?
        .get(0);
    if s.shared {
        return Ok(Loaded {
            rooms: Vec::new(),
            next_id,
            epoch,
        });
    }
    let cutoff = retention_cutoff(s).unwrap_or_default();
    let listed = db.query(
        "SELECT r.id, r.name, r.epoch, r.last_seq,
                (SELECT MIN(seq) FROM messages
                 WHERE room_id = r.id AND ts >= $2 AND seq > r.last_seq - $3),
                (SELECT MAX(id) FROM messages WHERE room_id = r.id) AS latest
         FROM rooms r ORDER BY latest DESC NULLS LAST LIMIT $1",
        &[&(s.max_rooms.saturating_sub(1) as i64), &cutoff, &kept(s)],
    )?;
    let recent = db.prepare(&format!(
        "SELECT {COLUMNS} FROM messages m
         WHERE m.room_id = $1 AND m.ts >= $3 ORDER BY m.seq DESC LIMIT $2"
    ))?;
    let mut rooms = Vec::new();
    for row in listed.into_iter().rev() {
        let (id, name, epoch): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let last_seq = row.get::<_, i64>(3) as u64;
        let first: Option<i64> = row.get(4);
        let mut messages: Vec<Message> = db
            .query(&recent, &[&id, &(s.recent_per_room as i64), &cutoff])?
            .iter()
            .map(|r| message_row(r, &name))
            .collect();
        messages.reverse();
        keep_newest(&mut messages, s.recent_bytes_per_room);
        with_reactions(db, &mut messages)?;
        rooms.push(LoadedRoom {
            first_seq: first.map_or(last_seq + 1, |f| f as u64),
            name,
            epoch,
            last_seq,
            recent: messages,
        });
    }
    Ok(Loaded {
        rooms,
        next_id,
        epoch,
    })
}

/// Every room's mark (as SQLite's `load_marks`).
fn load_marks(
    db: &mut Client,
    s: &StoreSettings,
) -> Result<HashMap<String, Mark>, postgres::Error> {
    let cutoff = retention_cutoff(s).unwrap_or_default();
    Ok(db
        .query(
            "SELECT r.name, r.epoch, r.last_seq,
                    COALESCE((SELECT MIN(seq) FROM messages
                              WHERE room_id = r.id AND ts >= $1 AND seq > r.last_seq - $2),
                             r.last_seq + 1)
             FROM rooms r",
            &[&cutoff, &kept(s)],
        )?
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Mark {
                    epoch: r.get::<_, String>(1).into(),
                    last_seq: r.get::<_, i64>(2) as u64,
                    first_seq: r.get::<_, i64>(3) as u64,
                },
            )
        })
        .collect())
}

/// `chatd check-config`: the database answers, and holds nothing newer or foreign.
pub(super) fn check(pg: &PostgresPlace) -> Result<(), ConfigError> {
    let url = &pg.url;
    let config = connect_config(pg)?;
    off_runtime(|| {
        let mut conn = Conn::new(config, timeout_setup(STATEMENT_TIMEOUT));
        let db = conn
            .client()
            .map_err(|e| url_error(format!("{url}: {e}")))?;
        let found = schema::version(db).map_err(|e| url_error(format!("{url}: {e}")))?;
        if found > schema::VERSION {
            return Err(url_error(format!(
                "{url}: {}",
                schema::SchemaError::Newer { found }
            )));
        }
        Ok(())
    })
}

/// The columns [`message_row`] reads, from `messages m`.
pub(super) const COLUMNS: &str = "m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action, \
     m.reply_to, m.edited_ts, m.deleted, m.kind, m.target, m.emoji, m.added";

/// A `messages` row ([`COLUMNS`]) in `room`.
fn message_row(r: &postgres::Row, room: &str) -> Message {
    ChatMessage {
        id: r.get::<_, i64>(0) as u64,
        seq: r.get::<_, i64>(1) as u64,
        ts: r.get::<_, String>(2).into(),
        room: room.to_string().into(),
        from: r.get::<_, String>(3).into(),
        role: role_of(r.get(4)),
        text: r.get::<_, String>(5).into(),
        action: r.get(6),
        reply_to: r.get::<_, Option<i64>>(7).map(|id| id as u64),
        edited_ts: r.get::<_, Option<String>>(8).map(Into::into),
        deleted: r.get(9),
        reactions: Vec::new(),
        change: super::rows::change_of(r.get(10), r.get(11), r.get(12), r.get(13)),
    }
}

/// Reads the reactions to `rows` (a room's, in seq order).
fn with_reactions(db: &mut postgres::Client, rows: &mut [Message]) -> Result<(), postgres::Error> {
    let Some((lo, hi)) = super::rows::id_span(rows) else {
        return Ok(());
    };
    let found = db.query(
        "SELECT msg, emoji, name FROM reactions WHERE msg BETWEEN $1 AND $2 ORDER BY at",
        &[&lo, &hi],
    )?;
    let found = found
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2)));
    super::rows::attach(rows, found);
    Ok(())
}
