//! Operations: /metrics counts exactly what happened, health endpoints, systemd notification,
//! SIGHUP, and `chatd healthcheck`.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Client, Daemon, TestServer, chatd_command, http, metric};

/// Scrapes until `series` reaches `want` (state that settles after a close), bounded.
async fn scrape_until(admin: std::net::SocketAddr, series: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics"))
            .await
            .unwrap();
        if metric(&body, series) == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {want}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_chat_exactly() {
    let server = TestServer::start().await;
    let admin = server.admin.unwrap();
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    for i in 0..3 {
        alice
            .request(json!({"type": "say", "text": format!("m{i}")}))
            .await;
        bob.expect("message").await;
    }
    bob.request(json!({"type": "pm", "to": "alice", "text": "psst"}))
        .await;
    alice.expect("pm").await;
    bob.request(json!({"type": "join", "room": "rust"})).await;
    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "active"}))
        .await;
    bob.expect("typing").await;
    // Every request type is counted as itself (search and nick once counted as "invalid").
    bob.request(json!({"type": "search", "query": "m1"})).await;
    bob.request(json!({"type": "nick", "name": "robert"})).await;
    alice.expect("renamed").await;
    bob.send_text("{oops").await;
    bob.expect("error").await;
    alice.ws.close(None).await.unwrap();
    // Leaving ends alice's typing first.
    assert_eq!(bob.expect("typing").await["state"], "done");
    assert_eq!(bob.expect("left").await["name"], "alice");

    let m = scrape_until(admin, "chatd_connections_open", 1.0).await;
    let expect = [
        ("chatd_connections_accepted_total", 2.0),
        ("chatd_connections_closed_total{reason=\"client\"}", 1.0),
        ("chatd_users_online", 1.0),
        ("chatd_rooms", 2.0),
        ("chatd_messages_received_total{type=\"hello\"}", 2.0),
        ("chatd_messages_received_total{type=\"say\"}", 3.0),
        ("chatd_messages_received_total{type=\"pm\"}", 1.0),
        ("chatd_messages_received_total{type=\"join\"}", 1.0),
        ("chatd_messages_received_total{type=\"typing\"}", 1.0),
        ("chatd_messages_received_total{type=\"search\"}", 1.0),
        ("chatd_messages_received_total{type=\"nick\"}", 1.0),
        ("chatd_messages_received_total{type=\"invalid\"}", 1.0),
        ("chatd_messages_delivered_total", 4.0),
        ("chatd_events_delivered_total{class=\"presence\"}", 3.0),
        ("chatd_events_delivered_total{class=\"typing\"}", 2.0),
        ("chatd_deliveries_dropped_total{class=\"typing\"}", 0.0),
        ("chatd_fanout_recipients_count", 3.0),
        ("chatd_fanout_recipients_sum", 3.0),
        ("chatd_message_handling_seconds_count", 11.0),
        ("chatd_rate_limited_total{kind=\"request\"}", 0.0),
        ("chatd_slow_consumer_disconnects_total", 0.0),
        ("chatd_connections_refused_total{reason=\"capacity\"}", 0.0),
        ("chatd_build_info{version=\"0.1.0\"}", 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&m, series), want, "{series}");
    }
    assert!(metric(&m, "chatd_received_bytes_total") > 100.0);
    assert!(metric(&m, "chatd_sent_bytes_total") > 100.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&m, "process_open_fds") > 3.0);
    assert!(metric(&m, "process_cpu_seconds_total") >= 0.0);
    for line in m.lines().filter(|l| l.starts_with("chatd_")) {
        assert!(
            !line.contains("alice") && !line.contains("lobby"),
            "user or room name in a label: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_readiness_during_shutdown() {
    let server = TestServer::with(|c| c.server.shutdown_grace_secs = 3.0).await;
    let admin = server.admin.unwrap();
    let get =
        move |path: &'static str| tokio::task::spawn_blocking(move || http(admin, "GET", path));
    assert_eq!(get("/healthz").await.unwrap(), (200, "ok\n".into()));
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    assert_eq!(get("/nope").await.unwrap().0, 404);
    let (status, _) = tokio::task::spawn_blocking(move || http(admin, "POST", "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, body) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE chatd_connections_open gauge"));
    // HEAD answers without a body; an absolute-form target (as proxies send) names the path.
    let (status, body) = tokio::task::spawn_blocking(move || http(admin, "HEAD", "/metrics"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, ""));
    let absolute = format!("http://{admin}/healthz");
    let (status, body) = tokio::task::spawn_blocking(move || http(admin, "GET", &absolute))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A client that never answers the close handshake keeps the drain going for a while.
    let _stuck = Client::connect(server.addr).await;
    server.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = get("/readyz").await.unwrap();
        if status == 503 {
            assert_eq!(body, "shutting down\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never flipped"
        );
    }
    assert_eq!(
        get("/healthz").await.unwrap().0,
        200,
        "alive while draining"
    );
}

#[test]
fn systemd_notify_ready_once_listening_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = chatd_command()
        .args(["--port", "0"])
        .env("CHATD_ADMIN__LISTEN", "127.0.0.1:0")
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    // At READY both listeners accept: the lines naming them were printed before it.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // (JSON events, stdout being a pipe: the chat address in `addr`, the admin one in
    // `admin_addr`.)
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for _ in 0..10 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        for key in ["addr", "admin_addr"] {
            if let Some(a) = event["fields"][key].as_str() {
                addrs.push(a.parse().unwrap());
            }
        }
        if addrs.len() == 2 {
            break;
        }
    }
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for addr in &addrs {
        std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("{addr} not accepting at READY: {e}"));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn sighup_does_not_stop_the_daemon_and_healthcheck_reports() {
    let mut d = Daemon::start(&[], &[]);
    let admin = d.admin.expect("admin listener").to_string();
    d.signal("HUP");
    let healthcheck = |admin: &str| {
        chatd_command()
            .args(["healthcheck"])
            .env("CHATD_ADMIN__LISTEN", admin)
            .output()
            .unwrap()
    };
    let out = healthcheck(&admin);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "healthy");
    // An unspecified address (as in the container) is checked on loopback.
    let port = d.admin.unwrap().port();
    assert_eq!(
        healthcheck(&format!("0.0.0.0:{port}")).status.code(),
        Some(0)
    );
    let mut ws = tokio_tungstenite::tungstenite::connect(format!("ws://{}/", d.addr))
        .unwrap()
        .0;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"hello","name":"after_hup"}"#,
    ))
    .unwrap();
    assert!(ws.read().unwrap().to_text().unwrap().contains("welcome"));
    drop(ws);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    let out = healthcheck(&admin);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
