//! One task per client socket: the WebSocket upgrade, then one `select!` loop over the socket, the
//! client's mailbox signals, its timers and the shutdown token.
//!
//! This module owns the transport rules: handshake timeout, pings and the silent-peer cut-off, the
//! task's share of writing (its replies, TLS, and sockets the flusher found full: queue, then one
//! flush; see `mailbox`), the write timeout, and the mapping from what went wrong to the close code
//! the peer sees. What frames mean is the [`Session`]'s business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics::close_reason;
use crate::server::{ConnSlot, Shared};
use crate::session::{Flow, Session, close_code};
use crate::transport::Transport;

type Ws = WebSocketStream<Transport>;

/// How long to wait for the peer's half of a close handshake we started.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// A far-off deadline for when no timer is due.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// Why the loop ended, and so how to close.
#[derive(Debug)]
enum End {
    /// The server is shutting down.
    Shutdown,
    /// Close with a code and reason; the last field is the metric label.
    Close(u16, &'static str, &'static str),
    /// The peer started the close handshake.
    ClosedByPeer,
    /// The socket is gone or failed (reset, EOF without close).
    Gone,
    /// Writes blocked past the write timeout: the peer is not reading.
    WriteStalled,
    /// An admin kicked the client, with this reason.
    Kicked(String),
}

/// What woke the loop.
enum Event {
    Shutdown,
    Mail,
    Frame(Option<Result<Message, WsError>>),
    Timer,
}

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _slot: ConnSlot,
) {
    let accepted = Instant::now();
    let handshake_timeout = shared.config.server.handshake_timeout();
    // Boxed so the (large) handshake state does not size every connection task for its whole life.
    let upgrade = Box::pin(timeout(handshake_timeout, upgrade(stream, &shared)));
    let (ws, echo) = tokio::select! {
        res = upgrade => match res {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err((reason, e))) => {
                debug!(%peer, error = %e, reason, "upgrade failed");
                shared.metrics.handshake_failures.with_label_values(&[reason]).inc();
                return;
            }
            Err(_) => {
                debug!(%peer, "upgrade timed out");
                shared.metrics.handshake_failures.with_label_values(&["timeout"]).inc();
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    // Built in place (no `session` local): a local would keep its own slot in the task's state.
    let mut conn = Connection {
        ws,
        session: Session::new(shared.clone(), peer),
        shared,
        peer,
        hello_deadline: accepted + handshake_timeout,
        last_heard: Instant::now(),
        next_ping: None,
        out: Vec::new(),
        flush_due: false,
        ping_due: false,
        echo,
        echoes: Vec::new(),
    };
    let mailbox = conn.session.mailbox().clone();
    conn.ws
        .get_mut()
        .attach(mailbox, conn.shared.flusher.as_ref());
    conn.next_ping = conn
        .shared
        .config
        .server
        .ping_interval()
        .map(|i| conn.last_heard + i);
    let end = conn.run(&shutdown).await;
    // Boxed: the close paths are large and run once, so they should not size every task.
    Box::pin(conn.finish(end)).await;
}

/// TLS (when configured) and the WebSocket upgrade; an error carries its metric label.
async fn upgrade(stream: TcpStream, shared: &Shared) -> Result<(Ws, bool), (&'static str, String)> {
    let transport = match &shared.tls {
        Some(tls) => match tls.acceptor().accept(stream).await {
            Ok(s) => {
                shared
                    .metrics
                    .tls_handshakes
                    .with_label_values(&["ok"])
                    .inc();
                Transport::tls(s)
            }
            Err(e) => {
                shared
                    .metrics
                    .tls_handshakes
                    .with_label_values(&["error"])
                    .inc();
                return Err(("tls", e.to_string()));
            }
        },
        None => match peek_request(&stream).await {
            Head::Upgrade => Transport::plain(stream),
            Head::NotGet => {
                reject(stream, "400 Bad Request", "", NOT_HTTP).await;
                return Err(("garbage", "not an HTTP GET upgrade request".into()));
            }
            Head::PlainGet => {
                reject(
                    stream,
                    "426 Upgrade Required",
                    "Upgrade: websocket\r\n",
                    NOT_UPGRADE,
                )
                .await;
                return Err((
                    "not_upgrade",
                    "an HTTP GET without Upgrade: websocket".into(),
                ));
            }
        },
    };
    let origins = &shared.config.server.allowed_origins;
    let echo_path = shared.config.diagnostics.echo_path.as_str();
    let mut echo = false;
    #[allow(clippy::result_large_err)] // the signature is tungstenite's Callback
    let check = |req: &Request, resp: Response| {
        echo = !echo_path.is_empty() && req.uri().path() == echo_path;
        check_origin(origins, req, resp)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(transport, check, Some(shared.ws_config))
            .await
            .map_err(|e| match &e {
                WsError::Http(resp) if resp.status() == StatusCode::FORBIDDEN => {
                    ("origin", e.to_string())
                }
                _ => ("invalid", e.to_string()),
            })?;
    Ok((ws, echo))
}

/// What the peer's request looks like, from its first bytes (peeked, not consumed).
#[derive(Debug, PartialEq)]
enum Head {
    /// A GET asking for a WebSocket upgrade (or too long to tell: tungstenite decides).
    Upgrade,
    /// A well-formed GET without `Upgrade: websocket` (a browser opening `http://host:port/`).
    PlainGet,
    /// Not an HTTP GET at all (garbage, another protocol, junk before the request).
    NotGet,
}

/// How much of a request head is peeked at; longer heads are left to tungstenite's own checks.
const PEEK_LIMIT: usize = 4096;
const NOT_HTTP: &str =
    "this is a WebSocket server: send an HTTP GET request with Upgrade: websocket\n";
const NOT_UPGRADE: &str = "this is a chatd WebSocket chat server: connect with a WebSocket client, \
for example `chatctl --url ws://HOST:PORT connect NAME`\n";

/// Peeks at the request head until it can tell what it is (the handshake timeout bounds this).
async fn peek_request(stream: &TcpStream) -> Head {
    let mut head = vec![0u8; PEEK_LIMIT];
    let mut wait = Duration::from_millis(2);
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return Head::NotGet,
            Ok(n) => n,
        };
        let prefix = n.min(4);
        if head[..prefix] != b"GET "[..prefix] {
            return Head::NotGet;
        }
        if let Some(end) = head[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return classify_head(&head[..end]);
        }
        if n == PEEK_LIMIT {
            return Head::Upgrade;
        }
        if n == seen {
            // Nothing new since the last look: wait for more of the head.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        seen = n;
    }
}

/// Whether a complete GET request head asks for a WebSocket upgrade.
fn classify_head(head: &[u8]) -> Head {
    let upgrade = head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim() == "upgrade" && value.split(',').any(|v| v.trim() == "websocket")
        })
    });
    if upgrade {
        Head::Upgrade
    } else {
        Head::PlainGet
    }
}

/// Answers a request that cannot become a WebSocket with `status`, any extra `headers` (each
/// ending in CRLF) and `body`, then closes without losing the answer to a reset.
async fn reject(mut stream: TcpStream, status: &str, headers: &str, body: &str) {
    use tokio::io::AsyncWriteExt;
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(CLOSE_LINGER, async {
        if stream.write_all(response.as_bytes()).await.is_ok() {
            half_close_and_drain(&mut stream).await;
        }
    })
    .await;
}

/// Half-closes and discards whatever the peer still sends until it closes too. Dropping a socket
/// with unread input sends a TCP reset, which can destroy our last words (an HTTP refusal, a close
/// frame) in the peer's receive buffer before it reads them. Callers bound this in time.
async fn half_close_and_drain<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Browser clients send `Origin`; when `server.allowed_origins` is set, only those (compared
/// exactly: scheme, host and port) may connect. Requests without `Origin` are not from a browser
/// page and are allowed.
#[allow(clippy::result_large_err)] // the signature is tungstenite's Callback
fn check_origin(
    allowed: &[String],
    req: &Request,
    resp: Response,
) -> Result<Response, ErrorResponse> {
    let Some(origin) = req.headers().get("origin") else {
        return Ok(resp);
    };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return Ok(resp);
    }
    let mut refusal = ErrorResponse::new(Some("origin not allowed\n".to_string()));
    *refusal.status_mut() = StatusCode::FORBIDDEN;
    Err(refusal)
}

struct Connection {
    ws: Ws,
    session: Session,
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The `hello` must succeed before this.
    hello_deadline: Instant,
    /// Last time any frame arrived.
    last_heard: Instant,
    /// When to send the next ping (`None`: pings off).
    next_ping: Option<Instant>,
    /// Replies produced by the session, waiting to be queued and written.
    out: Vec<Utf8Bytes>,
    /// The mailbox holds frames this task must write (TLS, or a plain socket that was full).
    flush_due: bool,
    /// A ping is due with the next write.
    ping_due: bool,
    /// A diagnostic echo connection (`diagnostics.echo_path`): every message comes straight back.
    echo: bool,
    /// Messages to echo, waiting to be written.
    echoes: Vec<Message>,
}

impl Connection {
    /// The loop: wait for one event, handle it synchronously, then write whatever it produced with
    /// a single flush. Keeping one write await point (timed by the loop's own timer) keeps every
    /// connection task small; see ARCHITECTURE.md.
    async fn run(&mut self, shutdown: &CancellationToken) -> End {
        let mailbox = self.session.mailbox().clone();
        let write_timeout = self.shared.config.server.write_timeout();
        let timer = sleep_until(self.deadline());
        tokio::pin!(timer);
        loop {
            let deadline = self.deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Shutdown,
                _ = mailbox.ready() => Event::Mail,
                frame = self.ws.next() => Event::Frame(frame),
                _ = &mut timer => Event::Timer,
            };
            let step = match event {
                Event::Shutdown => Err(End::Shutdown),
                Event::Mail => self.on_mail(),
                Event::Frame(frame) => self.on_frame(frame),
                Event::Timer => self.on_timer(),
            };
            // What the step produced goes out before any close it asked for.
            if self.ping_due || self.flush_due || !self.out.is_empty() || !self.echoes.is_empty() {
                timer.as_mut().reset(Instant::now() + write_timeout);
                let written = tokio::select! {
                    res = self.write_pending() => res,
                    _ = &mut timer => Err(End::WriteStalled),
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
        if !self.session.welcomed() && !self.echo {
            at = at.min(self.hello_deadline);
        }
        if let Some(ping) = self.next_ping {
            at = at.min(ping);
        }
        if let Some(interval) = self.shared.config.server.ping_interval() {
            at = at.min(self.last_heard + 2 * interval);
        }
        if let Some(typing) = self.session.next_deadline() {
            at = at.min(typing);
        }
        at
    }

    fn on_mail(&mut self) -> Result<(), End> {
        let signals = self.session.mailbox().signals();
        self.flush_due = signals.queued;
        if signals.failed {
            return Err(End::Gone);
        }
        if signals.overflowed {
            info!(peer = %self.peer, user = self.session.user(), "closing slow consumer: outbound queue full");
            return Err(End::Close(
                close_code::POLICY,
                "slow consumer: outbound queue full",
                close_reason::SLOW_CONSUMER,
            ));
        }
        match signals.kicked {
            Some(reason) => Err(End::Kicked(reason)),
            None => Ok(()),
        }
    }

    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), End> {
        self.last_heard = Instant::now();
        let message = match frame {
            None => return Err(End::Gone),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(self.read_error(e)),
        };
        let flow = match message {
            Message::Text(_) | Message::Binary(_) if self.echo => {
                self.echoes.push(message);
                Flow::Continue
            }
            Message::Text(text) => {
                let metrics = &self.shared.metrics;
                metrics.bytes_received.inc_by(text.len() as u64);
                let started = std::time::Instant::now();
                let flow = self.session.handle_text(text.as_str(), &mut self.out);
                metrics
                    .handling_seconds
                    .observe(started.elapsed().as_secs_f64());
                flow
            }
            Message::Binary(_) => self.session.handle_binary(&mut self.out),
            Message::Close(_) => return Err(End::ClosedByPeer),
            Message::Ping(_) if !self.echo => self.session.on_ping(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        };
        match flow {
            Flow::Continue => Ok(()),
            Flow::Close(code, reason) => {
                let label = if code == close_code::NORMAL {
                    close_reason::CLIENT
                } else {
                    close_reason::ABUSE
                };
                Err(End::Close(code, reason, label))
            }
        }
    }

    fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if !self.session.welcomed() && !self.echo && now >= self.hello_deadline {
            debug!(peer = %self.peer, "no hello within the handshake timeout");
            return Err(End::Close(
                close_code::POLICY,
                "handshake timeout: no hello",
                close_reason::HELLO_TIMEOUT,
            ));
        }
        if let Some(interval) = self.shared.config.server.ping_interval() {
            if now >= self.last_heard + 2 * interval {
                info!(peer = %self.peer, user = self.session.user(), "closing silent peer");
                return Err(End::Close(
                    close_code::GOING_AWAY,
                    "ping timeout",
                    close_reason::PING_TIMEOUT,
                ));
            }
            if self.next_ping.is_some_and(|p| now >= p) {
                self.next_ping = Some(now + interval);
                self.ping_due = true;
            }
        }
        self.session.on_timer(now);
        Ok(())
    }

    /// Feeds the due ping and the echoes, queues the session's replies behind what the mailbox
    /// holds, then flushes once: the mailbox drains everything in as few writes as it can.
    async fn write_pending(&mut self) -> Result<(), End> {
        self.flush_due = false;
        let ws = &mut self.ws;
        if std::mem::take(&mut self.ping_due) {
            ws.feed(Message::Ping(Default::default()))
                .await
                .map_err(|_| End::Gone)?;
        }
        for echo in std::mem::take(&mut self.echoes) {
            ws.feed(echo).await.map_err(|_| End::Gone)?;
        }
        let mailbox = self.session.mailbox();
        for frame in self.out.drain(..) {
            mailbox.reply(&frame);
        }
        ws.flush().await.map_err(|_| End::Gone)
    }

    /// Maps a read error to how the connection ends, after telling the peer why when it can hear it.
    fn read_error(&self, e: WsError) -> End {
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => End::Close(
                close_code::TOO_BIG,
                "message too big",
                close_reason::TOO_BIG,
            ),
            WsError::Capacity(_) => {
                End::Close(close_code::TOO_BIG, "frame too big", close_reason::TOO_BIG)
            }
            WsError::Utf8(_) => End::Close(
                close_code::INVALID_DATA,
                "invalid UTF-8",
                close_reason::INVALID_UTF8,
            ),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
            WsError::Protocol(p) => {
                debug!(peer = %self.peer, error = %p, "protocol error");
                End::Close(
                    close_code::PROTOCOL,
                    "protocol error",
                    close_reason::PROTOCOL,
                )
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed => End::Gone,
            other => {
                debug!(peer = %self.peer, error = %other, "read failed");
                End::Gone
            }
        }
    }

    /// Writes everything queued, within the write timeout.
    async fn flush_out(&mut self) -> Result<(), End> {
        bounded(self.shared.config.server.write_timeout(), self.ws.flush()).await
    }

    /// Ends the connection the way `end` calls for.
    async fn finish(mut self, end: End) {
        debug!(peer = %self.peer, user = self.session.user(), end = ?end, "connection ending");
        let metrics = self.shared.metrics.clone();
        let reason = match &end {
            End::Shutdown => close_reason::SHUTDOWN,
            End::Close(_, _, label) => label,
            End::ClosedByPeer => close_reason::CLIENT,
            End::Gone => close_reason::GONE,
            End::WriteStalled => close_reason::SLOW_CONSUMER,
            End::Kicked(_) => close_reason::KICKED,
        };
        metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
        if reason == close_reason::SLOW_CONSUMER {
            metrics.slow_consumer_disconnects.inc();
        }
        // Only the close frame may follow what is queued now.
        let mailbox = self.session.mailbox().clone();
        mailbox.seal();
        if reason == close_reason::SLOW_CONSUMER {
            mailbox.discard();
        }
        match end {
            End::Shutdown => {
                // Messages accepted before the signal go out first, then the notice, then the close.
                mailbox.reply(&self.session.shutdown_notice());
                if self.flush_out().await.is_ok() {
                    self.close(
                        close_code::GOING_AWAY,
                        "server shutting down",
                        self.shared.config.server.shutdown_grace(),
                    )
                    .await;
                }
            }
            // After a protocol-level error the incoming stream is no longer frames we can parse.
            End::Close(
                code @ (close_code::PROTOCOL | close_code::INVALID_DATA | close_code::TOO_BIG),
                reason,
                _,
            ) => self.close_after_error(code, reason).await,
            End::Close(code, reason, _) => self.close(code, reason, CLOSE_LINGER).await,
            End::Kicked(reason) => {
                let reason = format!("kicked: {reason}");
                self.close(close_code::POLICY, &reason, CLOSE_LINGER).await
            }
            End::ClosedByPeer => {
                // tungstenite queued the reply to the peer's close; flushing sends it, then the
                // transport drains the mailbox (tungstenite reports "closed" instead of flushing).
                use tokio::io::AsyncWriteExt;
                let _ = timeout(CLOSE_LINGER, async {
                    let _ = self.ws.flush().await;
                    self.ws.get_mut().flush().await
                })
                .await;
            }
            End::WriteStalled => {
                info!(peer = %self.peer, user = self.session.user(), "dropped slow consumer: write timed out");
            }
            End::Gone => {}
        }
    }

    /// Sends a close frame and waits (up to `linger`) for the peer to answer it.
    async fn close(&mut self, code: u16, reason: &str, linger: Duration) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: fit_close_reason(reason).to_string().into(),
        };
        let ws = &mut self.ws;
        let _ = timeout(linger, async {
            ws.close(Some(frame)).await?;
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<_, WsError>(())
        })
        .await;
    }

    /// Fails the connection (RFC 6455 §7.1.7): sends the close frame, half-closes, and discards
    /// whatever the peer is still sending until it closes too (bounded by [`CLOSE_LINGER`]).
    /// Dropping the socket with unread input would send a TCP reset, which can destroy our close
    /// frame in the peer's receive buffer before it reads it: the 1009 for an oversized message
    /// would never arrive (Autobahn 9.1.3).
    async fn close_after_error(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: fit_close_reason(reason).to_string().into(),
        };
        let _ = timeout(CLOSE_LINGER, async {
            let _ = self.ws.close(Some(frame)).await;
            half_close_and_drain(self.ws.get_mut()).await;
        })
        .await;
    }
}

/// Runs a write under the write timeout: a peer that stops reading cannot hold its task forever.
async fn bounded(
    limit: Duration,
    io: impl Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    match timeout(limit, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::WriteStalled),
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

#[cfg(test)]
mod tests {
    use super::{Head, classify_head, fit_close_reason};

    #[test]
    fn a_get_is_an_upgrade_only_with_upgrade_websocket() {
        let browser =
            b"GET / HTTP/1.1\r\nHost: chat:8000\r\nAccept: text/html\r\nConnection: keep-alive";
        assert_eq!(classify_head(browser), Head::PlainGet);
        let ws = b"GET /chat HTTP/1.1\r\nHost: x\r\nupgrade:  WebSocket \r\nConnection: Upgrade";
        assert_eq!(classify_head(ws), Head::Upgrade);
        let listed = b"GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\n";
        assert_eq!(classify_head(listed), Head::Upgrade);
        // The request line does not count as a header.
        assert_eq!(
            classify_head(b"GET /upgrade:websocket HTTP/1.1"),
            Head::PlainGet
        );
        assert_eq!(
            classify_head(b"GET / HTTP/1.1\r\nX-Upgrade: websocket"),
            Head::PlainGet
        );
    }

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
