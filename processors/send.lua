-- zapstream send: the idempotency record of one part of a reply, and its state machine.
--
--   (none) --begin--> posting --sent--> sent         the POST answered with a wamid, or the
--                        |                           part's `sent` status webhook arrived
--                        +--clear--> ready           Meta refused it: nothing was sent
--                        +--failed-> failed          its status webhook said `failed`
--
-- A part left `posting` by a crash or a POST without an answer is in doubt: begin tells the
-- caller to wait for its status webhook, and after the doubt time lets it be resent once.
-- Parts in doubt are listed in the partition's doubt set (part id -> since, ms).
--
-- KEYS: part record (hash), doubt set (sorted set), conversation record (hash)
-- ARGV: operation, part id, then by operation:
--   begin   doubt (ms), record TTL (s)
--           -> {'go'} | {'resend'} | {'sent', wamid} | {'failed', code}
--            | {'doubt', ms left} | {'lost', ms in doubt}
--   sent    wamid, outbound field, session id, by ('post' or 'status') -> previous state
--   clear   -> previous state
--   failed  code -> previous state
local record, doubts, conversation = KEYS[1], KEYS[2], KEYS[3]
local op, part = ARGV[1], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HGET', record, 'state') or ''

if op == 'begin' then
  local doubt, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
  if state == 'sent' then
    return {'sent', redis.call('HGET', record, 'wamid')}
  elseif state == 'failed' then
    return {'failed', redis.call('HGET', record, 'code')}
  elseif state == 'posting' then
    local age = now - tonumber(redis.call('HGET', record, 'at'))
    if age < doubt then
      return {'doubt', tostring(doubt - age)}
    end
    if redis.call('HGET', record, 'resent') == '1' then
      return {'lost', tostring(age)}
    end
    redis.call('HSET', record, 'resent', '1', 'at', now)
    redis.call('HINCRBY', record, 'attempts', 1)
    redis.call('ZADD', doubts, now, part)
    return {'resend'}
  end
  redis.call('HSET', record, 'state', 'posting', 'at', now)
  redis.call('HINCRBY', record, 'attempts', 1)
  redis.call('EXPIRE', record, ttl)
  redis.call('ZADD', doubts, now, part)
  return {'go'}
end

if op == 'sent' then
  -- The sender after its POST, or the status webhook of a part in doubt: the first wins.
  if state == 'posting' then
    redis.call('HSET', record, 'state', 'sent', 'wamid', ARGV[3], 'by', ARGV[6])
    redis.call('ZREM', doubts, part)
  end
  -- The wamid's session, for the statuses that follow (append.lua reads it).
  if ARGV[3] ~= '' and redis.call('EXISTS', conversation) == 1 then
    redis.call('HSET', conversation, ARGV[4], ARGV[5])
  end
  return state
end

if op == 'clear' then
  if state == 'posting' then
    redis.call('HSET', record, 'state', 'ready')
    redis.call('ZREM', doubts, part)
  end
  return state
end

if op == 'failed' then
  if state == 'posting' then
    redis.call('HSET', record, 'state', 'failed', 'code', ARGV[3])
    redis.call('ZREM', doubts, part)
  end
  return state
end

return redis.error_reply('ERR zapstream send: unknown operation ' .. tostring(op))
