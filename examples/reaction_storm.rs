//! A reaction storm: N clients in one room all react to one message at once, while a few others
//! keep chatting at a steady pace. What it costs them (the `say` round trip, p50 and p99, before
//! and during the storm), how long the storm takes to be acknowledged and delivered, what every
//! member receives (events and bytes), and the server's memory before and after.
//!
//!     cargo run --release --example reaction_storm -- URL CLIENTS [SERVER_PID]
//!
//! Start chatd with room for the crowd from one address, e.g.
//! `CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 CHATD_SERVER__CONNECT_RATE_PER_IP=0
//! CHATD_LIMITS__RATE_PER_SEC=0 chatd` (BENCHMARKS.md has the command and the figures).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Clients that keep talking through the storm, one message each every `PACE`.
const TALKERS: usize = 4;
const PACE: Duration = Duration::from_millis(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, name: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let hello = json!({"type": "hello", "name": name, "id": "h"}).to_string();
    ws.send(Message::text(hello)).await.expect("hello");
    loop {
        let m = ws.next().await.expect("open").expect("frame");
        let v: Value = serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or_default();
        if v["ref"] == "h" {
            assert_eq!(v["type"], "welcome", "{v}");
            return ws;
        }
    }
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// One talker: says a message every `PACE` until `stop`, sending each round trip to `rtts`.
async fn talk(mut ws: Ws, rtts: mpsc::UnboundedSender<(Instant, Duration)>, stop: Instant) {
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let id = format!("t{n}");
        let sent = Instant::now();
        let say = json!({"type": "say", "text": format!("steady {n}"), "id": id}).to_string();
        if ws.send(Message::text(say)).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text()
                .unwrap_or("")
                .contains(&format!("\"ref\":\"{id}\""))
            {
                let _ = rtts.send((sent, sent.elapsed()));
                break;
            }
        }
        tokio::time::sleep_until((sent + PACE).into()).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8000".into());
    let clients: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let pid: Option<u32> = args.get(3).and_then(|p| p.parse().ok());
    let before = rss_kib(pid);

    let mut crowd = Vec::with_capacity(clients);
    for i in 0..clients {
        crowd.push(connect(&url, &format!("r{i}")).await);
    }
    let mut author = connect(&url, "author").await;
    let mut talkers = Vec::new();
    for i in 0..TALKERS {
        talkers.push(connect(&url, &format!("talker{i}")).await);
    }
    let joined = rss_kib(pid);
    let say = json!({"type": "say", "text": "react to this", "id": "m"}).to_string();
    author.send(Message::text(say)).await.unwrap();
    let target = loop {
        let m = author.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or_default();
        if v["ref"] == "m" {
            break v["id"].as_u64().expect("an id");
        }
    };

    // Talkers run 2 s before the storm and on through it.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let calm_until = start + Duration::from_secs(2);
    let stop = start + Duration::from_secs(8);
    let tasks: Vec<_> = talkers
        .into_iter()
        .map(|ws| tokio::spawn(talk(ws, tx.clone(), stop)))
        .collect();
    drop(tx);
    tokio::time::sleep_until(calm_until.into()).await;

    // The storm: every member of the crowd reacts at once; each then reads until it has seen
    // every reaction (its own is acknowledged, the others' arrive as events).
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let storm = Instant::now();
    let mut readers = Vec::with_capacity(clients);
    for (i, mut ws) in crowd.into_iter().enumerate() {
        let react = json!({"type": "react", "room": "lobby", "msg": target, "emoji": "👍", "id": format!("x{i}")});
        let (events, bytes) = (events.clone(), bytes.clone());
        readers.push(tokio::spawn(async move {
            ws.send(Message::text(react.to_string())).await.unwrap();
            let (mut seen, mut acked) = (0usize, false);
            let mut last = Instant::now();
            while seen < clients - 1 || !acked {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(10), ws.next()).await
                else {
                    break;
                };
                let text = m.to_text().unwrap_or("");
                bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                if text.contains("\"type\":\"reaction\"") {
                    seen += 1;
                    events.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("\"type\":\"ack\"") {
                    acked = true;
                } else if text.contains("\"type\":\"error\"") {
                    eprintln!("refused: {text}");
                    acked = true;
                }
                last = Instant::now();
            }
            (last, ws)
        }));
    }
    let mut done = storm;
    let mut kept = Vec::new();
    for r in readers {
        let (last, ws) = r.await.unwrap();
        done = done.max(last);
        kept.push(ws);
    }
    let storm_secs = done.duration_since(storm).as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let (mut calm, mut stormy) = (Vec::new(), Vec::new());
    while let Ok((at, rtt)) = rx.try_recv() {
        if at < storm {
            calm.push(rtt);
        } else if at <= done {
            stormy.push(rtt);
        }
    }
    calm.sort();
    stormy.sort();
    let after = rss_kib(pid);
    let report = json!({
        "clients": clients,
        "storm_secs": storm_secs,
        "reaction_events": events.load(Ordering::Relaxed),
        "expected_events": (clients * (clients - 1)) as u64,
        "bytes_per_member": bytes.load(Ordering::Relaxed) / clients as u64,
        "say_rtt_ms": {
            "calm": {"n": calm.len(), "p50": pct(&calm, 0.5), "p99": pct(&calm, 0.99)},
            "storm": {"n": stormy.len(), "p50": pct(&stormy, 0.5), "p99": pct(&stormy, 0.99)},
        },
        "rss_kib": {"before": before, "joined": joined, "after": after},
    });
    println!("{report}");
    drop(kept);
}
