//! The store contract: what every durable store keeps (SQLite's file for one node, PostgreSQL for
//! one node or a cluster), each test run against both. Pages both ways, conversations, search
//! with any input, marks, pruning, numbering across clean and unclean stops; then what only a
//! server store meets: a database that is not there, one that goes away and comes back, and
//! nodes sharing it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatd::Config;
use chatd::config::SecretUrl;
use chatd::metrics::Metrics;
use chatd::protocol::Role;
use chatd::store::{Found, Loaded, Message, Pm, Query, Refused, Store, StoreSettings, pm_pair};

use crate::postgres_server::Postgres;

/// A database of a test's own: a file in a temporary directory, or a private PostgreSQL.
pub struct Db {
    config: Config,
    pg: Option<Postgres>,
    _dir: tempfile::TempDir,
}

impl Db {
    pub(crate) fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().join("chat.db").display().to_string();
        Db {
            config,
            pg: None,
            _dir: dir,
        }
    }

    pub(crate) fn postgres() -> Db {
        let pg = Postgres::start();
        let mut config = Config::default();
        config.storage.url = SecretUrl::new(pg.url.clone());
        Db {
            config,
            pg: Some(pg),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn settings(&self) -> StoreSettings {
        StoreSettings::from_config(&self.config).expect("a store")
    }

    pub(crate) fn open(&self) -> (Store, Loaded) {
        Store::open(self.settings(), &Metrics::new()).expect("the store opens")
    }

    /// A kill: the store's connections end without a clean stop (SQLite's are left open, as a
    /// killed process leaves its file).
    fn kill(&self, store: Store) {
        if let Some(pg) = &self.pg {
            pg.drop_chatd_connections();
        }
        std::mem::forget(store);
    }
}

/// Runs a contract test against both stores (PostgreSQL's is ignored, saying why, where it is
/// not installed). `store_accounts.rs` uses it too.
macro_rules! store_contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&$crate::store_contract::Db::sqlite());
            }

            #[test]
            #[cfg_attr(
                chatd_no_postgres,
                ignore = "needs PostgreSQL (apt install postgresql)"
            )]
            fn postgres() {
                super::$name(&$crate::store_contract::Db::postgres());
            }
        }
    )*};
}

store_contract!(
    pages_go_both_ways_and_numbering_survives_a_restart,
    conversations_page_back_and_belong_to_the_pair,
    search_matches_every_word_and_any_input_is_safe,
    marks_say_where_a_room_stands,
    pruning_keeps_each_rooms_newest,
    an_unclean_stop_renumbers,
    a_full_queue_refuses_and_loses_nothing_accepted,
);

fn message(id: u64, seq: u64, room: &str, text: &str) -> Arc<Message> {
    Arc::new(Message {
        id,
        seq,
        ts: Cow::Owned(chatd::protocol::timestamp()),
        room: Cow::Owned(room.into()),
        from: Cow::Borrowed("ann"),
        role: Role::User,
        text: Cow::Owned(text.to_string()),
        action: false,
        ..Default::default()
    })
}

/// Appends `texts` to `room` as seqs from `first_seq`, ids from `first_id`, and waits for them
/// to be committed.
pub(crate) fn say(
    store: &Store,
    epoch: &str,
    room: &str,
    first_id: u64,
    first_seq: u64,
    texts: &[&str],
) {
    for (i, text) in texts.iter().enumerate() {
        let i = i as u64;
        store
            .append(
                message(first_id + i, first_seq + i, room, text),
                epoch.into(),
            )
            .expect("queued");
    }
    assert!(store.sync(Duration::from_secs(30)), "committed");
}

/// Runs `query` on the store's readers and waits for what it found.
fn read(store: &Store, query: Query) -> Found {
    let (tx, rx) = std::sync::mpsc::channel();
    assert!(store.read(query, move |found| {
        let _ = tx.send(found);
    }));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("an answer")
        .expect("found")
}

fn page(store: &Store, before: Option<u64>, after: Option<u64>, limit: usize) -> (Vec<u64>, bool) {
    let query = Query::Page {
        room: "lobby".into(),
        before,
        after,
        limit,
    };
    match read(store, query) {
        Found::Page(messages, more) => (messages.iter().map(|m| m.seq).collect(), more),
        other => panic!("not a page: {other:?}"),
    }
}

fn search(store: &Store, rooms: &[&str], words: &str, before: Option<u64>) -> Vec<String> {
    let query = Query::Search {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        query: words.into(),
        before,
        limit: 50,
    };
    match read(store, query) {
        Found::Search(messages, _) => messages.iter().map(|m| m.text.to_string()).collect(),
        other => panic!("not search results: {other:?}"),
    }
}

fn pages_go_both_ways_and_numbering_survives_a_restart(db: &Db) {
    let (epoch, next) = {
        let (store, loaded) = db.open();
        assert!(loaded.rooms.is_empty());
        let texts: Vec<String> = (1..=30).map(|i| format!("m{i}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        say(&store, &loaded.epoch, "lobby", loaded.next_id, 1, &texts);
        assert_eq!(page(&store, None, None, 10), ((21..=30).collect(), true));
        assert_eq!(
            page(&store, Some(21), None, 10),
            ((11..=20).collect(), true)
        );
        assert_eq!(
            page(&store, Some(11), None, 10),
            ((1..=10).collect(), false)
        );
        assert_eq!(
            page(&store, None, Some(25), 10),
            ((26..=30).collect(), false)
        );
        assert_eq!(page(&store, None, Some(0), 5), ((1..=5).collect(), true));
        let mark = store.mark("lobby").expect("the room is known");
        assert_eq!((mark.first_seq, mark.last_seq), (1, 30));
        store.close(Duration::from_secs(30));
        (loaded.epoch, loaded.next_id + 30)
    };
    let (store, loaded) = db.open();
    assert_eq!(loaded.rooms.len(), 1);
    let room = &loaded.rooms[0];
    assert_eq!(room.name, "lobby");
    assert_eq!(room.epoch, epoch, "a graceful stop keeps the epoch");
    assert_eq!((room.first_seq, room.last_seq), (1, 30));
    assert_eq!(room.recent.len(), Config::default().history.size.min(30));
    assert_eq!(room.recent.last().unwrap().text, "m30");
    assert!(loaded.next_id >= next, "ids go on from where they were");
    store.close(Duration::from_secs(30));
}

fn conversations_page_back_and_belong_to_the_pair(db: &Db) {
    let (store, loaded) = db.open();
    let pm = |id: u64, from: &str, to: &str, text: &str| Pm {
        id,
        ts: chatd::protocol::timestamp(),
        from: from.into(),
        to: to.into(),
        role: Role::User,
        text: text.into(),
        action: false,
        ..Default::default()
    };
    let id = loaded.next_id;
    store.append_pm(pm(id, "ann", "Bob", "hi bob")).unwrap();
    store.append_pm(pm(id + 1, "bob", "ann", "hi ann")).unwrap();
    store
        .append_pm(pm(id + 2, "ann", "cid", "not for bob"))
        .unwrap();
    store
        .append_pm(pm(id + 3, "Ann", "bob", "still there?"))
        .unwrap();
    assert!(
        store.sync(Duration::from_secs(30)),
        "not committed within 30 s; the store {} keeping up",
        if store.healthy() { "is" } else { "is not" }
    );
    let query = |before| Query::Pms {
        pair: pm_pair("BOB", "ann"),
        before,
        limit: 2,
    };
    let Found::Pms(newest, more) = read(&store, query(None)) else {
        panic!("not a conversation")
    };
    let texts: Vec<&str> = newest.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["hi ann", "still there?"], "oldest first");
    assert!(more);
    let Found::Pms(older, more) = read(&store, query(Some(newest[0].id))) else {
        panic!("not a conversation")
    };
    assert_eq!(older.len(), 1);
    assert_eq!(
        (older[0].from.as_str(), older[0].to.as_str()),
        ("ann", "Bob")
    );
    assert!(!more);

    // An account's conversations, newest first: with whom (as they spell it), the last id, the
    // marker (what it read, or later what it wrote) and what is unread past it.
    let mut a = chatd::store::accounts::open(&db.settings()).expect("accounts beside the store");
    let seen = |a: &mut Box<dyn chatd::store::accounts::AccountsDb>, key: &str| {
        a.conversations(key, 10)
            .unwrap()
            .into_iter()
            .map(|c| (c.with, c.last - id, c.read.saturating_sub(id), c.unread))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seen(&mut a, "bob"),
        [("Ann".to_string(), 3, 1, 1)],
        "bob wrote id+1, so he read what came before it"
    );
    assert_eq!(
        seen(&mut a, "ann"),
        [("bob".to_string(), 3, 3, 0), ("cid".to_string(), 2, 2, 0)]
    );
    assert_eq!(a.conversations("ann", 1).unwrap().len(), 1, "bounded");
    let waiting = a.unread_pms("bob", "ann", id + 1, 10).unwrap();
    let texts: Vec<&str> = waiting.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["still there?"]);
    a.read_pm("bob", "ann", id + 3).unwrap();
    a.read_pm("bob", "ann", id).unwrap();
    let bob = a
        .conversation("bob", "ANN")
        .unwrap()
        .expect("they have one");
    assert_eq!(
        (bob.read, bob.unread),
        (id + 3, 0),
        "a marker moves only forward"
    );
    assert_eq!(a.conversation("bob", "cid").unwrap(), None);
    a.remember("dora", "Dora", Role::User).unwrap();
    a.remember("dora", "DORA", Role::Admin).unwrap();
    let dora = a.find("dora").unwrap().expect("a token's subject is kept");
    assert_eq!(
        (dora.name.as_str(), dora.hash.as_str()),
        ("Dora", ""),
        "the first stays"
    );
    drop(a);
    store.close(Duration::from_secs(30));
}

fn search_matches_every_word_and_any_input_is_safe(db: &Db) {
    let (store, loaded) = db.open();
    let e = &loaded.epoch;
    let id = loaded.next_id;
    say(
        &store,
        e,
        "lobby",
        id,
        1,
        &["the quick brown fox", "Quick silver", "a brown bear"],
    );
    say(&store, e, "ops", id + 3, 1, &["quick deploy"]);
    assert_eq!(
        search(&store, &["lobby"], "quick", None),
        ["Quick silver", "the quick brown fox"],
        "newest first, any case, only the rooms asked"
    );
    assert_eq!(
        search(&store, &["lobby"], "QUICK brown", None),
        ["the quick brown fox"]
    );
    assert_eq!(search(&store, &["lobby", "ops"], "quick", None).len(), 3);
    assert_eq!(
        search(&store, &["lobby"], "quick", Some(id + 1)),
        ["the quick brown fox"],
        "ids below `before`"
    );
    assert!(search(&store, &["lobby"], "quick zebra", None).is_empty());
    let hostile = [
        "\"quick",
        "quick & brown",
        "!quick",
        "quick:*",
        "quick | bear",
        "-quick",
        "'; DROP TABLE messages; --",
        "(((",
        "\\",
        "NEAR(quick brown)",
    ];
    for query in hostile {
        // Answered, never an error: the words are matched, the rest is not syntax.
        let _ = search(&store, &["lobby"], query, None);
    }
    assert_eq!(
        search(&store, &["lobby"], "quick:* & brown!", None),
        ["the quick brown fox"]
    );
    let long: String = "&!:*\"()|<-> ".repeat(350);
    assert!(long.len() >= 4096);
    assert!(search(&store, &["lobby"], &long, None).is_empty());
    store.close(Duration::from_secs(30));
}

fn marks_say_where_a_room_stands(db: &Db) {
    let (store, loaded) = db.open();
    say(
        &store,
        &loaded.epoch,
        "lobby",
        loaded.next_id,
        1,
        &["one", "two"],
    );
    let Found::Mark(mark, next) = read(
        &store,
        Query::Mark {
            room: "lobby".into(),
        },
    ) else {
        panic!("not a mark")
    };
    let mark = mark.expect("the room is stored");
    assert_eq!((mark.first_seq, mark.last_seq), (1, 2));
    assert_eq!(&*mark.epoch, loaded.epoch);
    assert!(next >= loaded.next_id + 2);
    let Found::Mark(none, _) = read(
        &store,
        Query::Mark {
            room: "nowhere".into(),
        },
    ) else {
        panic!("not a mark")
    };
    assert!(none.is_none());
    store.close(Duration::from_secs(30));
}

fn pruning_keeps_each_rooms_newest(db: &Db) {
    let mut settings = db.settings();
    settings.max_messages_per_room = 5;
    settings.prune_interval = Duration::from_millis(50);
    let (store, loaded) = Store::open(settings, &Metrics::new()).unwrap();
    let texts: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    say(&store, &loaded.epoch, "lobby", loaded.next_id, 1, &texts);
    let deadline = Instant::now() + Duration::from_secs(30);
    while page(&store, None, None, 50).0 != (16..=20).collect::<Vec<_>>() {
        assert!(Instant::now() < deadline, "pruned to the newest 5");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.first_seq("lobby"), Some(16), "the mark moved with it");
    store.close(Duration::from_secs(30));
}

fn an_unclean_stop_renumbers(db: &Db) {
    let (store, loaded) = db.open();
    say(
        &store,
        &loaded.epoch,
        "lobby",
        loaded.next_id,
        1,
        &["a", "b", "c"],
    );
    let before = store.mark("lobby").unwrap();
    db.kill(store);
    let (store, reloaded) = db.open();
    let room = &reloaded.rooms[0];
    assert_ne!(*room.epoch, *before.epoch, "a new epoch: resumers reload");
    assert_eq!(room.last_seq, 3, "seqs go on");
    assert!(
        reloaded.next_id > loaded.next_id + 3 + 1000,
        "ids skip what may have been handed out uncommitted"
    );
    assert_eq!(
        page(&store, None, None, 10).0,
        [1, 2, 3],
        "nothing committed is lost"
    );
    store.close(Duration::from_secs(30));
}

fn a_full_queue_refuses_and_loses_nothing_accepted(db: &Db) {
    let mut settings = db.settings();
    settings.queue_bytes = 64 * 1024;
    let (store, loaded) = Store::open(settings, &Metrics::new()).unwrap();
    let text = "x".repeat(4096);
    let (mut accepted, mut refused) = (0u64, 0);
    for i in 0..2_000u64 {
        let msg = message(loaded.next_id + i, accepted + 1, "lobby", &text);
        match store.append(msg, loaded.epoch.as_str().into()) {
            Ok(()) => accepted += 1,
            Err(Refused::Full | Refused::Behind) => refused += 1,
            Err(other) => panic!("refused for another reason: {other:?}"),
        }
    }
    assert!(refused > 0, "64 KiB cannot hold 2,000 × 4 KiB at once");
    assert!(
        store.sync(Duration::from_secs(30)),
        "not committed within 30 s; the store {} keeping up",
        if store.healthy() { "is" } else { "is not" }
    );
    let (seqs, _) = page(&store, None, None, 2_000);
    assert_eq!(
        seqs,
        (1..=accepted).collect::<Vec<_>>(),
        "every accepted message is stored"
    );
    store.close(Duration::from_secs(30));
}

/// PostgreSQL that is not there at start: refused, naming the key (chatd exits 78).
#[test]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
fn an_unreachable_postgres_is_refused_naming_the_key() {
    let port = crate::redis_server::free_port();
    let mut config = Config::default();
    config.storage.url = SecretUrl::new(format!("postgres://chatd:secret@127.0.0.1:{port}/chatd"));
    let settings = StoreSettings::from_config(&config).unwrap();
    let e = Store::open(settings, &Metrics::new()).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("storage.url"), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is never shown: {text}"
    );
}

/// PostgreSQL going away: writes are refused and the store is unhealthy (`/readyz` 503); when
/// it is back, both recover by themselves and nothing committed before is lost.
#[test]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
fn a_lost_postgres_refuses_writes_then_recovers() {
    let mut db = Db::postgres();
    let (store, loaded) = db.open();
    say(
        &store,
        &loaded.epoch,
        "lobby",
        loaded.next_id,
        1,
        &["before"],
    );
    db.pg.as_mut().unwrap().kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 2;
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "writes fail while PostgreSQL is gone"
        );
        match store.append(
            message(loaded.next_id + seq, seq, "lobby", "during"),
            loaded.epoch.as_str().into(),
        ) {
            Ok(()) => seq += 1,
            Err(why) => break why,
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        matches!(refused, Refused::Failing | Refused::Behind),
        "{refused:?}"
    );
    assert!(!store.healthy());
    db.pg.as_mut().unwrap().restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.healthy() {
        assert!(Instant::now() < deadline, "the store recovers by itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        store.sync(Duration::from_secs(30)),
        "not committed within 30 s; the store {} keeping up",
        if store.healthy() { "is" } else { "is not" }
    );
    let (seqs, _) = page(&store, None, None, 100);
    assert_eq!(
        seqs,
        (1..seq).collect::<Vec<_>>(),
        "every accepted message is stored"
    );
    store.close(Duration::from_secs(30));
}

/// Cluster nodes share one database: each writes what it numbered and reads what the others
/// wrote; a single node is refused a database a cluster uses.
#[test]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
fn cluster_nodes_share_a_database_a_single_node_may_not() {
    let db = Db::postgres();
    let mut config = db.config.clone();
    config.cluster.redis_url = SecretUrl::new("redis://127.0.0.1:1/0");
    let settings = StoreSettings::from_config(&config).unwrap();
    assert!(settings.shared);
    let (a, _) = Store::open(settings.clone(), &Metrics::new()).unwrap();
    let (b, _) = Store::open(settings, &Metrics::new()).unwrap();
    use chatd::store::Admitted;
    for (store, id, seq) in [(&a, 1, 1), (&b, 2, 2), (&a, 3, 3)] {
        store.admits(10).unwrap();
        store
            .append_admitted(Admitted::Message(
                message(id, seq, "lobby", "shared"),
                "e".into(),
            ))
            .unwrap();
    }
    assert!(a.sync(Duration::from_secs(30)) && b.sync(Duration::from_secs(30)));
    assert_eq!(page(&b, None, None, 10).0, [1, 2, 3]);
    assert_eq!(search(&a, &["lobby"], "shared", None).len(), 3);
    let e = Store::open(db.settings(), &Metrics::new()).unwrap_err();
    assert!(e.to_string().contains("another chatd"), "{e}");
    a.close(Duration::from_secs(30));
    b.close(Duration::from_secs(30));
}

/// `sslmode=require`: TLS, verified against `storage.ca_cert`; without that CA (the system's roots
/// do not know it) the store is refused, naming the key, never connecting in the clear instead.
#[test]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
fn postgres_over_tls_is_verified() {
    let certs = tempfile::tempdir().unwrap();
    let out = crate::helpers::chatd_command()
        .args(["cert", "--host", "127.0.0.1", "--out"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pg = Postgres::start_with(|dir| {
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(certs.path().join(f), dir.join(f)).unwrap();
        }
        let key = dir.join("key.pem");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", dir.join("cert.pem").display()),
            format!("ssl_key_file={}", key.display()),
        ]
    });
    let mut config = Config::default();
    config.storage.url = SecretUrl::new(format!("{}?sslmode=require", pg.url));
    let e = Store::open(
        StoreSettings::from_config(&config).unwrap(),
        &Metrics::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("storage.url"), "{e}");
    config.storage.ca_cert = certs.path().join("ca.pem").display().to_string();
    let (store, loaded) = Store::open(
        StoreSettings::from_config(&config).unwrap(),
        &Metrics::new(),
    )
    .unwrap();
    say(
        &store,
        &loaded.epoch,
        "lobby",
        loaded.next_id,
        1,
        &["over tls"],
    );
    assert_eq!(page(&store, None, None, 10).0, [1]);
    let connections = |ssl: bool| {
        pg.sql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'chatd' AND s.ssl = {ssl}"
            ),
        )
    };
    assert_ne!(connections(true), "0", "the store speaks TLS");
    assert_eq!(connections(false), "0", "and nothing in the clear");
    store.close(Duration::from_secs(30));
}
