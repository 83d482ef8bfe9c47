//! `chatctl`: the console client. `connect` opens a chat (interactive on a terminal, line-scripted
//! otherwise); `send` says one message and waits for its ack. Exit codes are documented in `--help`.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chatd::client::{self, Backoff, HELP, Input, Line, LineKind, Shown, TypingView};
use clap::{Parser, Subcommand};
use crossterm::cursor::{MoveToColumn, MoveUp};
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Color, Stylize};
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::{execute, queue};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exit codes.
const EXIT_OK: u8 = 0;
const EXIT_REFUSED: u8 = 1;
const EXIT_CONNECT: u8 = 3;

/// How long to wait for the server to answer a hello or a `send`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Typing: resend `active` at most this often (the server relays one per 3 s).
const TYPING_REFRESH: Duration = Duration::from_secs(3);
/// Typing: no keystroke for this long turns `active` into `paused`.
const TYPING_PAUSE_AFTER: Duration = Duration::from_secs(5);

/// chatctl: the console client for chatd.
///
/// Exit codes: 0 success (every line acknowledged), 1 the server refused something (an error reply,
/// name taken, kicked), 2 bad command line, 3 could not connect or the connection was lost for good.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Server URL.
    #[arg(
        long,
        env = "CHATD_URL",
        default_value = "ws://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// Trust only this CA bundle (PEM) for wss:// instead of the system roots.
    #[arg(long, global = true, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Do not verify the server's certificate (testing only; prints a warning).
    #[arg(long, global = true, conflicts_with = "ca_cert")]
    insecure: bool,
    /// Token for servers in token mode (`chatd token NAME` mints one).
    #[arg(long, env = "CHATD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join the chat as NAME. Interactive on a terminal; otherwise reads lines from stdin, sends
    /// them (commands work), prints events one per line, and exits once stdin closes and every
    /// line has been answered.
    ///
    /// Commands: /msg NAME text, /me action, /join ROOM, /leave [ROOM], /room ROOM, /rooms,
    /// /who [ROOM], /history [N], /help, /exit.
    Connect {
        /// Your name: 1-32 of A-Z a-z 0-9 _ . -
        name: String,
        /// The room to start in.
        #[arg(long, default_value = "lobby")]
        room: String,
        /// Line mode even on a terminal.
        #[arg(long)]
        plain: bool,
        /// Print every raw JSON event (acks and typing included) instead of formatted lines.
        #[arg(long)]
        json: bool,
    },
    /// Connect, say one message (to a room, or privately with --to), wait for its ack, exit.
    Send {
        /// Name to send as.
        #[arg(long)]
        name: String,
        /// Room to say it in (default lobby).
        #[arg(long, conflicts_with = "to")]
        room: Option<String>,
        /// Send a private message to this user instead.
        #[arg(long)]
        to: Option<String>,
        /// The message.
        text: String,
    },
    /// Load generator: N clients, S senders, M messages each; reports connect rate, deliveries/s,
    /// end-to-end latency and loss (exit 1 on loss). With --raw it speaks plain text frames to any
    /// broadcast WebSocket server, so other servers can be measured with the same tool.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct BenchArgs {
    /// Connections.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// How many of the clients send.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Send at this rate per sender (messages/s) instead of waiting for deliveries.
    #[arg(long, conflicts_with = "inflight")]
    rate: Option<f64>,
    /// Messages each sender keeps in flight until every receiver has them.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Rooms the clients are spread over.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    /// Plain text frames (any broadcast server) instead of the chatd protocol.
    #[arg(long)]
    raw: bool,
    /// With --raw, send a name line first (what chatd's plain-text sessions expect).
    #[arg(long, requires = "raw")]
    name_line: bool,
    /// Server process id: report its RSS (idle and per connection) and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Runtime threads for the load generator (1 = single-threaded).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep going until the server closes every connection (shutdown under load): report close
    /// codes and whether every acknowledged message reached every member. Exit 1 otherwise.
    #[arg(long, conflicts_with = "raw")]
    until_close: bool,
    /// During the send phase, print deliveries, p99 and server RSS/fds every this many seconds.
    #[arg(long, value_name = "SECS")]
    report_every: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Bench(args) => args.threads.max(1),
        _ => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(EXIT_CONNECT);
        }
    };
    let endpoint = match Endpoint::from_cli(&cli) {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONNECT);
        }
    };
    let ep = &endpoint;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Send {
                name,
                room,
                to,
                text,
            } => send(ep, &name, room, to, &text).await,
            Command::Bench(args) => bench(ep, args).await,
            Command::Connect {
                name,
                room,
                plain,
                json,
            } => {
                let interactive = !plain
                    && !json
                    && std::io::stdin().is_terminal()
                    && std::io::stdout().is_terminal();
                if interactive {
                    match Tui::new() {
                        Ok(mut tui) => chat(ep, &name, &room, &mut tui).await,
                        Err(e) => {
                            eprintln!("error: cannot use the terminal: {e}");
                            EXIT_CONNECT
                        }
                    }
                } else {
                    chat(ep, &name, &room, &mut Script::new(json)).await
                }
            }
        }
    });
    // Don't wait for the blocking stdin reader: it may be parked on a read that never returns.
    runtime.shutdown_background();
    ExitCode::from(code)
}

// ---------------------------------------------------------------------------------------------
// `chatctl bench`

async fn bench(ep: &Endpoint, a: BenchArgs) -> u8 {
    let opts = chatd::client::bench::BenchOptions {
        url: ep.url.clone(),
        tls: ep.tls.clone(),
        clients: a.clients,
        senders: a.senders,
        messages: a.messages,
        size: a.size,
        rate: a.rate,
        inflight: a.inflight,
        rooms: a.rooms,
        raw: a.raw,
        name_line: a.name_line,
        pid: a.pid,
        timeout: Duration::from_secs_f64(a.duration),
        connect_concurrency: 64,
        until_close: a.until_close,
        report_every: a
            .report_every
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64),
    };
    match chatd::client::bench::run(opts).await {
        Ok(report) => {
            if a.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", report.summary());
            }
            if let Some(check) = &report.shutdown {
                let clean = check.closed_1001 == report.clients && check.acked_not_delivered == 0;
                if !clean {
                    eprintln!("error: shutdown was not clean");
                }
                return if clean { EXIT_OK } else { EXIT_REFUSED };
            }
            if report.lost() > 0 {
                eprintln!("error: {} deliveries lost", report.lost());
                EXIT_REFUSED
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_CONNECT
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting

enum HelloError {
    /// The server answered with an error code.
    Refused { code: String, message: String },
    /// Network or protocol trouble.
    Failed(String),
}

/// Where and how to connect: the URL, TLS trust for wss://, and the token for hello.
struct Endpoint {
    url: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

impl Endpoint {
    fn from_cli(cli: &Cli) -> Result<Endpoint, String> {
        let tls = if cli.url.starts_with("wss://") {
            let trust = match (&cli.ca_cert, cli.insecure) {
                (_, true) => {
                    eprintln!(
                        "warning: --insecure: the server's certificate is not verified; anyone on the path \
                         can read and change this chat"
                    );
                    chatd::client::tls::ClientTrust::Insecure
                }
                (Some(path), false) => chatd::client::tls::ClientTrust::CaFile(path.clone()),
                (None, false) => chatd::client::tls::ClientTrust::SystemRoots,
            };
            Some(chatd::client::tls::client_config(&trust)?)
        } else {
            None
        };
        Ok(Endpoint {
            url: cli.url.clone(),
            tls,
            token: cli.token.clone(),
        })
    }
}

async fn connect(ep: &Endpoint) -> Result<Ws, String> {
    let url = &ep.url;
    let connector = ep.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let attempt =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, connector);
    match tokio::time::timeout(REPLY_TIMEOUT, attempt).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Err(format!(
                "server refused the connection: HTTP {} {}",
                resp.status(),
                client::sanitize(body.trim())
            ))
        }
        Ok(Err(e)) => {
            let hint = if e.to_string().contains("certificate") {
                " (for a private CA use --ca-cert FILE)"
            } else {
                ""
            };
            Err(format!("cannot connect to {url}: {e}{hint}"))
        }
        Err(_) => Err(format!("cannot connect to {url}: timed out")),
    }
}

/// Says hello and waits for the welcome (returned) or the refusal.
async fn hello(ws: &mut Ws, ep: &Endpoint, name: &str, room: &str) -> Result<Value, HelloError> {
    let mut req = json!({"type": "hello", "name": name, "room": room, "id": "hello"});
    if let Some(token) = &ep.token {
        req["token"] = json!(token);
    }
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(|e| HelloError::Failed(e.to_string()))?;
    let wait = async {
        while let Some(frame) = ws.next().await {
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(f)) => {
                    let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(HelloError::Failed(format!(
                        "server closed the connection: {}",
                        client::sanitize(&reason)
                    )));
                }
                Ok(_) => continue,
                Err(e) => return Err(HelloError::Failed(e.to_string())),
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match (v["type"].as_str(), v["ref"].as_str()) {
                (Some("welcome"), _) => return Ok(v),
                (Some("error"), Some("hello")) => {
                    return Err(HelloError::Refused {
                        code: client::sanitize(v["code"].as_str().unwrap_or("")),
                        message: client::sanitize(v["message"].as_str().unwrap_or("")),
                    });
                }
                _ => {}
            }
        }
        Err(HelloError::Failed("connection closed".into()))
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(HelloError::Failed("no answer to hello".into())))
}

// ---------------------------------------------------------------------------------------------
// `chatctl send`

async fn send(
    ep: &Endpoint,
    name: &str,
    room: Option<String>,
    to: Option<String>,
    text: &str,
) -> u8 {
    let mut ws = match connect(ep).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONNECT;
        }
    };
    let room = room.unwrap_or_else(|| "lobby".into());
    if let Err(e) = hello(&mut ws, ep, name, &room).await {
        return report_hello_error(name, e);
    }
    let req = match &to {
        Some(to) => json!({"type": "pm", "to": to, "text": text, "id": "send"}),
        None => json!({"type": "say", "room": room, "text": text, "id": "send"}),
    };
    if let Err(e) = ws.send(Message::text(req.to_string())).await {
        eprintln!("error: connection lost: {e}");
        return EXIT_CONNECT;
    }
    let answer = async {
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(t) = frame else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            if v["ref"] == "send" {
                return Some(v);
            }
        }
        None
    };
    let code = match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
        Ok(Some(v)) if v["type"] == "ack" => EXIT_OK,
        Ok(Some(v)) => {
            if let Shown::Error(e) = client::render(&v, "") {
                eprintln!("{e}");
            }
            EXIT_REFUSED
        }
        Ok(None) => {
            eprintln!("error: connection lost before the server acknowledged the message");
            EXIT_CONNECT
        }
        Err(_) => {
            eprintln!("error: no acknowledgement within {REPLY_TIMEOUT:?}");
            EXIT_CONNECT
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    code
}

fn report_hello_error(name: &str, e: HelloError) -> u8 {
    match e {
        HelloError::Refused { code, message } => {
            let shown = client::sanitize(name);
            match code.as_str() {
                "name_taken" => eprintln!("error: name \"{shown}\" is taken"),
                "name_invalid" => eprintln!("error: name \"{shown}\" is not allowed: {message}"),
                "unauthorized" => eprintln!(
                    "error: unauthorized: the server refused the token for \"{shown}\" ({message})"
                ),
                _ => eprintln!("error: {message} ({code})"),
            }
            EXIT_REFUSED
        }
        HelloError::Failed(why) => {
            eprintln!("error: {why}");
            EXIT_CONNECT
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `chatctl connect`: one loop, two frontends

/// What the user did.
enum UiEvent {
    Line(String),
    Typing(&'static str),
    Eof,
}

/// The terminal side of a chat: where input comes from and how output is shown.
trait Frontend {
    /// The next thing the user did. Must be cancel-safe (it races the socket in `select!`).
    async fn next_input(&mut self) -> UiEvent;
    /// Shows a received event.
    fn show(&mut self, shown: Shown, raw: &str);
    /// Shows a local status line (connection state, hints).
    fn info(&mut self, text: &str);
    /// Shows who is typing (interactive only).
    fn set_typing(&mut self, _status: String) {}
    /// Forgets local typing state (after a line is sent or the connection changes).
    fn typing_reset(&mut self) {}
}

/// How a connection ended.
enum Ended {
    /// The user is done (stdin closed, /exit, Ctrl-D).
    User,
    /// The server closed with this code and reason.
    Closed(u16, String),
    /// The connection broke.
    Lost(String),
}

struct Chat {
    name: String,
    /// Rooms we are in, the first being the hello room.
    rooms: Vec<String>,
    /// Where lines go.
    current: String,
    next_id: u64,
    /// Request ids sent and not yet answered.
    pending: HashSet<String>,
    /// `/join` requests in flight: (room newly added, room current before), undone on error.
    joins: HashMap<String, (Option<String>, String)>,
    errors: usize,
    eof: bool,
    typing: TypingView,
}

async fn chat<F: Frontend>(ep: &Endpoint, name: &str, room: &str, ui: &mut F) -> u8 {
    let url = &ep.url;
    let mut chat = Chat {
        name: name.to_string(),
        rooms: vec![room.trim_start_matches('#').to_ascii_lowercase()],
        current: room.trim_start_matches('#').to_ascii_lowercase(),
        next_id: 1,
        pending: HashSet::new(),
        joins: HashMap::new(),
        errors: 0,
        eof: false,
        typing: TypingView::default(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
    let mut connected_once = false;
    loop {
        let mut ws = match connect(ep).await {
            Ok(ws) => ws,
            Err(e) if !connected_once => {
                eprintln!("error: {e}");
                return EXIT_CONNECT;
            }
            Err(e) => {
                if !wait_to_retry(ui, &mut backoff, &e).await {
                    return chat.exit_code();
                }
                continue;
            }
        };
        let home = chat.rooms[0].clone();
        let welcome = match hello(&mut ws, ep, name, &home).await {
            Ok(w) => w,
            Err(HelloError::Failed(e)) if connected_once => {
                if !wait_to_retry(ui, &mut backoff, &e).await {
                    return chat.exit_code();
                }
                continue;
            }
            Err(e) => return report_hello_error(name, e),
        };
        if connected_once {
            ui.info(&format!("-!- reconnected to {url} as {}", chat.name));
        }
        connected_once = true;
        backoff.reset();
        ui.show(
            client::render(&welcome, &local_time()),
            &welcome.to_string(),
        );
        if let Some(room) = welcome["room"].as_str() {
            chat.rooms[0] = room.to_string();
        }
        // Rejoin the other rooms we were in.
        for room in chat.rooms.clone().iter().skip(1) {
            let id = chat.take_id();
            chat.pending.insert(id.clone());
            let req = json!({"type": "join", "room": room, "id": id});
            let _ = ws.send(Message::text(req.to_string())).await;
        }
        ui.typing_reset();
        match chat.converse(&mut ws, ui).await {
            Ended::User => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return chat.exit_code();
            }
            Ended::Closed(code, reason) if client::is_terminal_close(code) => {
                let reason = client::sanitize(&reason);
                eprintln!("error: the server closed the connection ({code}): {reason}");
                return if code == 1000 {
                    chat.exit_code()
                } else {
                    EXIT_REFUSED
                };
            }
            Ended::Closed(code, reason) => {
                let why = format!(
                    "server closed the connection ({code}: {})",
                    client::sanitize(&reason)
                );
                chat.lost_pending(ui);
                if !wait_to_retry(ui, &mut backoff, &why).await {
                    return chat.exit_code();
                }
            }
            Ended::Lost(why) => {
                chat.lost_pending(ui);
                if !wait_to_retry(ui, &mut backoff, &why).await {
                    return chat.exit_code();
                }
            }
        }
    }
}

/// Waits out one back-off delay, still listening to the user; false if they quit meanwhile.
async fn wait_to_retry<F: Frontend>(ui: &mut F, backoff: &mut Backoff, why: &str) -> bool {
    let delay = backoff.next_delay();
    ui.info(&format!(
        "-!- connection lost: {why}; reconnecting in {:.1} s",
        delay.as_secs_f64()
    ));
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            ev = ui.next_input() => match ev {
                UiEvent::Eof => return false,
                UiEvent::Line(l) if client::parse_input(&l) == Input::Exit => return false,
                UiEvent::Line(_) => ui.info("-!- not connected: line not sent"),
                UiEvent::Typing(_) => {}
            },
        }
    }
}

fn local_time() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

impl Chat {
    fn take_id(&mut self) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        id
    }

    fn exit_code(&self) -> u8 {
        if self.errors > 0 {
            EXIT_REFUSED
        } else {
            EXIT_OK
        }
    }

    fn lost_pending<F: Frontend>(&mut self, ui: &mut F) {
        if !self.pending.is_empty() {
            ui.info(&format!(
                "-!- {} request(s) got no answer before the connection dropped",
                self.pending.len()
            ));
            self.errors += self.pending.len();
            self.pending.clear();
        }
    }

    async fn converse<F: Frontend>(&mut self, ws: &mut Ws, ui: &mut F) -> Ended {
        loop {
            if self.eof && self.pending.is_empty() {
                return Ended::User;
            }
            let expiry = self
                .typing
                .next_expiry()
                .map(tokio::time::Instant::from_std);
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                ev = ui.next_input(), if !self.eof => match ev {
                    UiEvent::Eof => self.eof = true,
                    UiEvent::Typing(state) => {
                        let req = json!({"type": "typing", "room": self.current, "state": state});
                        if let Err(e) = ws.send(Message::text(req.to_string())).await {
                            return Ended::Lost(e.to_string());
                        }
                    }
                    UiEvent::Line(line) => {
                        if let Some(end) = self.on_line(&line, ws, ui).await {
                            return end;
                        }
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.on_event(t.as_str(), ui),
                    Some(Ok(Message::Close(f))) => {
                        // Answer the close, then report why.
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                        let (code, reason) = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                        return Ended::Closed(code, reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("connection closed".into()),
                },
                _ = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    if self.typing.expire(Instant::now()) {
                        ui.set_typing(self.typing.status(&self.current));
                    }
                }
            }
        }
    }

    async fn on_line<F: Frontend>(&mut self, line: &str, ws: &mut Ws, ui: &mut F) -> Option<Ended> {
        let input = client::parse_input(line);
        match &input {
            Input::Exit => return Some(Ended::User),
            Input::Help => {
                for l in HELP.lines() {
                    ui.info(l);
                }
                return None;
            }
            Input::Hint(h) => {
                // A line that could not be sent counts against the exit code, like an error reply.
                ui.info(&format!("-!- {h}"));
                self.errors += 1;
                return None;
            }
            Input::Room(r) => {
                let r = r.trim_start_matches('#').to_ascii_lowercase();
                if self.rooms.contains(&r) {
                    self.current = r;
                    ui.info(&format!("-!- now talking in #{}", self.current));
                    ui.set_typing(self.typing.status(&self.current));
                } else {
                    ui.info(&format!("-!- you are not in #{r}; /join {r} first"));
                }
                return None;
            }
            _ => {}
        }
        let id = self.take_id();
        let req = client::request_for(&input, &self.current, self.next_id - 1)?;
        if let Input::Join(r) = &input {
            // Lines typed after /join go to the new room, even before the server answers, and a
            // reconnect rejoins it.
            let room = r.trim_start_matches('#').to_ascii_lowercase();
            let previous = std::mem::replace(&mut self.current, room.clone());
            let added = (!self.rooms.contains(&room)).then(|| {
                self.rooms.push(room.clone());
                room
            });
            self.joins.insert(id.clone(), (added, previous));
        }
        if let Input::Leave(r) = &input {
            let r = r
                .as_deref()
                .unwrap_or(&self.current)
                .trim_start_matches('#')
                .to_ascii_lowercase();
            self.rooms.retain(|x| *x != r);
            if self.current == r {
                self.current = self.rooms.first().cloned().unwrap_or_default();
            }
        }
        self.pending.insert(id);
        if let Err(e) = ws.send(Message::text(req.to_string())).await {
            return Some(Ended::Lost(e.to_string()));
        }
        None
    }

    fn on_event<F: Frontend>(&mut self, text: &str, ui: &mut F) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            ui.info(&format!("-!- {}", client::sanitize(text)));
            return;
        };
        let join = v["ref"].as_str().and_then(|r| {
            self.pending.remove(r);
            self.joins.remove(r)
        });
        match v["type"].as_str() {
            Some("error") => {
                self.errors += 1;
                if let Some((added, previous)) = join {
                    self.rooms.retain(|r| Some(r) != added.as_ref());
                    self.current = previous;
                }
            }
            Some("room") => {
                if let Some(room) = v["room"].as_str()
                    && !self.rooms.iter().any(|r| r == room)
                {
                    self.rooms.push(room.to_string());
                }
            }
            Some("typing") => {
                self.typing.update(&v, Instant::now());
                ui.set_typing(self.typing.status(&self.current));
            }
            Some("message") | Some("pm") => {
                let room = v["room"].as_str();
                self.typing
                    .message_from(v["from"].as_str().unwrap_or(""), room);
                ui.set_typing(self.typing.status(&self.current));
            }
            _ => {}
        }
        ui.show(client::render(&v, &local_time()), text);
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted frontend: lines from stdin, one line per event on stdout.

struct Script {
    lines: mpsc::Receiver<Option<String>>,
    json: bool,
    color: bool,
}

impl Script {
    fn new(json: bool) -> Script {
        let (tx, lines) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = stdin.next_line().await {
                if tx.send(Some(line)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(None).await;
        });
        Script {
            lines,
            json,
            color: use_color(),
        }
    }
}

impl Frontend for Script {
    async fn next_input(&mut self) -> UiEvent {
        match self.lines.recv().await {
            Some(Some(line)) => UiEvent::Line(line),
            _ => UiEvent::Eof,
        }
    }

    fn show(&mut self, shown: Shown, raw: &str) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", client::escape_json_for_terminal(raw));
        }
        match shown {
            Shown::Lines(lines) if !self.json => {
                for line in lines {
                    let _ = writeln!(out, "{}", styled(&line, self.color));
                }
            }
            Shown::Error(e) => eprintln!("{e}"),
            _ => {}
        }
        let _ = out.flush();
    }

    fn info(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A stable colour per name.
fn name_color(name: &str) -> Color {
    const PALETTE: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::Magenta,
        Color::Cyan,
    ];
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    PALETTE[hash as usize % PALETTE.len()]
}

fn styled(line: &Line, color: bool) -> String {
    if !color {
        return line.plain();
    }
    let name = line
        .name
        .as_deref()
        .map(|n| n.with(name_color(n)).bold().to_string())
        .unwrap_or_default();
    let (prefix, rest) = match line.kind {
        LineKind::Pm => (
            line.prefix.clone().magenta().to_string(),
            line.rest.clone().magenta().to_string(),
        ),
        LineKind::Notice => (
            line.prefix.clone().yellow().to_string(),
            line.rest.clone().yellow().to_string(),
        ),
        LineKind::Presence | LineKind::History | LineKind::Info => (
            line.prefix.clone().dark_grey().to_string(),
            line.rest.clone().dark_grey().to_string(),
        ),
        LineKind::Message => (
            line.prefix.clone().dark_grey().to_string(),
            line.rest.clone(),
        ),
    };
    format!("{prefix}{name}{rest}")
}

// ---------------------------------------------------------------------------------------------
// Interactive frontend: raw-mode terminal, messages scroll above a status row and the `> ` line.

/// Clears the status and input rows (the cursor is on the input row), leaving the cursor at the
/// start of the status row.
fn clear_bottom_rows(out: &mut impl Write) {
    let _ = queue!(
        out,
        MoveToColumn(0),
        MoveUp(1),
        Clear(ClearType::FromCursorDown)
    );
}

struct Tui {
    events: EventStream,
    buf: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Index into `history` while browsing with the arrow keys.
    browsing: Option<usize>,
    /// The line being edited before browsing started.
    draft: String,
    status: String,
    color: bool,
    /// Typing we announced: when `active` was last sent, and the last keystroke.
    typing_sent: Option<Instant>,
    typing_paused: bool,
    last_key: Instant,
    /// Events to hand out before reading more keys.
    queued: Vec<UiEvent>,
}

impl Tui {
    fn new() -> std::io::Result<Tui> {
        terminal::enable_raw_mode()?;
        let mut tui = Tui {
            events: EventStream::new(),
            buf: Vec::new(),
            cursor: 0,
            history: Vec::new(),
            browsing: None,
            draft: String::new(),
            status: String::new(),
            color: use_color(),
            typing_sent: None,
            typing_paused: false,
            last_key: Instant::now(),
            queued: Vec::new(),
        };
        // The status row and the input row.
        print!("\r\n");
        tui.redraw();
        Ok(tui)
    }

    fn line(&self) -> String {
        self.buf.iter().collect()
    }

    /// Redraws the status row and the input row (the cursor is on the input row).
    fn redraw(&mut self) {
        let mut out = std::io::stdout();
        let width = terminal::size()
            .map(|(w, _)| w as usize)
            .unwrap_or(80)
            .max(10);
        let room = width - 3;
        let start = self.cursor.saturating_sub(room);
        let end = (start + room).min(self.buf.len());
        let visible: String = self.buf[start..end].iter().collect();
        let status: String = self.status.chars().take(width - 1).collect();
        let status = if self.color {
            status.dark_grey().italic().to_string()
        } else {
            status
        };
        clear_bottom_rows(&mut out);
        let _ = write!(out, "{status}\r\n> {visible}");
        let _ = queue!(out, MoveToColumn((2 + self.cursor - start) as u16));
        let _ = out.flush();
    }

    fn print(&mut self, text: &str) {
        let mut out = std::io::stdout();
        clear_bottom_rows(&mut out);
        let _ = write!(out, "{text}\r\n\r\n");
        self.redraw();
    }

    /// Applies a key; returns an event for the chat when the key produced one.
    fn on_key(&mut self, key: KeyEvent) -> Option<UiEvent> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let before = self.buf.len();
        match key.code {
            KeyCode::Char('d') if ctrl && self.buf.is_empty() => return Some(UiEvent::Eof),
            KeyCode::Char('c') if ctrl => {
                if self.buf.is_empty() {
                    return Some(UiEvent::Eof);
                }
                self.buf.clear();
                self.cursor = 0;
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.buf.len(),
            KeyCode::Char('u') if ctrl => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
            }
            KeyCode::Char('w') if ctrl => {
                let mut start = self.cursor;
                while start > 0 && self.buf[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.buf[start - 1] != ' ' {
                    start -= 1;
                }
                self.buf.drain(start..self.cursor);
                self.cursor = start;
            }
            KeyCode::Char(c) if !ctrl => {
                self.buf.insert(self.cursor, c);
                self.cursor += 1;
            }
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.buf.remove(self.cursor);
            }
            KeyCode::Delete if self.cursor < self.buf.len() => {
                self.buf.remove(self.cursor);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.buf.len()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.buf.len(),
            KeyCode::Up => self.browse(true),
            KeyCode::Down => self.browse(false),
            KeyCode::Enter => {
                let line = self.line();
                self.buf.clear();
                self.cursor = 0;
                self.browsing = None;
                if !line.trim().is_empty() && self.history.last() != Some(&line) {
                    self.history.push(line.clone());
                }
                self.redraw();
                // A message ends typing by itself; anything else sent after typing needs `done`.
                let was_typing = self.typing_sent.take().is_some();
                let is_message = matches!(client::parse_input(&line), Input::Say { .. });
                if was_typing && !is_message {
                    self.queued.push(UiEvent::Line(line));
                    return Some(UiEvent::Typing("done"));
                }
                return Some(UiEvent::Line(line));
            }
            _ => {}
        }
        self.redraw();
        if self.buf.len() != before {
            return self.typing_changed();
        }
        None
    }

    fn browse(&mut self, back: bool) {
        if self.history.is_empty() {
            return;
        }
        let next = match (self.browsing, back) {
            (None, true) => {
                self.draft = self.line();
                Some(self.history.len() - 1)
            }
            (None, false) => None,
            (Some(0), true) => Some(0),
            (Some(i), true) => Some(i - 1),
            (Some(i), false) if i + 1 < self.history.len() => Some(i + 1),
            (Some(_), false) => None,
        };
        let text = match next {
            Some(i) => self.history[i].clone(),
            None => std::mem::take(&mut self.draft),
        };
        self.browsing = next;
        self.buf = text.chars().collect();
        self.cursor = self.buf.len();
    }

    /// After an edit: announce `active` (throttled) while a message is being typed, `done` when
    /// the line is cleared or becomes a command.
    fn typing_changed(&mut self) -> Option<UiEvent> {
        self.last_key = Instant::now();
        let line = self.line();
        let composing = !line.trim().is_empty() && !line.starts_with('/');
        match (composing, self.typing_sent) {
            (true, Some(t)) if !self.typing_paused && t.elapsed() < TYPING_REFRESH => None,
            (true, _) => {
                self.typing_sent = Some(Instant::now());
                self.typing_paused = false;
                Some(UiEvent::Typing("active"))
            }
            (false, Some(_)) => {
                self.typing_sent = None;
                Some(UiEvent::Typing("done"))
            }
            (false, None) => None,
        }
    }
}

impl Frontend for Tui {
    async fn next_input(&mut self) -> UiEvent {
        if let Some(ev) = self.queued.pop() {
            return ev;
        }
        loop {
            let pause_at = (self.typing_sent.is_some() && !self.typing_paused)
                .then(|| tokio::time::Instant::from_std(self.last_key + TYPING_PAUSE_AFTER));
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                ev = self.events.next() => match ev {
                    Some(Ok(Event::Key(key))) => {
                        if let Some(ev) = self.on_key(key) {
                            return ev;
                        }
                    }
                    Some(Ok(Event::Resize(..))) => self.redraw(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return UiEvent::Eof,
                },
                _ = tokio::time::sleep_until(pause_at.unwrap_or(far)), if pause_at.is_some() => {
                    self.typing_paused = true;
                    return UiEvent::Typing("paused");
                }
            }
        }
    }

    fn show(&mut self, shown: Shown, _raw: &str) {
        match shown {
            Shown::Lines(lines) => {
                for line in lines {
                    let text = styled(&line, self.color);
                    self.print(&text);
                }
            }
            Shown::Error(e) => {
                let text = if self.color { e.red().to_string() } else { e };
                self.print(&text);
            }
            Shown::Nothing => {}
        }
    }

    fn info(&mut self, text: &str) {
        let text = if self.color {
            text.dark_grey().to_string()
        } else {
            text.to_string()
        };
        self.print(&text);
    }

    fn set_typing(&mut self, status: String) {
        if status != self.status {
            self.status = status;
            self.redraw();
        }
    }

    fn typing_reset(&mut self) {
        self.typing_sent = None;
        self.typing_paused = false;
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = execute!(out, MoveToColumn(0), Clear(ClearType::CurrentLine));
        let _ = writeln!(out);
        let _ = terminal::disable_raw_mode();
    }
}
