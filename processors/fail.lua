-- Count a handler failure; at max failures (or at once, for a Reject) move the entry to the
-- group's dead-letter stream and ack it, in one step. Fenced like ack.lua.
-- KEYS: stream, failures hash, dead-letter stream
-- ARGV: group, consumer, entry id, max failures (0: dead-letter now), error, deliveries,
--       stream name, error code, then the original entry's field/value pairs
-- Returns {failures, dead-letter entry id or ''}, or -1 when this consumer no longer owns it.
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local max_failures = tonumber(ARGV[4])
local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #pending == 0 or pending[1][2] ~= consumer then
  return -1
end
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('ERR zapstream fail: ' .. KEYS[3] .. ' holds a ' .. kind)
end
local failures = redis.call('HINCRBY', KEYS[2], id, 1)
if max_failures > 0 and failures < max_failures then
  return {failures, ''}
end
local entry = {KEYS[3], '*'}
for i = 9, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
local extra = {'dlq_group', group, 'dlq_stream', ARGV[7], 'dlq_entry_id', id, 'dlq_error', ARGV[5],
               'dlq_code', ARGV[8], 'dlq_deliveries', ARGV[6], 'dlq_failures', tostring(failures),
               'dlq_consumer', consumer}
for _, value in ipairs(extra) do
  entry[#entry + 1] = value
end
local dead = redis.call('XADD', unpack(entry))
redis.call('XACK', KEYS[1], group, id)
redis.call('HDEL', KEYS[2], id)
return {failures, dead}
