//! Names across the cluster: claiming one (hello, nick), freeing it, finding who holds it (PMs,
//! typing to a user, kicks), and the fence a node sends itself to know it has delivered
//! everything published before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::envelope::Envelope;
use super::link::{Done, Fail};
use super::{Inner, Local, lock, parse_entry};
use crate::hub::{ConnId, Member, Outcome, Receipt, Refusal, Resume, SessionView, Ticket};
use crate::protocol::{self, Role, ServerMsg, TypingState, b};
use crate::store::{Admitted, Pm};

impl Inner {
    /// Claims `name` for `me` (its key, and in open mode its look-alike), or re-writes the claims
    /// `me` holds on it. With tokens or accounts, one more connection of the user (at most
    /// `auth.max_sessions_per_user`). The claims, and the user's connections now; or the refusal
    /// (someone else holds it, or a name like it, or the user's connections are full).
    async fn claim(
        &self,
        me: &Member,
        name: &str,
    ) -> Result<Result<(Vec<(String, String)>, usize), Refusal>, Fail> {
        let redis = &self.redis;
        let value = self.entry(&me.renamed(name.into()));
        if self.settings.hub.owned_names {
            let key = redis.key("sess", &protocol::name_key(name));
            let about = me.about();
            let info = format!(
                "{}|{}",
                about.map_or("", |a| &a.since),
                about.and_then(|a| a.device.as_deref()).unwrap_or("")
            );
            let mut conn = redis.conn().await?;
            let count: usize = redis
                .scripts
                .claim_session
                .key(&key)
                .key(redis.key("sinfo", &protocol::name_key(name)))
                .arg(&value)
                .arg(self.settings.name_ttl_ms)
                .arg(super::now_ms())
                .arg(self.settings.hub.max_sessions)
                .arg(self.me_id(me))
                .arg(info)
                .invoke_async(&mut conn)
                .await?;
            if count == 0 {
                return Ok(Err(Refusal::too_many_sessions(
                    self.settings.hub.max_sessions,
                )));
            }
            return Ok(Ok((vec![(key, value)], count)));
        }
        let key = redis.key("name", &protocol::name_key(name));
        let like = redis.key("like", &protocol::look_alike(name));
        let like_value = format!("{}|{}", self.me_id(me), name);
        let mut conn = redis.conn().await?;
        let held: String = redis
            .scripts
            .claim
            .key(&key)
            .key(&like)
            .arg(&value)
            .arg(&like_value)
            .arg(self.settings.name_ttl_ms)
            .arg(self.me_id(me))
            .invoke_async(&mut conn)
            .await?;
        if held == "taken" {
            return Ok(Err(Refusal::name_taken(name)));
        }
        if let Some(other) = held.strip_prefix("like|") {
            return Ok(Err(Refusal::looks_like(name, other)));
        }
        Ok(Ok((vec![(key, value), (like, like_value)], 1)))
    }

    /// Who is connected as `name`: each connection as (node, conn, role, name as they spell
    /// it), oldest first (one in open mode).
    pub(super) async fn owners(
        &self,
        name: &str,
    ) -> Result<Vec<(String, ConnId, Role, String)>, Fail> {
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        let key = protocol::name_key(name);
        let values: Vec<String> = if self.settings.hub.owned_names {
            redis::cmd("ZRANGEBYSCORE")
                .arg(redis.key("sess", &key))
                .arg(super::now_ms())
                .arg("+inf")
                .query_async(&mut conn)
                .await?
        } else {
            let value: Option<String> = redis::cmd("GET")
                .arg(redis.key("name", &key))
                .query_async(&mut conn)
                .await?;
            value.into_iter().collect()
        };
        Ok(values
            .iter()
            .filter_map(|v| {
                parse_entry(v).map(|(n, c, r, name)| (n.to_string(), c, r, name.to_string()))
            })
            .collect())
    }

    pub(super) async fn hello(
        &self,
        me: &Member,
        t: Ticket,
        room: &str,
        resume: Option<&Resume>,
    ) -> Done {
        let (claims, sessions) = match self.claim(me, me.name()).await? {
            Ok(claimed) => claimed,
            Err(refusal) => {
                me.answer(t, refusal.into());
                return Ok(());
            }
        };
        if let Some(mine) = lock(&self.local).members.get_mut(&me.conn()) {
            mine.claims = claims;
            mine.sessions = sessions;
        }
        // A hello never fails for lack of rooms: it lands in the default room instead.
        if !self.join(me, t, room, resume, true).await? {
            self.join(me, t, protocol::DEFAULT_ROOM, None, true).await?;
        }
        Ok(())
    }

    /// Frees `me`'s name if it still holds it.
    pub(super) async fn release(&self, me: &Member) -> Done {
        let claims = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| std::mem::take(&mut m.claims))
            .unwrap_or_default();
        self.release_claims(&claims).await
    }

    /// Frees `claims` where they still hold what this connection wrote.
    async fn release_claims(&self, claims: &[(String, String)]) -> Done {
        if claims.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        for (key, value) in claims {
            self.redis
                .scripts
                .release
                .key(key)
                .arg(value)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// A PM goes to every node that holds a connection of the recipient (and of the sender, for
    /// their copy), and its ack waits until the recipient's nodes have handed it over: an
    /// acknowledged PM was delivered, as on a single node (pub/sub alone may drop it), to at
    /// least one of their connections. No answer by `deadline` (their nodes died, or the channel
    /// dropped it): `unconfirmed`. The recipient had left meanwhile: `no_such_user`.
    pub(super) async fn pm(
        &self,
        me: &Member,
        to: &str,
        text: &str,
        action: bool,
        sent: &AtomicBool,
        deadline: Instant,
    ) -> Result<Outcome, Fail> {
        let targets = self.owners(to).await?;
        let keep = self.settings.hub.store_pms && self.store.is_some();
        let name = match targets.first() {
            Some((_, _, _, name)) => name.clone(),
            None if keep => to.to_string(),
            None => return Ok(Refusal::no_such_user(to).into()),
        };
        let mine = self.own_others(me).await?;
        if keep && let Err(refusal) = self.admits(text.len() + me.name().len() + name.len()) {
            return Ok(refusal.into());
        }
        let mut conn = self.redis.conn().await?;
        let mut id = 0;
        for _ in 0..2 {
            id = self
                .redis
                .scripts
                .next_id
                .key(self.redis.global("msgid"))
                .arg(self.durable())
                .invoke_async(&mut conn)
                .await?;
            if id != 0 {
                break;
            }
            self.seed(None).await?;
        }
        if id == 0 {
            return Err(Fail::Store("the numbering could not be seeded".into()));
        }
        let ts: Arc<str> = protocol::timestamp().into();
        if targets.is_empty() {
            // Nobody to hand it to: kept for their next hello if they have an account (the
            // accounts service checks, and keeps it).
            return Ok(Outcome::Unreached(Box::new(Pm {
                id,
                ts: ts.to_string(),
                from: me.name().to_string(),
                to: name,
                role: me.role(),
                text: text.to_string(),
                action,
                ..Default::default()
            })));
        }
        let x = self.me_id(me);
        let event = ServerMsg::Pm {
            id,
            ts: b(&ts),
            from: b(me.name()),
            role: me.role(),
            to: b(&name),
            text: b(text),
            action,
            edited_ts: None,
            deleted: false,
        };
        let mut answers = Vec::new();
        sent.store(true, Ordering::Relaxed);
        let mut pipe = redis::pipe();
        for (node, conn_id, ..) in &targets {
            let answer = self.awaited();
            let mut env = Envelope::new(&x, event.clone());
            env.to = Some(*conn_id);
            env.confirm = Some(answer.n);
            answers.push(answer);
            pipe.cmd("PUBLISH")
                .arg(self.redis.node_channel(node))
                .arg(env.json())
                .ignore();
        }
        self.publish_to(&mut pipe, &x, &event, &mine);
        pipe.query_async::<()>(&mut conn).await?;
        // Answer before the op's own deadline, which would count it as Redis failing.
        let margin = (self.settings.op_timeout / 8).min(Duration::from_millis(100));
        let by = deadline.checked_sub(margin).unwrap_or(deadline);
        let delivered = async {
            let mut any = None;
            for answer in &mut answers {
                match (&mut answer.rx).await {
                    Ok(true) => return Some(true),
                    Ok(false) => any = any.or(Some(false)),
                    Err(_) => {}
                }
            }
            any
        };
        Ok(match tokio::time::timeout_at(by.into(), delivered).await {
            Ok(Some(true)) => {
                if keep {
                    self.keep(Admitted::Pm(Pm {
                        id,
                        ts: ts.to_string(),
                        from: me.name().to_string(),
                        to: name.clone(),
                        role: me.role(),
                        text: text.to_string(),
                        action,
                        ..Default::default()
                    }));
                }
                Outcome::Sent(Receipt {
                    id,
                    seq: None,
                    ts,
                    to: Some(name.into()),
                })
            }
            Ok(Some(false)) => Refusal::no_such_user(to).into(),
            _ => super::ops::unconfirmed(),
        })
    }

    /// A PM reached this node for `to`: `delivered` tells the sender's node (named in `x`)
    /// whether it was handed to that connection.
    pub(super) fn confirm(self: &Arc<Self>, x: &str, n: u64, delivered: bool) {
        let Some((node, _)) = x.rsplit_once('|') else {
            return;
        };
        let channel = self.redis.node_channel(node);
        let inner = self.clone();
        self.tasks.spawn(async move {
            let mut env = Envelope::control("");
            env.fence = Some(n);
            env.absent = !delivered;
            let _ = tokio::time::timeout(
                inner.settings.op_timeout,
                inner.redis.publish(&channel, &env.json()),
            )
            .await;
        });
    }

    pub(super) async fn typing_to(
        &self,
        me: &Member,
        to: &str,
        state: TypingState,
    ) -> Result<Outcome, Fail> {
        let targets = self.owners(to).await?;
        let Some((_, _, _, name)) = targets.first().cloned() else {
            return Ok(Refusal::no_such_user(to).into());
        };
        let x = self.me_id(me);
        let event = ServerMsg::Typing {
            from: b(me.name()),
            room: None,
            to: Some(b(&name)),
            state,
        };
        let mut pipe = redis::pipe();
        let others: Vec<_> = targets
            .into_iter()
            .filter(|t| !t.3.eq_ignore_ascii_case(me.name()))
            .collect();
        self.publish_to(&mut pipe, &x, &event, &others);
        let mut conn = self.redis.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(Outcome::Relayed)
    }

    /// Hands `event` to `me`'s user's other connections, on whichever nodes they are.
    pub(super) async fn to_own(&self, me: &Member, event: ServerMsg<'static>) -> Done {
        let mine = self.own_others(me).await?;
        if mine.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.publish_to(&mut pipe, &self.me_id(me), &event, &mine);
        let mut conn = self.redis.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// `me`'s user's live connections, oldest first, as `sessions` lists them.
    pub(super) async fn sessions(&self, me: &Member) -> Result<Outcome, Fail> {
        let all = self.owners(me.name()).await?;
        let ids: Vec<String> = all.iter().map(|(n, c, ..)| format!("{n}|{c}")).collect();
        let infos: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            let mut conn = self.redis.conn().await?;
            redis::cmd("HMGET")
                .arg(self.redis.key("sinfo", &protocol::name_key(me.name())))
                .arg(&ids)
                .query_async(&mut conn)
                .await?
        };
        let current = self.me_id(me);
        let mut list: Vec<SessionView> = ids
            .into_iter()
            .zip(infos.into_iter().chain(std::iter::repeat(None)))
            .map(|(id, info)| {
                let info = info.unwrap_or_default();
                let (since, device) = info.split_once('|').unwrap_or(("", ""));
                SessionView {
                    current: id == current,
                    id,
                    device: (!device.is_empty()).then(|| device.into()),
                    since: since.into(),
                }
            })
            .collect();
        list.sort_by(|a, b| a.since.cmp(&b.since));
        Ok(Outcome::Sessions(list))
    }

    /// Closes `me`'s user's connection `session`, on whichever node holds it: an order on that
    /// node's channel, obeyed only for a connection of the same user.
    pub(super) async fn logout(&self, me: &Member, session: &str) -> Result<Outcome, Fail> {
        let all = self.owners(me.name()).await?;
        let Some((node, conn_id, ..)) = all
            .into_iter()
            .find(|(n, c, ..)| session.split_once('|') == Some((n.as_str(), &c.to_string())))
        else {
            return Ok(Refusal::no_such_session(session).into());
        };
        let key = protocol::name_key(me.name());
        let mut conn = self.redis.conn().await?;
        let removed: i64 = self
            .redis
            .scripts
            .log_out
            .key(self.redis.key("sess", &key))
            .key(self.redis.key("sinfo", &key))
            .arg(format!("{node}|{conn_id}"))
            .invoke_async(&mut conn)
            .await?;
        if removed == 0 {
            return Ok(Refusal::no_such_session(session).into());
        }
        let x = self.me_id(me);
        let mut env = Envelope::control(&x);
        env.to = Some(conn_id);
        env.logout = Some(key.into());
        self.redis
            .publish(&self.redis.node_channel(&node), &env.json())
            .await?;
        Ok(Outcome::Done)
    }

    /// `me`'s user's other connections (none in open mode, where a name has one).
    pub(super) async fn own_others(
        &self,
        me: &Member,
    ) -> Result<Vec<(String, ConnId, Role, String)>, Fail> {
        if !self.settings.hub.owned_names {
            return Ok(Vec::new());
        }
        let mut all = self.owners(me.name()).await?;
        all.retain(|(node, conn, ..)| !(*node == *self.node && *conn == me.conn()));
        Ok(all)
    }

    /// Queues in `pipe` one envelope of `event` (from `x`) for each of `conns`, to its node.
    pub(super) fn publish_to(
        &self,
        pipe: &mut redis::Pipeline,
        x: &str,
        event: &ServerMsg<'_>,
        conns: &[(String, ConnId, Role, String)],
    ) {
        for (node, conn, ..) in conns {
            let mut env = Envelope::new(x, event.clone());
            env.to = Some(*conn);
            pipe.cmd("PUBLISH")
                .arg(self.redis.node_channel(node))
                .arg(env.json())
                .ignore();
        }
    }

    /// Takes `name` out of every room, every connection of theirs (`kicked` to those who stay)
    /// and frees the name, then tells their nodes to close the connections. The reply waits
    /// until this node has delivered the `kicked` events, so an admin in the room sees the kick
    /// before the ack.
    pub(super) async fn kick(
        &self,
        me: &Member,
        name: &str,
        reason: &str,
    ) -> Result<Outcome, Fail> {
        let redis = &self.redis;
        let targets = self.owners(name).await?;
        let Some((node, target, _, target_name)) = targets.first().cloned() else {
            return Ok(Refusal::no_such_user(name).into());
        };
        let key = if self.settings.hub.owned_names {
            redis.key("sess", &protocol::name_key(name))
        } else {
            redis.key("name", &protocol::name_key(name))
        };
        let x = format!("{node}|{target}");
        let event = ServerMsg::Kicked {
            room: b("@@ROOM@@"),
            name: b(&target_name),
            by: b(me.name()),
            reason: b(reason),
        };
        let template = Envelope::new(&x, event).json();
        let mut call = redis.scripts.kick.prepare_invoke();
        call.key(redis.global("rooms"))
            .key(redis.global("created"))
            .key(&key)
            .arg(target_name.to_ascii_lowercase())
            .arg(redis.prefix())
            .arg(template)
            .arg(self.settings.room_ttl_secs)
            .arg(self.kick_tombstone_ms())
            .arg(reason);
        for (node, conn, role, name) in &targets {
            call.arg(format!("{node}|{conn}|{}|{name}", super::role_char(*role)));
        }
        let mut conn = redis.conn().await?;
        call.invoke_async::<i64>(&mut conn).await?;
        let mut pipe = redis::pipe();
        for (node, target, ..) in &targets {
            let x = format!("{node}|{target}");
            let mut order = Envelope::control(&x);
            order.to = Some(*target);
            order.kick = Some((b(me.name()), b(reason)));
            pipe.cmd("PUBLISH")
                .arg(redis.node_channel(node))
                .arg(order.json())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        self.fence().await?;
        Ok(Outcome::Done)
    }

    /// Waits until this node's subscriber has delivered everything published before now.
    /// Redis hands one subscriber its messages in publish order, whatever the channel.
    pub(super) async fn fence(&self) -> Done {
        let mut arrival = self.awaited();
        let mut env = Envelope::control("");
        env.fence = Some(arrival.n);
        self.redis
            .publish(&self.redis.node_channel(&self.node), &env.json())
            .await?;
        match (&mut arrival.rx).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Fail::Timeout),
        }
    }

    /// A fence number to wait for; forgotten when the wait ends, however it ends.
    fn awaited(&self) -> Awaited<'_> {
        let n = self.next_fence.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.fences).insert(n, tx);
        Awaited { inner: self, n, rx }
    }

    /// How long a kick's tombstone lasts: past two heartbeats of the target's node, after which
    /// its claim would have expired anyway.
    pub(super) fn kick_tombstone_ms(&self) -> u64 {
        self.settings.name_ttl_ms.max(self.settings.heartbeat_ms) * 2
    }

    /// An admin (on any node) kicked `me`, which Redis no longer lists anywhere: forget it here
    /// and close the connection.
    pub(super) fn kicked(&self, me: &Member, reason: &str) {
        let rooms = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| {
                m.claims.clear();
                m.rooms.clone()
            })
            .unwrap_or_default();
        for room in &rooms {
            self.forget(me, room);
        }
        me.kick(reason.to_string());
    }

    pub(super) async fn nick(&self, me: &mut Member, t: Ticket, name: &str) -> Done {
        let renamed = me.renamed(name.into());
        // A change of case re-writes one's own claims; a new name must be free.
        let claims = match self.claim(me, name).await? {
            Ok((claims, _)) => claims,
            Err(refusal) => {
                me.answer(t, refusal.into());
                return Ok(());
            }
        };
        let old = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| std::mem::take(&mut m.claims))
            .unwrap_or_default();
        let stale: Vec<_> = old
            .into_iter()
            .filter(|(k, _)| !claims.iter().any(|(nk, _)| nk == k))
            .collect();
        self.release_claims(&stale).await?;
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        let rooms = {
            let mut local = lock(&self.local);
            let Local { members, rooms } = &mut *local;
            let mine = members.get_mut(&me.conn());
            let list = mine.as_ref().map(|m| m.rooms.clone()).unwrap_or_default();
            if let Some(mine) = mine {
                mine.member = renamed.clone();
                mine.claims = claims;
            }
            for room in &list {
                if let Some(here) = rooms.get_mut(room) {
                    for m in here.members.iter_mut().filter(|m| m.conn() == me.conn()) {
                        *m = renamed.clone();
                    }
                }
            }
            list
        };
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.cmd("ZREM")
                .arg(redis.key("members", room))
                .arg(self.entry(me))
                .ignore()
                .cmd("ZREM")
                .arg(redis.key("names", room))
                .arg(self.names_entry(me))
                .ignore()
                .cmd("ZADD")
                .arg(redis.key("members", room))
                .arg(super::now_ms() + self.settings.presence_ttl_ms)
                .arg(self.entry(&renamed))
                .ignore()
                .cmd("ZADD")
                .arg(redis.key("names", room))
                .arg(0)
                .arg(self.names_entry(&renamed))
                .ignore()
                // Open mode (the only one with `nick`): one connection per user.
                .cmd("HDEL")
                .arg(redis.key("ucount", room))
                .arg(me.name().to_ascii_lowercase())
                .ignore()
                .cmd("HSET")
                .arg(redis.key("ucount", room))
                .arg(name.to_ascii_lowercase())
                .arg(1)
                .ignore();
        }
        // A join still waiting in a large room's batch is told under the new name.
        let mut rename = redis.scripts.presence_rename.prepare_invoke();
        for room in &rooms {
            rename.key(redis.key("pres", room));
        }
        rename
            .arg(Self::joins_entry(me))
            .arg(Self::joins_entry(&renamed));
        if !rooms.is_empty() {
            pipe.load_script(&redis.scripts.presence_rename)
                .ignore()
                .invoke_script(&rename)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        let x = self.me_id(me);
        let mut env = Envelope::new(
            &x,
            ServerMsg::Renamed {
                from: b(me.name()),
                to: b(name),
            },
        );
        env.rooms = rooms.iter().map(|r| b(r)).collect();
        redis.publish(&redis.all_channel(), &env.json()).await?;
        *me = renamed;
        me.answer(
            t,
            Outcome::Renamed {
                name: me.name().clone(),
            },
        );
        Ok(())
    }
}

/// A fence or PM confirmation being waited for.
struct Awaited<'a> {
    inner: &'a Inner,
    n: u64,
    rx: oneshot::Receiver<bool>,
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        lock(&self.inner.fences).remove(&self.n);
    }
}
