//! What nodes say to each other through Redis: an [`Envelope`] on a channel or in a room's
//! stream, JSON (the cluster's wire between nodes, and the one place in `hub/` that knows JSON
//! besides `protocol`, which encodes the event inside).
//!
//! The format is versioned (`v`); fields are only ever added, and an envelope with fields a node
//! does not know still parses (a node of the next version may write them). What arrives is not
//! trusted blindly: an envelope larger than any chat event can make is dropped, and so is one
//! that does not parse (`chatd_cluster_envelopes_dropped_total`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::now_ms;
use crate::hub::{ConnId, StoredMessage};
use crate::protocol::{ChatMessage, ServerMsg};

/// The envelope format this node writes.
pub(super) const VERSION: u32 = 1;

/// What travels on a channel and in a stream entry.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope<'a> {
    /// A room message's seq, id and epoch (set by the say script, which writes them first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub epoch: Cow<'a, str>,
    /// The format's version (absent: 0, the first).
    #[serde(default)]
    pub v: u32,
    /// When it was published (ms since the Unix epoch).
    pub t: u64,
    /// The connection that caused it (`node|conn`), which does not get it.
    pub x: Cow<'a, str>,
    /// On a node's channel: the connection it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ConnId>,
    /// A rename: the rooms it concerns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<Cow<'a, str>>,
    /// A kick for `to`: by whom, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick: Option<(Cow<'a, str>, Cow<'a, str>)>,
    /// A logout for `to`, whose user's key this is (a node obeys only for that user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<ServerMsg<'a>>,
    /// A marker a node sends itself: everything published before it has been delivered. Also
    /// the answer to `confirm`, sent to the asking node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// With `fence`: the PM it confirms found nobody to deliver to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    /// A PM: the node that delivers it answers with this `fence` on the sender's node channel
    /// (the sender's ack waits for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<u64>,
    /// A join script ran for `to` in `rooms[0]`: what its pending entry holds so far happened
    /// before, and the join's reply already reflects it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mark: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl<'a> Envelope<'a> {
    /// An event caused by connection `x` (`node|conn`).
    pub fn new(x: &'a str, e: ServerMsg<'a>) -> Envelope<'a> {
        Envelope {
            e: Some(e),
            ..Envelope::control(x)
        }
    }

    /// An envelope without an event (a kick order, a fence, a join's marker).
    pub fn control(x: &'a str) -> Envelope<'a> {
        Envelope {
            seq: 0,
            id: 0,
            epoch: Cow::Borrowed(""),
            v: VERSION,
            t: now_ms(),
            x: Cow::Borrowed(x),
            to: None,
            rooms: Vec::new(),
            kick: None,
            logout: None,
            e: None,
            fence: None,
            absent: false,
            confirm: None,
            mark: false,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An envelope from Redis, if it is one: within `max` bytes, and well formed. A room
    /// message carries the id and seq the say script gave it.
    pub fn parse(raw: &'a str, max: usize) -> Option<Envelope<'a>> {
        if raw.len() > max {
            return None;
        }
        let mut env: Envelope<'a> = serde_json::from_str(raw).ok()?;
        let (id, number) = (env.id, env.seq);
        match &mut env.e {
            Some(ServerMsg::Message(m)) => m.numbered(id, number),
            Some(
                ServerMsg::Edited { seq, id: i, .. }
                | ServerMsg::Deleted { seq, id: i, .. }
                | ServerMsg::Reaction { seq, id: i, .. },
            ) => (*i, *seq) = (id, number),
            _ => {}
        }
        Some(env)
    }

    /// The room message (or change) it carries, numbered.
    pub fn message(self) -> Option<StoredMessage> {
        if self.seq == 0 {
            return None;
        }
        let mut m = ChatMessage::from_event(self.e?)?;
        m.numbered(self.id, self.seq);
        Some(m.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatMessage, Role, b};

    fn message() -> ServerMsg<'static> {
        ServerMsg::Message(ChatMessage {
            id: 0,
            seq: 0,
            ts: b("2026-12-01T00:00:00.000Z"),
            room: b("lobby"),
            from: b("alice"),
            role: Role::User,
            text: b("hi"),
            action: false,
            ..Default::default()
        })
    }

    /// What a node writes today parses as the message it carries, as the say script numbers it.
    #[test]
    fn an_envelope_round_trips_through_the_say_scripts_numbering() {
        let env = Envelope::new("a|1", message()).json();
        // The say script writes `{"seq":..,"id":..,"epoch":"..",` before the rest.
        let numbered = format!(r#"{{"seq":7,"id":41,"epoch":"e1",{}"#, &env[1..]);
        let parsed = Envelope::parse(&numbered, 1 << 20).expect("parses");
        assert_eq!((parsed.seq, parsed.v, &*parsed.x), (7, VERSION, "a|1"));
        let Some(ServerMsg::Message(live)) = &parsed.e else {
            panic!("{parsed:?}")
        };
        assert_eq!((live.id, live.seq), (41, 7), "delivered numbered");
        let m = parsed.message().expect("a message");
        assert_eq!((m.id, m.seq, &*m.text), (41, 7, "hi"));
    }

    /// An envelope from a later version, with fields this one does not know, still parses (nodes
    /// of two versions share a cluster during a rolling upgrade); one from before `v` existed
    /// reads as version 0.
    #[test]
    fn envelopes_with_unknown_fields_and_old_ones_parse() {
        let env = Envelope::new("a|1", message()).json();
        let later =
            format!(r#"{{"v":2,"sig":"abc","hops":[1,2],{}"#, &env[1..]).replace(r#""v":1,"#, "");
        let parsed = Envelope::parse(&later, 1 << 20).expect("a later version parses");
        assert_eq!(parsed.v, 2);
        assert!(parsed.e.is_some());
        let old = r#"{"t":1,"x":"a|1","e":{"type":"notice","from":"server","text":"hi"}}"#;
        assert_eq!(
            Envelope::parse(old, 1 << 20).expect("an old one parses").v,
            0
        );
    }

    #[test]
    fn oversized_and_malformed_envelopes_are_refused() {
        let env = Envelope::new("a|1", message()).json();
        assert!(Envelope::parse(&env, env.len()).is_some());
        assert!(Envelope::parse(&env, env.len() - 1).is_none());
        assert!(Envelope::parse("{not json", 1 << 20).is_none());
        assert!(
            Envelope::parse(r#"{"x":"a|1"}"#, 1 << 20).is_none(),
            "t is required"
        );
    }
}
