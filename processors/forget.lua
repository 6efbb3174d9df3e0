-- Remove a consumer from a group, only once it is dead (no heartbeat) and holds nothing:
-- XGROUP DELCONSUMER drops the consumer's pending entries with it.
-- KEYS: stream, the consumer's heartbeat key     ARGV: group, consumer
-- Returns 1 when removed, 0 otherwise.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
