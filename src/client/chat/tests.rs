use super::*;

#[test]
fn alternative_names_stay_valid() {
    assert_eq!(alt_nick("henry"), "henry2");
    assert_eq!(alt_nick("henry2"), "henry3");
    assert_eq!(alt_nick("henry9"), "henry10");
    let long = "x".repeat(32);
    let alt = alt_nick(&long);
    assert_eq!(alt.len(), 32);
    assert!(alt.ends_with('2'));
    assert!(crate::protocol::validate_name(&alt).is_ok());
    // Never a look-alike of the name it stands in for.
    for name in ["henry", "bob", "alice"] {
        let alt = alt_nick(name);
        assert_ne!(
            crate::protocol::look_alike(&alt),
            crate::protocol::look_alike(name)
        );
    }
}

fn chat() -> Chat {
    Chat {
        opts: Options {
            name: "henry".into(),
            room: "lobby".into(),
            alt_nick: true,
            bell: false,
        },
        nick: "henry".into(),
        rooms: vec!["lobby".into()],
        current: Some("lobby".into()),
        members: HashMap::new(),
        known_rooms: Vec::new(),
        unread: Vec::new(),
        keeps_read: false,
        read_sent: HashMap::new(),
        pms_shown: Default::default(),
        reclaim_at: None,
        pending: HashMap::new(),
        outbox: VecDeque::new(),
        outbox_bytes: 0,
        pacer: Pacer::unlimited(),
        typing_pacer: Pacer::unlimited(),
        next_id: 1,
        errors: 0,
        last_own: None,
        eof: false,
        typing: TypingView::default(),
        last_day: Clock::now().today(),
        connected: true,
        seen: HashMap::new(),
        catching_up: HashMap::new(),
    }
}

#[test]
fn own_lines_read_like_everyone_elses() {
    let c = chat();
    let say = Pending::Say {
        room: "lobby".into(),
        text: "hi".into(),
        action: false,
    };
    let ts = "2026-11-25T18:51:42.123Z";
    let time = Clock::now().stamp(Some(ts));
    let own = c.own_line(&say, LineKind::Own, Some(ts)).unwrap();
    assert_eq!(own.plain(), format!("{time} #lobby <henry> hi"));
    assert_eq!(own.kind, LineKind::Own);
    let pending = c.own_line(&say, LineKind::Pending, None).unwrap();
    assert_eq!(pending.plain(), "  …      #lobby <henry> hi");
    let me = Pending::Say {
        room: "rust".into(),
        text: "waves".into(),
        action: true,
    };
    assert!(
        c.own_line(&me, LineKind::Own, Some(ts))
            .unwrap()
            .plain()
            .ends_with("#rust * henry waves")
    );
    let pm = Pending::Pm {
        to: "alice".into(),
        text: "psst".into(),
    };
    assert_eq!(
        c.own_line(&pm, LineKind::Own, Some(ts)).unwrap().plain(),
        format!("{time} [pm to alice] psst")
    );
    assert!(c.own_line(&Pending::Other, LineKind::Own, None).is_none());
}
