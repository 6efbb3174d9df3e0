-- A test handler's effect, settled with the entry in one step: count the completion and ack,
-- only while this consumer owns the entry (the fence). Returns 1, or -1 when fenced.
-- KEYS: stream, completions hash      ARGV: group, consumer, entry id
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #pending == 0 or pending[1][2] ~= consumer then
  return -1
end
redis.call('HINCRBY', KEYS[2], id, 1)
redis.call('XACK', KEYS[1], group, id)
return 1
