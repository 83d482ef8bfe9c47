//! The store contract's accounts side, each test run against both databases: accounts and
//! invites, memberships and read markers, and rooms' policies (settings, roles, invites,
//! sanctions, the change log nodes poll, the audit log).

use std::time::Duration;

use chatd::protocol::Role;

use crate::store_contract::{Db, say};

store_contract!(
    accounts_are_kept_and_invites_spent,
    room_policies_are_kept_logged_and_audited,
    api_keys_are_kept_and_requests_answered_once,
);

/// Accounts: one owner per name (whatever its case), invites spent once and only while valid,
/// changes kept; a second connection (`chatd user` while chatd runs) writes beside the store.
fn accounts_are_kept_and_invites_spent(db: &Db) {
    use chatd::store::accounts::{self, Account, Change, Created, Noted};
    let (store, _) = db.open();
    let mut a = accounts::open(&db.settings()).expect("accounts open beside the store");
    let henry = Account {
        name: "Henry".into(),
        hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        role: Role::User,
        disabled: false,
    };
    assert_eq!(a.find("henry").unwrap(), None);
    assert_eq!(
        a.create("henry", &henry, None, 0).unwrap(),
        Created::Created
    );
    assert_eq!(a.find("henry").unwrap().as_ref(), Some(&henry));
    let other = Account {
        name: "HENRY".into(),
        ..henry.clone()
    };
    assert_eq!(a.create("henry", &other, None, 0).unwrap(), Created::Taken);
    assert_eq!(
        a.find("henry").unwrap().unwrap().name,
        "Henry",
        "the first owner keeps it"
    );

    let now = 1_000_000;
    a.add_invite("twice", 2, now + 60_000).unwrap();
    a.add_invite("stale", 5, now - 1).unwrap();
    let with = |name: &str| Account {
        name: name.into(),
        ..henry.clone()
    };
    assert_eq!(
        a.create("ann", &with("ann"), Some("nope"), now).unwrap(),
        Created::BadInvite
    );
    assert_eq!(
        a.create("ann", &with("ann"), Some("stale"), now).unwrap(),
        Created::BadInvite,
        "an expired invite"
    );
    assert_eq!(
        a.find("ann").unwrap(),
        None,
        "nothing made without a valid invite"
    );
    assert_eq!(
        a.create("henry", &with("henry"), Some("twice"), now)
            .unwrap(),
        Created::Taken
    );
    for name in ["ann", "bob"] {
        assert_eq!(
            a.create(name, &with(name), Some("twice"), now).unwrap(),
            Created::Created,
            "a taken name did not spend a use"
        );
    }
    assert_eq!(
        a.create("cy", &with("cy"), Some("twice"), now).unwrap(),
        Created::BadInvite,
        "used up"
    );
    assert_eq!(a.count().unwrap(), 3);

    assert!(a.update("ann", &Change::Role(Role::Admin)).unwrap());
    assert!(a.update("ann", &Change::Disabled(true)).unwrap());
    assert!(a.update("ann", &Change::Password("$new".into())).unwrap());
    assert!(!a.update("nobody", &Change::Disabled(true)).unwrap());
    drop(a);
    store.close(Duration::from_secs(10));
    drop(store);

    let (store, _) = db.open();
    let mut a = accounts::open(&db.settings()).expect("reopened");
    let ann = a.find("ann").unwrap().expect("kept across a restart");
    assert_eq!(
        (ann.role, ann.disabled, ann.hash.as_str()),
        (Role::Admin, true, "$new")
    );
    assert_eq!(a.count().unwrap(), 3);

    // Memberships: joins and leaves in order, listed in the order joined, at most a limit; a
    // new membership's marker starts where the room was, and only moves forward.
    assert!(a.rooms("ann", 10).unwrap().is_empty());
    let noted = |room: &str, joined: Option<Option<u64>>, read: Option<u64>| Noted {
        account: "ann".into(),
        room: room.into(),
        joined,
        read,
    };
    a.memberships(&[
        noted("dev", Some(Some(5)), None),
        noted("ops", Some(Some(0)), None),
        noted("lobby", Some(Some(0)), Some(3)),
    ])
    .unwrap();
    a.memberships(&[
        noted("ops", Some(None), None),
        noted("dev", Some(Some(9)), Some(2)),
    ])
    .unwrap();
    let mut rooms = a.rooms("ann", 10).unwrap();
    rooms.sort();
    assert_eq!(
        rooms,
        [("dev".to_string(), 5), ("lobby".to_string(), 3)],
        "a leave removes; a second join keeps the marker, which never moves back"
    );
    assert_eq!(a.rooms("ann", 1).unwrap().len(), 1, "bounded");
    assert!(
        a.rooms("bob", 10).unwrap().is_empty(),
        "each account its own"
    );

    // What is unread past a marker: others' messages, and those that mention `@bob`.
    say(
        &store,
        "e1",
        "talk",
        100,
        1,
        &[
            "hi all",
            "@bob look",
            "@Bob: again",
            "@bobby no",
            "mail@bob no",
            "@bob_ no",
        ],
    );
    let u = a.unread("bob", "bob", "talk", 0).unwrap();
    assert_eq!((u.head, u.count), (6, 6));
    let mentions = u
        .mentioning
        .iter()
        .filter(|t| chatd::protocol::mentions_at(t, "bob"))
        .count();
    assert_eq!(mentions, 2, "{:?}", u.mentioning);
    let u = a.unread("bob", "bob", "talk", 2).unwrap();
    assert_eq!(u.count, 4);
    assert_eq!(
        a.unread("ann", "ann", "talk", 0).unwrap().count,
        0,
        "one's own lines"
    );
    assert_eq!(
        a.unread("bob", "bob", "nowhere", 0).unwrap(),
        Default::default()
    );
    let u = a.unread("bob", "b_b", "talk", 0).unwrap();
    assert!(
        u.mentioning.is_empty(),
        "`_` is not a wildcard: {:?}",
        u.mentioning
    );
    drop(a);
    store.close(Duration::from_secs(10));
    drop(store);
    let (store, _) = db.open();
    let mut a = accounts::open(&db.settings()).unwrap();
    assert_eq!(
        a.rooms("ann", 10).unwrap().len(),
        2,
        "kept across a restart"
    );
    store.close(Duration::from_secs(10));
}

/// Rooms' policies: a claim only of a room nobody owns, settings, roles, a transfer that keeps the
/// old owner an op, invites, sanctions replaced and lifted; every change in the change log (which
/// nodes poll) and its audit entry; kept across a reopening.
fn room_policies_are_kept_logged_and_audited(db: &Db) {
    use chatd::store::policy::{Audit, Change, Kind, RoomRole, Sanction, Settings};
    let (store, _) = db.open();
    let mut a = chatd::store::accounts::open(&db.settings()).expect("accounts open");
    let audit = |action: &str| Audit {
        room: "dev".into(),
        actor: "ann".into(),
        action: action.into(),
        target: String::new(),
        reason: String::new(),
        ts: chatd::protocol::timestamp(),
    };
    assert_eq!(a.policy_version().unwrap(), 0);
    let claim = |owner: &str| Change::Claim {
        room: "dev".into(),
        owner: owner.into(),
    };
    assert!(a.apply(&claim("ann"), Some(&audit("create"))).unwrap());
    assert!(
        !a.apply(&claim("bob"), Some(&audit("create"))).unwrap(),
        "owned already"
    );
    let settings = Settings {
        owner: None,
        topic: "rust".into(),
        private: true,
        invite_only: true,
        moderated: false,
    };
    let set = Change::Set {
        room: "dev".into(),
        settings,
    };
    assert!(a.apply(&set, Some(&audit("set"))).unwrap());
    let role = |account: &str, role| Change::Role {
        room: "dev".into(),
        account: account.into(),
        role,
    };
    a.apply(&role("olga", Some(RoomRole::Op)), None).unwrap();
    a.apply(&role("vic", Some(RoomRole::Voice)), None).unwrap();
    a.apply(
        &Change::Transfer {
            room: "dev".into(),
            to: "olga".into(),
        },
        None,
    )
    .unwrap();
    let invite = |on| Change::Invite {
        room: "dev".into(),
        account: "ivan".into(),
        on,
    };
    a.apply(&invite(true), None).unwrap();
    let ban = |reason: &str, until_ms| Sanction {
        room: "dev".into(),
        target: "bob".into(),
        kind: Kind::Ban,
        by: "ann".into(),
        reason: reason.into(),
        created: chatd::protocol::timestamp(),
        until_ms,
    };
    a.apply(&Change::Sanction(ban("spam", Some(5))), None)
        .unwrap();
    a.apply(
        &Change::Sanction(ban("more spam", None)),
        Some(&audit("ban")),
    )
    .unwrap();
    let version = a.policy_version().unwrap();
    assert!(version >= 8, "every change is logged: {version}");
    drop(a);
    store.close(Duration::from_secs(10));
    drop(store);

    let (store, _) = db.open();
    let mut a = chatd::store::accounts::open(&db.settings()).expect("reopened");
    let record = a.room_record("dev").unwrap();
    let s = record.settings.clone().expect("settings kept");
    assert_eq!(
        (
            s.owner.as_deref(),
            s.topic.as_str(),
            s.private,
            s.invite_only
        ),
        (Some("olga"), "rust", true, true),
        "a transfer changes the owner; settings stay"
    );
    let mut roles = record.roles.clone();
    roles.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        roles,
        [
            ("ann".to_string(), RoomRole::Op),
            ("vic".to_string(), RoomRole::Voice)
        ],
        "the old owner stays an op; the new one has no other role"
    );
    assert_eq!(record.invites, ["ivan"]);
    assert_eq!(record.sanctions.len(), 1, "replaced, not added");
    assert_eq!(
        (
            record.sanctions[0].reason.as_str(),
            record.sanctions[0].until_ms
        ),
        ("more spam", None)
    );
    let lift = Change::Lift {
        room: "dev".into(),
        target: "bob".into(),
        kind: Kind::Ban,
    };
    assert!(a.apply(&lift, None).unwrap());
    assert!(!a.apply(&lift, None).unwrap(), "nothing left to lift");
    a.apply(&invite(false), None).unwrap();
    let (rooms, latest) = a.changed_since(version).unwrap();
    assert_eq!((rooms, latest), (vec!["dev".to_string()], version + 2));
    let (rooms, _) = a.changed_since(latest).unwrap();
    assert!(rooms.is_empty());
    assert_eq!(a.policy_rooms().unwrap(), ["dev"]);
    let log: Vec<String> = a
        .audit_log("dev", 10)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(log, ["ban", "set", "create"], "newest first");
    assert_eq!(a.audit_log("dev", 1).unwrap().len(), 1);
    assert_eq!(a.room_record("nowhere").unwrap(), Default::default());
    drop(a);
    store.close(Duration::from_secs(10));
}

/// The HTTP API's keys: kept by id with their scopes and rooms, one per name, revoked by name or
/// id; an idempotency key is claimed once, answers its retries with the first response, refuses
/// another request, is freed by a release and forgotten when it expires.
fn api_keys_are_kept_and_requests_answered_once(db: &Db) {
    use chatd::store::keys::{ApiKey, Claim};
    let (_store, _) = db.open();
    let mut a = chatd::store::accounts::open(&db.settings()).expect("keys open beside the store");
    let key = ApiKey {
        id: "k1".into(),
        name: "deploybot".into(),
        account: "deploybot".into(),
        hash: "ab".repeat(32),
        scopes: vec!["say".into(), "history:read".into()],
        rooms: vec!["ops".into()],
        created_ms: 5,
        expires_ms: Some(99),
        revoked: false,
    };
    assert!(a.add_key(&key).unwrap());
    let twin = ApiKey {
        id: "k2".into(),
        ..key.clone()
    };
    assert!(!a.add_key(&twin).unwrap(), "one key per name");
    let open = ApiKey {
        id: "k3".into(),
        name: "reader".into(),
        rooms: vec![],
        expires_ms: None,
        created_ms: 6,
        ..key.clone()
    };
    assert!(a.add_key(&open).unwrap());
    assert_eq!(a.find_key("k1").unwrap().as_ref(), Some(&key));
    assert_eq!(a.find_key("k2").unwrap(), None);
    let names: Vec<String> = a.keys().unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["deploybot", "reader"]);
    assert!(a.revoke_key("deploybot").unwrap());
    assert!(a.revoke_key("k3").unwrap(), "by id too");
    assert!(!a.revoke_key("nobody").unwrap());
    assert!(a.find_key("k1").unwrap().unwrap().revoked);

    assert_eq!(a.claim("k1", "i1", "f", 1_000, 0).unwrap(), Claim::New);
    assert_eq!(a.claim("k1", "i1", "f", 1_001, 0).unwrap(), Claim::Pending);
    assert_eq!(
        a.claim("k3", "i1", "f", 1_001, 0).unwrap(),
        Claim::New,
        "per key"
    );
    a.complete("k1", "i1", 201, "{\"id\":7}").unwrap();
    assert_eq!(
        a.claim("k1", "i1", "f", 1_002, 0).unwrap(),
        Claim::Done(201, "{\"id\":7}".into())
    );
    assert_eq!(a.claim("k1", "i1", "g", 1_002, 0).unwrap(), Claim::Mismatch);
    a.release("k3", "i1").unwrap();
    assert_eq!(
        a.claim("k3", "i1", "f", 1_003, 0).unwrap(),
        Claim::New,
        "released"
    );
    a.release("k1", "i1").unwrap();
    assert!(
        matches!(a.claim("k1", "i1", "f", 1_004, 0).unwrap(), Claim::Done(..)),
        "a done request is not released"
    );
    assert_eq!(
        a.claim("k1", "i1", "f", 400_000, 100_000).unwrap(),
        Claim::New,
        "expired"
    );
}
