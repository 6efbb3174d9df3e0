-- zapstream release: hand a session held by a human back to the AI.
-- Turns cut while it was held stay unanswered: `released_after` records the last of them.
-- KEYS: held sessions (hash), session state (hash), handoffs stream
-- ARGV: session id
-- Returns the handoff.released entry id, or false when the session is not held.
local details = redis.call('HGET', KEYS[1], ARGV[1])
if not details then
  return false
end
local held = cjson.decode(details)
local cut = redis.call('HGET', KEYS[2], 'turns') or '0'
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'handoff', '0', 'released_after', cut)
return redis.call('XADD', KEYS[3], '*', 'type', 'handoff.released', 'v', '1',
                  'session_id', ARGV[1], 'turn_id', cut,
                  'phone_number_id', held.phone_number_id, 'customer', held.customer)
