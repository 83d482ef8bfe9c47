//! The cluster under load, as users load it: a crowd connecting at once, a client pipelining its
//! messages, presence in a large room. Against a real `redis-server` per test, like `cluster`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Redis, TestServer};
use chatd::Config;

/// `n` nodes (see `cluster::nodes_with`) for crowds: the product's membership lifetimes and
/// no connection or rate caps, then `edit`.
async fn nodes_with(redis: &Arc<Redis>, n: usize, edit: impl Fn(&mut Config)) -> Vec<TestServer> {
    crate::cluster::nodes_with(redis, n, |c| {
        // Unoptimised test builds of two nodes and 2,000 clients share two cores here: a
        // deadline for that (the release binary's crowds, under the default 1 s, are measured
        // in BENCHMARKS.md, "Cluster under load").
        c.cluster.op_timeout_ms = 10_000;
        // The product's membership lifetimes (the test helpers' 2 s, refreshed every second,
        // are for tests of reaping).
        c.cluster.presence_ttl_secs = 30;
        c.cluster.name_ttl_secs = 30;
        c.cluster.heartbeat_secs = 10;
        c.limits.rate_per_sec = 0.0;
        c.server.connect_rate_per_ip = 0.0;
        c.server.max_connections_per_ip = 0;
        c.server.max_connections = 0;
        c.limits.max_rooms_per_ip = 0;
        edit(c);
    })
    .await
}

/// 2,000 clients connect to two nodes at once, everyone into `lobby`: every one is welcomed. (A
/// join once read the room's whole member set inside Redis, so a crowd was O(n²) there, and 5 %
/// to 27 % of the hellos of 1,000 got `unavailable`.)
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_connecting_to_two_nodes_is_welcomed_without_refusals() {
    const CROWD: usize = 2000;
    let started = std::time::Instant::now();
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 2, |_| {}).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut tasks = Vec::new();
    for i in 0..CROWD {
        let addr = addrs[i % 2];
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            c.wait = Duration::from_secs(30);
            let w = c.hello(&format!("u{i}")).await;
            (w, c)
        }));
    }
    let mut clients = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        let (w, c) = t.await.unwrap();
        if w["type"] == "welcome" {
            clients.push(c);
        } else {
            refused.push(w);
        }
    }
    println!(
        "{} welcomed, {} refused in {:?}",
        clients.len(),
        refused.len(),
        started.elapsed()
    );
    assert!(
        refused.is_empty(),
        "{} refused, e.g. {}",
        refused.len(),
        refused[0]
    );
    // The count every node reports is the crowd.
    let mut last = Client::connect(addrs[1]).await;
    let w = last.hello("last").await;
    assert_eq!(w["user_count"], CROWD + 1, "{}", w["user_count"]);
    let page = chatd::Config::default().limits.users_per_page;
    let listed = w["users"].as_array().unwrap().len();
    assert!(listed <= page, "a page of users, not the room: {listed}");
}

/// A client pipelining 1,000 `say`s without waiting (no rate limit: a bot, a load test) gets 1,000
/// acks, in order, and clients on both nodes get the 1,000 messages in order. (It once got 68 of
/// 200 acked and `unavailable` for the rest, and with 1,000 was closed as a slow consumer.)
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_is_acked_in_order_and_reaches_both_nodes() {
    const BURST: usize = 1000;
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 2, |_| {}).await;
    let mut here = nodes[0].join("here").await;
    let mut there = nodes[1].join("there").await;
    let sender = nodes[0].join("sender").await;
    here.expect("joined").await;
    there.expect("joined").await;
    let (mut sink, mut stream) = sender.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..BURST {
            let say = json!({"type": "say", "text": format!("m{i}"), "id": format!("s{i}")});
            sink.send(Message::text(say.to_string())).await.unwrap();
        }
        sink
    });
    let mut last_seq = 0;
    for i in 0..BURST {
        let reply: Value = loop {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("an ack in time")
                .expect("open")
                .expect("read");
            if let Message::Text(t) = m {
                break serde_json::from_str(t.as_str()).unwrap();
            }
        };
        assert_eq!(reply["type"], "ack", "{reply}");
        assert_eq!(reply["ref"], format!("s{i}"), "acks in request order");
        let seq = reply["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "{seq} after {last_seq}");
        last_seq = seq;
    }
    let _sink = writer.await.unwrap();
    for watcher in [&mut here, &mut there] {
        watcher.wait = Duration::from_secs(30);
        for i in 0..BURST {
            let m = watcher.find(|v| v["type"] == "message").await;
            assert_eq!(m["text"], format!("m{i}"), "{m}");
        }
    }
}

/// Presence in a large room is batched across nodes: past `limits.presence_batch_over` members
/// no one hears single `joined`/`left` events, only `presence` (one batch per room per tick, from
/// every node's changes), whose lists, applied in order, give the room, with each one's count
/// exactly the members so far: on both nodes, while the crowd joins and leaves on both at once.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_in_a_large_room_is_batched_across_nodes() {
    let redis = Arc::new(Redis::start());
    let nodes = nodes_with(&redis, 2, |c| {
        c.limits.presence_batch_over = 5;
        c.limits.presence_batch_ms = 100;
    })
    .await;
    let mut watcher = nodes[0].join("watcher").await;
    watcher.wait = Duration::from_secs(20);
    let mut first = Vec::new();
    for i in 0..5 {
        first.push(nodes[i % 2].join(&format!("early{i}")).await);
    }
    // Small still: each join one by one (watcher and 5 are 6: the 5th join came at 5).
    for _ in 0..5 {
        watcher.find(|v| v["type"] == "joined").await;
    }
    let mut other = nodes[1].join("other").await;
    other.wait = Duration::from_secs(20);
    watcher
        .find(|v| v["type"] == "presence" || v["type"] == "joined")
        .await;
    let mut crowd: Vec<_> = futures_util::future::join_all((0..40).map(|i| {
        let node = &nodes[i % 2];
        async move { node.join(&format!("crowd{i:02}")).await }
    }))
    .await;
    let mut members: Vec<String> = vec!["watcher".into(), "other".into()];
    members.extend((0..5).map(|i| format!("early{i}")));
    members.sort();
    let mut theirs = members.clone();
    let mut want = members.clone();
    want.extend((0..40).map(|i| format!("crowd{i:02}")));
    want.sort();
    let apply = |members: &mut Vec<String>, e: &Value| {
        for n in e["left"].as_array().into_iter().flatten() {
            members.retain(|m| m != n);
        }
        for u in e["joined"].as_array().into_iter().flatten() {
            let name = u["name"].as_str().unwrap().to_string();
            if !members.contains(&name) {
                members.push(name);
            }
        }
        members.sort();
        assert_eq!(e["user_count"], members.len(), "{e} after {members:?}");
    };
    let mut presences = 0;
    for (c, members) in [(&mut watcher, &mut members), (&mut other, &mut theirs)] {
        presences = 0;
        loop {
            let e = c.recv().await;
            match e["type"].as_str() {
                Some("presence") => {
                    presences += 1;
                    apply(members, &e);
                    if *members == want {
                        break;
                    }
                }
                Some("joined" | "left") => panic!("a large room tells joins in batches: {e}"),
                _ => {}
            }
        }
    }
    assert!(presences < 40, "{presences} presence events for 40 joins");
    // Leaves too.
    let gone: Vec<_> = crowd.drain(..20).collect();
    drop(gone);
    want.retain(|m| !(m.starts_with("crowd") && m[5..].parse::<usize>().unwrap() < 20));
    loop {
        let e = watcher.recv().await;
        match e["type"].as_str() {
            Some("presence") => {
                apply(&mut members, &e);
                if members == want {
                    break;
                }
            }
            Some("joined" | "left") => panic!("a large room tells leaves in batches: {e}"),
            _ => {}
        }
    }
    let who = watcher.request(json!({"type": "who"})).await;
    assert_eq!(who["user_count"], want.len());
}
