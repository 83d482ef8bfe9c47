//! The cluster's promises under a slow or hostile Redis (the promises issue, items 16 to 18):
//! `unavailable` means not said, answers come within the deadline, Redis's memory is bounded, and
//! what arrives through Redis is checked; the Redis password stays secret, and TLS works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    Client, Daemon, Redis, TestServer, chatd_command, eventually, free_port, http, metric,
    token_for,
};

/// `n` nodes (see `cluster::nodes_with`) without rate limits, then `edit`.
async fn nodes(redis: &Arc<Redis>, n: usize, edit: impl Fn(&mut chatd::Config)) -> Vec<TestServer> {
    crate::cluster::nodes_with(redis, n, |c| {
        c.limits.rate_per_sec = 0.0;
        edit(c);
    })
    .await
}

/// 16. Under a paused Redis, every request is answered within its deadline (from when it was
/// made; requests once waited for the ones before them, 4.1 s against a 1 s promise), and a
/// message answered `unavailable` is never delivered afterwards (one once was, when the paused
/// Redis carried out what it had been handed). What was handed to Redis is `unconfirmed`.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_paused_redis_unavailable_means_not_said() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2, |c| c.cluster.op_timeout_ms = 500).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    alice.expect("joined").await;
    alice.wait = Duration::from_secs(10);
    // Redis takes commands but carries them out only after 2 s.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000", "ALL"]).trim(), "OK");
    let started = Instant::now();
    for i in 0..10 {
        alice
            .send(json!({"type": "say", "text": format!("paused {i}"), "id": format!("p{i}")}))
            .await;
        alice
            .send(json!({"type": "who", "id": format!("w{i}")}))
            .await;
    }
    let mut not_said = Vec::new();
    for i in 0..10 {
        let reply = alice.find(|v| v["ref"] == format!("p{i}")).await;
        assert!(
            started.elapsed() < Duration::from_millis(500 + 600),
            "answered after {:?}",
            started.elapsed()
        );
        match reply["code"].as_str() {
            Some("unavailable") => not_said.push(format!("paused {i}")),
            Some("unconfirmed") => {}
            _ => panic!("under a paused Redis: {reply}"),
        }
        let who = alice.find(|v| v["ref"] == format!("w{i}")).await;
        assert_eq!(who["code"], "unavailable", "{who}");
    }
    // Once Redis carries on, whatever it was handed is said; what was `unavailable` is not.
    let admin = nodes[0].admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::task::spawn_blocking(move || http(admin, "GET", "/readyz").0)
        .await
        .unwrap()
        != 200
    {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (With 2 s lifetimes, the pause may have reaped bob as a ghost: a `left` can come first.)
    alice
        .send(json!({"type": "say", "text": "after", "id": "after"}))
        .await;
    let ack = alice.find(|v| v["ref"] == "after").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut delivered = Vec::new();
    loop {
        let m = bob.find(|v| v["type"] == "message").await;
        if m["text"] == "after" {
            break;
        }
        delivered.push(m["text"].as_str().unwrap().to_string());
    }
    for text in &not_said {
        assert!(
            !delivered.contains(text),
            "{text:?} was `unavailable` yet said"
        );
    }
}

/// 15. An acknowledged PM was delivered: pub/sub drops what is published while a node's
/// subscription is down (20 of 400 acknowledged PMs were once never delivered), so a PM's ack
/// waits until the recipient's node has handed it over; what it cannot confirm is
/// `unconfirmed`, never a false `sent`.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_pm_in_a_cluster_was_delivered() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2, |c| c.cluster.op_timeout_ms = 500).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    alice.expect("joined").await;
    alice.wait = Duration::from_secs(10);
    // Every subscription is cut every 50 ms while alice sends.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (redis, stop) = (redis.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim() != "0" {
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kills
        })
    };
    let mut acked = Vec::new();
    let mut unsure = 0;
    for i in 0..60 {
        let text = format!("pm {i}");
        let reply = alice
            .request(json!({"type": "pm", "to": "bob", "text": text}))
            .await;
        match reply["type"].as_str() {
            Some("error") => {
                let code = reply["code"].as_str().unwrap_or_default();
                assert!(code == "unconfirmed" || code == "unavailable", "{reply}");
                unsure += 1;
            }
            _ => {
                assert!(reply["id"].as_u64().is_some(), "{reply}");
                acked.push(text);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.join().unwrap();
    // Once the subscriptions are back, one last PM; node b's channel is in order, so what
    // was going to arrive has arrived when it does.
    loop {
        let reply = alice
            .request(json!({"type": "pm", "to": "bob", "text": "end"}))
            .await;
        if reply["type"] != "error" {
            break;
        }
    }
    let mut received = std::collections::HashSet::new();
    loop {
        let v = bob.find(|v| v["type"] == "pm").await;
        let text = v["text"].as_str().unwrap().to_string();
        if text == "end" {
            break;
        }
        received.insert(text);
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !received.contains(*t)).collect();
    println!(
        "{kills} subscription cuts; {} PMs acknowledged, {unsure} unconfirmed or unavailable, {} received",
        acked.len(),
        received.len()
    );
    assert!(kills > 0 && !acked.is_empty());
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
}

/// 15. A kick holds even when the kicked user's node missed the order (its subscription was
/// down when it was published): that node's next heartbeat finds the kick's tombstone and
/// closes the connection, where it used to re-claim the name and memberships, so the kicked
/// user stayed, unseen by the admin.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_whose_order_was_lost_still_closes_the_user() {
    use chatd::protocol::Role;
    const SECRET: &str = "cluster-test-secret-cluster-test-secret";
    let redis = Redis::start();
    let daemon = |node: &str| {
        let env = [
            ("CHATD_CLUSTER__REDIS_URL", redis.url.as_str()),
            ("CHATD_CLUSTER__NODE_ID", node),
            ("CHATD_CLUSTER__NAME_TTL_SECS", "2"),
            ("CHATD_CLUSTER__PRESENCE_TTL_SECS", "2"),
            ("CHATD_CLUSTER__HEARTBEAT_SECS", "1"),
            ("CHATD_CLUSTER__OP_TIMEOUT_MS", "500"),
            ("CHATD_AUTH__MODE", "token"),
            ("CHATD_AUTH__SECRET", SECRET),
        ];
        Daemon::start(&[], &env)
    };
    let a = daemon("a");
    let b = daemon("b");
    let hello = |name: &str, role| json!({"type": "hello", "name": name, "token": token_for(SECRET, name, role)});
    let mut root = Client::connect(a.addr).await;
    assert_eq!(
        root.request(hello("root", Role::Admin)).await["type"],
        "welcome"
    );
    let mut bob = Client::connect(b.addr).await;
    assert_eq!(
        bob.request(hello("bob", Role::User)).await["type"],
        "welcome"
    );
    root.expect("joined").await;
    let subscribed = |node: &str| {
        redis
            .cli(&["PUBSUB", "NUMSUB", &format!("chatd:n:{node}")])
            .lines()
            .last()
            == Some("1")
    };
    // Node b stops reading, Redis drops every subscription, and node a comes back alone.
    b.signal("STOP");
    assert_ne!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim(), "0");
    eventually(
        "node a subscribed again",
        Duration::from_secs(5),
        async || subscribed("a"),
    )
    .await;
    assert!(!subscribed("b"));
    root.wait = Duration::from_secs(5);
    root.send(json!({"type": "kick", "name": "bob", "reason": "spam", "id": "k"}))
        .await;
    let reply = root.find(|v| v["ref"] == "k").await;
    assert_eq!(reply["type"], "ack", "{reply}");
    b.signal("CONT");
    let (code, reason) = bob.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "kicked: spam"));
    // And the name stays free: nobody called bob is listed.
    eventually("bob gone from who", Duration::from_secs(5), async || {
        let who = root.request(json!({"type": "who"})).await;
        !who.to_string().contains("\"bob\"")
    })
    .await;
}

/// 17. Redis's memory for a room is bounded in bytes (`cluster.history_bytes`), and an empty
/// room's keys expire (`cluster.room_ttl_secs`; 500 rooms used once once left 1,000 keys
/// forever).
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_redis_memory_is_bounded_and_empty_rooms_are_forgotten() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 1, |c| {
        c.cluster.history_bytes = 2 * 65536;
        c.cluster.room_ttl_secs = 60;
    })
    .await;
    let mut alice = nodes[0].join("alice").await;
    alice.request(json!({"type": "join", "room": "big"})).await;
    let text = "x".repeat(8 * 1024);
    for _ in 0..40 {
        let ack = alice
            .request(json!({"type": "say", "room": "big", "text": text}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let bytes: usize = redis
        .cli(&["GET", "chatd:sbytes:big"])
        .trim()
        .parse()
        .unwrap();
    let entries: usize = redis
        .cli(&["XLEN", "chatd:stream:big"])
        .trim()
        .parse()
        .unwrap();
    assert!(bytes <= 2 * 65536, "{bytes} bytes in the stream");
    assert!((10..=16).contains(&entries), "{entries} entries of 8 KiB");
    // History pages from what Redis keeps (a frame's worth at a time).
    let history = alice
        .request(json!({"type": "history", "room": "big", "limit": 100}))
        .await;
    let page = history["messages"].as_array().unwrap();
    assert!(
        !page.is_empty() && page.len() <= entries,
        "{} of {entries}",
        page.len()
    );
    alice.request(json!({"type": "leave", "room": "big"})).await;
    for key in ["seq", "stream", "epoch", "sbytes"] {
        let ttl: i64 = redis
            .cli(&["TTL", &format!("chatd:{key}:big")])
            .trim()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&ttl), "{key}: TTL {ttl}");
    }
    // Back in the room: its keys are kept again.
    alice.request(json!({"type": "join", "room": "big"})).await;
    assert_eq!(redis.cli(&["TTL", "chatd:seq:big"]).trim(), "-1");
}

/// 18. What arrives through Redis is checked: one envelope numbered far past the room (anyone
/// who can publish to Redis could send it) once silenced the room for good; an envelope larger
/// than any chat event is dropped. Both are counted.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelopes_cannot_silence_a_room_or_flood_a_node() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 1, |_| {}).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[0].join("bob").await;
    alice.expect("joined").await;
    let first = bob.request(json!({"type": "say", "text": "real 1"})).await;
    assert_eq!(first["seq"], 1);
    assert_eq!(
        alice.find(|v| v["type"] == "message").await["text"],
        "real 1"
    );
    let epoch = redis.cli(&["GET", "chatd:epoch:lobby"]).trim().to_string();
    let forged = json!({
        "seq": 1_000_000_000_000u64, "id": 1, "epoch": epoch, "v": 1, "t": 1, "x": "evil|1",
        "e": {"type": "message", "id": 1, "seq": 1, "ts": "2026-12-01T00:00:00.000Z",
              "room": "lobby", "from": "root", "role": "admin", "text": "forged"}
    });
    redis.cli(&["PUBLISH", "chatd:r:lobby", &forged.to_string()]);
    let big = json!({"v": 1, "t": 1, "x": "evil|1",
        "e": {"type": "notice", "from": "server", "text": "x".repeat(200_000)}});
    redis.cli_stdin(&["-x", "PUBLISH", "chatd:all"], &big.to_string());
    let next = bob.request(json!({"type": "say", "text": "real 2"})).await;
    assert_eq!(next["seq"], 2);
    // alice gets the real message, not the forged one, and stays connected.
    let m = alice
        .find(|v| v["type"] == "message" || v["type"] == "notice")
        .await;
    assert_eq!(m["text"], "real 2", "{m}");
    let admin = nodes[0].admin.unwrap();
    let (_, metrics) = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics"))
        .await
        .unwrap();
    let dropped = |reason: &str| {
        metric(
            &metrics,
            &format!("chatd_cluster_envelopes_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(dropped("implausible"), 1.0);
    assert_eq!(dropped("malformed"), 1.0);
}

/// 18. The Redis password never reaches output or logs (`print-config`, the startup line);
/// `cluster.redis_password_file` logs in; a wrong password reads as Redis being away.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_stays_secret_and_logs_in() {
    let port = free_port();
    let redis = Arc::new(Redis::start_with(
        port,
        &["--port", &port.to_string(), "--requirepass", "s3cret-pw"],
    ));
    let url = format!("redis://:s3cret-pw@127.0.0.1:{port}/0");
    let out = chatd_command()
        .arg("print-config")
        .env("CHATD_CLUSTER__REDIS_URL", &url)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(
        printed.contains(&format!("redis://:***@127.0.0.1:{port}/0")),
        "{printed}"
    );
    let d = Daemon::start(&[], &[("CHATD_CLUSTER__REDIS_URL", &url)]);
    assert!(
        d.startup.iter().all(|l| !l.contains("s3cret")),
        "{:?}",
        d.startup
    );
    drop(d);
    // From a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    let with_file = TestServer::node(&redis, |c| {
        c.cluster.redis_url = chatd::config::SecretUrl::new(format!("redis://127.0.0.1:{port}/0"));
        c.cluster.redis_password_file = file.display().to_string();
    })
    .await;
    let mut alice = with_file.join("alice").await;
    let ack = alice
        .request(json!({"type": "say", "text": "logged in"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    std::fs::write(&file, "wrong\n").unwrap();
    let wrong = TestServer::node(&redis, |c| {
        c.cluster.redis_url = chatd::config::SecretUrl::new(format!("redis://127.0.0.1:{port}/0"));
        c.cluster.redis_password_file = file.display().to_string();
    })
    .await;
    let mut c = Client::connect(wrong.addr).await;
    let e = c.hello("bob").await;
    assert_eq!(e["code"], "unavailable", "{e}");
}

/// 18. A Redis user restricted to the cluster's own keys and channels, without dangerous
/// commands, is all a node needs (docs/SECURITY.md gives this ACL to operators).
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_acl_user_is_enough() {
    let port = free_port();
    let redis = Arc::new(Redis::start_with(
        port,
        &[
            "--port",
            &port.to_string(),
            "--user",
            "default",
            "off",
            "--user",
            "chatd",
            "on",
            ">acl-pw",
            "resetchannels",
            "~chatd:*",
            "&chatd:*",
            "-@all",
            "+@read",
            "+@write",
            "+@pubsub",
            "+@scripting",
            "+@connection",
            "-@dangerous",
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "acl-pw").unwrap();
    let nodes: Vec<TestServer> = futures_util::future::join_all(["a", "b"].map(|id| {
        let (redis, file) = (redis.clone(), file.clone());
        async move {
            TestServer::node(&redis, |c| {
                c.cluster.node_id = id.into();
                c.cluster.redis_url =
                    chatd::config::SecretUrl::new(format!("redis://chatd@127.0.0.1:{port}/0"));
                c.cluster.redis_password_file = file.display().to_string();
            })
            .await
        }
    }))
    .await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    alice.expect("joined").await;
    let ack = alice
        .request(json!({"type": "say", "text": "within the ACL"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = bob.expect("message").await;
    assert_eq!(m["text"], "within the ACL");
    let pm = bob
        .request(json!({"type": "pm", "to": "alice", "text": "psst"}))
        .await;
    assert_eq!(pm["type"], "ack", "{pm}");
    assert_eq!(alice.expect("pm").await["text"], "psst");
    drop(bob);
    assert_eq!(alice.expect("left").await["name"], "bob");
    // Two heartbeats (refreshes and the sweep's script) later, nothing has failed.
    let admin = nodes[0].admin.unwrap();
    crate::helpers::eventually("two heartbeats", Duration::from_secs(10), async || {
        let (_, m) = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics"))
            .await
            .unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("chatd_redis_op_seconds_count{op=\"heartbeat\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    let (_, m) = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics"))
        .await
        .unwrap();
    assert!(!m.contains("chatd_redis_failures_total{"), "{m}");
    assert_eq!(metric(&m, "chatd_redis_up"), 1.0);
}

/// 18. `rediss://`: a node speaks TLS to Redis, trusting the CA in `cluster.redis_ca_cert`.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaks_tls_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    let out = chatd_command()
        .args(["cert", "--host", "127.0.0.1", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = |f: &str| dir.path().join(f).display().to_string();
    let port = free_port();
    let redis = Arc::new(Redis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("cert.pem"),
            "--tls-key-file",
            &path("key.pem"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    ));
    let node = TestServer::node(&redis, |c| {
        c.cluster.redis_url = chatd::config::SecretUrl::new(format!("rediss://127.0.0.1:{port}/0"));
        c.cluster.redis_ca_cert = path("ca.pem");
    })
    .await;
    let mut alice = node.join("alice").await;
    let ack = alice
        .request(json!({"type": "say", "text": "over tls"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}
