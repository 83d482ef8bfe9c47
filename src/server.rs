//! The listener: binds (port 0 allowed, the bound address is reported), accepts with back-off on
//! errors, enforces connection caps, spawns one tracked task per connection, and on shutdown stops
//! accepting and drains every connection under the grace period.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::admin;
use crate::auth::Verifier;
use crate::config::{AuthMode, Config, ServerConfig};
use crate::connection;
use crate::hub::{Hub, HubLimits};
use crate::mailbox::Flusher;
use crate::metrics::Metrics;
use crate::tls::TlsState;
use crate::transport::Transport;

/// Refusals (HTTP 503) answered at once; past this, extra connections are just closed.
const MAX_CONCURRENT_REFUSALS: usize = 64;
/// Longest pause between accept attempts after repeated errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// Users and rooms.
    pub(crate) hub: Hub,
    /// The validated configuration.
    pub(crate) config: Config,
    /// tungstenite settings derived from `config.limits`.
    pub(crate) ws_config: WebSocketConfig,
    /// What is counted, for `/metrics`.
    pub(crate) metrics: Metrics,
    /// The TLS configuration, when serving `wss://`.
    pub(crate) tls: Option<TlsState>,
    /// Token verification, in `auth.mode = "token"`.
    pub(crate) auth: Option<Verifier>,
    /// Writes queued frames to plain sockets (see `mailbox`); only on a single-threaded runtime.
    /// On several worker threads one flusher would serialise every write (and contend with
    /// publishers on other threads), so each connection task writes its own mailbox there.
    pub(crate) flusher: Option<Arc<Flusher>>,
}

/// A bound, not yet running, chat server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    limiter: Arc<ConnLimiter>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub connections_at_start: usize,
    /// Connections still open when the grace period ran out (0: all closed cleanly).
    pub connections_remaining: usize,
}

impl Server {
    /// Binds the chat listener and, when configured, the admin listener (each may use port 0).
    pub async fn bind(config: Config) -> io::Result<Server> {
        let addr = config.listen_addr();
        let listener = listen(addr, config.server.backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let admin = match config.admin.addr() {
            Some(addr) => Some(listen(addr, 128).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (admin.listen): {e}"),
                )
            })?),
            None => None,
        };
        let limits = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(limits.read_buffer_bytes)
            .write_buffer_size(limits.write_buffer_bytes)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes))
            .accept_unmasked_frames(false);
        let metrics = Metrics::new();
        let hub = Hub::new(
            HubLimits {
                history_size: config.history.size,
                history_on_join: config.history.on_join,
                max_rooms: limits.max_rooms,
            },
            metrics.clone(),
        );
        let limiter = Arc::new(ConnLimiter::new(
            &config.server,
            metrics.connections_open.clone(),
        ));
        let invalid = |e: crate::config::ConfigError| {
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
        };
        let tls = if config.tls.enabled() {
            Some(TlsState::new(&config.tls).map_err(invalid)?)
        } else {
            None
        };
        let auth = match config.auth.mode {
            AuthMode::Token => Some(Verifier::new(&config.auth.load_secret().map_err(invalid)?)),
            AuthMode::Open => None,
        };
        Ok(Server {
            listener,
            local_addr,
            admin,
            shared: Arc::new(Shared {
                hub,
                config,
                ws_config,
                metrics,
                tls,
                auth,
                flusher: (tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::CurrentThread)
                    .then(Arc::default),
            }),
            limiter,
        })
    }

    /// The chat address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that re-reads the TLS certificate and key (for SIGHUP); `None` without TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.shared
            .tls
            .as_ref()
            .map(|_| TlsReloader(self.shared.clone()))
    }

    /// Whether the server speaks `wss://`.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
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
            admin,
            shared,
            limiter,
        } = self;
        info!(addr = %local_addr, "listening");
        let admin_stop = CancellationToken::new();
        let admin_task = admin.map(|l| {
            tokio::spawn(admin::serve(
                l,
                shared.metrics.clone(),
                shutdown.clone(),
                admin_stop.clone(),
            ))
        });
        // Lives until every connection is done: their last frames may still go out through it.
        let flusher = shared
            .flusher
            .clone()
            .map(|f| tokio::spawn(async move { f.run().await }));
        let tracker = TaskTracker::new();
        let refusals = Arc::new(AtomicUsize::new(0));
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                res = listener.accept() => res,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning, and keep serving.
                    error!(error = %e, "accept failed");
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
            match limiter.acquire(peer.ip()) {
                Ok(slot) => {
                    shared.metrics.connections_accepted.inc();
                    tracker.spawn(connection::serve(
                        stream,
                        peer,
                        shared.clone(),
                        shutdown.clone(),
                        slot,
                    ));
                }
                Err(Refusal { label, why, status }) => {
                    debug!(%peer, why, "refusing connection");
                    shared
                        .metrics
                        .connections_refused
                        .with_label_values(&[label])
                        .inc();
                    if refusals.fetch_add(1, Ordering::Relaxed) < MAX_CONCURRENT_REFUSALS {
                        let refusals = refusals.clone();
                        let wait = shared.config.server.handshake_timeout();
                        let tls = shared.tls.as_ref().map(TlsState::acceptor);
                        tracker.spawn(async move {
                            refuse(stream, tls, status, why, wait).await;
                            refusals.fetch_sub(1, Ordering::Relaxed);
                        });
                    } else {
                        refusals.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        drop(listener);
        let open = limiter.open();
        info!(connections = open, "shutdown started: closing connections");
        tracker.close();
        let grace = shared.config.server.shutdown_grace();
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
        if let Some(flusher) = flusher {
            flusher.abort();
            let _ = flusher.await;
        }
        admin_stop.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        report
    }
}

/// Answers an over-the-limit upgrade request with HTTP 503 and a reason, then closes.
#[allow(clippy::result_large_err)] // the closure's signature is tungstenite's Callback
async fn refuse(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    status: StatusCode,
    why: &'static str,
    wait: Duration,
) {
    let reply = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
        *resp.status_mut() = status;
        Err(resp)
    };
    let _ = timeout(wait, async {
        let transport = match tls {
            Some(acceptor) => Transport::tls(acceptor.accept(stream).await.ok()?),
            None => Transport::plain(stream),
        };
        tokio_tungstenite::accept_hdr_async(transport, reply)
            .await
            .ok()
    })
    .await;
}

/// Re-reads the TLS certificate and key of a running server.
#[derive(Clone)]
pub struct TlsReloader(Arc<Shared>);

impl TlsReloader {
    /// Loads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        match &self.0.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }
}

/// Why a connection was turned away, and with what HTTP status.
struct Refusal {
    label: &'static str,
    why: &'static str,
    status: StatusCode,
}

/// Counts open connections, in total and per IP address.
#[derive(Debug)]
struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    rate_per_sec: f64,
    burst: f64,
    open_gauge: IntGauge,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connect-rate token buckets per address: (tokens, last refill).
    rates: HashMap<IpAddr, (f64, Instant)>,
}

/// Connect-rate buckets kept before idle (full) ones are pruned.
const MAX_RATE_ENTRIES: usize = 4096;

/// One open connection's place in the limits; freed on drop.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    fn new(server: &ServerConfig, open_gauge: IntGauge) -> ConnLimiter {
        ConnLimiter {
            max_total: server.max_connections,
            max_per_ip: server.max_connections_per_ip,
            rate_per_sec: server.connect_rate_per_ip,
            burst: f64::from(server.connect_burst_per_ip),
            open_gauge,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// A slot for one more connection, or the refusal's (metric label, reason).
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.max_total > 0 && state.total >= self.max_total {
            return Err(Refusal {
                label: "capacity",
                why: "server at capacity: too many connections",
                status: StatusCode::SERVICE_UNAVAILABLE,
            });
        }
        if self.max_per_ip > 0 && state.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal {
                label: "per_ip",
                why: "too many connections from your address",
                status: StatusCode::SERVICE_UNAVAILABLE,
            });
        }
        if self.rate_per_sec > 0.0 {
            let now = Instant::now();
            if state.rates.len() >= MAX_RATE_ENTRIES {
                let (rate, burst) = (self.rate_per_sec, self.burst);
                state.rates.retain(|_, (tokens, last)| {
                    *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
                });
            }
            let (tokens, last) = state.rates.entry(ip).or_insert((self.burst, now));
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_sec)
                .min(self.burst);
            *last = now;
            if *tokens < 1.0 {
                return Err(Refusal {
                    label: "rate",
                    why: "connecting too often from your address; slow down",
                    status: StatusCode::TOO_MANY_REQUESTS,
                });
            }
            *tokens -= 1.0;
        }
        if self.max_per_ip > 0 {
            *state.per_ip.entry(ip).or_default() += 1;
        }
        state.total += 1;
        self.open_gauge.inc();
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }

    fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut state = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        state.total -= 1;
        self.limiter.open_gauge.dec();
        if self.limiter.max_per_ip > 0
            && let Some(n) = state.per_ip.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
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
        let server = Server::bind(config).await.unwrap();
        let slot = server.limiter.acquire(peer.ip()).ok().unwrap();
        let task = connection::serve(
            stream,
            peer,
            server.shared.clone(),
            CancellationToken::new(),
            slot,
        );
        let size = std::mem::size_of_val(&task);
        println!("connection task: {size} bytes");
        // 1,560 bytes before the broker seam; it may not grow by more than 64.
        assert!(size <= 1624, "the connection task grew to {size} bytes");
    }
}
