//! Durable history: every accepted message (and, when names are owned, every PM) in an embedded
//! SQLite database (`storage.path`), written by one thread in batches, read by another.
//!
//! - Writes never run on the chat thread and never make a publisher wait: [`Store::append`] queues
//!   a message (bounded in messages and bytes) and returns; the writer commits one transaction per
//!   `storage.commit_interval_ms` (or per 5,000 messages). A full queue refuses the message, so a
//!   `say` is either stored or refused, never accepted and silently lost.
//! - Durability: a graceful stop flushes the queue ([`Store::close`]); after a kill or power loss
//!   at most the last commit interval of acknowledged messages is lost (`synchronous = FULL`).
//! - A write that fails (disk full, I/O error) is logged once per burst, counted
//!   (`chatd_storage_errors_total`), marks the store unhealthy (`/readyz` 503) and is retried
//!   every second until it succeeds.
//! - Reads (paging back past memory, catching up after a reconnect, search, PM history) run on the
//!   reader thread through [`Store::read`]; the broker answers those requests late.
//! - A pruner (in the writer, every `storage.prune_interval_secs`) enforces `retention_days` and
//!   `max_messages_per_room`.

mod schema;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::{ChatMessage, Role};

/// A stored room message.
pub type Message = ChatMessage<'static>;

/// Messages committed in one transaction at most.
const BATCH: usize = 5_000;
/// Read requests that may wait for the reader; past this they get `unavailable`.
const READ_QUEUE: usize = 256;
/// Messages indexed for search per transaction: the indexer runs between commits, so this
/// bounds how long a commit can wait for it (about 15 ms).
const INDEX_CHUNK: i64 = 500;
/// A search waits for the index to catch up when it is at most this far behind.
pub const INDEX_CATCH_UP: u64 = 10_000;
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What a stored message costs in memory, in bytes: its strings plus the fixed part of its record.
pub fn message_cost(m: &Message) -> usize {
    const FIXED: usize = 160;
    FIXED + m.text.len() + m.from.len() + m.room.len() + m.ts.len()
}

/// A stored private message.
#[derive(Debug, Clone, PartialEq)]
pub struct Pm {
    /// Message id (shared with room messages).
    pub id: u64,
    /// When it was sent.
    pub ts: String,
    /// Sender, as spelled.
    pub from: String,
    /// Recipient, as spelled.
    pub to: String,
    /// The sender's role.
    pub role: Role,
    /// Text.
    pub text: String,
    /// `/me`.
    pub action: bool,
}

/// A room as it was when chatd stopped.
#[derive(Debug, Clone)]
pub struct LoadedRoom {
    /// Normalised name.
    pub name: String,
    /// Its seq numbering's epoch.
    pub epoch: String,
    /// The last seq given out.
    pub last_seq: u64,
    /// The oldest seq still stored (`last_seq + 1` when none is).
    pub first_seq: u64,
    /// The most recent messages, oldest first.
    pub recent: Vec<Message>,
}

/// Where a stored room's numbering stands: kept for every room the database knows (about 100
/// bytes each), so a room evicted from memory and created again continues its seq and epoch.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Its seq numbering's epoch.
    pub epoch: Arc<str>,
    /// The oldest seq still stored.
    pub first_seq: u64,
    /// The last seq given out.
    pub last_seq: u64,
}

/// Every stored room's mark, by name.
type Marks = Mutex<HashMap<String, Mark>>;

/// What the store holds at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rooms with stored history, most recently active last (at most `max_rooms − 1`).
    pub rooms: Vec<LoadedRoom>,
    /// The next message id to give out.
    pub next_id: u64,
    /// The database's own epoch: rooms it has no record of number from here (so a room that
    /// never had a message keeps its epoch across restarts, and a new database changes it).
    pub epoch: String,
}

/// `[storage]` settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The database file.
    pub path: PathBuf,
    /// Longest time an accepted message waits to be committed.
    pub commit_interval: Duration,
    /// Messages older than this are pruned (`None`: kept forever).
    pub retention: Option<Duration>,
    /// Messages kept per room at most (0: unlimited).
    pub max_messages_per_room: u64,
    /// The most the database may grow to, in bytes (0: unlimited).
    pub max_db_bytes: u64,
    /// Bytes of messages that may wait for the writer.
    pub queue_bytes: usize,
    /// How often the pruner runs.
    pub prune_interval: Duration,
    /// Messages loaded into memory per room at startup.
    pub recent_per_room: usize,
    /// Bytes loaded into memory per room at startup, at most.
    pub recent_bytes_per_room: usize,
    /// Rooms loaded at startup, at most.
    pub max_rooms: usize,
}

impl StoreSettings {
    /// The settings a configuration makes, or `None` when history is kept in memory only.
    pub fn from_config(config: &Config) -> Option<StoreSettings> {
        let s = &config.storage;
        if s.path.is_empty() {
            return None;
        }
        Some(StoreSettings {
            path: PathBuf::from(&s.path),
            commit_interval: Duration::from_millis(s.commit_interval_ms),
            retention: (s.retention_days > 0)
                .then(|| Duration::from_secs(s.retention_days * 86_400)),
            max_messages_per_room: s.max_messages_per_room,
            max_db_bytes: s.max_db_bytes,
            queue_bytes: s.queue_bytes,
            prune_interval: Duration::from_secs_f64(s.prune_interval_secs),
            recent_per_room: config.history.size,
            recent_bytes_per_room: config.history.max_bytes_per_room,
            max_rooms: config.limits.max_rooms,
        })
    }
}

/// An operation for the writer.
enum Write {
    Message {
        msg: Arc<Message>,
        epoch: Arc<str>,
    },
    Pm(Box<Pm>),
    /// Commit everything before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
    /// A read that must see every write queued before it: handed to the reader once the batch
    /// it arrived in is committed (it does not shorten the batch, so reads cost no extra fsync).
    /// A search also waits for those writes to be indexed, unless the index is far behind.
    Read {
        job: ReadJob,
        search: bool,
    },
}

impl Write {
    fn bytes(&self) -> usize {
        match self {
            Write::Message { msg, .. } => msg.text.len() + msg.from.len() + 96,
            Write::Pm(pm) => pm.text.len() + pm.from.len() + pm.to.len() + 96,
            Write::Flush(_) | Write::Read { .. } => 0,
        }
    }
}

/// The writer's queue: bounded in bytes, so a burst of large messages cannot grow it without end.
struct Queue {
    items: Mutex<QueueState>,
    ready: Condvar,
    max_bytes: usize,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Write>,
    bytes: usize,
    closed: bool,
    /// The writer holds a batch it has not committed yet.
    in_flight: bool,
    /// The writer sleeps until there is work: the next push wakes it. While it gathers a batch
    /// it is not woken per message (a futex wake per `say` would cost the chat thread more than
    /// queuing does), only when a full batch waits.
    idle: bool,
}

impl QueueState {
    /// Whether a push just made must wake the writer.
    fn wake(&mut self) -> bool {
        let wake = self.idle || self.items.len() == BATCH;
        self.idle = false;
        wake
    }
}

/// A read for the reader thread.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Counters the store keeps.
#[derive(Debug, Clone)]
struct StoreMetrics {
    errors: IntCounter,
    rejected: IntCounter,
    queued: IntGauge,
    unindexed: IntGauge,
}

/// The durable store. Cheap to share; one per server.
pub struct Store {
    queue: Arc<Queue>,
    reads: std::sync::mpsc::SyncSender<ReadJob>,
    healthy: Arc<AtomicBool>,
    /// Every stored room's numbering (the pruner keeps `first_seq` current).
    marks: Arc<Marks>,
    /// Stored messages not yet in the search index.
    unindexed: Arc<AtomicU64>,
    metrics: StoreMetrics,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pending_reads: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

/// The error an unusable `storage.path` becomes: it names the key and the file.
fn path_error(settings: &StoreSettings, reason: impl Into<String>) -> ConfigError {
    ConfigError::File {
        key: "storage.path",
        path: settings.path.display().to_string(),
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

fn open_connection(settings: &StoreSettings, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let db = Connection::open_with_flags(&settings.path, flags)?;
    db.busy_timeout(Duration::from_secs(5))?;
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

impl Store {
    /// Opens (creating or migrating) the database and loads what chat needs in memory. Every
    /// failure names `storage.path` and the reason: not a database, corrupt, written by a newer
    /// chatd, or not writable.
    pub fn open(
        settings: StoreSettings,
        metrics: &Metrics,
    ) -> Result<(Store, Loaded), ConfigError> {
        if settings.path.is_dir() {
            return Err(path_error(&settings, "is a directory, not a database file"));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = open_connection(&settings, flags)
            .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        let found = schema::migrate_to(&mut writer, schema::VERSION).map_err(|e| match e {
            schema::SchemaError::Newer { .. } => path_error(&settings, e.to_string()),
            schema::SchemaError::Sqlite(e) => path_error(&settings, sqlite_reason(&e)),
        })?;
        if found < schema::VERSION {
            info!(path = %settings.path.display(), from = found, to = schema::VERSION, "storage schema migrated");
        }
        // A write proves the file and its directory are writable (WAL needs both); the first
        // one gives the database its epoch.
        writer
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
                [format!("{:016x}", fastrand::u64(..))],
            )
            .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        let started = Instant::now();
        let loaded =
            load(&writer, &settings).map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        let stored: usize = loaded.rooms.iter().map(|r| r.recent.len()).sum();
        info!(
            path = %settings.path.display(),
            rooms = loaded.rooms.len(),
            recent = stored,
            secs = started.elapsed().as_secs_f64(),
            "storage loaded"
        );
        let reader = open_connection(
            &settings,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        let marks = Arc::new(Mutex::new(
            load_marks(&writer, &settings).map_err(|e| path_error(&settings, sqlite_reason(&e)))?,
        ));
        let store_metrics = StoreMetrics {
            errors: metrics.storage_errors.clone(),
            rejected: metrics.storage_rejected.clone(),
            queued: metrics.storage_queued.clone(),
            unindexed: metrics.search_unindexed.clone(),
        };
        let unindexed: u64 = writer
            .query_row("SELECT count(*) FROM fts_pending", [], |r| r.get(0))
            .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        store_metrics.unindexed.set(unindexed as i64);
        let unindexed = Arc::new(AtomicU64::new(unindexed));
        let queue = Arc::new(Queue {
            items: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            max_bytes: settings.queue_bytes,
        });
        let healthy = Arc::new(AtomicBool::new(true));
        let (reads, read_jobs) = std::sync::mpsc::sync_channel::<ReadJob>(READ_QUEUE);
        let pending_reads = Arc::new(AtomicUsize::new(0));
        let writer_thread = {
            let writer_state = Writer {
                settings,
                queue: queue.clone(),
                healthy: healthy.clone(),
                marks: marks.clone(),
                metrics: store_metrics.clone(),
                to_reader: reads.clone(),
                unindexed: unindexed.clone(),
            };
            std::thread::Builder::new()
                .name("chatd-store-writer".into())
                .spawn(move || {
                    background_priority();
                    writer_state.run(writer)
                })
                .map_err(|e| ConfigError::Invalid {
                    key: "storage.path",
                    reason: format!("cannot start the writer thread: {e}"),
                })?
        };
        let reader_thread = {
            let pending = pending_reads.clone();
            std::thread::Builder::new()
                .name("chatd-store-reader".into())
                .spawn(move || {
                    background_priority();
                    for job in read_jobs {
                        job(&reader);
                        pending.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| ConfigError::Invalid {
                    key: "storage.path",
                    reason: format!("cannot start the reader thread: {e}"),
                })?
        };
        Ok((
            Store {
                queue,
                reads,
                healthy,
                marks,
                unindexed,
                metrics: store_metrics,
                threads: Mutex::new(vec![writer_thread, reader_thread]),
                pending_reads,
            },
            loaded,
        ))
    }

    fn push(&self, op: Write) -> bool {
        let bytes = op.bytes();
        let mut state = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed || state.bytes + bytes > self.queue.max_bytes {
            drop(state);
            self.metrics.rejected.inc();
            return false;
        }
        state.bytes += bytes;
        state.items.push_back(op);
        self.metrics.queued.set(state.items.len() as i64);
        let wake = state.wake();
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
        true
    }

    /// Queues a room message for writing; false if the writer is too far behind (the caller
    /// refuses the message).
    pub fn append(&self, msg: Arc<Message>, epoch: Arc<str>) -> bool {
        let (room, seq, e) = (msg.room.clone(), msg.seq, epoch.clone());
        if !self.push(Write::Message { msg, epoch }) {
            return false;
        }
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match marks.get_mut(&*room) {
            Some(mark) => mark.last_seq = mark.last_seq.max(seq),
            None => {
                // A room's first stored message: its history reaches back to here from now on.
                marks.insert(
                    room.to_string(),
                    Mark {
                        epoch: e,
                        first_seq: seq,
                        last_seq: seq,
                    },
                );
            }
        }
        true
    }

    /// Queues a private message for writing; false if the writer is too far behind.
    pub fn append_pm(&self, pm: Pm) -> bool {
        self.push(Write::Pm(Box::new(pm)))
    }

    /// Runs `job` on the reader thread once every write queued before it is committed (so a
    /// read sees every acknowledged message); false if too many reads are waiting.
    pub fn read(&self, job: impl FnOnce(&Connection) + Send + 'static) -> bool {
        self.queue_read(Box::new(job), false)
    }

    /// As [`Store::read`], for a search: it also waits until those writes are in the search
    /// index (unless the index is more than [`INDEX_CATCH_UP`] messages behind: then it sees
    /// what is indexed).
    pub fn search(&self, job: impl FnOnce(&Connection) + Send + 'static) -> bool {
        self.queue_read(Box::new(job), true)
    }

    fn queue_read(&self, job: ReadJob, search: bool) -> bool {
        if self.pending_reads.fetch_add(1, Ordering::Relaxed) >= READ_QUEUE {
            self.pending_reads.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let mut state = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            drop(state);
            self.pending_reads.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let behind = search && self.unindexed.load(Ordering::Relaxed) > 0;
        if state.items.is_empty() && !state.in_flight && !behind {
            // Nothing uncommitted (or unindexed): straight to the reader.
            drop(state);
            if self.reads.try_send(job).is_err() {
                self.pending_reads.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            return true;
        }
        state.items.push_back(Write::Read { job, search });
        let wake = state.wake();
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
        true
    }

    /// Whether the last write succeeded (`/readyz`).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A handle on the health flag, for the admin listener.
    pub fn health(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// The oldest seq of `room` still stored, if the store knows the room.
    pub fn first_seq(&self, room: &str) -> Option<u64> {
        self.mark(room).map(|m| m.first_seq)
    }

    /// Where `room`'s numbering stands, if the store knows the room.
    pub fn mark(&self, room: &str) -> Option<Mark> {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)
            .cloned()
    }

    /// Commits everything queued and stops the threads (a graceful stop: every acknowledged
    /// message is on disk afterwards). Waits at most `limit` for the writer.
    pub fn close(&self, limit: Duration) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        {
            let mut state = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
            state.items.push_back(Write::Flush(done));
            state.closed = true;
        }
        self.queue.ready.notify_one();
        if wait.recv_timeout(limit).is_err() {
            warn!(
                "storage: the writer did not finish within {limit:?}; recent messages may be lost"
            );
            return;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            // The reader ends with the last sender; the writer has answered the flush.
            drop(t);
        }
    }
}

/// Checks `storage.path` without changing anything (for `chatd check-config`): an existing file
/// must be a chatd database this binary can read; a missing one must be creatable.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let Some(settings) = StoreSettings::from_config(config) else {
        return Ok(());
    };
    let path = &settings.path;
    if path.is_dir() {
        return Err(path_error(&settings, "is a directory, not a database file"));
    }
    if path.exists() {
        let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        let version: u32 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .and_then(|v| {
                db.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|_| v)
            })
            .map_err(|e| path_error(&settings, sqlite_reason(&e)))?;
        if version > schema::VERSION {
            return Err(path_error(
                &settings,
                schema::SchemaError::Newer { found: version }.to_string(),
            ));
        }
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(".chatd-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            path_error(
                &settings,
                format!("cannot create it in {}: {e}", dir.display()),
            )
        })
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
    let mut recent = db.prepare(
        "SELECT id, seq, ts, sender, role, text, action FROM messages
         WHERE room_id = ?1 AND ts >= ?3 ORDER BY seq DESC LIMIT ?2",
    )?;
    for (id, name, epoch, last_seq, first) in listed.into_iter().rev() {
        let mut messages: Vec<Message> = recent
            .query_map(params![id, s.recent_per_room as i64, cutoff], |r| {
                message_row(r, &name)
            })?
            .collect::<Result<_, _>>()?;
        messages.reverse();
        // Within the per-room byte bound too, newest kept.
        let mut bytes = 0;
        let keep = messages
            .iter()
            .rev()
            .take_while(|m| {
                bytes += message_cost(m);
                bytes <= s.recent_bytes_per_room
            })
            .count();
        messages.drain(..messages.len() - keep);
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Admin => "admin",
    }
}

fn role_of(name: &str) -> Role {
    if name == "admin" {
        Role::Admin
    } else {
        Role::User
    }
}

/// A `messages` row (id, seq, ts, sender, role, text, action) in `room`.
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
    })
}

/// The store's threads run at a lower priority than the chat (nice 10): when they compete for a
/// core, a waking connection preempts a commit or an indexing chunk at once, so the disk adds
/// throughput cost but not latency to chat. Their work is batched and queued, so running later
/// costs nothing but delay. Where the call is not allowed (a seccomp filter), they run as they
/// are.
fn background_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "storage: cannot lower the store threads' priority");
    }
}

/// The writer thread's world.
struct Writer {
    settings: StoreSettings,
    queue: Arc<Queue>,
    healthy: Arc<AtomicBool>,
    marks: Arc<Marks>,
    metrics: StoreMetrics,
    to_reader: std::sync::mpsc::SyncSender<ReadJob>,
    unindexed: Arc<AtomicU64>,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.queue.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader queue has room for every read admitted (`Store::read` counts them), so this
    /// send never waits long.
    fn forward(&self, job: ReadJob) {
        let _ = self.to_reader.send(job);
    }

    /// Indexes up to [`INDEX_CHUNK`] stored messages for search; false when none was waiting
    /// (or indexing failed: it is tried again after the next commit).
    fn index_some(&self, db: &mut Connection) -> bool {
        if self.unindexed.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let indexed = (|| -> rusqlite::Result<usize> {
            let tx = db.transaction()?;
            // Every pending id has its message (deleting a message deletes its pending row).
            let n = tx
                .prepare_cached(
                    "INSERT INTO messages_fts (rowid, text)
                 SELECT m.id, m.text FROM fts_pending p JOIN messages m ON m.id = p.id
                 ORDER BY p.id LIMIT ?1",
                )?
                .execute([INDEX_CHUNK])?;
            tx.prepare_cached(
                "DELETE FROM fts_pending WHERE id IN (SELECT id FROM fts_pending ORDER BY id LIMIT ?1)",
            )?
            .execute([INDEX_CHUNK])?;
            tx.commit()?;
            Ok(n)
        })();
        match indexed {
            Ok(0) => {
                self.set_unindexed(0);
                false
            }
            Ok(n) => {
                let left = self
                    .unindexed
                    .load(Ordering::Relaxed)
                    .saturating_sub(n as u64);
                self.set_unindexed(left);
                true
            }
            Err(e) => {
                warn!(error = %e, "storage: indexing for search failed; trying again later");
                false
            }
        }
    }

    fn set_unindexed(&self, n: u64) {
        self.unindexed.store(n, Ordering::Relaxed);
        self.metrics.unindexed.set(n as i64);
    }

    /// Waits for work (indexing meanwhile), gathers a batch for up to one commit interval,
    /// commits it; prunes when due.
    fn run(self, mut db: Connection) {
        let s = &self.settings;
        let mut rooms: HashMap<String, i64> = HashMap::new();
        // The first run is at startup: what retention no longer keeps goes at once.
        let mut next_prune = Instant::now();
        let mut failing = false;
        loop {
            let mut batch = Vec::new();
            let mut state = self.lock();
            // Until there is work or the pruner is due: index, or sleep.
            while state.items.is_empty() && !state.closed {
                let wait = next_prune.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                if !failing {
                    drop(state);
                    let indexed = self.index_some(&mut db);
                    state = self.lock();
                    if indexed {
                        continue;
                    }
                }
                state.idle = true;
                state = self
                    .queue
                    .ready
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            state.idle = false;
            if !state.items.is_empty() {
                // Let one commit interval's worth gather behind the first (less, when a full
                // batch waits or chatd is stopping), indexing meanwhile; then take a batch.
                let deadline = Instant::now() + s.commit_interval;
                loop {
                    let now = Instant::now();
                    if state.items.len() >= BATCH || state.closed || now >= deadline {
                        break;
                    }
                    if !failing {
                        drop(state);
                        let indexed = self.index_some(&mut db);
                        state = self.lock();
                        if indexed {
                            continue;
                        }
                    }
                    state = self
                        .queue
                        .ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                while let Some(op) = state.items.pop_front() {
                    // Held but not committed: reads arriving now must wait for it.
                    state.in_flight = true;
                    state.bytes -= op.bytes();
                    let flush = matches!(op, Write::Flush(_));
                    batch.push(op);
                    if flush || batch.len() >= BATCH {
                        break;
                    }
                }
            }
            self.metrics.queued.set(state.items.len() as i64);
            let closed = state.closed && state.items.is_empty();
            state.in_flight = !batch.is_empty();
            drop(state);
            self.commit_batch(&mut db, batch, &mut rooms, &mut failing, &mut next_prune);
            self.lock().in_flight = false;
            if Instant::now() >= next_prune {
                next_prune = next_prune_after(prune(&db, s, &self.marks, &self.unindexed), s);
            }
            if closed {
                return;
            }
        }
    }

    /// Commits `batch`, answering its flushes and handing its reads over. A failed commit keeps
    /// its batch and tries again: nothing accepted is dropped. It first tries smaller pieces
    /// (what fits in a nearly full database goes in), then waits.
    fn commit_batch(
        &self,
        db: &mut Connection,
        mut batch: Vec<Write>,
        rooms: &mut HashMap<String, i64>,
        failing: &mut bool,
        next_prune: &mut Instant,
    ) {
        let s = &self.settings;
        let mut chunk = batch.len();
        while !batch.is_empty() {
            let n = chunk.min(batch.len());
            match commit(db, &batch[..n], rooms) {
                Ok(stored) => {
                    if *failing {
                        info!("storage: writes succeed again");
                    }
                    *failing = false;
                    self.healthy.store(true, Ordering::Relaxed);
                    let unindexed = self.unindexed.load(Ordering::Relaxed) + stored as u64;
                    self.set_unindexed(unindexed);
                    for op in batch.drain(..n) {
                        match op {
                            Write::Flush(done) => {
                                let _ = done.send(());
                            }
                            Write::Read { job, search } => {
                                // A search sees what was said before it, once the index has it.
                                if search
                                    && self.unindexed.load(Ordering::Relaxed) <= INDEX_CATCH_UP
                                {
                                    while self.index_some(db) {}
                                }
                                self.forward(job);
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    rooms.clear();
                    if n > 1 {
                        chunk = n / 2;
                        continue;
                    }
                    if !*failing {
                        error!(error = %e, path = %s.path.display(), "storage: cannot write; retrying every second, /readyz is 503 meanwhile");
                    }
                    *failing = true;
                    self.healthy.store(false, Ordering::Relaxed);
                    // Reads do not wait for the disk to recover: they see what is committed.
                    let (reads, writes): (Vec<_>, Vec<_>) = batch
                        .drain(..)
                        .partition(|op| matches!(op, Write::Read { .. }));
                    batch = writes;
                    for op in reads {
                        if let Write::Read { job, .. } = op {
                            self.forward(job);
                        }
                    }
                    std::thread::sleep(RETRY);
                    chunk = batch.len();
                    // Pruning may be what frees the space.
                    if Instant::now() >= *next_prune {
                        *next_prune =
                            next_prune_after(prune(db, s, &self.marks, &self.unindexed), s);
                    }
                }
            }
        }
    }
}

/// Writes `batch` in one transaction; the number of room messages written.
fn commit(
    db: &mut Connection,
    batch: &[Write],
    rooms: &mut HashMap<String, i64>,
) -> rusqlite::Result<usize> {
    let tx = db.transaction()?;
    let mut max_id = 0u64;
    let mut stored = 0;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (id, room_id, seq, ts, sender, role, text, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut insert_pm = tx.prepare_cached(
            "INSERT OR IGNORE INTO pms (id, pair, ts, sender, recipient, role, text, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut last_seqs: HashMap<i64, u64> = HashMap::new();
        for op in batch {
            match op {
                Write::Message { msg, epoch } => {
                    let room_id = match rooms.get(&*msg.room) {
                        Some(id) => *id,
                        None => {
                            tx.execute(
                                "INSERT OR IGNORE INTO rooms (name, epoch) VALUES (?1, ?2)",
                                params![&*msg.room, &**epoch],
                            )?;
                            let id: i64 = tx.query_row(
                                "SELECT id FROM rooms WHERE name = ?1",
                                [&*msg.room],
                                |r| r.get(0),
                            )?;
                            rooms.insert(msg.room.to_string(), id);
                            id
                        }
                    };
                    insert.execute(params![
                        msg.id,
                        room_id,
                        msg.seq,
                        &*msg.ts,
                        &*msg.from,
                        role_name(msg.role),
                        &*msg.text,
                        msg.action
                    ])?;
                    stored += 1;
                    let last = last_seqs.entry(room_id).or_default();
                    *last = (*last).max(msg.seq);
                    max_id = max_id.max(msg.id);
                }
                Write::Pm(pm) => {
                    insert_pm.execute(params![
                        pm.id,
                        pm_pair(&pm.from, &pm.to),
                        &pm.ts,
                        &pm.from,
                        &pm.to,
                        role_name(pm.role),
                        &pm.text,
                        pm.action
                    ])?;
                    max_id = max_id.max(pm.id);
                }
                Write::Flush(_) | Write::Read { .. } => {}
            }
        }
        let mut bump =
            tx.prepare_cached("UPDATE rooms SET last_seq = MAX(last_seq, ?2) WHERE id = ?1")?;
        for (room, seq) in last_seqs {
            bump.execute(params![room, seq])?;
        }
    }
    if max_id > 0 {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(?1 AS INTEGER))",
            [(max_id + 1).to_string()],
        )?;
    }
    tx.commit()?;
    Ok(stored)
}

/// The key a conversation between two users is stored under.
pub fn pm_pair(a: &str, b: &str) -> String {
    let (a, b) = (crate::protocol::fold_name(a), crate::protocol::fold_name(b));
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

/// How many of a room's newest messages `max_messages_per_room` keeps (all: a bound no room
/// reaches).
fn kept(s: &StoreSettings) -> i64 {
    match s.max_messages_per_room {
        0 => i64::MAX / 2,
        n => i64::try_from(n).unwrap_or(i64::MAX / 2),
    }
}

/// Messages with a `ts` before this are past retention.
fn retention_cutoff(s: &StoreSettings) -> Option<String> {
    s.retention.map(|keep| {
        (time::OffsetDateTime::now_utc() - keep)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    })
}

/// When the pruner runs next: at once (after the next batch) if it left work, else in an interval.
fn next_prune_after(more: bool, s: &StoreSettings) -> Instant {
    if more {
        Instant::now()
    } else {
        Instant::now() + s.prune_interval
    }
}

/// Rows deleted per statement while pruning: small transactions, so writes interleave.
const PRUNE_CHUNK: i64 = 5_000;
/// Longest the pruner holds the writer in one go; it carries on after the next batch.
const PRUNE_BUDGET: Duration = Duration::from_millis(200);

/// Deletes what retention and the per-room cap no longer keep, oldest first, in small chunks and
/// for at most [`PRUNE_BUDGET`]; true when more is left (the writer calls again soon). A room's
/// mark moves past what is about to go *before* it goes, so no resume is promised a message
/// that is being deleted.
fn prune(db: &Connection, s: &StoreSettings, marks: &Marks, unindexed: &AtomicU64) -> bool {
    let budget = Instant::now() + PRUNE_BUDGET;
    let mut deleted = 0;
    let result = (|| -> rusqlite::Result<bool> {
        // Per room, the last seq to delete.
        let mut cuts: HashMap<i64, (String, u64)> = HashMap::new();
        let cutoff = retention_cutoff(s);
        if let Some(cutoff) = &cutoff {
            let mut stmt = db.prepare_cached(
                "SELECT m.room_id, r.name, MAX(m.seq) FROM messages m JOIN rooms r ON r.id = m.room_id
                 WHERE m.ts < ?1 GROUP BY m.room_id",
            )?;
            for row in stmt.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                let (id, name, seq): (i64, String, u64) = row?;
                cuts.insert(id, (name, seq));
            }
        }
        if s.max_messages_per_room > 0 {
            let keep = s.max_messages_per_room;
            let mut stmt = db.prepare_cached(
                "SELECT id, name, last_seq - ?1 FROM rooms WHERE last_seq > ?1
                 AND EXISTS (SELECT 1 FROM messages WHERE room_id = rooms.id AND seq <= last_seq - ?1)",
            )?;
            for row in stmt.query_map([keep as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                let (id, name, seq): (i64, String, u64) = row?;
                let cut = cuts.entry(id).or_insert((name, 0));
                cut.1 = cut.1.max(seq);
            }
        }
        {
            let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
            for (name, seq) in cuts.values() {
                if let Some(mark) = marks.get_mut(name) {
                    mark.first_seq = mark.first_seq.max(seq + 1);
                }
            }
        }
        let mut delete = db.prepare_cached(
            "DELETE FROM messages WHERE room_id = ?1 AND seq IN
             (SELECT seq FROM messages WHERE room_id = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3)",
        )?;
        for (id, (_, seq)) in &cuts {
            loop {
                let n = delete.execute(params![id, seq, PRUNE_CHUNK])?;
                deleted += n;
                if (n as i64) < PRUNE_CHUNK {
                    break;
                }
                if Instant::now() >= budget {
                    return Ok(true);
                }
            }
        }
        if let Some(cutoff) = &cutoff {
            let mut delete = db.prepare_cached(
                "DELETE FROM pms WHERE id IN (SELECT id FROM pms WHERE ts < ?1 LIMIT ?2)",
            )?;
            loop {
                let n = delete.execute(params![cutoff, PRUNE_CHUNK])?;
                deleted += n;
                if (n as i64) < PRUNE_CHUNK {
                    break;
                }
                if Instant::now() >= budget {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })();
    if deleted > 0 {
        info!(deleted, "storage: pruned old messages");
        // Deleting a message deletes its pending index entry too.
        if let Ok(n) = db.query_row("SELECT count(*) FROM fts_pending", [], |r| {
            r.get::<_, u64>(0)
        }) {
            unindexed.store(n, Ordering::Relaxed);
        }
    }
    result.unwrap_or_else(|e| {
        warn!(error = %e, "storage: pruning failed");
        false
    })
}

/// Reads for the reader thread.
pub mod read {
    use rusqlite::{Connection, params};

    use super::{Message, Pm, message_row, role_of};

    /// Up to `limit` messages of `room`, oldest first: those with `seq < before` (the newest of
    /// them), or with `seq > after` (the oldest of them). The flag says more exist that way.
    pub fn page(
        db: &Connection,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> rusqlite::Result<(Vec<Message>, bool)> {
        let fetch = limit as i64 + 1;
        let mut rows: Vec<Message> = match after {
            Some(after) => db
                .prepare_cached(
                    "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action
                     FROM messages m JOIN rooms r ON r.id = m.room_id
                     WHERE r.name = ?1 AND m.seq > ?2 ORDER BY m.seq ASC LIMIT ?3",
                )?
                .query_map(params![room, after, fetch], |r| message_row(r, room))?
                .collect::<Result<_, _>>()?,
            None => {
                let mut rows: Vec<Message> = db
                    .prepare_cached(
                        "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action
                         FROM messages m JOIN rooms r ON r.id = m.room_id
                         WHERE r.name = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3",
                    )?
                    .query_map(
                        params![room, before.unwrap_or(i64::MAX as u64), fetch],
                        |r| message_row(r, room),
                    )?
                    .collect::<Result<_, _>>()?;
                rows.reverse();
                rows
            }
        };
        let more = rows.len() > limit;
        if more {
            if after.is_some() {
                rows.truncate(limit);
            } else {
                rows.remove(0);
            }
        }
        Ok((rows, more))
    }

    /// Full-text search in `rooms`, newest first, ids below `before`. The query's words are
    /// matched as words (all of them), never as FTS syntax.
    pub fn search(
        db: &Connection,
        rooms: &[String],
        query: &str,
        before: Option<u64>,
        limit: usize,
    ) -> rusqlite::Result<(Vec<Message>, bool)> {
        // Words as the index's tokenizer (unicode61) cuts them: runs of letters and digits.
        // Each is quoted, so nothing in a query is FTS syntax, and none is a phrase (the index
        // keeps no positions).
        let terms: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(32)
            .map(|w| format!("\"{w}\""))
            .collect();
        if terms.is_empty() || rooms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let placeholders = vec!["?"; rooms.len()].join(", ");
        let sql = format!(
            "SELECT m.id, m.seq, m.ts, m.sender, m.role, m.text, m.action, r.name
             FROM messages_fts f JOIN messages m ON m.id = f.rowid JOIN rooms r ON r.id = m.room_id
             WHERE messages_fts MATCH ? AND m.id < ? AND r.name IN ({placeholders})
             ORDER BY m.id DESC LIMIT ?"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            terms.join(" ").into(),
            (before.unwrap_or(i64::MAX as u64) as i64).into(),
        ];
        args.extend(rooms.iter().map(|r| r.clone().into()));
        args.push((limit as i64 + 1).into());
        let mut stmt = db.prepare(&sql)?;
        let mut rows: Vec<Message> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                let room: String = r.get(7)?;
                message_row(r, &room)
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// The conversation between two users, oldest first, ids below `before`.
    pub fn pms(
        db: &Connection,
        pair: &str,
        before: Option<u64>,
        limit: usize,
    ) -> rusqlite::Result<(Vec<Pm>, bool)> {
        let mut rows: Vec<Pm> = db
            .prepare_cached(
                "SELECT id, ts, sender, recipient, role, text, action FROM pms
                 WHERE pair = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?
            .query_map(
                params![
                    pair,
                    before.unwrap_or(i64::MAX as u64) as i64,
                    limit as i64 + 1
                ],
                |r| {
                    Ok(Pm {
                        id: r.get(0)?,
                        ts: r.get(1)?,
                        from: r.get(2)?,
                        to: r.get(3)?,
                        role: role_of(&r.get::<_, String>(4)?),
                        text: r.get(5)?,
                        action: r.get(6)?,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        Ok((rows, more))
    }
}

/// For tests of migrations: creates a database at an older schema version.
#[doc(hidden)]
pub fn create_at_version(path: &std::path::Path, version: u32) -> Result<(), String> {
    let mut db = Connection::open(path).map_err(|e| e.to_string())?;
    schema::migrate_to(&mut db, version)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
