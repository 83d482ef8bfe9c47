//! What both brokers ask of the durable store (`crate::store`, SQLite or PostgreSQL): reads
//! answered late through the member's mailbox (the chat threads never wait for a database), the
//! conversation and search requests built on them, and, for the cluster's tasks, a read awaited.

use std::sync::Arc;

use crate::hub::{Answer, Member, Outcome, Refusal, Ticket};
use crate::protocol::ErrorCode;
use crate::store::{self, Store};

fn now(refusal: Refusal) -> Answer {
    Answer::Now(refusal.into())
}

/// What a failed read tells the client.
fn refusal(e: &store::ReadError) -> Refusal {
    match e {
        store::ReadError::TooBroad => Refusal::new(
            ErrorCode::BadRequest,
            "that search matches too much to finish in time; add words, or search one room",
        ),
        store::ReadError::Failed(_) => {
            Refusal::unavailable("could not read the history; try again")
        }
    }
}

/// Answers late from a store reader: `query` runs there, and `outcome` makes what it found into
/// the outcome that goes to `me`. Refused at once without a store, or when too many reads of its
/// kind wait.
pub(crate) fn read_later(
    store: Option<&Store>,
    ticket: Ticket,
    me: &Member,
    query: store::Query,
    outcome: impl FnOnce(store::Found) -> Outcome + Send + 'static,
) -> Answer {
    let Some(store) = store else {
        return now(Refusal::unavailable(
            "history beyond memory needs durable storage (storage.path or storage.url)",
        ));
    };
    let me = me.clone();
    let search = matches!(query, store::Query::Search { .. });
    let queued = store.read(query, move |result| {
        let answer = match result {
            Ok(found) => outcome(found),
            Err(e) => refusal(&e).into(),
        };
        me.answer(ticket, answer);
    });
    if queued {
        Answer::Later
    } else if search {
        now(Refusal::unavailable(
            "the server is busy searching; try again in a moment",
        ))
    } else {
        now(Refusal::unavailable(
            "the server is busy reading history; try again",
        ))
    }
}

/// `Broker::conversation`: a page of stored private messages (`store` is `None` where PMs are
/// not kept).
pub(crate) fn conversation(
    store: Option<&Store>,
    ticket: Ticket,
    me: &Member,
    with: &str,
    before: Option<u64>,
    limit: usize,
) -> Answer {
    if store.is_none() {
        return now(Refusal::unavailable(
            "private messages are not kept on this server (only with storage and tokens)",
        ));
    }
    let query = store::Query::Pms {
        pair: store::pm_pair(me.name(), with),
        before,
        limit,
    };
    let with: Arc<str> = with.into();
    read_later(store, ticket, me, query, move |found| match found {
        store::Found::Pms(messages, more) => Outcome::Conversation {
            with,
            messages,
            more,
        },
        _ => Refusal::unavailable("could not read the conversation; try again").into(),
    })
}

/// `Broker::search`: the rooms' stored messages holding every word of `query`.
pub(crate) fn search(
    store: Option<&Store>,
    ticket: Ticket,
    me: &Member,
    rooms: &[Arc<str>],
    query: &str,
    before: Option<u64>,
    limit: usize,
) -> Answer {
    if store.is_none() {
        return now(Refusal::unavailable(
            "search needs durable history (storage.path, or storage.url in a cluster), which this server does not keep",
        ));
    }
    let asked: Arc<str> = query.into();
    let query = store::Query::Search {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        query: query.to_string(),
        before,
        limit,
    };
    read_later(store, ticket, me, query, move |found| match found {
        store::Found::Search(messages, more) => Outcome::Found {
            query: asked,
            messages: messages.into_iter().map(Arc::new).collect(),
            more,
        },
        _ => Refusal::unavailable("could not search; try again").into(),
    })
}

/// Runs `query` on a store reader and waits for it without blocking a thread (the cluster's
/// tasks): `None` when too many reads wait.
pub(crate) async fn ask(
    store: &Store,
    query: store::Query,
) -> Option<Result<store::Found, store::ReadError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !store.read(query, move |found| {
        let _ = tx.send(found);
    }) {
        return None;
    }
    rx.await.ok()
}
