-- zapstream debounce: gather a customer's burst of messages into one turn.
--
-- A session's messages wait in its burst (a sorted set, scored by the entry id's time in ms).
-- Its first turn is the longest run of messages, in time order, each less than `quiet` after
-- the one before and less than `max_wait` after the first; the turn is due at
-- min(last + quiet, first + max_wait). A due turn is closed only once the group has handled
-- every entry older than its due time (the watermark), so a burst makes the same turns
-- whether the group reads it live or far behind. Closing emits turn.ready (fields as
-- zapstream/events.py TurnReady) and removes its messages, in this one script: two workers
-- racing to close a window emit one turn.ready.
--
-- KEYS: messages stream, due (sorted set: session -> earliest possible due ms), turns stream,
--       the session's burst, the session's state (hash: turns cut so far, business, customer)
-- ARGV: mode ('add' | 'close'), group, consumer, entry id, session id, member
--       ('<whatsapp ts>|<entry id>|<wamid>'), entry time (ms), quiet (ms), max wait (ms),
--       TTL of the session's keys (s), phone_number_id, customer
-- add:   fenced like ack.lua: adds the message, closes what is due, acks the entry.
--        Returns the turns emitted, or -1 when this consumer no longer owns the entry.
-- close: closes what is due. Returns the turns emitted.

local stream, due, turns, burst, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local mode, group, consumer, entry_id, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local member, entry_ms = ARGV[6], tonumber(ARGV[7])
local quiet, max_wait, ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])

local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then
      return flat[i + 1]
    end
  end
end

-- Every entry of the stream older than the returned time (ms) has been handled by the group,
-- except `exclude` (the entry being handled now).
local function watermark(exclude)
  local bound = 0
  local delivered
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    if field(info, 'name') == group then
      delivered = field(info, 'last-delivered-id')
    end
  end
  if not delivered then
    return 0
  end
  if delivered == field(redis.call('XINFO', 'STREAM', stream), 'last-generated-id') then
    local clock = redis.call('TIME') -- everything delivered: any later entry is newer than now
    bound = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  else
    bound = id_ms(delivered)
  end
  for _, pending in ipairs(redis.call('XPENDING', stream, group, '-', '+', 2)) do
    if pending[1] ~= exclude then
      return math.min(bound, id_ms(pending[1]))
    end
  end
  return bound
end

local function parse(m)
  local ts, id, wamid = string.match(m, '^(%d+)|([^|]+)|(.*)$')
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {member = m, ts = tonumber(ts), id = id, ms = tonumber(ms), seq = tonumber(seq),
          wamid = wamid}
end

local function before(a, b) -- WhatsApp timestamp order, ties by arrival
  if a.ts ~= b.ts then
    return a.ts < b.ts
  end
  if a.ms ~= b.ms then
    return a.ms < b.ms
  end
  return a.seq < b.seq
end

local function close_due(wm)
  local emitted = 0
  local members = redis.call('ZRANGE', burst, 0, -1, 'WITHSCORES')
  local i = 1
  while i <= #members do
    local first = tonumber(members[i + 1])
    local last = first
    local j = i + 2
    while j <= #members do
      local t = tonumber(members[j + 1])
      if t - last >= quiet or t - first >= max_wait then
        break
      end
      last = t
      j = j + 2
    end
    local turn_due = math.min(last + quiet, first + max_wait)
    if turn_due > wm then
      redis.call('ZADD', due, turn_due, session)
      return emitted
    end
    local turn = {}
    for k = i, j - 1, 2 do
      turn[#turn + 1] = parse(members[k])
    end
    table.sort(turn, before)
    local message_ids, entry_ids, gone = {}, {}, {}
    for _, m in ipairs(turn) do
      message_ids[#message_ids + 1] = m.wamid
      entry_ids[#entry_ids + 1] = m.id
      gone[#gone + 1] = m.member
    end
    local number = redis.call('HINCRBY', state, 'turns', 1)
    local business, customer = unpack(redis.call('HMGET', state, 'phone_number_id', 'customer'))
    redis.call('XADD', turns, '*', 'type', 'turn.ready', 'v', '1', 'session_id', session,
               'turn_id', tostring(number), 'message_ids', cjson.encode(message_ids),
               'entry_ids', cjson.encode(entry_ids), 'phone_number_id', business or '',
               'customer', customer or '')
    redis.call('ZREM', burst, unpack(gone))
    emitted = emitted + 1
    i = j
  end
  redis.call('ZREM', due, session)
  return emitted
end

if mode == 'add' then
  local pending = redis.call('XPENDING', stream, group, entry_id, entry_id, 1)
  if #pending == 0 or pending[1][2] ~= consumer then
    return -1
  end
  redis.call('ZADD', burst, entry_ms, member)
  redis.call('HSET', state, 'phone_number_id', ARGV[11], 'customer', ARGV[12])
  redis.call('EXPIRE', burst, ttl)
  redis.call('EXPIRE', state, ttl)
  -- A lower bound of the due time; close_due sets the real one when it is not yet reached.
  redis.call('ZADD', due, 'LT', entry_ms + math.min(quiet, max_wait), session)
  local emitted = close_due(watermark(entry_id))
  redis.call('XACK', stream, group, entry_id)
  return emitted
end
if redis.call('ZSCORE', due, session) == false then
  return 0 -- closed by another worker meanwhile
end
return close_due(watermark(nil))
