-- zapstream outcome: append a reply's outcome (reply.sent, .failed, .blocked) once.
-- KEYS: the reply's outcome marker, replies stream
-- ARGV: marker TTL (s), then the entry's fields, name and value alternating
-- Returns the entry id, or false when an outcome was appended before (a redelivery).
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', tonumber(ARGV[1])) then
  return false
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
