-- zapstream rate limit: a GCRA bucket in one key, shared by every worker.
--
-- `rate` sends per `per`, and bursts of `burst` more: over any window of length `per`, at
-- most rate + burst are let through. The key holds the theoretical arrival time (ms).
--
-- KEYS: the bucket
-- ARGV: operation (take | peek | push), interval (ms, per / rate), burst, push until (ms from
--       now, push only)
-- Returns the ms to wait before trying again: 0 when taken (take) or takeable (peek).
-- push moves the bucket on so that nothing passes for the given time (WhatsApp's 131056).
local key, op = KEYS[1], ARGV[1]
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)

if op == 'push' then
  local until_ms = now + tonumber(ARGV[4]) + burst * interval
  if until_ms > tat then
    redis.call('SET', key, until_ms, 'PX', until_ms - now + interval)
  end
  return 0
end

local allowed_at = tat - burst * interval
if now < allowed_at then
  return allowed_at - now
end
if op == 'take' then
  redis.call('SET', key, tat + interval, 'PX', tat + interval - now + interval)
end
return 0
