-- outbox_claim.lua: claim the next due webhook delivery of an account (SPEC 11). A claim is a
-- lease: the delivery's due time moves to now + lease, so if the claiming process dies before
-- it records the answer (outbox_ack.lua / outbox_fail.lua), any process claims it again then.
--
-- KEYS[1] outbox   gw:{acct:<A>}:outbox   zset, member = task id, score = due time (epoch ms)
-- ARGV[1] now, epoch milliseconds
-- ARGV[2] claim lease, milliseconds (longer than one delivery can take)
--
-- Returns the claimed task id: the earliest due (due time, then member order), or "" when
-- nothing is due.

local outbox = KEYS[1]
local now = tonumber(ARGV[1])

local due = redis.call('ZRANGEBYSCORE', outbox, '-inf', now, 'LIMIT', 0, 1)
if not due[1] then
  return ''
end
redis.call('ZADD', outbox, 'XX', now + tonumber(ARGV[2]), due[1])
return due[1]
