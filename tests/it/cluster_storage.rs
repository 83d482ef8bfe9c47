//! PostgreSQL (`storage.url`, a private server per test) behind the real binary. A single node
//! keeps history, search and numbering in it across restarts; one that cannot reach it exits 78
//! naming the key. A cluster with it: every node searches,
//! pages back past the Redis stream and reads private-message history, whichever node the words
//! were said on; a node killed with SIGKILL loses nothing that was committed, and Redis's recent
//! stream fills what was not; a numbering Redis lost (an idle room expired, Redis emptied)
//! carries on from the store instead of starting again. Nodes are real binaries.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    Daemon, Redis, SyncClient, chatd_command, code_and_stderr, free_port, http, metric,
};
use crate::postgres_server::Postgres;
use crate::storage::{hello, request, say, seqs, texts};

const SECRET: &str = "cluster-storage-secret-long-enough-0123456789";

fn node(redis: &Redis, pg: &Postgres, id: &str) -> Daemon {
    let url = redis.url.clone();
    let env = [
        ("CHATD_CLUSTER__REDIS_URL", url.as_str()),
        ("CHATD_CLUSTER__NODE_ID", id),
        ("CHATD_CLUSTER__NAME_TTL_SECS", "2"),
        ("CHATD_CLUSTER__PRESENCE_TTL_SECS", "2"),
        ("CHATD_CLUSTER__ROOM_TTL_SECS", "2"),
        ("CHATD_CLUSTER__HEARTBEAT_SECS", "1"),
        ("CHATD_CLUSTER__HISTORY_SIZE", "5"),
        ("CHATD_CLUSTER__HISTORY_BYTES", "200000"),
        ("CHATD_STORAGE__URL", pg.url.as_str()),
        ("CHATD_AUTH__MODE", "token"),
        ("CHATD_AUTH__SECRET", SECRET),
        ("CHATD_LIMITS__RATE_PER_SEC", "0"),
    ];
    Daemon::start(&[], &env)
}

fn login(d: &Daemon, name: &str) -> SyncClient {
    let token = crate::security::mint(&[name], SECRET);
    let (c, w) = hello(d, name, json!({"token": token}));
    assert_eq!(w["type"], "welcome", "{w}");
    c
}

/// Asks `c` the same request until `done` says the answer is complete (other nodes' messages
/// are in the store within a commit interval).
fn until(c: &mut SyncClient, ask: Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = request(c, ask.clone());
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "never complete: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored(pg: &Postgres) -> u64 {
    pg.sql("chatd", "SELECT count(*) FROM messages")
        .parse()
        .unwrap()
}

/// Search, PM history and paging back past `cluster.history_size` (5 here) work on every node.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn every_node_searches_pages_back_and_reads_conversations() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let (a, b) = (node(&redis, &pg, "a"), node(&redis, &pg, "b"));
    let mut alice = login(&a, "alice");
    let mut bob = login(&b, "bob");
    for i in 1..=20 {
        let text = if i == 7 {
            "the zebra crossing".to_string()
        } else {
            format!("m{i}")
        };
        assert_eq!(say(&mut alice, "lobby", &text)["type"], "ack");
    }
    let page = until(
        &mut bob,
        json!({"type": "history", "room": "lobby", "limit": 100}),
        |p| p["messages"].as_array().is_some_and(|m| m.len() == 20),
    );
    assert_eq!(
        seqs(&page["messages"]),
        (1..=20).collect::<Vec<_>>(),
        "no hole"
    );
    assert_ne!(page["more"], true);
    let older = request(
        &mut bob,
        json!({"type": "history", "room": "lobby", "before": 10, "limit": 4}),
    );
    assert_eq!(seqs(&older["messages"]), [6, 7, 8, 9]);
    assert_eq!(older["more"], true);
    // A resume from before the stream (5 messages) is resumed from the store: paged forward.
    let epoch = request(&mut bob, json!({"type": "join", "room": "lobby"}))["epoch"].clone();
    let (mut carol, w) = hello(
        &b,
        "carol",
        json!({"token": crate::security::mint(&["carol"], SECRET), "since": 3, "epoch": epoch}),
    );
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["more"], true, "{w}");
    let next = request(
        &mut carol,
        json!({"type": "history", "room": "lobby", "after": 3, "limit": 5}),
    );
    assert_eq!(seqs(&next["messages"]), [4, 5, 6, 7, 8]);
    let found = until(&mut bob, json!({"type": "search", "query": "ZEBRA"}), |f| {
        f["messages"].as_array().is_some_and(|m| !m.is_empty())
    });
    assert_eq!(texts(&found["messages"]), ["the zebra crossing"]);
    assert_eq!(found["messages"][0]["from"], "alice");
    request(
        &mut alice,
        json!({"type": "pm", "to": "bob", "text": "a secret plan"}),
    );
    request(
        &mut bob,
        json!({"type": "pm", "to": "alice", "text": "count me in"}),
    );
    for (c, with) in [(&mut alice, "BOB"), (&mut bob, "Alice")] {
        let page = until(
            c,
            json!({"type": "history", "with": with, "limit": 10}),
            |p| p["messages"].as_array().is_some_and(|m| m.len() == 2),
        );
        assert_eq!(texts(&page["messages"]), ["a secret plan", "count me in"]);
    }
    // Private text is not searchable by others (search covers one's rooms).
    let found = request(&mut bob, json!({"type": "search", "query": "secret"}));
    assert_eq!(found["messages"], json!([]), "{found}");
}

/// SIGKILL a node: what it committed stays, Redis's stream fills the uncommitted tail, and the
/// node left carries on storing.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn a_killed_node_loses_nothing_committed() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let (mut a, b) = (node(&redis, &pg, "a"), node(&redis, &pg, "b"));
    let mut alice = login(&a, "alice");
    for i in 1..=30 {
        say(&mut alice, "lobby", &format!("m{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&pg) < 30 {
        assert!(Instant::now() < deadline, "committed within the interval");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(say(&mut alice, "lobby", "the last word")["type"], "ack");
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    let mut bob = login(&b, "bob");
    let page = request(
        &mut bob,
        json!({"type": "history", "room": "lobby", "limit": 100}),
    );
    assert_eq!(
        seqs(&page["messages"]),
        (1..=31).collect::<Vec<_>>(),
        "{page}"
    );
    assert_eq!(say(&mut bob, "lobby", "carry on")["seq"], 32);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql(
        "chatd",
        "SELECT count(*) FROM messages WHERE text = 'carry on'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the surviving node stores");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Redis forgets an idle room after `cluster.room_ttl_secs`, and everything when it is emptied:
/// the numbering carries on from the store (no seq or id given out twice), and history reaches
/// across.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn a_numbering_redis_lost_carries_on_from_the_store() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let a = node(&redis, &pg, "a");
    let mut alice = login(&a, "alice");
    request(&mut alice, json!({"type": "join", "room": "dev"}));
    let mut last_id = 0;
    for i in 1..=3 {
        last_id = say(&mut alice, "dev", &format!("d{i}"))["id"]
            .as_u64()
            .unwrap();
    }
    request(&mut alice, json!({"type": "leave", "room": "dev"}));
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.cli(&["--raw", "EXISTS", "chatd:epoch:dev"]).trim() != "0" {
        assert!(Instant::now() < deadline, "the idle room expires");
        std::thread::sleep(Duration::from_millis(100));
    }
    request(&mut alice, json!({"type": "join", "room": "dev"}));
    let ack = say(&mut alice, "dev", "d4");
    assert_eq!(ack["seq"], 4, "seq carries on: {ack}");
    assert!(ack["id"].as_u64().unwrap() > last_id);
    let page = request(
        &mut alice,
        json!({"type": "history", "room": "dev", "limit": 10}),
    );
    assert_eq!(texts(&page["messages"]), ["d1", "d2", "d3", "d4"]);
    // Redis emptied: ids and seqs skip past anything a node may still hold uncommitted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&pg) < 4 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.cli(&["FLUSHALL"]);
    let ack = say(&mut alice, "dev", "d5");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(ack["seq"].as_u64().unwrap() > 4 && ack["id"].as_u64().unwrap() > last_id + 1);
    let page = request(
        &mut alice,
        json!({"type": "history", "room": "dev", "limit": 10}),
    );
    assert_eq!(
        texts(&page["messages"]),
        ["d1", "d2", "d3", "d4", "d5"],
        "{page}"
    );
}

/// A single node on PostgreSQL: history, search and numbering survive a restart; an unreachable
/// server is a configuration error (exit 78, naming the key, the password not shown), also for
/// `check-config`.
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn a_single_node_keeps_everything_in_postgres() {
    let pg = Postgres::start();
    let env = [
        ("CHATD_STORAGE__URL", pg.url.as_str()),
        ("CHATD_LIMITS__RATE_PER_SEC", "0"),
    ];
    let d = Daemon::start(&[], &env);
    let mut alice = SyncClient::join(d.addr, "alice");
    for i in 1..=3 {
        assert_eq!(say(&mut alice, "lobby", &format!("kept {i}"))["seq"], i);
    }
    drop(alice);
    crate::storage::stop(d);
    let d = Daemon::start(&[], &env);
    let mut bob = SyncClient::join(d.addr, "bob");
    let ack = say(&mut bob, "lobby", "after the restart");
    assert_eq!(ack["seq"], 4, "{ack}");
    let page = request(
        &mut bob,
        json!({"type": "history", "room": "lobby", "limit": 10}),
    );
    assert_eq!(
        texts(&page["messages"]),
        ["kept 1", "kept 2", "kept 3", "after the restart"]
    );
    let found = request(&mut bob, json!({"type": "search", "query": "KEPT 2"}));
    assert_eq!(texts(&found["messages"]), ["kept 2"]);
    // Another single node may not share its database.
    let mut second = chatd_command();
    second.envs(env).env("CHATD_SERVER__PORT", "0");
    let (code, err) = code_and_stderr(&mut second);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("storage.url") && err.contains("another chatd"),
        "{err}"
    );

    let gone = format!("postgres://chatd:hunter2@127.0.0.1:{}/chatd", free_port());
    for args in [&["check-config"][..], &[][..]] {
        let mut cmd = chatd_command();
        cmd.args(args)
            .env("CHATD_STORAGE__URL", &gone)
            .env("CHATD_SERVER__PORT", "0");
        let (code, err) = code_and_stderr(&mut cmd);
        assert_eq!(code, Some(78), "{args:?}: {err}");
        assert!(err.contains("storage.url"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the password is never shown: {err}"
        );
    }
}

/// PostgreSQL going away under a running node: `say` is refused `unavailable` (never acked and
/// lost), `/readyz` is 503 and the failures are counted; when it is back the node recovers by
/// itself, and every acknowledged message is stored.
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn a_node_rides_out_a_postgres_outage() {
    let mut pg = Postgres::start();
    let env = [
        ("CHATD_STORAGE__URL", pg.url.as_str()),
        ("CHATD_LIMITS__RATE_PER_SEC", "0"),
        ("CHATD_ADMIN__LISTEN", "127.0.0.1:0"),
    ];
    let d = Daemon::start(&[], &env);
    let admin = d.admin.expect("an admin listener");
    let mut alice = SyncClient::join(d.addr, "alice");
    let mut acked = vec![say(&mut alice, "lobby", "before")["seq"].as_u64().unwrap()];
    pg.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "says are refused while PostgreSQL is gone"
        );
        let reply = say(&mut alice, "lobby", "during");
        if reply["type"] != "ack" {
            break reply;
        }
        acked.push(reply["seq"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(http(admin, "GET", "/readyz").0, 503);
    assert!(
        metric(
            &http(admin, "GET", "/metrics").1,
            "chatd_storage_errors_total"
        ) >= 1.0
    );
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(admin, "GET", "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "ready again by itself");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ack = say(&mut alice, "lobby", "after");
    assert_eq!(ack["type"], "ack", "{ack}");
    acked.push(ack["seq"].as_u64().unwrap());
    let want: Vec<String> = acked.iter().map(u64::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = pg.sql(
            "chatd",
            "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM messages",
        );
        if stored == want.join(",") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged {want:?}, stored {stored}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
