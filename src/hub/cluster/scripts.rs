//! The Lua scripts the cluster broker runs in Redis. Each is one atomic step: whatever several
//! nodes do at once, Redis runs one script at a time, so a room's `seq`, its stream and the order
//! its channel carries messages in agree, and a ghost is reaped (and announced) exactly once.
//!
//! Keys, under the configured prefix `P`:
//! - `P:epoch`: the cluster's seq numbering; created by the first script that needs it, so a Redis
//!   restarted empty starts a new one (and every room's seq starts again at 1).
//! - `P:msgid`: message ids, cluster-wide.
//! - `P:seq:{room}`, `P:stream:{room}` (entry id `{seq}-0`, capped at `history_size`).
//! - `P:members:{room}`: a sorted set of `node|conn|role|name`, scored by when the entry expires
//!   unless its node refreshes it.
//! - `P:rooms`: a hash of the rooms that have members, each to the address that created it (empty
//!   for the default room); `P:created`: rooms per creating address.
//! - `P:name:{key}` (`protocol::name_key`): `node|conn|role|name`, with an expiry the owning node
//!   refreshes. In open mode also `P:like:{look-alike}` (`protocol::look_alike`): `node|conn|name`
//!   of the one name online that looks like that, refreshed the same way.

/// Says something: the epoch (created if Redis lost it), the next message id and room seq, the
/// stream entry and the publish, in one step.
///
/// KEYS: epoch, msgid, seq, stream. ARGV: candidate epoch, stream cap, the envelope's tail
/// (everything after the leading `{`), channel. Returns {id, seq, epoch}.
pub(super) const SAY: &str = r#"
local e = redis.call('GET', KEYS[1])
if not e then e = ARGV[1]; redis.call('SET', KEYS[1], e) end
local id = redis.call('INCR', KEYS[2])
local seq = redis.call('INCR', KEYS[3])
local env = '{"seq":' .. seq .. ',"id":' .. id .. ',"epoch":"' .. e .. '",' .. ARGV[3]
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', env)
redis.call('PUBLISH', ARGV[4], env)
return {id, seq, e}
"#;

/// Joins a room: creates it within the caps, adds the member (announcing `joined` if new), and
/// reads what the joiner sees: epoch, seq, live members and history (resumed after `since` when
/// the stream still holds everything after it).
///
/// KEYS: members, rooms, seq, stream, epoch, created. ARGV: member, expiry, now, candidate epoch,
/// history on join, channel, joined envelope, room, creator ('' = nobody's), max rooms, max rooms
/// per creator (0: no cap), since (-1: no resume), the client's epoch, resume page, resume max, the joining
/// node's channel, its marker (published first: the node's subscriber sees, in the one order Redis
/// publishes in, which events came before the join, and so are in what it returns).
/// Returns {epoch, seq, members, history (newest first unless exact), exact}, or {'', why}.
pub(super) const JOIN: &str = r#"
local e = redis.call('GET', KEYS[5])
if not e then e = ARGV[4]; redis.call('SET', KEYS[5], e) end
if redis.call('HEXISTS', KEYS[2], ARGV[8]) == 0 then
  if ARGV[9] ~= '' then
    if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[10]) then return {'', 'full'} end
    local per = tonumber(ARGV[11])
    if per > 0 and tonumber(redis.call('HGET', KEYS[6], ARGV[9]) or '0') >= per then
      return {'', 'mine'}
    end
    redis.call('HINCRBY', KEYS[6], ARGV[9], 1)
  end
  redis.call('HSET', KEYS[2], ARGV[8], ARGV[9])
end
redis.call('PUBLISH', ARGV[16], ARGV[17])
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local users = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
local since = tonumber(ARGV[12])
if since >= 0 and ARGV[13] == e and since <= seq and seq - since <= tonumber(ARGV[15]) then
  local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
  local oldest = seq + 1
  if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
  if oldest <= since + 1 then
    local hist = redis.call('XRANGE', KEYS[4], tostring(since + 1), '+', 'COUNT', ARGV[14])
    return {e, seq, users, hist, 1}
  end
end
local hist = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', ARGV[5])
return {e, seq, users, hist, 0}
"#;

/// Leaves a room, announcing `how` if the member was there, and forgets the room once nobody is
/// in it (its seq and stream stay).
///
/// KEYS: members, rooms, created. ARGV: member, channel, envelope ('' = announce nothing), room.
/// Returns 1 if the member was there.
pub(super) const LEAVE: &str = r#"
local n = redis.call('ZREM', KEYS[1], ARGV[1])
if n == 1 and ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
if redis.call('ZCARD', KEYS[1]) == 0 then
  local c = redis.call('HGET', KEYS[2], ARGV[4])
  if c then
    redis.call('HDEL', KEYS[2], ARGV[4])
    if c ~= '' and redis.call('HINCRBY', KEYS[3], c, -1) <= 0 then redis.call('HDEL', KEYS[3], c) end
  end
end
return n
"#;

/// Removes every member whose node stopped refreshing it, and forgets rooms left empty. Whoever
/// runs it first gets each ghost once, and announces it.
///
/// KEYS: rooms, created. ARGV: now, key prefix. Returns {room, member, room, member, ...}.
pub(super) const REAP: &str = r#"
local out = {}
local rooms = redis.call('HGETALL', KEYS[1])
for i = 1, #rooms, 2 do
  local room, creator = rooms[i], rooms[i + 1]
  local key = ARGV[2] .. ':members:' .. room
  local ghosts = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  for _, g in ipairs(ghosts) do
    redis.call('ZREM', key, g)
    out[#out + 1] = room
    out[#out + 1] = g
  end
  if redis.call('ZCARD', key) == 0 then
    redis.call('HDEL', KEYS[1], room)
    if creator ~= '' and redis.call('HINCRBY', KEYS[2], creator, -1) <= 0 then
      redis.call('HDEL', KEYS[2], creator)
    end
  end
end
return out
"#;

/// Every room with members, and how many are live. KEYS: rooms. ARGV: now, key prefix.
/// Returns {room, count, room, count, ...}.
pub(super) const ROOMS: &str = r#"
local out = {}
for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('ZCOUNT', ARGV[2] .. ':members:' .. room, ARGV[1], '+inf')
end
return out
"#;

/// Refreshes this node's name claims, re-asserting any Redis lost (a restart); returns the
/// 1-based positions of the names someone else holds now. KEYS: names. ARGV: ttl ms, values.
pub(super) const REFRESH_NAMES: &str = r#"
local lost = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == ARGV[i + 1] then
    redis.call('PEXPIRE', k, ARGV[1])
  elseif not v then
    redis.call('SET', k, ARGV[i + 1], 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"#;

/// Claims a name (and, when `ARGV[2]` is not empty, its look-alike key) for one connection, both
/// or neither; a connection re-claiming its own name (a change of case) re-writes its claims.
///
/// KEYS: name, look-alike (the name key again when there is none). ARGV: name value, look-alike
/// value ('' = none), ttl ms, `node|conn` of the claimer. Returns 'ok', 'taken', or
/// 'like|NAME' (NAME online looks like it).
pub(super) const CLAIM: &str = r#"
local mine = ARGV[4] .. '|'
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #mine) ~= mine then return 'taken' end
if ARGV[2] ~= '' then
  local like = redis.call('GET', KEYS[2])
  if like and string.sub(like, 1, #mine) ~= mine then
    return 'like|' .. string.match(like, '^[^|]*|[^|]*|(.*)$')
  end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 'ok'
"#;

/// Frees a name if this connection still holds it. KEYS: name. ARGV: value.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Kicks a member out of every room (publishing the `kicked` envelope, its room written in place
/// of `@@ROOM@@`, to each room it was in) and frees its name.
///
/// KEYS: rooms, created, name. ARGV: member (as its name claim holds it), key prefix, envelope.
/// Returns how many rooms it was in.
pub(super) const KICK: &str = r#"
local out = 0
for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
  local key = ARGV[2] .. ':members:' .. room
  if redis.call('ZREM', key, ARGV[1]) == 1 then
    out = out + 1
    local env = string.gsub(ARGV[3], '@@ROOM@@', function() return room end)
    redis.call('PUBLISH', ARGV[2] .. ':r:' .. room, env)
    if redis.call('ZCARD', key) == 0 then
      local c = redis.call('HGET', KEYS[1], room)
      redis.call('HDEL', KEYS[1], room)
      if c and c ~= '' and redis.call('HINCRBY', KEYS[2], c, -1) <= 0 then
        redis.call('HDEL', KEYS[2], c)
      end
    end
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return out
"#;
