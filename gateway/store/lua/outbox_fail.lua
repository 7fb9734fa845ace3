-- outbox_fail.lua: record a failed delivery attempt (any answer but a 2xx, a refused or
-- forbidden connection, a timeout): retry after the catalog's wait, or give up after the last
-- attempt (SPEC 11).
--
-- KEYS[1] outbox   gw:{acct:<A>}:outbox          zset, member = task id, score = due (ms)
-- KEYS[2] task     gw:{acct:<A>}:task:<task id>  hash; fields webhook_attempts (attempts
--                  made so far, integer) and webhook_state (pending | delivered | failed)
-- ARGV[1] task id
-- ARGV[2] attempt, 1-based: the one that failed
-- ARGV[3] now, epoch milliseconds
-- ARGV[4] attempts allowed in all
-- ARGV[5] wait before the next attempt, milliseconds (backoff_s[attempt - 1])
--
-- Returns {outcome, due_ms}: {"RETRY", due time of the next attempt}, {"FAILED", 0} after the
-- last attempt (the delivery leaves the outbox), {"STALE", 0} when this attempt was already
-- recorded (nothing changes), {"GONE", 0} when the task was deleted (the delivery is dropped).

local outbox, task = KEYS[1], KEYS[2]
local id, attempt = ARGV[1], tonumber(ARGV[2])

if redis.call('EXISTS', task) == 0 then
  redis.call('ZREM', outbox, id)
  return {'GONE', 0}
end
local made = tonumber(redis.call('HGET', task, 'webhook_attempts') or '0')
if not redis.call('ZSCORE', outbox, id) or made ~= attempt - 1 then
  return {'STALE', 0}
end
if attempt >= tonumber(ARGV[4]) then
  redis.call('HSET', task, 'webhook_attempts', attempt, 'webhook_state', 'failed')
  redis.call('ZREM', outbox, id)
  return {'FAILED', 0}
end
local due = tonumber(ARGV[3]) + tonumber(ARGV[5])
redis.call('HSET', task, 'webhook_attempts', attempt)
redis.call('ZADD', outbox, 'XX', due, id)
return {'RETRY', due}
