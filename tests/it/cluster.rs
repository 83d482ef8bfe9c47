//! Several chatd nodes acting as one chat over a real `redis-server` (one per test, on a free
//! loopback port, stopped by pid): the failure semantics docs/RELIABILITY.md promises. Nodes run
//! in the test process, except where a node must die (SIGKILL, SIGTERM): those are real binaries.
//! Without `redis-server` the tests say so and pass, unless `CHATD_REDIS_TESTS=required` (CI).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, Daemon, Redis, TestServer, eventually, http, metric, token_for};
use chatd::Config;

/// `n` nodes on `redis`, named a, b, c…, without rate limits (the tests send in bursts).
async fn nodes(redis: &Arc<Redis>, n: usize) -> Vec<TestServer> {
    nodes_with(redis, n, |c| c.limits.rate_per_sec = 0.0).await
}

/// `n` nodes on `redis`, named a, b, c…, each configured by `edit`.
pub(crate) async fn nodes_with(
    redis: &Arc<Redis>,
    n: usize,
    edit: impl Fn(&mut Config),
) -> Vec<TestServer> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            TestServer::node(redis, |c| {
                c.cluster.node_id = format!("{}", (b'a' + i as u8) as char);
                edit(c);
            })
            .await,
        );
    }
    out
}

async fn get(addr: std::net::SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http(addr, "GET", path))
        .await
        .unwrap()
}

/// The next room message (other events skipped).
async fn message(c: &mut Client) -> Value {
    c.find(|v| v["type"] == "message").await
}

fn names(who: &Value) -> Vec<String> {
    who["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

/// 1. Two senders on two nodes, 500 messages each, pipelined: receivers on three nodes see the
/// same seq sequence 1..1000 in the same order, no gap, no duplicate.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_one_room_in_one_order() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 3).await;
    let mut receivers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        receivers.push(node.join(&format!("r{i}")).await);
    }
    let mut senders = vec![nodes[0].join("s0").await, nodes[1].join("s1").await];
    let sending: Vec<_> = senders
        .drain(..)
        .enumerate()
        .map(|(s, mut c)| {
            tokio::spawn(async move {
                // Up to 32 in flight, as a client that reads while it sends.
                let (mut sent, mut acked) = (0, 0);
                while acked < 500 {
                    while sent < 500 && sent - acked < 32 {
                        let text = format!("s{s} {sent}");
                        c.send(json!({"type": "say", "text": text, "id": sent.to_string()}))
                            .await;
                        sent += 1;
                    }
                    let v = c.recv().await;
                    assert_ne!(v["type"], "error", "{v}");
                    if v["type"] == "ack" {
                        acked += 1;
                    }
                }
                c
            })
        })
        .collect();
    let mut seen = Vec::new();
    for r in &mut receivers {
        let mut got = Vec::new();
        for _ in 0..1000 {
            let m = message(r).await;
            got.push((
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            ));
        }
        seen.push(got);
    }
    for s in sending {
        s.await.unwrap();
    }
    let seqs: Vec<u64> = seen[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    // Each sender's own messages are in the order it sent them.
    for s in 0..2 {
        let mine: Vec<&str> = seen[0]
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("s{s} ")))
            .map(|(_, t)| t.as_str())
            .collect();
        let sent: Vec<String> = (0..500).map(|i| format!("s{s} {i}")).collect();
        assert_eq!(mine, sent);
    }
}

/// 3. Thirty clients on three nodes claim one name at once: exactly one wins. After a graceful
/// disconnect the name is free at once on another node (the claim's TTL here is 30 s).
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_one_winner_across_nodes_and_freed_at_once() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 3, |c| {
        c.cluster.name_ttl_secs = 30;
        c.cluster.presence_ttl_secs = 30;
    })
    .await;
    let claims: Vec<_> = (0..30)
        .map(|i| {
            let addr = nodes[i % 3].addr;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                let reply = c.hello(if i % 2 == 0 { "Zed" } else { "zED" }).await;
                (i, reply, c)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for claim in claims {
        let (i, reply, c) = claim.await.unwrap();
        match reply["type"].as_str() {
            Some("welcome") => winners.push((i, c)),
            _ => assert_eq!(reply["code"], "name_taken", "{reply}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let (i, mut winner) = winners.pop().unwrap();
    winner.ws.close(None).await.unwrap();
    let _ = winner.closed().await;
    let elsewhere = nodes[(i + 1) % 3].addr;
    let started = tokio::time::Instant::now();
    eventually(
        "the name is free elsewhere",
        Duration::from_secs(3),
        async || {
            let mut c = Client::connect(elsewhere).await;
            c.hello("zed").await["type"] == "welcome"
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "freed by TTL, not at once"
    );
}

/// 2 and 4. `who` on any node lists everyone; joins, leaves, PMs, typing, kicks and notices cross
/// nodes; typing consumes no seq.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_pm_typing_kick_and_announce_cross_nodes() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    assert_eq!(alice.expect("joined").await["name"], "bob");
    let who = bob.request(json!({"type": "who"})).await;
    assert_eq!(names(&who), ["alice", "bob"]);

    let pm = alice
        .request(json!({"type": "pm", "to": "BOB", "text": "psst"}))
        .await;
    assert_eq!(pm["type"], "ack", "{pm}");
    let got = bob.expect("pm").await;
    assert_eq!(
        (got["from"].as_str(), got["text"].as_str()),
        (Some("alice"), Some("psst"))
    );
    let nobody = alice
        .request(json!({"type": "pm", "to": "carol", "text": "hi"}))
        .await;
    assert_eq!(nobody["code"], "no_such_user");

    bob.send(json!({"type": "typing", "room": "lobby", "state": "active"}))
        .await;
    let t = alice.expect("typing").await;
    assert_eq!(
        (t["from"].as_str(), t["room"].as_str()),
        (Some("bob"), Some("lobby"))
    );
    bob.send(json!({"type": "typing", "to": "alice", "state": "active"}))
        .await;
    let t = alice.expect("typing").await;
    assert_eq!(t["to"], "alice");
    // Typing took no seq: the first message is seq 1.
    let ack = bob.request(json!({"type": "say", "text": "first"})).await;
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(message(&mut alice).await["seq"], 1);

    // A join and a leave on node b reach node a.
    let mut carol = nodes[1].join("carol").await;
    assert_eq!(alice.expect("joined").await["name"], "carol");
    bob.expect("joined").await;
    carol.request(json!({"type": "join", "room": "rust"})).await;
    alice.request(json!({"type": "join", "room": "rust"})).await;
    carol.expect("joined").await;
    carol
        .request(json!({"type": "leave", "room": "rust"}))
        .await;
    let left = alice.expect("left").await;
    assert_eq!(
        (left["room"].as_str(), left["name"].as_str()),
        (Some("rust"), Some("carol"))
    );
    let rooms = bob.request(json!({"type": "rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "lobby", "members": 3}, {"name": "rust", "members": 1}])
    );

    bob.sync().await;
}

/// 2. An admin on one node kicks a user on another (the room hears it before the admin's ack,
/// the user is closed with 1008), and an announce reaches every node.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_announcements_cross_nodes() {
    use chatd::config::{AuthMode, Secret};
    use chatd::protocol::Role;
    const SECRET: &str = "cluster-test-secret-cluster-test-secret";
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 2, |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
    })
    .await;
    let hello = |name: &str, role| json!({"type": "hello", "name": name, "token": token_for(SECRET, name, role)});
    let mut root = Client::connect(nodes[0].addr).await;
    assert_eq!(
        root.request(hello("root", Role::Admin)).await["type"],
        "welcome"
    );
    let mut bob = Client::connect(nodes[1].addr).await;
    assert_eq!(
        bob.request(hello("bob", Role::User)).await["type"],
        "welcome"
    );
    let mut carol = Client::connect(nodes[1].addr).await;
    assert_eq!(
        carol.request(hello("carol", Role::User)).await["type"],
        "welcome"
    );
    root.expect("joined").await;
    root.expect("joined").await;
    bob.expect("joined").await;

    root.send(json!({"type": "announce", "text": "maintenance at noon", "id": "n"}))
        .await;
    for c in [&mut bob, &mut carol] {
        let n = c.expect("notice").await;
        assert_eq!(
            (n["from"].as_str(), n["text"].as_str()),
            (Some("root"), Some("maintenance at noon"))
        );
    }
    root.find(|v| v["ref"] == "n").await;

    root.send(json!({"type": "kick", "name": "bob", "reason": "spam", "id": "k"}))
        .await;
    let kicked =
        json!({"type": "kicked", "room": "lobby", "name": "bob", "by": "root", "reason": "spam"});
    assert_eq!(root.expect("kicked").await, kicked);
    assert_eq!(root.expect("ack").await["ref"], "k");
    assert_eq!(carol.find(|v| v["type"] == "kicked").await, kicked);
    let (code, reason) = bob.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "kicked: spam"));
    let who = carol.request(json!({"type": "who"})).await;
    assert_eq!(names(&who), ["carol", "root"]);
}

/// 6 and 7. Redis killed: requests get `unavailable` within a second (a message already on its
/// way to the dying Redis: `unconfirmed`), connections stay open,
/// `/healthz` 200, `/readyz` 503, `chatd_redis_up` 0. Redis back (empty): traffic resumes within
/// heartbeat + 2 s, clients get `resync`, the next message is seq 1 under a new epoch, names and
/// memberships are claimed again.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_redis_outage_is_unavailable_then_resync_after_an_empty_restart() {
    redis_outage(Duration::from_secs(1)).await;
}

#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_redis_outage_is_unavailable_then_resync_after_an_empty_restart() {
    redis_outage(Duration::from_secs(10)).await;
}

async fn redis_outage(length: Duration) {
    let redis = Arc::new(Redis::start());
    let port = redis.port;
    let nodes = nodes(&redis, 2).await;
    let admin = nodes[0].admin.unwrap();
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    alice.expect("joined").await;
    let ack = alice
        .request(json!({"type": "say", "text": "before"}))
        .await;
    assert_eq!(ack["seq"], 1);
    message(&mut bob).await;
    let old_epoch = bob.request(json!({"type": "join", "room": "lobby"})).await["epoch"].clone();
    eventually("ready", Duration::from_secs(5), async || {
        get(admin, "/readyz").await.0 == 200
    })
    .await;

    redis.kill();
    let started = tokio::time::Instant::now();
    // The first message goes down the connection that just died: it may have been said before
    // Redis went, so it is `unconfirmed` (never `unavailable`, which means "not said"); once
    // the node knows Redis is gone, what follows is `unavailable`.
    let e = alice.request(json!({"type": "say", "text": "lost?"})).await;
    assert!(
        e["code"] == "unconfirmed" || e["code"] == "unavailable",
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let who = bob.request(json!({"type": "who"})).await;
    assert_eq!(who["code"], "unavailable");
    assert_eq!(get(admin, "/healthz").await.0, 200);
    eventually("readyz 503", Duration::from_secs(3), async || {
        get(admin, "/readyz").await.0 == 503
    })
    .await;
    let (_, m) = get(admin, "/metrics").await;
    assert_eq!(metric(&m, "chatd_redis_up"), 0.0);
    // For the rest of the outage every request is still answered, and no connection ends.
    while started.elapsed() < length {
        let e = bob
            .request(json!({"type": "say", "text": "still down?"}))
            .await;
        assert_eq!(e["code"], "unavailable", "{e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let back = Redis::start_on(port);
    // Within heartbeat (1 s) + 2 s.
    for node in &nodes {
        let admin = node.admin.unwrap();
        eventually("ready again", Duration::from_secs(3), async || {
            get(admin, "/readyz").await.0 == 200
        })
        .await;
    }
    let r = bob.find(|v| v["type"] == "resync").await;
    assert_eq!(r["room"], "lobby");
    assert_ne!(r["epoch"], old_epoch);
    alice
        .send(json!({"type": "say", "text": "after", "id": "after"}))
        .await;
    let ack = alice.find(|v| v["ref"] == "after").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let m = message(&mut bob).await;
    assert_eq!(
        (m["seq"].as_u64(), m["text"].as_str()),
        (Some(1), Some("after"))
    );
    // The heartbeat claims names and memberships again.
    eventually(
        "names and members back",
        Duration::from_secs(3),
        async || {
            back.cli(&["GET", "chatd:name:bob"]).contains("|bob")
                && back.cli(&["ZCARD", "chatd:members:lobby"]).trim() == "2"
        },
    )
    .await;
    let who = alice.request(json!({"type": "who"})).await;
    assert_eq!(names(&who), ["alice", "bob"]);
}

/// 8. Pub/sub is at most once: when Redis drops a node's subscription while another node sends,
/// the receivers still end with every seq exactly once (filled in from the room's stream).
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_by_pubsub_are_filled_from_the_stream() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    alice.expect("joined").await;
    let admin = nodes[1].admin.unwrap();
    for i in 1..=300u64 {
        if i == 100 || i == 200 {
            // Every subscriber connection, node b's included, is cut (once both are back).
            eventually(
                "both nodes subscribed",
                Duration::from_secs(5),
                async || {
                    let out = redis.cli(&["PUBSUB", "NUMSUB", "chatd:r:lobby"]);
                    out.lines().last() == Some("2")
                },
            )
            .await;
            let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            assert_ne!(killed.trim(), "0", "no subscriber was connected");
        }
        let ack = alice
            .request(json!({"type": "say", "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["seq"], i, "{ack}");
    }
    let mut seqs = Vec::new();
    while seqs.last() != Some(&300) {
        let v = bob
            .find(|v| v["type"] == "message" || v["type"] == "resync")
            .await;
        assert_eq!(v["type"], "message", "the stream holds every message: {v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let (_, m) = get(admin, "/metrics").await;
    println!(
        "gaps repaired on node b: {}",
        metric(&m, "chatd_gaps_repaired_total")
    );
}

/// 10. A client that reconnects to another node with `since` gets exactly what it missed.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_on_another_node_gets_exactly_what_was_missed() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = Client::connect(nodes[0].addr).await;
    let welcome = bob.hello("bob").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    alice.expect("joined").await;
    for i in 1..=5 {
        alice
            .request(json!({"type": "say", "text": format!("seen {i}")}))
            .await;
        assert_eq!(message(&mut bob).await["seq"], i);
    }
    bob.ws.close(None).await.unwrap();
    let _ = bob.closed().await;
    for i in 6..=9 {
        let id = format!("m{i}");
        alice
            .send(json!({"type": "say", "text": format!("missed {i}"), "id": id}))
            .await;
        alice.find(|v| v["ref"] == id.as_str()).await;
    }
    let mut back = Client::connect(nodes[1].addr).await;
    back.send(json!({"type": "hello", "name": "bob", "since": 5, "epoch": epoch}))
        .await;
    let w = back.expect("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    let texts: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["missed 6", "missed 7", "missed 8", "missed 9"]);
    // Live traffic carries on from there.
    alice
        .send(json!({"type": "say", "text": "live", "id": "live"}))
        .await;
    let m = message(&mut back).await;
    assert_eq!(
        (m["seq"].as_u64(), m["text"].as_str()),
        (Some(10), Some("live"))
    );
    // A stale epoch is told so: not resumed, recent history instead.
    let mut stale = Client::connect(nodes[1].addr).await;
    stale
        .send(json!({"type": "hello", "name": "carol", "since": 5, "epoch": "0000"}))
        .await;
    assert_eq!(stale.expect("welcome").await["resumed"], false);
}

/// The environment that makes the real binary a cluster node on `redis`, called `node`.
pub(crate) fn node_env(redis: &Redis, node: &str) -> Vec<(String, String)> {
    [
        ("CHATD_CLUSTER__REDIS_URL", redis.url.as_str()),
        ("CHATD_CLUSTER__NODE_ID", node),
        ("CHATD_CLUSTER__NAME_TTL_SECS", "2"),
        ("CHATD_CLUSTER__PRESENCE_TTL_SECS", "2"),
        ("CHATD_CLUSTER__HEARTBEAT_SECS", "1"),
        ("CHATD_CLUSTER__OP_TIMEOUT_MS", "500"),
        ("CHATD_LIMITS__PRESENCE_BATCH_MS", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn daemon(redis: &Redis, node: &str) -> Daemon {
    let env = node_env(redis, node);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(&[], &env)
}

/// 5. SIGKILL a node: within TTL + sweep its users vanish from `who`, each room gets exactly one
/// `left` per user, their names are free, and the other nodes chat on. SIGTERM a node: its users
/// leave and their names are free at once, and its clients get close 1001.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_are_reaped_once_and_a_stopped_nodes_leave_at_once() {
    let redis = Redis::start();
    let mut a = daemon(&redis, "a");
    let mut b = daemon(&redis, "b");
    let c = daemon(&redis, "c");
    let mut watcher = Client::connect(c.addr).await;
    assert_eq!(watcher.hello("watcher").await["type"], "welcome");
    let mut peer = Client::connect(a.addr).await;
    assert_eq!(peer.hello("peer").await["type"], "welcome");
    watcher.expect("joined").await;
    let mut doomed = Vec::new();
    for name in ["ghost1", "ghost2"] {
        let mut g = Client::connect(b.addr).await;
        assert_eq!(g.hello(name).await["type"], "welcome");
        g.request(json!({"type": "join", "room": "attic"})).await;
        doomed.push(g);
        assert_eq!(watcher.expect("joined").await["name"], name);
        peer.expect("joined").await;
    }
    watcher
        .request(json!({"type": "join", "room": "attic"}))
        .await;

    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    // Exactly one `left` per ghost per room, within TTL (2 s) + a sweep (1 s), while the nodes
    // left chat on.
    let mut lefts = Vec::new();
    while lefts.len() < 4 {
        peer.send(json!({"type": "say", "text": "still here"}))
            .await;
        let v = watcher
            .find(|v| v["type"] == "left" || v["type"] == "message")
            .await;
        if v["type"] == "left" {
            lefts.push((
                v["room"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
            ));
        }
    }
    lefts.sort();
    let pairs = |rooms: [&str; 2]| {
        let mut out = Vec::new();
        for r in rooms {
            for g in ["ghost1", "ghost2"] {
                out.push((r.to_string(), g.to_string()));
            }
        }
        out
    };
    assert_eq!(lefts, pairs(["attic", "lobby"]));
    watcher.send(json!({"type": "who", "id": "w"})).await;
    let who = watcher.find(|v| v["ref"] == "w").await;
    assert_eq!(names(&who), ["peer", "watcher"]);
    let mut reclaim = Client::connect(a.addr).await;
    eventually(
        "ghost1's name is free",
        Duration::from_secs(4),
        async || reclaim.hello("ghost1").await["type"] == "welcome",
    )
    .await;
    // No second `left` for anyone: the next thing watcher sees is this join.
    assert_eq!(
        watcher.find(|v| v["type"] != "message").await["name"],
        "ghost1"
    );
    let (_, m) = get(c.admin.unwrap(), "/metrics").await;
    let (_, m2) = get(a.admin.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&m, "chatd_ghosts_reaped_total") + metric(&m2, "chatd_ghosts_reaped_total"),
        4.0
    );

    // SIGTERM: peer's node stops; peer leaves at once, its name is free, it gets 1001.
    a.signal("TERM");
    let (code, _) = peer.closed().await;
    assert_eq!(code, 1001);
    let left = watcher
        .find(|v| v["type"] == "left" && v["name"] == "peer")
        .await;
    assert_eq!(left["room"], "lobby");
    let mut again = Client::connect(c.addr).await;
    assert_eq!(
        again.hello("peer").await["type"],
        "welcome",
        "freed without a TTL wait"
    );
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(0));
    drop(doomed);
}

/// 9. Clients that stop reading on one node are cut off by their byte budget; the node keeps
/// reading Redis, so its other members and the other node get every message.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_stall_their_node() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 2, |c| {
        c.limits.rate_per_sec = 0.0;
        c.limits.outbound_queue_bytes = 262_144;
    })
    .await;
    let b_addr = nodes[1].addr;
    let stalled = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|i| crate::hardening::stalled_client(b_addr, &format!("stall{i}")))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut alice = nodes[0].join("alice").await;
    // bob (on the stalled clients' node) and carol (on alice's) read as they go.
    let mut bob = nodes[1].join("bob").await;
    let mut carol = nodes[0].join("carol").await;
    let text = "z".repeat(60 * 1024);
    for i in 0..150 {
        let id = format!("m{i}");
        alice
            .send(json!({"type": "say", "text": text, "id": id}))
            .await;
        let ack = alice.find(|v| v["ref"] == id.as_str()).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        for c in [&mut bob, &mut carol] {
            assert_eq!(message(c).await["seq"], ack["seq"]);
        }
    }
    let admin = nodes[1].admin.unwrap();
    eventually("5 cut off", Duration::from_secs(5), async || {
        metric(
            &get(admin, "/metrics").await.1,
            "chatd_slow_consumer_disconnects_total",
        ) == 5.0
    })
    .await;
    drop(stalled);
}

/// 7, as a user sees it: chatctl on one node says so when Redis restarted empty, and carries on
/// with the next message (seq 1 of the new epoch) from another node.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[test]
fn chatctl_says_so_on_a_resync_and_carries_on() {
    let redis = Redis::start();
    let port = redis.port;
    let a = daemon(&redis, "a");
    let b = daemon(&redis, "b");
    let mut cmd = crate::helpers::chatctl_command();
    cmd.args(["--url", &format!("ws://{}", a.addr), "connect", "watcher"]);
    let mut watcher = crate::helpers::Proc::spawn(cmd);
    watcher.expect_out("welcome, watcher!");
    let mut bob = crate::helpers::SyncClient::join(b.addr, "bob");
    watcher.expect_out("bob joined");
    bob.send(json!({"type": "say", "text": "before", "id": "1"}));
    bob.recv_until(|v| v["ref"] == "1");
    watcher.expect_out("<bob> before");

    redis.kill();
    let _back = Redis::start_on(port);
    for admin in [a.admin.unwrap(), b.admin.unwrap()] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while http(admin, "GET", "/readyz").0 != 200 {
            assert!(std::time::Instant::now() < deadline, "never ready again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    watcher.expect_out("some messages may have been lost; reloading recent history");
    bob.send(json!({"type": "say", "text": "after", "id": "2"}));
    let ack = bob.recv_until(|v| v["ref"] == "2");
    assert_eq!(ack["seq"], 1, "{ack}");
    watcher.expect_out("<bob> after");
    watcher.close_stdin();
    assert_eq!(watcher.wait_exit(), Some(0));
}

/// Promises issue, item 15: on a healthy Redis a node keeps its one subscription. The 1 s health
/// PING on a subscribed connection is answered `["pong", ""]`, which once counted as a failure:
/// every node dropped and remade its subscription each second (`/readyz` 503 most of the time,
/// `hello`s refused, PMs lost). Over three seconds of idling: `/readyz` always 200, no
/// resubscription, and a hello right after start is welcomed.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_keeps_its_subscription_and_stays_ready() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes(&redis, 2).await;
    // Welcomed (join asserts it) as soon as the node is up.
    let _early = nodes[0].join("early").await;
    for node in &nodes {
        let admin = node.admin.unwrap();
        eventually("ready", Duration::from_secs(5), async || {
            get(admin, "/readyz").await.0 == 200
        })
        .await;
    }
    let idle = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < idle {
        for node in &nodes {
            assert_eq!(get(node.admin.unwrap(), "/readyz").await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &nodes {
        let (_, m) = get(node.admin.unwrap(), "/metrics").await;
        assert_eq!(metric(&m, "chatd_redis_resubscribes_total"), 0.0);
        assert_eq!(metric(&m, "chatd_redis_up"), 1.0);
    }
}
