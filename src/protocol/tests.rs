use super::*;

#[test]
fn a_password_never_shows_in_debug_output() {
    let r = parse_request(r#"{"type":"hello","name":"h","password":"s3cret words"}"#).unwrap();
    let shown = format!("{r:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    let e = parse_request(r#"{"type":"register","name":"h"}"#).unwrap_err();
    assert!(e.message.contains("password"), "{}", e.message);
}

#[test]
fn parses_each_request_type() {
    let r = parse_request(r#"{"type":"hello","name":"henry","id":"1"}"#).unwrap();
    assert_eq!(r.id.as_deref(), Some("1"));
    assert_eq!(
        r.msg,
        ClientMsg::Hello {
            name: "henry".into(),
            room: None,
            token: None,
            password: None,
            since: None,
            epoch: None,
            device: None,
        }
    );
    let r = parse_request(r#"{"type":"typing","to":"bob","state":"paused"}"#).unwrap();
    assert_eq!(
        r.msg,
        ClientMsg::Typing {
            target: Target::User("bob".into()),
            state: TypingState::Paused
        }
    );
    assert_eq!(
        parse_request(r#"{"type":"rooms"}"#).unwrap().msg,
        ClientMsg::Rooms
    );
}

/// What a client serialises is what the server parses, for every request type.
#[test]
fn client_requests_round_trip_through_the_server_parser() {
    let all = [
        ClientMsg::Hello {
            name: "henry".into(),
            room: Some("rust".into()),
            token: Some("t".into()),
            password: Some(Password("hunter2 hunter2".into())),
            since: Some(41),
            epoch: Some("e1".into()),
            device: Some("phone".into()),
        },
        ClientMsg::Read {
            room: "lobby".into(),
            seq: 812,
        },
        ClientMsg::Register {
            name: "henry".into(),
            password: Password("correct horse".into()),
            invite: Some("c0de".into()),
            room: None,
            device: None,
        },
        ClientMsg::ReadPm {
            with: "bob".into(),
            msg: 90,
        },
        ClientMsg::RoomSet {
            room: "hiring".into(),
            topic: Some("who we hire".into()),
            visibility: Some("private".into()),
            invite_only: Some(true),
            moderated: None,
        },
        ClientMsg::Role {
            room: "hiring".into(),
            name: "olga".into(),
            role: "op".into(),
        },
        ClientMsg::Transfer {
            room: "hiring".into(),
            to: "olga".into(),
        },
        ClientMsg::Invite {
            room: "hiring".into(),
            name: "ivan".into(),
        },
        ClientMsg::Uninvite {
            room: "hiring".into(),
            name: "ivan".into(),
        },
        ClientMsg::Ban {
            room: "*".into(),
            name: None,
            address: Some("203.0.113.0/24".into()),
            duration: Some("7d".into()),
            reason: Some("spam".into()),
        },
        ClientMsg::Unban {
            room: "dev".into(),
            name: Some("bob".into()),
            address: None,
        },
        ClientMsg::Mute {
            room: "dev".into(),
            name: "bob".into(),
            duration: None,
            reason: None,
        },
        ClientMsg::Unmute {
            room: "dev".into(),
            name: "bob".into(),
        },
        ClientMsg::Bans { room: "dev".into() },
        ClientMsg::Audit { room: "dev".into() },
        ClientMsg::Sessions,
        ClientMsg::Logout {
            session: "node-1|17".into(),
        },
        ClientMsg::Join {
            room: "a".into(),
            since: None,
            epoch: None,
        },
        ClientMsg::Search {
            query: "cats dogs".into(),
            room: None,
            limit: Some(5),
            before: Some(90),
        },
        ClientMsg::Leave { room: "a".into() },
        ClientMsg::Say {
            room: None,
            text: "hi \"there\"\n".into(),
            action: true,
            reply_to: None,
        },
        ClientMsg::Say {
            room: Some("a".into()),
            text: "agreed".into(),
            action: false,
            reply_to: Some(41),
        },
        ClientMsg::Edit {
            at: Where::Room("a".into()),
            msg: 41,
            text: "fixed".into(),
        },
        ClientMsg::Delete {
            at: Where::With("bob".into()),
            msg: 41,
        },
        ClientMsg::React {
            room: "a".into(),
            msg: 41,
            emoji: "👍".into(),
            on: false,
        },
        ClientMsg::Pm {
            to: "bob".into(),
            text: "psst".into(),
            action: false,
        },
        ClientMsg::Typing {
            target: Target::Room("lobby".into()),
            state: TypingState::Active,
        },
        ClientMsg::Typing {
            target: Target::User("bob".into()),
            state: TypingState::Done,
        },
        ClientMsg::Rooms,
        ClientMsg::Who {
            room: None,
            after: Some("bob".into()),
        },
        ClientMsg::Kick {
            name: "bob".into(),
            reason: Some("spam".into()),
        },
        ClientMsg::Announce { text: "hi".into() },
        ClientMsg::Nick { name: "h2".into() },
        ClientMsg::History {
            room: Some("lobby".into()),
            before: Some(7),
            after: None,
            limit: Some(5),
            with: None,
        },
        ClientMsg::History {
            room: None,
            before: None,
            after: Some(3),
            limit: None,
            with: Some("alice".into()),
        },
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for msg in all {
        // Every type is counted under its own label in chatd_messages_received_total.
        assert!(ClientMsg::KINDS.contains(&msg.kind()), "{}", msg.kind());
        kinds.insert(msg.kind());
        let request = Request::new("42", msg);
        let json = request.to_json();
        assert!(
            json.contains(&format!(r#""type":"{}""#, request.msg.kind())),
            "{json}"
        );
        assert_eq!(parse_request(&json), Ok(request), "{json}");
    }
    assert_eq!(
        kinds.len(),
        ClientMsg::KINDS.len(),
        "a request type is not tested here"
    );
    let anonymous = Request {
        id: None,
        msg: ClientMsg::Rooms,
    };
    assert_eq!(anonymous.to_json(), r#"{"type":"rooms"}"#);
}

/// What the server encodes is what a client decodes, for every event and reply.
#[test]
fn server_messages_round_trip_through_the_client_decoder() {
    let m = ChatMessage {
        id: 3,
        seq: 2,
        ts: b("2026-11-25T18:51:42.123Z"),
        room: b("lobby"),
        from: b("alice"),
        role: Role::Admin,
        text: b("hi"),
        action: true,
        ..Default::default()
    };
    let user = UserInfo {
        name: b("alice"),
        role: Role::User,
        room_role: None,
    };
    let all = [
        ServerMsg::Welcome {
            name: b("alice"),
            room: b("lobby"),
            users: vec![user.clone()],
            user_count: 1,
            history: vec![ServerMsg::Message(m.clone())],
            epoch: b("e1"),
            seq: 2,
            resumed: Some(true),
            more: true,
            rooms: Vec::new(),
            sessions: 2,
            session: b("n1|7"),
            conversations: vec![crate::protocol::ConversationInfo {
                with: b("bob"),
                last: 90,
                read: 88,
                unread: 2,
            }],
            settings: crate::protocol::RoomSettings {
                topic: b("all about rust"),
                visibility: Some(b("private")),
                invite_only: true,
                moderated: false,
                owner: Some(b("ann")),
            },
            server: ServerInfo {
                version: b("0.1.0"),
                max_message_bytes: 65536,
                ping_interval_secs: 30.0,
                rate_per_sec: 10.0,
                rate_burst: 20,
                typing_rate_per_sec: 2.0,
                typing_burst: 10,
            },
            reference: Some(b("1")),
        },
        ServerMsg::RoomChanged {
            room: b("dev"),
            settings: None,
            name: Some(b("bob")),
            room_role: Some(b("op")),
        },
        ServerMsg::Bans {
            room: b("dev"),
            bans: vec![crate::protocol::BanInfo {
                name: Some(b("bob")),
                address: None,
                kind: b("ban"),
                by: b("ann"),
                reason: b("spam"),
                since: b("2026-12-07T06:00:00.000Z"),
                until: None,
            }],
            more: false,
            reference: Some(b("9")),
        },
        ServerMsg::Audit {
            room: b("dev"),
            entries: vec![crate::protocol::AuditInfo {
                by: b("ann"),
                action: b("ban"),
                target: b("bob"),
                reason: b("spam"),
                ts: b("2026-12-07T06:00:00.000Z"),
            }],
            reference: None,
        },
        ServerMsg::Sessions {
            sessions: vec![crate::protocol::SessionInfo {
                session: b("n1|7"),
                device: Some(b("phone")),
                since: b("2026-12-07T06:00:00.000Z"),
                current: true,
            }],
            reference: None,
        },
        ServerMsg::Room {
            room: b("rust"),
            users: vec![user.clone()],
            user_count: 3,
            history: vec![],
            epoch: b("e2"),
            seq: 0,
            resumed: None,
            more: false,
            settings: Default::default(),
            reference: None,
        },
        ServerMsg::Rooms {
            rooms: vec![RoomInfo {
                topic: b("rust talk"),
                private: true,
                name: b("lobby"),
                members: 2,
            }],
            reference: Some(b("x")),
        },
        ServerMsg::Who {
            room: b("lobby"),
            users: vec![user],
            user_count: 9,
            more: true,
            reference: None,
        },
        ServerMsg::History {
            room: b("lobby"),
            with: None,
            messages: vec![ServerMsg::Message(m.clone())],
            more: true,
            reference: None,
        },
        ServerMsg::Search {
            query: b("hi"),
            messages: vec![ServerMsg::Message(m.clone())],
            more: false,
            reference: Some(b("s")),
        },
        ServerMsg::Ack {
            reference: Some(b("6")),
            id: Some(17),
            seq: Some(4),
            ts: Some(b("t")),
            room: None,
            name: None,
            with: None,
            offline: false,
            read: None,
            unread: None,
            mentions: None,
        },
        ServerMsg::Renamed {
            from: b("a"),
            to: b("b"),
        },
        ServerMsg::Presence {
            room: b("r"),
            joined: vec![UserInfo {
                name: b("n"),
                role: Role::Admin,
                room_role: None,
            }],
            left: vec![b("m")],
            unlisted: 3,
            user_count: 250,
        },
        ServerMsg::Error {
            code: ErrorCode::NameTaken,
            message: b("taken"),
            reference: Some(b("7")),
        },
        ServerMsg::Message(m),
        ServerMsg::Pm {
            id: 1,
            ts: b("t"),
            from: b("a"),
            role: Role::User,
            to: b("b"),
            text: b("psst"),
            action: false,
            edited_ts: None,
            deleted: false,
        },
        ServerMsg::Joined {
            room: b("r"),
            name: b("n"),
            role: Role::User,
        },
        ServerMsg::Left {
            room: b("r"),
            name: b("n"),
        },
        ServerMsg::Kicked {
            room: b("r"),
            name: b("n"),
            by: b("root"),
            reason: b("spam"),
        },
        ServerMsg::Typing {
            from: b("a"),
            room: Some(b("r")),
            to: None,
            state: TypingState::Paused,
        },
        ServerMsg::Notice {
            from: b("server"),
            text: b("bye"),
        },
    ];
    for msg in all {
        let json = encode(&msg);
        assert_eq!(decode(json.as_str()).unwrap(), msg, "{json}");
    }
}

#[test]
fn errors_keep_the_id_and_name_the_field() {
    let e = parse_request(r#"{"type":"say","id":"x"}"#).unwrap_err();
    assert_eq!(
        (e.code, e.id.as_deref()),
        (ErrorCode::BadRequest, Some("x"))
    );
    assert!(e.message.contains("`text`"), "{}", e.message);
    let e = parse_request(r#"{"type":"dance","id":"y"}"#).unwrap_err();
    assert_eq!(
        (e.code, e.id.as_deref()),
        (ErrorCode::UnknownType, Some("y"))
    );
    let e = parse_request(r#"{"type":"say","text":5,"id":"z"}"#).unwrap_err();
    assert_eq!(
        (e.code, e.id.as_deref()),
        (ErrorCode::BadRequest, Some("z"))
    );
    let e = parse_request("{not json").unwrap_err();
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
    let long = "a".repeat(65);
    let e = parse_request(&format!(r#"{{"type":"rooms","id":"{long}"}}"#)).unwrap_err();
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
}

#[test]
fn name_rules() {
    assert!(validate_name("henry_1.x-Y").is_ok());
    assert_eq!(validate_name(""), Err(NameError::Invalid));
    assert_eq!(validate_name(&"a".repeat(33)), Err(NameError::Invalid));
    assert!(validate_name(&"a".repeat(32)).is_ok());
    assert_eq!(validate_name("hé"), Err(NameError::Invalid));
    assert_eq!(validate_name("a b"), Err(NameError::Invalid));
    assert_eq!(validate_name("Server"), Err(NameError::Reserved));
    assert_eq!(validate_name("ADMIN"), Err(NameError::Reserved));
    // Look-alikes and separators do not get around the reserved names.
    for name in ["server_", "admin.", "adm1n", "sys-tem", "5erver_x"] {
        let reserved = validate_name(name) == Err(NameError::Reserved);
        assert_eq!(reserved, name != "5erver_x", "{name}");
    }
    // Names say something.
    for name in ["...", "_-_", "."] {
        assert_eq!(validate_name(name), Err(NameError::Invalid), "{name}");
    }
    // Look-alikes look alike, but are different names.
    for (a, b) in [
        ("alice", "aIice"),
        ("alice", "alice."),
        ("alice", "a.lice"),
        ("alice", "_alice"),
        ("Il1", "lI1"),
        ("rn", "m"),
        ("b0b", "bob"),
        ("vvill", "will"),
        ("will", "wiii"),
        ("sam", "5am"),
        ("bob", "8ob"),
        ("ian", "lan"),
        ("tom", "torn"),
        ("leo", "le0"),
    ] {
        assert_eq!(look_alike(a), look_alike(b), "{a} / {b}");
        assert_ne!(name_key(a), name_key(b), "{a} / {b} are two people");
    }
    assert_eq!(name_key("Alice"), name_key("alice"));
    assert_ne!(look_alike("henry"), look_alike("henri"));
    assert_eq!(normalize_room("#Rust").as_deref(), Some("rust"));
    assert_eq!(normalize_room("#"), None);
}

#[test]
fn a_presence_batch_is_one_plain_line() {
    let user = |n: &'static str| UserInfo {
        name: b(n),
        role: Role::User,
        room_role: None,
    };
    let line = plain::event(&ServerMsg::Presence {
        room: b("lobby"),
        joined: vec![user("ann"), user("bob")],
        left: vec![b("cat")],
        unlisted: 4,
        user_count: 300,
    })
    .unwrap();
    assert_eq!(
        line.as_str(),
        "* ann, bob joined the chat; cat has left the chat (and 4 more came and went)"
    );
}

#[test]
fn plain_lines_cannot_be_forged_or_escape() {
    let evil = "hi\n[server] log in again at http://evil.example\u{1b}]0;x\u{7}\u{202e}gnp";
    let m = ChatMessage {
        id: 1,
        seq: 1,
        ts: b("t"),
        room: b("lobby"),
        from: b("mallory"),
        role: Role::User,
        text: b(evil),
        action: false,
        ..Default::default()
    };
    let line = plain::event(&ServerMsg::Message(m)).unwrap();
    assert_eq!(
        line.as_str(),
        "mallory: hi\u{240a}[server] log in again at http://evil.example\u{241b}]0;x\u{2407}gnp"
    );
    assert!(!line.as_str().chars().any(|c| c.is_control()));
    assert_eq!(plain::one_line("plain"), "plain");
}

#[test]
fn invisible_text_says_nothing() {
    for text in [
        "\u{200b}\u{200b}",
        " \u{3164} ",
        "\u{2800}",
        "\0\u{feff}",
        "\u{e0041}",
    ] {
        assert!(!has_visible_text(text), "{text:?}");
    }
    assert!(has_visible_text("\u{200b}hi"));
    assert!(has_visible_text("🙂"));
}

#[test]
fn json_len_is_what_serde_writes() {
    for s in [
        "plain",
        "q\"uote\\",
        "nl\n\t\r",
        "\u{1}\u{1f}",
        "é🙂",
        "\u{7f}",
    ] {
        assert_eq!(
            json_len(s),
            serde_json::to_string(s).unwrap().len(),
            "{s:?}"
        );
    }
}

#[test]
fn timestamp_is_rfc3339_millis_utc() {
    let ts = timestamp();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
}

#[test]
fn close_reasons_have_codes_and_known_labels() {
    use CloseReason::*;
    for r in [
        Bye,
        ClientClosed,
        Shutdown,
        PingTimeout,
        Gone,
        Protocol,
        InvalidUtf8,
        TooBig,
        FrameTooBig,
        RateAbuse,
        Unauthorized,
        TokenRequired,
        SlowConsumer,
        WriteStalled,
        HelloTimeout,
        Kicked,
        LoggedOut,
    ] {
        assert!(CloseReason::LABELS.contains(&r.label()), "{r:?}");
    }
    assert_eq!(Unauthorized.label(), "unauthorized");
    assert_eq!(TokenRequired.code(), Some(1008));
}

#[test]
fn mentions_are_at_names_at_a_word_boundary() {
    use super::mentions_at;
    assert!(mentions_at("hi @Ann, look", "ann"));
    assert!(mentions_at("@ann", "Ann"));
    assert!(mentions_at("thanks @ann.", "ann"));
    assert!(!mentions_at("hi ann", "ann"), "only @name");
    assert!(!mentions_at("@anna here", "ann"));
    assert!(!mentions_at("@ann.b here", "ann"));
    assert!(!mentions_at("mail me@ann", "ann"));
    assert!(mentions_at("me@ann @ann", "ann"), "a later one counts");
    assert!(mentions_at("@a_b!", "a_b"));
}
