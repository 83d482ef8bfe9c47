use super::*;
use crate::protocol::{Role, b, decode};

#[test]
fn a_batch_of_joins_and_leaves_is_two_lines_with_the_room_size() {
    let joined: Vec<UserInfo> = (0..10)
        .map(|i| UserInfo {
            name: format!("u{i}").into(),
            role: Role::User,
            room_role: None,
        })
        .collect();
    let msg = ServerMsg::Presence {
        room: b("lobby"),
        joined,
        left: vec![b("ann\u{1b}[2J")],
        unlisted: 0,
        user_count: 250,
    };
    let lines: Vec<String> = render(&msg, &clock(), "me")
        .iter()
        .map(|l| l.plain())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with("#lobby --> u0, u1, u2, u3, u4, u5, u6, u7 and 2 others joined"),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with("#lobby <-- ann left (250 here)"),
        "{lines:?}"
    );
}

#[test]
fn sanitize_strips_escapes_controls_and_bidi() {
    assert_eq!(sanitize("a\u{1b}]0;pwned\u{7}b"), "ab");
    assert_eq!(sanitize("a\u{1b}[2Jb"), "ab");
    assert_eq!(sanitize("a\u{1b}[38;5;1mred\u{1b}[0m"), "ared");
    assert_eq!(
        sanitize("x\u{1b}]8;;http://e\u{1b}\\link\u{1b}]8;;\u{1b}\\y"),
        "xlinky"
    );
    assert_eq!(
        sanitize("bell\u{7} nul\u{0} del\u{7f} c1\u{9b}31m"),
        "bell nul del c131m"
    );
    assert_eq!(sanitize("evil\u{202e}txt.exe\u{2066}"), "eviltxt.exe");
    assert_eq!(sanitize("two\nlines\ttab"), "two lines tab");
    assert_eq!(sanitize("héllo wörld ✓"), "héllo wörld ✓");
    assert_eq!(sanitize("trailing\u{1b}"), "trailing");
}

/// Promises issue, item 13: what shows nothing but changes the text is shown as its code
/// point; joiners inside emoji or scripts, and a subdivision flag's tags, are left alone.
#[test]
fn hidden_characters_are_shown_as_code_points() {
    assert_eq!(sanitize("pass\u{200b}word"), "pass⟨U+200B⟩word");
    assert_eq!(sanitize("a\u{2060}b\u{feff}"), "a⟨U+2060⟩b⟨U+FEFF⟩");
    assert_eq!(sanitize("ok\u{200d}go"), "ok⟨U+200D⟩go");
    // ASCII smuggled in tag characters ("hi" as U+E0068 U+E0069).
    assert_eq!(sanitize("nice\u{e0068}\u{e0069}"), "nice⟨U+E0068⟩⟨U+E0069⟩");
    let family = "👨\u{200d}👩\u{200d}👧";
    assert_eq!(sanitize(family), family);
    let persian = "می\u{200c}خواهم";
    assert_eq!(sanitize(persian), persian);
    let scotland = "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}";
    assert_eq!(sanitize(scotland), scotland);
}

#[test]
fn json_escape_keeps_json_valid() {
    let raw = "{\"text\":\"a\u{9b}b\u{202e}c\"}";
    let escaped = escape_json_for_terminal(raw);
    assert!(!escaped.contains('\u{9b}') && !escaped.contains('\u{202e}'));
    let v: serde_json::Value = serde_json::from_str(&escaped).unwrap();
    assert_eq!(v["text"], "a\u{9b}b\u{202e}c");
}

fn clock() -> Clock {
    let now = DateTime::parse_from_rfc3339("2026-11-25T18:55:00.000Z").unwrap();
    Clock::at(now.with_timezone(&Local))
}

fn local(ts: &str, fmt: &str) -> String {
    DateTime::parse_from_rfc3339(ts)
        .unwrap()
        .with_timezone(&Local)
        .format(fmt)
        .to_string()
}

#[test]
fn renders_events_safely_with_their_own_time() {
    let ts = "2026-11-25T18:51:42.123Z";
    let m = decode(&format!(
            r#"{{"type":"message","id":1,"seq":1,"ts":"{ts}","room":"lobby","from":"alice","text":"hi\u001b[2J"}}"#
        ))
        .unwrap();
    let lines = render(&m, &clock(), "bob");
    let time = local(ts, "%H:%M:%S");
    assert_eq!(lines[0].plain(), format!("{time} #lobby <alice> hi"));
    assert_eq!(
        render(&decode(r#"{"type":"ack"}"#).unwrap(), &clock(), "bob"),
        vec![]
    );
}

#[test]
fn history_from_another_day_shows_its_date() {
    let old = "2026-11-20T23:59:00.000Z";
    let w = ServerMsg::Welcome {
        name: b("bob"),
        room: b("lobby"),
        users: vec![UserInfo {
            name: b("alice"),
            role: Role::Admin,
            room_role: None,
        }],
        user_count: 1,
        epoch: b("e"),
        seq: 1,
        resumed: None,
        more: false,
        rooms: Vec::new(),
        sessions: 0,
        session: b(""),
        conversations: Vec::new(),
        settings: Default::default(),
        history: vec![ServerMsg::Message(ChatMessage {
            id: 1,
            seq: 1,
            ts: b(old),
            room: b("lobby"),
            from: b("alice"),
            role: Role::Admin,
            text: b("old"),
            action: true,
            ..Default::default()
        })],
        server: crate::protocol::ServerInfo {
            version: b("x"),
            max_message_bytes: 1,
            ping_interval_secs: 1.0,
            rate_per_sec: 0.0,
            rate_burst: 0,
            typing_rate_per_sec: 0.0,
            typing_burst: 0,
        },
        reference: None,
    };
    let lines = render(&w, &clock(), "bob");
    assert!(lines[0].plain().contains("alice(admin)"));
    assert_eq!(
        lines[1].plain(),
        format!(
            "{} [history] #lobby * alice old",
            local(old, "%Y-%m-%d %H:%M:%S")
        )
    );
    assert_eq!(lines[1].kind, LineKind::History);
}

#[test]
fn mentions_are_whole_names() {
    assert!(mentions("hey henry, look", "henry"));
    assert!(mentions("HENRY!", "henry"));
    assert!(mentions("ping henry.", "henry"));
    assert!(!mentions("henrys thing", "henry"));
    assert!(!mentions("ahenry", "henry"));
    assert!(!mentions("anything", ""));
}

#[test]
fn typing_view_lists_names() {
    let mut t = TypingView::default();
    let now = std::time::Instant::now();
    for who in ["bob", "alice"] {
        t.update(who, Some("lobby"), TypingState::Active, now);
    }
    t.update("carol", Some("dev"), TypingState::Active, now);
    assert_eq!(t.status("lobby"), "alice and bob are typing…");
    t.message_from("bob", Some("lobby"));
    assert_eq!(t.status("lobby"), "alice is typing…");
    assert!(t.expire(now + TypingView::SHOW_FOR));
    assert_eq!(t.status("lobby"), "");
}
