//! Every Prometheus metric chatd exports, defined in one place with bounded label sets (never a user
//! or room name as a label). One [`Metrics`] per server, with its own registry, so tests running
//! several servers in one process never mix their counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connections open now (upgraded or upgrading).
    pub connections_open: IntGauge,
    /// The total connection cap in force (0 = none).
    pub connections_limit: IntGauge,
    /// When the TLS certificate in use expires (Unix seconds; 0 without TLS).
    pub tls_certificate_expiry: IntGauge,
    /// Connections accepted (given a slot).
    pub connections_accepted: IntCounter,
    /// Connections ended, by reason.
    pub connections_closed: IntCounterVec,
    /// Connections refused at the limits, by reason (`capacity`, `per_ip`).
    pub connections_refused: IntCounterVec,
    /// Failed WebSocket upgrades, by reason (`timeout`, `invalid`).
    pub handshake_failures: IntCounterVec,
    /// Plain HTTP requests on the chat port answered by the web client, by status.
    pub web_responses: IntCounterVec,
    /// TLS handshakes by result; stays 0 while TLS is not configured.
    pub tls_handshakes: IntCounterVec,
    /// Frames received from clients, by request type.
    pub messages_received: IntCounterVec,
    /// Chat frames (messages, PMs, notices) queued to recipients.
    pub messages_delivered: IntCounter,
    /// Presence and typing frames queued to recipients, by class.
    pub events_delivered: IntCounterVec,
    /// Text payload bytes received.
    pub bytes_received: IntCounter,
    /// Text payload bytes sent.
    pub bytes_sent: IntCounter,
    /// Recipients per room message.
    pub fanout_recipients: Histogram,
    /// Frames dropped for lagging clients, by class (`presence`, `typing`).
    pub deliveries_dropped: IntCounterVec,
    /// Clients disconnected as slow consumers.
    pub slow_consumer_disconnects: IntCounter,
    /// Requests refused by rate limits, by kind (`request`, `typing`).
    pub rate_limited: IntCounterVec,
    /// Sign-ins and registrations in accounts mode, by result.
    pub sign_ins: IntCounterVec,
    /// Rooms that exist now.
    pub rooms: IntGauge,
    /// Users online now.
    pub users_online: IntGauge,
    /// Bytes of chat history kept in memory, in all rooms.
    pub history_bytes: IntGauge,
    /// Commits to the database that failed.
    pub storage_errors: IntCounter,
    /// Messages refused because the writer was too far behind.
    pub storage_rejected: IntCounter,
    /// Writes waiting for the writer.
    pub storage_queued: IntGauge,
    /// How long the oldest uncommitted message has waited (at the last `/readyz` or scrape).
    pub storage_lag_seconds: prometheus::Gauge,
    /// Stored messages not yet in the search index.
    pub search_unindexed: IntGauge,
    /// Time to handle one received frame.
    pub handling_seconds: Histogram,
    /// Cluster: 1 while this node reaches Redis (always 0 on a single node).
    pub redis_up: IntGauge,
    /// Cluster: Redis round trips by operation.
    pub redis_op_seconds: HistogramVec,
    /// Cluster: time from a node's publish to this node's receipt.
    pub pubsub_lag_seconds: Histogram,
    /// Cluster: room messages pub/sub lost and this node filled in from the room's stream.
    pub gaps_repaired: IntCounter,
    /// Cluster: `resync` events sent (messages lost beyond what the stream holds, or a new epoch).
    pub resyncs: IntCounter,
    /// Cluster: members of dead nodes this node removed (each announced once).
    pub ghosts_reaped: IntCounter,
    /// Cluster: times this node lost its Redis subscription and made it again.
    pub resubscribes: IntCounter,
    /// Cluster: Redis operations that failed or ran past their deadline, by operation.
    pub redis_failures: IntCounterVec,
    /// Cluster: envelopes from Redis dropped, by reason (`malformed`: too large or not one;
    /// `implausible`: numbered past what Redis holds for the room).
    pub envelopes_dropped: IntCounterVec,
    /// HTTP API requests, by route (a fixed set) and status code.
    pub api_requests: IntCounterVec,
    /// HTTP API requests' time to answer.
    pub api_seconds: Histogram,
    /// Outgoing webhooks' events, by endpoint and result (`delivered`, `failed`: refused by the
    /// endpoint or retried past the window, `dropped`: pushed out of a full queue or left at
    /// shutdown).
    pub webhook_events: IntCounterVec,
    /// Outgoing webhooks' requests, by endpoint and status (`2xx`, `4xx`, `5xx`, `timeout`,
    /// `error`).
    pub webhook_requests: IntCounterVec,
    /// Outgoing webhooks' time to answer one delivery, by endpoint.
    pub webhook_seconds: prometheus::HistogramVec,
    /// Bytes of events waiting per endpoint.
    pub webhook_queue_bytes: IntGaugeVec,
    /// `messages_received` for each known type, resolved once (it is counted per frame).
    received_by_type: Vec<(&'static str, IntCounter)>,
}

/// Label values of `chatd_messages_received_total`: request types, then the other kinds of frame.
/// Other than requests: plain-text lines, frames that are not a valid request, binary frames.
const RECEIVED_OTHER: [&str; 3] = ["plain", "invalid", "binary"];
/// `chatd_sign_ins_total`'s results.
pub const SIGN_IN_RESULTS: [&str; 6] = [
    "ok",
    "registered",
    "unauthorized",
    "refused",
    "rate_limited",
    "unavailable",
];

impl Metrics {
    /// Registers every metric (and the process collector) in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let metrics = Metrics {
            connections_open: gauge("chatd_connections_open", "WebSocket connections open now."),
            tls_certificate_expiry: gauge(
                "chatd_tls_certificate_expiry_timestamp_seconds",
                "When the TLS certificate in use expires, in Unix seconds (0 without TLS); updated on SIGHUP.",
            ),
            connections_limit: gauge(
                "chatd_connections_limit",
                "Connections allowed in all (server.max_connections, lowered to what the descriptor limit allows); 0 = no limit.",
            ),
            connections_accepted: counter(
                "chatd_connections_accepted_total",
                "TCP connections accepted.",
            ),
            connections_closed: counter_vec(
                "chatd_connections_closed_total",
                "Connections ended, by reason.",
                &["reason"],
            ),
            connections_refused: counter_vec(
                "chatd_connections_refused_total",
                "Connections refused at the connection limits (HTTP 503, or 429 for `rate`), by reason.",
                &["reason"],
            ),
            web_responses: counter_vec(
                "chatd_web_responses_total",
                "Plain HTTP requests on the chat port (the browser client at /), by status.",
                &["status"],
            ),
            handshake_failures: counter_vec(
                "chatd_handshake_failures_total",
                "WebSocket upgrades that failed, by reason.",
                &["reason"],
            ),
            tls_handshakes: counter_vec(
                "chatd_tls_handshakes_total",
                "TLS handshakes, by result (0 while TLS is not configured).",
                &["result"],
            ),
            messages_received: counter_vec(
                "chatd_messages_received_total",
                "Frames received from clients, by request type.",
                &["type"],
            ),
            messages_delivered: counter(
                "chatd_messages_delivered_total",
                "Chat messages, private messages and notices queued to recipients.",
            ),
            events_delivered: counter_vec(
                "chatd_events_delivered_total",
                "Presence and typing events queued to recipients, by class.",
                &["class"],
            ),
            bytes_received: counter(
                "chatd_received_bytes_total",
                "Text payload bytes received from clients.",
            ),
            bytes_sent: counter(
                "chatd_sent_bytes_total",
                "Bytes written to client sockets after the upgrade (frames, headers included).",
            ),
            fanout_recipients: histogram(
                "chatd_fanout_recipients",
                "Recipients of each room message.",
                vec![
                    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                    5000.0, 10000.0,
                ],
            ),
            deliveries_dropped: counter_vec(
                "chatd_deliveries_dropped_total",
                "Frames dropped for clients whose outbound queue was half full, by class.",
                &["class"],
            ),
            slow_consumer_disconnects: counter(
                "chatd_slow_consumer_disconnects_total",
                "Clients disconnected because they did not keep up with their deliveries.",
            ),
            rate_limited: counter_vec(
                "chatd_rate_limited_total",
                "Requests refused by rate limits, by kind.",
                &["kind"],
            ),
            sign_ins: counter_vec(
                "chatd_sign_ins_total",
                "Sign-ins and registrations (accounts mode), by result.",
                &["result"],
            ),
            rooms: gauge("chatd_rooms", "Rooms that exist now."),
            users_online: gauge(
                "chatd_users_online",
                "Users online now (welcomed connections).",
            ),
            history_bytes: gauge(
                "chatd_history_bytes",
                "Bytes of chat history kept in memory, in all rooms.",
            ),
            storage_errors: counter(
                "chatd_storage_errors_total",
                "Database commits that failed (disk full, I/O error); retried until they succeed.",
            ),
            storage_rejected: counter(
                "chatd_storage_rejected_total",
                "Messages refused with `unavailable` because the database writer was too far behind.",
            ),
            storage_lag_seconds: {
                let g = prometheus::Gauge::new(
                    "chatd_storage_lag_seconds",
                    "How long the oldest message not yet on disk has waited (updated by /readyz).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            storage_queued: gauge(
                "chatd_storage_queued",
                "Writes waiting for the database writer.",
            ),
            search_unindexed: gauge(
                "chatd_search_unindexed",
                "Stored messages the search index has not caught up with yet.",
            ),
            api_requests: counter_vec(
                "chatd_api_requests_total",
                "HTTP API requests, by route and status code.",
                &["route", "status"],
            ),
            api_seconds: histogram(
                "chatd_api_request_seconds",
                "Time to answer an HTTP API request.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
                ],
            ),
            webhook_events: counter_vec(
                "chatd_webhook_events_total",
                "Outgoing webhook events, by endpoint and result (delivered, failed, dropped).",
                &["endpoint", "result"],
            ),
            webhook_requests: counter_vec(
                "chatd_webhook_requests_total",
                "Outgoing webhook deliveries attempted, by endpoint and status (2xx, 4xx, 5xx, timeout, error).",
                &["endpoint", "status"],
            ),
            webhook_seconds: {
                let m = prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "chatd_webhook_request_seconds",
                        "Time for a webhook endpoint to answer one delivery.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                    &["endpoint"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            },
            webhook_queue_bytes: {
                let m = IntGaugeVec::new(
                    Opts::new(
                        "chatd_webhook_queue_bytes",
                        "Bytes of webhook events waiting, by endpoint.",
                    ),
                    &["endpoint"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            },
            handling_seconds: histogram(
                "chatd_message_handling_seconds",
                "Time to handle one received frame, fan-out included.",
                vec![
                    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.05,
                ],
            ),
            redis_up: gauge(
                "chatd_redis_up",
                "1 while this cluster node reaches Redis; 0 when it does not, or on a single node.",
            ),
            redis_op_seconds: {
                let m = HistogramVec::new(
                    HistogramOpts::new(
                        "chatd_redis_op_seconds",
                        "Redis round trips of a cluster node, by operation.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
                    ]),
                    &["op"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            },
            pubsub_lag_seconds: histogram(
                "chatd_pubsub_lag_seconds",
                "Time from a cluster node's publish to this node's receipt (clocks of both nodes).",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ],
            ),
            gaps_repaired: counter(
                "chatd_gaps_repaired_total",
                "Room messages pub/sub lost that this node filled in from the room's stream.",
            ),
            resyncs: counter(
                "chatd_resyncs_total",
                "resync events sent: messages lost beyond the stream, or Redis restarted empty.",
            ),
            ghosts_reaped: counter(
                "chatd_ghosts_reaped_total",
                "Members of unresponsive nodes this node removed from rooms (each announced once).",
            ),
            resubscribes: counter(
                "chatd_redis_resubscribes_total",
                "Times this cluster node lost its Redis subscription (and made it again).",
            ),
            redis_failures: counter_vec(
                "chatd_redis_failures_total",
                "Redis operations of this cluster node that failed or ran past their deadline, by operation (heartbeat, presence, say, join, ...).",
                &["op"],
            ),
            envelopes_dropped: counter_vec(
                "chatd_cluster_envelopes_dropped_total",
                "Envelopes from Redis this node dropped: malformed (too large, not one) or implausible (numbered past what Redis holds).",
                &["reason"],
            ),
            received_by_type: Vec::new(),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "chatd_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics
            .registry
            .register(Box::new(build))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        {
            let _ = metrics.registry.register(Box::new(process::Process::new()));
        }
        let mut metrics = metrics;
        metrics.received_by_type = crate::protocol::ClientMsg::KINDS
            .iter()
            .chain(&RECEIVED_OTHER)
            .map(|&t| (t, metrics.messages_received.with_label_values(&[t])))
            .collect();
        for reason in crate::protocol::CloseReason::LABELS {
            metrics.connections_closed.with_label_values(&[reason]);
        }
        // Pre-create the common label values so they show as 0 before anything happens.
        for reason in ["capacity", "per_ip", "rate", "fds"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        for class in ["presence", "typing"] {
            metrics.events_delivered.with_label_values(&[class]);
            metrics.deliveries_dropped.with_label_values(&[class]);
        }
        for kind in ["request", "typing", "ping"] {
            metrics.rate_limited.with_label_values(&[kind]);
        }
        for result in SIGN_IN_RESULTS {
            metrics.sign_ins.with_label_values(&[result]);
        }
        for reason in HANDSHAKE_FAILURES {
            metrics.handshake_failures.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            metrics.tls_handshakes.with_label_values(&[result]);
        }
        for reason in ["malformed", "implausible"] {
            metrics.envelopes_dropped.with_label_values(&[reason]);
        }
        for status in ["200", "304", "404", "405"] {
            metrics.web_responses.with_label_values(&[status]);
        }
        metrics
    }

    /// The `chatd_messages_received_total` counter for a frame of this type.
    pub fn received(&self, kind: &str) -> &IntCounter {
        let find = |kind: &str| self.received_by_type.iter().find(|(t, _)| *t == kind);
        // Every request type is in the table (`ClientMsg::KINDS`); anything else is "invalid".
        match find(kind).or_else(|| find("invalid")) {
            Some((_, counter)) => counter,
            None => unreachable!("\"invalid\" is always in the table"),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Every `reason` of `chatd_handshake_failures_total` (see `connection::handshake`).
pub const HANDSHAKE_FAILURES: [&str; 8] = [
    "invalid",
    "too_large",
    "timeout",
    "garbage",
    "not_upgrade",
    "origin",
    "tls",
    "proxy",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The process metrics (`process_*`): the prometheus crate's collector, except that
/// `process_cpu_seconds_total` is exact to the clock tick (the crate's counts whole seconds, so a
/// rate over a minute of light load read 0 or 1).
#[cfg(target_os = "linux")]
mod process {
    use prometheus::core::{Collector, Desc};
    use prometheus::proto::MetricFamily;
    use prometheus::{Counter, Opts};

    const CPU: &str = "process_cpu_seconds_total";

    pub(super) struct Process {
        inner: prometheus::process_collector::ProcessCollector,
        cpu: Counter,
        descs: Vec<Desc>,
    }

    impl Process {
        pub(super) fn new() -> Process {
            let inner = prometheus::process_collector::ProcessCollector::for_self();
            let cpu = Counter::with_opts(Opts::new(
                CPU,
                "Total user and system CPU time spent in seconds.",
            ))
            .expect("valid metric");
            let mut descs: Vec<Desc> = inner
                .desc()
                .into_iter()
                .filter(|d| d.fq_name != CPU)
                .cloned()
                .collect();
            descs.extend(cpu.desc().into_iter().cloned());
            Process { inner, cpu, descs }
        }
    }

    /// User plus system time of this process, from /proc/self/stat (in clock ticks there).
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces): state is the 3rd field, utime
        // and stime the 14th and 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ').skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        Some((utime + stime) as f64 / ticks as f64)
    }

    impl Collector for Process {
        fn desc(&self) -> Vec<&Desc> {
            self.descs.iter().collect()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let mut families: Vec<MetricFamily> = self
                .inner
                .collect()
                .into_iter()
                .filter(|f| f.name() != CPU)
                .collect();
            if let Some(now) = cpu_seconds() {
                let past = self.cpu.get();
                if now > past {
                    self.cpu.inc_by(now - past);
                }
            }
            families.extend(self.cpu.collect());
            families
        }
    }
}
