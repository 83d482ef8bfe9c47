//! The API's moderation calls (rooms that belong to someone: accounts mode), each the protocol's
//! moderation request of the same name, checked by the chat exactly as for the key's user's own
//! client (only a room's owner and ops, or an admin, may). Scope `moderate`.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::routes::{Call, parse};
use super::{Failure, Reply, json_reply};

/// `PATCH /v1/rooms/{room}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    topic: Option<String>,
    visibility: Option<String>,
    invite_only: Option<bool>,
    moderated: Option<bool>,
}

/// `POST /v1/rooms/{room}/bans` and `/mutes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sanction {
    name: String,
    duration: Option<String>,
    reason: Option<String>,
}

/// `POST /v1/rooms/{room}/invites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    name: String,
}

impl Call<'_> {
    /// Changes a room's settings.
    pub(super) async fn room_set(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("moderate")?;
        let room = self.room(room)?;
        let body: Settings = parse(self.body)?;
        let mut request = json!({"type": "room_set", "room": &*room});
        if let Some(topic) = body.topic {
            request["topic"] = json!(topic);
        }
        if let Some(visibility) = body.visibility {
            request["visibility"] = json!(visibility);
        }
        if let Some(on) = body.invite_only {
            request["invite_only"] = json!(on);
        }
        if let Some(on) = body.moderated {
            request["moderated"] = json!(on);
        }
        self.ask(None, request).await?;
        Ok(json_reply(StatusCode::OK, &json!({"room": &*room})))
    }

    /// A room's bans and mutes in force.
    pub(super) async fn bans(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("moderate")?;
        let room = self.room(room)?;
        let reply = self
            .ask(None, json!({"type": "bans", "room": &*room}))
            .await?;
        let body = json!({
            "room": &*room,
            "bans": reply.get("bans").cloned().unwrap_or(json!([])),
            "more": reply.get("more").cloned().unwrap_or(json!(false)),
        });
        Ok(json_reply(StatusCode::OK, &body))
    }

    /// `ban` or `mute` someone in a room.
    pub(super) async fn sanction(&self, kind: &str, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("moderate")?;
        let room = self.room(room)?;
        let body: Sanction = parse(self.body)?;
        let mut request = json!({"type": kind, "room": &*room, "name": &body.name});
        if let Some(duration) = body.duration {
            request["duration"] = json!(duration);
        }
        if let Some(reason) = body.reason {
            request["reason"] = json!(reason);
        }
        self.ask(None, request).await?;
        let done = if kind == "ban" { "banned" } else { "muted" };
        let reply = json!({"room": &*room, done: body.name});
        Ok(json_reply(StatusCode::OK, &reply))
    }

    /// `unban` or `unmute` someone.
    pub(super) async fn lift(&self, kind: &str, room: &str, name: &str) -> Result<Reply, Failure> {
        self.caller.needs("moderate")?;
        let room = self.room(room)?;
        self.ask(None, json!({"type": kind, "room": &*room, "name": name}))
            .await?;
        let done = if kind == "unban" {
            "unbanned"
        } else {
            "unmuted"
        };
        Ok(json_reply(
            StatusCode::OK,
            &json!({"room": &*room, done: name}),
        ))
    }

    /// Invites someone into an invite-only room.
    pub(super) async fn invite(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("moderate")?;
        let room = self.room(room)?;
        let body: Invite = parse(self.body)?;
        self.ask(
            None,
            json!({"type": "invite", "room": &*room, "name": &body.name}),
        )
        .await?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({"room": &*room, "invited": body.name}),
        ))
    }
}
