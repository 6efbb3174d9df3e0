-- zapstream turns: settle a session's turn n, in turn order, and decide supersede, at once.
--
-- Turn n is settled only after turn n-1. If the customer wrote again after turn n was cut
-- (a later turn exists, or messages wait in the burst) and the policy is `supersede`, the
-- reply is not sent: reply.superseded, and the turn's messages stay unanswered for the next
-- turn. But once the oldest unanswered message is older than max wait, the reply goes anyway,
-- so a customer who keeps writing is not starved. The check for a newer message and the claim
-- to send are this one script. Fenced like ack.lua; acks the turn.ready entry.
--
-- A session held by a human (handoff), and every turn cut while it was held, is settled as
-- reply.blocked (reason handoff) with no reply; so is a turn the caller holds (mode `hold`,
-- e.g. the 24-hour window is closed). A generated reply that asks for a human also appends
-- handoff.requested and holds the session, in the same step.
--
-- KEYS: turns stream, replies stream, session state (hash), session burst (sorted set),
--       session context (list), handoffs stream, held sessions (hash), the turn's stored answer
-- ARGV: group, consumer, turn.ready entry id, session id, turn number, policy, max wait (ms),
--       reply id, body, tokens, unanswered entry ids (JSON, this turn's included), oldest
--       unanswered entry time (ms), message ids (JSON), phone_number_id, customer,
--       context items to append when sent (JSON list of strings), context length, TTL (s),
--       mode (answer | hold), hold reason, handoff ('1' or '0'), newest message timestamp,
--       newest message's arrival (its message.received entry id's ms), the answer to store
--       under KEYS[8] (JSON; empty when it was stored before)
-- Returns 'generated', 'superseded', 'blocked', 'done' (settled before), 'wait' (turn n-1 is
-- not settled) or 'fenced'.
local turns, replies, state, burst, context = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local handoffs, held_sessions = KEYS[6], KEYS[7]
local group, consumer, entry_id = ARGV[1], ARGV[2], ARGV[3]
local session, number, policy = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local max_wait = tonumber(ARGV[7])

local pending = redis.call('XPENDING', turns, group, entry_id, entry_id, 1)
if #pending == 0 or pending[1][2] ~= consumer then
  return 'fenced'
end
local answered = tonumber(redis.call('HGET', state, 'answered') or '0')
if answered >= number then
  redis.call('XACK', turns, group, entry_id)
  return 'done'
end
-- The answer is stored before any reply.generated for it: a turn tried again (it waits for
-- the turn before, or its claim is lost with its worker) is never answered by the AI twice.
if ARGV[24] ~= '' then
  redis.call('SET', KEYS[8], ARGV[24], 'NX', 'EX', tonumber(ARGV[18]))
end
if answered < number - 1 then
  return 'wait'
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local cut = tonumber(redis.call('HGET', state, 'turns') or '0')
local newer = cut > number or redis.call('ZCARD', burst) > 0
local starving = now - tonumber(ARGV[12]) >= max_wait
local held = redis.call('HGET', state, 'handoff') == '1'
  or number <= tonumber(redis.call('HGET', state, 'released_after') or '0')
local outcome
if held or ARGV[19] == 'hold' then
  redis.call('XADD', replies, '*', 'type', 'reply.blocked', 'v', '1', 'session_id', session,
             'turn_id', tostring(number), 'reply_id', ARGV[8],
             'reason', held and 'handoff' or ARGV[20])
  redis.call('HSET', state, 'answered', number, 'unanswered', '[]', 'oldest_unanswered', '')
  outcome = 'blocked'
elseif policy == 'supersede' and newer and not starving then
  redis.call('XADD', replies, '*', 'type', 'reply.superseded', 'v', '1', 'session_id', session,
             'turn_id', tostring(number), 'reply_id', ARGV[8], 'tokens', ARGV[10])
  redis.call('HSET', state, 'answered', number, 'unanswered', ARGV[11],
             'oldest_unanswered', ARGV[12])
  outcome = 'superseded'
else
  redis.call('XADD', replies, '*', 'type', 'reply.generated', 'v', '1', 'session_id', session,
             'turn_id', tostring(number), 'reply_id', ARGV[8], 'body', ARGV[9],
             'tokens', ARGV[10], 'message_ids', ARGV[13], 'phone_number_id', ARGV[14],
             'customer', ARGV[15], 'newest_timestamp', ARGV[22], 'received_ms', ARGV[23])
  redis.call('HSET', state, 'answered', number, 'unanswered', '[]', 'oldest_unanswered', '')
  if ARGV[21] == '1' then
    redis.call('HSET', state, 'handoff', '1')
    redis.call('HSET', held_sessions, session, cjson.encode({
      turn_id = tostring(number), phone_number_id = ARGV[14], customer = ARGV[15],
      since = tonumber(clock[1])}))
    redis.call('XADD', handoffs, '*', 'type', 'handoff.requested', 'v', '1',
               'session_id', session, 'turn_id', tostring(number),
               'phone_number_id', ARGV[14], 'customer', ARGV[15])
  end
  local items = cjson.decode(ARGV[16])
  if #items > 0 then
    redis.call('RPUSH', context, unpack(items))
    redis.call('LTRIM', context, -tonumber(ARGV[17]), -1)
    redis.call('EXPIRE', context, tonumber(ARGV[18]))
  end
  outcome = 'generated'
end
redis.call('XACK', turns, group, entry_id)
return outcome
