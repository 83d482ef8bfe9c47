//! The real `chatd` binary: command line, configuration errors and exit codes, logging, and shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use chatd::Config;
use serde_json::json;

use crate::helpers::{Client, Daemon, chatd_command};

fn output(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = chatd_command()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run chatd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = output(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for word in ["check-config", "print-config", "--config", "--port", "78"] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
    let (code, out, _) = output(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn embedded_defaults_listen_on_127_0_0_1_8000() {
    let out = crate::helpers::chatd_command_with_defaults()
        .arg("print-config")
        .output()
        .unwrap();
    let (code, out) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    );
    assert_eq!(code, Some(0));
    let config: Config = toml::from_str(&out).expect("print-config prints TOML");
    assert_eq!(config, Config::default());
    assert_eq!(config.listen_addr().to_string(), "127.0.0.1:8000");
    // History goes to chatd.db in the working directory, and print-config says where that is.
    let db = std::env::temp_dir().join("chatd.db");
    assert!(
        out.contains(&format!("# storage.path resolves to {}", db.display())),
        "{out}"
    );
    // Run for real on the default address when it is free on this machine.
    let free = |a: &str| std::net::TcpListener::bind(a).is_ok();
    if free("127.0.0.1:8000") && free("127.0.0.1:8002") {
        let mut child = chatd_command()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            line.trim_end(),
            "WebSocket server listening on 127.0.0.1:8000"
        );
    }
}

#[test]
fn bad_config_exits_78_naming_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CHATD_SERVER__PORT", "abc")], "SERVER.PORT"),
        (&[("CHATD_SERVER__PROT", "1")], "prot"),
        (
            &[("CHATD_LIMITS__MAX_MESSAGE_BYTES", "10")],
            "limits.max_message_bytes",
        ),
        (
            &[("CHATD_SERVER__HANDSHAKE_TIMEOUT_SECS", "-1")],
            "server.handshake_timeout_secs",
        ),
        (&[("CHATD_SERVER__HOST", "not-an-ip")], "server.host"),
        (&[("CHATD_LOG__FORMAT", "xml")], "LOG.FORMAT"),
        (&[("CHATD_HISTORY__ON_JOIN", "500")], "history.on_join"),
    ];
    for (env, key) in cases {
        for cmd in [&["check-config"][..], &[][..]] {
            let (code, _, err) = output(cmd, env);
            assert_eq!(code, Some(78), "{env:?} {cmd:?}: {err}");
            assert!(
                err.contains(key),
                "{env:?}: error does not name {key}: {err}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nport = 1\n[limits]\nmax_mesage_bytes = 5\n",
    )
    .unwrap();
    let (code, _, err) = output(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, Some(78));
    assert!(
        err.contains("max_mesage_bytes") && err.contains("bad.toml"),
        "{err}"
    );
    let (code, _, err) = output(
        &["check-config"],
        &[("CHATD_CONFIG", "/nonexistent/chat.toml")],
    );
    assert_eq!(code, Some(78));
    assert!(err.contains("/nonexistent/chat.toml"), "{err}");
}

#[test]
fn layers_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    std::fs::write(
        &file,
        "[server]\nport = 1111\nworkers = 2\n[history]\nsize = 7\non_join = 7\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = output(
        &["--config", path, "--port", "3333", "print-config"],
        &[("CHATD_SERVER__WORKERS", "3"), ("CHATD_HISTORY__SIZE", "9")],
    );
    assert_eq!(code, Some(0), "{err}");
    let c: Config = toml::from_str(&out).unwrap();
    assert_eq!(c.server.port, 3333); // CLI beats everything
    assert_eq!(c.server.workers, 3); // env beats file
    assert_eq!(c.history.size, 9);
    assert_eq!(c.history.on_join, 7); // file beats defaults
    let (code, out, _) = output(&["check-config"], &[("CHATD_CONFIG", path)]);
    assert_eq!(code, Some(0));
    assert!(out.contains("OK"));
}

/// The repo's chat.toml is valid, documents every key, and its values are the real defaults.
#[test]
fn shipped_chat_toml_documents_every_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/chat.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let parsed = Config::from_toml_str(&text).expect("chat.toml is valid");
    assert_eq!(
        parsed,
        Config::default(),
        "chat.toml values differ from the built-in defaults"
    );
    fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(key.clone());
                keys(v, &key, out);
            }
        }
    }
    let (mut shipped, mut all) = (BTreeSet::new(), BTreeSet::new());
    keys(&toml::from_str(&text).unwrap(), "", &mut shipped);
    keys(
        &toml::Value::try_from(Config::default()).unwrap(),
        "",
        &mut all,
    );
    assert_eq!(
        shipped, all,
        "chat.toml must list exactly the configuration keys"
    );
}

#[test]
fn log_files_rotate_into_the_configured_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &[],
        &[("CHATD_LOG__DIRECTORY", dir.path().to_str().unwrap())],
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("chatd.log."), "{name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["fields"]["message"].is_string(), "{first}");
    assert!(text.contains("shutdown complete"), "{text}");
}

#[tokio::test]
async fn sigterm_delivers_accepted_messages_then_closes_1001_and_exits_0() {
    const MESSAGES: usize = 50;
    let mut d = Daemon::start(&[], &[("CHATD_LIMITS__RATE_PER_SEC", "0")]);
    let mut alice = Client::connect(d.addr).await;
    alice.hello("alice").await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let mut c = Client::connect(d.addr).await;
        c.hello(name).await;
        others.push(c);
    }
    for i in 0..MESSAGES {
        alice
            .send(json!({"type": "say", "text": format!("m{i}")}))
            .await;
    }
    let mut acks = 0;
    while acks < MESSAGES {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    let signalled = std::time::Instant::now();
    d.signal("TERM");
    others.push(alice);
    for (i, c) in others.iter_mut().enumerate() {
        let sender = i == 3;
        let mut got = 0;
        loop {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(v["text"], format!("m{got}"));
                    got += 1;
                }
                Some("notice") => break,
                _ => {}
            }
        }
        let expected = if sender { 0 } else { MESSAGES };
        assert_eq!(
            got, expected,
            "messages acked before SIGTERM must be delivered"
        );
        let (code, reason) = c.closed().await;
        assert_eq!(code, 1001, "{reason}");
    }
    assert_eq!(d.wait_exit(Duration::from_secs(6)), Some(0));
    println!("shutdown with 4 clients took {:?}", signalled.elapsed());
    let logs: Vec<String> = d.lines.try_iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("shutdown started") && l.contains("\"connections\":4")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("shutdown complete")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut d = Daemon::start(&[], &[("CHATD_SERVER__SHUTDOWN_GRACE_SECS", "30")]);
    // A client that never answers the close handshake holds shutdown open.
    let mut c = Client::connect(d.addr).await;
    c.hello("alice").await;
    d.signal("TERM");
    assert_eq!(c.expect("notice").await["from"], "server");
    // Don't answer the close: read nothing more. Then the second signal.
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(130));
}
