-- outbox_ack.lua: record a delivery the receiver acknowledged (a 2xx): the task's webhook is
-- delivered and leaves the outbox (SPEC 11).
--
-- KEYS[1] outbox   gw:{acct:<A>}:outbox          zset, member = task id, score = due (ms)
-- KEYS[2] task     gw:{acct:<A>}:task:<task id>  hash; fields webhook_attempts (attempts
--                  made so far, integer) and webhook_state (pending | delivered | failed)
-- ARGV[1] task id
-- ARGV[2] attempt, 1-based: the one that was answered
--
-- Returns "DELIVERED"; "STALE" when this attempt was already recorded (a process whose claim
-- lapsed while it waited for the receiver; the record stands as it is); "GONE" when the task
-- was deleted meanwhile (retention): its delivery is dropped.

local outbox, task = KEYS[1], KEYS[2]
local id, attempt = ARGV[1], tonumber(ARGV[2])

if redis.call('EXISTS', task) == 0 then
  redis.call('ZREM', outbox, id)
  return 'GONE'
end
local made = tonumber(redis.call('HGET', task, 'webhook_attempts') or '0')
if not redis.call('ZSCORE', outbox, id) or made ~= attempt - 1 then
  return 'STALE'
end
redis.call('HSET', task, 'webhook_attempts', attempt, 'webhook_state', 'delivered')
redis.call('ZREM', outbox, id)
return 'DELIVERED'
