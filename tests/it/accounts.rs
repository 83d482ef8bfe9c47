//! Accounts mode (`auth.mode = "accounts"`): registering and signing in with a password, on both
//! stores and both brokers; what a wrong password, an unknown name, a disabled account or a flood
//! of attempts gets; invites; `chatd user` and `chatd invite` on the store of a running server.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, TestServer, chatd_command, code_and_stderr, metric};
use crate::read_state::{listed, room_state};
use chatd::accounts::admin::Admin;
use chatd::config::{AuthMode, Registration};
use chatd::store::accounts::Change;

/// Accounts mode on an SQLite file in `dir`, with Argon2 cheap enough for a debug build.
/// Accounts mode, with Argon2 cheap enough for a debug build.
pub(crate) fn cheap_accounts(config: &mut chatd::Config) {
    config.auth.mode = AuthMode::Accounts;
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
}

pub(crate) fn accounts_config(config: &mut chatd::Config, dir: &tempfile::TempDir) {
    config.auth.mode = AuthMode::Accounts;
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
    config.storage.path = dir.path().join("chat.db").display().to_string();
}

pub(crate) async fn server(
    edit: impl FnOnce(&mut chatd::Config),
) -> (TestServer, tempfile::TempDir, chatd::Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut kept = None;
    let server = TestServer::with(|c| {
        accounts_config(c, &dir);
        edit(c);
        kept = Some(c.clone());
    })
    .await;
    (server, dir, kept.unwrap())
}

/// A new connection's `register` (or, with `kind` "hello", its sign-in), and the reply.
async fn with_password(
    addr: std::net::SocketAddr,
    kind: &str,
    name: &str,
    password: &str,
) -> (Client, Value) {
    let mut c = Client::connect(addr).await;
    let reply = c
        .request(json!({"type": kind, "name": name, "password": password}))
        .await;
    (c, reply)
}

pub(crate) async fn register(
    addr: std::net::SocketAddr,
    name: &str,
    password: &str,
) -> (Client, Value) {
    with_password(addr, "register", name, password).await
}

pub(crate) async fn sign_in(
    addr: std::net::SocketAddr,
    name: &str,
    password: &str,
) -> (Client, Value) {
    with_password(addr, "hello", name, password).await
}

/// The environment of a real chatd in accounts mode on the SQLite file `db`, with Argon2 cheap
/// enough for a debug build.
pub(crate) fn accounts_env(db: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CHATD_AUTH__MODE", "accounts".into()),
        ("CHATD_STORAGE__PATH", db.into()),
        ("CHATD_AUTH__ARGON2_MEMORY_KIB", "64".into()),
        ("CHATD_AUTH__ARGON2_ITERATIONS", "1".into()),
    ]
}

/// Signs in once the account's last connection has gone (the server sees it close a moment after
/// the client does): the welcome.
pub(crate) async fn sign_in_once_free(
    addr: std::net::SocketAddr,
    name: &str,
    password: &str,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, w) = sign_in(addr, name, password).await;
        if w["type"] == "welcome" {
            return w;
        }
        assert_eq!(w["code"], "name_taken", "{w}");
        assert!(std::time::Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_registered_account_signs_in_again_and_nobody_else_can() {
    let (server, _dir, _) = server(|_| {}).await;
    let (mut alice, w) = register(server.addr, "Alice", "correct horse").await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["name"], "Alice");
    let said = alice.request(json!({"type": "say", "text": "first"})).await;
    assert_eq!(said["type"], "ack", "{said}");
    let renamed = alice.request(json!({"type": "nick", "name": "eve"})).await;
    assert_eq!(renamed["code"], "forbidden", "names are owned: {renamed}");
    drop(alice);

    // The same name in another case is the same account.
    let (_, w) = register(server.addr, "alice", "another password").await;
    assert_eq!(w["code"], "name_taken", "{w}");

    // A wrong password and a name with no account read the same.
    let (mut c, wrong) = sign_in(server.addr, "alice", "correct horsE").await;
    assert_eq!(wrong["code"], "unauthorized", "{wrong}");
    let nobody = c
        .request(json!({"type": "hello", "name": "nobody", "password": "correct horse"}))
        .await;
    assert_eq!(nobody["code"], wrong["code"]);
    assert_eq!(nobody["message"], wrong["message"]);
    // Without a password or a token: told how to sign in, and the connection stays.
    let bare = c.request(json!({"type": "hello", "name": "alice"})).await;
    assert_eq!(bare["code"], "unauthorized", "{bare}");
    assert!(
        bare["message"].as_str().unwrap().contains("password"),
        "{bare}"
    );
    // The right one, on the same connection, after the failures.
    let w = c
        .request(
            json!({"type": "hello", "name": "ALICE", "password": "correct horse", "room": "ops"}),
        )
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["name"], "Alice", "the account's own spelling");
    assert_eq!(w["room"], "ops");
    assert_eq!(w["users"][0]["role"], "user");

    // A plain-text client cannot sign in: it is told how, and closed.
    let mut plain = Client::connect(server.addr).await;
    plain.send_text("alice").await;
    let line = plain.recv_line().await;
    assert!(line.contains("password"), "{line}");
    assert_eq!(plain.closed().await.0, 1008);
    server.stop().await;
}

#[tokio::test]
async fn registration_can_need_an_invite_or_be_closed() {
    let (server, _dir, config) = server(|c| c.auth.registration = Registration::Invite).await;
    let (mut c, none) = register(server.addr, "ann", "long enough").await;
    assert_eq!(none["code"], "forbidden", "{none}");
    assert!(
        none["message"].as_str().unwrap().contains("invite"),
        "{none}"
    );
    let bad = c
        .request(
            json!({"type": "register", "name": "ann", "password": "long enough", "invite": "0123"}),
        )
        .await;
    assert_eq!(bad["code"], "forbidden", "{bad}");

    let code = Admin::open(&config)
        .unwrap()
        .invite(1, Duration::from_secs(3600))
        .unwrap();
    let w = c
        .request(
            json!({"type": "register", "name": "ann", "password": "long enough", "invite": code}),
        )
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    let (_, used) = {
        let mut c = Client::connect(server.addr).await;
        let r = c
            .request(json!({"type": "register", "name": "bob", "password": "long enough", "invite": code}))
            .await;
        (c, r)
    };
    assert_eq!(
        used["code"], "forbidden",
        "an invite for one is used up: {used}"
    );
    server.stop().await;

    let (server, _dir, _) = server_closed().await;
    let (_, closed) = register(server.addr, "ann", "long enough").await;
    assert_eq!(closed["code"], "forbidden", "{closed}");
    assert!(
        closed["message"].as_str().unwrap().contains("closed"),
        "{closed}"
    );
    server.stop().await;
}

async fn server_closed() -> (TestServer, tempfile::TempDir, chatd::Config) {
    server(|c| c.auth.registration = Registration::Closed).await
}

/// Failed sign-ins are limited per name (the right password then waits too) and per address;
/// another account is not locked out by them.
#[tokio::test]
async fn failed_sign_ins_are_limited_per_name() {
    let (server, _dir, config) = server(|c| {
        c.auth.login_failures_per_name = 3;
        c.limits.rate_per_sec = 0.0;
    })
    .await;
    let mut admin = Admin::open(&config).unwrap();
    admin
        .add("carol", "carol's password", chatd::protocol::Role::User)
        .unwrap();
    admin
        .add("dave", "dave's password", chatd::protocol::Role::User)
        .unwrap();
    let mut c = Client::connect(server.addr).await;
    for _ in 0..3 {
        let r = c
            .request(json!({"type": "hello", "name": "carol", "password": "guess guess"}))
            .await;
        assert_eq!(r["code"], "unauthorized", "{r}");
    }
    let limited = c
        .request(json!({"type": "hello", "name": "carol", "password": "carol's password"}))
        .await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(
        limited["message"]
            .as_str()
            .unwrap()
            .contains("try again in"),
        "{limited}"
    );
    let (_, dave) = sign_in(server.addr, "dave", "dave's password").await;
    assert_eq!(
        dave["type"], "welcome",
        "another account still signs in: {dave}"
    );
    let admin_addr = server.admin.unwrap();
    let exposition =
        tokio::task::spawn_blocking(move || crate::helpers::http(admin_addr, "GET", "/metrics").1)
            .await
            .unwrap();
    assert_eq!(
        metric(
            &exposition,
            r#"chatd_sign_ins_total{result="unauthorized"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &exposition,
            r#"chatd_sign_ins_total{result="rate_limited"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&exposition, r#"chatd_sign_ins_total{result="ok"}"#),
        1.0
    );
    server.stop().await;
}

/// Hostile input: huge and short passwords, a flood of registrations from one address (a few
/// accounts at most, the rest refused at once, chat unaffected), a disabled account.
#[tokio::test]
async fn hostile_passwords_and_a_registration_flood_are_bounded() {
    let (server, _dir, config) = server(|c| c.limits.rate_per_sec = 0.0).await;
    let mut talker = Client::connect(server.addr).await;
    let w = talker
        .request(json!({"type": "register", "name": "talker", "password": "talker password", "room": "quiet"}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");

    let mut c = Client::connect(server.addr).await;
    let huge = "p".repeat(10_000);
    let r = c
        .request(json!({"type": "hello", "name": "talker", "password": huge}))
        .await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    let r = c
        .request(json!({"type": "register", "name": "big", "password": huge}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    let r = c
        .request(json!({"type": "register", "name": "small", "password": "short"}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    assert!(r["message"].as_str().unwrap().contains("at least 8"), "{r}");
    let r = c
        .request(json!({"type": "register", "name": "no way!", "password": "long enough"}))
        .await;
    assert_eq!(r["code"], "name_invalid", "{r}");

    // 10,000 registrations from one address, four connections at a time.
    let mut floods = Vec::new();
    for k in 0..4 {
        let addr = server.addr;
        floods.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut codes = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..2_500 {
                let name = format!("bot{k}x{i}");
                let r = c
                    .request(json!({"type": "register", "name": name, "password": "bot password"}))
                    .await;
                let code = r["code"]
                    .as_str()
                    .or(r["type"].as_str())
                    .unwrap()
                    .to_string();
                if code == "welcome" {
                    c = Client::connect(addr).await;
                }
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
        // Chat goes on meanwhile.
        let said = talker
            .request(json!({"type": "say", "text": format!("still here {k}")}))
            .await;
        assert_eq!(said["type"], "ack", "{said}");
    }
    let mut total = std::collections::BTreeMap::<String, usize>::new();
    for f in floods {
        for (code, n) in f.await.unwrap() {
            *total.entry(code).or_default() += n;
        }
    }
    // Five registrations an hour per address (the talker was one).
    assert!(total.get("welcome").copied().unwrap_or(0) <= 4, "{total:?}");
    assert!(
        total.get("rate_limited").copied().unwrap_or(0) >= 9_990,
        "{total:?}"
    );
    assert_eq!(total.values().sum::<usize>(), 10_000, "{total:?}");

    // A disabled account cannot sign in; enabled again, it can.
    let mut admin = Admin::open(&config).unwrap();
    admin.change("talker", Change::Disabled(true)).unwrap();
    let (_, r) = sign_in(server.addr, "talker", "talker password").await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    admin.change("talker", Change::Disabled(false)).unwrap();
    admin
        .change("talker", Change::Role(chatd::protocol::Role::Admin))
        .unwrap();
    talker.ws.close(None).await.ok();
    drop(talker);
    let r = sign_in_once_free(server.addr, "talker", "talker password").await;
    assert_eq!(
        r["users"][0]["role"], "admin",
        "the role is the account's: {r}"
    );
    server.stop().await;
}

/// Accounts mode with a token secret takes tokens too (the token's `sub` is the account).
#[tokio::test]
async fn accounts_mode_takes_tokens_when_a_secret_is_set() {
    const SECRET: &str = "accounts-and-tokens-secret-0123456789abcdef";
    let (server, _dir, _) = server(|c| c.auth.secret = chatd::config::Secret::new(SECRET)).await;
    let token = crate::helpers::token_for(SECRET, "robot", chatd::protocol::Role::User);
    let mut c = Client::connect(server.addr).await;
    let w = c
        .request(json!({"type": "hello", "name": "robot", "token": token}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    server.stop().await;
}

/// A cluster keeps accounts in its PostgreSQL: registered on one node, signed in on another.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[tokio::test]
async fn cluster_nodes_share_accounts_through_postgresql() {
    let pair = TestServer::pg_pair(cheap_accounts).await;
    let (a, b) = (&pair.a, &pair.b);
    let (mut on_a, w) = register(a.addr, "nina", "nina's password").await;
    assert_eq!(w["type"], "welcome", "{w}");
    let (_, taken) = register(b.addr, "NINA", "other password").await;
    assert_eq!(taken["code"], "name_taken", "{taken}");
    // Her second device, on the other node: told of what the first does.
    let (mut on_b, w) = sign_in(b.addr, "nina", "nina's password").await;
    assert_eq!(
        (&w["type"], &w["sessions"]),
        (&json!("welcome"), &json!(2)),
        "{w}"
    );
    let r = on_a.request(json!({"type": "join", "room": "dev"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let m = on_b.find(|v| v["type"] == "membership").await;
    assert_eq!(
        (&m["room"], &m["state"]),
        (&json!("dev"), &json!("joined")),
        "{m}"
    );
    let r = on_a
        .request(json!({"type": "read", "room": "lobby", "seq": 0}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(on_b.find(|v| v["type"] == "read").await["room"], "lobby");
    on_b.ws.close(None).await.ok();
    drop(on_b);
    on_a.ws.close(None).await.ok();
    drop(on_a);
    // Someone on node b mentions her while she is away: kept in PostgreSQL.
    let (mut omar, w) = register(b.addr, "omar", "omar's password").await;
    assert_eq!(w["type"], "welcome", "{w}");
    let r = omar
        .request(json!({"type": "say", "text": "@nina ping"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    // Node a writes memberships within half a second, and frees the name once it has seen the
    // connection go.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Client::connect(b.addr).await;
        let w = c
            .request(json!({"type": "hello", "name": "nina", "password": "nina's password"}))
            .await;
        if w["type"] == "welcome"
            && listed(&w) == ["dev", "lobby"]
            && room_state(&w, "lobby")["mentions"] == 1
        {
            assert_eq!(room_state(&w, "lobby")["unread"], 1, "{w}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{w}");
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pair.stop().await;
}

/// `chatd user` and `chatd invite`, the real binary, on a store a running chatd uses.
#[tokio::test]
async fn chatd_user_and_invite_work_beside_a_running_server() {
    let (server, dir, config) = server(|_| {}).await;
    let db = config.storage.path.clone();
    let run = |args: &[&str], stdin: &str| {
        let mut cmd = chatd_command();
        cmd.args(args)
            .envs(accounts_env(&db))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = run(
        &["user", "add", "root", "--role", "admin"],
        "root password\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["user", "add", "Root"], "another one\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists"), "{err}");
    let (code, _, err) = run(&["user", "add", "tiny"], "short\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("at least 8"), "{err}");
    let (code, _, err) = run(&["user", "add", "bad name"], "whatever long\n");
    assert_eq!(code, Some(2), "{err}");
    let file = dir.path().join("pw");
    std::fs::write(&file, "from a file\n").unwrap();
    let (code, _, err) = run(
        &[
            "user",
            "passwd",
            "root",
            "--password-file",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["user", "disable", "nobody"], "");
    assert_eq!(code, Some(1), "{err}");

    let (_, w) = sign_in(server.addr, "root", "from a file").await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["users"][0]["role"], "admin");

    let (code, invite, err) = run(&["invite", "--uses", "2", "--ttl", "1h"], "");
    assert_eq!(code, Some(0), "{err}");
    let invite = invite.trim();
    assert_eq!(invite.len(), 30, "{invite}");
    let mut c = Client::connect(server.addr).await;
    let r = c
        .request(json!({"type": "register", "name": "guest", "password": "guest password", "invite": invite}))
        .await;
    assert_eq!(
        r["type"], "welcome",
        "an invite works in open registration too: {r}"
    );
    let (code, _, err) = run(&["invite", "--ttl", "soon"], "");
    assert_eq!(code, Some(2), "{err}");
    server.stop().await;
    let _ = code_and_stderr;
}

/// chatctl shows a PM that waited for its user once (then it is read), says when a PM waits
/// for someone away, and lists and closes the user's sessions.
#[test]
fn chatctl_shows_waiting_pms_once_and_manages_sessions() {
    use crate::helpers::{Daemon, Proc, chatctl_command};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let env = accounts_env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&[], &env);
    let chatctl = |name: &str, device: &str, extra: &[&str]| {
        let password = dir.path().join(name);
        std::fs::write(&password, format!("{name}'s password\n")).unwrap();
        let mut cmd = chatctl_command();
        cmd.env("NO_COLOR", "1")
            .args(["--url", &format!("ws://{}", d.addr)])
            .args(["--password-file", password.to_str().unwrap()])
            .args(["--device", device])
            .args(["connect", name])
            .args(extra);
        Proc::spawn(cmd)
    };
    let mut ann = chatctl("ann", "laptop", &["--register"]);
    ann.expect_out("welcome, ann!");
    let mut bob = chatctl("bob", "phone", &["--register"]);
    bob.expect_out("welcome, bob!");
    bob.close_stdin();
    assert_eq!(bob.wait_exit(), Some(0));
    ann.expect_out("bob left");
    ann.write_line("/msg bob while you were away");
    ann.expect_out("[pm to bob] while you were away");
    ann.expect_err("bob is not connected: the message waits for them");

    let mut bob = chatctl("bob", "desk", &[]);
    bob.expect_out("[pm from ann] while you were away");
    bob.write_line("/sessions");
    bob.expect_out("you are connected once");
    let mine = bob.expect_out("(this one)");
    assert!(mine.contains("desk"), "{mine}");
    bob.close_stdin();
    assert_eq!(bob.wait_exit(), Some(0));

    // Shown, so read: not handed over again.
    let mut again = chatctl("bob", "desk", &[]);
    again.expect_out("welcome, bob!");
    again.write_line("/sessions");
    again.expect_out("(this one)");
    again.close_stdin();
    let rest = again.rest_of_stdout();
    assert_eq!(again.wait_exit(), Some(0));
    assert!(
        !rest.iter().any(|l| l.contains("while you were away")),
        "{rest:?}"
    );

    // ann's laptop logs out another of her connections.
    let mut phone = chatctl("ann", "phone", &[]);
    phone.expect_out("welcome, ann!");
    ann.write_line("/sessions");
    ann.expect_out("you are connected 2 times");
    let line = ann.expect_out("  phone");
    let id = line
        .split_whitespace()
        .skip_while(|w| *w != "-!-")
        .nth(1)
        .expect("a session id")
        .to_string();
    ann.write_line(&format!("/logout {id}"));
    phone.expect_err("logged out");
    assert_eq!(phone.wait_exit(), Some(1));
    ann.close_stdin();
    assert_eq!(ann.wait_exit(), Some(0));
}

/// chatctl registers once, signs in on every reconnect, and keeps its own name: after a network
/// drop the server still holds the dead connection for a while, and chatctl waits for it to let
/// go instead of becoming `henry2`.
#[test]
fn chatctl_registers_signs_in_and_keeps_its_name_across_a_drop() {
    use crate::helpers::{Daemon, Proc, Proxy, chatctl_command};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let mut env = accounts_env(&db);
    env.push(("CHATD_SERVER__PING_INTERVAL_SECS", "1".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&[], &env);
    let proxy = Proxy::to(d.addr);
    let password = dir.path().join("password");
    std::fs::write(&password, "henry's password\n").unwrap();
    let chatctl = |extra: &[&str]| {
        let mut cmd = chatctl_command();
        cmd.args(["--url", &format!("ws://{}", proxy.addr)])
            .args(["--password-file", password.to_str().unwrap()])
            .args(["connect", "henry"])
            .args(extra);
        Proc::spawn(cmd)
    };
    let mut henry = chatctl(&["--register"]);
    henry.expect_out("welcome, henry!");
    henry.write_line("/join dev");
    henry.expect_out("you are in #dev with: ~henry");
    proxy.cut();
    henry.expect_err("reconnected to ws://");
    henry.expect_out("welcome, henry! you are in #lobby");
    henry.expect_out("you are in #dev with: ~henry");
    henry.write_line("still me");
    henry.expect_out("#dev <henry> still me");
    henry.close_stdin();
    assert_eq!(henry.wait_exit(), Some(0));

    // Registering again: the account exists.
    let mut again = chatctl(&["--register"]);
    again.expect_err("error: the account \"henry\" exists already");
    assert_eq!(again.wait_exit(), Some(1));
    // Another run (another device, or tomorrow): the account's rooms come back by themselves.
    let mut later = chatctl(&[]);
    later.expect_out("welcome, henry!");
    later.expect_out("you are in #dev with: ~henry");
    later.close_stdin();
    assert_eq!(later.wait_exit(), Some(0));
    // A wrong password.
    std::fs::write(&password, "not the password\n").unwrap();
    let mut wrong = chatctl(&[]);
    wrong.expect_err("error: unauthorized: wrong name or password");
    assert_eq!(wrong.wait_exit(), Some(1));
    // --register without a password is a usage error.
    let (code, err) = code_and_stderr(chatctl_command().args(["connect", "x", "--register"]));
    assert_eq!(code, Some(2), "{err}");
}
