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

mod explain;

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
    pub redis_url: RedisUrl,
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
            redis_url: RedisUrl::default(),
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
    /// `open` (first come, first served) or `token` (a signed HS256 JWT per hello).
    pub mode: AuthMode,
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
}

/// A Redis URL whose password (`redis://user:password@host`) is never shown: `Debug`, `Display`
/// and serialisation (`print-config`) write `***` in its place.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// A URL.
    pub fn new(url: impl Into<String>) -> RedisUrl {
        RedisUrl(url.into())
    }

    /// The URL itself, password included: for connecting, never for output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL is set (a single node).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL with its password (if any) written as `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.clone();
        };
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            return url.clone();
        };
        let user = userinfo.split_once(':').map_or("", |(u, _)| u);
        if userinfo.contains(':') {
            format!("{scheme}://{user}:***@{host}")
        } else {
            // `redis://password@host` is read as a password by some clients: hide it too.
            format!("{scheme}://***@{host}")
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A secret string: `Debug` and serialisation show `***`, never the value.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

/// Shortest accepted token secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

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
    /// Bytes of read buffer per connection (it is resident for the connection's life).
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer, used only for its own frames (pings, pongs, close, the echo
    /// endpoint); chat frames go through the outbound queue (grows lazily).
    pub write_buffer_bytes: usize,
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
            read_buffer_bytes: 512,
            write_buffer_bytes: 16 * 1024,
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
    /// The token secret, from `auth.secret` or `auth.secret_file`.
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
        Ok(Secret(secret))
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

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        fn secs(key: &'static str, value: f64, allow_zero: bool) -> Result<(), ConfigError> {
            let ok = (0.0..1e9).contains(&value) && (allow_zero || value > 0.0);
            if ok {
                Ok(())
            } else if allow_zero {
                Err(invalid(
                    key,
                    format!("{value} is not a number of seconds >= 0"),
                ))
            } else {
                Err(invalid(
                    key,
                    format!("{value} is not a number of seconds > 0"),
                ))
            }
        }
        let s = &self.server;
        s.host
            .parse::<IpAddr>()
            .map_err(|_| invalid("server.host", format!("{:?} is not an IP address", s.host)))?;
        if s.workers == 0 || s.workers > 1024 {
            return Err(invalid("server.workers", "must be between 1 and 1024"));
        }
        if s.backlog == 0 {
            return Err(invalid("server.backlog", "must be at least 1"));
        }
        secs(
            "server.handshake_timeout_secs",
            s.handshake_timeout_secs,
            false,
        )?;
        secs("server.ping_interval_secs", s.ping_interval_secs, true)?;
        secs("server.write_timeout_secs", s.write_timeout_secs, false)?;
        secs("server.shutdown_grace_secs", s.shutdown_grace_secs, false)?;

        let l = &self.limits;
        if l.max_message_bytes < 256 {
            return Err(invalid("limits.max_message_bytes", "must be at least 256"));
        }
        if l.max_rooms_per_user == 0 {
            return Err(invalid("limits.max_rooms_per_user", "must be at least 1"));
        }
        if l.max_rooms == 0 {
            return Err(invalid("limits.max_rooms", "must be at least 1"));
        }
        rate("limits.rate_per_sec", l.rate_per_sec)?;
        rate("limits.typing_rate_per_sec", l.typing_rate_per_sec)?;
        if l.rate_per_sec > 0.0 && l.rate_burst == 0 {
            return Err(invalid(
                "limits.rate_burst",
                "must be at least 1 while rate limiting is on",
            ));
        }
        if l.typing_rate_per_sec > 0.0 && l.typing_burst == 0 {
            return Err(invalid(
                "limits.typing_burst",
                "must be at least 1 while typing is rate limited",
            ));
        }
        secs("limits.typing_throttle_secs", l.typing_throttle_secs, true)?;
        secs("limits.typing_active_secs", l.typing_active_secs, false)?;
        secs("limits.typing_paused_secs", l.typing_paused_secs, false)?;
        if l.outbound_queue < 2 {
            return Err(invalid("limits.outbound_queue", "must be at least 2"));
        }
        if l.outbound_queue_bytes < 2 * l.max_message_bytes {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be at least twice limits.max_message_bytes",
            ));
        }
        if l.users_per_page == 0 {
            return Err(invalid("limits.users_per_page", "must be at least 1"));
        }
        if !(10..=60_000).contains(&l.presence_batch_ms) {
            return Err(invalid(
                "limits.presence_batch_ms",
                "must be between 10 and 60000",
            ));
        }
        if l.read_buffer_bytes < 128 {
            return Err(invalid("limits.read_buffer_bytes", "must be at least 128"));
        }
        fn rate(key: &'static str, value: f64) -> Result<(), ConfigError> {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(invalid(key, format!("{value} is not a rate >= 0")))
            }
        }

        let echo = &self.diagnostics.echo_path;
        if !echo.is_empty() && !echo.starts_with('/') {
            return Err(invalid(
                "diagnostics.echo_path",
                format!("{echo:?} must start with /"),
            ));
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            let key = if self.tls.cert.is_empty() {
                "tls.cert"
            } else {
                "tls.key"
            };
            return Err(invalid(key, "tls.cert and tls.key must be set together"));
        }
        if !self.tls.listen.is_empty() {
            if self.tls.listen.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "tls.listen",
                    format!(
                        "{:?} is not an address such as 0.0.0.0:8443",
                        self.tls.listen
                    ),
                ));
            }
            if !self.tls.enabled() {
                return Err(invalid("tls.listen", "needs tls.cert and tls.key"));
            }
        }
        if !s.connect_rate_per_ip.is_finite() || s.connect_rate_per_ip < 0.0 {
            return Err(invalid("server.connect_rate_per_ip", "must be a rate >= 0"));
        }
        if s.connect_rate_per_ip > 0.0 && s.connect_burst_per_ip == 0 {
            return Err(invalid(
                "server.connect_burst_per_ip",
                "must be at least 1 while the rate cap is on",
            ));
        }
        for origin in &s.allowed_origins {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', ' ', '?', '#']));
            if !ok {
                return Err(invalid(
                    "server.allowed_origins",
                    format!(
                        "{origin:?} is not an origin such as \"https://chat.example\" (scheme://host[:port], no path)"
                    ),
                ));
            }
        }
        for range in &s.trusted_proxies {
            crate::addr::Cidr::parse(range).map_err(|e| invalid("server.trusted_proxies", e))?;
        }
        if s.proxy_protocol && s.trusted_proxies.is_empty() {
            return Err(invalid(
                "server.proxy_protocol",
                "needs server.trusted_proxies: the load balancers' addresses, whose PROXY headers are believed",
            ));
        }
        if !self.auth.secret.is_empty() && !self.auth.secret_file.is_empty() {
            return Err(invalid(
                "auth.secret_file",
                "set auth.secret or auth.secret_file, not both",
            ));
        }
        if self.auth.mode == AuthMode::Token
            && self.auth.secret.is_empty()
            && self.auth.secret_file.is_empty()
        {
            return Err(invalid(
                "auth.secret",
                "token mode needs auth.secret or auth.secret_file",
            ));
        }
        parse_ttl(&self.auth.max_ttl).map_err(|e| invalid("auth.max_ttl", e))?;
        if !self.auth.secret.is_empty() && self.auth.secret.expose().len() < MIN_SECRET_BYTES {
            return Err(invalid(
                "auth.secret",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        if !self.admin.listen.is_empty() && self.admin.addr().is_none() {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{:?} is not a socket address such as 127.0.0.1:8002",
                    self.admin.listen
                ),
            ));
        }
        if self.history.on_join > self.history.size {
            return Err(invalid("history.on_join", "must not exceed history.size"));
        }
        let st = &self.storage;
        if st.commit_interval_ms == 0 || st.commit_interval_ms > 60_000 {
            return Err(invalid(
                "storage.commit_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if st.queue_bytes < 2 * l.max_message_bytes {
            return Err(invalid(
                "storage.queue_bytes",
                "must be at least twice limits.max_message_bytes",
            ));
        }
        secs("storage.prune_interval_secs", st.prune_interval_secs, false)?;
        if st.search_budget_ms == 0 || st.search_budget_ms > 60_000 {
            return Err(invalid(
                "storage.search_budget_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.history.max_bytes < self.history.max_bytes_per_room {
            return Err(invalid(
                "history.max_bytes",
                "must be at least history.max_bytes_per_room",
            ));
        }
        let log = &self.log;
        check_log_filter(&log.level).map_err(|reason| invalid("log.level", reason))?;
        if !log.directory.is_empty() && log.file_prefix.is_empty() {
            return Err(invalid(
                "log.file_prefix",
                "must not be empty when log.directory is set",
            ));
        }
        if log.keep_files == 0 {
            return Err(invalid("log.keep_files", "must be at least 1"));
        }
        let c = &self.cluster;
        let url = c.redis_url.expose();
        if !(url.is_empty()
            || url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(invalid(
                "cluster.redis_url",
                "must start with redis://, rediss:// (TLS) or unix:// (or be empty for a single node)",
            ));
        }
        // Only a cluster keeps history in Redis: a single node with huge
        // messages (the Autobahn run's 20 MB) must not trip over it.
        if !url.is_empty() && c.history_bytes < 2 * l.max_message_bytes {
            return Err(invalid(
                "cluster.history_bytes",
                "must be at least twice limits.max_message_bytes (when cluster.redis_url is set)",
            ));
        }
        if c.room_ttl_secs < c.presence_ttl_secs {
            return Err(invalid(
                "cluster.room_ttl_secs",
                "must be at least cluster.presence_ttl_secs",
            ));
        }
        if c.heartbeat_secs == 0 || c.heartbeat_secs * 2 > c.name_ttl_secs.min(c.presence_ttl_secs)
        {
            return Err(invalid(
                "cluster.heartbeat_secs",
                "must be at least 1 and at most half of name_ttl_secs and presence_ttl_secs",
            ));
        }
        if !(1..=60_000).contains(&c.op_timeout_ms) {
            return Err(invalid(
                "cluster.op_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if c.history_size == 0 {
            return Err(invalid("cluster.history_size", "must be at least 1"));
        }
        if c.key_prefix.is_empty() || c.key_prefix.contains(|ch: char| ch.is_whitespace()) {
            return Err(invalid(
                "cluster.key_prefix",
                "must be a word without spaces (it starts every Redis key)",
            ));
        }
        Ok(())
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

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A `log.level` (or `RUST_LOG`) filter: comma-separated directives, each a level or
/// `target=level`. tracing would take `infoo` as a target name and log nothing; this refuses it.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{directive:?} names no target before `=`")),
            None => directive,
        };
        if !is_level(level) {
            let hint = explain::closest(&level.trim().to_ascii_lowercase(), LEVELS)
                .map(|l| format!(" (did you mean {l:?}?)"))
                .unwrap_or_default();
            return Err(format!(
                "{level:?} in {filter:?} is not a level: use one of {}, or target=level{hint}",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not a filter: {e}"))
}

/// Parses a time-to-live such as `30d`, `12h`, `15m`, `90s` or `3600`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    // Anything past 100 years is a typo or an attack, and would overflow timestamps.
    const MAX_SECS: u64 = 100 * 366 * 86_400;
    n.checked_mul(secs)
        .filter(|&s| s > 0 && s <= MAX_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration of at most 100 years"))
}
