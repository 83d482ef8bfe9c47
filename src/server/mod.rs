//! The listener: binds (port 0 allowed, the bound address is reported), accepts with back-off on
//! errors, enforces connection caps, spawns one tracked task per connection, and on shutdown stops
//! accepting and drains every connection under the grace period.
//!
//! This is where the pieces meet: each connection task gets the socket settings ([`Sockets`]), a
//! chat session over the broker ([`Chat`]), its connection slot and a tracing span.

mod admin;
pub mod cert;
mod limiter;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

use crate::auth::Verifier;
use crate::config::{AuthMode, Config, ConfigError};
use crate::connection::{self, Sockets, TlsSlot};
use crate::hub::{Broker, LocalBroker};
use crate::metrics::Metrics;
use crate::session::typing::TypingTimings;
use crate::session::{Chat, Session};
use limiter::{ConnLimiter, ConnSlot};
pub use tls::TlsReloader;

/// Refusals (HTTP 503) answered at once; past this, extra connections are just closed.
const MAX_CONCURRENT_REFUSALS: usize = 64;
/// File descriptors kept out of the connection budget: listeners, the admin listener and its
/// requests, refusals, log files, the runtime's own.
pub const FD_RESERVE: u64 = 96;
/// Longest pause between accept attempts after repeated errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A bound, not yet running, chat server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The separate `wss://` listener (`tls.listen`), its address and its sockets.
    tls_listener: Option<(TcpListener, SocketAddr, Arc<Sockets>)>,
    admin: Option<TcpListener>,
    /// The HTTP API's listener and state (`api.listen`).
    api: Option<(TcpListener, Arc<crate::api::Api>)>,
    sockets: Arc<Sockets>,
    chat: Arc<Chat>,
    limiter: Arc<ConnLimiter>,
    tls: Option<TlsReloader>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub connections_at_start: usize,
    /// Connections still open when the grace period ran out (0: all closed cleanly).
    pub connections_remaining: usize,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The configuration names something unusable (exit 78): a file, the database.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Checks the files the configuration names, before anything binds: the TLS certificate and key
/// load and match, and the token secret is readable and long enough. Errors name the key.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if config.tls.enabled() {
        tls::load_server_config(&config.tls)?;
    }
    if config.auth.mode == AuthMode::Token || config.auth.has_secret() {
        config.auth.load_secret()?;
    }
    let cluster = &config.cluster;
    for (key, path) in [
        ("cluster.redis_password_file", &cluster.redis_password_file),
        ("cluster.redis_ca_cert", &cluster.redis_ca_cert),
    ] {
        if !cluster.redis_url.is_empty() && !path.is_empty() {
            std::fs::read(path).map_err(|e| ConfigError::File {
                key,
                path: path.clone(),
                reason: crate::config::read_error(&e),
            })?;
        }
    }
    Ok(())
}

impl Server {
    /// Binds the chat listener and, when configured, the admin listener (each may use port 0),
    /// with the single-process broker and, when `storage.path` is set, durable history (opened
    /// before any port is bound); with `cluster.redis_url`, the cluster broker instead.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        Server::bind_with(config, |config, metrics| {
            Ok(if config.cluster.redis_url.is_empty() {
                Arc::new(LocalBroker::from_config(config, metrics)?)
            } else {
                Arc::new(crate::hub::RedisBroker::from_config(config, metrics)?)
            })
        })
        .await
    }

    /// Binds like [`Server::bind`], with the broker `make_broker` builds (it gets the server's
    /// configuration and metrics, before any port is bound).
    pub async fn bind_with(
        config: Config,
        make_broker: impl FnOnce(&Config, &Metrics) -> Result<Arc<dyn Broker>, ConfigError>,
    ) -> Result<Server, BindError> {
        let metrics = Metrics::new();
        let broker = make_broker(&config, &metrics)?;
        let addr = config.listen_addr();
        let listener = listen(addr, config.server.backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let tls_listener = match config.tls.listen_addr() {
            Some(addr) => {
                let l = listen(addr, config.server.backlog).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (tls.listen): {e}"),
                    )
                })?;
                let bound = l.local_addr()?;
                Some((l, bound))
            }
            None => None,
        };
        let admin = match config.admin.addr() {
            Some(addr) => Some(listen(addr, 128).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (admin.listen): {e}"),
                )
            })?),
            None => None,
        };
        let invalid = |e: ConfigError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let limits = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(limits.read_buffer_bytes)
            .write_buffer_size(limits.write_buffer_bytes)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes))
            .accept_unmasked_frames(false);
        let limiter = Arc::new(ConnLimiter::new(
            &config.server,
            metrics.connections_open.clone(),
            metrics.connections_limit.clone(),
        ));
        let (tls, reloader) = if config.tls.enabled() {
            let (server_config, facts) = tls::load_server_config(&config.tls).map_err(invalid)?;
            let slot = TlsSlot::new(server_config);
            if let Some(facts) = facts {
                metrics.tls_certificate_expiry.set(facts.not_after);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                for warning in tls::certificate_warnings(&facts, now) {
                    warn!(cert = %config.tls.cert, names = ?facts.names, "{warning}");
                }
            }
            (
                Some(slot.clone()),
                Some(TlsReloader::new(
                    config.tls.clone(),
                    slot,
                    metrics.tls_certificate_expiry.clone(),
                )),
            )
        } else {
            (None, None)
        };
        // Accounts mode takes tokens too when a secret is set: the token's `sub` is the account.
        let auth = match config.auth.mode {
            AuthMode::Token | AuthMode::Accounts if config.auth.has_secret() => {
                Some(Verifier::new(
                    &config.auth.load_secret().map_err(invalid)?,
                    &crate::auth::Rules::from_config(&config.auth),
                ))
            }
            _ => None,
        };
        let accounts = crate::accounts::Accounts::start(&config, &metrics, broker.store())?;
        if let Some(accounts) = &accounts {
            accounts.on_effects(crate::session::enforcer(broker.clone()));
        }
        let typing = TypingTimings {
            throttle: Duration::from_secs_f64(limits.typing_throttle_secs),
            active_expiry: Duration::from_secs_f64(limits.typing_active_secs),
            paused_expiry: Duration::from_secs_f64(limits.typing_paused_secs),
        };
        let config = Arc::new(config);
        let single_threaded = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
        let sockets = Sockets {
            trusted_proxies: config.trusted_proxies(),
            config: config.clone(),
            ws_config,
            metrics: metrics.clone(),
            tls,
            handshakes: connection::Handshakes::new(),
            flusher: single_threaded.then(Arc::default),
            roster: Arc::default(),
        };
        // With `tls.listen`, the main listener speaks ws:// and the second one wss://, over the
        // same hub (and the same limits, metrics and flusher).
        let (sockets, tls_listener) = match tls_listener {
            Some((l, bound)) => {
                let plain = Sockets {
                    tls: None,
                    ..sockets.clone()
                };
                (Arc::new(plain), Some((l, bound, Arc::new(sockets))))
            }
            None => (Arc::new(sockets), None),
        };
        let api_listener = match config.api.addr() {
            Some(addr) => Some(listen(addr, 128).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (api.listen): {e}"),
                )
            })?),
            None => None,
        };
        // Last, once nothing can fail: it starts the delivery tasks.
        let webhooks = crate::webhooks::Webhooks::start(&config.webhooks, &metrics);
        if let (Some(accounts), Some(hooks)) = (&accounts, &webhooks) {
            let hooks = hooks.clone();
            accounts.on_moderated(Arc::new(move |a| {
                hooks.room_changed(&a.room, &a.actor, &a.action, &a.target, &a.ts);
            }));
        }
        let rates = crate::session::Rates::new(&config.limits);
        let chat = Arc::new(Chat {
            broker,
            config,
            metrics,
            auth,
            accounts,
            typing,
            rates,
            webhooks,
        });
        let api = match api_listener {
            Some(l) => Some((l, crate::api::Api::start(chat.clone())?)),
            None => None,
        };
        Ok(Server {
            listener,
            local_addr,
            tls_listener,
            admin,
            api,
            sockets,
            chat,
            limiter,
            tls: reloader,
        })
    }

    /// The chat address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that re-reads the TLS certificate and key (for SIGHUP); `None` without TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.clone()
    }

    /// Whether the server speaks `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Where `wss://` is served: the separate TLS listener, or the main one when it is TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        match &self.tls_listener {
            Some((_, addr, _)) => Some(*addr),
            None => self.is_tls().then_some(self.local_addr),
        }
    }

    /// Caps connections so that, with `fd_limit` file descriptors (the process's `RLIMIT_NOFILE`),
    /// [`FD_RESERVE`] stay free for the admin listener and refusals: past the cap clients get 503
    /// instead of hanging in the backlog. Returns the cap now in force, if it is below
    /// `server.max_connections`.
    pub fn limit_connections_to_fds(&mut self, fd_limit: u64) -> Option<usize> {
        let budget =
            usize::try_from(fd_limit.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        self.limiter.cap_total(budget)
    }

    /// The HTTP API's address actually bound, if it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The admin address actually bound, if the admin listener is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts connections until `shutdown` is cancelled, then drains them within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> ShutdownReport {
        let Server {
            listener,
            local_addr,
            tls_listener,
            admin,
            api,
            sockets,
            chat,
            limiter,
            tls: _,
        } = self;
        info!(addr = %local_addr, "listening");
        // The server's own tasks, each on a tracker that is waited for at the end: the beat and
        // the flusher stop once every connection is done, the admin listener last (so `/readyz`
        // says 503 until the store has closed).
        let admin_stop = CancellationToken::new();
        let admin_task = TaskTracker::new();
        if let Some(l) = admin {
            let broker = chat.broker.clone();
            let ready = admin::Ready {
                draining: shutdown.clone(),
                backends: Arc::new(move || broker.ready()),
            };
            let metrics = sockets.metrics.clone();
            admin_task.spawn(admin::serve(l, metrics, ready, admin_stop.clone()));
        }
        // The API stops taking requests when shutdown begins; its keys' sessions end before
        // the broker closes.
        let api_task = TaskTracker::new();
        let api_store = api.as_ref().map(|(_, api)| api.clone());
        if let Some((l, api)) = api {
            let with_tls = tls_listener.as_ref().map_or(&sockets, |(_, _, s)| s);
            let tls = (with_tls.tls.clone()).map(|slot| (slot, with_tls.handshakes.clone()));
            api_task.spawn(crate::api::serve(api, l, tls, shutdown.clone()));
        }
        api_task.close();
        let beat_stop = CancellationToken::new();
        let background = TaskTracker::new();
        // Lives until every connection is done: their last frames may still go out through it.
        if let Some(f) = sockets.flusher.clone() {
            background.spawn(until(beat_stop.clone(), async move { f.run().await }));
        }
        // Large rooms' batched joins and leaves go out on this beat.
        {
            let broker = chat.broker.clone();
            let every = Duration::from_millis(chat.config.limits.presence_batch_ms);
            background.spawn(until(beat_stop.clone(), async move {
                let mut beat = tokio::time::interval(every);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    beat.tick().await;
                    broker.tick();
                }
            }));
        }
        let tracker = TaskTracker::new();
        let refusals = Arc::new(AtomicUsize::new(0));
        let mut backoff = Duration::from_millis(5);
        // One descriptor kept aside: when accept fails for want of descriptors, it makes room to
        // tell one waiting client 503 instead of leaving everyone in the backlog.
        let mut spare = std::fs::File::open("/dev/null").ok();
        loop {
            let second = async {
                match &tls_listener {
                    Some((l, _, tls_sockets)) => (l.accept().await, tls_sockets),
                    None => std::future::pending().await,
                }
            };
            let (accepted, sockets) = tokio::select! {
                _ = shutdown.cancelled() => break,
                res = listener.accept() => (res, &sockets),
                (res, tls_sockets) = second => (res, tls_sockets),
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning, and keep serving.
                    error!(error = %e, "accept failed");
                    if spare.take().is_some() {
                        if let Ok((stream, _)) = listener.accept().await {
                            sockets
                                .metrics
                                .connections_refused
                                .with_label_values(&["fds"])
                                .inc();
                            let _ = stream.try_write(OUT_OF_FDS);
                        }
                        spare = std::fs::File::open("/dev/null").ok();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            let _ = stream.set_nodelay(true);
            // A trusted proxy's connections are counted under their clients' addresses once
            // those are known (connection::Admission), never under the proxy's own.
            let slot = if crate::addr::any_contains(&sockets.trusted_proxies, peer.ip()) {
                limiter.acquire_unplaced()
            } else {
                limiter.acquire(peer.ip())
            };
            match slot {
                Ok(slot) => {
                    sockets.metrics.connections_accepted.inc();
                    let (task, span) =
                        connection_task(stream, peer, slot, sockets, &chat, &shutdown);
                    // Instrumented only when its span is on (debug logging): a span's 40 bytes
                    // would otherwise size every connection's task.
                    if span.is_disabled() {
                        tracker.spawn(task);
                    } else {
                        tracker.spawn(task.instrument(span));
                    }
                }
                Err(refusal) => {
                    debug!(%peer, why = refusal.body.trim(), "refusing connection");
                    sockets
                        .metrics
                        .connections_refused
                        .with_label_values(&[refusal.label])
                        .inc();
                    if refusals.fetch_add(1, Ordering::Relaxed) < MAX_CONCURRENT_REFUSALS {
                        let refusals = refusals.clone();
                        let sockets = sockets.clone();
                        tracker.spawn(async move {
                            connection::refuse(stream, &sockets, &refusal).await;
                            refusals.fetch_sub(1, Ordering::Relaxed);
                        });
                    } else {
                        refusals.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        drop(listener);
        drop(tls_listener);
        let open = limiter.open();
        info!(connections = open, "shutdown started: closing connections");
        sockets.roster.close_all();
        tracker.close();
        let grace = sockets.config.server.shutdown_grace();
        if timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                remaining = limiter.open(),
                grace_secs = grace.as_secs_f64(),
                "grace period over"
            );
        }
        let report = ShutdownReport {
            connections_at_start: open,
            connections_remaining: limiter.open(),
        };
        info!(
            connections = report.connections_at_start,
            remaining = report.connections_remaining,
            "shutdown complete"
        );
        api_task.wait().await;
        // Every connection has left its rooms: their leaves are queued; the endpoints get one
        // more try at what they hold.
        if let Some(hooks) = &chat.webhooks {
            hooks.close().await;
        }
        beat_stop.cancel();
        background.close();
        background.wait().await;
        // Every connection is closed: what was accepted becomes durable.
        let broker = chat.broker.clone();
        let accounts = chat.accounts.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(api) = api_store {
                api.close_store();
            }
            broker.close();
            if let Some(accounts) = accounts {
                accounts.close();
            }
        })
        .await;
        admin_stop.cancel();
        admin_task.close();
        admin_task.wait().await;
        report
    }
}

const OUT_OF_FDS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 40\r\nConnection: close\r\n\r\nserver at capacity: out of descriptors\r\n";

/// The task serving one accepted connection, which holds the connection's slot for its life, and
/// the span it runs in when debug logging is on (the peer, a connection id and, once known, the
/// user).
fn connection_task(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    sockets: &Arc<Sockets>,
    chat: &Arc<Chat>,
    shutdown: &CancellationToken,
) -> (impl Future<Output = ()> + Send + 'static, tracing::Span) {
    let conn = crate::hub::next_conn();
    let chat = chat.clone();
    let make = move |mailbox, client| Session::new(chat, conn, client, mailbox);
    let accepted = connection::Accepted {
        stream,
        peer,
        sockets: sockets.clone(),
        shutdown: shutdown.clone(),
        held: slot,
        make,
    };
    (
        connection::serve(Box::new(accepted)),
        connection::span(peer, conn),
    )
}

/// A listening socket with the given backlog (tokio's `TcpListener::bind` fixes it at 128, which
/// bursts of handshakes overflow).
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs `work` until `stop` is cancelled (a task that would otherwise run forever).
async fn until(stop: CancellationToken, work: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = work => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection costs at least its task's future; the loop's state is sized by what it
    /// holds across its awaits (see ARCHITECTURE.md). This pins it.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let mut config = Config::default();
        config.server.port = 0;
        config.admin.listen = String::new();
        config.storage.path = String::new();
        let server = Server::bind(config).await.unwrap();
        let slot = server.limiter.acquire(peer.ip()).ok().unwrap();
        let (task, _) = connection_task(
            stream,
            peer,
            slot,
            &server.sockets,
            &server.chat,
            &CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&task);
        println!("connection task: {size} bytes");
        // 1,624 bytes before issue 31; 1,344 (serve's arguments boxed, typing timings no longer
        // copied per connection, f32 rate buckets, the hello's leftovers boxed); 1,168 (the
        // upgrade a future of its own, the loop's event gone before its write, the shutdown token
        // held once, rate buckets one `Instant` each); 912 (no shutdown token or `Notify`
        // waiter in the loop's select, the timer boxed, the connection held across one await,
        // no span unless debug logging is on). Tokio's cell is this plus 112 bytes (header,
        // scheduler, id, the stage's tag, the tracker's token, trailer); past 1,024, jemalloc
        // serves it from its 1,280 class: 8 bytes more cost 256 per connection.
        assert!(size <= 912, "the connection task grew to {size} bytes");
    }
}
