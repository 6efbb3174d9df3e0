-- zapstream due: the sessions whose debounce window is due, by Redis's clock (the clock of
-- the entry ids the windows are timed on), in one round trip.
-- KEYS: due (sorted set: session -> due time, ms)      ARGV: at most this many
-- Returns the session ids, earliest due first.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
