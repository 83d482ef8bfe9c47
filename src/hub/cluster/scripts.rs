//! The Lua scripts the cluster broker runs in Redis. Each is one atomic step: whatever several
//! nodes do at once, Redis runs one script at a time, so a room's `seq`, its stream and the order
//! its channel carries messages in agree, and a ghost is reaped (and announced) exactly once.
//!
//! Keys, under the configured prefix `P` (`keys`):
//! - `P:msgid`: message ids, cluster-wide.
//! - Per room: `P:epoch:{room}` (its numbering; made by the first script that needs it, so a room
//!   Redis forgot, or a Redis restarted empty, starts a new one), `P:seq:{room}`,
//!   `P:stream:{room}` (entry id `{seq}-0`, field `e` the envelope; at most `history_size`
//!   entries and `history_bytes` bytes, counted in `P:sbytes:{room}`), `P:over:{room}` (messages
//!   of the stream that changed, in their current state, scored by seq: their stream entries are
//!   taken out) and `P:rx:{room}` (reactions, see [`REACT`]; their bytes count too). While a room
//!   has no member these six expire after `room_ttl_secs`; a join makes them persistent again.
//! - `P:members:{room}`: a sorted set of `node|conn|role|name`, one per connection, scored by
//!   when the entry expires unless its node refreshes it; `P:ucount:{room}`: a hash of each
//!   user's connections in the room, by lower-case name (with tokens or accounts a user may be
//!   there on several); `P:names:{room}`: one entry per *user*, `lowername|-|0|role|name`, all
//!   scored 0, so the first page of users by name and their count come in O(log n) (never the
//!   whole room: a crowd joining is O(n), not O(n²)). A user joins (`joined` is told) with their
//!   first connection and leaves with their last.
//! - `P:pres:{room}`: a large room's joins and leaves not yet announced (`+role|name`,
//!   `-name`), in the order they happened, whichever node made them; `PRESENCE` turns them into
//!   one `presence` event with the count at that moment. While it exists, every change in the
//!   room goes into it (nothing overtakes a batch); it expires unless flushed.
//! - `P:rooms`: a hash of the rooms that have members, each to the address that created it (empty
//!   for the default room); `P:created`: rooms per creating address.
//! - `P:name:{key}` (`protocol::name_key`, open mode): `node|conn|role|name`, with an expiry the
//!   owning node refreshes; also `P:like:{look-alike}` (`protocol::look_alike`): `node|conn|name`
//!   of the one name online that looks like that, refreshed the same way. With tokens or
//!   accounts, `P:sess:{key}` instead: a sorted set of the user's connections (`node|conn|role|
//!   name`), each scored by when it expires unless its node refreshes it, at most
//!   `auth.max_sessions_per_user` live ones; and `P:sinfo:{key}`, a hash of what `sessions`
//!   shows of them (`node|conn` to `since|device`).

/// What the scripts that number something in a room share (prepended to [`SAY`], [`CHANGE`] and
/// [`REACT`]). KEYS: 1 epoch, 2 msgid, 3 seq, 4 stream, 5 sbytes, 6 over, 7 rx.
///
/// `number` gives an envelope's tail the room's epoch (made if Redis lost it; nil when it must
/// be seeded first: the numbering continues from the store), the next message id and seq, adds
/// it to the stream and publishes it. `trim` takes the oldest entries out past either bound,
/// and with them the changed messages and reactions at or before the last one taken.
pub(super) const NUMBERING: &str = r#"
local function number(tail, channel, durable, candidate)
  local e = redis.call('GET', KEYS[1])
  if durable == '1' and (not e or redis.call('EXISTS', KEYS[2]) == 0) then return nil end
  if not e then e = candidate; redis.call('SET', KEYS[1], e) end
  local id = redis.call('INCR', KEYS[2])
  local seq = redis.call('INCR', KEYS[3])
  local env = '{"seq":' .. seq .. ',"id":' .. id .. ',"epoch":"' .. e .. '",' .. tail
  redis.call('XADD', KEYS[4], seq .. '-0', 'e', env)
  redis.call('INCRBY', KEYS[5], #env)
  redis.call('PUBLISH', channel, env)
  return {id, seq, e}
end
local function trim(most, most_bytes)
  local count = redis.call('XLEN', KEYS[4])
  local bytes = tonumber(redis.call('GET', KEYS[5]) or '0')
  local cut = nil
  while count > 1 and (count > most or bytes > most_bytes) do
    local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[4], first[1])
    bytes = redis.call('DECRBY', KEYS[5], #first[2][2])
    count = count - 1
    cut = tonumber(string.match(first[1], '^(%d+)'))
  end
  if cut then
    for _, k in ipairs({KEYS[6], KEYS[7]}) do
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', cut)) do
        redis.call('DECRBY', KEYS[5], #m)
      end
      redis.call('ZREMRANGEBYSCORE', k, '-inf', cut)
    end
  end
end
"#;

/// Says something: the room's epoch (made if Redis lost it), the next message id and room seq,
/// the stream entry (trimming the oldest past either bound) and the publish, in one step.
///
/// KEYS: as [`NUMBERING`]. ARGV: candidate epoch, most entries, most bytes, the envelope's tail
/// (everything after the leading `{`), channel, durable ('1': the numbering continues from the
/// store, so a lost epoch or id counter is seeded first). Returns {id, seq, epoch}, or
/// {0, 0, ''} when it must be seeded ([`SEED`]) and nothing was done.
pub(super) const SAY: &str = r#"
local r = number(ARGV[4], ARGV[5], ARGV[6], ARGV[1])
if not r then return {0, 0, ''} end
trim(tonumber(ARGV[2]), tonumber(ARGV[3]))
return r
"#;

/// Edits or deletes message `seq` (a message's current state is kept in `over`, scored by its
/// seq, and its stream entry taken out, so an old or deleted text leaves Redis): only if what
/// Redis holds of it is still what the node read (else {-1, 0, ''}: read again). The change is
/// numbered like a message; a delete takes the message's reactions with it.
///
/// KEYS: as [`NUMBERING`]. ARGV: 1 the message's seq, 2 what the node read of it ('' = Redis
/// does not hold it: only the store does), 3 its new state, 4 the change's envelope tail,
/// 5 channel, 6 most entries, 7 most bytes, 8 durable, 9 candidate epoch, 10 '1' for a delete.
pub(super) const CHANGE: &str = r#"
local t = ARGV[1]
local cur, held = nil, nil
local o = redis.call('ZRANGEBYSCORE', KEYS[6], t, t)[1]
if o then cur = o; held = 'over' else
  local s = redis.call('XRANGE', KEYS[4], t, t)[1]
  if s then cur = s[2][2]; held = 'stream' end
end
if (cur or '') ~= ARGV[2] then return {-1, 0, ''} end
local r = number(ARGV[4], ARGV[5], ARGV[8], ARGV[9])
if not r then return {0, 0, ''} end
if held == 'over' then redis.call('ZREM', KEYS[6], cur) end
if held == 'stream' then redis.call('XDEL', KEYS[4], t .. '-0') end
if held then
  redis.call('DECRBY', KEYS[5], #cur)
  redis.call('ZADD', KEYS[6], t, ARGV[3])
  redis.call('INCRBY', KEYS[5], #ARGV[3])
  if ARGV[10] == '1' then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], t, t)) do
      redis.call('DECRBY', KEYS[5], #m)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[7], t, t)
  end
end
trim(tonumber(ARGV[6]), tonumber(ARGV[7]))
return r
"#;

/// Adds or takes back a reaction to message `seq`: `rx` holds one entry per reaction
/// (`seq` 0x1f emoji 0x1f the user's key), and one per emoji on a message saying when it came
/// first (`seq` 0x1f `!` the change's id, 20 digits, 0x1f emoji: the order they are shown in),
/// all scored by the message's seq. Refused when the
/// message is gone ({-2}), when nothing would change ({-3}) or past the emoji a message may
/// carry ({-4}); else numbered like a message.
///
/// KEYS: as [`NUMBERING`]. ARGV: 1 the message's seq, 2 emoji, 3 the user's key, 4 '1' to add,
/// 5 the change's envelope tail, 6 channel, 7 most entries, 8 most bytes, 9 durable,
/// 10 candidate epoch, 11 most emoji per message, 12 '1': only the store holds the message (the
/// reaction is only numbered; the store keeps it).
pub(super) const REACT: &str = r#"
local t = ARGV[1]
local add = ARGV[4] == '1'
local member = t .. '\31' .. ARGV[2] .. '\31' .. ARGV[3]
local emoji, first, mine = {}, {}, false
if ARGV[12] ~= '1' then
  local o = redis.call('ZRANGEBYSCORE', KEYS[6], t, t)[1]
  local here = redis.call('XRANGE', KEYS[4], t, t)[1] ~= nil
  if o then here = not string.find(o, '"deleted":true', 1, true) end
  if not here then return {-2, 0, ''} end
  local n = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], t, t)) do
    local mark, e = string.match(m, '^%d+\31(!?)[^\31]*\31(.*)$')
    if mark == '!' then first[e] = m else
      e = string.match(m, '^%d+\31(.-)\31')
      if e then
        if not emoji[e] then n = n + 1 end
        emoji[e] = (emoji[e] or 0) + 1
      end
      if m == member then mine = true end
    end
  end
  if add == mine then return {-3, 0, ''} end
  if add and not emoji[ARGV[2]] and n >= tonumber(ARGV[11]) then return {-4, 0, ''} end
end
local r = number(ARGV[5], ARGV[6], ARGV[9], ARGV[10])
if not r then return {0, 0, ''} end
local function put(m, on)
  if on then
    redis.call('ZADD', KEYS[7], t, m)
    redis.call('INCRBY', KEYS[5], #m)
  else
    redis.call('ZREM', KEYS[7], m)
    redis.call('DECRBY', KEYS[5], #m)
  end
end
if ARGV[12] ~= '1' then
  put(member, add)
  if add and not emoji[ARGV[2]] then
    put(t .. '\31!' .. string.format('%020d', r[1]) .. '\31' .. ARGV[2], true)
  elseif not add and emoji[ARGV[2]] == 1 and first[ARGV[2]] then
    put(first[ARGV[2]], false)
  end
end
trim(tonumber(ARGV[7]), tonumber(ARGV[8]))
return r
"#;

/// Finds message `id` in a room's stream or among its changed messages (ids grow with seqs, so
/// a binary search over seqs): {seq, what Redis holds of it}, or {} when Redis does not hold it.
///
/// KEYS: stream, over, seq. ARGV: the id.
pub(super) const FIND: &str = r#"
local want = tonumber(ARGV[1])
local function at(s)
  local best, env = nil, nil
  local a = redis.call('XRANGE', KEYS[1], s, '+', 'COUNT', 1)[1]
  if a then best = tonumber(string.match(a[1], '^(%d+)')); env = a[2][2] end
  local o = redis.call('ZRANGEBYSCORE', KEYS[2], s, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if o[1] and (not best or tonumber(o[2]) < best) then best = tonumber(o[2]); env = o[1] end
  return best, env
end
local lo, hi = 1, tonumber(redis.call('GET', KEYS[3]) or '0')
local first = at(0)
if first then lo = first end
while lo <= hi do
  local mid = math.floor((lo + hi) / 2)
  local s, env = at(mid)
  if not s or s > hi then hi = mid - 1 else
    local id = tonumber(string.match(env, '"id":(%d+)'))
    if id == want then return {s, env} end
    if id < want then lo = s + 1 else hi = mid - 1 end
  end
end
return {}
"#;

/// What Redis holds of messages `lo..=hi` beyond their stream entries: {changed messages (their
/// current state, as in the stream), reactions (`seq` 0x1f emoji 0x1f key)}, each at most
/// `limit`. KEYS: over, rx. ARGV: lo, hi, limit.
pub(super) const STATE: &str = r#"
return {
  redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3]),
  redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
}
"#;

/// Joins a room: creates it within the caps, adds the member (announcing `joined` unless the room
/// is large enough for presence batches, or the member was there), and reads what the joiner
/// sees: epoch, seq, the first page of members by name, their count, and history (resumed after
/// `since` when the stream still holds everything after it).
///
/// KEYS: members, names, rooms, seq, stream, epoch, created, sbytes, pres. ARGV: 1 member, 2 expiry,
/// 3 now, 4 candidate epoch, 5 history on join, 6 channel, 7 joined envelope, 8 room, 9 creator
/// ('' = nobody's), 10 max rooms, 11 max rooms per creator (0: no cap), 12 since (-1: no resume),
/// 13 the client's epoch, 14 resume page, 15 resume max, 16 the joining node's channel, 17 its
/// marker (published first: the node's subscriber sees, in the one order Redis publishes in,
/// which events came before the join, and so are in what it returns), 18 members per page,
/// 19 the member's name in lower case, 20 batch joins past this many members (<= 0: always),
/// 21 its presence entry (`+role|name`), 22 how long a batch waits at most (ms), 23 durable
/// (as for [`SAY`]), 24 the user's entry in `names`. KEYS[10]: ucount. A user's second
/// connection joins without a `joined`. Returns {epoch, seq, page, history (newest first unless
/// exact), exact, count (users), batched, changed messages, reactions}, or {'', why} (`seed`:
/// seed first; nothing was done). KEYS[11], KEYS[12]: over, rx (read with the history, so the
/// join's marker orders them too: see [`STATE`]).
pub(super) const JOIN: &str = r#"
if ARGV[23] == '1' and redis.call('EXISTS', KEYS[6]) == 0 then return {'', 'seed'} end
if redis.call('HEXISTS', KEYS[3], ARGV[8]) == 0 then
  if ARGV[9] ~= '' then
    if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[10]) then return {'', 'full'} end
    local per = tonumber(ARGV[11])
    if per > 0 and tonumber(redis.call('HGET', KEYS[7], ARGV[9]) or '0') >= per then
      return {'', 'mine'}
    end
    redis.call('HINCRBY', KEYS[7], ARGV[9], 1)
  end
  redis.call('HSET', KEYS[3], ARGV[8], ARGV[9])
end
local e = redis.call('GET', KEYS[6])
if not e then e = ARGV[4]; redis.call('SET', KEYS[6], e) end
for _, k in ipairs({KEYS[4], KEYS[5], KEYS[6], KEYS[8], KEYS[11], KEYS[12]}) do
  redis.call('PERSIST', k)
end
redis.call('PUBLISH', ARGV[16], ARGV[17])
local before = redis.call('ZCARD', KEYS[2])
local over = tonumber(ARGV[20])
local batched = 0
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1
  and redis.call('HINCRBY', KEYS[10], ARGV[19], 1) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[24])
  if over <= 0 or before > over or redis.call('EXISTS', KEYS[9]) == 1 then
    batched = 1
    redis.call('RPUSH', KEYS[9], ARGV[21])
    redis.call('PEXPIRE', KEYS[9], ARGV[22])
  elseif ARGV[7] ~= '' then
    redis.call('PUBLISH', ARGV[6], ARGV[7])
  end
end
local count = redis.call('ZCARD', KEYS[2])
local page = redis.call('ZRANGE', KEYS[2], '-', '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[18]))
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
local since = tonumber(ARGV[12])
if since >= 0 and ARGV[13] == e and since <= seq and seq - since <= tonumber(ARGV[15]) then
  local first = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', 1)
  local oldest = seq + 1
  if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
  local o = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if o[1] and tonumber(o[2]) < oldest then oldest = tonumber(o[2]) end
  if oldest <= since + 1 then
    local hist = redis.call('XRANGE', KEYS[5], tostring(since + 1), '+', 'COUNT', ARGV[14])
    local top = '+inf'
    if #hist == tonumber(ARGV[14]) then top = string.match(hist[#hist][1], '^(%d+)') end
    local over = redis.call('ZRANGEBYSCORE', KEYS[11], since + 1, top, 'LIMIT', 0, ARGV[14])
    local rx = redis.call('ZRANGEBYSCORE', KEYS[12], since + 1, top)
    return {e, seq, page, hist, 1, count, batched, over, rx}
  end
end
local hist = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', ARGV[5])
local bottom = '-inf'
if #hist == tonumber(ARGV[5]) then bottom = string.match(hist[#hist][1], '^(%d+)') end
local over = redis.call('ZREVRANGEBYSCORE', KEYS[11], '+inf', bottom, 'LIMIT', 0, ARGV[5])
local low = bottom
if #over > 0 and #hist < tonumber(ARGV[5]) then low = '-inf' end
local rx = redis.call('ZRANGEBYSCORE', KEYS[12], low, '+inf')
return {e, seq, page, hist, 0, count, batched, over, rx}
"#;

/// A message id for a PM. KEYS: msgid. ARGV: durable (as for [`SAY`]). Returns the id, or 0 when
/// the counter must be seeded first.
pub(super) const NEXT_ID: &str = r#"
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('INCR', KEYS[1])
"#;

/// Seeds what Redis lost from the store, so numbers carry on from what is stored and none is
/// given out twice: a room's epoch (a new one: resuming clients reload) and seq, and the id
/// counter. When the id counter is gone too, Redis restarted empty and nodes may hold messages
/// numbered past what is stored: both then skip `gap`. An idle room that expired had its
/// messages committed long before (it was empty for `room_ttl_secs`).
///
/// KEYS: epoch, seq, msgid. ARGV: new epoch ('' = no room), the room's stored last seq, the next
/// stored id, gap. Returns 1.
pub(super) const SEED: &str = r#"
local lost = redis.call('EXISTS', KEYS[3]) == 0
local gap = 0
if lost then gap = tonumber(ARGV[4]) end
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  local floor = tonumber(ARGV[2]) + gap
  if tonumber(redis.call('GET', KEYS[2]) or '0') < floor then redis.call('SET', KEYS[2], floor) end
end
if lost then redis.call('SET', KEYS[3], tonumber(ARGV[3]) - 1 + gap) end
return 1
"#;

/// Leaves a room, announcing `how` if the member was there (unless the room is large enough for
/// presence batches), and forgets the room once nobody is in it: its seq, stream and epoch then
/// expire after the room TTL.
///
/// KEYS: members, names, rooms, created, seq, stream, epoch, sbytes, pres, ucount. ARGV:
/// member, channel, envelope ('' = announce nothing), room, the member's name in lower case,
/// batch leaves past this many members (<= 0: always), room TTL (seconds), presence entry
/// (`-name`), how long a batch waits at most (ms). The user leaves (`left` is told) with their
/// last connection. KEYS[11], KEYS[12]: over, rx. Returns {was there, batched}.
pub(super) const LEAVE: &str = r#"
local n = redis.call('ZREM', KEYS[1], ARGV[1])
local gone = 0
if n == 1 and redis.call('HINCRBY', KEYS[10], ARGV[5], -1) <= 0 then
  redis.call('HDEL', KEYS[10], ARGV[5])
  redis.call('ZREMRANGEBYLEX', KEYS[2], '[' .. ARGV[5] .. '|', '[' .. ARGV[5] .. '|\255')
  gone = 1
end
local after = redis.call('ZCARD', KEYS[2])
local batched = 0
if gone == 1 and ARGV[3] ~= '' then
  local over = tonumber(ARGV[6])
  if over <= 0 or after > over or redis.call('EXISTS', KEYS[9]) == 1 then
    batched = 1
    redis.call('RPUSH', KEYS[9], ARGV[8])
    redis.call('PEXPIRE', KEYS[9], ARGV[9])
  else
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[9], KEYS[10])
  local c = redis.call('HGET', KEYS[3], ARGV[4])
  if c then
    redis.call('HDEL', KEYS[3], ARGV[4])
    if c ~= '' and redis.call('HINCRBY', KEYS[4], c, -1) <= 0 then redis.call('HDEL', KEYS[4], c) end
  end
  for _, k in ipairs({KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[11], KEYS[12]}) do
    redis.call('EXPIRE', k, ARGV[7])
  end
end
return {n, batched}
"#;

/// Removes every member whose node stopped refreshing it, and forgets rooms left empty (their
/// keys expire after the room TTL). Whoever runs it first gets each ghost once, and announces it:
/// in a large room (or one with a batch waiting) the script adds the leave to the room's batch,
/// and the node flushes it.
///
/// KEYS: rooms, created. ARGV: now, key prefix, room TTL (seconds), batch past this many members
/// (<= 0: always), how long a batch waits at most (ms).
/// Returns {room, member, batched (0/1), room, member, batched, ...}.
pub(super) const REAP: &str = r#"
local out = {}
local rooms = redis.call('HGETALL', KEYS[1])
local over = tonumber(ARGV[4])
for i = 1, #rooms, 2 do
  local room, creator = rooms[i], rooms[i + 1]
  local key = ARGV[2] .. ':members:' .. room
  local pres = ARGV[2] .. ':pres:' .. room
  local names = ARGV[2] .. ':names:' .. room
  local ucount = ARGV[2] .. ':ucount:' .. room
  local ghosts = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  for _, g in ipairs(ghosts) do
    redis.call('ZREM', key, g)
    local name = string.match(g, '^[^|]*|[^|]*|[^|]*|(.*)$') or ''
    local lower = string.lower(name)
    -- The user leaves with their last connection.
    if redis.call('HINCRBY', ucount, lower, -1) <= 0 then
      redis.call('HDEL', ucount, lower)
      redis.call('ZREMRANGEBYLEX', names, '[' .. lower .. '|', '[' .. lower .. '|\255')
      local batched = 0
      if over <= 0 or redis.call('ZCARD', names) > over or redis.call('EXISTS', pres) == 1 then
        batched = 1
        redis.call('RPUSH', pres, '-' .. name)
        redis.call('PEXPIRE', pres, ARGV[5])
      end
      out[#out + 1] = room
      out[#out + 1] = g
      out[#out + 1] = batched
    end
  end
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', pres, ucount)
    redis.call('HDEL', KEYS[1], room)
    if creator ~= '' and redis.call('HINCRBY', KEYS[2], creator, -1) <= 0 then
      redis.call('HDEL', KEYS[2], creator)
    end
    for _, what in ipairs({'seq', 'stream', 'epoch', 'sbytes', 'over', 'rx'}) do
      redis.call('EXPIRE', ARGV[2] .. ':' .. what .. ':' .. room, ARGV[3])
    end
  end
end
return out
"#;

/// Every room with members, and how many users are in each. KEYS: rooms. ARGV: now, key
/// prefix. Returns {room, count, room, count, ...}.
pub(super) const ROOMS: &str = r#"
local out = {}
for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('ZCARD', ARGV[2] .. ':names:' .. room)
end
return out
"#;

/// Announces a large room's batch: takes every change queued in `P:pres:{room}` (by any node),
/// in order, and publishes one `presence` event: leaves and joins (a join and a leave of one
/// name inside the batch cancel), a page of each, the rest counted, and the room's member count
/// at this moment, which is exactly what applying every batch in order gives. Nothing to say:
/// nothing published.
///
/// KEYS: pres, names (one entry per user: the count is of users). ARGV: the envelope up to its
/// event (`{..."e":`), names per page, room, channel. Returns 1 if it published.
pub(super) const PRESENCE: &str = r#"
local changes = redis.call('LRANGE', KEYS[1], 0, -1)
if #changes == 0 then return 0 end
redis.call('DEL', KEYS[1])
local page = tonumber(ARGV[2])
local joined, left, unlisted = {}, {}, 0
for _, c in ipairs(changes) do
  if string.sub(c, 1, 1) == '+' then
    local role, name = string.match(c, '^%+([^|]*)|(.*)$')
    if #joined < page then
      joined[#joined + 1] = {name = name, role = role}
    else
      unlisted = unlisted + 1
    end
  else
    local name = string.sub(c, 2)
    local back = nil
    for i, j in ipairs(joined) do
      if j.name == name then back = i; break end
    end
    if back then
      table.remove(joined, back)
    elseif #left < page then
      left[#left + 1] = name
    else
      unlisted = unlisted + 1
    end
  end
end
if #joined == 0 and #left == 0 and unlisted == 0 then return 0 end
local e = {type = 'presence', room = ARGV[3], user_count = redis.call('ZCARD', KEYS[2])}
if #joined > 0 then e.joined = joined end
if #left > 0 then e.left = left end
if unlisted > 0 then e.unlisted = unlisted end
redis.call('PUBLISH', ARGV[4], ARGV[1] .. cjson.encode(e) .. '}')
return 1
"#;

/// A member of large rooms renamed: its joins still waiting in those rooms' batches are told
/// under the new name. KEYS: the rooms' pres lists. ARGV: old entry (`+role|old`), new entry.
pub(super) const PRESENCE_RENAME: &str = r#"
for _, k in ipairs(KEYS) do
  local changes = redis.call('LRANGE', k, 0, -1)
  for i, c in ipairs(changes) do
    if c == ARGV[1] then redis.call('LSET', k, i - 1, ARGV[2]) end
  end
end
return 0
"#;

/// Refreshes this node's name claims, re-asserting any Redis lost (a restart), except those of
/// a connection an admin kicked (whose node may have missed the order). A claim on a `:sess:`
/// key is one connection in a user's sorted set of them (tokens, accounts), re-asserted only
/// while the user has fewer than the most allowed. Returns, for each claim not refreshed,
/// `[kind, position (1-based), reason]`: kind 'lost' (someone else holds it, or the user's
/// connections are full) or 'kicked'. KEYS: names. ARGV: ttl ms, key prefix, now (ms), the most
/// connections per user, values.
pub(super) const REFRESH_NAMES: &str = r#"
local out = {}
local ttl, now, most = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i, k in ipairs(KEYS) do
  local mine = ARGV[i + 4]
  local who = string.match(mine, '^([^|]*|[^|]*)|') or ''
  local kicked = redis.call('GET', ARGV[2] .. ':kicked:' .. who)
  local lost = false
  if string.find(k, ':sess:', 1, true) then
    if kicked then
      redis.call('ZREM', k, mine)
    elseif redis.call('ZSCORE', k, mine) then
      redis.call('ZADD', k, now + ttl, mine)
      redis.call('PEXPIRE', k, ttl)
      redis.call('PEXPIRE', (string.gsub(k, ':sess:', ':sinfo:', 1)), ttl)
    else
      redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. now)
      if redis.call('ZCARD', k) < most then
        redis.call('ZADD', k, now + ttl, mine)
        redis.call('PEXPIRE', k, ttl)
      else
        lost = true
      end
    end
  else
    local v = redis.call('GET', k)
    if kicked then
      if v == mine then redis.call('DEL', k) end
    elseif v == mine then
      redis.call('PEXPIRE', k, ttl)
    elseif not v then
      redis.call('SET', k, mine, 'PX', ttl)
    else
      lost = true
    end
  end
  if kicked then
    out[#out + 1] = 'kicked'
    out[#out + 1] = tostring(i)
    out[#out + 1] = kicked
  elseif lost then
    out[#out + 1] = 'lost'
    out[#out + 1] = tostring(i)
    out[#out + 1] = ''
  end
end
return out
"#;

/// Claims one more connection of a user whose name is owned (tokens, accounts): the user's
/// sorted set of live connections, at most `ARGV[4]` of them (the expired are dropped first).
/// Beside the set, `P:sinfo:{key}` describes each connection for `sessions`: `node|conn` to
/// `since|device`, pruned here of connections the set no longer holds.
/// KEYS: sess, sinfo. ARGV: entry (`node|conn|role|name`), ttl ms, now (ms), the most,
/// `node|conn`, `since|device`. Returns the user's live connections with this one, or 0 when
/// they are `ARGV[4]` already (nothing done).
pub(super) const CLAIM_SESSION: &str = r#"
local ttl, now = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
  and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
local live = {}
for _, e in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local who = string.match(e, '^([^|]*|[^|]*)|')
  if who then live[who] = true end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not live[f] then redis.call('HDEL', KEYS[2], f) end
end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
return redis.call('ZCARD', KEYS[1])
"#;

/// Logs out one of a user's connections: out of the set (and `sinfo`) at once, so `sessions`
/// no longer lists it while its node closes it. KEYS: sess, sinfo. ARGV: `node|conn`. Returns 1,
/// or 0 when the user has no such connection.
pub(super) const LOG_OUT: &str = r#"
local prefix = ARGV[1] .. '|'
for _, e in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(e, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], e)
    redis.call('HDEL', KEYS[2], ARGV[1])
    return 1
  end
end
return 0
"#;

/// Re-writes every connection in the rooms of a node's heartbeat: scores refreshed; an entry
/// Redis lost (a restart) is added again, and with it the user's count and names entry.
/// ARGV: key prefix, expiry, then per membership: room, entry, lower-case name, names entry.
pub(super) const MEMBERS: &str = r#"
for i = 3, #ARGV, 4 do
  local room, entry, lower, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('ZADD', ARGV[1] .. ':members:' .. room, ARGV[2], entry) == 1 then
    redis.call('HINCRBY', ARGV[1] .. ':ucount:' .. room, lower, 1)
    redis.call('ZADD', ARGV[1] .. ':names:' .. room, 0, user)
  end
  redis.call('HSETNX', ARGV[1] .. ':rooms', room, '')
end
return 0
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

/// Frees a name if this connection still holds it (on a `:sess:` key: this connection of the
/// user, and its `sinfo` entry). KEYS: name. ARGV: value.
pub(super) const RELEASE: &str = r#"
if string.find(KEYS[1], ':sess:', 1, true) then
  local who = string.match(ARGV[1], '^([^|]*|[^|]*)|')
  if who then redis.call('HDEL', (string.gsub(KEYS[1], ':sess:', ':sinfo:', 1)), who) end
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Kicks a user out of every room, every connection of theirs (publishing the `kicked`
/// envelope, its room written in place of `@@ROOM@@`, once to each room they were in), and frees
/// the name.
///
/// Leaves a tombstone per connection (`kicked:{node|conn}`, holding the reason, for `ARGV[5]`
/// ms) so that a member's node, should it miss the kick order, closes it at its next heartbeat
/// instead of re-asserting its claims.
///
/// KEYS: rooms, created, name (open mode's claim, or the user's `:sess:` set). ARGV: the name in
/// lower case, key prefix, envelope, room TTL (seconds), tombstone TTL (ms), reason, then each
/// connection's entry. Returns how many rooms they were in.
pub(super) const KICK: &str = r#"
local out = 0
local lower = ARGV[1]
for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
  local key = ARGV[2] .. ':members:' .. room
  local removed = 0
  for i = 7, #ARGV do removed = removed + redis.call('ZREM', key, ARGV[i]) end
  if removed > 0 then
    out = out + 1
    redis.call('HDEL', ARGV[2] .. ':ucount:' .. room, lower)
    redis.call('ZREMRANGEBYLEX', ARGV[2] .. ':names:' .. room, '[' .. lower .. '|', '[' .. lower .. '|\255')
    local env = string.gsub(ARGV[3], '@@ROOM@@', function() return room end)
    redis.call('PUBLISH', ARGV[2] .. ':r:' .. room, env)
    if redis.call('ZCARD', key) == 0 then
      local c = redis.call('HGET', KEYS[1], room)
      redis.call('HDEL', KEYS[1], room)
      redis.call('DEL', ARGV[2] .. ':ucount:' .. room)
      if c and c ~= '' and redis.call('HINCRBY', KEYS[2], c, -1) <= 0 then
        redis.call('HDEL', KEYS[2], c)
      end
      for _, what in ipairs({'seq', 'stream', 'epoch', 'sbytes', 'over', 'rx'}) do
        redis.call('EXPIRE', ARGV[2] .. ':' .. what .. ':' .. room, ARGV[4])
      end
    end
  end
end
for i = 7, #ARGV do
  if string.find(KEYS[3], ':sess:', 1, true) then
    redis.call('ZREM', KEYS[3], ARGV[i])
  elseif redis.call('GET', KEYS[3]) == ARGV[i] then
    redis.call('DEL', KEYS[3])
  end
  local who = string.match(ARGV[i], '^([^|]*|[^|]*)|')
  if who then redis.call('SET', ARGV[2] .. ':kicked:' .. who, ARGV[6], 'PX', ARGV[5]) end
end
return out
"#;
