//! Plain-text sessions: any WebSocket client that sends lines is a chat client (the original protocol).

use serde_json::json;

use crate::helpers::{Client, TestServer};

#[tokio::test]
async fn plain_session_end_to_end() {
    let server = TestServer::start().await;
    let mut json_user = server.join("alice").await;

    let mut henry = Client::connect(server.addr).await;
    henry.send_text("not a valid name!").await;
    let line = henry.recv_line().await;
    assert!(line.contains("send another name"), "{line}");
    henry.send_text("ALICE").await;
    let line = henry.recv_line().await;
    assert!(line.contains("taken"), "{line}");
    henry.send_text("henry\n").await;
    assert_eq!(
        henry.recv_line().await,
        "Welcome, henry! Online: alice, henry"
    );
    let joined = json_user.expect("joined").await;
    assert_eq!(joined["name"], "henry");

    // A line is said in the lobby; JSON users get a normal message event.
    henry.send_text("hello everyone").await;
    let m = json_user.expect("message").await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str(), m["room"].as_str()),
        (Some("henry"), Some("hello everyone"), Some("lobby"))
    );

    // JSON users' events reach the plain user as lines.
    json_user
        .request(json!({"type": "say", "text": "hi henry"}))
        .await;
    assert_eq!(henry.recv_line().await, "alice: hi henry");
    json_user
        .request(json!({"type": "pm", "to": "henry", "text": "secret"}))
        .await;
    assert_eq!(henry.recv_line().await, "[pm from alice] secret");

    let mut bob = Client::connect(server.addr).await;
    bob.send_text("bob").await;
    assert_eq!(
        bob.recv_line().await,
        "Welcome, bob! Online: alice, bob, henry"
    );
    assert_eq!(henry.recv_line().await, "* bob joined the chat");
    json_user.expect("joined").await;

    henry.send_text("/who").await;
    assert_eq!(henry.recv_line().await, "Online: alice, bob, henry");
    henry.send_text("/msg bob just you").await;
    assert_eq!(bob.recv_line().await, "[pm from henry] just you");
    henry.send_text("/msg nobody hi").await;
    assert!(henry.recv_line().await.starts_with("error: "));
    henry.send_text("/dance").await;
    let hint = henry.recv_line().await;
    assert!(
        hint.contains("unknown command") && hint.contains("/msg"),
        "{hint}"
    );
    henry.send_text("/me waves").await;
    assert_eq!(bob.recv_line().await, "* henry waves");
    let m = json_user.expect("message").await;
    assert_eq!(m["action"], true);

    henry.send_text("/exit").await;
    let (code, _) = henry.closed().await;
    assert_eq!(code, 1000);
    assert_eq!(bob.recv_line().await, "* henry has left the chat");
    assert_eq!(json_user.expect("left").await["name"], "henry");
}

#[tokio::test]
async fn a_json_object_that_is_not_hello_is_hello_required() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.addr).await;
    c.send_text(r#"{"type":"say","text":"hi"}"#).await;
    assert_eq!(c.expect("error").await["code"], "hello_required");
    // And a plain line still works as a name afterwards.
    c.send_text("zed").await;
    assert!(c.recv_line().await.starts_with("Welcome, zed!"));
}
