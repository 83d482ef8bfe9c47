//! The cluster's durable side (`storage.url`: PostgreSQL, shared by every node). Redis keeps what
//! is live (names, presence, seq, pub/sub, the recent stream); the store keeps everything said.
//!
//! - **Ids and seqs** are Redis's (`P:msgid`, `P:seq:{room}`), unique and increasing across nodes.
//!   When Redis has lost them (a room expired while idle, or Redis restarted empty) the scripts
//!   refuse to number until [`Inner::seed`] has carried them on from the store (`scripts::SEED`).
//! - **Writes**: the node that numbers a message queues it for its own store writer once Redis
//!   has numbered it, before the client's ack; whether the store can take it is asked first, so
//!   what is acknowledged is stored within `storage.commit_interval_ms` (or refused).
//! - **Reads**: history pages start in the Redis stream and continue in the store; a resume past
//!   the stream is resumed when the store reaches back to it; PM history and search are the
//!   store's, on every node.

use std::sync::Arc;

use super::Inner;
use super::link::Fail;
use crate::hub::{StoredMessage, durable};
use crate::store::{self, Found, Query};

impl Inner {
    /// `'1'` when the numbering continues from a store (the scripts then ask to be seeded).
    pub(super) fn durable(&self) -> &'static str {
        if self.store.is_some() { "1" } else { "0" }
    }

    /// Runs `query` on the store and waits for it (within the operation's deadline).
    pub(super) async fn ask(&self, query: Query) -> Result<Found, Fail> {
        let Some(store) = &self.store else {
            return Err(Fail::Store("no store".into()));
        };
        match durable::ask(store, query).await {
            Some(Ok(found)) => Ok(found),
            Some(Err(e)) => Err(Fail::Store(e.to_string())),
            None => Err(Fail::Store("too many reads are waiting".into())),
        }
    }

    /// Carries Redis's lost numbering on from the store: the id counter, and `room`'s epoch and
    /// seq (see `scripts::SEED`).
    pub(super) async fn seed(&self, room: Option<&str>) -> Result<(), Fail> {
        let Found::Mark(mark, next_id) = self
            .ask(Query::Mark {
                room: room.unwrap_or_default().to_string(),
            })
            .await?
        else {
            return Err(Fail::Store("not a mark".into()));
        };
        let redis = &self.redis;
        let room_key = room.unwrap_or("-");
        let mut conn = redis.conn().await?;
        let _: i64 = redis
            .scripts
            .seed
            .key(redis.key("epoch", room_key))
            .key(redis.key("seq", room_key))
            .key(redis.global("msgid"))
            .arg(room.map_or(String::new(), |_| super::new_epoch()))
            .arg(mark.map_or(0, |m| m.last_seq))
            .arg(next_id)
            // A store that never stored anything has nothing a node could hold uncommitted.
            .arg(if next_id <= 1 { 0 } else { self.seed_gap })
            .invoke_async(&mut conn)
            .await?;
        tracing::info!(
            room = room.unwrap_or_default(),
            next_id,
            "cluster: numbering carried on from the store"
        );
        Ok(())
    }

    /// The oldest seq of `room` the store holds, if any (none without a store, or when the store
    /// cannot say now: a join is never refused for it, it is just not resumed).
    pub(super) async fn stored_from(&self, room: &str) -> Option<u64> {
        self.store.as_ref()?;
        match self.ask(Query::Mark { room: room.into() }).await {
            Ok(Found::Mark(Some(mark), _)) if mark.first_seq <= mark.last_seq => {
                Some(mark.first_seq)
            }
            _ => None,
        }
    }

    /// Fills a joiner's history up to `history.on_join` from the store when the stream holds
    /// fewer and older messages exist (Redis restarted, or the stream was trimmed by bytes). Best
    /// effort: a busy or failing store leaves the stream's history as it is, never the join
    /// refused (a crowd joining a quiet room must not queue a read each).
    pub(super) async fn top_up(&self, room: &str, history: &mut Vec<Arc<StoredMessage>>, seq: u64) {
        let want = self.settings.hub.history_on_join;
        let oldest = history.first().map_or(seq + 1, |m| m.seq);
        if self.store.is_none() || history.len() >= want || oldest <= 1 {
            return;
        }
        if let Ok((older, _)) = self
            .page(room, Some(oldest), None, want - history.len())
            .await
        {
            history.splice(0..0, older);
        }
    }

    /// A page of `room` from the store, oldest first, and whether more exist that way.
    pub(super) async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Arc<StoredMessage>>, bool), Fail> {
        if before == Some(1) || limit == 0 {
            return Ok((Vec::new(), false));
        }
        let query = Query::Page {
            room: room.into(),
            before,
            after,
            limit,
        };
        match self.ask(query).await? {
            Found::Page(messages, more) => Ok((messages.into_iter().map(Arc::new).collect(), more)),
            _ => Err(Fail::Store("not a page".into())),
        }
    }

    /// Continues a page the stream answered: back into the store when the stream ran out, or
    /// forward from the store when the stream does not start right after `after`.
    pub(super) async fn continue_page(
        &self,
        room: &str,
        page: &crate::hub::Page,
        messages: &mut Vec<Arc<StoredMessage>>,
        more: &mut bool,
    ) -> Result<(), Fail> {
        if self.store.is_none() {
            return Ok(());
        }
        match page.after {
            None if messages.len() < page.limit && !*more => {
                let before = messages.first().map(|m| m.seq).or(page.before);
                let (older, more_older) = self
                    .page(room, before, None, page.limit - messages.len())
                    .await?;
                messages.splice(0..0, older);
                *more = more_older;
            }
            Some(after) if messages.first().is_none_or(|m| m.seq != after + 1) => {
                let (newer, more_newer) = self.page(room, None, Some(after), page.limit).await?;
                if let Some(last) = newer.last().map(|m| m.seq) {
                    *more = more_newer || *more || messages.iter().any(|m| m.seq > last);
                    *messages = newer;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the store takes a message of `bytes` now: the refusal the client gets if not.
    pub(super) fn admits(&self, bytes: usize) -> Result<(), crate::hub::Refusal> {
        match &self.store {
            Some(store) => store
                .admits(bytes)
                .map_err(|why| crate::hub::Refusal::unavailable(why.reason())),
            None => Ok(()),
        }
    }

    /// Queues what Redis numbered for the store (after [`Inner::admits`]).
    pub(super) fn keep(&self, what: store::Admitted) {
        if let Some(store) = &self.store
            && store.append_admitted(what).is_err()
        {
            tracing::warn!(
                "cluster: a message was numbered while the store closed; it is not stored"
            );
        }
    }
}
