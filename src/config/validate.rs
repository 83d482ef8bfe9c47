//! What types alone cannot check: one function per section, each naming the key at fault. A
//! rule that ties two sections together (a queue that must hold two messages) lives with the
//! section it constrains, and a cluster's rules bind only when `cluster.redis_url` is set.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{
    AdminConfig, AuthConfig, AuthMode, ClusterConfig, Config, ConfigError, DiagnosticsConfig,
    HistoryConfig, LimitsConfig, LogConfig, MIN_SECRET_BYTES, ServerConfig, StorageConfig,
    TlsConfig, explain,
};

impl Config {
    /// Checks values that types alone cannot, section by section; the first fault found is the
    /// error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        server(&self.server)?;
        limits(&self.limits)?;
        diagnostics(&self.diagnostics)?;
        tls(&self.tls)?;
        auth(&self.auth)?;
        accounts(self)?;
        admin(&self.admin)?;
        history(&self.history)?;
        storage(&self.storage, &self.limits)?;
        log(&self.log)?;
        super::api::validate(self)?;
        super::webhooks::validate(self)?;
        cluster(&self.cluster, &self.limits)
    }
}

type Checked = Result<(), ConfigError>;

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// A number of seconds: finite, not negative, and (unless `allow_zero`) above zero.
fn secs(key: &'static str, value: f64, allow_zero: bool) -> Checked {
    let ok = (0.0..1e9).contains(&value) && (allow_zero || value > 0.0);
    match (ok, allow_zero) {
        (true, _) => Ok(()),
        (false, true) => Err(invalid(
            key,
            format!("{value} is not a number of seconds >= 0"),
        )),
        (false, false) => Err(invalid(
            key,
            format!("{value} is not a number of seconds > 0"),
        )),
    }
}

/// A rate per second: finite and not negative (0 turns the limit off).
fn rate(key: &'static str, value: f64) -> Checked {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(key, format!("{value} is not a rate >= 0")))
    }
}

/// A whole number within `range`.
pub(super) fn within(
    key: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Checked {
    if range.contains(&value) {
        Ok(())
    } else {
        let (lo, hi) = range.into_inner();
        Err(invalid(key, format!("must be between {lo} and {hi}")))
    }
}

/// At least `min`.
pub(super) fn at_least(key: &'static str, value: usize, min: usize) -> Checked {
    if value >= min {
        Ok(())
    } else {
        Err(invalid(key, format!("must be at least {min}")))
    }
}

fn server(s: &ServerConfig) -> Checked {
    s.host
        .parse::<IpAddr>()
        .map_err(|_| invalid("server.host", format!("{:?} is not an IP address", s.host)))?;
    within("server.workers", s.workers as u64, 1..=1024)?;
    at_least("server.backlog", s.backlog as usize, 1)?;
    secs(
        "server.handshake_timeout_secs",
        s.handshake_timeout_secs,
        false,
    )?;
    secs("server.ping_interval_secs", s.ping_interval_secs, true)?;
    secs("server.write_timeout_secs", s.write_timeout_secs, false)?;
    secs("server.shutdown_grace_secs", s.shutdown_grace_secs, false)?;
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
    Ok(())
}

fn limits(l: &LimitsConfig) -> Checked {
    at_least("limits.max_message_bytes", l.max_message_bytes, 256)?;
    at_least("limits.max_rooms_per_user", l.max_rooms_per_user, 1)?;
    at_least("limits.max_rooms", l.max_rooms, 1)?;
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
    at_least("limits.outbound_queue", l.outbound_queue, 2)?;
    if l.outbound_queue_bytes < 2 * l.max_message_bytes {
        return Err(invalid(
            "limits.outbound_queue_bytes",
            "must be at least twice limits.max_message_bytes",
        ));
    }
    at_least("limits.users_per_page", l.users_per_page, 1)?;
    within("limits.presence_batch_ms", l.presence_batch_ms, 10..=60_000)?;
    within(
        "limits.read_buffer_bytes",
        l.read_buffer_bytes as u64,
        16..=65_536,
    )
}

fn diagnostics(d: &DiagnosticsConfig) -> Checked {
    let echo = &d.echo_path;
    if !echo.is_empty() && !echo.starts_with('/') {
        return Err(invalid(
            "diagnostics.echo_path",
            format!("{echo:?} must start with /"),
        ));
    }
    Ok(())
}

fn tls(t: &TlsConfig) -> Checked {
    if t.cert.is_empty() != t.key.is_empty() {
        let key = if t.cert.is_empty() {
            "tls.cert"
        } else {
            "tls.key"
        };
        return Err(invalid(key, "tls.cert and tls.key must be set together"));
    }
    if !t.listen.is_empty() {
        if t.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "tls.listen",
                format!("{:?} is not an address such as 0.0.0.0:8443", t.listen),
            ));
        }
        if !t.enabled() {
            return Err(invalid("tls.listen", "needs tls.cert and tls.key"));
        }
    }
    Ok(())
}

fn auth(a: &AuthConfig) -> Checked {
    if !a.secret.is_empty() && !a.secret_file.is_empty() {
        return Err(invalid(
            "auth.secret_file",
            "set auth.secret or auth.secret_file, not both",
        ));
    }
    if a.mode == AuthMode::Token && a.secret.is_empty() && a.secret_file.is_empty() {
        return Err(invalid(
            "auth.secret",
            "token mode needs auth.secret or auth.secret_file",
        ));
    }
    parse_ttl(&a.max_ttl).map_err(|e| invalid("auth.max_ttl", e))?;
    if !a.secret.is_empty() && a.secret.expose().len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "auth.secret",
            format!("must be at least {MIN_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Accounts mode: where accounts are kept, and what hashing them costs.
fn accounts(c: &Config) -> Checked {
    let a = &c.auth;
    within(
        "auth.password_min_chars",
        a.password_min_chars as u64,
        1..=256,
    )?;
    within(
        "auth.argon2_memory_kib",
        a.argon2_memory_kib.into(),
        64..=4_194_304,
    )?;
    within("auth.argon2_iterations", a.argon2_iterations.into(), 1..=64)?;
    within("auth.hash_threads", a.hash_threads as u64, 1..=64)?;
    within(
        "auth.max_sessions_per_user",
        a.max_sessions_per_user as u64,
        1..=64,
    )?;
    if a.mode != AuthMode::Accounts {
        return Ok(());
    }
    needs_store(c, "auth.mode", "accounts need", "accounts")
}

/// Refuses `key` unless something durable every node shares keeps `what`: a store
/// (`storage.path` or `storage.url`), and in a cluster PostgreSQL.
pub(super) fn needs_store(c: &Config, key: &'static str, need: &str, what: &str) -> Checked {
    let s = &c.storage;
    let kept = !s.url.is_empty() || (!s.path.is_empty() && c.cluster.redis_url.is_empty());
    if kept {
        return Ok(());
    }
    Err(invalid(
        key,
        if c.cluster.redis_url.is_empty() {
            format!("{need} a store: set storage.path (or storage.url)")
        } else {
            format!("a cluster keeps {what} in PostgreSQL: set storage.url")
        },
    ))
}

fn admin(a: &AdminConfig) -> Checked {
    if !a.listen.is_empty() && a.addr().is_none() {
        return Err(invalid(
            "admin.listen",
            format!(
                "{:?} is not a socket address such as 127.0.0.1:8002",
                a.listen
            ),
        ));
    }
    Ok(())
}

fn history(h: &HistoryConfig) -> Checked {
    if h.on_join > h.size {
        return Err(invalid("history.on_join", "must not exceed history.size"));
    }
    if h.max_bytes < h.max_bytes_per_room {
        return Err(invalid(
            "history.max_bytes",
            "must be at least history.max_bytes_per_room",
        ));
    }
    Ok(())
}

fn storage(st: &StorageConfig, l: &LimitsConfig) -> Checked {
    within(
        "storage.commit_interval_ms",
        st.commit_interval_ms,
        1..=60_000,
    )?;
    if st.queue_bytes < 2 * l.max_message_bytes {
        return Err(invalid(
            "storage.queue_bytes",
            "must be at least twice limits.max_message_bytes",
        ));
    }
    secs("storage.prune_interval_secs", st.prune_interval_secs, false)?;
    within("storage.search_budget_ms", st.search_budget_ms, 1..=60_000)?;
    let url = st.url.expose();
    if !url.is_empty() {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "storage.url",
                "must start with postgres:// or postgresql:// (or be empty: storage.path is used)",
            ));
        }
        if let Err(e) = url.parse::<postgres::Config>() {
            return Err(invalid(
                "storage.url",
                format!("is not a PostgreSQL URL: {e}"),
            ));
        }
    }
    Ok(())
}

fn log(log: &LogConfig) -> Checked {
    check_log_filter(&log.level).map_err(|reason| invalid("log.level", reason))?;
    if !log.directory.is_empty() && log.file_prefix.is_empty() {
        return Err(invalid(
            "log.file_prefix",
            "must not be empty when log.directory is set",
        ));
    }
    at_least("log.keep_files", log.keep_files, 1)
}

fn cluster(c: &ClusterConfig, l: &LimitsConfig) -> Checked {
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
    // Only a cluster keeps history in Redis: a single node with huge messages (the Autobahn
    // run's 20 MB) must not trip over it.
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
    if c.heartbeat_secs == 0 || c.heartbeat_secs * 2 > c.name_ttl_secs.min(c.presence_ttl_secs) {
        return Err(invalid(
            "cluster.heartbeat_secs",
            "must be at least 1 and at most half of name_ttl_secs and presence_ttl_secs",
        ));
    }
    within("cluster.op_timeout_ms", c.op_timeout_ms, 1..=60_000)?;
    at_least("cluster.history_size", c.history_size, 1)?;
    if c.key_prefix.is_empty() || c.key_prefix.contains(|ch: char| ch.is_whitespace()) {
        return Err(invalid(
            "cluster.key_prefix",
            "must be a word without spaces (it starts every Redis key)",
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, SecretUrl};

    /// The key a check refuses, or `None` when it passes.
    fn refused(result: Checked) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            Err(e) => panic!("not an invalid value: {e}"),
        }
    }

    #[test]
    fn the_defaults_pass_every_section() {
        Config::default()
            .validate()
            .expect("the defaults are valid");
    }

    #[test]
    fn server() {
        let ok = ServerConfig::default();
        let case = |f: fn(&mut ServerConfig)| {
            let mut s = ok.clone();
            f(&mut s);
            refused(super::server(&s))
        };
        assert_eq!(case(|s| s.host = "localhost".into()), Some("server.host"));
        assert_eq!(case(|s| s.workers = 0), Some("server.workers"));
        assert_eq!(
            case(|s| s.handshake_timeout_secs = 0.0),
            Some("server.handshake_timeout_secs")
        );
        assert_eq!(
            case(|s| s.ping_interval_secs = 0.0),
            None,
            "0 turns pings off"
        );
        assert_eq!(
            case(|s| s.write_timeout_secs = f64::NAN),
            Some("server.write_timeout_secs")
        );
        assert_eq!(
            case(|s| s.allowed_origins = vec!["https://chat.example/path".into()]),
            Some("server.allowed_origins")
        );
        assert_eq!(
            case(|s| s.allowed_origins = vec!["https://chat.example:8443".into()]),
            None
        );
        assert_eq!(
            case(|s| s.trusted_proxies = vec!["10.0.0.0/33".into()]),
            Some("server.trusted_proxies")
        );
        assert_eq!(
            case(|s| s.proxy_protocol = true),
            Some("server.proxy_protocol")
        );
        assert_eq!(
            case(|s| {
                s.connect_rate_per_ip = 5.0;
                s.connect_burst_per_ip = 0;
            }),
            Some("server.connect_burst_per_ip")
        );
    }

    #[test]
    fn limits() {
        let case = |f: fn(&mut LimitsConfig)| {
            let mut l = LimitsConfig::default();
            f(&mut l);
            refused(super::limits(&l))
        };
        assert_eq!(
            case(|l| l.max_message_bytes = 255),
            Some("limits.max_message_bytes")
        );
        assert_eq!(case(|l| l.rate_per_sec = -1.0), Some("limits.rate_per_sec"));
        assert_eq!(case(|l| l.rate_per_sec = 0.0), None, "0 is no limit");
        assert_eq!(case(|l| l.rate_burst = 0), Some("limits.rate_burst"));
        assert_eq!(
            case(|l| {
                l.rate_per_sec = 0.0;
                l.rate_burst = 0;
            }),
            None,
            "no burst needed without a rate"
        );
        assert_eq!(
            case(|l| l.outbound_queue_bytes = l.max_message_bytes),
            Some("limits.outbound_queue_bytes")
        );
        assert_eq!(
            case(|l| l.presence_batch_ms = 5),
            Some("limits.presence_batch_ms")
        );
        assert_eq!(
            case(|l| l.read_buffer_bytes = 8),
            Some("limits.read_buffer_bytes")
        );
    }

    #[test]
    fn tls_and_diagnostics() {
        let mut t = TlsConfig {
            cert: "cert.pem".into(),
            ..TlsConfig::default()
        };
        assert_eq!(refused(super::tls(&t)), Some("tls.key"));
        t.key = "key.pem".into();
        t.listen = "8443".into();
        assert_eq!(refused(super::tls(&t)), Some("tls.listen"));
        t.listen = "0.0.0.0:8443".into();
        assert_eq!(refused(super::tls(&t)), None);
        let d = DiagnosticsConfig {
            echo_path: "echo".into(),
        };
        assert_eq!(refused(diagnostics(&d)), Some("diagnostics.echo_path"));
    }

    #[test]
    fn auth_admin_and_history() {
        let token = AuthConfig {
            mode: AuthMode::Token,
            ..AuthConfig::default()
        };
        assert_eq!(refused(super::auth(&token)), Some("auth.secret"));
        let short = AuthConfig {
            secret: Secret::new("too short"),
            ..token.clone()
        };
        assert_eq!(refused(super::auth(&short)), Some("auth.secret"));
        let both = AuthConfig {
            secret: Secret::new("x".repeat(MIN_SECRET_BYTES)),
            secret_file: "/run/secret".into(),
            ..token.clone()
        };
        assert_eq!(refused(super::auth(&both)), Some("auth.secret_file"));
        let ttl = AuthConfig {
            secret_file: "/run/secret".into(),
            max_ttl: "3 weeks".into(),
            ..token
        };
        assert_eq!(refused(super::auth(&ttl)), Some("auth.max_ttl"));
        let mut c = Config::default();
        c.auth.mode = AuthMode::Accounts;
        c.storage.path = String::new();
        assert_eq!(refused(accounts(&c)), Some("auth.mode"));
        c.storage.path = "chat.db".into();
        assert_eq!(refused(accounts(&c)), None);
        c.cluster.redis_url = crate::config::SecretUrl::new("redis://127.0.0.1:6379");
        assert_eq!(
            refused(accounts(&c)),
            Some("auth.mode"),
            "a cluster needs PostgreSQL"
        );
        c.storage.url = crate::config::SecretUrl::new("postgres://db/chatd");
        assert_eq!(refused(accounts(&c)), None);
        c.auth.argon2_memory_kib = 8;
        assert_eq!(refused(accounts(&c)), Some("auth.argon2_memory_kib"));
        let a = AdminConfig {
            listen: "localhost:8002".into(),
        };
        assert_eq!(refused(admin(&a)), Some("admin.listen"));
        let h = HistoryConfig {
            on_join: 10,
            size: 5,
            ..HistoryConfig::default()
        };
        assert_eq!(refused(super::history(&h)), Some("history.on_join"));
    }

    #[test]
    fn storage_and_log() {
        let l = LimitsConfig::default();
        let st = StorageConfig {
            queue_bytes: l.max_message_bytes,
            ..StorageConfig::default()
        };
        assert_eq!(refused(storage(&st, &l)), Some("storage.queue_bytes"));
        let mut st = StorageConfig {
            search_budget_ms: 0,
            ..StorageConfig::default()
        };
        assert_eq!(refused(storage(&st, &l)), Some("storage.search_budget_ms"));
        st.search_budget_ms = 250;
        st.url = crate::config::SecretUrl::new("mysql://db/chatd");
        assert_eq!(refused(storage(&st, &l)), Some("storage.url"));
        st.url = crate::config::SecretUrl::new("postgres://chatd:pw@db:5432/chatd");
        assert_eq!(refused(storage(&st, &l)), None);
        let lg = LogConfig {
            level: "infoo".into(),
            ..LogConfig::default()
        };
        assert_eq!(refused(super::log(&lg)), Some("log.level"));
        assert_eq!(check_log_filter("chatd=debug,warn"), Ok(()));
        assert!(check_log_filter("=debug").is_err());
    }

    #[test]
    fn cluster_rules_bind_only_a_cluster() {
        let l = LimitsConfig {
            max_message_bytes: 20_000_000,
            ..LimitsConfig::default()
        };
        let single = ClusterConfig::default();
        assert_eq!(refused(cluster(&single, &l)), None);
        let c = ClusterConfig {
            redis_url: SecretUrl::new("redis://127.0.0.1/0"),
            ..ClusterConfig::default()
        };
        assert_eq!(refused(cluster(&c, &l)), Some("cluster.history_bytes"));
        let c = ClusterConfig {
            redis_url: SecretUrl::new("http://redis"),
            ..ClusterConfig::default()
        };
        assert_eq!(
            refused(cluster(&c, &LimitsConfig::default())),
            Some("cluster.redis_url")
        );
        let c = ClusterConfig {
            key_prefix: "two words".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(
            refused(cluster(&c, &LimitsConfig::default())),
            Some("cluster.key_prefix")
        );
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("200000d").is_err());
        assert!(parse_ttl("5w").is_err());
    }
}
