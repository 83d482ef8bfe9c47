//! Accounts (`auth.mode = "accounts"`): signing in with a password, registering, and the limits
//! around both. Passwords are hashed and checked with Argon2id (`password`) on threads of their
//! own at a lowered priority, never on the chat's: a session hands a [`Request`] over with
//! [`Accounts::submit`] and gets the answer later, through its mailbox, like any late answer.
//! Accounts themselves are kept by the store (`store::accounts`: SQLite or PostgreSQL).
//!
//! What keeps this from being a way in or a way to slow the chat down:
//! - a sign-in for a name with no account, a disabled one, or a wrong password all take one
//!   Argon2 check and get the same `unauthorized`;
//! - failed sign-ins are limited per account name and per address, registrations per address
//!   (`throttle`, tables bounded in entries), before any hashing is queued;
//! - at most [`QUEUE`] requests wait for the hashing threads; past that, `unavailable`.

mod password;
mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Registration};
use crate::metrics::Metrics;
use crate::protocol::{self, Role};
use crate::store::accounts::{Account, AccountsDb, Change, Created};
use crate::sync::lock;
pub(crate) use password::Hasher;
pub use password::MAX_PASSWORD_BYTES;
use throttle::{Rate, Table};

/// Requests that may wait for the hashing threads.
pub const QUEUE: usize = 64;

/// What a client asks for.
#[derive(Debug)]
pub enum Request {
    /// Sign in as `name`.
    SignIn {
        /// The account's name, as the client typed it.
        name: String,
        /// The password.
        password: String,
    },
    /// Make the account `name` and sign in as it.
    Register {
        /// The name wanted.
        name: String,
        /// Its password.
        password: String,
        /// An invite code (`auth.registration = "invite"`).
        invite: Option<String>,
    },
}

/// A signed-in account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The name as its owner spells it.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The rooms it is a member of, in the order it joined them.
    pub rooms: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Wrong name or password, or a disabled account: the client is told no more.
    Unauthorized,
    /// Too many failures (or registrations) lately: try again after this long.
    RateLimited(Duration),
    /// Accounts cannot be read or hashed now; trying again may work.
    Unavailable,
    /// Registering: the name has an owner.
    Taken,
    /// Registering: the invite is unknown, used up or expired.
    BadInvite,
    /// Registering is not allowed, or needs an invite.
    Closed(&'static str),
    /// The password is too short or too long.
    BadPassword(String),
}

/// Where an answer goes: called once, on a hashing thread.
pub type Reply = Box<dyn FnOnce(Result<SignedIn, Denied>) + Send>;

struct Job {
    request: Request,
    ip: IpAddr,
    reply: Reply,
}

#[derive(Debug)]
struct Throttle {
    names: Table<String>,
    addresses: Table<IpAddr>,
    registrations: Table<IpAddr>,
}

/// Joins and leaves of rooms not yet written, by (account key, room): the last one of each
/// counts. Bounded: past [`MAX_NOTES`], joins are refused (`unavailable`) until a write empties it.
#[derive(Debug, Default)]
struct Notes {
    changes: HashMap<(String, String), bool>,
    /// When they were last written.
    written: Option<Instant>,
}

/// Membership changes that may wait to be written.
pub const MAX_NOTES: usize = 10_000;
/// How often waiting membership changes are written.
const WRITE_EVERY: Duration = Duration::from_millis(500);

/// What the hashing threads share.
struct Work {
    hasher: Hasher,
    /// Taken (and dropped) by the last thread to stop: a PostgreSQL client must not be dropped
    /// inside the server's runtime.
    db: Mutex<Option<Box<dyn AccountsDb>>>,
    throttle: Mutex<Throttle>,
    notes: Mutex<Notes>,
    max_rooms: usize,
    /// Hashing threads still running: the last to stop drops the connection.
    running: AtomicUsize,
    metrics: Metrics,
}

/// Runs `f` on the accounts' connection (an error once the service has stopped).
fn with_db<T>(
    work: &Work,
    f: impl FnOnce(&mut dyn AccountsDb) -> Result<T, String>,
) -> Result<T, String> {
    match lock(&work.db).as_mut() {
        Some(db) => f(db.as_mut()),
        None => Err("the accounts service has stopped".into()),
    }
}

/// The accounts service: one per server, in accounts mode.
pub struct Accounts {
    jobs: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    work: Arc<Work>,
    registration: Registration,
    min_chars: usize,
    metrics: Metrics,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The hasher `[auth]` configures.
pub(crate) fn hasher(config: &Config) -> Result<Hasher, ConfigError> {
    Hasher::new(config.auth.argon2_memory_kib, config.auth.argon2_iterations)
        .map_err(|e| invalid("auth.argon2_memory_kib", e))
}

/// The store's settings, which accounts mode requires (validated with the config).
fn settings(config: &Config) -> Result<crate::store::StoreSettings, ConfigError> {
    crate::store::StoreSettings::from_config(config)
        .ok_or_else(|| invalid("auth.mode", "accounts need a store: set storage.path"))
}

impl Accounts {
    /// The service, in accounts mode (`None` otherwise): its threads started, its connection to
    /// the store opened.
    pub fn start(config: &Config, metrics: &Metrics) -> Result<Option<Arc<Accounts>>, ConfigError> {
        if config.auth.mode != crate::config::AuthMode::Accounts {
            return Ok(None);
        }
        let a = &config.auth;
        let db = crate::store::accounts::open(&settings(config)?)?;
        let ten_minutes = Duration::from_secs(600);
        let throttle = Mutex::new(Throttle {
            names: Table::new(Rate {
                burst: a.login_failures_per_name,
                period: ten_minutes,
            }),
            addresses: Table::new(Rate {
                burst: a.login_failures_per_address,
                period: ten_minutes,
            }),
            registrations: Table::new(Rate {
                burst: a.registrations_per_address,
                period: Duration::from_secs(3600),
            }),
        });
        let work = Arc::new(Work {
            hasher: hasher(config)?,
            db: Mutex::new(Some(db)),
            throttle,
            notes: Mutex::new(Notes::default()),
            max_rooms: config.limits.max_rooms_per_user,
            running: AtomicUsize::new(a.hash_threads.max(1)),
            metrics: metrics.clone(),
        });
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::new();
        for i in 0..a.hash_threads.max(1) {
            let (work, queue) = (work.clone(), queue.clone());
            let thread = std::thread::Builder::new()
                .name(format!("chatd-accounts-{i}"))
                .spawn(move || {
                    crate::store::background_priority();
                    run(&work, &queue);
                })
                .map_err(|e| invalid("auth.hash_threads", format!("cannot start: {e}")))?;
            threads.push(thread);
        }
        Ok(Some(Arc::new(Accounts {
            jobs: Mutex::new(Some(jobs)),
            threads: Mutex::new(threads),
            work,
            registration: a.registration,
            min_chars: a.password_min_chars,
            metrics: metrics.clone(),
        })))
    }

    /// Hands `request` from `ip` to the hashing threads; `reply` gets the answer. Refused at once
    /// (and `reply` never called) when the password cannot be right, registration is closed, the
    /// name or address is over its limits, or too many requests wait.
    pub fn submit(&self, request: Request, ip: IpAddr, reply: Reply) -> Result<(), Denied> {
        let ip = crate::addr::address_key(ip);
        let result = self.admit(&request, ip).and_then(|()| {
            let jobs = lock(&self.jobs);
            let Some(jobs) = jobs.as_ref() else {
                return Err(Denied::Unavailable);
            };
            jobs.try_send(Job { request, ip, reply })
                .map_err(|e| match e {
                    TrySendError::Full(_) | TrySendError::Disconnected(_) => Denied::Unavailable,
                })
        });
        if let Err(denied) = &result {
            self.metrics
                .sign_ins
                .with_label_values(&[result_label(denied)])
                .inc();
        }
        result
    }

    fn admit(&self, request: &Request, ip: IpAddr) -> Result<(), Denied> {
        let now = Instant::now();
        let mut throttle = lock(&self.work.throttle);
        match request {
            Request::SignIn { name, password } => {
                if password.len() > MAX_PASSWORD_BYTES {
                    return Err(Denied::Unauthorized);
                }
                let key = protocol::name_key(name);
                let wait = throttle
                    .names
                    .wait(&key, now)
                    .max(throttle.addresses.wait(&ip, now));
                wait.map_or(Ok(()), |w| Err(Denied::RateLimited(w)))
            }
            Request::Register {
                password, invite, ..
            } => {
                match self.registration {
                    Registration::Closed => {
                        return Err(Denied::Closed("registration is closed on this server"));
                    }
                    Registration::Invite if invite.is_none() => {
                        return Err(Denied::Closed(
                            "registration needs an invite on this server",
                        ));
                    }
                    _ => {}
                }
                check_password(password, self.min_chars).map_err(Denied::BadPassword)?;
                if let Some(wait) = throttle.registrations.wait(&ip, now) {
                    return Err(Denied::RateLimited(wait));
                }
                throttle.registrations.take(&ip, now);
                Ok(())
            }
        }
    }

    /// Whether a join by an account can be recorded now (joins are refused while
    /// [`MAX_NOTES`] changes wait to be written).
    pub fn can_note_join(&self) -> bool {
        lock(&self.work.notes).changes.len() < MAX_NOTES
    }

    /// Records that the account `key` joined (`true`) or left `room`: written within
    /// [`WRITE_EVERY`], and listed at its next sign-in. A disconnect is not a leave.
    pub fn note(&self, key: &str, room: &str, joined: bool) {
        lock(&self.work.notes)
            .changes
            .insert((key.to_string(), room.to_string()), joined);
    }

    /// Stops the hashing threads once the requests already queued are answered; the last one
    /// writes the membership changes still waiting.
    pub fn close(&self) {
        lock(&self.jobs).take();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            let _ = thread.join();
        }
    }
}

/// Writes the membership changes waiting, if it is time (or `now`). On failure they wait for the
/// next try (newer changes of the same rooms win).
fn write_notes(work: &Work, now: bool) {
    let changes = {
        let mut notes = lock(&work.notes);
        let due = notes.written.is_none_or(|at| at.elapsed() >= WRITE_EVERY);
        if notes.changes.is_empty() || !(due || now) {
            return;
        }
        notes.written = Some(Instant::now());
        std::mem::take(&mut notes.changes)
    };
    let list: Vec<(String, String, bool)> = changes
        .iter()
        .map(|((k, r), joined)| (k.clone(), r.clone(), *joined))
        .collect();
    if let Err(e) = with_db(work, |db| db.memberships(&list)) {
        warn!(error = %e, changes = list.len(), "accounts: cannot write memberships; trying again");
        let mut notes = lock(&work.notes);
        for (key, joined) in changes {
            notes.changes.entry(key).or_insert(joined);
        }
    }
}

/// The rooms `key`'s account is a member of: what is stored, with the changes not yet written.
fn rooms_of(work: &Work, key: &str) -> Result<Vec<String>, String> {
    let mut rooms = with_db(work, |db| db.rooms(key, work.max_rooms))?;
    let notes = lock(&work.notes);
    for ((k, room), joined) in &notes.changes {
        if k != key {
            continue;
        }
        match (*joined, rooms.iter().position(|r| r == room)) {
            (true, None) => rooms.push(room.clone()),
            (false, Some(i)) => {
                rooms.remove(i);
            }
            _ => {}
        }
    }
    rooms.truncate(work.max_rooms);
    Ok(rooms)
}

/// A password a new account (or `chatd user passwd`) may have: at least `min_chars`
/// characters, at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn check_password(password: &str, min_chars: usize) -> Result<(), String> {
    if password.chars().count() < min_chars {
        return Err(format!("passwords are at least {min_chars} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("passwords are at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// The label `chatd_sign_ins_total` counts a refusal under.
fn result_label(denied: &Denied) -> &'static str {
    match denied {
        Denied::Unauthorized => "unauthorized",
        Denied::RateLimited(_) => "rate_limited",
        Denied::Unavailable => "unavailable",
        _ => "refused",
    }
}

fn run(work: &Work, queue: &Mutex<Receiver<Job>>) {
    loop {
        write_notes(work, false);
        let job = match lock(queue).recv_timeout(WRITE_EVERY) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                // Closing: what waits is written, and the connection ends on this thread.
                write_notes(work, true);
                if work.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    lock(&work.db).take();
                }
                return;
            }
        };
        let result = match job.request {
            Request::SignIn { name, password } => sign_in(work, &name, &password, job.ip),
            Request::Register {
                name,
                password,
                invite,
            } => register(work, &name, &password, invite.as_deref()),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(denied) => result_label(denied),
        };
        work.metrics.sign_ins.with_label_values(&[label]).inc();
        (job.reply)(result);
    }
}

fn shown(name: &str) -> String {
    name.chars().take(protocol::MAX_NAME_BYTES).collect()
}

fn sign_in(work: &Work, name: &str, password: &str, ip: IpAddr) -> Result<SignedIn, Denied> {
    let key = protocol::name_key(name);
    let found = with_db(work, |db| db.find(&key)).map_err(|e| {
        warn!(error = %e, "accounts: cannot read the account");
        Denied::Unavailable
    })?;
    let matches = work
        .hasher
        .verify(password, found.as_ref().map(|a| a.hash.as_str()));
    match found {
        Some(account) if matches && !account.disabled => {
            let rooms = rooms_of(work, &key).map_err(|e| {
                warn!(error = %e, "accounts: cannot read memberships");
                Denied::Unavailable
            })?;
            info!(user = %account.name, rooms = rooms.len(), "signed in");
            Ok(SignedIn {
                name: account.name,
                role: account.role,
                rooms,
            })
        }
        other => {
            let now = Instant::now();
            let mut throttle = lock(&work.throttle);
            throttle.names.take(&key, now);
            throttle.addresses.take(&ip, now);
            let why = match other {
                None => "no such account",
                Some(a) if a.disabled => "account disabled",
                Some(_) => "wrong password",
            };
            info!(user = %shown(name), why, "sign-in refused");
            Err(Denied::Unauthorized)
        }
    }
}

fn register(
    work: &Work,
    name: &str,
    password: &str,
    invite: Option<&str>,
) -> Result<SignedIn, Denied> {
    let key = protocol::name_key(name);
    let unavailable = |e: String| {
        warn!(error = %e, "accounts: cannot register");
        Denied::Unavailable
    };
    // A name with an owner costs no hashing.
    if with_db(work, |db| db.find(&key))
        .map_err(unavailable)?
        .is_some()
    {
        return Err(Denied::Taken);
    }
    let hash = work.hasher.hash(password).map_err(unavailable)?;
    let account = Account {
        name: name.to_string(),
        hash,
        role: Role::User,
        disabled: false,
    };
    let invite = invite.map(invite_hash);
    let created = with_db(work, |db| {
        db.create(&key, &account, invite.as_deref(), now_ms())
    })
    .map_err(unavailable)?;
    match created {
        Created::Created => {
            info!(user = %name, "account registered");
            Ok(SignedIn {
                name: account.name,
                role: account.role,
                rooms: Vec::new(),
            })
        }
        Created::Taken => Err(Denied::Taken),
        Created::BadInvite => Err(Denied::BadInvite),
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the store keeps of an invite code: its SHA-256, in hex.
fn invite_hash(code: &str) -> String {
    Sha256::digest(code.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Managing accounts offline (`chatd user`, `chatd invite`), on the store the configuration
/// names, while chatd runs or not.
pub mod admin {
    use super::*;

    /// A handle on the configured store's accounts.
    pub struct Admin {
        db: Box<dyn AccountsDb>,
        hasher: Hasher,
        min_chars: usize,
    }

    impl Admin {
        /// Opens the accounts of the store `config` names.
        pub fn open(config: &Config) -> Result<Admin, ConfigError> {
            Ok(Admin {
                db: crate::store::accounts::open(&settings(config)?)?,
                hasher: hasher(config)?,
                min_chars: config.auth.password_min_chars,
            })
        }

        /// Makes the account `name` (a valid name) with `password` and `role`.
        pub fn add(&mut self, name: &str, password: &str, role: Role) -> Result<(), String> {
            check_password(password, self.min_chars)?;
            let account = Account {
                name: name.to_string(),
                hash: self.hasher.hash(password)?,
                role,
                disabled: false,
            };
            match self
                .db
                .create(&protocol::name_key(name), &account, None, now_ms())?
            {
                Created::Created => Ok(()),
                _ => Err(format!("the account {name:?} exists already")),
            }
        }

        /// Applies `change` to `name`'s account.
        pub fn change(&mut self, name: &str, change: Change) -> Result<(), String> {
            if self.db.update(&protocol::name_key(name), &change)? {
                Ok(())
            } else {
                Err(format!("there is no account {name:?}"))
            }
        }

        /// A new password for `name`.
        pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), String> {
            check_password(password, self.min_chars)?;
            let hash = self.hasher.hash(password)?;
            self.change(name, Change::Password(hash))
        }

        /// A new invite good for `uses` registrations within `ttl`; the code, shown once.
        pub fn invite(&mut self, uses: u32, ttl: Duration) -> Result<String, String> {
            use argon2::password_hash::rand_core::{OsRng, RngCore};
            let mut bytes = [0u8; 15];
            OsRng.fill_bytes(&mut bytes);
            let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let expires =
                now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            self.db.add_invite(&invite_hash(&code), uses, expires)?;
            Ok(code)
        }

        /// The account `name`, if there is one.
        pub fn find(&mut self, name: &str) -> Result<Option<Account>, String> {
            self.db.find(&protocol::name_key(name))
        }
    }
}
