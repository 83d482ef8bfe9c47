//! Rooms that belong to someone, from a session's side (tokens or accounts, with a store): the
//! checks every path makes against the policies this node holds (entering a room, speaking,
//! what `rooms` lists, server-wide bans and revoked tokens at `hello`), the moderation requests
//! handed to the accounts service, a ban's removal from a room, and what the room views say
//! of settings and standings.

use std::borrow::Cow;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Kind, Session};
use crate::accounts::Request;
use crate::accounts::moderation::{Action, Actor, Moderated, Target, parse_duration};
use crate::accounts::policy::{Effect, Policies, Standing, is_range};
use crate::connection::note;
use crate::hub::{Late, Outcome, Refusal, RoomView};
use crate::protocol::{
    self, AuditInfo, BanInfo, ClientMsg, ErrorCode, Role, RoomSettings, ServerMsg, UserInfo, b,
};
use crate::store::policy::{Kind as Sanction, SERVER};

/// Who asks, as the accounts service knows them.
fn actor(me: &crate::hub::Member) -> Actor {
    Actor {
        name: me.name().to_string(),
        admin: me.role() == Role::Admin,
    }
}

fn forbidden(why: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::Forbidden, why)
}

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::BadRequest, why)
}

impl Session {
    /// The rooms' policies, where rooms can belong to someone.
    pub(super) fn policies(&self) -> Option<&Arc<Policies>> {
        self.chat.accounts.as_ref().map(|a| a.policies())
    }

    /// Whether `name` (with a token whose id is `jti`) may say hello: not banned from the
    /// server, its token not revoked.
    pub(super) fn admitted(&self, name: &str, jti: Option<&str>) -> Result<(), Refusal> {
        let Some(p) = self.policies() else {
            return Ok(());
        };
        if self.chat.auth.is_some() && p.revoked(jti, name) {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                "this token was revoked: ask for a new one",
            ));
        }
        let key = protocol::name_key(name);
        match p.banned_from_server(&key, self.ip, crate::accounts::now_ms()) {
            Some(why) => Err(forbidden(why)),
            None => Ok(()),
        }
    }

    /// Whether `name` (an admin or not) may enter `room`.
    pub(super) fn may_enter(&self, room: &str, name: &str, role: Role) -> Result<(), Refusal> {
        let Some(p) = self.policies() else {
            return Ok(());
        };
        let member = self.kept.iter().any(|r| **r == *room);
        let key = protocol::name_key(name);
        let admin = role == Role::Admin;
        p.may_join(
            room,
            &key,
            self.ip,
            admin,
            member,
            crate::accounts::now_ms(),
        )
        .map_err(forbidden)
    }

    /// Whether the user may speak in `room` (muted, or a moderated room).
    pub(super) fn may_speak(&self, room: &str) -> Result<(), Refusal> {
        let (Some(p), Some(me)) = (self.policies(), &self.me) else {
            return Ok(());
        };
        let key = protocol::name_key(me.name());
        let admin = me.role() == Role::Admin;
        p.may_say(room, &key, admin, crate::accounts::now_ms())
            .map_err(forbidden)
    }

    /// Whether `rooms` lists `room` for this user (a private one only for its members).
    pub(super) fn listed(&self, room: &str) -> bool {
        let Some(p) = self.policies() else {
            return true;
        };
        let member =
            self.kept.iter().any(|r| **r == *room) || self.rooms.iter().any(|r| **r == *room);
        let admin = self.me.as_ref().is_some_and(|m| m.role() == Role::Admin);
        p.listed(room, member, admin)
    }

    /// What the views say of `room`'s settings.
    pub(super) fn room_settings(&self, room: &str) -> RoomSettings<'static> {
        self.policies()
            .and_then(|p| p.settings(room))
            .map(settings_view)
            .unwrap_or_default()
    }

    /// `users` as listed in `room`, each with their standing there.
    pub(super) fn users_in<'a>(
        &self,
        room: &str,
        users: &'a [(Arc<str>, Role)],
    ) -> Vec<UserInfo<'a>> {
        let names = users.iter().map(|(n, _)| &**n);
        let standings = self.policies().and_then(|p| p.standings(room, names));
        let standing = |i: usize| standings.as_ref().map_or(Standing::Member, |s| s[i]);
        users
            .iter()
            .enumerate()
            .map(|(i, (name, role))| UserInfo {
                name: b(name),
                role: *role,
                room_role: (standing(i) != Standing::Member).then(|| standing(i).as_str().into()),
            })
            .collect()
    }

    /// A `join` or `hello` that created a room nobody owns (where rooms can be owned): the
    /// account claims it first, and the reply (`outcome`, which keeps its place among the
    /// replies: `at`, or a new place) comes once the claim is made, so it says who owns the
    /// room. `Err(outcome)` when there is nothing to claim.
    pub(super) fn claim_first(
        &mut self,
        kind: Kind,
        outcome: Outcome,
        reference: Option<String>,
        at: Option<usize>,
    ) -> Result<(), Box<(Kind, Outcome, Option<String>)>> {
        let view = match (&kind, &outcome) {
            (Kind::Join { .. } | Kind::Hello, Outcome::Joined(view) | Outcome::Welcome(view)) => {
                view
            }
            _ => return Err(Box::new((kind, outcome, reference))),
        };
        let (Some(accounts), Some(me)) = (self.chat.accounts.clone(), self.me.clone()) else {
            return Err(Box::new((kind, outcome, reference)));
        };
        let room = view.room.to_string();
        let fresh = view.seq == 0 && view.user_count <= 1 && room != protocol::DEFAULT_ROOM;
        if !fresh || accounts.policies().settings(&room).is_some() {
            return Err(Box::new((kind, outcome, reference)));
        }
        let actor = actor(&me);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mailbox = self.mailbox.clone();
        let later = std::sync::Mutex::new(Some(outcome));
        let reply: crate::accounts::Reply = Box::new(move |_| {
            if let Some(outcome) = crate::sync::lock(&later).take() {
                mailbox.push_control(Box::new(Late { ticket, outcome }));
            }
        });
        let action = Action::Claim { room };
        if let Err(denied) = accounts.submit(Request::Moderate { actor, action }, self.ip, reply) {
            note!(
                warn,
                self.log_who(),
                ?denied,
                "a new room could not be claimed now; it stays ownerless"
            );
            // The outcome went with the refused reply: the broker's answer is lost, so say so.
            let r = Refusal::unavailable("the server is busy; join the room again");
            return Err(Box::new((kind, Outcome::Refused(r), reference)));
        }
        match at {
            Some(at) => self.slots.rewait(at, ticket, kind, reference),
            None => self.slots.wait(ticket, kind, reference, self.request_bytes),
        }
        Ok(())
    }

    /// After entering `view`'s room: an invite that let the user in is used up, and the room is
    /// one of the account's.
    pub(super) fn entered(&mut self, view: &RoomView) {
        let (Some(accounts), Some(me)) = (self.chat.accounts.clone(), self.me.clone()) else {
            return;
        };
        let room = view.room.to_string();
        let key = protocol::name_key(me.name());
        let member = self.kept.iter().any(|r| **r == *room);
        if !member && accounts.policies().invited(&room, &key) {
            let actor = actor(&me);
            let ignore: crate::accounts::Reply = Box::new(|_| {});
            let action = Action::UseInvite { room };
            let _ = accounts.submit(Request::Moderate { actor, action }, self.ip, ignore);
        }
        if !member {
            self.kept.push(view.room.clone());
        }
    }

    /// A moderation request: checked for shape here, for permission (and carried out) by the
    /// accounts service, whose answer is the reply.
    pub(super) fn moderate(
        &mut self,
        msg: ClientMsg,
        id: &mut Option<String>,
    ) -> Result<(), Refusal> {
        let (Some(accounts), Some(me)) = (self.chat.accounts.clone(), self.me.clone()) else {
            return Err(forbidden(
                "rooms belong to no one on this server (it needs tokens or accounts, and a store)",
            ));
        };
        let action = action_of(msg)?;
        // What a refusal names (a transfer to nobody: `no_such_user` for that name).
        let about = match &action {
            Action::Transfer { to, .. } => to.clone(),
            _ => String::new(),
        };
        let actor = actor(&me);
        let request = Request::Moderate { actor, action };
        self.ask_accounts(&accounts, request, &about, Kind::Moderate, id.take())
    }

    /// Banned from `room`: out of it (the others see `kicked` once the user's last connection
    /// there has gone), and this connection is told.
    pub(super) fn expelled(
        &mut self,
        room: &str,
        by: &str,
        reason: &str,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(me) = self.me.clone() else { return };
        let Some(at) = self.rooms.iter().position(|r| **r == *room) else {
            self.kept.retain(|r| **r != *room);
            return;
        };
        let room = self.rooms.remove(at);
        self.kept.retain(|r| *r != room);
        if let Some(hooks) = &self.chat.webhooks {
            hooks.left(&room, me.name());
        }
        note!(info, self.log_who(), room = %room, by, "banned from a room");
        let told = protocol::encode(&ServerMsg::Kicked {
            room: b(&room),
            name: b(me.name()),
            by: b(by),
            reason: b(reason),
        });
        self.emit(vec![told], out);
        let (by, reason) = (by.to_string(), reason.to_string());
        self.call(Kind::Expelled, None, out, |broker, t, me| {
            broker.leave_kicked(t, me, &room, &by, &reason)
        });
    }
}

impl Session {
    /// The reply to a moderation request.
    pub(super) fn moderated(&self, m: Moderated, reference: Option<&str>) -> Utf8Bytes {
        match m {
            Moderated::Done => super::replies::ack(reference, None, None),
            Moderated::Bans(room, list) => {
                // As many as fit in a reply (a room holds at most 1,000), newest first.
                let mut list = list;
                list.sort_by(|a, b| b.created.cmp(&a.created));
                let budget = self.reply_budget();
                let mut used = 0;
                let n = list
                    .iter()
                    .take_while(|s| {
                        used += 2 * (s.target.len() + s.by.len() + s.reason.len()) + 160;
                        used <= budget
                    })
                    .count();
                let more = n < list.len();
                let bans = list[..n]
                    .iter()
                    .map(|s| {
                        let range = crate::accounts::policy::is_range(&s.target);
                        BanInfo {
                            name: (!range).then(|| b(&s.target)),
                            address: range.then(|| b(&s.target)),
                            kind: b(s.kind.as_str()),
                            by: b(&s.by),
                            reason: b(&s.reason),
                            since: b(&s.created),
                            until: s.until_ms.map(|u| protocol::timestamp_at(u).into()),
                        }
                    })
                    .collect();
                protocol::encode(&ServerMsg::Bans {
                    room: b(&room),
                    bans,
                    more,
                    reference: reference.map(b),
                })
            }
            Moderated::Audit(room, entries) => {
                // At most a page of 100 entries, as many as fit in a reply.
                let budget = self.reply_budget();
                let mut used = 0;
                let n = entries
                    .iter()
                    .take_while(|a| {
                        used += 2
                            * (a.actor.len() + a.action.len() + a.target.len() + a.reason.len())
                            + 120;
                        used <= budget
                    })
                    .count();
                let entries = entries[..n]
                    .iter()
                    .map(|a| AuditInfo {
                        by: b(&a.actor),
                        action: b(&a.action),
                        target: b(&a.target),
                        reason: b(&a.reason),
                        ts: b(&a.ts),
                    })
                    .collect();
                protocol::encode(&ServerMsg::Audit {
                    room: b(&room),
                    entries,
                    reference: reference.map(b),
                })
            }
        }
    }
}

/// A room's settings as the views show them.
fn settings_view(s: crate::store::policy::Settings) -> RoomSettings<'static> {
    RoomSettings {
        topic: s.topic.into(),
        visibility: Some(if s.private { "private" } else { "public" }.into()),
        invite_only: s.invite_only,
        moderated: s.moderated,
        owner: s.owner.map(Cow::Owned),
    }
}

/// What this node does with what a policy reload changed: the connections here of someone
/// banned from a room leave it, those of someone banned from the server (or from a banned
/// range, or signed in with a revoked token) close, and a room's members here are told of
/// new settings and standings.
pub(crate) fn enforcer(broker: Arc<dyn crate::hub::Broker>) -> crate::accounts::EffectsHook {
    Arc::new(move |effects| {
        for effect in effects {
            match effect {
                Effect::Expel {
                    room,
                    key,
                    by,
                    reason,
                } => {
                    let (room, by, reason): (Arc<str>, Arc<str>, Arc<str>) =
                        (room.into(), by.into(), reason.into());
                    for m in broker.local_members(&|m| protocol::name_key(m.name()) == key) {
                        let outcome = Outcome::Expelled {
                            room: room.clone(),
                            by: by.clone(),
                            reason: reason.clone(),
                        };
                        m.answer(crate::hub::EXPELLED, outcome);
                    }
                }
                Effect::Banish { target, reason } => {
                    let range = is_range(&target)
                        .then(|| crate::addr::Cidr::parse(&target).ok())
                        .flatten();
                    let pick = |m: &crate::hub::Member| match &range {
                        Some(range) => range.contains(m.address()),
                        None => protocol::name_key(m.name()) == target,
                    };
                    for m in broker.local_members(&pick) {
                        m.kick(format!("banned from this server: {reason}"));
                    }
                }
                Effect::Revoked(target) => {
                    let pick = |m: &crate::hub::Member| {
                        target == format!("sub:{}", protocol::name_key(m.name()))
                            || m.about()
                                .and_then(|a| a.jti.as_deref())
                                .is_some_and(|j| target.strip_prefix("jti:") == Some(j))
                    };
                    for m in broker.local_members(&pick) {
                        m.kick("token revoked".into());
                    }
                }
                Effect::Changed {
                    room,
                    settings,
                    roles,
                } => {
                    if let Some(s) = settings {
                        let event = ServerMsg::RoomChanged {
                            room: b(&room),
                            settings: Some(settings_view(s)),
                            name: None,
                            room_role: None,
                        };
                        broker.tell_local(&room, &event);
                    }
                    for (key, standing) in roles {
                        let event = ServerMsg::RoomChanged {
                            room: b(&room),
                            settings: None,
                            name: Some(b(&key)),
                            room_role: Some(b(standing.as_str())),
                        };
                        broker.tell_local(&room, &event);
                    }
                }
            }
        }
    })
}

/// A room a moderation request names: a room's name, or `*` (the server) where `server` is
/// allowed.
fn room_of(room: &str, server: bool) -> Result<String, Refusal> {
    if server && room == SERVER {
        return Ok(SERVER.to_string());
    }
    super::requests::normalize_room(room).map(|r| r.to_string())
}

fn name_of(name: &str) -> Result<String, Refusal> {
    super::requests::valid_user(name).map(str::to_string)
}

fn until(duration: Option<&str>) -> Result<Option<i64>, Refusal> {
    duration
        .map(|d| {
            parse_duration(d)
                .map(|d| crate::accounts::now_ms() + d.as_millis() as i64)
                .map_err(bad)
        })
        .transpose()
}

fn target(name: Option<String>, address: Option<String>) -> Result<Target, Refusal> {
    match (name, address) {
        (Some(name), None) => Ok(Target::Name(name_of(&name)?)),
        (None, Some(address)) => {
            crate::addr::Cidr::parse(&address).map_err(|e| bad(format!("`address`: {e}")))?;
            Ok(Target::Range(address))
        }
        _ => Err(bad("give exactly one of `name` and `address`")),
    }
}

/// The moderation request `msg` asks for, its values checked.
fn action_of(msg: ClientMsg) -> Result<Action, Refusal> {
    Ok(match msg {
        ClientMsg::RoomSet {
            room,
            topic,
            visibility,
            invite_only,
            moderated,
        } => {
            let private = match visibility.as_deref() {
                None => None,
                Some("private") => Some(true),
                Some("public") => Some(false),
                Some(_) => return Err(bad("`visibility` is `public` or `private`")),
            };
            if let Some(t) = &topic
                && (t.len() > crate::accounts::moderation::MAX_TOPIC_BYTES
                    || t.chars().any(char::is_control))
            {
                return Err(bad(format!(
                    "a topic is one line of at most {} bytes",
                    crate::accounts::moderation::MAX_TOPIC_BYTES
                )));
            }
            Action::Set {
                room: room_of(&room, false)?,
                topic,
                private,
                invite_only,
                moderated,
            }
        }
        ClientMsg::Role { room, name, role } => {
            let standing = match role.as_str() {
                "op" => Standing::Op,
                "voice" => Standing::Voice,
                "member" => Standing::Member,
                _ => return Err(bad("`role` is `op`, `voice` or `member`")),
            };
            Action::Role {
                room: room_of(&room, false)?,
                name: name_of(&name)?,
                standing,
            }
        }
        ClientMsg::Transfer { room, to } => Action::Transfer {
            room: room_of(&room, false)?,
            to: name_of(&to)?,
        },
        ClientMsg::Invite { room, name } => Action::Invite {
            room: room_of(&room, false)?,
            name: name_of(&name)?,
            on: true,
        },
        ClientMsg::Uninvite { room, name } => Action::Invite {
            room: room_of(&room, false)?,
            name: name_of(&name)?,
            on: false,
        },
        ClientMsg::Ban {
            room,
            name,
            address,
            duration,
            reason,
        } => Action::Sanction {
            room: room_of(&room, true)?,
            target: target(name, address)?,
            kind: Sanction::Ban,
            until_ms: until(duration.as_deref())?,
            reason: one_line(reason),
        },
        ClientMsg::Unban {
            room,
            name,
            address,
        } => Action::Lift {
            room: room_of(&room, true)?,
            target: target(name, address)?,
            kind: Sanction::Ban,
        },
        ClientMsg::Mute {
            room,
            name,
            duration,
            reason,
        } => Action::Sanction {
            room: room_of(&room, false)?,
            target: Target::Name(name_of(&name)?),
            kind: Sanction::Mute,
            until_ms: until(duration.as_deref())?,
            reason: one_line(reason),
        },
        ClientMsg::Unmute { room, name } => Action::Lift {
            room: room_of(&room, false)?,
            target: Target::Name(name_of(&name)?),
            kind: Sanction::Mute,
        },
        ClientMsg::Bans { room } => Action::Bans {
            room: room_of(&room, true)?,
        },
        ClientMsg::Audit { room } => Action::Audit {
            room: room_of(&room, true)?,
        },
        _ => return Err(bad("not a moderation request")),
    })
}

/// A reason as one line: control characters become spaces.
fn one_line(reason: Option<String>) -> String {
    reason
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}
