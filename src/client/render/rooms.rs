//! Rooms that belong to someone, shown: a room's topic and settings, standings beside names,
//! what changed, and the replies to `bans` and `audit`.

use super::{Line, LineKind, sanitize};
use crate::protocol::{AuditInfo, BanInfo, RoomSettings, UserInfo};

/// `~` the owner, `@` an op, `+` a voice (as IRC shows them), `(admin)` a server admin.
pub(super) fn shown_name(u: &UserInfo<'_>) -> String {
    let mark = match u.room_role.as_deref() {
        Some("owner") => "~",
        Some("op") => "@",
        Some("voice") => "+",
        _ => "",
    };
    let admin = if u.role == crate::protocol::Role::Admin {
        "(admin)"
    } else {
        ""
    };
    format!("{mark}{}{admin}", sanitize(&u.name))
}

/// "private, invite-only, moderated" (empty for a plain public room).
fn flags(s: &RoomSettings<'_>) -> String {
    let mut flags = Vec::new();
    if s.visibility.as_deref() == Some("private") {
        flags.push("private");
    }
    if s.invite_only {
        flags.push("invite-only");
    }
    if s.moderated {
        flags.push("moderated");
    }
    flags.join(", ")
}

/// The line under a room's name: its topic and settings, if it has any.
pub(super) fn settings_line(now: &str, room: &str, s: &RoomSettings<'_>) -> Option<Line> {
    let flags = flags(s);
    if s.topic.is_empty() && flags.is_empty() {
        return None;
    }
    let topic = if s.topic.is_empty() {
        "no topic".to_string()
    } else {
        format!("topic: {}", sanitize(&s.topic))
    };
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{flags}]")
    };
    Some(Line::info(
        LineKind::Info,
        format!("{now} -!- #{}: {topic}{flags}", sanitize(room)),
    ))
}

/// A `room_changed` event.
pub(super) fn changed(
    now: &str,
    room: &str,
    settings: Option<&RoomSettings<'_>>,
    name: Option<&str>,
    standing: Option<&str>,
) -> Vec<Line> {
    let mut lines = Vec::new();
    if let Some(s) = settings {
        let line = settings_line(now, room, s).unwrap_or_else(|| {
            Line::info(
                LineKind::Info,
                format!("{now} -!- #{}: no topic, public", sanitize(room)),
            )
        });
        lines.push(line);
    }
    if let (Some(name), Some(standing)) = (name, standing) {
        let now_is = match standing {
            "member" => "no longer an op or a voice".to_string(),
            other => format!("now {other}"),
        };
        lines.push(Line::new(
            LineKind::Presence,
            format!("{now} -!- #{}: ", sanitize(room)),
            Some(name),
            format!(" is {now_is} of #{}", sanitize(room)),
        ));
    }
    lines
}

/// The reply to `bans`.
pub(super) fn bans(now: &str, room: &str, bans: &[BanInfo<'_>], more: bool) -> Vec<Line> {
    let room = sanitize(room);
    let mut lines = vec![Line::info(
        LineKind::Info,
        match bans.len() {
            0 => format!("{now} -!- #{room}: no bans or mutes"),
            n => format!(
                "{now} -!- #{room}: {n} bans and mutes{}:",
                if more { " (the newest)" } else { "" }
            ),
        },
    )];
    for ban in bans {
        let who = ban
            .name
            .as_deref()
            .or(ban.address.as_deref())
            .unwrap_or("?");
        let until = ban
            .until
            .as_deref()
            .map_or("for good".to_string(), |u| format!("until {}", sanitize(u)));
        let why = if ban.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", sanitize(&ban.reason))
        };
        lines.push(Line::info(
            LineKind::Info,
            format!(
                "{now} -!-   {} {} by {}, {until}{why}",
                sanitize(&ban.kind),
                sanitize(who),
                sanitize(&ban.by)
            ),
        ));
    }
    lines
}

/// The reply to `audit`.
pub(super) fn audit(now: &str, room: &str, entries: &[AuditInfo<'_>]) -> Vec<Line> {
    let mut lines = vec![Line::info(
        LineKind::Info,
        format!(
            "{now} -!- #{}: moderation log, newest first:",
            sanitize(room)
        ),
    )];
    for e in entries {
        let target = if e.target.is_empty() {
            String::new()
        } else {
            format!(" {}", sanitize(&e.target))
        };
        let reason = if e.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", sanitize(&e.reason))
        };
        lines.push(Line::info(
            LineKind::Info,
            format!(
                "{now} -!-   {} {} {}{target}{reason}",
                sanitize(&e.ts),
                sanitize(&e.by),
                sanitize(&e.action)
            ),
        ));
    }
    lines
}
