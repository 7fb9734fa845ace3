-- finish.lua: the end of one run of an async task, in one atomic step: settle it exactly as a
-- sync request is settled (settlement.lua: release the lease, charge or drop the hold, log it
-- in the request log and usage) and move the task PROCESSING -> COMPLETED | FAILED
-- (tasks.lua: response, credits charged, outbox). A run that is no longer the task's current
-- run (its lease expired and the sweeper queued the task again, or a second call) changes
-- nothing, so a task is charged at most once.
--
-- Loaded after settlement.lua and tasks.lua.
--
-- KEYS[1..9]  as settle.lua (the idempotency key unused: "-")
-- KEYS[10] task hash     gw:{acct:<A>}:task:<id>
-- KEYS[11] running       gw:{acct:<A>}:running    see dispatch.lua
-- KEYS[12] finished      gw:{acct:<A>}:finished   see tasks.lua
-- KEYS[13] outbox        gw:{acct:<A>}:outbox     see tasks.lua
-- ARGV[1..13] as settle.lua: the request id is the task id, ARGV[4] "1" only for COMPLETED
-- ARGV[14] the run's attempt number (dispatch.lua's `started`)
-- ARGV[15] "COMPLETED" | "FAILED"
-- ARGV[16] the upstream's JSON body on COMPLETED, else ""
-- ARGV[17] the error JSON on FAILED, else ""
--
-- Returns {applied, charged, credits_remaining, queued, webhook due (0/1)}
--   applied 0: this run was not the task's current run; nothing changed.

local task = KEYS[10]
local t = redis.call('HMGET', task, 'status', 'attempts')
if t[1] ~= 'PROCESSING' or t[2] ~= ARGV[14] then
  local f = redis.call('HMGET', KEYS[1], 'allocation', 'used', 'held', 'q:' .. ARGV[2])
  return {0, 0, (tonumber(f[1]) or 0) - (tonumber(f[2]) or 0) - (tonumber(f[3]) or 0),
    tonumber(f[4]) or 0, 0}
end
local settled = settle_request(KEYS, ARGV)
local charged = settled[1] == 1 and settled[2] or 0
local due = end_task(task, KEYS[12], KEYS[13], ARGV[1], ARGV[15], ARGV[3], charged, ARGV[16],
  ARGV[17])
redis.call('HSET', task, 'latency_ms', tonumber(ARGV[7]))
redis.call('HDEL', KEYS[11], ARGV[1])
return {1, charged, settled[3], settled[4], due}
