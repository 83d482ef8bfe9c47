//! The real `chatctl` binary against the real `chatd`: scripted chat, `send`, safe display,
//! reconnect, and the interactive terminal (driven through tmux).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Daemon, Proc, SyncClient, chatctl_command, code_and_stderr};

fn connect(d: &Daemon, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = chatctl_command();
    cmd.args(["--url", &format!("ws://{}", d.addr), "connect", name])
        .args(extra);
    Proc::spawn(cmd)
}

fn send(d: &Daemon, args: &[&str]) -> (Option<i32>, String) {
    code_and_stderr(
        chatctl_command()
            .args(["--url", &format!("ws://{}", d.addr), "send"])
            .args(args),
    )
}

#[test]
fn two_scripted_clients_chat_pm_and_join_rooms() {
    let d = Daemon::start(&[], &[]);
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice! you are in #lobby with: alice");

    let mut bob = connect(&d, "bob", &[]);
    for line in [
        "hello alice",
        "/join #rust",
        "in rust",
        "/me waves in rust",
        "/msg alice psst",
        "/room lobby",
        "/who",
    ] {
        bob.write_line(line);
    }
    bob.close_stdin();
    assert_eq!(bob.wait_exit(), Some(0), "bob: every line acknowledged");
    let bob_out = bob.rest_of_stdout().join("\n");
    assert!(bob_out.contains("you are in #rust with: bob"), "{bob_out}");
    assert!(bob_out.contains("#lobby: alice, bob"), "{bob_out}");

    alice.expect_out("#lobby --> bob joined");
    alice.expect_out("#lobby <bob> hello alice");
    alice.expect_out("[pm from bob] psst");
    alice.expect_out("#lobby <-- bob left");
    // alice was not in #rust: she reads it from history after joining.
    alice.write_line("/join rust");
    alice.expect_out("you are in #rust with: alice");
    alice.expect_out("[history] #rust <bob> in rust");
    alice.expect_out("[history] #rust * bob waves in rust");
    alice.close_stdin();
    assert_eq!(alice.wait_exit(), Some(0));
    assert!(
        !alice
            .seen
            .iter()
            .any(|l| l.contains("stdout") && l.contains("#rust <bob>") && !l.contains("[history]"))
    );
}

#[test]
fn scripted_errors_exit_1_and_go_to_stderr() {
    let d = Daemon::start(&[], &[]);
    let mut c = connect(&d, "carol", &[]);
    c.write_line("/msg nobody hi");
    c.write_line("/dance");
    c.close_stdin();
    // The hint is local (immediate); the error comes back from the server.
    c.expect_err("unknown command /dance");
    c.expect_err("error: nobody called \"nobody\" is online (no_such_user)");
    assert_eq!(c.wait_exit(), Some(1));
}

#[test]
fn send_exits_0_on_ack_and_nonzero_otherwise() {
    let d = Daemon::start(&[], &[]);
    let mut watcher = SyncClient::join(d.addr, "watcher");
    let (code, err) = send(&d, &["--name", "bot", "deploy finished"]);
    assert_eq!(code, Some(0), "{err}");
    let m = watcher.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("bot"), Some("deploy finished"))
    );

    let (code, _) = send(&d, &["--name", "bot", "--to", "watcher", "psst"]);
    assert_eq!(code, Some(0));
    assert_eq!(watcher.recv_until(|v| v["type"] == "pm")["text"], "psst");

    let (code, err) = send(&d, &["--name", "bot", "--to", "ghost", "hi"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "error: nobody called \"ghost\" is online (no_such_user)"
    );
    let (code, err) = send(&d, &["--name", "bot", "--room", "nowhere", "hi"]);
    assert_eq!(
        code,
        Some(0),
        "saying in a named room joins it at hello: {err}"
    );
    let (code, err) = send(&d, &["--name", "WATCHER", "hi"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "error: name \"WATCHER\" is taken");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );

    // No server at all: exit 3 with one clear line.
    let out = chatctl_command()
        .args(["--url", "ws://127.0.0.1:9", "send", "--name", "x", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot connect to ws://127.0.0.1:9") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn received_text_cannot_control_the_terminal() {
    let d = Daemon::start(&[], &[]);
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice!");
    let mut raw = connect(&d, "raw", &["--json"]);
    raw.expect_out("\"type\":\"welcome\"");
    let evil = "\u{1b}]0;pwned\u{7}title \u{1b}[2Jclear \u{9b}31mred \u{202e}gnp.exe";
    let (code, _) = send(&d, &["--name", "mallory", evil]);
    assert_eq!(code, Some(0));
    let line = alice.expect_out("<mallory>");
    assert_eq!(
        line.split_once(' ').unwrap().1,
        "#lobby <mallory> title clear 31mred gnp.exe"
    );
    let json_line = raw.expect_out("\"type\":\"message\"");
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(
            !line.contains(bad) && !json_line.contains(bad),
            "{bad:?} reached the terminal"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(v["text"], evil, "--json keeps the exact text, escaped");
}

#[test]
fn reconnects_after_a_server_restart_and_rejoins_rooms() {
    let mut d = Daemon::start(&[], &[]);
    let port = d.addr.port();
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice!");
    alice.write_line("/join dev");
    alice.expect_out("you are in #dev with: alice");

    d.signal("TERM");
    alice.expect_out("notice from server: server is shutting down");
    alice.expect_err("connection lost: server closed the connection (1001");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));

    let d2 = Daemon::start_at(port, &[], &[]);
    alice.expect_err(&format!("reconnected to ws://{} as alice", d2.addr));
    alice.expect_out("welcome, alice! you are in #lobby with: alice");
    alice.expect_out("you are in #dev with: alice");
    alice.write_line("/room lobby");
    alice.expect_err("now talking in #lobby");
    alice.write_line("still here");
    let mut bob = SyncClient::join(d2.addr, "bob");
    bob.send(json!({"type": "history", "room": "lobby", "id": "h"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The line may still be in flight: page history until it shows (bounded).
    loop {
        let h = bob.recv_until(|v| v["type"] == "history");
        if h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "still here")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice's line never arrived: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
        bob.send(json!({"type": "history", "room": "lobby", "id": "h"}));
    }
    alice.close_stdin();
    assert_eq!(alice.wait_exit(), Some(0));
}

/// tmux on a private socket, so tests never touch a user's sessions.
pub(crate) struct Tmux {
    pub(crate) socket: String,
}

impl Tmux {
    /// A terminal 100 columns wide and `rows` high running `cmd` (a shell line), as session
    /// `chat`.
    pub(crate) fn start(&self, rows: u16, cmd: &str) {
        let rows = rows.to_string();
        let args = [
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "100",
            "-y",
            &rows,
            cmd,
        ];
        self.run(&args);
    }

    pub(crate) fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "chat"])
    }
    /// Polls the screen until `pred` holds (bounded).
    pub(crate) fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub(crate) fn keys(&self, keys: &[&str]) {
        self.run(&[&["send-keys", "-t", "chat"], keys].concat());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[cfg_attr(chatd_no_tmux, ignore = "needs tmux (apt install tmux)")]
#[test]
fn interactive_prompt_survives_incoming_messages_and_sends_typing() {
    let d = Daemon::start(&[], &[]);
    let mut alice = SyncClient::join(d.addr, "alice");
    let tmux = Tmux {
        socket: format!("chatctl-test-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --url ws://{} connect henry; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr
    );
    tmux.start(20, &cmd);
    tmux.wait_for("the welcome", |s| s.contains("welcome, henry!"));
    assert_eq!(alice.recv_until(|v| v["type"] == "joined")["name"], "henry");

    // Typing part of a line sends `typing active` to the room.
    tmux.keys(&["hel"]);
    let t = alice.recv_until(|v| v["type"] == "typing");
    assert_eq!(
        t,
        json!({"type": "typing", "from": "henry", "room": "lobby", "state": "active"})
    );

    // Someone else typing shows on the status row; a message arrives above the prompt, and the
    // half-typed line stays intact at the bottom.
    alice.send(json!({"type": "typing", "room": "lobby", "state": "active"}));
    tmux.wait_for("the typing status", |s| s.contains("alice is typing…"));
    alice.send(json!({"type": "say", "text": "incoming!"}));
    let screen = tmux.wait_for("alice's message", |s| s.contains("<alice> incoming!"));
    assert_eq!(
        last_line(&screen),
        "[#lobby] > hel",
        "prompt was disturbed:\n{screen}"
    );
    assert!(
        !screen.contains("alice is typing…"),
        "a message clears its sender's typing:\n{screen}"
    );

    // Finish the line: it is sent as a message.
    tmux.keys(&["lo", "Enter"]);
    let m = alice.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("henry"), Some("hello"))
    );
    // History with the arrow key, then a command.
    tmux.keys(&["Up"]);
    tmux.wait_for("history recall", |s| last_line(s) == "[#lobby] > hello");
    tmux.keys(&["C-u", "/who", "Enter"]);
    tmux.wait_for("the who reply", |s| s.contains("#lobby: alice, henry"));
    tmux.keys(&["C-d"]);
    tmux.wait_for("a clean exit", |s| s.contains("EXIT=0"));
    assert_eq!(alice.recv_until(|v| v["type"] == "left")["name"], "henry");
}

/// `seq 1 30 | chatctl connect pastebot` used to be cut off (rate limit, close 1008) with lines
/// lost. Paced under the advertised rate, every line goes out, in order, and exits 0.
#[test]
fn piped_lines_are_paced_under_the_server_rate_and_all_acknowledged() {
    for (lines, env) in [
        // The default limits (10/s, bursts of 20): 30 lines take about 1.5 s.
        (30, vec![]),
        // A thousand lines, under a faster server's limits (the same pacing, less waiting).
        (
            1000,
            vec![
                ("CHATD_LIMITS__RATE_PER_SEC", "400"),
                ("CHATD_LIMITS__RATE_BURST", "50"),
            ],
        ),
    ] {
        let d = Daemon::start(&[], &env);
        let mut watcher = SyncClient::join(d.addr, "watcher");
        let mut bot = connect(&d, "pastebot", &[]);
        for i in 1..=lines {
            bot.write_line(&format!("line {i}"));
        }
        bot.close_stdin();
        assert_eq!(bot.wait_exit(), Some(0), "{lines} lines: {:?}", bot.seen);
        let out = bot.rest_of_stdout();
        let own: Vec<&String> = out.iter().filter(|l| l.contains("<pastebot>")).collect();
        assert_eq!(own.len(), lines, "every line is printed once acknowledged");
        for (i, line) in own.iter().enumerate() {
            assert!(
                line.ends_with(&format!("#lobby <pastebot> line {}", i + 1)),
                "{line}"
            );
        }
        let errors: Vec<String> = bot.stderr.try_iter().collect();
        assert!(
            !errors.iter().any(|l| l.contains("rate_limited")),
            "{errors:?}"
        );
        for i in 1..=lines {
            let m = watcher.recv_until(|v| v["type"] == "message");
            assert_eq!(m["text"], format!("line {i}"), "in order");
        }
        let (_, metrics) = crate::helpers::http(d.admin.unwrap(), "GET", "/metrics");
        assert_eq!(
            crate::helpers::metric(&metrics, "chatd_rate_limited_total{kind=\"request\"}"),
            0.0
        );
        println!("{lines} piped lines: all acknowledged, in order, none rate limited");
    }
}

/// A user in 31 rooms (the default cap is 32) is back in all of them after a server restart:
/// the rejoins are paced, so none is refused and the client is not cut off.
#[test]
fn a_user_in_31_rooms_is_back_in_all_of_them_after_a_restart() {
    let mut d = Daemon::start(&[], &[]);
    let port = d.addr.port();
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice!");
    for i in 1..=30 {
        alice.write_line(&format!("/join r{i}"));
    }
    alice.expect_out("you are in #r30 with: alice");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    let d2 = Daemon::start_at(port, &[], &[]);
    alice.expect_err("reconnected to ws://");
    alice.expect_out("you are in #r30 with: alice");
    let mut bob = SyncClient::join(d2.addr, "bob");
    bob.send(json!({"type": "rooms", "id": "r"}));
    let rooms = bob.recv_until(|v| v["type"] == "rooms");
    let mut back: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["members"] == 1 || r["name"] == "lobby")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    back.sort();
    assert_eq!(back.len(), 31, "{rooms}");
    let errors: Vec<String> = alice.stderr.try_iter().collect();
    assert!(!errors.iter().any(|l| l.contains("error")), "{errors:?}");
    alice.close_stdin();
    assert_eq!(alice.wait_exit(), Some(0));
}

/// The normal race after a network failure: the old session is still on the server when the
/// client comes back. chatctl says so, continues as henry2, and keeps its rooms.
#[test]
fn a_name_taken_on_reconnect_continues_as_name_underscore_in_the_same_rooms() {
    let d = Daemon::start(&[], &[]);
    let proxy = crate::helpers::Proxy::to(d.addr);
    let mut cmd = chatctl_command();
    cmd.args(["--url", &format!("ws://{}", proxy.addr), "connect", "henry"]);
    let mut henry = Proc::spawn(cmd);
    henry.expect_out("welcome, henry!");
    henry.write_line("/join dev");
    henry.expect_out("you are in #dev with: henry");
    proxy.cut();
    henry.expect_err("the name henry is taken; trying henry2");
    henry.expect_err("reconnected to ws://");
    henry.expect_out("welcome, henry2! you are in #lobby");
    henry.expect_out("you are in #dev with: henry, henry2");
    henry.write_line("still here");
    henry.expect_out("#dev <henry2> still here");
    henry.close_stdin();
    assert_eq!(henry.wait_exit(), Some(0));

    // --no-alt-nick: scripts that must be exactly that name give up instead.
    let mut again = connect(&d, "henry", &["--no-alt-nick"]);
    again.expect_err("error: name \"henry\" is taken");
    assert_eq!(again.wait_exit(), Some(1));
}

#[test]
fn nick_changes_are_seen_by_the_others_in_the_room() {
    let d = Daemon::start(&[], &[]);
    let mut alice = SyncClient::join(d.addr, "alice");
    let mut henry = connect(&d, "henry", &[]);
    henry.expect_out("welcome, henry!");
    henry.write_line("/nick henry2");
    henry.expect_err("you are now known as henry2");
    let renamed = alice.recv_until(|v| v["type"] == "renamed");
    assert_eq!(
        renamed,
        json!({"type": "renamed", "from": "henry", "to": "henry2"})
    );
    henry.write_line("hello as henry2");
    assert_eq!(
        alice.recv_until(|v| v["type"] == "message")["from"],
        "henry2"
    );
    henry.write_line("/nick alice");
    henry.expect_err("is taken (name_taken)");
    henry.close_stdin();
    assert_eq!(henry.wait_exit(), Some(1), "the refused nick counts");
}

/// History shows when a message was said, with the date when that was not today: a one-off
/// server that answers the hello with history from yesterday evening.
#[test]
fn history_shows_when_things_were_said_with_the_date_when_not_today() {
    use chrono::{Duration as Days, Local, TimeZone};
    let yesterday = (Local::now() - Days::days(1)).date_naive();
    let late = Local
        .from_local_datetime(&yesterday.and_hms_opt(23, 59, 30).unwrap())
        .single()
        .unwrap();
    let earlier_today = Local::now() - Days::seconds(5);
    let ts = |t: chrono::DateTime<Local>| {
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let welcome = json!({
        "type": "welcome", "name": "henry", "room": "lobby", "ref": "hello",
        "users": [{"name": "henry", "role": "user"}],
        "history": [
            {"type": "message", "id": 1, "seq": 1, "ts": ts(late), "room": "lobby",
             "from": "alice", "role": "user", "text": "before midnight"},
            {"type": "message", "id": 2, "seq": 2, "ts": ts(earlier_today), "room": "lobby",
             "from": "alice", "role": "user", "text": "this morning"}
        ],
        "server": {"version": "fake", "max_message_bytes": 65536, "ping_interval_secs": 0.0}
    });
    let addr = one_off_server(welcome);
    let mut cmd = chatctl_command();
    cmd.args(["--url", &format!("ws://{addr}"), "connect", "henry"]);
    let mut henry = Proc::spawn(cmd);
    let old = henry.expect_out("before midnight");
    assert_eq!(
        old,
        format!(
            "{} [history] #lobby <alice> before midnight",
            late.format("%Y-%m-%d %H:%M:%S")
        )
    );
    let today = henry.expect_out("this morning");
    assert_eq!(
        today,
        format!(
            "{} [history] #lobby <alice> this morning",
            earlier_today.format("%H:%M:%S")
        )
    );
    henry.close_stdin();
    assert_eq!(henry.wait_exit(), Some(0));
}

/// A server for one connection that answers the hello with `welcome` and then just listens.
fn one_off_server(welcome: serde_json::Value) -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _hello = ws.next().await;
            ws.send(tokio_tungstenite::tungstenite::Message::text(
                welcome.to_string(),
            ))
            .await
            .unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        });
    });
    addr
}

/// What a user of the terminal client sees: their own line after Enter, stamped with the ack's
/// time; a 60-line paste asks once and then arrives whole and in order without a `rate_limited`;
/// Tab completes a nick.
#[test]
fn interactive_own_lines_paste_check_and_completion() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is required for the interactive test (.ci/run installs it)");
    }
    let d = Daemon::start(&[], &[]);
    let mut alice = SyncClient::join(d.addr, "alice");
    let tmux = Tmux {
        socket: format!("chatctl-test-paste-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --url ws://{} connect henry; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr
    );
    tmux.start(30, &cmd);
    tmux.wait_for("the welcome", |s| s.contains("welcome, henry!"));

    tmux.keys(&["hello there", "Enter"]);
    let m = alice.recv_until(|v| v["type"] == "message");
    let ts = chrono::DateTime::parse_from_rfc3339(m["ts"].as_str().unwrap()).unwrap();
    let time = ts
        .with_timezone(&chrono::Local)
        .format("%H:%M:%S")
        .to_string();
    let own = format!("{time} #lobby <henry> hello there");
    tmux.wait_for("henry's own line", |s| s.contains(&own));

    tmux.keys(&["al", "Tab"]);
    tmux.wait_for("the completed nick", |s| {
        last_line(s) == "[#lobby] > alice:"
    });
    tmux.keys(&["C-u"]);

    let paste: String = (1..=60).map(|i| format!("pasted line {i}\n")).collect();
    let file = std::env::temp_dir().join(format!("chatctl-paste-{}.txt", std::process::id()));
    std::fs::write(&file, paste).unwrap();
    tmux.run(&["load-buffer", file.to_str().unwrap()]);
    tmux.run(&["paste-buffer", "-p", "-t", "chat"]);
    tmux.wait_for("the paste check", |s| {
        last_line(s) == "paste 60 lines? [y/N]"
    });
    tmux.keys(&["y"]);
    for i in 1..=60 {
        let m = alice.recv_until(|v| v["type"] == "message");
        assert_eq!(m["text"], format!("pasted line {i}"));
    }
    tmux.wait_for("the last pasted line acknowledged", |s| {
        s.contains("<henry> pasted line 60")
    });
    let (_, metrics) = crate::helpers::http(d.admin.unwrap(), "GET", "/metrics");
    assert_eq!(
        crate::helpers::metric(&metrics, "chatd_rate_limited_total{kind=\"request\"}"),
        0.0
    );
    let _ = std::fs::remove_file(&file);
    tmux.keys(&["C-d"]);
    tmux.wait_for("a clean exit", |s| s.contains("EXIT=0"));
}

#[test]
fn version_and_token_file() {
    let out = chatctl_command().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("chatctl "));
    let (code, err) = code_and_stderr(chatctl_command().args([
        "--token-file",
        "/nonexistent/token",
        "send",
        "--name",
        "x",
        "y",
    ]));
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: --token-file /nonexistent/token:"),
        "{err}"
    );
}

/// The name comes back: after a drop chatctl went on as `henry2`; once the server lets the old
/// connection go (two ping intervals), chatctl asks for `henry` again and is henry.
#[test]
fn a_fallback_name_is_given_back_once_the_name_is_free() {
    let d = Daemon::start(&[], &[("CHATD_SERVER__PING_INTERVAL_SECS", "1")]);
    let proxy = crate::helpers::Proxy::to(d.addr);
    let mut cmd = chatctl_command();
    cmd.args(["--url", &format!("ws://{}", proxy.addr), "connect", "henry"]);
    let mut henry = Proc::spawn(cmd);
    henry.expect_out("welcome, henry!");
    proxy.cut();
    henry.expect_err("the name henry is taken; trying henry2");
    henry.expect_out("welcome, henry2!");
    henry.expect_err("henry is free again: you are henry");
    henry.write_line("back");
    henry.expect_out("#lobby <henry> back");
    henry.close_stdin();
    assert_eq!(henry.wait_exit(), Some(0));
}
