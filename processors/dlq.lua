-- zapstream dlq: requeue or drop one dead letter and log the action, in one step.
-- A requeue makes the source entry pending again for the group that failed it alone: XCLAIM
-- FORCE puts it back in that group's pending list (pending lists are per group), owned by a
-- consumer that has no heartbeat, so the group's live consumers take it over at their next
-- reclaim and settle it like any other entry. Other groups and the read models never see it
-- again: nothing is appended to the source stream.
-- KEYS: dead-letter stream, source stream, operations stream
-- ARGV: action ('requeue' | 'drop'), dead-letter id, group, source entry id, owner consumer,
--       its idle time (ms), then the operator event's field/value pairs
-- Returns {'done', operator event id}, or {reason} with nothing changed: 'missing' (not in the
-- dead-letter stream: requeued or dropped before), 'trimmed' (the source entry is gone),
-- 'pending' (the group holds the entry already), 'nogroup' (the group is not on the stream).
local action, dead_id, group, entry_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if #redis.call('XRANGE', KEYS[1], dead_id, dead_id) == 0 then
  return {'missing'}
end
if action == 'requeue' then
  if #redis.call('XRANGE', KEYS[2], entry_id, entry_id) == 0 then
    return {'trimmed'} -- XCLAIM FORCE would silently skip an id the stream no longer holds
  end
  local pending = redis.pcall('XPENDING', KEYS[2], group, entry_id, entry_id, 1)
  if pending['err'] then
    return {'nogroup'}
  end
  if #pending > 0 then
    return {'pending'}
  end
  redis.call('XCLAIM', KEYS[2], group, ARGV[5], 0, entry_id,
             'IDLE', ARGV[6], 'RETRYCOUNT', 0, 'FORCE', 'JUSTID')
end
redis.call('XDEL', KEYS[1], dead_id)
local event = {KEYS[3], '*'}
for i = 7, #ARGV do
  event[#event + 1] = ARGV[i]
end
return {'done', redis.call('XADD', unpack(event))}
