//! The chat page in a real browser: each test starts the real chatd and runs one scenario of
//! `tests/browser/run.mjs` (Playwright driving Debian's Chromium), answering its requests for
//! things done outside the browser (another client speaking, the server restarting).
//!
//! Needs `node`, Chromium (`/usr/bin/chromium` or `$CHROMIUM`) and `npm ci --prefix tests/browser`.
//! Without them the tests say so and pass, unless `CHATD_BROWSER_TESTS=required` (as in CI).
//! Screenshots land in `target/tmp/browser/`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Daemon, Proc, SyncClient, chatctl_command};
use crate::security::{SECRET, mint, token_env};
use crate::tls::{Ca, start_with, tls_env, tls_files};

/// One browser at a time: Chromium is heavy on a 2-core machine, and the other tests run meanwhile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The node process, killed with its browser (its process group) however the test ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        // The group's id is node's pid (`process_group(0)`); rustix, because `kill -KILL -PID`
        // is parsed differently by different `kill`s (one read it as `kill -1`).
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// Runs `scenario` against the page at `url`; `on` answers each request the scenario makes.
fn run(scenario: &str, url: &str, mut on: impl FnMut(&Value) -> Value) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg("run.mjs")
        .arg(scenario)
        .current_dir(browser_dir())
        .env("CHATD_URL", url)
        .env("CHATD_SHOTS", &shots)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut node = Node(cmd.spawn().expect("run node"));
    let mut stdin = node.0.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = node.0.stdout.take().unwrap();
    let err = node.0.stderr.take().unwrap();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((false, line));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx_err.send((true, line));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut transcript = Vec::new();
    let mut ok = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((false, line)) => {
                if let Some(request) = line.strip_prefix("@@ ") {
                    let request: Value = serde_json::from_str(request).unwrap();
                    let answer = on(&request);
                    transcript.push(format!("{request} -> {answer}"));
                    writeln!(stdin, "{answer}").unwrap();
                    stdin.flush().unwrap();
                } else {
                    ok |= line == format!("ok {scenario}");
                    transcript.push(line);
                }
            }
            Ok((true, line)) => transcript.push(format!("stderr: {line}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("scenario {scenario} timed out:\n{}", transcript.join("\n"))
            }
        }
    }
    let status = node.0.wait().unwrap();
    assert!(
        ok && status.success(),
        "scenario {scenario} failed ({status}); screenshots in {}:\n{}",
        shots.display(),
        transcript.join("\n")
    );
}

/// Clients that are not browsers, by name, speaking plain WebSocket to `addr`.
struct Others {
    addr: SocketAddr,
    clients: HashMap<String, SyncClient>,
    next: u64,
}

impl Others {
    fn new(addr: SocketAddr) -> Others {
        Others {
            addr,
            clients: HashMap::new(),
            next: 0,
        }
    }

    /// Sends `request` as `name` (joined on first use) and returns its reply.
    fn ask(&mut self, name: &str, mut request: Value) -> Value {
        let addr = self.addr;
        let c = self
            .clients
            .entry(name.to_string())
            .or_insert_with(|| SyncClient::join(addr, name));
        self.next += 1;
        let id = format!("t{}", self.next);
        request["id"] = json!(id);
        c.send(request);
        c.recv_until(|v| v["ref"] == id.as_str())
    }

    fn say(&mut self, name: &str, room: &str, text: &str) -> Value {
        let ack = self.ask(name, json!({"type": "say", "room": room, "text": text}));
        assert_eq!(ack["type"], "ack", "{ack}");
        json!({"ok": true})
    }

    /// Whether `text` is in lobby's history as another client sees it.
    fn heard(&mut self, name: &str, text: &str) -> Value {
        let page = self.ask(
            name,
            json!({"type": "history", "room": "lobby", "limit": 50}),
        );
        let heard = page["messages"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["text"] == text));
        json!({ "heard": heard })
    }

    /// Answers the requests every scenario may make.
    fn answer(&mut self, request: &Value) -> Value {
        let name = request["name"].as_str().unwrap_or("");
        let text = request["text"].as_str().unwrap_or("");
        match request["op"].as_str() {
            Some("say") => self.say(name, request["room"].as_str().unwrap(), text),
            Some("hear") => self.heard(name, text),
            _ => json!({"error": format!("unknown request {request}")}),
        }
    }
}

fn page_url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn two_people_chat_in_the_browser_beside_another_client() {
    let d = Daemon::start(&[], &[]);
    let mut others = Others::new(d.addr);
    run("conversation", &page_url(d.addr), |r| others.answer(r));
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn history_shows_on_join_and_older_pages_load_on_scrolling_up() {
    // Stored history (the default), so scrolling up reaches back past what memory keeps.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_STORAGE__PATH", db.to_str().unwrap()),
            ("CHATD_HISTORY__SIZE", "50"),
            ("CHATD_LIMITS__RATE_PER_SEC", "10000"),
            ("CHATD_LIMITS__RATE_BURST", "10000"),
        ],
    );
    let mut others = Others::new(d.addr);
    let said = 130;
    for i in 1..=said {
        others.say("dave", "lobby", &format!("old message {i}"));
    }
    run("history", &page_url(d.addr), |r| match r["op"].as_str() {
        Some("info") => json!({ "said": said }),
        _ => others.answer(r),
    });
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn what_others_send_is_shown_as_text_and_injected_script_is_blocked() {
    let d = Daemon::start(&[], &[]);
    let mut others = Others::new(d.addr);
    run("hostile", &page_url(d.addr), |r| others.answer(r));
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn the_page_reconnects_after_a_restart_and_shows_what_it_missed_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let env = [("CHATD_STORAGE__PATH", db.to_str().unwrap())];
    let mut d = Daemon::start(&[], &env);
    let port = d.addr.port();
    let mut others = Others::new(d.addr);
    run("restart", &page_url(d.addr), |r| {
        if r["op"] != "restart" {
            return others.answer(r);
        }
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
        // While the page is away, the chat goes on (on a server it cannot reach, same history).
        let mut between = Daemon::start(&[], &env);
        let mut away = Others::new(between.addr);
        for m in r["said"].as_array().unwrap() {
            let field = |k: &str| m[k].as_str().unwrap().to_string();
            away.say(&field("name"), &field("room"), &field("text"));
        }
        drop(away);
        between.signal("TERM");
        assert_eq!(between.wait_exit(Duration::from_secs(15)), Some(0));
        // Back on the page's address.
        d = Daemon::start_at(port, &[], &env);
        others = Others::new(d.addr);
        json!({"ok": true})
    });
}

/// A crowd joins a large room (here: over 2 members) and some of it leaves: the page shows the
/// batched `presence` notes and keeps its member list and count right.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn the_page_follows_a_crowd_in_a_large_room() {
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_LIMITS__PRESENCE_BATCH_OVER", "2"),
            ("CHATD_LIMITS__PRESENCE_BATCH_MS", "100"),
        ],
    );
    let mut others = Others::new(d.addr);
    let mut stay = Vec::new();
    run("crowd", &page_url(d.addr), |r| {
        if r["op"] != "crowd" {
            return others.answer(r);
        }
        let n = |k: &str| r[k].as_u64().unwrap() as usize;
        let mut crowd: Vec<_> = (0..n("join"))
            .map(|i| SyncClient::join(d.addr, &format!("guest{i:02}")))
            .collect();
        crowd.drain(..n("leave"));
        // The rest stay until the page has seen them.
        stay.extend(crowd);
        json!({"ok": true})
    });
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn in_token_mode_the_page_asks_for_the_token() {
    let d = start_with(&token_env());
    run(
        "token",
        &page_url(d.addr),
        |r| json!({"token": mint(&[r["name"].as_str().unwrap_or("")], SECRET)}),
    );
}

/// Accounts mode: the page registers, chats, and after a reload signs in again (a wrong password
/// first); another client signed in to its own account sees the page's user online.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn in_accounts_mode_the_page_registers_and_signs_in() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let d = start_with(&crate::accounts::accounts_env(&db));
    let mut register = SyncClient::connect(d.addr);
    register.send(json!({"type": "register", "name": "watcher", "password": "watcher password"}));
    let w = register.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
    assert_eq!(w["type"], "welcome", "{w}");
    let file = db.clone();
    run("accounts", &page_url(d.addr), |r| match r["op"].as_str() {
        Some("say_in_dev") => {
            register.send(json!({"type": "join", "room": "dev", "id": "j"}));
            register.recv_until(|v| v["ref"] == "j");
            register.send(json!({"type": "say", "room": "dev", "text": r["text"], "id": "s"}));
            let ack = register.recv_until(|v| v["ref"] == "s");
            json!({ "said": ack["type"] == "ack" })
        }
        Some("read_by") => {
            // Markers are written within half a second.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let db = rusqlite::Connection::open(&file).unwrap();
                let read: Option<i64> = db
                    .query_row(
                        "SELECT read_seq FROM memberships WHERE account = ?1 AND room = ?2",
                        [r["name"].as_str().unwrap(), r["room"].as_str().unwrap()],
                        |row| row.get(0),
                    )
                    .ok();
                if read >= Some(1) || std::time::Instant::now() > deadline {
                    return json!({ "read": read >= Some(1) });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        _ => {
            let name = r["name"].as_str().unwrap_or("");
            register.send(json!({"type": "who", "room": "lobby", "id": "who"}));
            let who = register.recv_until(|v| v["ref"] == "who");
            let heard = who["users"]
                .as_array()
                .is_some_and(|us| us.iter().any(|u| u["name"] == name));
            json!({ "heard": heard })
        }
    });
}

/// Accounts mode: two pages of one account at once share rooms and read state.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn two_pages_of_one_account_share_rooms_and_read_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let d = start_with(&crate::accounts::accounts_env(&db));
    for name in ["ann", "bob"] {
        let mut c = SyncClient::connect(d.addr);
        c.send(json!({"type": "register", "name": name, "password": format!("{name} password")}));
        let w = c.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
        assert_eq!(w["type"], "welcome", "{w}");
    }
    let mut bob = SyncClient::connect(d.addr);
    bob.send(json!({"type": "hello", "name": "bob", "password": "bob password"}));
    bob.recv_until(|v| v["type"] == "welcome");
    run("twoDevices", &page_url(d.addr), |r| {
        bob.send(json!({"type": "join", "room": "dev", "id": "j"}));
        bob.recv_until(|v| v["ref"] == "j");
        bob.send(json!({"type": "say", "room": "dev", "text": r["text"], "id": "s"}));
        let ack = bob.recv_until(|v| v["ref"] == "s");
        json!({ "said": ack["type"] == "ack" })
    });
}

/// Accounts mode: the page's owner of a room sets its topic, makes it private, and mutes and
/// bans another member from the menu on his name.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn the_page_moderates_from_a_members_menu() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let d = start_with(&crate::accounts::accounts_env(&db));
    let mut bob = SyncClient::connect(d.addr);
    bob.send(json!({"type": "register", "name": "bob", "password": "bob password"}));
    let w = bob.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
    assert_eq!(w["type"], "welcome", "{w}");
    run("moderation", &page_url(d.addr), |r| {
        match r["op"].as_str() {
            Some("bob_joins") => {
                bob.send(json!({"type": "join", "room": "team", "id": "j"}));
                let room = bob.recv_until(|v| v["ref"] == "j");
                json!({ "joined": room["type"] == "room" && room["topic"] == "Ship it on Friday" })
            }
            Some("bob_says") => {
                bob.send(json!({"type": "say", "room": "team", "text": "can I talk?", "id": "s"}));
                let e = bob.recv_until(|v| v["ref"] == "s");
                json!({ "refused": e["code"] == "forbidden" })
            }
            Some("bob_is_out") => {
                bob.recv_until(|v| v["type"] == "kicked" && v["name"] == "bob");
                bob.send(json!({"type": "join", "room": "team", "id": "j2"}));
                let e = bob.recv_until(|v| v["ref"] == "j2");
                json!({ "out": e["code"] == "forbidden" })
            }
            _ => json!({"error": format!("unknown request {r}")}),
        }
    });
}

/// Messages that change: ann edits hers (↑ in the empty box), bob reacts and replies from a
/// message's menu, ann deletes one; both pages agree, and so does bob's after a reload.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn edits_reactions_replies_and_deletes_show_in_both_pages_and_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let d = Daemon::start(&[], &[("CHATD_STORAGE__PATH", db.as_str())]);
    run(
        "lifecycle",
        &page_url(d.addr),
        |r| json!({"error": format!("unknown request {r}")}),
    );
}

/// Accounts mode: a PM sent while ann was away waits for her; the page counts and shows it.
#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn a_pm_that_waited_is_counted_shown_and_read_in_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let d = start_with(&crate::accounts::accounts_env(&db));
    let mut ann = SyncClient::connect(d.addr);
    ann.send(json!({"type": "register", "name": "ann", "password": "ann password"}));
    let w = ann.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
    assert_eq!(w["type"], "welcome", "{w}");
    drop(ann);
    let mut bob = SyncClient::connect(d.addr);
    bob.send(json!({"type": "register", "name": "bob", "password": "bob password"}));
    bob.recv_until(|v| v["type"] == "welcome");
    // ann's connection ends on the server shortly after it closes: until then the PM is live.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ack = loop {
        bob.send(json!({"type": "who", "id": "w"}));
        let who = bob.recv_until(|v| v["ref"] == "w");
        if who["user_count"] == 1 || Instant::now() > deadline {
            bob.send(json!({"type": "pm", "to": "ann", "text": "while you were away", "id": "p"}));
            break bob.recv_until(|v| v["ref"] == "p");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ack["offline"], true, "{ack}");
    let file = db.clone();
    run("waitingPm", &page_url(d.addr), |_| {
        // The page sends its `read` as the badge goes; the marker is written as it is answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let db = rusqlite::Connection::open(&file).unwrap();
            let read: Option<i64> = db
                .query_row(
                    "SELECT read_id FROM pm_reads WHERE account = 'ann' AND other = 'bob'",
                    [],
                    |row| row.get(0),
                )
                .ok();
            if read == ack["id"].as_i64() || Instant::now() > deadline {
                return json!({ "read": read == ack["id"].as_i64() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[cfg_attr(
    chatd_no_browser,
    ignore = "needs node, Chromium (apt install chromium) and `npm ci --prefix tests/browser`"
)]
#[test]
fn the_page_over_https_chats_over_wss_with_a_chatctl_user() {
    let ca = Ca::new("chatd browser test CA");
    let files = tls_files(&ca);
    let d = start_with(&tls_env(&files));
    let url = format!("wss://localhost:{}", d.addr.port());
    let mut cmd = chatctl_command();
    cmd.args(["--url", &url, "--ca-cert", files.ca.to_str().unwrap()])
        .args(["connect", "plain"]);
    let mut plain = Proc::spawn(cmd);
    plain.expect_out("welcome, plain!");
    let page = format!("https://localhost:{}/", d.addr.port());
    run("tls", &page, |r| match r["op"].as_str() {
        Some("hear") => {
            let text = r["text"].as_str().unwrap();
            plain.expect_out(text);
            json!({"heard": true})
        }
        _ => json!({"error": "unexpected"}),
    });
}
