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
//! - at most [`QUEUE`] requests wait for the hashing threads (and as many for the store to
//!   commit what was acknowledged before them, so that counts include it); past that,
//!   `unavailable` (a token's hello goes on without its rooms instead).

pub mod admin;
pub mod moderation;
mod password;
pub mod pms;
pub mod policy;
mod rooms;
mod throttle;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Registration};
use crate::metrics::Metrics;
use crate::protocol::{self, Role};
use crate::store::accounts::{Account, AccountsDb, Conversation, Created};
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
    /// A token vouched for `name` (with `role`): its rooms and read state, for the welcome.
    Resume {
        /// The name the token is for.
        name: String,
        /// The role the token grants.
        role: Role,
    },
    /// A PM for someone with no live connection: kept for them if they have an account.
    Keep(Box<crate::store::Pm>),
    /// The signed-in account `name` has read its conversation `with` up to message `msg`.
    ReadPm {
        /// The account's name.
        name: String,
        /// The other person.
        with: String,
        /// The message id read up to.
        msg: u64,
    },
    /// A moderation request (or a new room's claim): see [`moderation`].
    Moderate {
        /// Who asks.
        actor: moderation::Actor,
        /// What.
        action: moderation::Action,
    },
    /// The signed-in account `name` has read `room` up to `seq`.
    Read {
        /// The account's name.
        name: String,
        /// The room.
        room: String,
        /// The seq read up to.
        seq: u64,
    },
}

/// What a request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// Signed in (or registered).
    SignedIn(SignedIn),
    /// A room's read state after a `read`.
    Read(RoomState),
    /// The PM was kept for its recipient (named as they spell it).
    Kept(Box<crate::store::Pm>),
    /// A conversation's read state after a `read` with `with`.
    ReadPm(Conversation),
    /// A moderation request carried out.
    Moderated(moderation::Moderated),
}

/// One room of an account: its read marker and what is unread past it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomState {
    /// The room.
    pub room: String,
    /// The last seq read (moves only forward).
    pub read: u64,
    /// Messages by others past it (at most 999).
    pub unread: u64,
    /// Those that mention the account (`@name`).
    pub mentions: u64,
    /// The room's numbering as stored (empty: nothing stored).
    pub epoch: String,
    /// The room's last stored seq.
    pub head: u64,
}

/// A signed-in account.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedIn {
    /// The name as its owner spells it.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The rooms it is a member of, in the order it joined them.
    pub rooms: Vec<RoomState>,
    /// Its most recent private conversations.
    pub conversations: Vec<Conversation>,
    /// What others wrote there that it has not read (the newest, oldest first; see
    /// [`pms::waiting`]).
    pub waiting: Vec<crate::store::Pm>,
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
    /// `read`: the account is not a member of the room.
    NotMember,
    /// A PM's recipient, or a conversation's other side, has no account (or no conversation).
    NoSuchUser,
    /// Not allowed (moderation), and why.
    Forbidden(String),
    /// A value out of bounds (a topic too long, an address range that is not one).
    Invalid(String),
}

/// Where an answer goes: called once, on a hashing thread.
pub type Reply = Box<dyn FnOnce(Result<Done, Denied>) + Send>;

struct Job {
    request: Request,
    ip: IpAddr,
    reply: Reply,
    /// The store's mark when the job was asked for: it runs once that is committed (or
    /// [`COMMIT_WAIT`] has passed), so counts include what was acknowledged before it.
    after: Option<u64>,
    /// When it was asked for.
    at: Instant,
}

/// How long a job waits at most for the store to commit what came before it.
const COMMIT_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Throttle {
    names: Table<String>,
    addresses: Table<IpAddr>,
    registrations: Table<IpAddr>,
}

/// What the hashing threads share.
struct Work {
    hasher: Hasher,
    /// Taken (and dropped) by the last thread to stop: a PostgreSQL client must not be dropped
    /// inside the server's runtime.
    db: Mutex<Option<Box<dyn AccountsDb>>>,
    throttle: Mutex<Throttle>,
    notes: Mutex<rooms::Notes>,
    max_rooms: usize,
    /// The broker's store: how far past what is stored a seq someone saw can be.
    store: Option<Arc<crate::store::Store>>,
    /// Hashing threads still running: the last to stop drops the connection.
    running: AtomicUsize,
    metrics: Metrics,
    /// Rooms' policies, as this node has loaded them.
    policies: Arc<policy::Policies>,
    /// What the chat does with what a policy reload changed (set by the server).
    effects: Mutex<Option<EffectsHook>>,
    /// Told of each moderation action carried out here, with its audit entry (the webhooks).
    moderated: Mutex<Option<ModeratedHook>>,
    /// When the change log was last polled.
    polled: Mutex<Option<Instant>>,
}

/// What the chat does with what a policy reload changed (see [`Accounts::on_effects`]).
pub type EffectsHook = Arc<dyn Fn(Vec<policy::Effect>) + Send + Sync>;

/// What is told of each moderation action (see [`Accounts::on_moderated`]).
pub type ModeratedHook = Arc<dyn Fn(&crate::store::policy::Audit) + Send + Sync>;

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
    /// Accounts mode (passwords, registration); false in token mode.
    passwords: bool,
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
    pub fn start(
        config: &Config,
        metrics: &Metrics,
        store: Option<Arc<crate::store::Store>>,
    ) -> Result<Option<Arc<Accounts>>, ConfigError> {
        // Accounts mode; and token mode with a store: a token's `sub` is an account too, whose
        // rooms and read state are kept the same way (no passwords, no registration).
        let passwords = config.auth.mode == crate::config::AuthMode::Accounts;
        let kept = crate::store::StoreSettings::from_config(config).is_some();
        let tokens = config.auth.mode == crate::config::AuthMode::Token;
        if !(passwords || tokens && kept) {
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
            notes: Mutex::new(rooms::Notes::default()),
            max_rooms: config.limits.max_rooms_per_user,
            store,
            running: AtomicUsize::new(a.hash_threads.max(1)),
            metrics: metrics.clone(),
            policies: Arc::new(policy::Policies::default()),
            effects: Mutex::new(None),
            moderated: Mutex::new(None),
            polled: Mutex::new(None),
        });
        // On a thread of its own: a PostgreSQL client may not block inside the runtime, and the
        // chat must not start before every ban is known.
        let loaded = std::thread::scope(|scope| {
            scope
                .spawn(|| moderation::load(&work))
                .join()
                .unwrap_or_else(|_| Err("the loading thread panicked".into()))
        });
        match loaded {
            Ok(rooms) => info!(rooms, "room policies loaded"),
            Err(e) => {
                return Err(invalid(
                    "storage",
                    format!("cannot load room policies: {e}"),
                ));
            }
        }
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
            passwords,
            metrics: metrics.clone(),
        })))
    }

    /// Hands `request` from `ip` to the hashing threads; `reply` gets the answer. Refused at once
    /// (and `reply` never called) when the password cannot be right, registration is closed, the
    /// name or address is over its limits, or too many requests wait.
    pub fn submit(&self, request: Request, ip: IpAddr, reply: Reply) -> Result<(), Denied> {
        let ip = crate::addr::address_key(ip);
        let counted = matches!(request, Request::SignIn { .. } | Request::Register { .. });
        let result = self.admit(&request, ip).and_then(|()| {
            let jobs = lock(&self.jobs);
            let Some(jobs) = jobs.as_ref() else {
                return Err(Denied::Unavailable);
            };
            let after = self.work.store.as_ref().map(|s| s.queued_mark());
            let at = Instant::now();
            jobs.try_send(Job {
                request,
                ip,
                reply,
                after,
                at,
            })
            .map_err(|e| match e {
                TrySendError::Full(_) | TrySendError::Disconnected(_) => Denied::Unavailable,
            })
        });
        if let Err(denied) = &result
            && counted
        {
            self.metrics
                .sign_ins
                .with_label_values(&[result_label(denied)])
                .inc();
        }
        result
    }

    fn admit(&self, request: &Request, ip: IpAddr) -> Result<(), Denied> {
        let now = Instant::now();
        if !self.passwords && matches!(request, Request::SignIn { .. } | Request::Register { .. }) {
            return Err(Denied::Closed(
                "this server gives names with tokens: say hello with one",
            ));
        }
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
            Request::Read { .. }
            | Request::Resume { .. }
            | Request::Keep(_)
            | Request::ReadPm { .. }
            | Request::Moderate { .. } => Ok(()),
        }
    }

    /// Whether a join by an account can be recorded now (joins are refused while
    /// [`rooms::MAX_NOTES`] changes wait to be written).
    pub fn can_note_join(&self) -> bool {
        rooms::has_room(&self.work)
    }

    /// Records that the account `key` joined `room` when it was at `seq` (a new membership's
    /// marker starts there): written within half a second, listed at its next sign-in.
    pub fn note_join(&self, key: &str, room: &str, seq: u64) {
        let change = rooms::Change {
            joined: Some(rooms::Joined::At(seq)),
            read: None,
        };
        rooms::note(&self.work, key, room, change);
    }

    /// Records that the account `key` left `room` (a disconnect is not a leave).
    pub fn note_leave(&self, key: &str, room: &str) {
        let change = rooms::Change {
            joined: Some(rooms::Joined::Left),
            read: None,
        };
        rooms::note(&self.work, key, room, change);
    }

    /// Records that the account `key` has read `room` up to `seq` (it said something there).
    pub fn note_read(&self, key: &str, room: &str, seq: u64) {
        let change = rooms::Change {
            joined: None,
            read: Some(seq),
        };
        rooms::note(&self.work, key, room, change);
    }

    /// Rooms' policies as this node has them (the checks on the chat's paths read these).
    pub fn policies(&self) -> &Arc<policy::Policies> {
        &self.work.policies
    }

    /// Sets what the chat does with what a policy reload changed (on an accounts thread).
    pub fn on_effects(&self, hook: EffectsHook) {
        *lock(&self.work.effects) = Some(hook);
    }

    /// Tells `hook` of every moderation action carried out on this node (once per action,
    /// cluster-wide: the node where it was asked carries it out).
    pub fn on_moderated(&self, hook: ModeratedHook) {
        *lock(&self.work.moderated) = Some(hook);
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
    // Jobs waiting for the store to commit what came before them, oldest first: held here, so
    // the thread goes on with others meanwhile.
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        rooms::write_notes(work, false);
        moderation::poll(work);
        let ready = |job: &Job| {
            job.at.elapsed() >= COMMIT_WAIT
                || match (&work.store, job.after) {
                    (Some(store), Some(mark)) => store.committed_past(mark),
                    _ => true,
                }
        };
        let job = if waiting.front().is_some_and(ready) {
            waiting.pop_front()
        } else if waiting.len() >= QUEUE {
            // As many wait here as may wait in the queue: the queue fills, and refuses, first.
            std::thread::sleep(Duration::from_millis(5));
            None
        } else {
            let wait = if waiting.is_empty() {
                rooms::WRITE_EVERY
            } else {
                Duration::from_millis(5)
            };
            match lock(queue).recv_timeout(wait) {
                Ok(job) if ready(&job) => Some(job),
                Ok(job) => {
                    waiting.push_back(job);
                    None
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Closing: what waits is answered, what is noted written, and the
                    // connection ends on this thread.
                    for job in waiting.drain(..) {
                        serve(work, job);
                    }
                    rooms::write_notes(work, true);
                    if work.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                        lock(&work.db).take();
                    }
                    return;
                }
            }
        };
        if let Some(job) = job {
            serve(work, job);
        }
    }
}

/// Carries out one job and answers it.
fn serve(work: &Work, job: Job) {
    let (result, ok) = match job.request {
        Request::SignIn { name, password } => (
            sign_in(work, &name, &password, job.ip).map(Done::SignedIn),
            "ok",
        ),
        Request::Register {
            name,
            password,
            invite,
        } => (
            register(work, &name, &password, invite.as_deref()).map(Done::SignedIn),
            "registered",
        ),
        Request::Read { name, room, seq } => {
            (job.reply)(rooms::read(work, &name, &room, seq).map(Done::Read));
            return;
        }
        Request::Resume { name, role } => {
            // A store that cannot answer costs the welcome its rooms, not the hello.
            let key = protocol::name_key(&name);
            if let Err(e) = with_db(work, |db| db.remember(&key, &name, role)) {
                warn!(error = %e, "accounts: cannot keep a token's subject");
            }
            let rooms = rooms::states(work, &key, &name).unwrap_or_else(|e| {
                warn!(error = %e, "accounts: cannot read memberships");
                Vec::new()
            });
            let (conversations, waiting) = pms::waiting(work, &key).unwrap_or_else(|e| {
                warn!(error = %e, "accounts: cannot read conversations");
                Default::default()
            });
            let signed = SignedIn {
                name,
                role,
                rooms,
                conversations,
                waiting,
            };
            (job.reply)(Ok(Done::SignedIn(signed)));
            return;
        }
        Request::Keep(pm) => {
            (job.reply)(pms::keep(work, *pm).map(|pm| Done::Kept(Box::new(pm))));
            return;
        }
        Request::Moderate { actor, action } => {
            (job.reply)(moderation::serve(work, &actor, action).map(Done::Moderated));
            return;
        }
        Request::ReadPm { name, with, msg } => {
            (job.reply)(pms::read(work, &name, &with, msg).map(Done::ReadPm));
            return;
        }
    };
    let label = match &result {
        Ok(_) => ok,
        Err(denied) => result_label(denied),
    };
    work.metrics.sign_ins.with_label_values(&[label]).inc();
    (job.reply)(result);
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
            let rooms = rooms::states(work, &key, &account.name).map_err(|e| {
                warn!(error = %e, "accounts: cannot read memberships");
                Denied::Unavailable
            })?;
            let (conversations, waiting) = pms::waiting(work, &key).map_err(|e| {
                warn!(error = %e, "accounts: cannot read conversations");
                Denied::Unavailable
            })?;
            info!(user = %account.name, rooms = rooms.len(), "signed in");
            Ok(SignedIn {
                name: account.name,
                role: account.role,
                rooms,
                conversations,
                waiting,
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
                conversations: Vec::new(),
                waiting: Vec::new(),
            })
        }
        Created::Taken => Err(Denied::Taken),
        Created::BadInvite => Err(Denied::BadInvite),
    }
}

pub(crate) use crate::protocol::now_ms;

/// What the store keeps of an invite code: its SHA-256, in hex.
fn invite_hash(code: &str) -> String {
    crate::auth::hex(&Sha256::digest(code.trim().as_bytes()))
}
