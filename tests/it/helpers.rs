//! Test helpers: an in-process server on 127.0.0.1:0, the real `chatd` binary, and a WebSocket client
//! that speaks the protocol and fails loudly (with a deadline) instead of hanging.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::sync::Arc;

use chatd::hub::{Broker, LocalBroker};
use chatd::{Config, Server, ShutdownReport};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub use crate::redis_server::{Redis, cluster_config, free_port};

/// How long a test waits for something it expects before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// A chatd server running inside the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<ShutdownReport>,
    /// The Redis a `Backend::Redis` server runs on (stopped with the server).
    pub _redis: Option<Arc<Redis>>,
}

/// Which broker a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The single-process broker, as chatd runs by default.
    Local,
    /// The single-process broker behind a double that answers every call late.
    Late,
    /// The cluster broker, on a Redis of its own.
    Redis,
}

impl Backend {
    pub fn broker(
        self,
        config: &Config,
        metrics: &chatd::metrics::Metrics,
    ) -> Result<Arc<dyn Broker>, chatd::ConfigError> {
        if self == Backend::Redis {
            return Ok(Arc::new(chatd::hub::RedisBroker::from_config(
                config, metrics,
            )?));
        }
        let local = LocalBroker::from_config(config, metrics)?;
        Ok(match self {
            Backend::Local => Arc::new(local),
            Backend::Late => Arc::new(crate::broker::LateBroker::new(local)),
            Backend::Redis => unreachable!(),
        })
    }
}

/// Sends `v` (given an id of its own) and returns its reply, skipping the events that come
/// first.
pub async fn ask(c: &mut Client, mut v: Value) -> Value {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!(
        "ask{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    v["id"] = json!(id);
    c.send(v).await;
    c.find(|r| r["ref"] == id.as_str()).await
}

/// A config for tests: port 0 on loopback, history in memory (tests that store set a path),
/// everything else default.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.admin.listen = "127.0.0.1:0".into();
    config.storage.path = String::new();
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> TestServer {
        Self::with_broker(Backend::Local, edit).await
    }

    /// A server over the given broker.
    pub async fn with_broker(backend: Backend, edit: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        let redis = (backend == Backend::Redis).then(|| Arc::new(Redis::start()));
        if let Some(redis) = &redis {
            cluster_config(&mut config, redis);
        }
        edit(&mut config);
        Self::bind(config, backend, redis).await
    }

    /// Two cluster nodes on a Redis of their own, sharing one PostgreSQL (`storage.url`), each
    /// configured by `edit` besides.
    pub async fn pg_pair(edit: impl Fn(&mut Config)) -> PgPair {
        let redis = Arc::new(Redis::start());
        let pg = crate::postgres_server::Postgres::start();
        let url = pg.url.clone();
        let both = |c: &mut Config| {
            c.storage.url = chatd::config::SecretUrl::new(url.clone());
            edit(c);
        };
        let a = TestServer::node(&redis, both).await;
        let b = TestServer::node(&redis, both).await;
        PgPair {
            a,
            b,
            _redis: redis,
            _pg: pg,
        }
    }

    /// A cluster node on `redis`, sharing it with the other nodes started on it.
    pub async fn node(redis: &Arc<Redis>, edit: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        cluster_config(&mut config, redis);
        edit(&mut config);
        Self::bind(config, Backend::Redis, Some(redis.clone())).await
    }

    async fn bind(config: Config, backend: Backend, redis: Option<Arc<Redis>>) -> TestServer {
        config.validate().expect("test config is valid");
        let server = Server::bind_with(config, |config, metrics| backend.broker(config, metrics))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            admin,
            shutdown,
            task,
            _redis: redis,
        }
    }

    /// Starts shutdown and waits (bounded) for the server's report.
    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server did not stop")
            .expect("server task panicked")
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// A connected, welcomed JSON client.
    pub async fn join(&self, name: &str) -> Client {
        let mut c = Client::connect(self.addr).await;
        let welcome = c.hello(name).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol-speaking test client.
pub struct Client {
    pub ws: Ws,
    pub wait: Duration,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), None, true),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        Client { ws, wait: WAIT }
    }

    pub async fn hello(&mut self, name: &str) -> Value {
        self.send(json!({"type": "hello", "name": name})).await;
        self.recv().await
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    /// The next data or close frame (pings and pongs skipped).
    pub async fn next_message(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended without a close frame")
                .expect("read error");
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return m;
            }
        }
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next_message().await {
            Message::Text(t) => {
                serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame as a string (plain-text sessions).
    pub async fn recv_line(&mut self) -> String {
        match self.next_message().await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must have this `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Sends a request with an id and returns the next frame, which must carry that id as `ref`.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let id = format!("r{}", rand_id());
        v["id"] = json!(id);
        self.send(v).await;
        let reply = self.recv().await;
        assert_eq!(reply["ref"], json!(id), "reply does not carry ref: {reply}");
        reply
    }

    /// The next frame matching `pred`, skipping others (for events that interleave with traffic).
    pub async fn find(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Proves nothing else is queued for this client: a `rooms` round trip must be the next frame.
    pub async fn sync(&mut self) {
        let reply = self.request(json!({"type": "rooms"})).await;
        assert_eq!(
            reply["type"], "rooms",
            "unexpected frame before sync reply: {reply}"
        );
    }

    /// Reads until the server's close frame, completes the close handshake (as any real client
    /// does), and returns the code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let result = self.close_frame().await;
        // Polling on sends our reply to the close; the stream then ends.
        let _ = tokio::time::timeout(self.wait, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        result
    }

    async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let m = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match m {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The text of a stdout line: a plain line as it is, a JSON log line (what chatd prints when
/// stdout is not a terminal) as its message.
pub fn line_text(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| line.to_string())
}

/// The real `chatd` binary, started on port 0; stdout lines are collected on a thread.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub lines: mpsc::Receiver<String>,
    /// Lines printed up to the listening line and the admin line, those included.
    pub startup: Vec<String>,
}

pub fn chatd_command() -> Command {
    let mut cmd = chatd_command_with_defaults();
    // History in memory unless a test asks for a database (it sets CHATD_STORAGE__PATH after).
    cmd.env("CHATD_STORAGE__PATH", "");
    cmd
}

/// The real binary with nothing but its embedded defaults (a database in the temp directory).
pub fn chatd_command_with_defaults() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    // Isolate from the developer's environment and the repo's chat.toml.
    for (key, _) in std::env::vars() {
        if key.starts_with("CHATD_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(std::env::temp_dir());
    cmd
}

impl Daemon {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Self::start_at(0, args, envs)
    }

    pub fn start_at(port: u16, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = chatd_command();
        cmd.args(["--port", &port.to_string()]).args(args);
        Self::spawn(cmd, envs)
    }

    /// Runs `cmd` (chatd, or a shell that execs it) with the test environment and `envs`.
    pub fn spawn(mut cmd: Command, envs: &[(&str, &str)]) -> Daemon {
        cmd.env("CHATD_ADMIN__LISTEN", "127.0.0.1:0")
            .env("CHATD_STORAGE__PATH", "")
            .envs(envs.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn chatd");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let prefix = "WebSocket server listening on ";
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut startup = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("chatd did not report its address");
            let found = line_text(&line)
                .strip_prefix(prefix)
                .map(|a| a.parse().expect("address"));
            startup.push(line);
            if let Some(addr) = found {
                break addr;
            }
        };
        // The admin line follows soon when the admin listener is on; log lines may come between.
        let admin_deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut admin = None;
        while let Ok(line) =
            lines.recv_timeout(admin_deadline.saturating_duration_since(std::time::Instant::now()))
        {
            let text = line_text(&line);
            startup.push(line);
            if let Some(rest) = text.strip_prefix("Admin endpoints on http://") {
                admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                break;
            }
        }
        Daemon {
            child,
            addr,
            admin,
            lines,
            startup,
        }
    }

    /// The next stdout line whose text (`line_text`) is `text`, waiting for it; the process
    /// ending first fails the test.
    pub fn line(&self, text: &str) -> String {
        self.lines
            .iter()
            .find(|l| line_text(l) == text)
            .unwrap_or_else(|| panic!("no {text:?} line"))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("chatd did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running process whose stdout and stderr lines are collected on threads.
pub struct Proc {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<String>,
}

fn pump(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `chatctl` with a clean environment.
/// Runs a command to completion: its exit code and its stderr.
pub fn code_and_stderr(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run the command");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn chatctl_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatctl"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CHATD_") || key == "NO_COLOR" {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = pump(child.stdout.take().unwrap());
        let stderr = pump(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    pub fn write_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write stdin");
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.child.stdin.take();
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn expect_out(&mut self, needle: &str) -> String {
        Self::expect_in(&self.stdout, &mut self.seen, needle, "stdout")
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn expect_err(&mut self, needle: &str) -> String {
        Self::expect_in(&self.stderr, &mut self.seen, needle, "stderr")
    }

    fn expect_in(
        rx: &mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        needle: &str,
        what: &str,
    ) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(format!("{what}: {line}"));
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} line containing {needle:?}; seen:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for exit and returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remaining stdout lines once the process has exited.
    pub fn rest_of_stdout(&mut self) -> Vec<String> {
        self.stdout.iter().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking protocol client (tungstenite's sync API) for tests that run without a runtime.
pub struct SyncClient {
    pub ws: tokio_tungstenite::tungstenite::WebSocket<
        tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >,
}

impl SyncClient {
    /// Connected, nothing said yet.
    pub fn connect(addr: SocketAddr) -> SyncClient {
        let (ws, _) =
            tokio_tungstenite::tungstenite::connect(format!("ws://{addr}/")).expect("connect");
        if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(WAIT)).unwrap();
        }
        SyncClient { ws }
    }

    pub fn join(addr: SocketAddr, name: &str) -> SyncClient {
        let mut c = SyncClient::connect(addr);
        c.send(json!({"type": "hello", "name": name}));
        let w = c.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// Reads until the server's close frame: its code and reason.
    pub fn closed(&mut self) -> (u16, String) {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (f.code.into(), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("error before a close frame: {e}"),
            }
        }
    }

    pub fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.ws.read().expect("read (timed out?)") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if std::env::var_os("DEBUG_SYNC").is_some() {
                        eprintln!("sync client got {v}");
                    }
                    if pred(&v) {
                        return v;
                    }
                }
                Message::Close(f) => panic!("closed: {f:?}"),
                other if std::env::var_os("DEBUG_SYNC").is_some() => {
                    eprintln!("sync client got {other:?}")
                }
                _ => {}
            }
        }
    }
}

/// A plain HTTP/1.1 request against the admin listener: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect admin");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read admin response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One sample from a Prometheus text exposition: `name{labels}` → value.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{exposition}"))
}

/// A TCP forwarder in front of a server, on its own thread. [`Proxy::cut`] drops every client
/// side at once but keeps the server sides open: to the server those sessions look alive (a stale
/// session, as after a network failure), while the client sees its connection end.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    _thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    pub fn to(upstream: SocketAddr) -> Proxy {
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let mut stale = Vec::new();
                loop {
                    let (client, _) = match listener.accept().await {
                        Ok(c) => c,
                        Err(_) => return,
                    };
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (stale_tx, stale_rx) = tokio::sync::oneshot::channel();
                    let mut cuts = cuts.clone();
                    let generation = *cuts.borrow();
                    tokio::spawn(async move {
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let cut = {
                            let up = tokio::io::copy(&mut cr, &mut sw);
                            let down = tokio::io::copy(&mut sr, &mut cw);
                            tokio::select! {
                                _ = up => false,
                                _ = down => false,
                                _ = cuts.wait_for(|g| *g > generation) => true,
                            }
                        };
                        if cut {
                            // Keep the server side open; the client side goes away.
                            let _ = stale_tx.send((sr, sw));
                        }
                    });
                    stale.push(stale_rx);
                }
            });
        });
        let addr = rx.recv_timeout(WAIT).expect("proxy listening");
        Proxy {
            addr,
            cut,
            _thread: thread,
        }
    }

    /// Drops every client connection made so far, leaving their server sessions open.
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

/// A token for `name` with `role`, signed with `secret` under the default rules, valid a minute.
/// Waits (bounded) until `check` holds, polling: for what happens on a timer (expiry, sweeps).
pub async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn token_for(secret: &str, name: &str, role: chatd::protocol::Role) -> String {
    let rules = chatd::auth::Rules::from_config(&chatd::config::AuthConfig::default());
    let secret = chatd::config::Secret::new(secret);
    chatd::auth::mint(&secret, name, role, Duration::from_secs(60), &rules).expect("mint a token")
}

/// Two cluster nodes sharing a Redis and a PostgreSQL ([`TestServer::pg_pair`]).
pub struct PgPair {
    pub a: TestServer,
    pub b: TestServer,
    _redis: Arc<Redis>,
    _pg: crate::postgres_server::Postgres,
}

impl PgPair {
    /// Stops both nodes (then Redis and PostgreSQL, as the pair is dropped).
    pub async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}
