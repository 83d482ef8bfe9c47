//! The moderation commands (`/topic`, `/op`, `/ban` …): what each typed line asks of the room on
//! screen (or, for `/gban` and `/gunban`, of the server), as a request.

use crate::protocol::ClientMsg;

/// A moderation command, for the room on screen unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moderate {
    /// `/topic text` (empty: none).
    Topic(String),
    /// `/op`, `/deop`, `/voice`, `/devoice NAME`: a standing (`op`, `voice`, `member`).
    Role(String, &'static str),
    /// `/invite NAME`, `/uninvite NAME`.
    Invite(String, bool),
    /// `/ban NAME|RANGE [DURATION] [reason]` (`server`: `/gban`, admins).
    Ban {
        /// A name, or an address range.
        target: String,
        /// "7d", if given.
        duration: Option<String>,
        /// Why.
        reason: Option<String>,
        /// Server-wide.
        server: bool,
    },
    /// `/unban NAME|RANGE` (`/gunban`).
    Unban {
        /// A name, or an address range.
        target: String,
        /// Server-wide.
        server: bool,
    },
    /// `/mute NAME [DURATION] [reason]`.
    Mute {
        /// Whom.
        name: String,
        /// "10m", if given.
        duration: Option<String>,
        /// Why.
        reason: Option<String>,
    },
    /// `/unmute NAME`.
    Unmute(String),
    /// `/private` (private and invite-only) or `/public`.
    Private(bool),
    /// `/moderated on|off`.
    Moderated(bool),
    /// `/transfer NAME`.
    Transfer(String),
    /// `/bans`.
    Bans,
    /// `/audit`.
    Audit,
}

/// The commands, for `/help`.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("/topic", "text", "set the room's topic (ops)"),
    ("/op /deop", "NAME", "make or unmake an op (the owner)"),
    (
        "/voice /devoice",
        "NAME",
        "let speak in a moderated room (ops)",
    ),
    ("/invite", "NAME", "let into an invite-only room (ops)"),
    (
        "/ban",
        "NAME [7d] [why]",
        "ban from the room (ops; /gban: the server)",
    ),
    ("/unban", "NAME", "lift a ban (/gunban: the server's)"),
    ("/mute", "NAME [10m] [why]", "keep from speaking (ops)"),
    ("/unmute", "NAME", "lift a mute"),
    (
        "/private /public",
        "",
        "hide the room and make it invite-only, or not",
    ),
    ("/moderated", "on|off", "only ops and voices speak"),
    ("/transfer", "NAME", "give the room away (the owner)"),
    (
        "/bans /audit",
        "",
        "the room's bans and mutes, its moderation log",
    ),
];

/// Whether `word` reads as a duration ("7d", "90m").
fn is_duration(word: &str) -> bool {
    let digits = word.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
    !digits.is_empty()
        && digits.len() + 1 == word.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `NAME [DURATION] [reason]`.
fn sanction(rest: &str) -> Option<(String, Option<String>, Option<String>)> {
    let mut words = rest.splitn(2, char::is_whitespace);
    let target = words.next().filter(|w| !w.is_empty())?.to_string();
    let rest = words.next().unwrap_or("").trim();
    let (duration, reason) = match rest.split_once(char::is_whitespace) {
        Some((first, more)) if is_duration(first) => (Some(first.to_string()), Some(more.trim())),
        None if is_duration(rest) => (Some(rest.to_string()), None),
        _ => (None, Some(rest)),
    };
    let reason = reason.filter(|r| !r.is_empty()).map(str::to_string);
    Some((target, duration, reason))
}

/// The moderation command `verb` with `rest`, if it is one: `Ok` with it, `Err` with a usage
/// hint when it is used wrongly, `None` when `verb` is not a moderation command.
pub fn parse(verb: &str, rest: &str) -> Option<Result<Moderate, String>> {
    let one = |f: &dyn Fn(String) -> Moderate, usage: &str| {
        let name = rest.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            Err(format!("usage: /{verb} {usage}"))
        } else {
            Ok(f(name.to_string()))
        }
    };
    Some(match verb {
        "topic" => Ok(Moderate::Topic(rest.trim().to_string())),
        "op" => one(&|n| Moderate::Role(n, "op"), "NAME"),
        "deop" | "devoice" => one(&|n| Moderate::Role(n, "member"), "NAME"),
        "voice" => one(&|n| Moderate::Role(n, "voice"), "NAME"),
        "invite" => one(&|n| Moderate::Invite(n, true), "NAME"),
        "uninvite" => one(&|n| Moderate::Invite(n, false), "NAME"),
        "unmute" => one(&Moderate::Unmute, "NAME"),
        "transfer" => one(&Moderate::Transfer, "NAME"),
        "unban" | "gunban" => one(
            &|target| Moderate::Unban {
                target,
                server: verb == "gunban",
            },
            "NAME",
        ),
        "ban" | "gban" => match sanction(rest) {
            Some((target, duration, reason)) => Ok(Moderate::Ban {
                target,
                duration,
                reason,
                server: verb == "gban",
            }),
            None => Err(format!("usage: /{verb} NAME [DURATION like 7d] [reason]")),
        },
        "mute" => match sanction(rest) {
            Some((name, duration, reason)) => Ok(Moderate::Mute {
                name,
                duration,
                reason,
            }),
            None => Err("usage: /mute NAME [DURATION like 10m] [reason]".into()),
        },
        "private" => Ok(Moderate::Private(true)),
        "public" => Ok(Moderate::Private(false)),
        "moderated" => match rest.trim() {
            "on" | "" => Ok(Moderate::Moderated(true)),
            "off" => Ok(Moderate::Moderated(false)),
            _ => Err("usage: /moderated on|off".into()),
        },
        "bans" => Ok(Moderate::Bans),
        "audit" => Ok(Moderate::Audit),
        _ => return None,
    })
}

/// An address range rather than a name (`/ban 203.0.113.0/24`).
fn is_range(target: &str) -> bool {
    target.contains('/') || target.contains(':') || target.parse::<std::net::IpAddr>().is_ok()
}

/// The request `m` sends, about `room`.
pub fn request(m: &Moderate, room: &str) -> ClientMsg {
    let room = room.to_string();
    let split = |t: &str| {
        if is_range(t) {
            (None, Some(t.to_string()))
        } else {
            (Some(t.to_string()), None)
        }
    };
    match m {
        Moderate::Topic(topic) => ClientMsg::RoomSet {
            room,
            topic: Some(topic.clone()),
            visibility: None,
            invite_only: None,
            moderated: None,
        },
        Moderate::Private(private) => ClientMsg::RoomSet {
            room,
            topic: None,
            visibility: Some(if *private { "private" } else { "public" }.into()),
            invite_only: Some(*private),
            moderated: None,
        },
        Moderate::Moderated(on) => ClientMsg::RoomSet {
            room,
            topic: None,
            visibility: None,
            invite_only: None,
            moderated: Some(*on),
        },
        Moderate::Role(name, role) => ClientMsg::Role {
            room,
            name: name.clone(),
            role: (*role).to_string(),
        },
        Moderate::Invite(name, true) => ClientMsg::Invite {
            room,
            name: name.clone(),
        },
        Moderate::Invite(name, false) => ClientMsg::Uninvite {
            room,
            name: name.clone(),
        },
        Moderate::Ban {
            target,
            duration,
            reason,
            server,
        } => {
            let (name, address) = split(target);
            ClientMsg::Ban {
                room: if *server { "*".into() } else { room },
                name,
                address,
                duration: duration.clone(),
                reason: reason.clone(),
            }
        }
        Moderate::Unban { target, server } => {
            let (name, address) = split(target);
            ClientMsg::Unban {
                room: if *server { "*".into() } else { room },
                name,
                address,
            }
        }
        Moderate::Mute {
            name,
            duration,
            reason,
        } => ClientMsg::Mute {
            room,
            name: name.clone(),
            duration: duration.clone(),
            reason: reason.clone(),
        },
        Moderate::Unmute(name) => ClientMsg::Unmute {
            room,
            name: name.clone(),
        },
        Moderate::Transfer(to) => ClientMsg::Transfer {
            room,
            to: to.clone(),
        },
        Moderate::Bans => ClientMsg::Bans { room },
        Moderate::Audit => ClientMsg::Audit { room },
    }
}

/// What chatctl says once the server has done `m` in `room`.
pub fn done(m: &Moderate, room: &str) -> String {
    let forever = |d: &Option<String>| d.as_ref().map_or(String::new(), |d| format!(" for {d}"));
    match m {
        Moderate::Topic(t) if t.is_empty() => format!("#{room} has no topic now"),
        Moderate::Topic(t) => format!("#{room}'s topic is now: {t}"),
        Moderate::Role(name, role) => format!("{name} is now {role} of #{room}"),
        Moderate::Invite(name, true) => format!("{name} may join #{room} now"),
        Moderate::Invite(name, false) => format!("{name}'s invite to #{room} is revoked"),
        Moderate::Ban {
            target,
            duration,
            server,
            ..
        } => {
            let from = if *server {
                "the server".to_string()
            } else {
                format!("#{room}")
            };
            format!("{target} is banned from {from}{}", forever(duration))
        }
        Moderate::Unban { target, server } => {
            let from = if *server {
                "the server".to_string()
            } else {
                format!("#{room}")
            };
            format!("{target} is no longer banned from {from}")
        }
        Moderate::Mute { name, duration, .. } => {
            format!("{name} is muted in #{room}{}", forever(duration))
        }
        Moderate::Unmute(name) => format!("{name} may speak in #{room} again"),
        Moderate::Private(true) => format!("#{room} is private and invite-only now"),
        Moderate::Private(false) => format!("#{room} is public now"),
        Moderate::Moderated(on) => {
            format!("#{room} is {}moderated now", if *on { "" } else { "not " })
        }
        Moderate::Transfer(to) => format!("#{room} belongs to {to} now"),
        Moderate::Bans | Moderate::Audit => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_names_durations_and_reasons() {
        assert_eq!(
            parse("ban", "bob 7d spamming links"),
            Some(Ok(Moderate::Ban {
                target: "bob".into(),
                duration: Some("7d".into()),
                reason: Some("spamming links".into()),
                server: false
            }))
        );
        assert_eq!(
            parse("mute", "bob being rude"),
            Some(Ok(Moderate::Mute {
                name: "bob".into(),
                duration: None,
                reason: Some("being rude".into())
            }))
        );
        assert_eq!(
            parse("gban", "eve 30d"),
            Some(Ok(Moderate::Ban {
                target: "eve".into(),
                duration: Some("30d".into()),
                reason: None,
                server: true
            }))
        );
        assert!(matches!(parse("op", ""), Some(Err(_))));
        assert_eq!(parse("dance", ""), None);
        let ban = request(&parse("ban", "203.0.113.0/24").unwrap().unwrap(), "dev");
        assert!(matches!(
            ban,
            ClientMsg::Ban {
                address: Some(_),
                name: None,
                ..
            }
        ));
        assert_eq!(
            request(&Moderate::Private(true), "hiring"),
            ClientMsg::RoomSet {
                room: "hiring".into(),
                topic: None,
                visibility: Some("private".into()),
                invite_only: Some(true),
                moderated: None
            }
        );
    }
}
