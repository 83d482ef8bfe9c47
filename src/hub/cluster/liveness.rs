//! Liveness: a heartbeat (every `heartbeat_secs`, on the server's tick) refreshes this node's
//! name claims and memberships, re-asserting what a restarted Redis lost, and reaps members whose
//! node stopped refreshing them: one `left` per ghost, from whichever node removed it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::envelope::Envelope;
use super::link::Done;
use super::ops::{Op, Queued};
use super::{Inner, lock, now_ms, parse_entry};
use crate::hub::ConnId;
use crate::protocol::{ServerMsg, b};

/// Memberships and names refreshed per Redis round trip.
const CHUNK: usize = 500;

impl Inner {
    /// Refreshes this node's claims and memberships and reaps dead nodes' members.
    pub(super) async fn heartbeat(self: &Arc<Self>) -> Done {
        let (claims, mut memberships) = {
            let local = lock(&self.local);
            let claims: Vec<(ConnId, String, String)> = local
                .members
                .iter()
                .flat_map(|(conn, m)| m.claims.iter().map(|(k, v)| (*conn, k.clone(), v.clone())))
                .collect();
            let mut memberships = Vec::new();
            for (room, here) in &local.rooms {
                for m in &here.members {
                    memberships.push((
                        m.conn(),
                        room.clone(),
                        self.entry(m),
                        m.name().to_ascii_lowercase(),
                        self.names_entry(m),
                    ));
                }
            }
            (claims, memberships)
        };
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        let mut kicked = HashMap::new();
        for chunk in claims.chunks(CHUNK) {
            let mut call = redis.scripts.refresh.prepare_invoke();
            call.arg(self.settings.name_ttl_ms)
                .arg(redis.prefix())
                .arg(now_ms())
                .arg(self.settings.hub.max_sessions);
            for (_, key, value) in chunk {
                call.key(key).arg(value);
            }
            let out: Vec<String> = call.invoke_async(&mut conn).await?;
            for found in out.chunks(3) {
                let [kind, i, reason] = found else { continue };
                let Some((conn_id, key, _)) =
                    i.parse::<usize>().ok().and_then(|i| chunk.get(i - 1))
                else {
                    continue;
                };
                if kind == "kicked" {
                    kicked.insert(*conn_id, reason.clone());
                } else {
                    warn!(name = %key, "cluster: another node holds a name this node claimed");
                }
            }
        }
        // A kick whose order this node missed: close the connection now, and keep it out.
        if !kicked.is_empty() {
            memberships.retain(|(conn_id, ..)| !kicked.contains_key(conn_id));
            for (conn_id, reason) in kicked {
                let member = lock(&self.local)
                    .members
                    .get(&conn_id)
                    .map(|mine| mine.member.clone());
                if let Some(member) = member {
                    self.enqueue(
                        conn_id,
                        Queued {
                            member,
                            op: Op::Kicked(reason),
                            at: Instant::now(),
                        },
                    );
                }
            }
        }
        let expiry = now_ms() + self.settings.presence_ttl_ms;
        for chunk in memberships.chunks(CHUNK) {
            let mut call = redis.scripts.members.prepare_invoke();
            call.arg(redis.prefix()).arg(expiry);
            for (_, room, entry, lower, names_entry) in chunk {
                call.arg(&**room).arg(entry).arg(lower).arg(names_entry);
            }
            call.invoke_async::<i64>(&mut conn).await?;
        }
        let ghosts: Vec<String> = redis
            .scripts
            .reap
            .key(redis.global("rooms"))
            .key(redis.global("created"))
            .arg(now_ms())
            .arg(redis.prefix())
            .arg(self.settings.room_ttl_secs)
            .arg(self.settings.hub.presence_batch_over as i64)
            .arg(super::rooms::PRESENCE_WAITS_MS)
            .invoke_async(&mut conn)
            .await?;
        for found in ghosts.chunks(3) {
            let [room, entry, batched] = found else {
                continue;
            };
            let Some((node, conn_id, _, name)) = parse_entry(entry) else {
                continue;
            };
            self.metrics.ghosts_reaped.inc();
            if batched == "1" {
                // In the room's batch: announced by this node's next flush.
                lock(&self.presence_due).insert(room.as_str().into());
                continue;
            }
            let x = format!("{node}|{conn_id}");
            let env = Envelope::new(
                &x,
                ServerMsg::Left {
                    room: b(room),
                    name: b(name),
                },
            );
            redis
                .publish(&redis.room_channel(room), &env.json())
                .await?;
        }
        Ok(())
    }
}
