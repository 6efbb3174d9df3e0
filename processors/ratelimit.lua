-- zapstream rate limit: a GCRA bucket in one key, shared by every worker.
--
-- `rate` sends per `per`, and bursts of `burst` more: over any window of length `per`, at
-- most rate + burst are let through. The key holds the theoretical arrival time, in
-- microseconds of Redis's clock (so 1,000/s and more keep their precision).
--
-- KEYS: the bucket
-- ARGV: operation (take | peek | push), interval (us, per / rate), burst, push for (us; push)
-- Returns the microseconds to wait before trying again: 0 when taken (take) or takeable (peek).
-- push moves the bucket on so that nothing passes for the given time (WhatsApp's 131056).
local key, op = KEYS[1], ARGV[1]
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)

local function store(value)
  -- Expires once the bucket is full again: an idle bucket costs no memory.
  redis.call('SET', key, string.format('%d', value), 'PX',
             math.floor((value - now + interval) / 1000) + 1)
end

if op == 'push' then
  local until_us = now + tonumber(ARGV[4]) + burst * interval
  if until_us > tat then
    store(until_us)
  end
  return 0
end

local allowed_at = tat - burst * interval
if now < allowed_at then
  return allowed_at - now
end
if op == 'take' then
  store(tat + interval)
end
return 0
