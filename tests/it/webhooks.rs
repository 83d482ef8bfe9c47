//! Outgoing webhooks through the real binary, to a receiver on a free loopback port: signed
//! batches of messages, mentions, PMs, joins and leaves (a reconnect within the grace period
//! sends nothing); a delivery retried after 500s until it succeeds, and dropped after the retry
//! window; a receiver that never answers does not hold chat up; a host name that resolves to a
//! private address is refused without `webhooks.allow_private`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Daemon, http, metric};
use crate::storage::{hello, request};

const SECRET: &str = "webhook-secret-0123456789";

/// One delivery as the receiver got it.
#[derive(Debug)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: String,
}

impl Delivery {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn events(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.body).expect("a JSON body");
        v["events"].as_array().expect("events").clone()
    }
}

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 500 to the first `n` deliveries, then 200.
    FailFirst(usize),
    /// Reads the request, never answers.
    Never,
}

/// A webhook receiver on a free loopback port; deliveries come on the channel.
fn receiver(answer: Answer) -> (SocketAddr, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let served = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (tx, served) = (tx.clone(), served.clone());
            std::thread::spawn(move || serve(stream, answer, &tx, &served));
        }
    });
    (addr, rx)
}

fn serve(
    stream: std::net::TcpStream,
    answer: Answer,
    tx: &mpsc::Sender<Delivery>,
    served: &AtomicUsize,
) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut headers = Vec::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8(body).unwrap();
        let n = served.fetch_add(1, Ordering::SeqCst);
        if tx.send(Delivery { headers, body }).is_err() {
            return;
        }
        let status = match answer {
            Answer::Never => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Answer::FailFirst(k) if n < k => "500 Internal Server Error",
            Answer::FailFirst(_) => "200 OK",
        };
        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A daemon whose chat.toml lists `endpoints` (TOML of `[[webhooks.endpoints]]` tables).
fn daemon(dir: &tempfile::TempDir, webhooks: &str, endpoints: &str) -> Daemon {
    daemon_with(dir, "", &[], webhooks, endpoints)
}

/// Like [`daemon`], with more TOML (whole sections) before `[webhooks]`.
fn daemon_with(
    dir: &tempfile::TempDir,
    before: &str,
    env: &[(&str, &str)],
    webhooks: &str,
    endpoints: &str,
) -> Daemon {
    let file = dir.path().join("chat.toml");
    // Many messages in a row: no rate limit in the way.
    let toml =
        format!("[limits]\nrate_per_sec = 0.0\n\n{before}\n[webhooks]\n{webhooks}\n{endpoints}");
    std::fs::write(&file, toml).unwrap();
    let mut env = env.to_vec();
    env.push(("CHATD_CONFIG", file.to_str().unwrap()));
    Daemon::start(&[], &env)
}

fn endpoint(name: &str, addr: SocketAddr, events: &str, extra: &str) -> String {
    format!(
        "[[webhooks.endpoints]]\nname = \"{name}\"\nurl = \"http://{addr}/hook\"\nsecret = \"{SECRET}\"\nevents = {events}\n{extra}\n"
    )
}

/// The events the receiver gets within `limit`, until `done` says there are enough.
fn collect(
    rx: &mpsc::Receiver<Delivery>,
    limit: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Vec<Delivery>) {
    let deadline = Instant::now() + limit;
    let (mut events, mut deliveries) = (Vec::new(), Vec::new());
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(d) = rx.recv_timeout(left) else { break };
        events.extend(d.events());
        deliveries.push(d);
    }
    (events, deliveries)
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Messages, mentions, PMs, joins and leaves arrive signed, in batches, each with an id; a
/// leave followed by a rejoin within the grace period sends neither; a leave for good arrives
/// after it.
#[test]
fn a_receiver_gets_signed_batches() {
    let (addr, rx) = receiver(Answer::FailFirst(0));
    let dir = tempfile::tempdir().unwrap();
    let events = r#"["message", "mention", "pm", "join", "leave"]"#;
    let d = daemon(
        &dir,
        "allow_private = true\nbatch_max_ms = 300\nleave_grace_ms = 1500",
        &endpoint("audit", addr, events, "rooms = [\"ops\"]"),
    );
    let (mut henry, w) = hello(&d, "henry", json!({"room": "ops"}));
    assert_eq!(w["type"], "welcome", "{w}");
    let (mut ann, _) = hello(&d, "ann", json!({"room": "lobby"}));
    let said = request(
        &mut henry,
        json!({"type": "say", "room": "ops", "text": "ship it @ann"}),
    );
    request(
        &mut ann,
        json!({"type": "say", "room": "lobby", "text": "not for the hook"}),
    );
    request(
        &mut henry,
        json!({"type": "pm", "to": "ann", "text": "psst"}),
    );
    let (got, deliveries) = collect(&rx, Duration::from_secs(10), |e| e.len() >= 3);
    // PMs belong to no room: an endpoint kept to rooms does not get them.
    assert_eq!(kinds(&got), ["join", "message", "mention"], "{got:?}");
    assert_eq!(
        (&got[0]["room"], &got[0]["user"]),
        (&json!("ops"), &json!("henry"))
    );
    let message = &got[1]["message"];
    assert_eq!(
        (
            &message["text"],
            &message["from"],
            &message["id"],
            &message["seq"]
        ),
        (
            &json!("ship it @ann"),
            &json!("henry"),
            &said["id"],
            &said["seq"]
        )
    );
    assert_eq!(got[1]["id"], format!("message-{}", said["id"]));
    assert_eq!(got[2]["mentioned"], "ann");
    for d in &deliveries {
        let ts = d.header("x-chatd-timestamp");
        let expected = chatd::webhooks::signature(SECRET.as_bytes(), ts, d.body.as_bytes());
        assert_eq!(d.header("x-chatd-signature"), format!("sha256={expected}"));
        assert_eq!(d.header("x-chatd-webhook"), "audit");
        let age = chrono_age(ts);
        assert!(age < 60, "a fresh timestamp: {ts}");
    }

    // A reload: gone and back within the grace period, nothing is sent.
    drop(henry);
    let (mut henry, _) = hello(&d, "henry", json!({"room": "ops"}));
    request(
        &mut henry,
        json!({"type": "say", "room": "ops", "text": "back"}),
    );
    let (got, _) = collect(&rx, Duration::from_secs(10), |e| !e.is_empty());
    assert_eq!(kinds(&got), ["message"], "no leave, no join: {got:?}");
    // Gone for good: the leave follows the grace period.
    drop(henry);
    let (got, _) = collect(&rx, Duration::from_secs(10), |e| !e.is_empty());
    assert_eq!(kinds(&got), ["leave"], "{got:?}");
    assert_eq!(got[0]["user"], "henry");
    drop(ann);
}

/// A series' value, 0 while it does not exist yet.
fn seen(metrics: &str, series: &str) -> f64 {
    if metrics.contains(series) {
        metric(metrics, series)
    } else {
        0.0
    }
}

fn chrono_age(ts: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now.abs_diff(ts.parse().unwrap())
}

/// A receiver answering 500 gets the same batch again (the same event ids) until it takes it;
/// one that keeps failing is given up on after the retry window, counted; and one that never
/// answers does not hold chat up (every message is acknowledged meanwhile).
#[test]
fn deliveries_are_retried_then_given_up_and_never_slow_chat() {
    let (flaky, flaky_rx) = receiver(Answer::FailFirst(2));
    let (down, _down_rx) = receiver(Answer::FailFirst(usize::MAX));
    let (silent, silent_rx) = receiver(Answer::Never);
    let dir = tempfile::tempdir().unwrap();
    let all = endpoint("flaky", flaky, r#"["message"]"#, "")
        + &endpoint("down", down, r#"["message"]"#, "")
        + &endpoint("silent", silent, r#"["message"]"#, "");
    let d = daemon(
        &dir,
        "allow_private = true\nbatch_max_ms = 50\ntimeout_secs = 1\nretry_window_secs = 2",
        &all,
    );
    let (mut henry, _) = hello(&d, "henry", json!({"room": "ops"}));
    request(
        &mut henry,
        json!({"type": "say", "room": "ops", "text": "one"}),
    );
    let first: Vec<Vec<Value>> = (0..3)
        .map_while(|_| flaky_rx.recv_timeout(Duration::from_secs(15)).ok())
        .map(|d| d.events())
        .collect();
    assert!(first.len() >= 3, "three tries: {first:?}");
    assert!(
        first.windows(2).all(|w| w[0] == w[1]),
        "the same batch each time"
    );
    // Chat went on while the silent one held its delivery open.
    for i in 0..50 {
        let ack = request(
            &mut henry,
            json!({"type": "say", "room": "ops", "text": format!("m{i}")}),
        );
        assert_eq!(ack["type"], "ack");
    }
    assert!(
        silent_rx.try_iter().count() >= 1,
        "the silent one was called"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http(d.admin.unwrap(), "GET", "/metrics");
        let delivered = seen(
            &metrics,
            r#"chatd_webhook_events_total{endpoint="flaky",result="delivered"}"#,
        );
        let failed = seen(
            &metrics,
            r#"chatd_webhook_events_total{endpoint="down",result="failed"}"#,
        );
        let retried = seen(
            &metrics,
            r#"chatd_webhook_requests_total{endpoint="flaky",status="5xx"}"#,
        );
        if delivered >= 1.0 && failed >= 1.0 {
            assert!(retried >= 2.0, "{retried}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {delivered}, failed {failed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Without `webhooks.allow_private`, a host name that resolves to loopback is refused like the
/// address itself: nothing reaches the receiver, and the failure is counted.
#[test]
fn a_name_that_resolves_to_a_private_address_is_refused() {
    let (addr, rx) = receiver(Answer::FailFirst(0));
    let dir = tempfile::tempdir().unwrap();
    let hook = format!(
        "[[webhooks.endpoints]]\nname = \"sneaky\"\nurl = \"http://localhost:{}/\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\n",
        addr.port()
    );
    let d = daemon(&dir, "batch_max_ms = 50\nretry_window_secs = 0", &hook);
    let (mut henry, _) = hello(&d, "henry", json!({"room": "ops"}));
    request(
        &mut henry,
        json!({"type": "say", "room": "ops", "text": "to localhost"}),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = http(d.admin.unwrap(), "GET", "/metrics");
        let refused = seen(
            &metrics,
            r#"chatd_webhook_requests_total{endpoint="sneaky",status="error"}"#,
        );
        if refused >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing reached the private address"
    );
}

/// With accounts, a room's owner changing it (its topic, here) reaches `room_changed`
/// endpoints once, with who did what.
#[test]
fn room_changes_are_sent() {
    let (addr, rx) = receiver(Answer::FailFirst(0));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let accounts = "[auth]\nmode = \"accounts\"\nargon2_memory_kib = 64\nargon2_iterations = 1\n";
    let store = [("CHATD_STORAGE__PATH", db.to_str().unwrap())];
    let hook = endpoint("rooms", addr, r#"["room_changed"]"#, "");
    let d = daemon_with(
        &dir,
        accounts,
        &store,
        "allow_private = true\nbatch_max_ms = 50",
        &hook,
    );
    let mut ann = crate::api::register(&d, "ann", "ann's password");
    let r = request(&mut ann, json!({"type": "join", "room": "ops"}));
    assert_eq!(r["owner"], "ann", "{r}");
    let r = request(
        &mut ann,
        json!({"type": "room_set", "room": "ops", "topic": "deploys only"}),
    );
    assert_eq!(r["type"], "ack", "{r}");
    let (got, _) = collect(&rx, Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| e["reason"] == "deploys only" || e["target"] == "deploys only")
            || e.len() >= 3
    });
    let changed = got.iter().find(|e| e["room"] == "ops" && e["by"] == "ann");
    assert!(changed.is_some(), "{got:?}");
    assert!(got.iter().all(|e| e["type"] == "room_changed"), "{got:?}");
}

/// Two cluster nodes listing the same endpoint send each event once: the node where it happened
/// sends it (a message said on either node, a join on either), the other does not.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[test]
fn a_cluster_sends_each_event_once() {
    let (addr, rx) = receiver(Answer::FailFirst(0));
    let redis = crate::helpers::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let hook = endpoint("audit", addr, r#"["message", "join"]"#, "");
    let webhooks = "allow_private = true\nbatch_max_ms = 50";
    let node = |id: &str| {
        let env = [
            ("CHATD_CLUSTER__REDIS_URL", redis.url.as_str()),
            ("CHATD_CLUSTER__NODE_ID", id),
        ];
        daemon_with(&dir, "", &env, webhooks, &hook)
    };
    let (a, b) = (node("a"), node("b"));
    let (mut henry, _) = hello(&a, "henry", json!({"room": "ops"}));
    let (mut ann, _) = hello(&b, "ann", json!({"room": "ops"}));
    request(
        &mut henry,
        json!({"type": "say", "room": "ops", "text": "from a"}),
    );
    request(
        &mut ann,
        json!({"type": "say", "room": "ops", "text": "from b"}),
    );
    let (got, _) = collect(&rx, Duration::from_secs(10), |e| e.len() >= 4);
    // Anything more would come within a few batches: wait for them, then count.
    let (more, _) = collect(&rx, Duration::from_millis(600), |_| false);
    let all: Vec<Value> = got.into_iter().chain(more).collect();
    let mut seen: Vec<String> = all
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("join") => format!("join {}", e["user"].as_str().unwrap()),
            _ => format!("message {}", e["message"]["text"].as_str().unwrap()),
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["join ann", "join henry", "message from a", "message from b"],
        "{all:?}"
    );
}
