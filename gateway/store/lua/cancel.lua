-- cancel.lua: cancel a QUEUED task of the caller's org: it becomes FAILED with error code
-- CANCELED, charged 0, and its webhook is due (tasks.lua). A task past QUEUED is left alone.
--
-- Loaded after tasks.lua.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] task hash      gw:{acct:<A>}:task:<id>
-- KEYS[3] org queue      gw:{acct:<A>}:queue:<O>   see enqueue.lua
-- KEYS[4] finished       gw:{acct:<A>}:finished    see tasks.lua
-- KEYS[5] outbox         gw:{acct:<A>}:outbox      see tasks.lua
-- ARGV[1] task id
-- ARGV[2] the caller's org id
-- ARGV[3] now, epoch milliseconds
--
-- Returns {code, task type, webhook due (0/1)}
--   code: "OK" | "NOT_FOUND" (no such task, or another org's) | "CONFLICT" (past QUEUED)

local t = redis.call('HMGET', KEYS[2], 'org_id', 'status', 'type')
if t[1] ~= ARGV[2] then
  return {'NOT_FOUND', '', 0}
end
if t[2] ~= 'QUEUED' or redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  return {'CONFLICT', t[3], 0}
end
redis.call('HINCRBY', KEYS[1], 'q:' .. ARGV[2], -1)
redis.call('HINCRBY', KEYS[1], 'queued', -1)
local due = end_task(KEYS[2], KEYS[4], KEYS[5], ARGV[1], 'FAILED', ARGV[3], 0, '',
  task_error('CANCELED', 'The task was canceled'))
return {'OK', t[3], due}
