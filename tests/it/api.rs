//! The HTTP API (`api.listen`) through the real binary: keys made with `chatd apikey`, posting
//! into a room a WebSocket client watches, a retried POST posting once (on one node and across a
//! cluster's nodes), keys kept to their rooms and scopes, revoked keys, bad bodies, rate limits,
//! and the chat's own rules (private rooms, bans) applied to a key as to a client.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Daemon, chatd_command, http, line_text, metric};
use crate::storage::{hello, request};

/// An HTTP response: status, headers (lower-case names) and the body as JSON.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request to the API at `addr` (a connection of its own).
pub(crate) fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: chatd\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.map_or(0, str::len)
        ));
    }
    let body = body.unwrap_or("");
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// The API's address, from the daemon's startup lines.
pub(crate) fn api_addr(d: &Daemon) -> SocketAddr {
    d.startup
        .iter()
        .find_map(|line| {
            let text = line_text(line);
            let rest = text.split_once("HTTP API on http://")?.1;
            rest.split('/').next()?.parse().ok()
        })
        .expect("chatd printed the API's address")
}

/// Runs `chatd apikey ARGS` with the daemon's environment; its exit code, stdout and stderr.
pub(crate) fn apikey(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = chatd_command();
    cmd.arg("apikey").args(args).envs(env.iter().copied());
    let out = cmd.output().expect("run chatd apikey");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A new key (`chatd apikey create ARGS`).
pub(crate) fn new_key(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let (code, key, err) = apikey(env, &all);
    assert_eq!(code, Some(0), "{err}");
    assert!(key.starts_with("chatd_"), "{key}");
    key
}

/// A key posts into `ops`, a WebSocket client there sees it once however often it is retried,
/// and reads it back; a key kept to `ops` is refused elsewhere; bad bodies, missing, wrong and
/// revoked keys, and a key over its rate are refused with the status and a JSON error that say
/// why; every request is counted.
#[test]
fn a_key_posts_once_reads_and_is_kept_to_its_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let env = [
        ("CHATD_STORAGE__PATH", db.to_str().unwrap()),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
        ("CHATD_API__BURST", "16"),
        ("CHATD_API__REQUESTS_PER_SEC", "0.2"),
        ("CHATD_API__MAX_BODY_BYTES", "1024"),
    ];
    let mut d = Daemon::start(&[], &env);
    let api = api_addr(&d);
    let key = new_key(
        &env,
        &[
            "--name",
            "deploybot",
            "--scopes",
            "say,history:read,search",
            "--rooms",
            "ops",
        ],
    );
    let (mut henry, w) = hello(&d, "henry", json!({"room": "ops"}));
    assert_eq!(w["type"], "welcome", "{w}");

    let post = |room: &str, body: &str, extra: &[(&str, &str)]| {
        let path = format!("/v1/rooms/{room}/messages");
        call(api, "POST", &path, Some(&key), Some(body), extra)
    };
    let body = r#"{"text": "deploy 1.2 done", "idempotency_key": "deploy-1.2"}"#;
    let first = post("ops", body, &[]);
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["room"], "ops");
    let seen = henry.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (&seen["from"], &seen["text"], &seen["id"]),
        (
            &json!("deploybot"),
            &json!("deploy 1.2 done"),
            &first.body["id"]
        )
    );
    let again = post("ops", body, &[]);
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(
        again.body, first.body,
        "the first answer, not a second post"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = post(
        "ops",
        r#"{"text": "x", "idempotency_key": "deploy-1.2"}"#,
        &[],
    );
    assert_eq!(
        (other.status, &other.body["error"]["code"]),
        (422, &json!("idempotency_mismatch"))
    );
    // The header says the same as the body's field.
    let by_header = post("ops", r#"{"text": "second"}"#, &[("Idempotency-Key", "h1")]);
    let replayed = post("ops", r#"{"text": "second"}"#, &[("Idempotency-Key", "h1")]);
    assert_eq!((by_header.status, &replayed.body), (201, &by_header.body));

    let page = call(
        api,
        "GET",
        "/v1/rooms/ops/messages?limit=10",
        Some(&key),
        None,
        &[],
    );
    assert_eq!(page.status, 200, "{page:?}");
    let texts: Vec<&str> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["deploy 1.2 done", "second"], "each posted once");
    let found = call(
        api,
        "GET",
        "/v1/search?q=deploy&room=ops",
        Some(&key),
        None,
        &[],
    );
    assert_eq!(
        found.body["messages"].as_array().unwrap().len(),
        1,
        "{found:?}"
    );

    // Kept to ops, and to its scopes.
    let lobby = post("lobby", r#"{"text": "hi"}"#, &[]);
    assert_eq!(
        (lobby.status, &lobby.body["error"]["code"]),
        (403, &json!("forbidden"))
    );
    let read = call(
        api,
        "GET",
        "/v1/rooms/lobby/messages",
        Some(&key),
        None,
        &[],
    );
    assert_eq!(read.status, 403, "{read:?}");
    let anywhere = call(api, "GET", "/v1/search?q=deploy", Some(&key), None, &[]);
    assert_eq!(
        anywhere.status, 400,
        "a kept key names its room: {anywhere:?}"
    );
    let members = call(api, "GET", "/v1/rooms/ops/members", Some(&key), None, &[]);
    assert_eq!(members.status, 403, "no presence:read scope: {members:?}");
    assert!(
        members.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("presence:read")
    );

    // Bad bodies name what is wrong.
    let unknown = post("ops", r#"{"text": "x", "colour": "red"}"#, &[]);
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{unknown:?}"
    );
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(2000));
    assert_eq!(post("ops", &big, &[]).status, 413);
    let not_json = post("ops", "text=hi", &[]);
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert_eq!(
        call(api, "GET", "/v1/nothing", Some(&key), None, &[]).status,
        404
    );
    let wrong_method = call(
        api,
        "DELETE",
        "/v1/rooms/ops/messages",
        Some(&key),
        None,
        &[],
    );
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, POST"));

    // No key, a made-up one, a revoked one.
    let none = call(api, "GET", "/v1/rooms/ops/messages", None, None, &[]);
    assert_eq!(
        (none.status, none.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let forged = format!("{}x", &key[..key.len() - 1]);
    let wrong = call(
        api,
        "GET",
        "/v1/rooms/ops/messages",
        Some(&forged),
        None,
        &[],
    );
    assert_eq!(wrong.status, 401);
    let (code, list, _) = apikey(&env, &["list"]);
    assert_eq!(code, Some(0));
    assert!(
        list.contains("deploybot") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&key), "a key is never shown again");
    let (code, _, err) = apikey(&env, &["revoke", "deploybot"]);
    assert_eq!(code, Some(0), "{err}");
    let revoked = post("ops", r#"{"text": "after"}"#, &[]);
    assert_eq!(revoked.status, 401, "{revoked:?}");

    // Over its rate: 429 with Retry-After, and other keys are not held back.
    let flood = new_key(&env, &["--name", "flood", "--scopes", "history:read"]);
    let statuses: Vec<u16> = (0..18)
        .map(|_| {
            call(
                api,
                "GET",
                "/v1/rooms/ops/messages",
                Some(&flood),
                None,
                &[],
            )
            .status
        })
        .collect();
    // Its burst (16), and what the rate (0.2/s) refilled meanwhile.
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!((16..=17).contains(&passed), "{statuses:?}");
    let limited = call(
        api,
        "GET",
        "/v1/rooms/ops/messages",
        Some(&flood),
        None,
        &[],
    );
    assert_eq!(limited.status, 429);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "{limited:?}");
    let calm = new_key(&env, &["--name", "calm", "--scopes", "history:read"]);
    let other_key = call(api, "GET", "/v1/rooms/ops/messages", Some(&calm), None, &[]);
    assert_eq!(other_key.status, 200);

    let (_, metrics) = http(d.admin.unwrap(), "GET", "/metrics");
    let said = metric(
        &metrics,
        r#"chatd_api_requests_total{route="say",status="201"}"#,
    );
    assert!(said >= 2.0, "{said}");
    assert!(
        metric(
            &metrics,
            r#"chatd_api_requests_total{route="history",status="429"}"#
        ) >= 1.0
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
}

/// With accounts, a key speaks as its account, and the rooms' rules hold for it as for the
/// account's own client: a private, invite-only room it is not in is neither readable,
/// searchable, listed nor writable, and a room that banned it refuses it.
#[test]
fn private_rooms_and_bans_hold_for_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let db = db.to_str().unwrap();
    let env = [
        ("CHATD_AUTH__MODE", "accounts"),
        ("CHATD_STORAGE__PATH", db),
        ("CHATD_AUTH__ARGON2_MEMORY_KIB", "64"),
        ("CHATD_AUTH__ARGON2_ITERATIONS", "1"),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
    ];
    let d = Daemon::start(&[], &env);
    let api = api_addr(&d);
    let all = "say,pm,history:read,search,presence:read";
    let key = new_key(&env, &["--name", "deploybot", "--scopes", all]);
    let mut ann = register(&d, "ann", "ann's password");
    for room in ["hiring", "ops"] {
        let r = request(&mut ann, json!({"type": "join", "room": room}));
        assert_eq!(r["owner"], "ann", "{r}");
    }
    let r = request(
        &mut ann,
        json!({"type": "room_set", "room": "hiring", "visibility": "private", "invite_only": true}),
    );
    assert_eq!(r["type"], "ack", "{r}");
    let r = request(
        &mut ann,
        json!({"type": "say", "room": "hiring", "text": "secret salary bands"}),
    );
    assert_eq!(r["type"], "ack", "{r}");

    let get = |path: &str| call(api, "GET", path, Some(&key), None, &[]);
    let post = |path: &str, body: &str| call(api, "POST", path, Some(&key), Some(body), &[]);
    assert_eq!(get("/v1/rooms/hiring/messages").status, 403);
    assert_eq!(get("/v1/rooms/hiring/members").status, 403);
    let said = post("/v1/rooms/hiring/messages", r#"{"text": "let me in"}"#);
    assert_eq!(said.status, 403, "{said:?}");
    let found = get("/v1/search?q=salary");
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.body["messages"], json!([]), "no leak through search");
    let rooms = get("/v1/rooms");
    assert!(!rooms.body.to_string().contains("hiring"), "{rooms:?}");
    // Posting in a public room works, and the key's account is who says it.
    let ok = post("/v1/rooms/ops/messages", r#"{"text": "build green"}"#);
    assert_eq!(ok.status, 201, "{ok:?}");
    let seen = ann.recv_until(|v| v["type"] == "message" && v["room"] == "ops");
    assert_eq!(seen["from"], "deploybot");
    let pm = post(
        "/v1/users/ann/messages",
        r#"{"text": "your deploy is done"}"#,
    );
    assert_eq!(pm.status, 201, "{pm:?}");
    let got = ann.recv_until(|v| v["type"] == "pm");
    assert_eq!(
        (&got["from"], &got["text"]),
        (&json!("deploybot"), &json!("your deploy is done"))
    );
    let nobody = post("/v1/users/nobody/messages", r#"{"text": "hi"}"#);
    assert_eq!(nobody.status, 404, "{nobody:?}");
    // Banned from ops: refused there from now on.
    let r = request(
        &mut ann,
        json!({"type": "ban", "room": "ops", "name": "deploybot", "reason": "noisy"}),
    );
    assert_eq!(r["type"], "ack", "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = post("/v1/rooms/ops/messages", r#"{"text": "again"}"#);
        if refused.status == 403 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{refused:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Moderation goes by the key's user's standing: not an op, refused; the owner's own key may.
    let moderator = new_key(
        &env,
        &[
            "--name",
            "wannabe",
            "--user",
            "deploybot",
            "--scopes",
            "moderate",
        ],
    );
    let ban = r#"{"name": "ann", "reason": "coup"}"#;
    let refused = call(
        api,
        "POST",
        "/v1/rooms/ops/bans",
        Some(&moderator),
        Some(ban),
        &[],
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    let owner = new_key(
        &env,
        &["--name", "owner", "--user", "ann", "--scopes", "moderate"],
    );
    let topic = r#"{"topic": "builds and deploys"}"#;
    let set = call(
        api,
        "PATCH",
        "/v1/rooms/ops",
        Some(&owner),
        Some(topic),
        &[],
    );
    assert_eq!(set.status, 200, "{set:?}");
    let told = ann.recv_until(|v| v["type"] == "room_changed");
    assert_eq!(told["settings"]["topic"], "builds and deploys", "{told}");
}

/// Registers `name` on the daemon: the welcomed client.
pub(crate) fn register(d: &Daemon, name: &str, password: &str) -> crate::helpers::SyncClient {
    let (ws, _) = tokio_tungstenite::tungstenite::connect(format!("ws://{}/", d.addr)).unwrap();
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut c = crate::helpers::SyncClient { ws };
    c.send(json!({"type": "register", "name": name, "password": password, "id": "r"}));
    let w = c.recv_until(|v| v["ref"] == "r");
    assert_eq!(w["type"], "welcome", "{w}");
    c
}

const SECRET: &str = "api-cluster-secret-long-enough-0123456789";

/// A cluster's nodes share the keys and the idempotency keys (PostgreSQL): a key made once
/// works on every node, and a POST retried on another node is answered there with the first
/// one's response, the message said once.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[test]
fn a_retry_on_another_node_posts_once() {
    let redis = crate::helpers::Redis::start();
    let pg = crate::postgres_server::Postgres::start();
    let env = [
        ("CHATD_CLUSTER__REDIS_URL", redis.url.as_str()),
        ("CHATD_STORAGE__URL", pg.url.as_str()),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
        // Names that belong to someone: a key's user may have a session on each node (in open
        // mode a name is one connection's, cluster-wide).
        ("CHATD_AUTH__MODE", "token"),
        ("CHATD_AUTH__SECRET", SECRET),
    ];
    let node = |id: &str| {
        let mut with_id = env.to_vec();
        with_id.push(("CHATD_CLUSTER__NODE_ID", id));
        Daemon::start(&[], &with_id)
    };
    let (a, b) = (node("a"), node("b"));
    let key = new_key(
        &env,
        &["--name", "deploybot", "--scopes", "say,history:read"],
    );
    let token = crate::security::mint(&["henry"], SECRET);
    let (mut henry, w) = hello(&b, "henry", json!({"room": "deploys", "token": token}));
    assert_eq!(w["type"], "welcome", "{w}");
    let body = r#"{"text": "release 7 is out", "idempotency_key": "release-7"}"#;
    let path = "/v1/rooms/deploys/messages";
    let first = call(api_addr(&a), "POST", path, Some(&key), Some(body), &[]);
    assert_eq!(first.status, 201, "{first:?}");
    let again = call(api_addr(&b), "POST", path, Some(&key), Some(body), &[]);
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(
        again.body, first.body,
        "node b answers with node a's response"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let seen = henry.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (&seen["from"], &seen["id"]),
        (&json!("deploybot"), &first.body["id"])
    );
    let page = call(api_addr(&b), "GET", path, Some(&key), None, &[]);
    let said = page.body["messages"].as_array().map(Vec::len);
    assert_eq!(said, Some(1), "said once: {page:?}");
}

/// With a certificate (`tls.cert`), the API speaks https like the chat port: a client that
/// trusts the CA posts.
#[tokio::test]
async fn the_api_speaks_https_when_the_chat_does() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = chatd_command()
        .args([
            "cert",
            "--host",
            "127.0.0.1",
            "--out",
            certs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let db = dir.path().join("chat.db");
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let env = [
        ("CHATD_STORAGE__PATH", db.to_str().unwrap()),
        ("CHATD_API__LISTEN", "127.0.0.1:0"),
        ("CHATD_TLS__CERT", cert.to_str().unwrap()),
        ("CHATD_TLS__KEY", key.to_str().unwrap()),
    ];
    let d = Daemon::start(&[], &env);
    let api = d
        .startup
        .iter()
        .find_map(|line| {
            let text = line_text(line);
            let rest = text.split_once("HTTP API on https://")?.1;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        })
        .expect("the API is announced as https");
    let key = new_key(&env, &["--name", "secure", "--scopes", "say"]);
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let said = client
        .post(format!("https://{api}/v1/rooms/ops/messages"))
        .bearer_auth(&key)
        .body(r#"{"text": "over TLS"}"#)
        .send()
        .await
        .expect("an https answer");
    assert_eq!(said.status().as_u16(), 201);
}
