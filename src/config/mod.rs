//! Typed configuration: defaults in code, layered by figment, validated as a whole before anything binds.
//!
//! Layers, lowest first: [`Config::default`] < a TOML file < `CHATD_*` environment variables (with `__`
//! between section and key, e.g. `CHATD_SERVER__PORT=9000`) < overrides from the command line. Unknown
//! keys are errors, and every error names the key it is about.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod api;
mod explain;
mod secret;
mod validate;
mod webhooks;

pub use api::ApiConfig;
pub use secret::{MIN_SECRET_BYTES, Secret, SecretUrl};
pub use validate::{check_log_filter, parse_ttl};
pub use webhooks::{MAX_ENDPOINTS, WEBHOOK_EVENTS, WebhookEndpoint, WebhooksConfig};

/// Environment variables with the `CHATD_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "URL", "TOKEN"];

/// Why a configuration was refused. Its text always names the offending key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be merged into a [`Config`] (unknown key, wrong type, unreadable
    /// TOML), said in key names and TOML types, with where each value was set.
    #[error("{0}")]
    Load(String),
    /// A value had the right type but is outside what chatd accepts.
    #[error("invalid value for key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.port`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The file given with `--config`/`CHATD_CONFIG` does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A file the configuration names cannot be used (TLS certificate or key, secret file).
    #[error("{key} = {path:?}: {reason}")]
    File {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn load(err: figment::Error, file: Option<&Path>) -> ConfigError {
        let text = file.and_then(|f| std::fs::read_to_string(f).ok());
        let file = file.zip(text.as_deref());
        ConfigError::Load(explain::explain(err, file))
    }
}

/// The whole configuration of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener, timeouts and runtime.
    pub server: ServerConfig,
    /// Per-connection and per-server limits.
    pub limits: LimitsConfig,
    /// Room history kept in memory.
    pub history: HistoryConfig,
    /// Durable history (SQLite).
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin listener (metrics and health).
    pub admin: AdminConfig,
    /// TLS for `wss://`.
    pub tls: TlsConfig,
    /// Who may take which name.
    pub auth: AuthConfig,
    /// The browser chat page.
    pub web: WebConfig,
    /// Diagnostic endpoints (off by default).
    pub diagnostics: DiagnosticsConfig,
    /// Several nodes acting as one chat over Redis (off by default).
    pub cluster: ClusterConfig,
    /// The HTTP API (off by default).
    pub api: ApiConfig,
    /// Outgoing webhooks (none by default).
    pub webhooks: WebhooksConfig,
}

/// `[web]`: the chat page served at `/` on the chat port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the browser client at `GET /` (plain and TLS). Off: a plain GET gets 426, as a
    /// WebSocket-only server.
    pub enabled: bool,
}

impl Default for WebConfig {
    fn default() -> WebConfig {
        WebConfig { enabled: true }
    }
}

/// `[storage]`: where history is kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The SQLite database file, relative to the working directory; empty keeps history in memory
    /// only (lost on restart).
    pub path: String,
    /// A PostgreSQL database (`postgres://user@host:5432/chatd`) instead of the file: what a
    /// cluster keeps durable state in (a cluster never uses `path`). The password is never shown.
    pub url: SecretUrl,
    /// A file holding the PostgreSQL password (its first line), instead of putting it in `url`.
    pub password_file: String,
    /// PEM CA certificate(s) PostgreSQL's certificate must chain to when `url` asks for TLS
    /// (`sslmode=require`); empty: the system's roots.
    pub ca_cert: String,
    /// Longest time an accepted message waits to be committed (what a crash can lose).
    pub commit_interval_ms: u64,
    /// Messages older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u64,
    /// Messages kept per room, the oldest deleted first; 0 = unlimited.
    pub max_messages_per_room: u64,
    /// The most the database file may grow to, in bytes (writes fail like a full disk past it,
    /// until the pruner frees space); 0 = unlimited.
    pub max_db_bytes: u64,
    /// Bytes of accepted messages that may wait for the writer; past it `say` gets `unavailable`.
    pub queue_bytes: usize,
    /// Seconds between pruner runs.
    pub prune_interval_secs: f64,
    /// The longest one search may run, in milliseconds; past it the search is stopped and the
    /// client told to narrow it. Searches run one at a time, apart from history reads.
    pub search_budget_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: "chatd.db".into(),
            url: SecretUrl::default(),
            password_file: String::new(),
            ca_cert: String::new(),
            commit_interval_ms: 100,
            retention_days: 0,
            max_messages_per_room: 0,
            max_db_bytes: 0,
            queue_bytes: 32 << 20,
            prune_interval_secs: 60.0,
            search_budget_ms: 250,
        }
    }
}

/// `[cluster]`: several chatd nodes sharing names, rooms and history through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS) or `unix://…`; empty runs a
    /// single node (names, rooms and history in this process). Its password is never printed.
    pub redis_url: SecretUrl,
    /// A file holding the Redis password, instead of writing it into `redis_url` (an ACL
    /// user's name stays in the URL); read at start.
    pub redis_password_file: String,
    /// With `rediss://`: a PEM file of the CA(s) to trust for Redis's certificate instead of the
    /// system's (a private CA).
    pub redis_ca_cert: String,
    /// This node's name in Redis; empty: hostname, pid and a random suffix (logged at start).
    pub node_id: String,
    /// Seconds a name claim lives unless its node refreshes it.
    pub name_ttl_secs: u64,
    /// Seconds a node's presence lives unless it refreshes it; its members are reaped after.
    pub presence_ttl_secs: u64,
    /// Seconds between refreshes of this node's claims and presence.
    pub heartbeat_secs: u64,
    /// Deadline of every Redis call, in milliseconds; past it the request gets `unavailable`.
    pub op_timeout_ms: u64,
    /// Messages per room kept in Redis (history, and the gaps a node can repair).
    pub history_size: usize,
    /// Bytes of messages per room kept in Redis, at most: the oldest go first past either bound.
    pub history_bytes: usize,
    /// Seconds a room's keys (seq, history) outlive its last member; then Redis forgets the room
    /// (it starts again with a new epoch if anyone comes back).
    pub room_ttl_secs: u64,
    /// Prefix of every Redis key and channel, so that several chats can share one Redis.
    pub key_prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: SecretUrl::default(),
            redis_password_file: String::new(),
            redis_ca_cert: String::new(),
            node_id: String::new(),
            name_ttl_secs: 30,
            presence_ttl_secs: 30,
            heartbeat_secs: 10,
            op_timeout_ms: 1000,
            history_size: 10_000,
            history_bytes: 16 << 20,
            room_ttl_secs: 7 * 86_400,
            key_prefix: "chatd".into(),
        }
    }
}

/// `[diagnostics]`: endpoints for testing the server, not for users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Upgrade path (e.g. `/echo`) whose connections echo every message back over the same
    /// connection code, limits and close codes as chat (for conformance suites). Empty = off.
    pub echo_path: String,
}

/// `[tls]`: serve `wss://` when both paths are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first); empty = plain `ws://`.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// A second listener for `wss://` (`host:port`), the main one staying `ws://`; empty = TLS on
    /// the main listener.
    pub listen: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }

    /// The separate `wss://` listener's address, when there is one.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok().filter(|_| self.enabled())
    }
}

/// `[auth]`: open names or signed tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open` (first come, first served), `token` (a signed HS256 JWT per hello) or `accounts`
    /// (names owned by a password; tokens too when a secret is set).
    pub mode: AuthMode,
    /// In `accounts` mode, who may register: `open` (anyone), `invite` (with a code from
    /// `chatd invite`) or `closed` (only `chatd user add`).
    pub registration: Registration,
    /// The shortest password accepted, in characters.
    pub password_min_chars: usize,
    /// Argon2id's memory cost per hash, in KiB (19456: OWASP's minimum for Argon2id).
    pub argon2_memory_kib: u32,
    /// Argon2id's passes over that memory.
    pub argon2_iterations: u32,
    /// Threads that hash and check passwords (never the chat's threads).
    pub hash_threads: usize,
    /// Failed sign-ins allowed per account name in 10 minutes (refilled evenly).
    pub login_failures_per_name: u32,
    /// Failed sign-ins allowed per client address in 10 minutes (refilled evenly).
    pub login_failures_per_address: u32,
    /// Registrations allowed per client address in an hour (refilled evenly).
    pub registrations_per_address: u32,
    /// Connections one account (or token holder) may have at once (tokens and accounts modes).
    pub max_sessions_per_user: usize,
    /// HMAC secret for tokens (at least 32 bytes). Never logged or printed.
    pub secret: Secret,
    /// File holding the secret instead (trailing newline ignored).
    pub secret_file: String,
    /// The longest lifetime a token may have left (`90d`, `12h`, ...): tokens must carry `exp`, no
    /// further away than this; `chatd token --ttl` refuses more.
    pub max_ttl: String,
    /// When set, tokens must carry this `iss` (and `chatd token` writes it).
    pub issuer: String,
    /// When set, tokens must carry this `aud` (and `chatd token` writes it).
    pub audience: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            registration: Registration::Open,
            password_min_chars: 8,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            hash_threads: 1,
            login_failures_per_name: 10,
            login_failures_per_address: 30,
            registrations_per_address: 5,
            max_sessions_per_user: 8,
            secret: Secret::default(),
            secret_file: String::new(),
            max_ttl: "90d".into(),
            issuer: String::new(),
            audience: String::new(),
        }
    }
}

/// How names are claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any free name.
    #[default]
    Open,
    /// Only the name a valid token was issued for.
    Token,
    /// Names owned by accounts: a password (or a token, when a secret is set) per hello.
    Accounts,
}

impl AuthMode {
    /// Names belong to someone: a hello proves it (a token or a password), and no look-alike
    /// check is needed.
    pub fn owned_names(self) -> bool {
        self != AuthMode::Open
    }
}

/// Who may register an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone.
    #[default]
    Open,
    /// With an invite code (`chatd invite`).
    Invite,
    /// Nobody: accounts are made with `chatd user add`.
    Closed,
}

/// `[admin]`: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Socket address of the admin listener; empty disables it.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8002".into(),
        }
    }
}

impl AdminConfig {
    /// The admin address, or `None` when disabled (validated by [`Config::validate`]).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[server]`: where to listen and how long to wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind (an IP address).
    pub host: String,
    /// TCP port; 0 picks a free one (the bound port is printed).
    pub port: u16,
    /// Runtime worker threads: 1 runs a single-threaded runtime (measured fastest on 2 cores).
    pub workers: usize,
    /// Listen backlog for pending TCP connections.
    pub backlog: u32,
    /// Seconds allowed for the HTTP upgrade plus the `hello`.
    pub handshake_timeout_secs: f64,
    /// Seconds between server pings; a peer silent for two intervals is closed. 0 disables pings.
    pub ping_interval_secs: f64,
    /// Seconds a write to a client may block before the client is dropped as a slow consumer.
    pub write_timeout_secs: f64,
    /// Seconds to wait for close handshakes on shutdown.
    pub shutdown_grace_secs: f64,
    /// Maximum simultaneous connections; 0 = unlimited.
    pub max_connections: usize,
    /// Maximum simultaneous connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// New connections per second one IP address may open (token bucket); 0 = unlimited.
    pub connect_rate_per_ip: f64,
    /// Connections one IP address may open in a burst.
    pub connect_burst_per_ip: u32,
    /// Browser origins allowed to connect (exact `scheme://host[:port]`); empty = any. Requests
    /// without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies and load balancers (addresses or ranges such as `10.0.0.0/8`) whose word
    /// about the client's address is taken: `Forwarded`/`X-Forwarded-For`, or the PROXY protocol
    /// header with `proxy_protocol`. Empty = every peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header (v1 or v2, as
    /// HAProxy's `send-proxy`/`send-proxy-v2` sends), before TLS; others must not send one.
    pub proxy_protocol: bool,
    /// The one header the trusted proxies set for the client's address; every other forwarding
    /// header is ignored (a client may send one of its own, which a proxy passes through).
    pub forwarded_header: ForwardedHeader,
}

/// Which forwarding header a trusted proxy sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), `for=` of each element.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            workers: 1,
            backlog: 1024,
            handshake_timeout_secs: 10.0,
            ping_interval_secs: 30.0,
            write_timeout_secs: 10.0,
            shutdown_grace_secs: 5.0,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            connect_rate_per_ip: 20.0,
            connect_burst_per_ip: 100,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            forwarded_header: ForwardedHeader::XForwardedFor,
        }
    }
}

/// `[limits]`: what one client may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message (and frame) a client may send, in bytes; larger ones get close 1009.
    pub max_message_bytes: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_user: usize,
    /// Rooms that may exist at once on the server (idle empty rooms are evicted at the cap).
    pub max_rooms: usize,
    /// Rooms that users from one address (IPv4, or IPv6 /64) may have created and that still exist;
    /// 0 = unlimited.
    pub max_rooms_per_ip: usize,
    /// Requests per second a connection may sustain (token bucket refill); 0 disables rate limiting.
    pub rate_per_sec: f64,
    /// Requests a connection may send in a burst (token bucket size).
    pub rate_burst: u32,
    /// Typing updates per second a connection may sustain; counted apart from requests. 0 disables.
    pub typing_rate_per_sec: f64,
    /// Typing updates a connection may send in a burst.
    pub typing_burst: u32,
    /// Seconds between two relayed `typing active` from one sender to one target.
    pub typing_throttle_secs: f64,
    /// Seconds after which an unrefreshed `typing active` is ended with a relayed `done`.
    pub typing_active_secs: f64,
    /// Seconds after which an unrefreshed `typing paused` is ended with a relayed `done`.
    pub typing_paused_secs: f64,
    /// Rejected requests tolerated in a burst (refilled one per second) before close 1008.
    pub abuse_strikes: u32,
    /// Frames that may wait in one client's outbound queue; past it the client is a slow consumer.
    /// Typing and presence events are dropped once the queue is half full.
    pub outbound_queue: usize,
    /// Bytes that may wait in one client's outbound queue (control frames included).
    pub outbound_queue_bytes: usize,
    /// Users listed per `welcome`, `room` or `who` reply.
    pub users_per_page: usize,
    /// Rooms with more members than this announce joins and leaves in one `presence` event per
    /// `presence_batch_ms` instead of one `joined`/`left` each; 0 = always.
    pub presence_batch_over: usize,
    /// How often a large room's batched joins and leaves go out, in milliseconds.
    pub presence_batch_ms: u64,
    /// Bytes tungstenite takes per read into its own buffer, which starts this size and then
    /// holds the largest frame so far (the socket is read into the thread's buffer).
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer, used only for its own frames (pings, pongs, close, the echo
    /// endpoint); chat frames go through the outbound queue (grows lazily).
    pub write_buffer_bytes: usize,
    /// How long after sending it a message may be edited, in seconds (0: forever).
    pub edit_window_secs: u64,
    /// Edits of one message a connection may make per minute.
    pub edits_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_rooms_per_user: 32,
            max_rooms: 10_000,
            max_rooms_per_ip: 100,
            rate_per_sec: 10.0,
            rate_burst: 20,
            typing_rate_per_sec: 2.0,
            typing_burst: 10,
            typing_throttle_secs: 3.0,
            typing_active_secs: 6.0,
            typing_paused_secs: 30.0,
            abuse_strikes: 10,
            outbound_queue: 1024,
            outbound_queue_bytes: 1 << 20,
            users_per_page: 200,
            presence_batch_over: 50,
            presence_batch_ms: 1000,
            read_buffer_bytes: 128,
            write_buffer_bytes: 16 * 1024,
            edit_window_secs: 24 * 3600,
            edits_per_minute: 10,
        }
    }
}

/// `[history]`: how much each room remembers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per room, in memory; 0 keeps none.
    pub size: usize,
    /// Messages included in `welcome` and `room` replies (at most `size`).
    pub on_join: usize,
    /// Bytes of history kept per room (oldest evicted first).
    pub max_bytes_per_room: usize,
    /// Bytes of history kept in all rooms together (oldest evicted first).
    pub max_bytes: usize,
    /// Messages a resuming client may be behind by and still get exactly what it missed.
    pub resume_max: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            on_join: 20,
            max_bytes_per_room: 256 * 1024,
            max_bytes: 64 << 20,
            resume_max: 1000,
        }
    }
}

/// `[log]`: where logs go and how they look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter directive (`info`, `chatd=debug`, ...); `RUST_LOG` wins when set.
    pub level: String,
    /// Output format on stdout.
    pub format: LogFormat,
    /// Directory for rotating log files; empty = no log file.
    pub directory: String,
    /// File name prefix of the log files.
    pub file_prefix: String,
    /// When log files rotate.
    pub rotation: Rotation,
    /// Rotated files kept (older ones are deleted).
    pub keep_files: usize,
    /// Log chat message bodies at debug level (off: bodies never reach the logs).
    pub message_bodies: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
            directory: String::new(),
            file_prefix: "chatd.log".into(),
            rotation: Rotation::Daily,
            keep_files: 7,
            message_bodies: false,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Log file rotation period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    /// A new file every day.
    Daily,
    /// A new file every hour.
    Hourly,
    /// One file, never rotated.
    Never,
}

impl AuthConfig {
    /// A token secret is configured (`auth.secret` or `auth.secret_file`).
    pub fn has_secret(&self) -> bool {
        !self.secret.is_empty() || !self.secret_file.is_empty()
    }

    /// The token secret: `auth.secret`, or the file `auth.secret_file` names.
    pub fn load_secret(&self) -> Result<Secret, ConfigError> {
        if !self.secret.is_empty() {
            return Ok(self.secret.clone());
        }
        if self.secret_file.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.secret",
                reason: "no secret configured (auth.secret or auth.secret_file)".into(),
            });
        }
        let file_error = |reason: String| ConfigError::File {
            key: "auth.secret_file",
            path: self.secret_file.clone(),
            reason,
        };
        let text =
            std::fs::read_to_string(&self.secret_file).map_err(|e| file_error(read_error(&e)))?;
        let secret = text.trim_end_matches(['\r', '\n']).to_string();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(file_error(format!(
                "the secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        Ok(Secret::new(secret))
    }
}

/// Where the configuration comes from, as the binary found it.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Explicit config file (`--config`/`CHATD_CONFIG`); must exist when given.
    pub file: Option<PathBuf>,
    /// Read `./chat.toml` when no explicit file is given and it exists.
    pub default_file: Option<PathBuf>,
    /// Merge `CHATD_*` environment variables.
    pub use_env: bool,
    /// `--host` override.
    pub host: Option<String>,
    /// `--port` override.
    pub port: Option<u16>,
    /// Keys set on the command line (e.g. `chatd token --secret-file`): the highest layer.
    pub overrides: Vec<(&'static str, String)>,
}

impl Config {
    /// Merges the layers named by `sources` over the defaults and validates the result.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &sources.file
            && !file.exists()
        {
            return Err(ConfigError::MissingFile(file.clone()));
        }
        let file = sources.file_in_use();
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        if sources.use_env {
            figment = figment.merge(Env::prefixed("CHATD_").ignore(NON_CONFIG_ENV).split("__"));
        }
        if let Some(host) = &sources.host {
            figment = figment.merge(("server.host", host));
        }
        if let Some(port) = sources.port {
            figment = figment.merge(("server.port", port));
        }
        for (key, value) in &sources.overrides {
            figment = figment.merge((*key, value));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::load(e, file.as_deref()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses one TOML document on its own (no defaults file, no environment) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::load(e, None))?;
        config.validate()?;
        Ok(config)
    }

    /// `server.trusted_proxies`, parsed (validate() proved each parses).
    pub fn trusted_proxies(&self) -> Vec<crate::addr::Cidr> {
        self.server
            .trusted_proxies
            .iter()
            .filter_map(|r| crate::addr::Cidr::parse(r).ok())
            .collect()
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        // validate() proved host parses.
        let ip = self
            .server
            .host
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        SocketAddr::new(ip, self.server.port)
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl ServerConfig {
    /// Handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout_secs)
    }
    /// Ping interval, or `None` when pings are off.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_secs > 0.0).then(|| Duration::from_secs_f64(self.ping_interval_secs))
    }
    /// Write timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout_secs)
    }
    /// Shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_secs)
    }
}

impl Sources {
    /// The TOML file that is read: the explicit one, or `./chat.toml` when it exists.
    pub fn file_in_use(&self) -> Option<PathBuf> {
        match (&self.file, &self.default_file) {
            (Some(file), _) => Some(file.clone()),
            (None, Some(file)) if file.exists() => Some(file.clone()),
            _ => None,
        }
    }

    /// The usual sources for the daemon: an explicit file or `./chat.toml`, plus the environment.
    pub fn standard(file: Option<&Path>) -> Sources {
        Sources {
            file: file.map(Path::to_path_buf),
            default_file: Some(PathBuf::from("chat.toml")),
            use_env: true,
            host: None,
            port: None,
            overrides: Vec::new(),
        }
    }
}

/// Why a file could not be read, in the operator's terms: "permission denied" names the user
/// chatd runs as, since that is what to fix (the owner or mode, or systemd's `LoadCredential=`).
pub fn read_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied: the file is not readable by the user chatd runs as (uid {}); \
             make it readable by that user (chown/chmod), or under systemd pass it with \
             LoadCredential=",
            rustix::process::getuid().as_raw()
        ),
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}
