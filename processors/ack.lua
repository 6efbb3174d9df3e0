-- Fenced ack: acknowledge entries only while this consumer still owns them, so a consumer that
-- was presumed dead and wakes up cannot ack an entry another consumer took over.
-- KEYS: stream, failures hash      ARGV: group, consumer, entry id...
-- Returns, per entry id: 1 acked; 0 another consumer owns it now (fenced); 2 no longer pending
-- (a handler's own script settled it together with its effect, or its new owner did).
local group, consumer = ARGV[1], ARGV[2]
local result = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #pending == 0 then
    redis.call('HDEL', KEYS[2], id)
    result[#result + 1] = 2
  elseif pending[1][2] == consumer then
    redis.call('XACK', KEYS[1], group, id)
    redis.call('HDEL', KEYS[2], id)
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
end
return result
