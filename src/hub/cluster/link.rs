//! The node's side of Redis: the client, its one command connection (made again after any
//! failure), the scripts, the key names, and whether Redis is reachable (`/readyz`,
//! `chatd_redis_up`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tracing::warn;

use super::scripts;
use crate::metrics::Metrics;

/// Why an operation failed: Redis did not answer in time, or answered with an error.
#[derive(Debug)]
pub(super) enum Fail {
    Redis(redis::RedisError),
    Timeout,
    /// The durable store could not answer (Redis is not to blame).
    Store(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Redis(e) => write!(f, "{e}"),
            Fail::Timeout => write!(f, "no answer within cluster.op_timeout_ms"),
            Fail::Store(e) => write!(f, "the store: {e}"),
        }
    }
}

impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Fail {
        Fail::Redis(e)
    }
}

pub(super) type Done = Result<(), Fail>;

/// The scripts (`scripts`), each loaded by its SHA1 and run with `EVALSHA`.
#[derive(Debug)]
pub(super) struct Scripts {
    pub say: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub reap: redis::Script,
    pub rooms: redis::Script,
    pub refresh: redis::Script,
    pub release: redis::Script,
    pub kick: redis::Script,
    pub claim: redis::Script,
    pub presence: redis::Script,
    pub presence_rename: redis::Script,
    pub next_id: redis::Script,
    pub seed: redis::Script,
    pub claim_session: redis::Script,
    pub log_out: redis::Script,
    pub members: redis::Script,
    pub change: redis::Script,
    pub react: redis::Script,
    pub find: redis::Script,
    pub state: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = redis::Script::new;
        let numbering = |body: &str| redis::Script::new(&format!("{}{body}", scripts::NUMBERING));
        Scripts {
            say: numbering(scripts::SAY),
            change: numbering(scripts::CHANGE),
            react: numbering(scripts::REACT),
            find: script(scripts::FIND),
            state: script(scripts::STATE),
            join: script(scripts::JOIN),
            leave: script(scripts::LEAVE),
            reap: script(scripts::REAP),
            rooms: script(scripts::ROOMS),
            refresh: script(scripts::REFRESH_NAMES),
            release: script(scripts::RELEASE),
            kick: script(scripts::KICK),
            claim: script(scripts::CLAIM),
            presence: script(scripts::PRESENCE),
            presence_rename: script(scripts::PRESENCE_RENAME),
            next_id: script(scripts::NEXT_ID),
            seed: script(scripts::SEED),
            claim_session: script(scripts::CLAIM_SESSION),
            log_out: script(scripts::LOG_OUT),
            members: script(scripts::MEMBERS),
        }
    }
}

/// The node's Redis.
#[derive(Debug)]
pub(super) struct Redis {
    pub client: redis::Client,
    /// The command connection, made again after any failure: taken (cloned) under a plain lock,
    /// made under an async one, so a crowd's calls do not queue behind each other to get it.
    conn: std::sync::RwLock<Option<MultiplexedConnection>>,
    making: tokio::sync::Mutex<()>,
    pub scripts: Scripts,
    prefix: String,
    /// Redis answered the last command.
    up: AtomicBool,
    /// The subscriber holds its subscriptions (events reach this node).
    pub subscribed: AtomicBool,
    metrics: Metrics,
    connect_timeout: Duration,
}

impl Redis {
    pub fn new(
        client: redis::Client,
        prefix: &str,
        metrics: &Metrics,
        connect_timeout: Duration,
    ) -> Redis {
        metrics.redis_up.set(0);
        Redis {
            client,
            conn: std::sync::RwLock::new(None),
            making: tokio::sync::Mutex::new(()),
            scripts: Scripts::new(),
            prefix: prefix.to_string(),
            up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            metrics: metrics.clone(),
            connect_timeout,
        }
    }

    /// A per-room or per-name key or channel: `P:what:name`.
    pub fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{what}:{name}", self.prefix)
    }

    /// A cluster-wide key or channel: `rooms`, `created`, `msgid`, `all`.
    pub fn global(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn room_channel(&self, room: &str) -> String {
        self.key("r", room)
    }

    pub fn node_channel(&self, node: &str) -> String {
        self.key("n", node)
    }

    pub fn all_channel(&self) -> String {
        self.global("all")
    }

    /// Whether the node can do its work: Redis answers and the subscription holds.
    pub fn ready(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
    }

    /// Redis failed: count it down, and make the next call reconnect.
    pub async fn down(&self, fail: &Fail, op: &str) {
        if let Fail::Store(e) = fail {
            tracing::debug!(op, error = %e, "cluster: the store could not answer");
            return;
        }
        self.metrics.redis_failures.with_label_values(&[op]).inc();
        if self.up.load(Ordering::Relaxed) {
            warn!(op, error = %fail, "cluster: Redis did not answer; requests get `unavailable`");
        }
        self.set_up(false);
        self.forget();
    }

    /// Forgets the command connection (the subscriber saw Redis go away with it).
    pub async fn reconnect(&self) {
        self.forget();
    }

    fn forget(&self) {
        *crate::sync::write(&self.conn) = None;
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        crate::sync::read(&self.conn).clone()
    }

    pub async fn conn(&self) -> Result<MultiplexedConnection, Fail> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _making = self.making.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // No response timeout of the library's own (500 ms by default): every operation runs
        // under its deadline from the request (`cluster.op_timeout_ms`), and a busy connection
        // answering a crowd's joins in 600 ms is not a Redis that went away.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *crate::sync::write(&self.conn) = Some(c.clone());
        Ok(c)
    }

    pub async fn publish(&self, channel: &str, payload: &str) -> Done {
        let mut conn = self.conn().await?;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

/// A client for `url`, over TLS for `rediss://` (verified against `ca` when given, else the
/// system's roots), with `password` from a file (the URL keeps an ACL user's name) when the URL does not
/// carry one.
pub(super) fn client(
    url: &str,
    password: Option<&str>,
    ca: Option<Vec<u8>>,
) -> Result<redis::Client, String> {
    let mut info: redis::ConnectionInfo =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    // The password file holds the password alone (it may contain any character); an ACL
    // user's name stays in the URL (`redis://chatd@host/0`).
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match ca {
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(|e| e.to_string())
}

/// How long a subscriber waits before trying again, doubling up to a second.
pub(super) fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(1))
}
