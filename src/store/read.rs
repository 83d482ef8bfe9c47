//! Reads: typed requests ([`Query`]) answered on a reader thread, each with its own connection
//! ([`ReadDb`]: SQLite's or PostgreSQL's). History and conversations go to one thread, searches to
//! another, so a costly search never delays someone's history; a search also runs under a time
//! budget and is answered [`ReadError::TooBroad`] past it.
//!
//! Every read first waits for the writes queued before it to be committed (so it sees every
//! acknowledged message), at most until its deadline: with a failing or frozen writer it then
//! answers from what is committed rather than not at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Mark, Message, Pm, Shared};

/// What a reader is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Up to `limit` messages of `room`, oldest first: those with `seq < before` (the newest of
    /// them), or with `seq > after` (the oldest of them).
    Page {
        /// Normalised room name.
        room: String,
        /// Messages below this seq.
        before: Option<u64>,
        /// Messages above this seq (wins over `before`).
        after: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// A conversation between two users (`pm_pair`), oldest first, ids below `before`.
    Pms {
        /// The conversation's key.
        pair: String,
        /// Messages below this id.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// Messages in `rooms` holding every word of `query`, newest first, ids below `before`.
    Search {
        /// Normalised room names.
        rooms: Vec<String>,
        /// Words as the user typed them; never passed to the index as syntax.
        query: String,
        /// Messages below this id.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// PM `id` of the conversation `pair` (`pm_pair`), as it is now.
    Pm {
        /// The conversation's key.
        pair: String,
        /// The PM's id.
        id: u64,
    },
    /// Message `id` of `room`, as it is now (what a change or a reply names).
    Message {
        /// Normalised room name.
        room: String,
        /// The message's id.
        id: u64,
    },
    /// Where `room`'s numbering stands in the database, and the next message id: what a cluster
    /// seeds Redis with when Redis has lost them, and how far back a resume can reach.
    Mark {
        /// Normalised room name.
        room: String,
    },
}

impl Query {
    pub(super) fn is_search(&self) -> bool {
        matches!(self, Query::Search { .. })
    }
}

/// What a reader found; each flag says more exist in the direction paged.
#[derive(Debug)]
pub enum Found {
    /// A page of a room.
    Page(Vec<Message>, bool),
    /// A page of a conversation.
    Pms(Vec<Pm>, bool),
    /// One message, if the room has it.
    Message(Option<Message>),
    /// One PM, if the conversation has it.
    Pm(Option<Pm>),
    /// Search results, newest first.
    Search(Vec<Message>, bool),
    /// The room's mark (`None`: the database never stored a message of it), and the next
    /// message id.
    Mark(Option<Mark>, u64),
}

/// Why a read found nothing to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A search that would take longer than its budget (`storage.search_budget_ms`).
    #[error("the search matches too much to finish in time")]
    TooBroad,
    /// The database refused or cannot be reached (logged; the client sees `unavailable`).
    #[error("{0}")]
    Failed(String),
}

/// A read waiting for its thread.
pub(super) struct Job {
    pub query: Query,
    /// The writes it must see: those queued before it.
    pub generation: u64,
    /// When it stops waiting for them.
    pub deadline: Instant,
    pub reply: Box<dyn FnOnce(Result<Found, ReadError>) + Send>,
}

/// A reader thread's hold on the database.
pub(super) trait ReadDb: Send {
    /// Answers `query`; a search stops after `budget` (when given) with [`ReadError::TooBroad`].
    fn answer(&mut self, query: &Query, budget: Option<Duration>) -> Result<Found, ReadError>;
}

/// One reader thread's world.
pub(super) struct Reader {
    shared: Arc<Shared>,
    db: Box<dyn ReadDb>,
    /// For searches: how long one may run.
    budget: Option<Duration>,
}

impl Reader {
    pub(super) fn new(
        shared: Arc<Shared>,
        db: Box<dyn ReadDb>,
        budget: Option<Duration>,
    ) -> Reader {
        Reader { shared, db, budget }
    }

    /// Answers jobs until the store is dropped.
    pub(super) fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        for job in jobs {
            self.shared
                .wait_for(job.generation, job.query.is_search(), job.deadline);
            let result = self.db.answer(&job.query, self.budget);
            if let Err(ReadError::Failed(e)) = &result {
                tracing::warn!(error = %e, "storage: a read failed");
            }
            (job.reply)(result);
        }
    }
}

/// A seq or id bound as the databases take it (the protocol keeps them below 2^63).
pub(super) fn bound(v: Option<u64>) -> i64 {
    v.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Trims a page read one past `limit`, oldest first: the flag says more exist in the direction
/// paged (`forward`: newer).
pub(super) fn trim<T>(mut rows: Vec<T>, limit: usize, forward: bool) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    if more {
        if forward {
            rows.truncate(limit);
        } else {
            rows.drain(..rows.len() - limit);
        }
    }
    (rows, more)
}
