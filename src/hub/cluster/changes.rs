//! Changes to messages in a cluster: the message is found in Redis (its stream, or `over`, where
//! changed messages are kept in their current state) or in the store, checked by the shared rules
//! (`hub::changes`), and the change numbered like a message by one script that also puts the
//! changed message in place of the old one (`scripts::CHANGE`; reactions: `scripts::REACT`,
//! kept apart in `rx` so a crowd reacting at once never retries). Every read of a room's stream
//! merges both back in ([`merge`]), so history, resume and gap fill see messages as they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::envelope::Envelope;
use super::link::Fail;
use super::{Entries, Inner};
use crate::hub::changes::{self, ChangeAsk, MAX_EMOJI_PER_MESSAGE};
use crate::hub::{Member, Outcome, Receipt, Refusal, StoredMessage};
use crate::protocol::{self, Change, Reacted};
use crate::store::{Admitted, Found, Query};

/// Times an edit or a delete reads the message again when it changed meanwhile.
const TRIES: usize = 4;

/// A message found for a change, and what Redis holds of it (`None`: only the store has it).
struct Located {
    message: StoredMessage,
    held: Option<String>,
    epoch: String,
}

impl Inner {
    /// Message `id` of `room`: from Redis, or from the store when Redis no longer holds it.
    async fn target(&self, room: &str, id: u64) -> Result<Option<Located>, Fail> {
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        let found: Vec<redis::Value> = redis
            .scripts
            .find
            .key(redis.key("stream", room))
            .key(redis.key("over", room))
            .key(redis.key("seq", room))
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        if let Some(raw) = found.get(1) {
            let Ok(raw) = redis::from_redis_value_ref::<String>(raw) else {
                return Ok(None);
            };
            let env = Envelope::parse(&raw, self.settings.max_envelope);
            let epoch = env
                .as_ref()
                .map(|e| e.epoch.to_string())
                .unwrap_or_default();
            let Some(message) = env.and_then(Envelope::message) else {
                return Ok(None);
            };
            return Ok(Some(Located {
                message,
                held: Some(raw),
                epoch,
            }));
        }
        if self.store.is_none() {
            return Ok(None);
        }
        let query = Query::Message {
            room: room.to_string(),
            id,
        };
        match self.ask(query).await? {
            Found::Message(Some(message)) => Ok(Some(Located {
                message,
                held: None,
                epoch: String::new(),
            })),
            _ => Ok(None),
        }
    }

    /// Whether `room` has message `id` one may answer.
    pub(super) async fn answerable(&self, room: &str, id: u64) -> Result<bool, Fail> {
        Ok(self
            .target(room, id)
            .await?
            .is_some_and(|f| changes::is_live(&f.message)))
    }

    /// `Broker::change`.
    pub(super) async fn change(
        &self,
        me: &Member,
        room: &str,
        ask: &ChangeAsk,
    ) -> Result<Outcome, Fail> {
        if !self.is_in(me, room) {
            return Ok(Refusal::not_in_room(room).into());
        }
        let id = ask.change.target();
        for _ in 0..TRIES {
            let Some(found) = self.target(room, id).await? else {
                return Ok(changes::not_found(id).into());
            };
            if let Err(refusal) =
                changes::check(&found.message, ask, me, crate::store::now_millis())
            {
                return Ok(refusal.into());
            }
            let ts = protocol::timestamp();
            let change = changes::numbered(ask, me, room, 0, 0, &ts);
            let reply = match &ask.change {
                Change::React { .. } => self.react(me, room, &change, &found).await?,
                _ => {
                    let changed = match changes::apply(&found.message, &change) {
                        Ok(Some(changed)) => changed,
                        Ok(None) => return Ok(changes::acknowledged(id, &found.message.ts)),
                        Err(refusal) => return Ok(refusal.into()),
                    };
                    self.rewrite(me, room, &change, &found, changed).await?
                }
            };
            let (code, seq, epoch) = reply;
            match code {
                -1 => continue,
                -2 => return Ok(changes::not_found(id).into()),
                -3 => return Ok(changes::acknowledged(id, &found.message.ts)),
                -4 => {
                    return Ok(Refusal::new(
                        protocol::ErrorCode::BadRequest,
                        format!(
                            "a message carries at most {MAX_EMOJI_PER_MESSAGE} different emoji"
                        ),
                    )
                    .into());
                }
                0 => {
                    self.seed(Some(room)).await?;
                    continue;
                }
                change_id => {
                    let mut change = change;
                    change.numbered(change_id as u64, seq);
                    self.keep(Admitted::Message(Arc::new(change), epoch.into()));
                    return Ok(Outcome::Sent(Receipt {
                        id: change_id as u64,
                        seq: Some(seq),
                        ts: ts.into(),
                        to: None,
                    }));
                }
            }
        }
        Ok(Refusal::unavailable("the message kept changing; try again").into())
    }

    /// `Broker::change_pm`: the PM read from the store, changed there, told to both sides.
    pub(super) async fn change_pm(
        &self,
        me: &Member,
        with: &str,
        ask: &ChangeAsk,
    ) -> Result<Outcome, Fail> {
        let Some(store) = self.store.as_ref().filter(|_| self.settings.hub.store_pms) else {
            return Ok(changes::pms_not_kept().into());
        };
        let id = ask.change.target();
        let query = Query::Pm {
            pair: crate::store::pm_pair(me.name(), with),
            id,
        };
        let Found::Pm(Some(pm)) = self.ask(query).await? else {
            return Ok(changes::not_found(id).into());
        };
        let target = changes::pm_target(&pm);
        if let Err(refusal) = changes::check(&target, ask, me, crate::store::now_millis()) {
            return Ok(refusal.into());
        }
        let ts = protocol::timestamp();
        let (row, theirs, mine) = changes::pm_change(&target, ask, me, with, &ts);
        if let Err(why) = store.append_pm_change(row) {
            return Ok(Refusal::unavailable(why.reason()).into());
        }
        let x = self.me_id(me);
        let them = self.owners(with).await?;
        let others = self.own_others(me).await?;
        let mut pipe = redis::pipe();
        self.publish_to(&mut pipe, &x, &theirs, &them);
        self.publish_to(&mut pipe, &x, &mine, &others);
        let mut conn = self.redis.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(changes::acknowledged(id, &ts))
    }

    /// The change's envelope tail (what follows the numbering the script writes).
    fn tail(&self, me: &Member, change: &StoredMessage) -> String {
        let x = self.me_id(me);
        let env = Envelope::new(&x, change.event()).json();
        env[1..].to_string()
    }

    /// Runs `scripts::CHANGE`: {code or id, seq, epoch}.
    async fn rewrite(
        &self,
        me: &Member,
        room: &str,
        change: &StoredMessage,
        found: &Located,
        changed: StoredMessage,
    ) -> Result<(i64, u64, String), Fail> {
        let redis = &self.redis;
        let x = self.me_id(me);
        let state = match &found.held {
            Some(_) => {
                let mut env = Envelope::new(&x, changed.event());
                env.seq = changed.seq;
                env.id = changed.id;
                env.epoch = found.epoch.as_str().into();
                env.json()
            }
            None => String::new(),
        };
        let delete = matches!(change.change.as_deref(), Some(Change::Delete { .. }));
        let mut call = redis.scripts.change.prepare_invoke();
        self.numbering_keys(&mut call, room);
        call.arg(found.message.seq)
            .arg(found.held.as_deref().unwrap_or(""))
            .arg(state)
            .arg(self.tail(me, change))
            .arg(redis.room_channel(room))
            .arg(self.settings.history_size)
            .arg(self.settings.history_bytes)
            .arg(self.durable())
            .arg(super::new_epoch())
            .arg(if delete { "1" } else { "0" });
        let mut conn = redis.conn().await?;
        Ok(call.invoke_async(&mut conn).await?)
    }

    /// Runs `scripts::REACT`: {code or id, seq, epoch}.
    async fn react(
        &self,
        me: &Member,
        room: &str,
        change: &StoredMessage,
        found: &Located,
    ) -> Result<(i64, u64, String), Fail> {
        let Some(Change::React { emoji, on, .. }) = change.change.as_deref() else {
            return Ok((-2, 0, String::new()));
        };
        let redis = &self.redis;
        let mut call = redis.scripts.react.prepare_invoke();
        self.numbering_keys(&mut call, room);
        call.arg(found.message.seq)
            .arg(&**emoji)
            .arg(protocol::name_key(me.name()))
            .arg(if *on { "1" } else { "0" })
            .arg(self.tail(me, change))
            .arg(redis.room_channel(room))
            .arg(self.settings.history_size)
            .arg(self.settings.history_bytes)
            .arg(self.durable())
            .arg(super::new_epoch())
            .arg(MAX_EMOJI_PER_MESSAGE)
            .arg(if found.held.is_none() { "1" } else { "0" });
        let mut conn = redis.conn().await?;
        Ok(call.invoke_async(&mut conn).await?)
    }

    /// The keys `scripts::NUMBERING` names, for `room`.
    pub(super) fn numbering_keys(&self, call: &mut redis::ScriptInvocation<'_>, room: &str) {
        let redis = &self.redis;
        call.key(redis.key("epoch", room))
            .key(redis.global("msgid"))
            .key(redis.key("seq", room))
            .key(redis.key("stream", room))
            .key(redis.key("sbytes", room))
            .key(redis.key("over", room))
            .key(redis.key("rx", room));
    }

    /// What Redis holds of `room`'s messages `lo..=hi` beyond their stream entries (see
    /// `scripts::STATE`): changed messages and reactions.
    pub(super) async fn state(
        &self,
        room: &str,
        lo: u64,
        hi: u64,
    ) -> Result<(Vec<String>, Vec<String>), Fail> {
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        let limit = self.settings.history_size.max(1) * 4 * (MAX_EMOJI_PER_MESSAGE + 1);
        Ok(redis
            .scripts
            .state
            .key(redis.key("over", room))
            .key(redis.key("rx", room))
            .arg(lo)
            .arg(hi)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?)
    }
}

/// Stream entries and what `state` read beside them, as messages in seq order: a changed
/// message's current state in place of its entry (or where its entry was), reactions on theirs.
pub(super) fn merge(
    entries: &Entries,
    over: &[String],
    rx: &[String],
    max: usize,
) -> Vec<StoredMessage> {
    let mut by_seq: BTreeMap<u64, StoredMessage> = entries
        .iter()
        .filter_map(|(_, f)| super::stored(f, max))
        .map(|m| (m.seq, m))
        .collect();
    for raw in over {
        if let Some(m) = Envelope::parse(raw, max).and_then(Envelope::message) {
            by_seq.insert(m.seq, m);
        }
    }
    // When each emoji came first to its message (the order they are shown in).
    let mut first: HashMap<(u64, &str), u64> = HashMap::new();
    for entry in rx {
        let mut parts = entry.split('\u{1f}');
        let (Some(seq), Some(emoji), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        if let Some(at) = emoji.strip_prefix('!') {
            first.insert((seq, key), at.parse().unwrap_or(u64::MAX));
            continue;
        }
        let Some(m) = by_seq.get_mut(&seq) else {
            continue;
        };
        match m.reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(r) => r.users.push(key.to_string().into()),
            None => m.reactions.push(Reacted {
                emoji: emoji.to_string().into(),
                users: vec![key.to_string().into()],
                ..Reacted::default()
            }),
        }
    }
    let mut messages: Vec<StoredMessage> = by_seq.into_values().collect();
    for m in &mut messages {
        for r in &mut m.reactions {
            r.count = r.users.len() as u32;
        }
        let seq = m.seq;
        m.reactions
            .sort_by_key(|r| first.get(&(seq, &*r.emoji)).copied().unwrap_or(u64::MAX));
    }
    messages
}

/// The seqs `entries` span (oldest, newest).
pub(super) fn span(entries: &Entries) -> Option<(u64, u64)> {
    let seqs = entries
        .iter()
        .filter_map(|(id, _)| id.split('-').next().and_then(|s| s.parse::<u64>().ok()));
    seqs.fold(None, |acc, s| match acc {
        None => Some((s, s)),
        Some((lo, hi)) => Some((lo.min(s), hi.max(s))),
    })
}
