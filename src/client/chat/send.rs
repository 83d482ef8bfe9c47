//! `chatctl send`: one message, acknowledged, and the connection closed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Frontend;
use crate::client::render::{self, Clock, Line, LineKind};
use crate::client::{EXIT_CONNECT, EXIT_OK, EXIT_REFUSED, Endpoint, hello, hello_failure, open};
use crate::protocol::{ClientMsg, Request, ServerMsg, decode};

/// `chatctl send`: connects, says one thing (in a room, or privately to `to`), waits for the ack.
pub async fn send(
    ep: &Endpoint,
    name: &str,
    room: Option<String>,
    to: Option<String>,
    text: &str,
    ui: &mut impl Frontend,
) -> u8 {
    let mut ws = match open(ep).await {
        Ok(ws) => ws,
        Err(e) => {
            ui.note(Line::info(LineKind::Error, format!("error: {e}")));
            return EXIT_CONNECT;
        }
    };
    let room = room.unwrap_or_else(|| crate::protocol::DEFAULT_ROOM.into());
    if let Err(e) = hello(&mut ws, ep, name, &room, None).await {
        let (line, code) = hello_failure(ep, name, &e);
        ui.note(Line::info(LineKind::Error, line));
        return code;
    }
    let msg = match to {
        Some(to) => ClientMsg::Pm {
            to,
            text: text.to_string(),
            action: false,
        },
        None => ClientMsg::Say {
            room: Some(room),
            text: text.to_string(),
            action: false,
            reply_to: None,
        },
    };
    if let Err(e) = ws
        .send(Message::text(Request::new("send", msg).to_json()))
        .await
    {
        ui.note(Line::info(
            LineKind::Error,
            format!("error: connection lost: {e}"),
        ));
        return EXIT_CONNECT;
    }
    let answer = async {
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(t) = frame else { continue };
            if let Ok(msg) = decode(t.as_str())
                && msg.reference() == Some("send")
            {
                return Some(msg);
            }
        }
        None
    };
    let code = match tokio::time::timeout(crate::client::REPLY_TIMEOUT, answer).await {
        Ok(Some(ServerMsg::Ack { .. })) => EXIT_OK,
        Ok(Some(msg)) => {
            for line in render::render(&msg, &Clock::now(), name) {
                ui.note(line);
            }
            EXIT_REFUSED
        }
        Ok(None) => {
            ui.note(Line::info(
                LineKind::Error,
                "error: connection lost before the server acknowledged the message",
            ));
            EXIT_CONNECT
        }
        Err(_) => {
            ui.note(Line::info(
                LineKind::Error,
                format!(
                    "error: no acknowledgement within {:?}",
                    crate::client::REPLY_TIMEOUT
                ),
            ));
            EXIT_CONNECT
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    code
}
