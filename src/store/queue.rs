//! The writer's queue: what waits to be written, bounded in bytes, and how far the writer has
//! got (which reads wait for and `/readyz` judges).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BATCH, MIN_WRITE_BYTES, Message, Pm};

/// Why a message was not queued: the `say` is refused (`unavailable`), and may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `storage.queue_bytes` of messages already wait for the writer.
    Full,
    /// The writer is behind by more than it may be (a burst, a slow or frozen disk).
    Behind,
    /// Writes fail (a full disk, `storage.max_db_bytes`, an I/O error) and are being retried.
    Failing,
    /// The store is closing.
    Closed,
}

impl Refused {
    /// What the client is told.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full | Refused::Behind => {
                "the server cannot store messages fast enough right now; try again"
            }
            Refused::Failing => {
                "the server cannot store messages right now (its storage is failing); try again later"
            }
            Refused::Closed => "the server is shutting down",
        }
    }
}

/// An operation for the writer, with when it was queued.
pub(super) struct Write {
    pub op: Op,
    pub queued: Instant,
}

pub(super) enum Op {
    Message {
        msg: Arc<Message>,
        epoch: Arc<str>,
    },
    Pm(Box<Pm>),
    /// A stored PM edited or deleted: its new state.
    PmChange(Box<Pm>),
    /// Commit everything before this, mark the database clean, then answer (a graceful stop).
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl Write {
    pub fn bytes(&self) -> usize {
        match &self.op {
            Op::Message { msg, .. } => msg.text.len() + msg.from.len() + MIN_WRITE_BYTES,
            Op::Pm(pm) | Op::PmChange(pm) => {
                pm.text.len() + pm.from.len() + pm.to.len() + MIN_WRITE_BYTES
            }
            Op::Flush(_) => 0,
        }
    }
}

/// The writer's queue: bounded in bytes, so a burst of large messages cannot grow it without end.
#[derive(Default)]
pub(super) struct QueueState {
    pub items: VecDeque<Write>,
    pub bytes: usize,
    pub closed: bool,
    /// Writes queued so far (the generation of the last one); reads wait for their generation.
    pub queued: u64,
    /// When the oldest write the writer holds (taken, not yet committed) was queued.
    pub in_flight_since: Option<Instant>,
    /// Writes the writer holds.
    pub in_flight: usize,
    /// Since when the writer has been inside one commit (a frozen disk keeps it there).
    pub busy_since: Option<Instant>,
    /// The writer sleeps until there is work: the next push wakes it. While it gathers a batch
    /// it is not woken per message (a futex wake per `say` would cost the chat thread more than
    /// queuing does), only when a full batch waits.
    pub idle: bool,
}

impl QueueState {
    /// Whether a push just made must wake the writer.
    pub fn wake(&mut self) -> bool {
        let wake = self.idle || self.items.len() == BATCH;
        self.idle = false;
        wake
    }

    /// How long the oldest uncommitted write has waited.
    pub fn lag(&self, now: Instant) -> Duration {
        let oldest = match (self.in_flight_since, self.items.front()) {
            (Some(a), Some(w)) => a.min(w.queued),
            (Some(a), None) => a,
            (None, Some(w)) => w.queued,
            (None, None) => return Duration::ZERO,
        };
        now.saturating_duration_since(oldest)
    }
}

/// What the writer has made durable, for reads that must see what was written before them.
#[derive(Default)]
pub(super) struct Progress {
    /// The generation of the last committed write.
    pub committed: u64,
}
