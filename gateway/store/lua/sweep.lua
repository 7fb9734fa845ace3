-- sweep.lua: the slow upkeep of one account's tasks, or the requeue of given tasks.
--   1. A PROCESSING task whose lease expired (or was reclaimed by an admission) belongs to a
--      gateway that died: release its lease and hold and queue it again in its old place, or,
--      after `max_attempts` runs, end it FAILED with ATTEMPTS_EXHAUSTED (charged 0). Its
--      reclaimed-set entry is dropped, so a late settle of the dead run charges nothing: the
--      task is charged at most once, by the run that ends it (finish.lua).
--      With task ids in ARGV[6..], only those are queued again, whatever their lease (a
--      draining gateway hands back what it could not finish), and that run does not count.
--   2. Terminal tasks finished more than `retention` ago are deleted (at most ARGV[5]).
--   3. Tells which orgs still have entries queued, so that the caller dispatches them (a
--      gateway that died between freeing a slot and dispatching must not stall a queue).
--
-- Loaded after tasks.lua.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] holds          gw:{acct:<A>}:holds
-- KEYS[3] reclaimed      gw:{acct:<A>}:reclaimed
-- KEYS[4] running        gw:{acct:<A>}:running     see dispatch.lua
-- KEYS[5] finished       gw:{acct:<A>}:finished    see tasks.lua
-- KEYS[6] outbox         gw:{acct:<A>}:outbox      see tasks.lua
-- KEYS[7] idempotency    gw:{acct:<A>}:taskidem    see enqueue.lua
-- ARGV[1] key prefix of the account, "gw:{acct:<A>}:"
-- ARGV[2] now, epoch milliseconds
-- ARGV[3] max_attempts
-- ARGV[4] retention, milliseconds
-- ARGV[5] at most this many tasks deleted per call
-- ARGV[6..] task ids to queue again now (the drain), or none for the sweep
--
-- Returns {requeued, failed, orgs, retained}
--   requeued: tasks queued again; failed: flat id, task type, webhook due (0/1);
--   orgs: org ids with entries queued; retained: tasks the account still keeps (0: none left)

local account, holds, running = KEYS[1], KEYS[2], KEYS[4]
local prefix, now = ARGV[1], tonumber(ARGV[2])
local max_attempts = tonumber(ARGV[3])
local f = redis.call('HMGET', account, 'held', 'cycle_start')
local held, cycle_start = tonumber(f[1]) or 0, f[2]
local forced = #ARGV >= 6
local requeued, failed, orgs = 0, {}, {}

local candidates = {}
if forced then
  for i = 6, #ARGV do
    local org = redis.call('HGET', running, ARGV[i])
    if org then candidates[#candidates + 1] = {ARGV[i], org} end
  end
else
  local pairs_ = redis.call('HGETALL', running)
  for i = 1, #pairs_, 2 do candidates[#candidates + 1] = {pairs_[i], pairs_[i + 1]} end
end

for _, c in ipairs(candidates) do
  local id, org = c[1], c[2]
  local leases = prefix .. 'leases:' .. org
  local expiry = tonumber(redis.call('ZSCORE', leases, id))
  local dead = forced or (expiry == nil or expiry <= now)
  if dead then
    redis.call('ZREM', leases, id)
    redis.call('ZREM', KEYS[3], id)
    local hold = redis.call('HGET', holds, id)
    if hold then
      local credits, cycle = string.match(hold, '^(%d+):(%d+)$')
      if cycle == cycle_start then held = held - tonumber(credits) end
      redis.call('HDEL', holds, id)
    end
    redis.call('HDEL', running, id)
    local task = prefix .. 'task:' .. id
    local t = redis.call('HMGET', task, 'attempts', 'score', 'type')
    local attempts = tonumber(t[1]) or 0
    if forced then
      attempts = attempts - 1
      redis.call('HSET', task, 'attempts', attempts)
    end
    if not forced and attempts >= max_attempts then
      local due = end_task(task, KEYS[5], KEYS[6], id, 'FAILED', now, 0, '',
        task_error('ATTEMPTS_EXHAUSTED', 'The task did not finish in ' .. max_attempts ..
          ' runs'))
      failed[#failed + 1] = id
      failed[#failed + 1] = t[3]
      failed[#failed + 1] = due
    else
      redis.call('HSET', task, 'status', 'QUEUED')
      redis.call('HDEL', task, 'started_at')
      redis.call('ZADD', prefix .. 'queue:' .. org, t[2], id)
      redis.call('HINCRBY', account, 'q:' .. org, 1)
      redis.call('HINCRBY', account, 'queued', 1)
      requeued = requeued + 1
    end
  end
end
redis.call('HSET', account, 'held', string.format('%d', held))

if not forced then
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0,
    tonumber(ARGV[5]))
  for _, id in ipairs(old) do
    local task = prefix .. 'task:' .. id
    local t = redis.call('HMGET', task, 'org_id', 'idem_hash')
    if t[2] then redis.call('HDEL', KEYS[7], t[2]) end
    if t[1] then redis.call('ZREM', prefix .. 'tasks:' .. t[1], id) end
    redis.call('DEL', task)
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
  end
end

local fields = redis.call('HGETALL', account)
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'q:' and tonumber(fields[i + 1]) > 0 then
    orgs[#orgs + 1] = string.sub(name, 3)
  end
end
local retained = redis.call('ZCARD', KEYS[5]) + redis.call('HLEN', running)
  + (tonumber(redis.call('HGET', account, 'queued')) or 0)
return {requeued, failed, orgs, retained}
