//! One task per client socket: the WebSocket upgrade, then one `select!` loop over the socket, the
//! client's mailbox and its timer (shutdown arrives through the mailbox: see `roster`).
//!
//! This module owns the transport rules: handshake timeout, pings and the silent-peer cut-off, the
//! task's share of writing (its replies, TLS, and sockets the flusher found full: queue, then one
//! flush; see `mailbox`), the write timeout, and the mapping from what went wrong to the close code
//! the peer sees. What frames mean is a [`Handler`]'s business (the chat session); this module
//! never names the hub.

mod bell;
mod echo;
mod handshake;
mod http;
pub(crate) mod mailbox;
mod proxy;
mod roster;
mod tls;
mod transport;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use handshake::refuse;
pub(crate) use http::Refusal as HttpRefusal;
use mailbox::{Flusher, Mailbox};
pub(crate) use roster::Roster;
use roster::Seat;
pub(crate) use tls::{Handshakes, TlsConn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::CloseReason;

use ws::Ws;

/// A far-off deadline for when no timer is due.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// What every socket task shares: settings, metrics, TLS and the flusher (no chat state). One
/// per listener (they differ in `tls`), sharing the rest.
#[derive(Debug, Clone)]
pub(crate) struct Sockets {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// tungstenite settings derived from `config.limits`.
    pub ws_config: WebSocketConfig,
    /// What is counted, for `/metrics`.
    pub metrics: Metrics,
    /// The TLS configuration, when serving `wss://`.
    pub tls: Option<TlsSlot>,
    /// Where TLS handshakes do their crypto (off the chat thread).
    pub handshakes: tls::Handshakes,
    /// `server.trusted_proxies`, parsed: peers whose word about the client's address is taken.
    pub trusted_proxies: Vec<crate::addr::Cidr>,
    /// Writes queued frames to plain sockets (see `mailbox`); only on a single-threaded runtime.
    /// On several worker threads one flusher would serialise every write (and contend with
    /// publishers on other threads), so each connection task writes its own mailbox there.
    pub flusher: Option<Arc<Flusher>>,
    /// Every running connection's mailbox: how shutdown reaches them.
    pub roster: Arc<Roster>,
}

/// The TLS server configuration in use, replaceable while running (SIGHUP) without touching
/// established connections.
#[derive(Debug, Clone)]
pub(crate) struct TlsSlot(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl TlsSlot {
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> TlsSlot {
        TlsSlot(Arc::new(RwLock::new(config)))
    }

    /// The configuration for the next handshake.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        crate::sync::read(&self.0).clone()
    }

    /// Uses `config` for every later handshake.
    pub(crate) fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *crate::sync::write(&self.0) = config;
    }
}

/// What the loop should do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep going.
    Continue,
    /// Close the connection this way (after the replies produced so far).
    Close(CloseReason),
}

/// What a connection's frames mean: the chat session. Every method is synchronous; replies for
/// this client are appended to `out` and written by the loop.
pub(crate) trait Handler {
    /// The client's outbound queue (other tasks push into it; the loop drains it).
    fn mailbox(&self) -> &Arc<Mailbox>;
    /// A text frame.
    fn on_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow;
    /// A binary frame.
    fn on_binary(&mut self, data: &[u8], out: &mut Vec<Utf8Bytes>) -> Flow;
    /// Whether frames the handler queues itself (not replies: the echo's binary frames) wait for
    /// the next write.
    fn has_own_frames(&self) -> bool {
        false
    }
    /// Queues those frames into the mailbox, just before a flush.
    fn queue_own_frames(&mut self) {}
    /// A ping (answered by the WebSocket layer; counted here).
    fn on_ping(&mut self) -> Flow;
    /// Control entries arrived in the mailbox (late answers).
    fn on_controls(&mut self, out: &mut Vec<Utf8Bytes>) -> Flow;
    /// Whether answered requests still wait behind an earlier unanswered one: frames pushed since
    /// their answers arrived stay held until their replies are queued.
    fn replies_waiting(&self) -> bool {
        false
    }
    /// Whether to read the next frame now. While false the socket is not read, so a client that
    /// sends faster than its requests are carried out is slowed by TCP's own flow control instead
    /// of refused (a broker that answers late, say a cluster's, has a bounded queue per client).
    fn accepts_input(&self) -> bool {
        true
    }
    /// When [`Handler::on_timer`] is next due.
    fn next_deadline(&self) -> Option<Instant>;
    /// A deadline passed.
    fn on_timer(&mut self, now: Instant);
    /// Whether the client has said hello (until then the handshake timeout runs).
    fn welcomed(&self) -> bool;
    /// The frame telling the client the server is shutting down.
    fn shutdown_notice(&self) -> Utf8Bytes;
    /// Who the connection's log lines are about (its span says so at debug level only).
    fn who(&self) -> Who<'_> {
        Who::default()
    }
}

/// Who a connection is, for its log lines at `info` and above: the connection's span carries
/// it at debug level only, since a span is kept for every open connection (0.4 KiB each at
/// `info`, kept after they go: BENCHMARKS.md).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub conn: Option<u64>,
    pub client: Option<IpAddr>,
    pub user: Option<&'a str>,
}

/// An event at `info` (or another level) about a connection, with its [`Who`]:
/// `note!(info, who, fields…, "text")`. The connection's own lines and the session's use it.
macro_rules! note {
    ($level:ident, $who:expr, $($rest:tt)+) => {{
        let who: $crate::connection::Who<'_> = $who;
        tracing::$level!(
            conn = who.conn,
            client = who.client.map(tracing::field::display),
            user = who.user,
            $($rest)+
        )
    }};
}
pub(crate) use note;

/// Why the loop ended, and so how to close.
#[derive(Debug)]
enum End {
    /// Close this way.
    Close(CloseReason),
    /// An admin kicked the client (the reason waits in the mailbox: the loop holds its end
    /// across the write's await, so a payload here would size every task).
    Kicked,
}

/// What woke the loop.
enum Event {
    Mail,
    Frame(Option<Result<Message, WsError>>),
    Timer,
}

/// A connection's place in the server's limits, held as long as the connection. A connection
/// from a trusted proxy is counted under its client's address once that is known (from the
/// PROXY header or the request head), and may be refused then.
pub(crate) trait Admission: Send {
    /// Whether the peer is a trusted proxy, so the connection waits to be counted under its
    /// client (the server decided this when it accepted it).
    fn proxied(&self) -> bool;
    /// Counts the connection under `client`, or refuses it (503 or 429, with the `reason` label
    /// of `chatd_connections_refused_total` and the line the client reads).
    fn admit(&mut self, client: IpAddr) -> Result<(), HttpRefusal>;
}

/// An accepted TCP connection from `peer`, to [`serve`]. `held` is its place in the server's
/// limits; `make` makes its handler once the upgrade is done, from the connection's mailbox and
/// the client's address (`peer`'s, or the one a trusted proxy gave).
pub(crate) struct Accepted<A, M> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub sockets: Arc<Sockets>,
    pub shutdown: CancellationToken,
    pub held: A,
    pub make: M,
}

/// Serves one accepted connection until it ends; on `diagnostics.echo_path` the handler is the
/// [`echo::Echo`] instead. Boxed in: an async fn keeps room for its arguments in every state for
/// its whole life (beside the locals they are moved into), so one pointer is all that the
/// connection's task pays for them.
pub(crate) async fn serve<H: Handler>(
    accepted: Box<Accepted<impl Admission, impl FnOnce(Arc<Mailbox>, IpAddr) -> H>>,
) {
    // The upgrade is a future of its own: what only it uses (the handler's maker, the accept
    // time) has no place in the task's state while the connection runs.
    let Some((mut conn, held)) = open(accepted).await else {
        return;
    };
    // One await while the connection lives: a local kept across two would have a slot of its
    // own in the task's state, beside (not over) the upgrade's.
    conn.serve().await;
    // The connection's place in the limits is given up once it has closed.
    drop(held);
}

/// The WebSocket upgrade of an accepted connection, and its chat connection if it became one:
/// `None` when it was refused, served the page, failed, or was a diagnostic echo (served here).
async fn open<A: Admission, H: Handler>(
    accepted: Box<Accepted<A, impl FnOnce(Arc<Mailbox>, IpAddr) -> H>>,
) -> Option<(Connection<H>, A)> {
    // Unboxed in a block of its own, so the box is freed now (a moved-from box lives, and keeps
    // its allocation, to the end of its scope).
    let Accepted {
        stream,
        peer,
        sockets,
        shutdown,
        mut held,
        make,
    } = {
        let accepted = accepted;
        *accepted
    };
    let accepted = Instant::now();
    let handshake_timeout = sockets.config.server.handshake_timeout();
    // Boxed so the (large) handshake state does not size every connection task for its whole life.
    let upgrade = Box::pin(timeout(
        handshake_timeout,
        handshake::upgrade(stream, peer, &sockets, &mut held),
    ));
    let (ws, echo, client) = tokio::select! {
        res = upgrade => match res {
            Ok(Ok(handshake::Opened::WebSocket(ws, echo, client))) => (ws, echo, client),
            Ok(Ok(handshake::Opened::Refused(label))) => {
                sockets.metrics.connections_refused.with_label_values(&[label]).inc();
                return None;
            }
            Ok(Ok(handshake::Opened::Page(status))) => {
                debug!(status, "served the chat page");
                let status = match status {
                    200 => "200",
                    304 => "304",
                    404 => "404",
                    _ => "405",
                };
                sockets.metrics.web_responses.with_label_values(&[status]).inc();
                return None;
            }
            Ok(Err((reason, e))) => {
                debug!(error = %e, reason, "upgrade failed");
                sockets.metrics.handshake_failures.with_label_values(&[reason]).inc();
                return None;
            }
            Err(_) => {
                debug!("upgrade timed out");
                sockets.metrics.handshake_failures.with_label_values(&["timeout"]).inc();
                return None;
            }
        },
        _ = shutdown.cancelled() => return None,
    };
    let limits = &sockets.config.limits;
    let mailbox = Arc::new(Mailbox::new(
        limits.outbound_queue,
        limits.outbound_queue_bytes,
        sockets.metrics.bytes_sent.clone(),
    ));
    let hello_deadline = accepted + handshake_timeout;
    if echo {
        echo_connection(ws, mailbox, sockets, hello_deadline).await;
        return None;
    }
    let conn = Connection::start(ws, make(mailbox, client), sockets, hello_deadline);
    Some((conn, held))
}

/// A diagnostic echo connection, boxed: it must not size every chat connection's task.
fn echo_connection(
    ws: Ws,
    mailbox: Arc<Mailbox>,
    sockets: Arc<Sockets>,
    hello_deadline: Instant,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let conn = Connection::start(ws, echo::Echo::new(mailbox), sockets, hello_deadline);
    Box::pin(async move {
        let mut conn = conn;
        conn.serve().await
    })
}

struct Connection<H> {
    ws: Ws,
    handler: H,
    sockets: Arc<Sockets>,
    /// Where shutdown finds this connection's mailbox.
    seat: Seat,
    /// The `hello` must succeed before this.
    hello_deadline: Instant,
    /// Last time any frame arrived.
    last_heard: Instant,
    /// When to send the next ping (`None`: pings off).
    next_ping: Option<Instant>,
    /// Replies produced by the handler, waiting to be queued and written.
    out: Vec<Utf8Bytes>,
    /// The mailbox holds frames this task must write (TLS, or a plain socket that was full).
    flush_due: bool,
    /// A ping is due with the next write.
    ping_due: bool,
    /// The mailbox signalled during a write: handle it before waiting again.
    mail_waiting: bool,
}

impl<H> Drop for Connection<H> {
    fn drop(&mut self) {
        self.sockets.roster.leave(self.seat);
    }
}

fn step(flow: Flow) -> Result<(), End> {
    match flow {
        Flow::Continue => Ok(()),
        Flow::Close(reason) => Err(End::Close(reason)),
    }
}

impl<H: Handler> Connection<H> {
    /// An upgraded connection with its handler, attached to its mailbox (and so to the flusher).
    fn start(ws: Ws, handler: H, sockets: Arc<Sockets>, hello_deadline: Instant) -> Connection<H> {
        let seat = sockets.roster.enter(handler.mailbox());
        let mut conn = Connection {
            ws,
            handler,
            sockets,
            seat,
            hello_deadline,
            last_heard: Instant::now(),
            next_ping: None,
            out: Vec::new(),
            flush_due: false,
            ping_due: false,
            mail_waiting: false,
        };
        let mailbox = conn.handler.mailbox().clone();
        conn.ws
            .get_mut()
            .attach(mailbox, conn.sockets.flusher.as_ref());
        conn.next_ping = conn
            .sockets
            .config
            .server
            .ping_interval()
            .map(|i| conn.last_heard + i);
        conn
    }

    /// The loop, then the close.
    async fn serve(&mut self) {
        let end = self.run().await;
        // Boxed: the close paths are large and run once, so they should not size every task.
        Box::pin(self.finish(end)).await;
    }

    /// The loop: wait for one event, handle it synchronously, then write whatever it produced with
    /// a single flush. Keeping one write await point (timed by the loop's own timer) keeps every
    /// connection task small; see ARCHITECTURE.md.
    async fn run(&mut self) -> End {
        let mailbox = self.handler.mailbox().clone();
        // Boxed: 112 bytes that would size every connection's task, which then lands in
        // jemalloc's 1,280-byte class instead of the 1,024 one (the box is jemalloc's 112 class).
        let mut timer = Box::pin(sleep_until(self.deadline()));
        loop {
            // (Locals held across the awaits below size every connection's task: none here.)
            if timer.deadline() != self.deadline() {
                timer.as_mut().reset(self.deadline());
            }
            // The event in a block of its own: it is gone before the write's await (a local
            // still in scope there would keep its room in the task's state).
            let step = {
                let event = if std::mem::take(&mut self.mail_waiting) {
                    Event::Mail
                } else {
                    tokio::select! {
                        biased;
                        _ = mailbox.ready() => Event::Mail,
                        frame = self.ws.next(), if self.handler.accepts_input() => Event::Frame(frame),
                        _ = &mut timer => Event::Timer,
                    }
                };
                match event {
                    Event::Mail => self.on_mail(),
                    Event::Frame(frame) => self.on_frame(frame),
                    Event::Timer => self.on_timer(),
                }
            };
            // What the step produced goes out before any close it asked for.
            if self.ping_due
                || self.flush_due
                || !self.out.is_empty()
                || self.handler.has_own_frames()
            {
                let write_timeout = self.sockets.config.server.write_timeout();
                timer.as_mut().reset(Instant::now() + write_timeout);
                // While a write waits for a full socket, a queue that overflows ends the
                // connection at once; other mail is handled once the write is done.
                let written = loop {
                    tokio::select! {
                        res = self.write_pending() => break res,
                        _ = &mut timer => break Err(End::Close(CloseReason::WriteStalled)),
                        _ = mailbox.ready() => {
                            if mailbox.overflowed() {
                                break Err(End::Close(CloseReason::SlowConsumer));
                            }
                            self.mail_waiting = true;
                        }
                    }
                };
                if let Err(end) = written {
                    return end;
                }
            }
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// The earliest time something must happen without any input.
    fn deadline(&self) -> Instant {
        let mut at = self.last_heard + IDLE;
        if !self.handler.welcomed() {
            at = at.min(self.hello_deadline);
        }
        if let Some(ping) = self.next_ping {
            at = at.min(ping);
        }
        if let Some(interval) = self.sockets.config.server.ping_interval() {
            at = at.min(self.last_heard + 2 * interval);
        }
        if let Some(due) = self.handler.next_deadline() {
            at = at.min(due);
        }
        at
    }

    fn on_mail(&mut self) -> Result<(), End> {
        let signals = self.handler.mailbox().signals();
        self.flush_due = signals.queued;
        if signals.shutdown {
            return Err(End::Close(CloseReason::Shutdown));
        }
        if signals.failed {
            return Err(End::Close(CloseReason::Gone));
        }
        if signals.overflowed {
            note!(
                info,
                self.handler.who(),
                "closing slow consumer: outbound queue full"
            );
            return Err(End::Close(CloseReason::SlowConsumer));
        }
        if signals.controls {
            // Frames are held behind the answers taken here until `write_pending` queues them.
            self.flush_due = true;
            step(self.handler.on_controls(&mut self.out))?;
        }
        if signals.kicked {
            Err(End::Kicked)
        } else if signals.logged_out {
            Err(End::Close(CloseReason::LoggedOut))
        } else {
            Ok(())
        }
    }

    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), End> {
        self.last_heard = Instant::now();
        let message = match frame {
            None => return Err(End::Close(CloseReason::Gone)),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(End::Close(read_error(e))),
        };
        let flow = match message {
            Message::Text(text) => {
                let metrics = &self.sockets.metrics;
                metrics.bytes_received.inc_by(text.len() as u64);
                let started = std::time::Instant::now();
                let flow = self.handler.on_text(text.as_str(), &mut self.out);
                metrics
                    .handling_seconds
                    .observe(started.elapsed().as_secs_f64());
                flow
            }
            Message::Binary(data) => self.handler.on_binary(&data, &mut self.out),
            Message::Close(_) => return Err(End::Close(CloseReason::ClientClosed)),
            Message::Ping(_) => self.handler.on_ping(),
            Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        };
        step(flow)
    }

    fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if !self.handler.welcomed() && now >= self.hello_deadline {
            debug!("no hello within the handshake timeout");
            return Err(End::Close(CloseReason::HelloTimeout));
        }
        if let Some(interval) = self.sockets.config.server.ping_interval() {
            if now >= self.last_heard + 2 * interval {
                note!(info, self.handler.who(), "closing silent peer");
                return Err(End::Close(CloseReason::PingTimeout));
            }
            if self.next_ping.is_some_and(|p| now >= p) {
                self.next_ping = Some(now + interval);
                self.ping_due = true;
            }
        }
        self.handler.on_timer(now);
        Ok(())
    }

    /// Feeds the handler's own frames and the due ping, queues the handler's replies behind what the mailbox
    /// holds, then flushes once: the mailbox drains everything in as few writes as it can.
    async fn write_pending(&mut self) -> Result<(), End> {
        self.flush_due = false;
        // Frames are queued synchronously (framed here, not by tungstenite): the only await is
        // the flush, which keeps this future, and so every connection task, small.
        self.handler.queue_own_frames();
        let mailbox = self.handler.mailbox();
        if std::mem::take(&mut self.ping_due) {
            mailbox.queue_frame(mailbox::OPCODE_PING, &[]);
        }
        // Taken, not drained: an idle connection keeps no room for replies.
        for frame in std::mem::take(&mut self.out) {
            mailbox.reply(&frame);
        }
        // What late answers produced is queued: what was held behind them may follow.
        if !self.handler.replies_waiting() {
            mailbox.release();
        }
        if mailbox.flusher_writes() {
            return Ok(());
        }
        self.ws
            .flush()
            .await
            .map_err(|_| End::Close(CloseReason::Gone))
    }

    /// Writes everything queued, within the write timeout.
    async fn flush_out(&mut self) -> Result<(), End> {
        let limit = self.sockets.config.server.write_timeout();
        match timeout(limit, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Close(CloseReason::Gone)),
            Err(_) => Err(End::Close(CloseReason::WriteStalled)),
        }
    }

    /// Ends the connection the way `end` calls for.
    async fn finish(&mut self, end: End) {
        debug!(end = ?end, "connection ending");
        let reason = match &end {
            End::Close(reason) => *reason,
            End::Kicked => CloseReason::Kicked,
        };
        let metrics = self.sockets.metrics.clone();
        metrics
            .connections_closed
            .with_label_values(&[reason.label()])
            .inc();
        let slow = matches!(
            reason,
            CloseReason::SlowConsumer | CloseReason::WriteStalled
        );
        if slow {
            metrics.slow_consumer_disconnects.inc();
        }
        // Only the close frame may follow what is queued now.
        let mailbox = self.handler.mailbox().clone();
        mailbox.seal();
        if slow {
            mailbox.discard();
        }
        let linger = handshake::CLOSE_LINGER;
        match (end, reason) {
            (_, CloseReason::Shutdown) => {
                // Messages accepted before the signal go out first, then the notice, then the close.
                mailbox.reply(&self.handler.shutdown_notice());
                if self.flush_out().await.is_ok() {
                    let grace = self.sockets.config.server.shutdown_grace();
                    self.close(reason, reason.text(), grace).await;
                }
            }
            // After a protocol-level error the incoming stream is no longer frames we can parse.
            (
                _,
                CloseReason::Protocol
                | CloseReason::InvalidUtf8
                | CloseReason::TooBig
                | CloseReason::FrameTooBig,
            ) => self.close_after_error(reason).await,
            (End::Kicked, _) => {
                let why = mailbox.kick_reason().unwrap_or_default();
                let text = format!("kicked: {why}");
                self.close(reason, &text, linger).await
            }
            (_, CloseReason::ClientClosed) => {
                // tungstenite queued the reply to the peer's close; flushing sends it, then the
                // transport drains the mailbox (tungstenite reports "closed" instead of flushing).
                use tokio::io::AsyncWriteExt;
                let _ = timeout(linger, async {
                    let _ = self.ws.flush().await;
                    self.ws.get_mut().flush().await
                })
                .await;
            }
            (_, CloseReason::WriteStalled) => {
                note!(
                    info,
                    self.handler.who(),
                    "dropped slow consumer: write timed out"
                );
            }
            (_, CloseReason::Gone) => {}
            (_, reason) => self.close(reason, reason.text(), linger).await,
        }
    }

    /// Sends a close frame and waits (up to `linger`) for the peer to answer it.
    async fn close(&mut self, reason: CloseReason, text: &str, linger: Duration) {
        let frame = close_frame(reason, text);
        let ws = &mut self.ws;
        let _ = timeout(linger, async {
            ws.close(Some(frame)).await?;
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<_, WsError>(())
        })
        .await;
    }

    /// Fails the connection (RFC 6455 §7.1.7): sends the close frame, half-closes, and discards
    /// whatever the peer is still sending until it closes too (bounded by `CLOSE_LINGER`).
    /// Dropping the socket with unread input would send a TCP reset, which can destroy our close
    /// frame in the peer's receive buffer before it reads it: the 1009 for an oversized message
    /// would never arrive (Autobahn 9.1.3).
    async fn close_after_error(&mut self, reason: CloseReason) {
        let frame = close_frame(reason, reason.text());
        let _ = timeout(handshake::CLOSE_LINGER, async {
            let _ = self.ws.close(Some(frame)).await;
            handshake::half_close_and_drain(self.ws.get_mut()).await;
        })
        .await;
    }
}

fn close_frame(reason: CloseReason, text: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(reason.code().unwrap_or(1000)),
        reason: fit_close_reason(text).to_string().into(),
    }
}

/// Maps a read error to how the connection ends.
fn read_error(e: WsError) -> CloseReason {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooBig,
        WsError::Capacity(_) => CloseReason::FrameTooBig,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Gone,
        WsError::Protocol(p) => {
            debug!(error = %p, "protocol error");
            CloseReason::Protocol
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::Gone,
        other => {
            debug!(error = %other, "read failed");
            CloseReason::Gone
        }
    }
}

/// A close frame's reason must fit in 123 bytes (RFC 6455 §5.5); cut at a character boundary.
fn fit_close_reason(reason: &str) -> &str {
    const MAX_CLOSE_REASON_BYTES: usize = 123;
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The peer address field every connection's span carries.
pub(crate) fn span(peer: SocketAddr, conn: u64) -> tracing::Span {
    // At debug level: a span is kept for every open connection (its fields formatted, in the
    // subscriber's registry, whose pages stay after the connections go), 0.4 KiB each. Events
    // at `info` and above name the connection themselves (`Who`).
    tracing::debug_span!(
        "conn",
        %peer,
        conn,
        client = tracing::field::Empty,
        user = tracing::field::Empty
    )
}

#[cfg(test)]
mod tests {
    use super::fit_close_reason;

    #[test]
    fn close_reasons_fit_in_123_bytes_on_a_char_boundary() {
        assert_eq!(fit_close_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = fit_close_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(fit_close_reason(&"x".repeat(500)).len(), 123);
    }
}
