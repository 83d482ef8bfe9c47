//! `chatctl bench`: a load generator, like `redis-benchmark` for Redis.
//!
//! N clients connect (and say hello, or with `raw` just send a name line, so any broadcast server can
//! be measured with the same tool). S of them send M messages each; every message carries its sender,
//! a sequence number and a send timestamp, and every receiver checks order and loss and records the
//! end-to-end latency. Senders keep `inflight` messages outstanding (a message counts as done once
//! every other member of its room has it), or send at a fixed `rate`.
//!
//! Each client is one task owning its socket. Latencies go to one HDR histogram in batches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;

mod report;
#[cfg(test)]
mod tests;
mod wire;

use wire::*;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Server URLs: client `i` connects to `urls[i % urls.len()]` (the nodes of one service).
    pub urls: Vec<String>,
    /// TLS client configuration for `wss://` URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections.
    pub clients: usize,
    /// How many of them send.
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Message text size in bytes (at least the header).
    pub size: usize,
    /// Fixed send rate per sender (messages/s); `None` uses `inflight`.
    pub rate: Option<f64>,
    /// Messages each sender keeps outstanding (see `credit`).
    pub inflight: usize,
    /// When a message stops counting as outstanding.
    pub credit: Credit,
    /// Rooms the clients are spread over (round robin).
    pub rooms: usize,
    /// Plain text frames instead of the chatd protocol.
    pub raw: bool,
    /// With `raw`, send a name line first (chatd's plain-text sessions need one; other broadcast
    /// servers would relay it to everyone).
    pub name_line: bool,
    /// With `raw`: speak Socket.IO 4 (Engine.IO over WebSocket), events `42["m", text]`.
    pub socketio: bool,
    /// Server process to sample RSS and CPU from.
    pub pid: Option<u32>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Connections opened concurrently during the connect phase.
    pub connect_concurrency: usize,
    /// Keep sending until the server closes every connection (a shutdown test): report close
    /// codes and whether every acknowledged message reached every other member.
    pub until_close: bool,
    /// Print a line (and keep a record) every this often during the send phase.
    pub report_every: Option<Duration>,
    /// Token mode: each hello carries a token minted from this secret.
    pub secret: Option<crate::config::Secret>,
    /// Consecutive clients that are one user (with tokens).
    pub sessions_per_user: usize,
    /// Connect from this many loopback addresses (127.1.0.0 on), each with its own ephemeral
    /// ports; 0: let the system choose.
    pub sources: u32,
    /// Hold connections cheaply: 256-byte read buffers, no write batching.
    pub lean: bool,
}

/// `chatctl bench`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Send at this rate per sender (messages/s) instead of waiting for deliveries.
    #[arg(long, conflicts_with = "inflight")]
    pub rate: Option<f64>,
    /// Messages each sender keeps in flight (see --credit).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// A message stops counting as in flight once every receiver has it, or once acknowledged.
    #[arg(long, value_enum, default_value = "delivered")]
    pub credit: Credit,
    /// Rooms the clients are spread over.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
    /// Plain text frames (any broadcast server) instead of the chatd protocol.
    #[arg(long)]
    pub raw: bool,
    /// With --raw, send a name line first (what chatd's plain-text sessions expect).
    #[arg(long, requires = "raw")]
    pub name_line: bool,
    /// Speak Socket.IO 4 (Engine.IO over WebSocket, event `m`) instead: raw mode for the
    /// Socket.IO peer (`../shared/peers/socketio-redis`).
    #[arg(long, conflicts_with_all = ["raw", "until_close"])]
    pub socketio: bool,
    /// Another URL of the same service (a second node): clients are spread round-robin over
    /// --url and every --node.
    #[arg(long = "node", value_name = "URL")]
    pub nodes: Vec<String>,
    /// Server process id: report its RSS (idle and per connection) and CPU.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Runtime threads for the load generator (1 = single-threaded).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep going until the server closes every connection (shutdown under load): report close
    /// codes and whether every acknowledged message reached every member. Exit 1 otherwise.
    #[arg(long, conflicts_with = "raw")]
    pub until_close: bool,
    /// During the send phase, print deliveries, p99 and server RSS/fds every this many seconds.
    #[arg(long, value_name = "SECS")]
    pub report_every: Option<f64>,
    /// Token mode: sign each hello with a token minted from the secret in this file.
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    pub secret_file: Option<std::path::PathBuf>,
    /// With --secret-file, this many clients in a row are one user (several connections each).
    #[arg(long, default_value_t = 1, requires = "secret_file")]
    pub sessions_per_user: usize,
    /// Connect from N loopback source addresses (127.1.0.0 and on; the server must be on
    /// loopback): each has its own ~28,000 ephemeral ports, so more connections than one
    /// address allows.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub sources: u32,
    /// Hold many idle connections cheaply (256-byte read buffers, no write batching).
    #[arg(long)]
    pub lean: bool,
}

impl BenchArgs {
    /// What to run against `url` (and the `--node`s).
    pub fn options(self, url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> BenchOptions {
        let mut urls = vec![url.to_string()];
        urls.extend(self.nodes);
        BenchOptions {
            urls,
            tls,
            clients: self.clients,
            senders: self.senders,
            messages: self.messages,
            size: self.size,
            rate: self.rate,
            inflight: self.inflight,
            credit: self.credit,
            rooms: self.rooms,
            raw: self.raw || self.socketio,
            name_line: self.name_line,
            socketio: self.socketio,
            pid: self.pid,
            timeout: Duration::from_secs_f64(self.duration),
            connect_concurrency: 64,
            until_close: self.until_close,
            secret: self.secret_file.map(|f| {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                crate::config::Secret::new(text.trim_end_matches(['\r', '\n']))
            }),
            sessions_per_user: self.sessions_per_user.max(1),
            sources: self.sources,
            lean: self.lean,
            report_every: self
                .report_every
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64),
        }
    }
}

/// When a sender's message stops counting against `inflight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Credit {
    /// Once every other member of the room has it (any server).
    Delivered,
    /// Once the server acknowledges it (chatd's protocol): what a client pacing itself on acks
    /// does, so the server alone decides how far ahead of the fan-out a sender may run.
    Ack,
}

/// Counts `n` deliveries as settled (received, or refused and never coming); the one that settles
/// the last wakes the run.
fn settle(run: &Run, n: u64, batch: &mut Vec<u64>) {
    let before = run.settled.fetch_add(n, Ordering::AcqRel);
    if before < run.expected && before + n >= run.expected {
        flush(run, batch);
        run.all_received.notify_one();
    }
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Connections made.
    pub clients: usize,
    /// Senders.
    pub senders: usize,
    /// Rooms.
    pub rooms: usize,
    /// Seconds to connect (and hello) every client.
    pub connect_secs: f64,
    /// Connections (with hello) per second.
    pub handshakes_per_sec: f64,
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Messages that arrived out of order or with gaps (a refused message leaves a gap).
    pub out_of_order: u64,
    /// Messages the server refused (an error reply to the `say`, such as `unavailable` when its
    /// storage cannot keep up): never delivered, and not waited for.
    pub refused: u64,
    /// The deliveries those refused messages would have made.
    pub refused_deliveries: u64,
    /// Seconds from the first send to the last delivery.
    pub send_secs: f64,
    /// Deliveries per second over the send phase.
    pub deliveries_per_sec: f64,
    /// End-to-end latency percentiles in microseconds.
    pub latency_us: Latency,
    /// Server resource use, with `--pid`.
    pub server: Option<ServerUsage>,
    /// With `until_close`: how the connections ended and what happened to acknowledged messages.
    pub shutdown: Option<ShutdownCheck>,
    /// Per-interval figures, with `report_every`.
    pub intervals: Vec<IntervalReport>,
}

/// One reporting interval of a long run.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalReport {
    /// Seconds since the send phase began, at the end of the interval.
    pub at_secs: f64,
    /// Deliveries during the interval.
    pub deliveries: u64,
    /// End-to-end p99 latency of the deliveries recorded in the interval (µs).
    pub p99_us: u64,
    /// Server RSS at the end of the interval (KiB), with `--pid`.
    pub rss_kib: Option<u64>,
    /// Server open file descriptors at the end of the interval, with `--pid`.
    pub fds: Option<usize>,
}

/// What a shutdown under load looked like from the clients.
#[derive(Debug, Clone, Serialize)]
pub struct ShutdownCheck {
    /// Clients that received a close frame with code 1001.
    pub closed_1001: usize,
    /// Clients that received another close code.
    pub closed_other: usize,
    /// Clients whose connection ended without a close frame.
    pub dropped: usize,
    /// Messages the server acknowledged before closing.
    pub acked: u64,
    /// Acknowledged messages that did not reach every other member of the room.
    pub acked_not_delivered: u64,
}

/// Latency percentiles (µs).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
}

/// Server process figures from /proc.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// RSS before any client connected (KiB).
    pub rss_before_kib: u64,
    /// RSS once every client had connected (KiB).
    pub rss_connected_kib: u64,
    /// RSS growth per connection while idle (KiB).
    pub rss_per_connection_kib: f64,
    /// RSS at the end (KiB).
    pub rss_end_kib: u64,
    /// CPU seconds used during the send phase.
    pub cpu_secs: f64,
    /// CPU microseconds per delivery.
    pub cpu_us_per_delivery: f64,
}

/// Shared between client tasks.
struct Run {
    start: Instant,
    raw: bool,
    senders: Vec<SenderState>,
    received: AtomicU64,
    expected: u64,
    out_of_order: AtomicU64,
    /// Messages refused, and deliveries received or never coming (refused): the run ends when
    /// this reaches `expected`.
    refused: AtomicU64,
    settled: AtomicU64,
    all_received: Notify,
    go: tokio::sync::watch::Receiver<bool>,
    latencies: Mutex<Histogram<u64>>,
    /// Latencies since the last interval report.
    recent: Mutex<Histogram<u64>>,
    last_delivery_us: AtomicU64,
    connected: AtomicUsize,
    intervals: Mutex<Vec<IntervalReport>>,
    /// Acks received per sender (the k-th ack answers the k-th message).
    acks: Vec<AtomicU64>,
    /// Deliveries per (sender, seq), for `until_close`.
    per_message: Vec<std::sync::atomic::AtomicU32>,
    closed_1001: AtomicUsize,
    closed_other: AtomicUsize,
    dropped: AtomicUsize,
    /// Raw clients that saw a chatd plain-text `Welcome` line (peers send none).
    welcomed: AtomicUsize,
}

struct SenderState {
    delivered: AtomicU64,
    /// Deliveries at which the sender wants waking.
    want: AtomicU64,
    wake: Notify,
    recipients: u64,
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.clients >= 2, "--clients must be at least 2");
    anyhow::ensure!(
        opts.senders >= 1 && opts.senders <= opts.clients,
        "--senders must be 1..=clients"
    );
    anyhow::ensure!(
        opts.rooms >= 1 && opts.rooms <= opts.clients,
        "--rooms must be 1..=clients"
    );
    // Each client is a descriptor: the soft limit goes up to the hard one, for this process only.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    anyhow::ensure!(opts.inflight >= 1, "--inflight must be at least 1");
    anyhow::ensure!(
        opts.credit == Credit::Delivered || !opts.raw,
        "--credit ack needs the chatd protocol (raw servers send no acks)"
    );
    let rooms = opts.rooms;
    let members = |room: usize| (opts.clients - room).div_ceil(rooms) as u64;
    let senders: Vec<SenderState> = (0..opts.senders)
        .map(|s| SenderState {
            delivered: AtomicU64::new(0),
            want: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            recipients: members(s % rooms) - 1,
        })
        .collect();
    let expected = senders
        .iter()
        .map(|s| s.recipients * opts.messages as u64)
        .sum();
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let run = Arc::new(Run {
        start: Instant::now(),
        raw: opts.raw,
        senders,
        received: AtomicU64::new(0),
        expected,
        out_of_order: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        all_received: Notify::new(),
        go,
        latencies: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        recent: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        last_delivery_us: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        intervals: Mutex::new(Vec::new()),
        acks: (0..opts.senders).map(|_| AtomicU64::new(0)).collect(),
        per_message: if opts.until_close {
            (0..opts.senders * opts.messages)
                .map(|_| Default::default())
                .collect()
        } else {
            Vec::new()
        },
        closed_1001: AtomicUsize::new(0),
        closed_other: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        welcomed: AtomicUsize::new(0),
    });

    let rss_before = opts.pid.and_then(rss_kib);
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let all_connected = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.clients {
        let (run, opts, gate, all_connected) = (
            run.clone(),
            opts.clone(),
            gate.clone(),
            all_connected.clone(),
        );
        tasks.spawn(async move { client(i, run, opts, gate, all_connected).await });
    }
    let deadline = tokio::time::Instant::now() + opts.timeout;
    // Wait for every connection (or the first failure).
    loop {
        if run.connected.load(Ordering::Acquire) == opts.clients {
            break;
        }
        tokio::select! {
            _ = all_connected.notified() => {}
            done = tasks.join_next() => {
                if let Some(res) = done {
                    res??;
                    anyhow::bail!("a client ended during the connect phase");
                }
            }
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("connect phase timed out"),
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    if opts.raw && opts.name_line {
        // A raw client's name line may still be in flight: chatd answers each with a `Welcome`
        // line, other servers with nothing, so wait for all of them but at most 500 ms.
        let settle = tokio::time::Instant::now() + Duration::from_millis(500);
        while run.welcomed.load(Ordering::Acquire) < opts.clients
            && tokio::time::Instant::now() < settle
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rss_connected = opts.pid.and_then(rss_kib);
    let cpu_before = opts.pid.and_then(cpu_secs);
    let send_started_us = run.start.elapsed().as_micros() as u64;
    go_tx.send_replace(true);
    let reporter = opts
        .report_every
        .map(|every| tokio::spawn(report_intervals(run.clone(), every, opts.pid)));
    if opts.until_close {
        // Run until the server has closed every connection (or the deadline).
        loop {
            tokio::select! {
                done = tasks.join_next() => if done.is_none() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    } else if expected > 0 {
        tokio::select! {
            _ = run.all_received.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let cpu_after = opts.pid.and_then(cpu_secs);
    let rss_end = opts.pid.and_then(rss_kib);
    tasks.abort_all();
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::debug!(error = %e, "client ended with an error");
        }
    }
    let received = run.received.load(Ordering::Acquire);
    let last = run
        .last_delivery_us
        .load(Ordering::Acquire)
        .max(send_started_us);
    let send_secs = (last - send_started_us) as f64 / 1e6;
    let hist = crate::sync::lock(&run.latencies);
    let latency_us = if hist.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            max: hist.max(),
        }
    };
    let server = match (rss_before, rss_connected, rss_end, cpu_before, cpu_after) {
        (Some(b), Some(c), Some(e), Some(c0), Some(c1)) => Some(ServerUsage {
            rss_before_kib: b,
            rss_connected_kib: c,
            rss_per_connection_kib: (c as f64 - b as f64) / opts.clients as f64,
            rss_end_kib: e,
            cpu_secs: c1 - c0,
            cpu_us_per_delivery: if received > 0 {
                (c1 - c0) * 1e6 / received as f64
            } else {
                0.0
            },
        }),
        _ => None,
    };
    Ok(BenchReport {
        clients: opts.clients,
        senders: opts.senders,
        rooms,
        connect_secs,
        handshakes_per_sec: opts.clients as f64 / connect_secs.max(1e-9),
        expected,
        received,
        out_of_order: run.out_of_order.load(Ordering::Acquire),
        refused: run.refused.load(Ordering::Acquire),
        refused_deliveries: run.settled.load(Ordering::Acquire).saturating_sub(received),
        send_secs,
        deliveries_per_sec: if send_secs > 0.0 {
            received as f64 / send_secs
        } else {
            0.0
        },
        latency_us,
        server,
        shutdown: opts.until_close.then(|| shutdown_check(&run, &opts)),
        intervals: match reporter {
            Some(task) => {
                task.abort();
                std::mem::take(&mut *crate::sync::lock(&run.intervals))
            }
            None => Vec::new(),
        },
    })
}

fn shutdown_check(run: &Run, opts: &BenchOptions) -> ShutdownCheck {
    let mut acked = 0;
    let mut acked_not_delivered = 0;
    for (s, sender) in run.senders.iter().enumerate() {
        let n = (run.acks[s].load(Ordering::Acquire) as usize).min(opts.messages);
        acked += n as u64;
        for seq in 0..n {
            let got = run.per_message[s * opts.messages + seq].load(Ordering::Acquire);
            if u64::from(got) < sender.recipients {
                acked_not_delivered += 1;
            }
        }
    }
    ShutdownCheck {
        closed_1001: run.closed_1001.load(Ordering::Acquire),
        closed_other: run.closed_other.load(Ordering::Acquire),
        dropped: run.dropped.load(Ordering::Acquire),
        acked,
        acked_not_delivered,
    }
}

/// One client: connect, hello, then read (and send, for senders) until aborted.
async fn client(
    i: usize,
    run: Arc<Run>,
    opts: BenchOptions,
    gate: Arc<Semaphore>,
    all_connected: Arc<Notify>,
) -> anyhow::Result<()> {
    let room = format!("bench{}", i % opts.rooms);
    let name = format!("b{}", i / opts.sessions_per_user.max(1));
    let mut ws = {
        let _permit = gate.acquire().await?;
        // Boxed: the handshake's state would otherwise size this task for its whole life.
        Box::pin(open(i, &opts, &name, &room)).await?
    };
    if run.connected.fetch_add(1, Ordering::AcqRel) + 1 == opts.clients {
        all_connected.notify_one();
    }
    let sender = (i < opts.senders).then_some(i);
    let mut expected_seq = vec![0u64; opts.senders];
    let mut batch: Vec<u64> = Vec::with_capacity(64);
    let mut go = run.go.clone();
    // Receive until the run starts, then send (if a sender) while receiving.
    let mut next = 0usize;
    let mut started = false;
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut next_at = tokio::time::Instant::now();
    loop {
        let can_send = started && sender.is_some() && next < opts.messages;
        let credit_ok = match (can_send, sender, opts.rate) {
            (true, Some(s), None) if opts.credit == Credit::Ack => {
                // Acks arrive on this client's own socket, below: no wake-up needed.
                let needed = (next + 1).saturating_sub(opts.inflight) as u64;
                run.acks[s].load(Ordering::Acquire) >= needed
            }
            (true, Some(s), None) => {
                let st = &run.senders[s];
                let needed = (next + 1).saturating_sub(opts.inflight) as u64 * st.recipients;
                if st.delivered.load(Ordering::Acquire) >= needed {
                    true
                } else {
                    st.want.store(needed, Ordering::Release);
                    // Re-check after publishing the want, so a wake-up cannot be missed.
                    st.delivered.load(Ordering::Acquire) >= needed
                }
            }
            (true, Some(_), Some(_)) => tokio::time::Instant::now() >= next_at,
            _ => false,
        };
        if credit_ok && let Some(s) = sender {
            let text = payload(
                s,
                next as u64,
                run.start.elapsed().as_micros() as u64,
                opts.size,
            );
            let frame = if opts.socketio {
                socketio_event(&text)
            } else if run.raw {
                text
            } else {
                say_frame(&room, &text)
            };
            ws.send(Message::text(frame)).await?;
            next += 1;
            if let Some(iv) = interval {
                next_at += iv;
            }
            continue;
        }
        let wake = async {
            match (sender, can_send, opts.rate) {
                (Some(s), true, None) if opts.credit == Credit::Delivered => {
                    run.senders[s].wake.notified().await
                }
                (Some(_), true, Some(_)) => tokio::time::sleep_until(next_at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) if opts.until_close => {
                        let code = frame.map(|f| u16::from(f.code));
                        let counter = if code == Some(1001) { &run.closed_1001 } else { &run.closed_other };
                        counter.fetch_add(1, Ordering::AcqRel);
                        flush(&run, &mut batch);
                        return Ok(());
                    }
                    None | Some(Err(_)) if opts.until_close => {
                        run.dropped.fetch_add(1, Ordering::AcqRel);
                        return Ok(());
                    }
                    Some(Ok(Message::Close(_))) | None => anyhow::bail!("server closed client {i}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                };
                if opts.socketio && text == SOCKETIO_PING {
                    ws.send(Message::text(SOCKETIO_PONG)).await?;
                    continue;
                }
                if !run.raw && sender.is_some() && text.starts_with(r#"{"type":"ack""#) {
                    run.acks[sender.unwrap_or_default()].fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                if !run.raw && started && sender.is_some() && text.starts_with(r#"{"type":"error""#) {
                    // A refused `say`: it answers the message (its credit comes back) and its
                    // deliveries will never come.
                    let s = sender.unwrap_or_default();
                    run.acks[s].fetch_add(1, Ordering::AcqRel);
                    run.refused.fetch_add(1, Ordering::AcqRel);
                    let st = &run.senders[s];
                    let d = st.delivered.fetch_add(st.recipients, Ordering::AcqRel) + st.recipients;
                    if d >= st.want.load(Ordering::Acquire) {
                        st.want.store(u64::MAX, Ordering::Release);
                        st.wake.notify_one();
                    }
                    settle(&run, st.recipients, &mut batch);
                    continue;
                }
                if run.raw && !started && text.starts_with("Welcome, ") {
                    run.welcomed.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                if let Some((s, seq, sent_us)) = parse_payload(text.as_str()) {
                    if Some(s) == sender || s >= opts.senders {
                        continue; // our own echo (some peers echo to the sender)
                    }
                    let now_us = run.start.elapsed().as_micros() as u64;
                    if seq != expected_seq[s] {
                        run.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    expected_seq[s] = seq + 1;
                    batch.push(now_us.saturating_sub(sent_us).max(1));
                    if batch.len() == batch.capacity() {
                        flush(&run, &mut batch);
                    }
                    if let Some(count) = run.per_message.get(s * opts.messages + seq as usize) {
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    let st = &run.senders[s];
                    let d = st.delivered.fetch_add(1, Ordering::AcqRel) + 1;
                    if d >= st.want.load(Ordering::Acquire) {
                        st.want.store(u64::MAX, Ordering::Release);
                        st.wake.notify_one();
                    }
                    run.last_delivery_us.fetch_max(now_us, Ordering::AcqRel);
                    run.received.fetch_add(1, Ordering::AcqRel);
                    settle(&run, 1, &mut batch);
                    // Flush stragglers when this client is likely done.
                    if expected_seq.iter().all(|&e| e as usize == opts.messages) {
                        flush(&run, &mut batch);
                    }
                }
            }
            _ = go.changed(), if !started => {
                started = *go.borrow();
                // Paced senders start staggered across one interval, so the load is even rather
                // than a burst from every sender at the same instant.
                let offset = match (interval, sender) {
                    (Some(iv), Some(s)) => iv.mul_f64(s as f64 / opts.senders as f64),
                    _ => Duration::ZERO,
                };
                next_at = tokio::time::Instant::now() + offset;
            }
            _ = wake => {}
        }
    }
}

fn flush(run: &Run, batch: &mut Vec<u64>) {
    if batch.is_empty() {
        return;
    }
    let mut h = crate::sync::lock(&run.latencies);
    let mut recent = crate::sync::lock(&run.recent);
    for v in batch.drain(..) {
        let _ = h.record(v);
        let _ = recent.record(v);
    }
}

/// Every `every`: deliveries, p99 since the last report, and the server's RSS and fds.
async fn report_intervals(run: Arc<Run>, every: Duration, pid: Option<u32>) {
    let start = tokio::time::Instant::now();
    let mut last = run.received.load(Ordering::Acquire);
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        tick.tick().await;
        let now = run.received.load(Ordering::Acquire);
        let p99_us = {
            let mut recent = crate::sync::lock(&run.recent);
            let p99 = if recent.is_empty() {
                0
            } else {
                recent.value_at_quantile(0.99)
            };
            recent.reset();
            p99
        };
        let report = IntervalReport {
            at_secs: start.elapsed().as_secs_f64(),
            deliveries: now - last,
            p99_us,
            rss_kib: pid.and_then(rss_kib),
            fds: pid.and_then(|p| {
                std::fs::read_dir(format!("/proc/{p}/fd"))
                    .ok()
                    .map(|d| d.count())
            }),
        };
        last = now;
        eprintln!(
            "[{:>6.0} s] deliveries {:>10}  p99 {:>8.2} ms  server RSS {} KiB  fds {}",
            report.at_secs,
            report.deliveries,
            report.p99_us as f64 / 1000.0,
            report.rss_kib.map_or("-".to_string(), |r| r.to_string()),
            report.fds.map_or("-".to_string(), |f| f.to_string()),
        );
        crate::sync::lock(&run.intervals).push(report);
    }
}
