//! Rooms' policies in memory: who owns a room and who moderates it, its settings, its invites,
//! bans and mutes, and the server-wide bans and revoked tokens. Every node keeps all of them,
//! loaded from the store at start and reloaded room by room as the store's change log moves
//! (polled by the accounts threads), so the checks on the chat's paths never wait on a
//! database. A reload says what it changed ([`Effect`]): whom to put out of a room or off the
//! server, and what to tell a room's members.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::RwLock;

use crate::addr::Cidr;
use crate::protocol;
use crate::store::policy::{Kind, RoomRecord, RoomRole, SERVER, Sanction, Settings};
use crate::sync::{read, write};

/// Bans and mutes a room may hold (and the server under `*`).
pub const MAX_SANCTIONS: usize = 1000;
/// Invites a room may hold at once.
pub const MAX_INVITES: usize = 1000;
/// Ops and voiced members a room may have.
pub const MAX_ROLES: usize = 1000;

/// Where an account stands in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Anyone else.
    Member,
    /// May speak in a moderated room.
    Voice,
    /// A moderator.
    Op,
    /// The owner.
    Owner,
}

impl Standing {
    /// As the wire names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Member => "member",
            Standing::Voice => "voice",
            Standing::Op => "op",
            Standing::Owner => "owner",
        }
    }
}

/// One room's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Its settings, if it is owned or was set by an admin.
    pub settings: Option<Settings>,
    /// Ops and voiced members, by key.
    pub roles: HashMap<String, RoomRole>,
    /// Invited accounts.
    pub invites: HashSet<String>,
    /// Bans and mutes (expired ones too, until the next reload drops them from the store).
    pub sanctions: Vec<Sanction>,
}

impl RoomPolicy {
    fn from_record(record: RoomRecord) -> RoomPolicy {
        RoomPolicy {
            settings: record.settings,
            roles: record.roles.into_iter().collect(),
            invites: record.invites.into_iter().collect(),
            sanctions: record.sanctions,
        }
    }

    /// The `kind` sanction on account `key` (or, for a ban, on a range holding `ip`) in force
    /// at `now_ms`.
    pub fn sanction(
        &self,
        kind: Kind,
        key: &str,
        ip: Option<IpAddr>,
        now_ms: i64,
    ) -> Option<&Sanction> {
        self.sanctions.iter().find(|s| {
            s.kind == kind
                && s.until_ms.is_none_or(|until| until > now_ms)
                && (s.target == key
                    || ip.is_some_and(|ip| {
                        is_range(&s.target) && Cidr::parse(&s.target).is_ok_and(|c| c.contains(ip))
                    }))
        })
    }

    /// How many bans and mutes are in force at `now_ms`.
    pub fn sanctions_in_force(&self, now_ms: i64) -> usize {
        let live = |s: &&Sanction| s.until_ms.is_none_or(|u| u > now_ms);
        self.sanctions.iter().filter(live).count()
    }
}

/// Whether a sanction's target is an address range rather than an account.
pub fn is_range(target: &str) -> bool {
    target.contains('/') || target.contains(':') || target.parse::<IpAddr>().is_ok()
}

/// What a reload changed that the chat must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `key` is banned from `room` now: out with it.
    Expel {
        /// The room.
        room: String,
        /// The account.
        key: String,
        /// Who banned it.
        by: String,
        /// Why.
        reason: String,
    },
    /// Banned from the server (an account, or every connection from a range): closed.
    Banish {
        /// The account's key, or an address range.
        target: String,
        /// Why.
        reason: String,
    },
    /// A token revoked: `jti:ID` or `sub:NAME`; the connections it signed in close.
    Revoked(String),
    /// The room's settings changed, or someone's role there: its members are told.
    Changed {
        /// The room.
        room: String,
        /// The new settings (`None`: unchanged).
        settings: Option<Settings>,
        /// Roles that changed: (key, new standing).
        roles: Vec<(String, Standing)>,
    },
}

/// Every room's policy, and the change-log version they reflect.
#[derive(Debug, Default)]
pub struct Policies {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<String, RoomPolicy>,
    version: u64,
}

impl Policies {
    /// The change-log version loaded.
    pub fn version(&self) -> u64 {
        read(&self.state).version
    }

    /// Notes the version loaded (after the rooms that changed up to it are replaced).
    pub fn set_version(&self, version: u64) {
        let mut state = write(&self.state);
        state.version = state.version.max(version);
    }

    /// Replaces `room`'s policy with what the store holds; says what changed that matters.
    pub fn replace(&self, room: &str, record: RoomRecord, now_ms: i64) -> Vec<Effect> {
        let new = RoomPolicy::from_record(record);
        let mut state = write(&self.state);
        let old = state.rooms.remove(room).unwrap_or_default();
        let effects = effects(room, &old, &new, now_ms);
        if new != RoomPolicy::default() {
            state.rooms.insert(room.to_string(), new);
        }
        effects
    }

    /// A copy of `room`'s policy (`None`: it has none: public, ownerless).
    pub fn room(&self, room: &str) -> Option<RoomPolicy> {
        read(&self.state).rooms.get(room).cloned()
    }

    /// `room`'s settings, if it has any.
    pub fn settings(&self, room: &str) -> Option<Settings> {
        read(&self.state)
            .rooms
            .get(room)
            .and_then(|p| p.settings.clone())
    }

    /// Where `key` stands in `room`.
    pub fn standing(&self, room: &str, key: &str) -> Standing {
        let state = read(&self.state);
        let Some(p) = state.rooms.get(room) else {
            return Standing::Member;
        };
        standing(p, key)
    }

    /// Where each of `names` stands in `room`, under one lock (`None`: the room has no policy,
    /// so everyone is a member, and no name is keyed).
    pub fn standings<'n>(
        &self,
        room: &str,
        names: impl Iterator<Item = &'n str>,
    ) -> Option<Vec<Standing>> {
        let state = read(&self.state);
        let p = state.rooms.get(room)?;
        Some(names.map(|n| standing(p, &protocol::name_key(n))).collect())
    }

    /// Why `key` (at `ip`) may not enter `room`: banned there, or it is invite-only and
    /// `key` is neither invited, a member already (`member`), one of its ops nor an admin.
    pub fn may_join(
        &self,
        room: &str,
        key: &str,
        ip: IpAddr,
        admin: bool,
        member: bool,
        now_ms: i64,
    ) -> Result<(), String> {
        let state = read(&self.state);
        let Some(p) = state.rooms.get(room) else {
            return Ok(());
        };
        if let Some(ban) = p.sanction(Kind::Ban, key, Some(ip), now_ms)
            && !admin
        {
            return Err(format!("you are banned from #{room}{}", terms(ban, now_ms)));
        }
        let invite_only = p.settings.as_ref().is_some_and(|s| s.invite_only);
        if invite_only
            && !admin
            && !member
            && standing(p, key) < Standing::Voice
            && !p.invites.contains(key)
        {
            return Err(format!(
                "#{room} is invite-only: ask one of its ops for an invite"
            ));
        }
        Ok(())
    }

    /// Whether `key` holds an invite to `room`.
    pub fn invited(&self, room: &str, key: &str) -> bool {
        read(&self.state)
            .rooms
            .get(room)
            .is_some_and(|p| p.invites.contains(key))
    }

    /// Why `key` may not speak in `room`: muted (with the time left), or the room is moderated
    /// and `key` has neither voice nor an op's role.
    pub fn may_say(&self, room: &str, key: &str, admin: bool, now_ms: i64) -> Result<(), String> {
        let state = read(&self.state);
        let Some(p) = state.rooms.get(room) else {
            return Ok(());
        };
        if admin {
            return Ok(());
        }
        if let Some(mute) = p.sanction(Kind::Mute, key, None, now_ms) {
            return Err(format!("you are muted in #{room}{}", terms(mute, now_ms)));
        }
        let moderated = p.settings.as_ref().is_some_and(|s| s.moderated);
        if moderated && standing(p, key) < Standing::Voice {
            return Err(format!(
                "#{room} is moderated: only its ops and those they give a voice may speak"
            ));
        }
        Ok(())
    }

    /// Whether `room` shows in `rooms` for someone who is (`member`) or is not a member of it.
    pub fn listed(&self, room: &str, member: bool, admin: bool) -> bool {
        member
            || admin
            || !read(&self.state)
                .rooms
                .get(room)
                .and_then(|p| p.settings.as_ref())
                .is_some_and(|s| s.private)
    }

    /// The server-wide ban on account `key` or on a range holding `ip`, if one is in force.
    pub fn banned_from_server(&self, key: &str, ip: IpAddr, now_ms: i64) -> Option<String> {
        let state = read(&self.state);
        let p = state.rooms.get(SERVER)?;
        p.sanction(Kind::Ban, key, Some(ip), now_ms)
            .map(|ban| format!("you are banned from this server{}", terms(ban, now_ms)))
    }

    /// Whether a token with this `jti` (if it has one) for `sub` was revoked.
    pub fn revoked(&self, jti: Option<&str>, sub: &str) -> bool {
        let state = read(&self.state);
        let Some(p) = state.rooms.get(SERVER) else {
            return false;
        };
        let by_sub = format!("sub:{}", crate::protocol::name_key(sub));
        let by_jti = jti.map(|j| format!("jti:{j}"));
        p.sanctions.iter().any(|s| {
            s.kind == Kind::Revoke && (s.target == by_sub || Some(&s.target) == by_jti.as_ref())
        })
    }
}

/// Where `key` stands in the room `p` is the policy of.
pub fn standing(p: &RoomPolicy, key: &str) -> Standing {
    if p.settings
        .as_ref()
        .and_then(|s| s.owner.as_deref())
        .is_some_and(|o| o == key)
    {
        return Standing::Owner;
    }
    match p.roles.get(key) {
        Some(RoomRole::Op) => Standing::Op,
        Some(RoomRole::Voice) => Standing::Voice,
        None => Standing::Member,
    }
}

/// " until 2026-12-08 10:00 UTC (5h left): spam", or ": spam" for good.
fn terms(s: &Sanction, now_ms: i64) -> String {
    let until = match s.until_ms {
        Some(until) => format!(" for {} more", left(until - now_ms)),
        None => String::new(),
    };
    if s.reason.is_empty() {
        until
    } else {
        format!("{until}: {}", s.reason)
    }
}

/// A duration in words, roughly: "3d 4h", "12m", "40s".
pub fn left(ms: i64) -> String {
    let s = (ms.max(0) + 999) / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What changed between a room's old and new policy that the chat acts on.
fn effects(room: &str, old: &RoomPolicy, new: &RoomPolicy, now_ms: i64) -> Vec<Effect> {
    let mut out = Vec::new();
    let active = |p: &RoomPolicy, s: &Sanction| {
        p.sanctions.iter().any(|o| {
            o.kind == s.kind && o.target == s.target && o.until_ms.is_none_or(|u| u > now_ms)
        })
    };
    for s in &new.sanctions {
        if s.until_ms.is_some_and(|u| u <= now_ms) || active(old, s) {
            continue;
        }
        match (s.kind, room == SERVER) {
            (Kind::Ban, false) if !is_range(&s.target) => out.push(Effect::Expel {
                room: room.to_string(),
                key: s.target.clone(),
                by: s.by.clone(),
                reason: s.reason.clone(),
            }),
            (Kind::Ban, true) => out.push(Effect::Banish {
                target: s.target.clone(),
                reason: s.reason.clone(),
            }),
            (Kind::Revoke, true) => out.push(Effect::Revoked(s.target.clone())),
            _ => {}
        }
    }
    if room != SERVER {
        let settings =
            (old.settings != new.settings).then(|| new.settings.clone().unwrap_or_default());
        let mut roles = Vec::new();
        let keys: HashSet<&String> = old.roles.keys().chain(new.roles.keys()).collect();
        let owners = [&old.settings, &new.settings]
            .into_iter()
            .filter_map(|s| s.as_ref().and_then(|s| s.owner.as_ref()));
        for key in keys.into_iter().chain(owners) {
            let (was, is) = (standing(old, key), standing(new, key));
            if was != is && !roles.iter().any(|(k, _)| k == key) {
                roles.push((key.clone(), is));
            }
        }
        if settings.is_some() || !roles.is_empty() {
            out.push(Effect::Changed {
                room: room.to_string(),
                settings,
                roles,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: &str, until_ms: Option<i64>) -> Sanction {
        Sanction {
            room: "dev".into(),
            target: target.into(),
            kind: Kind::Ban,
            by: "root".into(),
            reason: "spam".into(),
            created: String::new(),
            until_ms,
        }
    }

    #[test]
    fn bans_keep_out_until_they_end_and_ranges_hold_addresses() {
        let p = Policies::default();
        let record = RoomRecord {
            sanctions: vec![ban("bob", Some(10_000)), ban("203.0.113.0/24", None)],
            ..Default::default()
        };
        let effects = p.replace("dev", record, 0);
        assert_eq!(effects.len(), 1, "only an account is expelled: {effects:?}");
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let err = p
            .may_join("dev", "bob", ip, false, true, 5_000)
            .unwrap_err();
        assert!(err.contains("banned from #dev for 5s more: spam"), "{err}");
        assert!(
            p.may_join("dev", "bob", ip, false, true, 10_000).is_ok(),
            "ended"
        );
        assert!(
            p.may_join("dev", "bob", ip, true, true, 5_000).is_ok(),
            "admins pass"
        );
        let inside: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(p.may_join("dev", "carl", inside, false, false, 0).is_err());
    }

    #[test]
    fn invite_only_rooms_admit_members_ops_and_the_invited() {
        let p = Policies::default();
        let record = RoomRecord {
            settings: Some(Settings {
                owner: Some("ann".into()),
                invite_only: true,
                ..Default::default()
            }),
            roles: vec![("olga".into(), RoomRole::Op)],
            invites: vec!["ivan".into()],
            ..Default::default()
        };
        let effects = p.replace("hiring", record, 0);
        assert!(matches!(&effects[..], [Effect::Changed { roles, .. }] if roles.len() == 2));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for (key, member, ok) in [
            ("ann", false, true),
            ("olga", false, true),
            ("ivan", false, true),
            ("mike", true, true),
            ("eve", false, false),
        ] {
            assert_eq!(
                p.may_join("hiring", key, ip, false, member, 0).is_ok(),
                ok,
                "{key}"
            );
        }
        assert_eq!(p.standing("hiring", "ann"), Standing::Owner);
        assert_eq!(p.standing("hiring", "eve"), Standing::Member);
        assert!(!p.listed("hiring", false, false) || !p.settings("hiring").unwrap().private);
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(left(40_000), "40s");
        assert_eq!(left(12 * 60_000), "12m");
        assert_eq!(left(5 * 3_600_000 + 60_000), "5h 1m");
        assert_eq!(left(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
    }
}
