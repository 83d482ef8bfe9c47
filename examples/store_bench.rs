//! The store's writer on its own: how many messages a second it commits, what it costs in CPU,
//! and what a message takes on disk. Also fills a database for the startup benchmark.
//!
//!     cargo run --release --example store_bench -- PATH MESSAGES ROOMS [TEXT_BYTES]
//!
//! PATH may be a PostgreSQL URL (`postgres://…`): the same benchmark against that store (its
//! size on disk is then what PostgreSQL reports for chatd's tables).
//!
//! Appends MESSAGES messages spread over ROOMS rooms through `Store::append` (as the broker does,
//! waiting whenever the queue is full), closes the store (everything committed), and prints one
//! JSON line. `scripts/bench-store.py` runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatd::config::Config;
use chatd::metrics::Metrics;
use chatd::protocol::{ChatMessage, Role, timestamp};
use chatd::store::{Store, StoreSettings};

/// CPU seconds of this process's threads whose name starts with `prefix` (Linux).
fn thread_cpu(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total += (field(14) + field(15)) / ticks;
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: store_bench PATH MESSAGES ROOMS [TEXT_BYTES]");
        std::process::exit(2);
    }
    let path = &args[1];
    let messages: u64 = args[2].parse().expect("MESSAGES");
    let rooms: u64 = args[3].parse().expect("ROOMS");
    let size: usize = args.get(4).map_or(100, |s| s.parse().expect("TEXT_BYTES"));
    let postgres = path.starts_with("postgres://") || path.starts_with("postgresql://");
    let mut config = Config::default();
    if postgres {
        config.storage.url = chatd::config::SecretUrl::new(path.clone());
    } else {
        config.storage.path = path.clone();
    }
    let settings = StoreSettings::from_config(&config).expect("a path");
    let metrics = Metrics::new();
    let (store, loaded) = Store::open(settings, &metrics).expect("open the database");
    let epoch: Arc<str> = loaded.epoch.as_str().into();
    // Chat-like text: words from a 5,000-word vocabulary, common ones far more often (Zipf-ish),
    // so the search index sees both long and short posting lists.
    let vocabulary: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                "{}{i}",
                ["de", "fri", "lu", "re", "me", "co", "bu", "gr"][i % 8]
            )
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let names: Vec<Arc<str>> = (0..rooms).map(|r| format!("room{r}").into()).collect();
    let mut seqs = vec![0u64; rooms as usize];
    let started = Instant::now();
    let mut waits = 0u64;
    for id in 1..=messages {
        let room = (id % rooms) as usize;
        seqs[room] += 1;
        let mut text = String::with_capacity(size + 16);
        while text.len() < size {
            let r = rng.f64();
            text.push_str(&vocabulary[(r * r * r * vocabulary.len() as f64) as usize]);
            text.push(' ');
        }
        text.truncate(size);
        let msg = Arc::new(ChatMessage {
            id: loaded.next_id + id,
            seq: seqs[room],
            ts: timestamp().into(),
            room: names[room].to_string().into(),
            from: format!("user{}", id % 1000).into(),
            role: Role::User,
            text: text.into(),
            action: false,
            ..Default::default()
        });
        // The broker refuses a say when the queue is full or the writer behind; a benchmark of
        // the writer waits.
        while store.append(msg.clone(), epoch.clone()).is_err() {
            waits += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let queued = started.elapsed();
    assert!(store.sync(Duration::from_secs(600)), "everything committed");
    let elapsed = started.elapsed();
    let writer_cpu = thread_cpu("chatd-store-wri");
    // Then the search index catches up (between commits, in the background).
    while metrics.search_unindexed.get() > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let indexed = started.elapsed();
    let index_cpu = thread_cpu("chatd-store-wri") - writer_cpu;
    store.close(Duration::from_secs(600));
    drop(store);
    let bytes = if postgres {
        let mut db = postgres::Client::connect(path, postgres::NoTls).expect("connect");
        let row = db
            .query_one(
                "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                &[],
            )
            .expect("sizes");
        row.get::<_, i64>(0) as u64
    } else {
        // The file as it rests: the write-ahead log folded in.
        rusqlite::Connection::open(path)
            .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);"))
            .expect("checkpoint");
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{path}{s}")).ok())
            .map(|m| m.len())
            .sum()
    };
    println!(
        "{{\"messages\":{messages},\"rooms\":{rooms},\"text_bytes\":{size},\"secs\":{:.3},\"queued_secs\":{:.3},\
         \"messages_per_sec\":{:.0},\"writer_cpu_secs\":{writer_cpu:.2},\"writer_us_per_message\":{:.2},\
         \"full_queue_waits\":{waits},\"indexed_secs\":{:.3},\"index_us_per_message\":{:.2},\
         \"file_bytes\":{bytes},\"bytes_per_message\":{:.1}}}",
        elapsed.as_secs_f64(),
        queued.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        writer_cpu * 1e6 / messages as f64,
        indexed.as_secs_f64(),
        index_cpu * 1e6 / messages as f64,
        bytes as f64 / messages as f64,
    );
}
