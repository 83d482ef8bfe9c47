//! What each API route means: the request it becomes for the key's chat session, the scope and
//! rooms it needs, and how the chat's reply (or refusal) becomes the HTTP response. Retried POSTs
//! with an idempotency key are answered from the store (`once`).

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{Api, Caller, Failure, Reply, json_reply};
use crate::protocol::now_ms;
use crate::store::keys::Claim;

/// The OpenAPI description of this API, served at `/v1/openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// How long an idempotency key is remembered.
const IDEMPOTENCY_MS: i64 = 5 * 60 * 1000;
/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /v1/rooms/{room}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Say {
    text: String,
    #[serde(default)]
    action: bool,
    reply_to: Option<u64>,
    idempotency_key: Option<String>,
}

/// `POST /v1/users/{name}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pm {
    text: String,
    #[serde(default)]
    action: bool,
    idempotency_key: Option<String>,
}

/// `POST /v1/users/{name}/kick`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Kick {
    reason: Option<String>,
}

/// `POST /v1/announce`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Announce {
    text: String,
}

/// Answers `request`; the route's name (for the metric) and the response.
pub(super) async fn answer(
    api: &Arc<Api>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> (&'static str, Result<Reply, Failure>) {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<String> = path.split('/').skip(1).map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    use Method as M;
    const GET_POST: &[Method] = &[M::GET, M::POST];
    let (route, allowed): (&'static str, &[Method]) = match segments.as_slice() {
        ["v1", "openapi.json"] => ("openapi", &[M::GET]),
        ["v1", "rooms"] => ("rooms", &[M::GET]),
        ["v1", "rooms", _] => ("room_set", &[M::PATCH]),
        ["v1", "rooms", _, "messages"] if method == M::POST => ("say", GET_POST),
        ["v1", "rooms", _, "messages"] => ("history", GET_POST),
        ["v1", "rooms", _, "members"] => ("members", &[M::GET]),
        ["v1", "rooms", _, "bans"] if method == M::POST => ("ban", GET_POST),
        ["v1", "rooms", _, "bans"] => ("bans", GET_POST),
        ["v1", "rooms", _, "bans", _] => ("unban", &[M::DELETE]),
        ["v1", "rooms", _, "mutes"] => ("mute", &[M::POST]),
        ["v1", "rooms", _, "mutes", _] => ("unmute", &[M::DELETE]),
        ["v1", "rooms", _, "invites"] => ("invite", &[M::POST]),
        ["v1", "users", _, "messages"] => ("pm", &[M::POST]),
        ["v1", "users", _, "kick"] => ("kick", &[M::POST]),
        ["v1", "search"] => ("search", &[M::GET]),
        ["v1", "announce"] => ("announce", &[M::POST]),
        _ => {
            let failure = Failure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
            return ("unknown", Err(failure));
        }
    };
    if !allowed.contains(&method) {
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let allow = allow.join(", ");
        let mut reply = Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path}: use {allow}"),
        )
        .reply();
        if let Ok(value) = hyper::header::HeaderValue::from_str(&allow) {
            reply.headers_mut().insert(hyper::header::ALLOW, value);
        }
        return (route, Ok(reply));
    }
    if route == "openapi" {
        let reply = super::text_reply(StatusCode::OK, "application/json", OPENAPI.into());
        return (route, Ok(reply));
    }
    let caller = match api.caller(request.headers(), peer).await {
        Ok(caller) => caller,
        Err(failure) => return (route, Err(failure)),
    };
    debug!(key = %caller.key.name, %method, %path, "api request");
    let idem_header = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = if method == Method::POST || method == Method::PATCH {
        match api.body(request.into_body(), length).await {
            Ok(body) => body,
            Err(failure) => return (route, Err(failure)),
        }
    } else {
        bytes::Bytes::new()
    };
    let call = Call {
        api,
        caller: &caller,
        query: &query,
        body: &body,
        idem_header,
        fingerprint: fingerprint(&method, &path, &body),
    };
    let result = match (route, segments.as_slice()) {
        ("say", [_, _, room, _]) => call.say(room).await,
        ("history", [_, _, room, _]) => call.history(room).await,
        ("members", [_, _, room, _]) => call.members(room).await,
        ("rooms", _) => call.rooms().await,
        ("pm", [_, _, name, _]) => call.pm(name).await,
        ("kick", [_, _, name, _]) => call.kick(name).await,
        ("search", _) => call.search().await,
        ("announce", _) => call.announce().await,
        ("room_set", [_, _, room]) => call.room_set(room).await,
        ("bans", [_, _, room, _]) => call.bans(room).await,
        ("ban" | "mute", [_, _, room, _]) => call.sanction(route, room).await,
        ("unban" | "unmute", [_, _, room, _, name]) => call.lift(route, room, name).await,
        ("invite", [_, _, room, _]) => call.invite(room).await,
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        )),
    };
    (route, result)
}

/// One request being answered.
pub(super) struct Call<'a> {
    api: &'a Arc<Api>,
    pub(super) caller: &'a Caller,
    query: &'a str,
    pub(super) body: &'a [u8],
    idem_header: Option<String>,
    fingerprint: String,
}

impl Call<'_> {
    async fn say(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("say")?;
        let room = self.room(room)?;
        let body: Say = parse(self.body)?;
        let mut request = json!({"type": "say", "room": &*room, "text": body.text});
        if body.action {
            request["action"] = json!(true);
        }
        if let Some(to) = body.reply_to {
            request["reply_to"] = json!(to);
        }
        let shown = room.clone();
        let idem = self.idempotency(body.idempotency_key)?;
        self.once(idem, Some(room), request, move |ack| {
            let body =
                json!({"id": ack["id"], "seq": ack["seq"], "ts": ack["ts"], "room": &*shown});
            (StatusCode::CREATED, body)
        })
        .await
    }

    async fn pm(&self, name: &str) -> Result<Reply, Failure> {
        self.caller.needs("pm")?;
        let body: Pm = parse(self.body)?;
        let mut request = json!({"type": "pm", "to": name, "text": body.text});
        if body.action {
            request["action"] = json!(true);
        }
        let to = name.to_string();
        let idem = self.idempotency(body.idempotency_key)?;
        self.once(idem, None, request, move |ack| {
            let offline = ack.get("offline").cloned().unwrap_or(json!(false));
            let body = json!({"id": ack["id"], "ts": ack["ts"], "to": to, "offline": offline});
            (StatusCode::CREATED, body)
        })
        .await
    }

    async fn history(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("history:read")?;
        let room = self.room(room)?;
        let mut request = json!({"type": "history", "room": &*room});
        for field in ["before", "after", "limit"] {
            if let Some(n) = self.number(field)? {
                request[field] = json!(n);
            }
        }
        let reply = self.ask(Some(room.clone()), request).await?;
        let body = json!({
            "room": &*room,
            "messages": reply.get("messages").cloned().unwrap_or(json!([])),
            "more": reply.get("more").cloned().unwrap_or(json!(false)),
        });
        Ok(json_reply(StatusCode::OK, &body))
    }

    async fn members(&self, room: &str) -> Result<Reply, Failure> {
        self.caller.needs("presence:read")?;
        let room = self.room(room)?;
        let mut request = json!({"type": "who", "room": &*room});
        if let Some(after) = self.param("after") {
            request["after"] = json!(after);
        }
        let reply = self.ask(Some(room.clone()), request).await?;
        let body = json!({
            "room": &*room,
            "users": reply.get("users").cloned().unwrap_or(json!([])),
            "user_count": reply.get("user_count").cloned().unwrap_or(json!(0)),
            "more": reply.get("more").cloned().unwrap_or(json!(false)),
        });
        Ok(json_reply(StatusCode::OK, &body))
    }

    async fn rooms(&self) -> Result<Reply, Failure> {
        self.caller.needs("presence:read")?;
        let reply = self.ask(None, json!({"type": "rooms"})).await?;
        let mut rooms = match reply.get("rooms") {
            Some(Value::Array(rooms)) => rooms.clone(),
            _ => Vec::new(),
        };
        // A key kept to some rooms sees only those.
        rooms.retain(|r| {
            let name = r.get("name").and_then(Value::as_str).unwrap_or("");
            self.caller.may_touch(name).is_ok()
        });
        Ok(json_reply(StatusCode::OK, &json!({"rooms": rooms})))
    }

    async fn search(&self) -> Result<Reply, Failure> {
        self.caller.needs("search")?;
        let Some(query) = self.param("q").filter(|q| !q.trim().is_empty()) else {
            return Err(bad("give the words to search for: ?q=..."));
        };
        let room = match self.param("room") {
            Some(room) => Some(self.room(&room)?),
            None if !self.caller.key.rooms.is_empty() => {
                return Err(bad(
                    "this key is kept to some rooms: name one with ?room=...",
                ));
            }
            None => None,
        };
        let mut request = json!({"type": "search", "query": query});
        if let Some(room) = &room {
            request["room"] = json!(&**room);
        }
        for field in ["before", "limit"] {
            if let Some(n) = self.number(field)? {
                request[field] = json!(n);
            }
        }
        let reply = self.ask(room, request).await?;
        let body = json!({
            "query": reply.get("query").cloned().unwrap_or(json!("")),
            "messages": reply.get("messages").cloned().unwrap_or(json!([])),
            "more": reply.get("more").cloned().unwrap_or(json!(false)),
        });
        Ok(json_reply(StatusCode::OK, &body))
    }

    async fn kick(&self, name: &str) -> Result<Reply, Failure> {
        self.caller.needs("kick")?;
        let body: Kick = if self.body.is_empty() {
            Kick::default()
        } else {
            parse(self.body)?
        };
        let mut request = json!({"type": "kick", "name": name});
        if let Some(reason) = body.reason {
            request["reason"] = json!(reason);
        }
        self.ask(None, request).await?;
        Ok(json_reply(StatusCode::OK, &json!({"kicked": name})))
    }

    async fn announce(&self) -> Result<Reply, Failure> {
        self.caller.needs("announce")?;
        let body: Announce = parse(self.body)?;
        self.ask(None, json!({"type": "announce", "text": body.text}))
            .await?;
        Ok(json_reply(StatusCode::OK, &json!({"announced": true})))
    }

    /// `room`, normalised, if the key may use it.
    pub(super) fn room(&self, room: &str) -> Result<Arc<str>, Failure> {
        let room = crate::protocol::normalize_room(room).ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "room_invalid",
                "room names are 1-32 characters of A-Z a-z 0-9 _ . -",
            )
        })?;
        self.caller.may_touch(&room)?;
        Ok(room.into())
    }

    /// A query parameter, decoded.
    fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == name).then(|| decode(&value.replace('+', " ")))
        })
    }

    /// A numeric query parameter.
    fn number(&self, name: &str) -> Result<Option<u64>, Failure> {
        self.param(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{name} must be a non-negative integer")))
            })
            .transpose()
    }

    /// The idempotency key, from the body or the `Idempotency-Key` header.
    fn idempotency(&self, from_body: Option<String>) -> Result<Option<String>, Failure> {
        let key = from_body.or_else(|| self.idem_header.clone());
        match key {
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY => Err(bad(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} bytes"
            ))),
            key => Ok(key),
        }
    }

    /// Asks the key's chat session; its reply, or its refusal as a failure.
    pub(super) async fn ask(
        &self,
        room: Option<Arc<str>>,
        request: Value,
    ) -> Result<Map<String, Value>, Failure> {
        let Value::Object(request) = request else {
            return Err(Failure::busy());
        };
        let answer = self
            .api
            .links
            .ask(&self.caller.who, room, request)
            .map_err(|_| Failure::busy())?;
        match tokio::time::timeout(self.api.timeout(), answer).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(Failure::busy()),
            Ok(Ok(reply)) => replied(reply),
        }
    }

    /// A POST that must happen once: with an idempotency key, a retry gets the first answer
    /// (from the store, whichever node answered it) instead of doing it again. The request runs
    /// to its end even if the caller stops waiting, so that answer is kept for the retry.
    async fn once(
        &self,
        idem: Option<String>,
        room: Option<Arc<str>>,
        request: Value,
        done: impl FnOnce(&Map<String, Value>) -> (StatusCode, Value) + Send + 'static,
    ) -> Result<Reply, Failure> {
        let Some(idem) = idem else {
            let ack = self.ask(room, request).await?;
            let (status, body) = done(&ack);
            return Ok(json_reply(status, &body));
        };
        let key_id = self.caller.key.id.clone();
        let (k, i, f) = (key_id.clone(), idem.clone(), self.fingerprint.clone());
        let now = now_ms();
        let claim = self
            .api
            .keys
            .run(move |db| db.claim(&k, &i, &f, now, now - IDEMPOTENCY_MS))
            .await
            .map_err(|_| Failure::busy())?
            .map_err(|e| {
                warn!(error = %e, "api: cannot claim an idempotency key");
                Failure::busy()
            })?;
        match claim {
            Claim::Done(status, body) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let mut reply = json_reply(status, &body);
                reply.headers_mut().insert(
                    "idempotent-replayed",
                    hyper::header::HeaderValue::from_static("true"),
                );
                return Ok(reply);
            }
            Claim::Pending => {
                return Err(Failure {
                    retry_after: Some(1),
                    ..Failure::new(
                        StatusCode::CONFLICT,
                        "in_progress",
                        "a request with this idempotency key is still being done",
                    )
                });
            }
            Claim::Mismatch => {
                return Err(Failure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_mismatch",
                    "this idempotency key was used for a different request",
                ));
            }
            Claim::New => {}
        }
        let Value::Object(request) = request else {
            return Err(Failure::busy());
        };
        let answer = match self.api.links.ask(&self.caller.who, room, request) {
            Ok(answer) => answer,
            Err(_) => {
                let release = move |db: &mut dyn crate::store::accounts::AccountsDb| {
                    db.release(&key_id, &idem)
                };
                let _ = self.api.keys.run(release).await;
                return Err(Failure::busy());
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let api = self.api.clone();
        self.api.background.spawn(async move {
            let keys = &api.keys;
            let result = match answer.await {
                Ok(reply) => replied(reply).map(|ack| done(&ack)),
                Err(_) => Err(Failure::busy()),
            };
            let kept = match &result {
                Ok((status, body)) => Some((status.as_u16(), body.to_string())),
                // A refusal is the answer for good, unless it says to try again later.
                Err(f)
                    if f.status.is_client_error()
                        && !matches!(f.status.as_u16(), 408 | 409 | 429) =>
                {
                    let body = json!({"error": {"code": f.code, "message": f.message}});
                    Some((f.status.as_u16(), body.to_string()))
                }
                Err(_) => None,
            };
            let _ = keys
                .run(move |db| match kept {
                    Some((status, body)) => db.complete(&key_id, &idem, status, &body),
                    None => db.release(&key_id, &idem),
                })
                .await;
            let _ = tx.send(result);
        });
        match tokio::time::timeout(self.api.timeout(), rx).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(Failure::busy()),
            Ok(Ok(result)) => result.map(|(status, body)| json_reply(status, &body)),
        }
    }
}

/// The chat's reply, or its refusal as the HTTP failure that means the same.
fn replied(reply: Value) -> Result<Map<String, Value>, Failure> {
    let Value::Object(reply) = reply else {
        return Err(Failure::busy());
    };
    if reply.get("type").and_then(Value::as_str) != Some("error") {
        return Ok(reply);
    }
    let code = reply.get("code").and_then(Value::as_str).unwrap_or("");
    let message = reply
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("refused")
        .to_string();
    let (status, code) = match code {
        "bad_request" | "name_invalid" | "room_invalid" | "unknown_type" => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        "unauthorized" | "forbidden" | "not_in_room" => (StatusCode::FORBIDDEN, "forbidden"),
        "no_such_room" | "no_such_user" | "not_found" => (StatusCode::NOT_FOUND, "not_found"),
        "name_taken" | "too_many_rooms" | "too_many_sessions" => (StatusCode::CONFLICT, "conflict"),
        "rate_limited" => {
            return Err(Failure {
                retry_after: Some(1),
                ..Failure::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            });
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    Err(Failure::new(status, code, message))
}

fn timed_out() -> Failure {
    Failure::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        "the chat did not answer in time; with an idempotency key, retrying is safe",
    )
}

pub(super) fn bad(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A JSON body, refused with serde's words (which name the field at fault).
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

/// What makes two requests the same request (for idempotency keys).
fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b" ");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    crate::auth::hex(&hash.finalize())
}

/// Percent-decoding of a path segment or query part (invalid escapes are kept as they are).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_decoded() {
        assert_eq!(decode("deploy%20bot"), "deploy bot");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%e2%9c%93"), "✓");
    }

    #[test]
    fn refusals_become_statuses() {
        let refused = |code: &str| {
            replied(json!({"type": "error", "code": code, "message": "m"}))
                .unwrap_err()
                .status
        };
        assert_eq!(refused("forbidden"), StatusCode::FORBIDDEN);
        assert_eq!(refused("no_such_user"), StatusCode::NOT_FOUND);
        assert_eq!(refused("rate_limited"), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused("unavailable"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused("bad_request"), StatusCode::BAD_REQUEST);
        assert!(replied(json!({"type": "ack", "id": 1})).is_ok());
    }
}
