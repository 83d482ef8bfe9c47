//! The HTTP API's keys and idempotency keys, as stored: each key's public id, a hash of the whole
//! key (never the key), what it may do, and until when; and each retried POST's first answer for
//! a few minutes. Kept beside the accounts in the store's database, through one contract
//! ([`KeysDb`]) both SQLite and PostgreSQL implement, so every node of a cluster knows every key
//! and a retry that reaches another node is still answered once. This module stores; the API
//! decides what a key may do.

use std::sync::{Mutex, mpsc};
use std::thread::{self, JoinHandle};

use super::accounts::{AccountsDb, DbError};
use crate::sync::lock;

/// One API key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public part of the key (`chatd_ID_SECRET`), its primary key.
    pub id: String,
    /// What the operator called it (unique).
    pub name: String,
    /// The name it speaks and reads as.
    pub account: String,
    /// SHA-256 of the whole key, in hex.
    pub hash: String,
    /// What it may do (`say`, `history:read`, …).
    pub scopes: Vec<String>,
    /// The rooms it may touch; empty: every room.
    pub rooms: Vec<String>,
    /// When it was made (Unix ms).
    pub created_ms: i64,
    /// When it stops working (Unix ms), if ever.
    pub expires_ms: Option<i64>,
    /// Revoked: refused from now on.
    pub revoked: bool,
}

/// What [`KeysDb::claim`] found for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody used it lately: the caller does the request, then [`KeysDb::complete`]s it.
    New,
    /// The first request with it is still being done.
    Pending,
    /// It was used for another request (method, path or body differ).
    Mismatch,
    /// Done already: its status and response body.
    Done(u16, String),
}

/// What a database must do to keep API keys. Every method is one transaction.
pub trait KeysDb: Send {
    /// Adds `key`; false if its name is taken (nothing is done).
    fn add_key(&mut self, key: &ApiKey) -> Result<bool, DbError>;
    /// The key whose public id is `id`, revoked or not.
    fn find_key(&mut self, id: &str) -> Result<Option<ApiKey>, DbError>;
    /// Every key, oldest first.
    fn keys(&mut self) -> Result<Vec<ApiKey>, DbError>;
    /// Revokes the key named `name` (or whose id is `name`); false if there is none.
    fn revoke_key(&mut self, name: &str) -> Result<bool, DbError>;
    /// Claims idempotency key `idem` of key `key_id` for a request whose fingerprint is
    /// `fingerprint`, forgetting every claim made before `expired_ms` first.
    fn claim(
        &mut self,
        key_id: &str,
        idem: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_ms: i64,
    ) -> Result<Claim, DbError>;
    /// The claimed request was done: its answer, for the retries.
    fn complete(
        &mut self,
        key_id: &str,
        idem: &str,
        status: u16,
        response: &str,
    ) -> Result<(), DbError>;
    /// The claimed request was not done (it failed before doing anything): a retry may.
    fn release(&mut self, key_id: &str, idem: &str) -> Result<(), DbError>;
}

/// A list as stored: comma-separated.
pub(super) fn joined(items: &[String]) -> String {
    items.join(",")
}

/// A stored list back.
pub(super) fn split(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a claim found, from the stored row (fingerprint, status, response).
pub(super) fn found(fingerprint: &str, row: (String, Option<i64>, Option<String>)) -> Claim {
    match row {
        (stored, _, _) if stored != fingerprint => Claim::Mismatch,
        (_, Some(status), Some(response)) => {
            Claim::Done(u16::try_from(status).unwrap_or(500), response)
        }
        _ => Claim::Pending,
    }
}

/// A job for the keys' thread.
type Job = Box<dyn FnOnce(&mut dyn AccountsDb) + Send>;

/// A connection to the store's keys on a thread of its own (a PostgreSQL client may not be used
/// or dropped on the runtime's threads), for the HTTP API. Jobs queue in a bounded channel; a
/// full one is refused at once. [`KeysThread::close`] joins the thread.
#[derive(Debug)]
pub struct KeysThread {
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The keys' thread is too busy, or closed.
#[derive(Debug)]
pub struct Busy;

impl KeysThread {
    /// Starts the thread over `db`.
    pub fn start(db: Box<dyn AccountsDb>) -> std::io::Result<KeysThread> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(256);
        let thread = thread::Builder::new()
            .name("chatd-api-keys".into())
            .spawn(move || {
                let mut db = db;
                while let Ok(job) = queue.recv() {
                    job(db.as_mut());
                }
            })?;
        Ok(KeysThread {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` on the thread and waits for its answer.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn AccountsDb) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        let jobs = lock(&self.jobs).clone().ok_or(Busy)?;
        jobs.try_send(job).map_err(|_| Busy)?;
        rx.await.map_err(|_| Busy)
    }

    /// Refuses new jobs, lets the queued ones finish and joins the thread (it blocks: call it
    /// off the runtime).
    pub fn close(&self) {
        lock(&self.jobs).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}
