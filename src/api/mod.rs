//! The HTTP API (`api.listen`, docs/API.md, docs/openapi.json): programs that are not chat
//! clients post, read and moderate with a key (`chatd apikey create`), over JSON.
//!
//! `serve` accepts connections (TLS like the chat port when it has a certificate) and hands each
//! to hyper, which speaks HTTP/1.1; [`Api::handle`] checks the key, its scope, its rooms and its
//! rate, reads the body within `api.max_body_bytes` and `api.timeout_secs`, and `routes` turns
//! the request into a chat request carried out by the key's session (`link`), so every rule of
//! the chat applies to a key as to a client. Keys and idempotency keys live in the store
//! (`store::keys`), read and written on a thread of their own (`keys::KeysDb`).

pub mod keys;
mod link;
mod moderate;
mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::ConfigError;
use crate::connection::{Handshakes, TlsConn, TlsSlot};
use crate::session::Chat;
use crate::session::rate::{Rate, TokenBucket};
use crate::store::keys::ApiKey;
use crate::sync::lock;
use link::{Links, Who};

/// Connections the API serves at once, and from one address.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_ADDRESS: usize = 32;

/// A response, as hyper sends it.
pub(crate) type Reply = Response<Full<Bytes>>;

/// The API's shared state.
#[derive(Debug)]
pub(crate) struct Api {
    chat: Arc<Chat>,
    keys: crate::store::keys::KeysThread,
    /// Requests that outlive their caller (a POST with an idempotency key runs to its end).
    background: TaskTracker,
    links: Links,
    /// Each key's rate (only keys that passed the check get one: as many as there are keys).
    buckets: Mutex<HashMap<String, TokenBucket>>,
    /// Open connections per address.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A request that failed: its status, code and message (never internal error text).
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unauthorized() -> Failure {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer KEY",
        )
    }

    pub(crate) fn busy() -> Failure {
        Failure {
            retry_after: Some(1),
            ..Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy; try again",
            )
        }
    }

    fn reply(self) -> Reply {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut reply = json_reply(self.status, &body);
        if let Some(secs) = self.retry_after {
            reply
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            reply
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        reply
    }
}

/// A JSON response.
pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Reply {
    text_reply(status, "application/json", body.to_string())
}

fn text_reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

/// The key a request carries, checked: who it speaks as and what it may do.
#[derive(Debug)]
pub(crate) struct Caller {
    key: ApiKey,
    who: Who,
}

impl Caller {
    /// Refuses unless the key has `scope`.
    pub(crate) fn needs(&self, scope: &str) -> Result<(), Failure> {
        if self.key.scopes.iter().any(|s| s == scope) {
            return Ok(());
        }
        Err(Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key lacks the scope {scope:?}"),
        ))
    }

    /// Refuses unless the key may touch `room` (a key made with `--rooms` is kept to them).
    pub(crate) fn may_touch(&self, room: &str) -> Result<(), Failure> {
        if self.key.rooms.is_empty() || self.key.rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        Err(Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key may not use the room {room:?}"),
        ))
    }
}

impl Api {
    /// The API over `chat`, with its own connection to the store.
    pub(crate) fn start(chat: Arc<Chat>) -> Result<Arc<Api>, ConfigError> {
        let config = &chat.config;
        let settings = crate::store::StoreSettings::from_config(config).ok_or_else(|| {
            ConfigError::Invalid {
                key: "api.listen",
                reason: "the API keeps its keys in the store: set storage.path".into(),
            }
        })?;
        let db = crate::store::accounts::open(&settings)?;
        let keys = crate::store::keys::KeysThread::start(db).map_err(|e| ConfigError::Invalid {
            key: "api.listen",
            reason: format!("cannot start the API's store thread: {e}"),
        })?;
        let idle = Duration::from_secs(config.api.idle_secs);
        Ok(Arc::new(Api {
            links: Links::new(chat.clone(), idle),
            chat,
            keys,
            background: TaskTracker::new(),
            buckets: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        }))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.chat.config.api.timeout_secs)
    }

    /// Answers one request.
    async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: IpAddr) -> Reply {
        let started = std::time::Instant::now();
        let (route, reply) = routes::answer(&self, request, peer).await;
        let reply = reply.unwrap_or_else(Failure::reply);
        let metrics = &self.chat.metrics;
        metrics
            .api_requests
            .with_label_values(&[route, reply.status().as_str()])
            .inc();
        metrics.api_seconds.observe(started.elapsed().as_secs_f64());
        reply
    }

    /// The key `request` carries, checked against the store, with its rate taken.
    async fn caller(&self, headers: &hyper::HeaderMap, peer: IpAddr) -> Result<Caller, Failure> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .ok_or_else(Failure::unauthorized)?;
        let id = keys::id_of(given)
            .ok_or_else(Failure::unauthorized)?
            .to_string();
        let accounts = self.chat.config.auth.mode == crate::config::AuthMode::Accounts;
        let found = self
            .keys
            .run(move |db| {
                let key = db.find_key(&id)?;
                // The role of the account a key speaks as (an admin's key may announce); a
                // disabled account's keys are refused with it.
                let role = match &key {
                    Some(k) if accounts => db
                        .find(&crate::protocol::name_key(&k.account))?
                        .filter(|a| !a.disabled)
                        .map(|a| a.role),
                    _ => Some(crate::protocol::Role::User),
                };
                Ok::<_, String>(key.zip(role))
            })
            .await
            .map_err(|_| Failure::busy())?;
        let (key, role) = match found {
            Ok(found) => found.ok_or_else(Failure::unauthorized)?,
            Err(e) => {
                warn!(error = %e, "api: cannot read keys");
                return Err(Failure::busy());
            }
        };
        if !keys::matches(&key, given, crate::protocol::now_ms()) {
            return Err(Failure::unauthorized());
        }
        self.take_rate(&key.id)?;
        let who = Who {
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            account: key.account.clone(),
            role,
            ip: peer,
        };
        Ok(Caller { key, who })
    }

    /// One request from `key`'s rate; 429 past it.
    fn take_rate(&self, key: &str) -> Result<(), Failure> {
        let api = &self.chat.config.api;
        let mut buckets = lock(&self.buckets);
        let rate = Rate::new(api.burst, api.requests_per_sec);
        let bucket = buckets.entry(key.to_string()).or_default();
        if bucket.try_take(rate) {
            return Ok(());
        }
        let wait = bucket.wait(rate).as_secs_f64().ceil().max(1.0) as u64;
        Err(Failure {
            retry_after: Some(wait),
            ..Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this key is over its rate; retry in {wait} s"),
            )
        })
    }

    /// The body of `request`, within `api.max_body_bytes` and the timeout.
    async fn body(&self, body: Incoming, length: Option<u64>) -> Result<Bytes, Failure> {
        let max = self.chat.config.api.max_body_bytes;
        let too_large = || {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {max} bytes (api.max_body_bytes)"),
            )
        };
        if length.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let read = Limited::new(body, max).collect();
        match tokio::time::timeout(self.timeout(), read).await {
            Err(_) => Err(Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body took too long to arrive",
            )),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(_)) => Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body could not be read",
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// Ends every key's session and waits for them, and for the requests left running.
    pub(crate) async fn close(&self) {
        self.links.close().await;
        self.background.close();
        self.background.wait().await;
    }

    /// Closes the API's connection to the store (blocks: off the runtime, after [`serve`]).
    pub(crate) fn close_store(&self) {
        self.keys.close();
    }
}

/// Serves the API on `listener` until `stop` is cancelled; then lets requests in progress finish
/// (within the timeout) and ends the keys' sessions.
pub(crate) async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Option<(TlsSlot, Handshakes)>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&api, peer) else {
            continue; // dropped: too many connections
        };
        let (api, stop, tls) = (api.clone(), stop.clone(), tls.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match tls {
                Some((slot, pool)) => {
                    let handshake = TlsConn::accept(stream, slot.config(), &pool);
                    let timeout = Duration::from_secs(10);
                    if let Ok(Ok(conn)) = tokio::time::timeout(timeout, handshake).await {
                        connection(api, TokioIo::new(conn), peer, stop).await;
                    }
                }
                None => connection(api, TokioIo::new(stream), peer, stop).await,
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    api.close().await;
}

/// One HTTP connection (keep-alive: several requests, one at a time).
async fn connection<I>(api: Arc<Api>, io: TokioIo<I>, peer: SocketAddr, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(request, peer.ip()).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "api connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        }
    }
}

/// A connection's place among the API's open connections.
struct Slot {
    api: Arc<Api>,
    ip: IpAddr,
}

impl Slot {
    fn take(api: &Arc<Api>, peer: SocketAddr) -> Option<Slot> {
        let mut open = lock(&api.open);
        let total: usize = open.values().sum();
        let mine = open.entry(peer.ip()).or_insert(0);
        if total >= MAX_CONNECTIONS || *mine >= MAX_PER_ADDRESS {
            debug!(peer = %peer, "api: too many connections");
            if *mine == 0 {
                open.remove(&peer.ip());
            }
            return None;
        }
        *mine += 1;
        Some(Slot {
            api: api.clone(),
            ip: peer.ip(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.api.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
