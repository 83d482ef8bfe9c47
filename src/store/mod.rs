//! Durable state: every accepted message (and, when names are owned, every PM) in a database,
//! written by one thread in batches, read by two others. The database is SQLite's embedded file
//! (`storage.path`, `sqlite`) or a PostgreSQL server (`storage.url`, `postgres`, which several
//! nodes of a cluster share); both keep the one contract this module states, and the store's
//! threads reach them only through [`writer::WriteDb`] and [`read::ReadDb`].
//!
//! - **Writes never run on the chat thread and never make a publisher wait**: [`Store::append`]
//!   queues a message and returns; the writer (`writer`) commits one transaction per
//!   `storage.commit_interval_ms` (or per 5,000 messages). A message is queued only while the
//!   store can keep its promise, so a `say` is stored or refused, never accepted and lost: the
//!   queue is bounded in bytes (`storage.queue_bytes`), the writer may not fall behind by more than
//!   one commit interval (the oldest uncommitted message is never older than two), and while
//!   writes fail (a full disk, `storage.max_db_bytes`) nothing new is accepted.
//! - **Durability**: a graceful stop flushes the queue and marks the database clean
//!   ([`Store::close`]); after a kill or a power loss at most the last two commit intervals of
//!   acknowledged messages are lost, and the next start notices (no clean mark), gives every room a
//!   new epoch (resuming clients are told `resumed: false`) and skips the message ids that may have
//!   been handed out, so no number is ever given out twice.
//! - **Reads** (paging back past memory, catching up after a reconnect, PM history) run on the
//!   reader thread, and search on a thread of its own under a time budget, so no search delays a
//!   history read. A read waits for the writes queued before it to be committed, but not longer
//!   than a deadline: a failing or frozen writer never stalls a read, which then answers from
//!   what is committed. Requests are typed ([`Query`]): nothing outside this module names SQLite.
//! - **Health**: `/readyz` is 503 while writes fail, while the writer is stalled (frozen file
//!   system, a foreign lock) or too far behind ([`Store::healthy`]).
//! - A pruner (`prune`, in the writer, every `storage.prune_interval_secs`) enforces
//!   `retention_days` and `max_messages_per_room` and gives the space back.
//!
//! Each database's module opens, checks and migrates it (refusing one that is not chatd's, or
//! damaged) and loads what chat needs in memory; docs/STORAGE.md describes both schemas.

pub mod accounts;
pub mod keys;
pub mod policy;
mod postgres;
mod queue;
mod read;
mod rows;
mod sqlite;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::sync::lock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tracing::warn;

use crate::config::{Config, ConfigError, SecretUrl};
use crate::metrics::Metrics;
use crate::protocol::{ChatMessage, Role};

pub use queue::Refused;
use queue::{Op, Progress, QueueState, Write};
pub use read::{Found, Query, ReadError};
use rows::{role_name, role_of};

/// A stored room message.
pub type Message = ChatMessage<'static>;

/// Messages committed in one transaction at most.
const BATCH: usize = 5_000;
/// Read requests that may wait for each reader thread; past this they get `unavailable`.
const READ_QUEUE: usize = 256;
/// Searches that may wait for the search thread.
const SEARCH_QUEUE: usize = 16;
/// A search waits for the index to catch up when it is at most this far behind.
const INDEX_CATCH_UP: u64 = 10_000;
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The least a queued write costs (`Write::bytes`): bounds how many ids can be uncommitted.
const MIN_WRITE_BYTES: usize = 96;

/// What a stored message costs in memory, in bytes: its strings plus the fixed part of its record.
pub fn message_cost(m: &Message) -> usize {
    const FIXED: usize = 240;
    let reactions: usize = m
        .reactions
        .iter()
        .map(|r| 48 + r.emoji.len() + r.users.iter().map(|u| 24 + u.len()).sum::<usize>())
        .sum();
    let change = m.change.as_ref().map_or(0, |_| 64);
    FIXED + m.text.len() + m.from.len() + m.room.len() + m.ts.len() + reactions + change
}

/// A stored private message.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// When it was last edited.
    pub edited_ts: Option<String>,
    /// Deleted by its sender (its text is gone).
    pub deleted: bool,
}

/// A message a cluster numbered (see [`Store::append_admitted`]).
#[derive(Debug)]
pub enum Admitted {
    /// A room message, with its room's epoch.
    Message(Arc<Message>, Arc<str>),
    /// A private message.
    Pm(Pm),
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

/// Where the database is.
#[derive(Debug, Clone)]
pub enum Place {
    /// An SQLite file (`storage.path`).
    File(PathBuf),
    /// A PostgreSQL database (`storage.url`).
    Postgres(PostgresPlace),
}

/// Where a PostgreSQL database is, and what connecting to it needs.
#[derive(Debug, Clone)]
pub struct PostgresPlace {
    /// `storage.url`.
    pub url: SecretUrl,
    /// `storage.password_file`, when the password is not in the URL.
    pub password_file: Option<PathBuf>,
    /// `storage.ca_cert`, for TLS (`sslmode=require`) with a private CA.
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::File(path) => write!(f, "{}", path.display()),
            Place::Postgres(pg) => write!(f, "{}", pg.url),
        }
    }
}

/// `[storage]` settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The database.
    pub place: Place,
    /// Numbering is the cluster's (Redis gives out ids and seqs): the store neither loads rooms
    /// nor renumbers after an unclean stop, and several nodes share the database.
    pub shared: bool,
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
    /// The longest one search may run before it is stopped (and answered "too broad").
    pub search_budget: Duration,
}

impl StoreSettings {
    /// The settings a configuration makes, or `None` when history is kept in memory only. A
    /// cluster keeps durable state only in PostgreSQL (`storage.url`); a single node in the file
    /// at `storage.path` unless `storage.url` is set.
    pub fn from_config(config: &Config) -> Option<StoreSettings> {
        let s = &config.storage;
        let shared = !config.cluster.redis_url.is_empty();
        let place = if !s.url.is_empty() {
            let file = |f: &String| (!f.is_empty()).then(|| PathBuf::from(f));
            Place::Postgres(PostgresPlace {
                url: s.url.clone(),
                password_file: file(&s.password_file),
                ca_cert: file(&s.ca_cert),
            })
        } else if !s.path.is_empty() && !shared {
            Place::File(PathBuf::from(&s.path))
        } else {
            return None;
        };
        Some(StoreSettings {
            place,
            shared,
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
            search_budget: Duration::from_millis(s.search_budget_ms),
        })
    }

    /// The most the writer may be behind: the oldest uncommitted message is never older than this
    /// (two commit intervals, at least 200 ms); past it `say` is refused.
    fn max_lag(&self) -> Duration {
        (self.commit_interval * 2).max(Duration::from_millis(200))
    }

    /// How long a read waits for the writes queued before it to be committed, before it answers
    /// from what is committed.
    fn read_wait(&self) -> Duration {
        self.max_lag() * 2
    }

    /// The config key that names the database (for errors).
    fn key(&self) -> &'static str {
        match self.place {
            Place::File(_) => "storage.path",
            Place::Postgres(..) => "storage.url",
        }
    }
}

/// The most message ids a store can have handed out and not committed when it stops uncleanly:
/// the queue's bytes at the least a write costs, plus a batch in the writer's hands. A
/// numbering that restarts after an unclean stop skips this many.
fn uncommitted_bound(settings: &StoreSettings) -> u64 {
    (settings.queue_bytes / MIN_WRITE_BYTES + BATCH) as u64
}

/// An opened, checked and loaded database: a hold on it for each store thread.
struct Opened {
    writer: Box<dyn writer::WriteDb>,
    reader: Box<dyn read::ReadDb>,
    searcher: Box<dyn read::ReadDb>,
    loaded: Loaded,
    marks: HashMap<String, Mark>,
    unindexed: u64,
    /// The last stop was not clean (the store renumbered).
    unclean: bool,
}

/// Checks the database a configuration names without changing anything (`chatd check-config`):
/// an SQLite file must be a regular file, a chatd database this binary can read, and undamaged
/// (a missing one must be creatable); a PostgreSQL database must answer, and not be newer than
/// this chatd.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    match StoreSettings::from_config(config).map(|s| s.place) {
        None => Ok(()),
        Some(Place::File(path)) => sqlite::check(&path),
        Some(Place::Postgres(pg)) => postgres::check(&pg),
    }
}

/// For tests of migrations: creates an SQLite database at an older schema version.
#[doc(hidden)]
pub fn create_at_version(path: &Path, version: u32) -> Result<(), String> {
    sqlite::create_at_version(path, version)
}

/// Counters the store keeps.
#[derive(Debug, Clone)]
struct StoreMetrics {
    errors: IntCounter,
    rejected: IntCounter,
    queued: IntGauge,
    unindexed: IntGauge,
    lag: prometheus::Gauge,
}

/// What the store's threads and handle share.
struct Shared {
    settings: StoreSettings,
    queue: Mutex<QueueState>,
    work: Condvar,
    progress: Mutex<Progress>,
    progressed: Condvar,
    /// The last write succeeded.
    writes_ok: AtomicBool,
    /// Every stored room's numbering (the pruner keeps `first_seq` current).
    marks: Marks,
    /// Stored messages not yet in the search index.
    unindexed: AtomicU64,
    /// Searches waiting for the index to catch up (the writer then indexes at once).
    searches_waiting: std::sync::atomic::AtomicUsize,
    metrics: StoreMetrics,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.queue)
    }

    /// Whether the writer keeps up: writes succeed, no commit has hung, and the oldest uncommitted
    /// message is within [`StoreSettings::max_lag`].
    fn keeping_up(&self, state: &QueueState, now: Instant) -> bool {
        let max = self.settings.max_lag();
        self.writes_ok.load(Ordering::Relaxed)
            && state.lag(now) <= max
            && state
                .busy_since
                .is_none_or(|since| now.saturating_duration_since(since) <= max)
    }

    /// Waits until the writes up to `generation` are committed (and, for a search, indexed unless
    /// the index is far behind), or until `deadline`: then the read sees what is committed.
    fn wait_for(&self, generation: u64, search: bool, deadline: Instant) {
        if search {
            self.searches_waiting.fetch_add(1, Ordering::Relaxed);
        }
        self.wait_until(generation, search, deadline);
        if search {
            self.searches_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn wait_until(&self, generation: u64, search: bool, deadline: Instant) {
        let mut progress = lock(&self.progress);
        loop {
            let indexed = !search || {
                let behind = self.unindexed.load(Ordering::Relaxed);
                behind == 0 || behind > INDEX_CATCH_UP
            };
            if progress.committed >= generation && indexed {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            progress = crate::sync::wait_timeout(&self.progressed, progress, deadline - now);
        }
    }

    fn set_unindexed(&self, n: u64) {
        self.unindexed.store(n, Ordering::Relaxed);
        self.metrics.unindexed.set(n as i64);
        self.progressed.notify_all();
    }
}

/// The durable store. Cheap to share; one per server.
pub struct Store {
    shared: Arc<Shared>,
    history: std::sync::mpsc::SyncSender<read::Job>,
    search: std::sync::mpsc::SyncSender<read::Job>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating or migrating) the database, checks it, and loads what chat needs in memory.
    /// Every failure names `storage.path` and the reason: not a regular file, not chatd's
    /// database, damaged, written by a newer chatd, or not writable.
    pub fn open(
        settings: StoreSettings,
        metrics: &Metrics,
    ) -> Result<(Store, Loaded), ConfigError> {
        let opened = match &settings.place {
            Place::File(path) => sqlite::open(path, &settings)?,
            Place::Postgres(pg) => postgres::open(pg, &settings)?,
        };
        if opened.unclean {
            warn!(
                store = %settings.place,
                "storage: the last stop was not clean: messages acknowledged in its last moments may be lost; every room's numbering starts a new epoch (resuming clients reload), and message ids skip ahead"
            );
        }
        let store_metrics = StoreMetrics {
            errors: metrics.storage_errors.clone(),
            rejected: metrics.storage_rejected.clone(),
            queued: metrics.storage_queued.clone(),
            unindexed: metrics.search_unindexed.clone(),
            lag: metrics.storage_lag_seconds.clone(),
        };
        store_metrics.unindexed.set(opened.unindexed as i64);
        let shared = Arc::new(Shared {
            queue: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            progress: Mutex::new(Progress::default()),
            progressed: Condvar::new(),
            writes_ok: AtomicBool::new(true),
            marks: Mutex::new(opened.marks),
            unindexed: AtomicU64::new(opened.unindexed),
            searches_waiting: std::sync::atomic::AtomicUsize::new(0),
            metrics: store_metrics,
            settings: settings.clone(),
        });
        // SQLite's threads do the database's work themselves: they yield to chat. PostgreSQL's
        // do little (about 1 µs a message) but wait on the server several times a commit, and a
        // lowered priority would add a scheduling delay to each of those waits.
        let nice = matches!(settings.place, Place::File(_));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    if nice {
                        background_priority();
                    }
                    f()
                })
                .map_err(|e| ConfigError::Invalid {
                    key: settings.key(),
                    reason: format!("cannot start the {name} thread: {e}"),
                })
        };
        let writer = writer::Writer::new(shared.clone());
        let db = opened.writer;
        let writer_thread = spawn("chatd-store-writer", Box::new(move || writer.run(db)))?;
        let (history, history_jobs) = std::sync::mpsc::sync_channel(READ_QUEUE);
        let reader = read::Reader::new(shared.clone(), opened.reader, None);
        let reader_thread = spawn(
            "chatd-store-reader",
            Box::new(move || reader.run(history_jobs)),
        )?;
        let (search, search_jobs) = std::sync::mpsc::sync_channel(SEARCH_QUEUE);
        let searcher = read::Reader::new(
            shared.clone(),
            opened.searcher,
            Some(settings.search_budget),
        );
        let search_thread = spawn(
            "chatd-store-search",
            Box::new(move || searcher.run(search_jobs)),
        )?;
        Ok((
            Store {
                shared,
                history,
                search,
                threads: Mutex::new(vec![writer_thread, reader_thread, search_thread]),
            },
            opened.loaded,
        ))
    }

    /// Why a write of `bytes` would be refused now, if it would be.
    fn refusal(&self, state: &QueueState, bytes: usize, now: Instant) -> Option<Refused> {
        let shared = &self.shared;
        if state.closed {
            Some(Refused::Closed)
        } else if !shared.writes_ok.load(Ordering::Relaxed) {
            Some(Refused::Failing)
        } else if state.bytes + bytes > shared.settings.queue_bytes {
            Some(Refused::Full)
        } else if !shared.keeping_up(state, now) {
            Some(Refused::Behind)
        } else {
            None
        }
    }

    /// Whether a message of `text_bytes` would be queued now: a cluster asks before Redis
    /// numbers and delivers a message, and refuses the `say` if not, so what it acknowledges is
    /// stored. The append that follows ([`Store::append_admitted`]) is not refused for size: the
    /// queue may pass `storage.queue_bytes` by what was admitted at the same moment (bounded by
    /// the members' own queues).
    pub fn admits(&self, text_bytes: usize) -> Result<(), Refused> {
        let state = self.shared.queue();
        match self.refusal(&state, text_bytes + MIN_WRITE_BYTES, Instant::now()) {
            Some(why) => {
                drop(state);
                self.shared.metrics.rejected.inc();
                Err(why)
            }
            None => Ok(()),
        }
    }

    fn push(&self, op: Op) -> Result<(), Refused> {
        self.push_checked(op, true)
    }

    /// Queues `op`; with `check`, only within the queue's bounds (else only while open).
    fn push_checked(&self, op: Op, check: bool) -> Result<(), Refused> {
        let write = Write {
            op,
            queued: Instant::now(),
        };
        let bytes = write.bytes();
        let shared = &self.shared;
        let mut state = shared.queue();
        let refused = match self.refusal(&state, bytes, write.queued) {
            Some(Refused::Closed) => Some(Refused::Closed),
            Some(why) if check => Some(why),
            _ => None,
        };
        if let Some(why) = refused {
            drop(state);
            shared.metrics.rejected.inc();
            return Err(why);
        }
        state.bytes += bytes;
        state.queued += 1;
        state.items.push_back(write);
        shared.metrics.queued.set(state.items.len() as i64);
        let wake = state.wake();
        drop(state);
        if wake {
            shared.work.notify_one();
        }
        Ok(())
    }

    /// Queues a room message for writing, or says why it cannot be (the caller refuses it).
    pub fn append(&self, msg: Arc<Message>, epoch: Arc<str>) -> Result<(), Refused> {
        let (room, seq, e) = (msg.room.clone(), msg.seq, epoch.clone());
        self.push(Op::Message { msg, epoch })?;
        let mut marks = lock(&self.shared.marks);
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
        Ok(())
    }

    /// Queues a private message for writing, or says why it cannot be.
    pub fn append_pm(&self, pm: Pm) -> Result<(), Refused> {
        self.push(Op::Pm(Box::new(pm)))
    }

    /// Queues a change to a stored PM: `pm` as it is now (edited, or deleted), by its id.
    pub fn append_pm_change(&self, pm: Pm) -> Result<(), Refused> {
        self.push(Op::PmChange(Box::new(pm)))
    }

    /// Queues a message (or PM) the cluster numbered and delivered after [`Store::admits`] said
    /// yes; refused only when the store is closing. No mark is kept: the numbering is Redis's.
    pub fn append_admitted(&self, message: Admitted) -> Result<(), Refused> {
        let op = match message {
            Admitted::Message(msg, epoch) => Op::Message { msg, epoch },
            Admitted::Pm(pm) => Op::Pm(Box::new(pm)),
        };
        self.push_checked(op, false)
    }

    /// Answers `query` on a reader thread (searches on their own), once every write queued before
    /// it is committed (or its wait ran out): `reply` gets the result there. False if too many
    /// reads of its kind are waiting (the caller answers `unavailable`).
    pub fn read(
        &self,
        query: Query,
        reply: impl FnOnce(Result<Found, ReadError>) + Send + 'static,
    ) -> bool {
        let generation = self.shared.queue().queued;
        let job = read::Job {
            query,
            generation,
            deadline: Instant::now() + self.shared.settings.read_wait(),
            reply: Box::new(reply),
        };
        let queue = if job.query.is_search() {
            &self.search
        } else {
            &self.history
        };
        queue.try_send(job).is_ok()
    }

    /// Waits (at most `limit`) until every write queued so far is committed; false on timeout.
    /// For tools, tests and the accounts threads (an unread count taken after it sees every
    /// message acknowledged before): chat never waits for the disk.
    pub fn sync(&self, limit: Duration) -> bool {
        let generation = self.shared.queue().queued;
        self.shared
            .wait_for(generation, false, Instant::now() + limit);
        lock(&self.shared.progress).committed >= generation
    }

    /// A mark of everything queued so far: [`Store::committed_past`] says when it is all
    /// committed. For readers beside the store that must see what was acknowledged before them
    /// without blocking on it (the accounts service).
    pub fn queued_mark(&self) -> u64 {
        self.shared.queue().queued
    }

    /// Whether everything queued up to `mark` is committed (or writes fail: then it never will
    /// be, and waiting is pointless).
    pub fn committed_past(&self, mark: u64) -> bool {
        lock(&self.shared.progress).committed >= mark
            || !self.shared.writes_ok.load(Ordering::Relaxed)
    }

    /// How far a cluster's numbering skips when Redis restarted empty: what eight nodes
    /// configured like this one can hold numbered and not yet committed.
    pub fn restart_gap(&self) -> u64 {
        8 * uncommitted_bound(&self.shared.settings)
    }

    /// Whether the store can do its work (`/readyz`): writes succeed and keep up.
    pub fn healthy(&self) -> bool {
        let state = self.shared.queue();
        let now = Instant::now();
        self.shared.metrics.lag.set(state.lag(now).as_secs_f64());
        self.shared.keeping_up(&state, now)
    }

    /// The oldest seq of `room` still stored, if the store knows the room.
    pub fn first_seq(&self, room: &str) -> Option<u64> {
        self.mark(room).map(|m| m.first_seq)
    }

    /// Where `room`'s numbering stands, if the store knows the room.
    pub fn mark(&self, room: &str) -> Option<Mark> {
        lock(&self.shared.marks).get(room).cloned()
    }

    /// Commits everything queued, marks the database clean and stops the threads (a graceful
    /// stop: every acknowledged message is on disk afterwards). Waits at most `limit` for the
    /// writer, 3 s when writes are failing (the disk will not have emptied itself meanwhile).
    pub fn close(&self, limit: Duration) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        {
            let mut state = self.shared.queue();
            state.queued += 1;
            state.items.push_back(Write {
                op: Op::Flush(done),
                queued: Instant::now(),
            });
            state.closed = true;
        }
        self.shared.work.notify_one();
        let failing = !self.shared.writes_ok.load(Ordering::Relaxed);
        let limit = if failing {
            limit.min(Duration::from_secs(3))
        } else {
            limit
        };
        if wait.recv_timeout(limit).is_err() {
            let state = self.shared.queue();
            let lost = state.items.len().saturating_sub(1) + state.in_flight;
            warn!(
                lost,
                "storage: the writer did not finish within {limit:?}: {lost} acknowledged messages are not on disk (see the log for why writes fail)"
            );
            return;
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            // The readers end with the last sender; the writer has answered the flush.
            drop(t);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The key a conversation between two users is stored under: their `protocol::name_key`s,
/// sorted, joined by a space.
pub fn pm_pair(a: &str, b: &str) -> String {
    let (a, b) = (crate::protocol::name_key(a), crate::protocol::name_key(b));
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

/// SQLite's store threads run at a lower priority than the chat (nice 10): when they compete for a
/// core, a waking connection preempts a commit or an indexing chunk at once, so the disk adds
/// throughput cost but not latency to chat. Their work is batched and queued, so running later
/// costs nothing but delay. Where the call is not allowed (a seccomp filter), they run as they
/// are.
pub(crate) fn background_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "storage: cannot lower the store threads' priority");
    }
}

/// Drops the oldest of `messages` (oldest first) until the rest cost at most `bytes`
/// ([`message_cost`]): what a room warms its memory with at startup.
fn keep_newest(messages: &mut Vec<Message>, bytes: usize) {
    let mut total = 0;
    let keep = messages
        .iter()
        .rev()
        .take_while(|m| {
            total += message_cost(m);
            total <= bytes
        })
        .count();
    messages.drain(..messages.len() - keep);
}

/// A fresh epoch for a numbering that starts now.
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Rows deleted per statement while pruning: small transactions, so writes interleave.
const PRUNE_CHUNK: i64 = 5_000;

/// Before the pruner deletes up to seq `cut` of each room (by name), the rooms' marks move past
/// it, so no resume is promised a message that is being deleted.
fn advance_marks<'a>(shared: &Shared, cuts: impl Iterator<Item = &'a (String, u64)>) {
    let mut marks = lock(&shared.marks);
    for (name, seq) in cuts {
        if let Some(mark) = marks.get_mut(name) {
            mark.first_seq = mark.first_seq.max(seq + 1);
        }
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

/// How many of a room's newest messages `max_messages_per_room` keeps (all: a bound no room
/// reaches).
fn kept(s: &StoreSettings) -> i64 {
    match s.max_messages_per_room {
        0 => i64::MAX / 2,
        n => i64::try_from(n).unwrap_or(i64::MAX / 2),
    }
}
