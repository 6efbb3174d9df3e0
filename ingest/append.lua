-- zapstream dedup-append: append events to their streams unless already appended, and
-- assign each its session, in one atomic step.
--
-- KEYS, two per event:  stream, conversation record (a hash; all keys share one hash tag)
-- ARGV[1..4]:           dedup window (s), session gap (s), record TTL (s), event count
-- then per event:       rule, dedup field, timestamp, conversation id, outbound field,
--                       the entry's fields as a JSON array [name, value, ...] (type, v,
--                       session_id first; one argument instead of two dozen keeps the
--                       client's packing cheap)
--
-- The conversation record holds:
--   sid, last      the current session id and its latest WhatsApp timestamp
--   d<8 bytes>     a dedup record: BLAKE2b of the dedup id -> Redis time (s) of the append
--   o<8 bytes>     an outbound wamid's digest -> its session id (written by the sender)
--   pn             the record length at which expired dedup records are next pruned
-- Returns per event {entry id, session id}, or false for a duplicate.

local window = tonumber(ARGV[1])
local gap = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
if not (window and gap and ttl and count) or #KEYS ~= 2 * count then
  return redis.error_reply('ERR zapstream append: malformed header')
end

-- Validate everything before the first write: Lua does not roll back.
local events = {}
local a = 5
for i = 1, count do
  local e = {
    stream = KEYS[2 * i - 1], record = KEYS[2 * i], rule = ARGV[a], dedup = ARGV[a + 1],
    ts = tonumber(ARGV[a + 2]), base = ARGV[a + 3], outbound = ARGV[a + 4],
  }
  local ok, fields = pcall(cjson.decode, ARGV[a + 5] or '')
  if not (e.ts and e.base and e.outbound and ok) or type(fields) ~= 'table' or #fields < 6
      or #fields % 2 ~= 0 or fields[1] ~= 'type' or fields[5] ~= 'session_id' then
    return redis.error_reply('ERR zapstream append: malformed arguments for event ' .. i)
  end
  e.fields = fields
  if e.rule ~= 'advance' and e.rule ~= 'join' and e.rule ~= 'outbound' and e.rule ~= 'none' then
    return redis.error_reply('ERR zapstream append: unknown session rule ' .. tostring(e.rule))
  end
  events[i] = e
  a = a + 6
end
local function check_type(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return 'ERR zapstream append: key ' .. key .. ' holds a ' .. kind .. ', not a ' .. want
  end
end
for _, e in ipairs(events) do
  local problem = check_type(e.stream, 'stream') or check_type(e.record, 'hash')
  if problem then
    return redis.error_reply(problem)
  end
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function session_for(e)
  if e.rule == 'none' then
    return ''
  end
  if e.rule == 'outbound' then
    return redis.call('HGET', e.record, e.outbound) or ''
  end
  local state = redis.call('HMGET', e.record, 'sid', 'last')
  local sid, last = state[1], tonumber(state[2])
  if e.rule == 'join' then
    if sid then
      return sid
    end
    local ts = e.ts
    if ts <= 0 then
      ts = math.floor(now)
    end
    sid = e.base .. '-' .. ts
    redis.call('HSET', e.record, 'sid', sid, 'last', ts)
    return sid
  end
  -- advance: a gap longer than the session gap opens a new session; a late message joins the
  -- current one, which never moves backwards.
  if not sid or e.ts - last > gap then
    sid = e.base .. '-' .. e.ts
    redis.call('HSET', e.record, 'sid', sid, 'last', e.ts)
  elseif e.ts > last then
    redis.call('HSET', e.record, 'last', e.ts)
  end
  return sid
end

local result = {}
local touched = {}
for i, e in ipairs(events) do
  local seen = tonumber(redis.call('HGET', e.record, e.dedup))
  if seen and now - seen < window then
    result[i] = false
  else
    local sid = session_for(e)
    e.fields[6] = sid -- the value of session_id, the third field
    result[i] = {redis.call('XADD', e.stream, '*', unpack(e.fields)), sid}
    redis.call('HSET', e.record, e.dedup, math.floor(now))
    redis.call('EXPIRE', e.record, ttl)
    touched[e.record] = true
  end
end

-- Expired dedup records are pruned lazily, when a record has doubled since its last pruning,
-- so the cost stays constant per append. Correctness never depends on it: the age is checked.
for record in pairs(touched) do
  local length = redis.call('HLEN', record)
  local limit = tonumber(redis.call('HGET', record, 'pn') or '64')
  if length > limit then
    local all = redis.call('HGETALL', record)
    local expired = {}
    for j = 1, #all, 2 do
      local field = all[j]
      if #field == 9 and string.byte(field, 1) == 100 and now - tonumber(all[j + 1]) >= window then
        expired[#expired + 1] = field
      end
    end
    for j = 1, #expired, 1000 do
      redis.call('HDEL', record, unpack(expired, j, math.min(j + 999, #expired)))
    end
    redis.call('HSET', record, 'pn', math.max(64, 2 * (length - #expired)))
  end
end
return result
