//! The store on its own, in a temporary directory: what is appended is read back in pages both
//! ways and across a restart, with the room's numbering carried on. (Its behaviour under kills,
//! full and locked databases is tested through the real binary in tests/it/storage_faults.rs.)

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::protocol::Role;

fn settings(path: &std::path::Path) -> StoreSettings {
    let mut config = Config::default();
    config.storage.path = path.display().to_string();
    StoreSettings::from_config(&config).expect("a path")
}

fn message(id: u64, seq: u64, text: &str) -> Arc<Message> {
    Arc::new(Message {
        id,
        seq,
        ts: Cow::Owned(crate::protocol::timestamp()),
        room: Cow::Borrowed("lobby"),
        from: Cow::Borrowed("ann"),
        role: Role::User,
        text: Cow::Owned(text.to_string()),
        action: false,
    })
}

/// Runs `query` on the store's reader and waits for what it found.
fn read(store: &Store, query: Query) -> Found {
    let (tx, rx) = std::sync::mpsc::channel();
    store.read(query, move |found| {
        let _ = tx.send(found);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an answer")
        .expect("a page")
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

#[test]
fn appended_messages_come_back_in_pages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (store, loaded) = Store::open(settings(&dir.path().join("chat.db")), &metrics).unwrap();
    assert!(loaded.rooms.is_empty());
    let epoch: Arc<str> = Arc::from(loaded.epoch.as_str());
    for seq in 1..=30 {
        store
            .append(
                message(loaded.next_id + seq, seq, &format!("m{seq}")),
                epoch.clone(),
            )
            .unwrap();
    }
    assert!(store.sync(Duration::from_secs(10)), "committed");
    assert_eq!(page(&store, None, None, 10), ((21..=30).collect(), true));
    assert_eq!(
        page(&store, Some(21), None, 10),
        ((11..=20).collect(), true)
    );
    assert_eq!(
        page(&store, None, Some(25), 10),
        ((26..=30).collect(), false)
    );
    assert_eq!(page(&store, None, Some(0), 5), ((1..=5).collect(), true));
    let mark = store.mark("lobby").expect("the room is known");
    assert_eq!((mark.first_seq, mark.last_seq), (1, 30));
    store.close(Duration::from_secs(10));
}

#[test]
fn a_reopened_store_carries_each_rooms_numbering_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let metrics = Metrics::new();
    let (epoch, last_id) = {
        let (store, loaded) = Store::open(settings(&path), &metrics).unwrap();
        let epoch: Arc<str> = Arc::from(loaded.epoch.as_str());
        for seq in 1..=5 {
            store
                .append(message(loaded.next_id + seq, seq, "hello"), epoch.clone())
                .unwrap();
        }
        store.close(Duration::from_secs(10));
        (epoch, loaded.next_id + 5)
    };
    let (store, loaded) = Store::open(settings(&path), &metrics).unwrap();
    assert_eq!(loaded.rooms.len(), 1);
    let room = &loaded.rooms[0];
    assert_eq!(room.name, "lobby");
    assert_eq!(room.epoch, *epoch, "a graceful stop keeps the epoch");
    assert_eq!((room.first_seq, room.last_seq), (1, 5));
    assert_eq!(room.recent.len(), 5);
    assert!(loaded.next_id > last_id, "ids go on from where they were");
    store.close(Duration::from_secs(10));
}
