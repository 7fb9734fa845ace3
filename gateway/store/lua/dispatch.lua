-- dispatch.lua: give an org's free concurrency slots to what waits for them, in one atomic
-- step: first the sync requests waiting for a slot (first come first served), then queued
-- async tasks (highest priority first, then first in first out). Each entry is admitted by
-- the rules of admit.lua (lease.lua's lease and hold): a waiter's admission is decided here
-- on its behalf; a task's lease is taken and it becomes PROCESSING. Entries that can never
-- run (subscription inactive, credits short) are decided too: a waiter is told, a task FAILS.
-- With a waiter to add (`join`), the request joins the line first (at most ARGV[9] waiting).
--
-- Loaded after lease.lua and tasks.lua.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] org leases     gw:{acct:<A>}:leases:<O>
-- KEYS[3] holds          gw:{acct:<A>}:holds
-- KEYS[4] reclaimed      gw:{acct:<A>}:reclaimed
-- KEYS[5] org queue      gw:{acct:<A>}:queue:<O>     see enqueue.lua
-- KEYS[6] org waiting    gw:{acct:<A>}:waiting:<O>   zset, member = request id, score = arrival
-- KEYS[7] waiters        gw:{acct:<A>}:waiters       hash, request id -> the waiter's record:
--                        "W|<channel>|<key id>|<price>|<pricing version>|<sha256 of its
--                        Idempotency-Key>|<hash of the request>|<idempotency ttl s>|<deadline ms>" (the
--                        idempotency fields empty without a key) while it waits, "A|<admission>"
--                        once decided
-- KEYS[8] running        gw:{acct:<A>}:running       hash, task id -> org id (PROCESSING)
-- KEYS[9] finished       gw:{acct:<A>}:finished      see tasks.lua
-- KEYS[10] outbox        gw:{acct:<A>}:outbox        see tasks.lua
-- ARGV[1] key prefix of the account, "gw:{acct:<A>}:"
-- ARGV[2] org id
-- ARGV[3] now, epoch milliseconds
-- ARGV[4] lease time to live, milliseconds
-- ARGV[5] how long a reclaimed request is remembered, milliseconds (as admit.lua)
-- ARGV[6] at most this many tasks to start (0: a draining process starts none)
-- ARGV[7] request id of a sync request that joins the line now, or ""
-- ARGV[8] its record ("W|..." as above), or ""
-- ARGV[9] the most sync requests of one org that may wait at once
--
-- Returns {code, reclaimed, decided, started, failed}
--   code: "OK" | "RENEW" (the cycle has ended: renew, then call again; nothing decided)
--         | "FULL" (the joining request finds the line full; nothing written)
--   reclaimed: expired leases freed
--   decided: waiters decided, flat: request id, channel, admission "<code>|<rps limit>|
--            <rps remaining>|<concurrency limit>|<concurrency current>|<credits remaining>|
--            <cycle start ms>" (the joining request may be among them)
--   started: tasks now PROCESSING, flat: id, attempt, route, price, cycle start ms, payload,
--            task type
--   failed: tasks that FAILED here, flat: id, task type, error code, webhook due (0/1)

local account, leases, holds = KEYS[1], KEYS[2], KEYS[3]
local queue, waiting, waiters = KEYS[5], KEYS[6], KEYS[7]
local prefix, org = ARGV[1], ARGV[2]
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_tasks = tonumber(ARGV[6])

local f = redis.call('HMGET', account, 'status', 'allocation', 'used', 'held', 'rps',
  'overage', 'cycle_start', 'org:' .. org .. ':limit', 'cycle_end', 'pv', 'q:' .. org)
if not f[1] or not f[8] then
  return {'OK', 0, {}, {}, {}}
end
if now >= tonumber(f[9]) then
  return {'RENEW', 0, {}, {}, {}}
end

if ARGV[7] ~= '' then
  if redis.call('ZCARD', waiting) >= tonumber(ARGV[9]) then
    return {'FULL', 0, {}, {}, {}}
  end
  local seq = redis.call('HINCRBY', account, 'wait_seq', 1)
  redis.call('ZADD', waiting, seq, ARGV[7])
  redis.call('HSET', waiters, ARGV[7], ARGV[8])
  f[11] = (tonumber(f[11]) or 0) + 1
end

local active = f[1] == 'active' or f[1] == 'canceling'
local allocation, used, held = tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
local rps, overage, cycle_start, limit = tonumber(f[5]), f[6] == '1', f[7], tonumber(f[8])
local queued = tonumber(f[11]) or 0

local reclaimed, released = reclaim_expired(leases, holds, KEYS[4], now, cycle_start,
  tonumber(ARGV[5]))
held = held - released
local current = redis.call('ZCARD', leases)
local decided, started, failed = {}, {}, {}
local tasks_left = redis.call('ZCARD', queue)
local tasks_taken = 0

local function decide(id, record, code, conc_current)
  local admission = string.format('%s|%d|%d|%d|%d|%d|%s', code, rps, rps, limit,
    conc_current, allocation - used - held, code == 'OK' and cycle_start or '0')
  redis.call('ZREM', waiting, id)
  redis.call('HSET', waiters, id, 'A|' .. admission)
  queued = queued - 1
  decided[#decided + 1] = id
  decided[#decided + 1] = record[2]
  decided[#decided + 1] = admission
end

-- 1. Sync requests waiting for a slot, first come first served.
while true do
  local head = redis.call('ZRANGE', waiting, 0, 0)[1]
  if not head then break end
  local raw = redis.call('HGET', waiters, head) or ''
  local record = {}
  for part in string.gmatch(raw, '([^|]*)|?') do record[#record + 1] = part end
  if record[1] ~= 'W' or now > tonumber(record[9]) then
    -- Decided already, or past its deadline (its process died while it waited): the
    -- request is not waiting any more.
    redis.call('ZREM', waiting, head)
    if record[1] == 'W' then redis.call('HDEL', waiters, head) end
    queued = queued - 1
  elseif redis.call('HEXISTS', account, 'key:' .. record[3]) == 0 then
    decide(head, record, 'INVALID_API_KEY', current)  -- revoked while it waited
  elseif not active then
    decide(head, record, 'SUBSCRIPTION_INACTIVE', current)
  elseif (f[10] or '0') ~= record[5] then
    decide(head, record, 'REPRICE', current)
  else
    local price = tonumber(record[4])
    local idem = record[6] ~= '' and (prefix .. 'idem:' .. org .. ':' .. record[6])
    local busy = idem and redis.call('EXISTS', idem) == 1
    if busy then
      decide(head, record, 'IDEMPOTENCY_IN_FLIGHT', current)
    elseif current >= limit then
      break
    elseif price > allocation - used - held and not overage then
      decide(head, record, 'INSUFFICIENT_CREDITS', current)
    else
      take_lease(leases, holds, head, now, ttl, price, cycle_start)
      if idem then
        redis.call('HSET', idem, 'state', 'inflight', 'hash', record[7], 'request', head)
        redis.call('EXPIRE', idem, record[8])
      end
      held = held + price
      current = current + 1
      decide(head, record, 'OK', current)
    end
  end
end

-- 2. Queued tasks, while slots are free: highest priority first, then oldest first.
while tasks_left > 0 and tasks_taken < max_tasks and current < limit do
  local id = redis.call('ZRANGE', queue, 0, 0)[1]
  redis.call('ZREM', queue, id)
  tasks_left = tasks_left - 1
  queued = queued - 1
  redis.call('HINCRBY', account, 'queued', -1)
  local task = prefix .. 'task:' .. id
  local t = redis.call('HMGET', task, 'price', 'route', 'payload', 'type', 'attempts')
  local price = tonumber(t[1]) or 0
  local code, message
  if not t[2] then
    code = nil  -- deleted meanwhile: nothing to run
  elseif not active then
    code, message = 'SUBSCRIPTION_INACTIVE', 'The subscription is not active'
  elseif price > allocation - used - held and not overage then
    code, message = 'INSUFFICIENT_CREDITS', 'Not enough credits left in this billing cycle'
  end
  if code then
    local due = end_task(task, KEYS[9], KEYS[10], id, 'FAILED', now, 0, '',
      task_error(code, message))
    failed[#failed + 1] = id
    failed[#failed + 1] = t[4]
    failed[#failed + 1] = code
    failed[#failed + 1] = due
  elseif t[2] then
    take_lease(leases, holds, id, now, ttl, price, cycle_start)
    held = held + price
    current = current + 1
    tasks_taken = tasks_taken + 1
    local attempt = tonumber(t[5]) + 1
    redis.call('HSET', task, 'status', 'PROCESSING', 'attempts', attempt, 'started_at', now)
    redis.call('HSET', KEYS[8], id, org)
    for _, v in ipairs({id, attempt, t[2], price, cycle_start, t[3], t[4]}) do
      started[#started + 1] = v
    end
  end
end

redis.call('HSET', account, 'held', string.format('%d', held), 'q:' .. org,
  string.format('%d', queued))
return {'OK', reclaimed, decided, started, failed}
