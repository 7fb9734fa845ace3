-- enqueue.lua: queue a batch of async tasks of one org, each accepted or refused alone.
-- Nothing is held at creation; a task is checked against the account as it stands (status,
-- enterprise-only routes, available credits) and its idempotency key against the tasks the
-- account retains.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] org queue      gw:{acct:<A>}:queue:<O>   zset, member = task id, score =
--                        (10 - priority) * 10^13 + sequence: lowest first = highest priority,
--                        then first in first out
-- KEYS[3] org tasks      gw:{acct:<A>}:tasks:<O>   zset, member = task id, score = sequence
--                        (the newest-first listing)
-- KEYS[4] idempotency    gw:{acct:<A>}:taskidem    hash, sha256(idempotencyKey) -> task id
-- ARGV[1] key prefix of the account, "gw:{acct:<A>}:" (task hashes are named from it)
-- ARGV[2] org id
-- ARGV[3] now, epoch milliseconds
-- ARGV[4] n, the number of tasks; then 10 values per task:
--         id, task type, route, priority (1..10), price (credits), "1" if the route is
--         enterprise-only, sha256 of the idempotency key or "", the idempotency key or "",
--         webhook URL or "", payload (JSON)
--
-- Returns {code, r1, r2, ... rn}
--   code: "OK" | "RENEW" (the cycle has ended: renew the account, then call again; nothing
--         was written)
--   ri:   "OK" | "SUBSCRIPTION_INACTIVE" | "INSUFFICIENT_PERMISSIONS"
--         | "INSUFFICIENT_CREDITS:<available credits>" | "DUPLICATE:<task id>"

local account, queue, listing, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, org, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local f = redis.call('HMGET', account, 'status', 'kind', 'allocation', 'used', 'held',
  'overage', 'cycle_end')
if tonumber(f[7]) and tonumber(now) >= tonumber(f[7]) then
  return {'RENEW'}
end
local active = f[1] == 'active' or f[1] == 'canceling'
local available = (tonumber(f[3]) or 0) - (tonumber(f[4]) or 0) - (tonumber(f[5]) or 0)
local public = f[6] ~= '1'

local out = {'OK'}
local accepted = 0
local seq = redis.call('HINCRBY', account, 'task_seq', n) - n
for i = 0, n - 1 do
  local a = 5 + i * 10
  local id, kind, route, priority, price = ARGV[a], ARGV[a + 1], ARGV[a + 2],
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local idem_hash = ARGV[a + 6]
  local earlier = idem_hash ~= '' and redis.call('HGET', idem, idem_hash)
  if not active then
    out[#out + 1] = 'SUBSCRIPTION_INACTIVE'
  elseif ARGV[a + 5] == '1' and f[2] ~= 'enterprise' then
    out[#out + 1] = 'INSUFFICIENT_PERMISSIONS'
  elseif public and price > available then
    out[#out + 1] = 'INSUFFICIENT_CREDITS:' .. string.format('%d', math.max(available, 0))
  elseif earlier then
    out[#out + 1] = 'DUPLICATE:' .. earlier
  else
    seq = seq + 1
    local score = (10 - priority) * 1e13 + seq
    local fields = {'org_id', org, 'type', kind, 'route', route, 'priority', priority,
      'price', price, 'created_at', now, 'score', string.format('%d', score),
      'payload', ARGV[a + 9], 'status', 'QUEUED', 'attempts', 0, 'webhook_url', ARGV[a + 8]}
    if idem_hash ~= '' then
      redis.call('HSET', idem, idem_hash, id)
      fields[#fields + 1] = 'idem_hash'
      fields[#fields + 1] = idem_hash
      fields[#fields + 1] = 'idem_key'
      fields[#fields + 1] = ARGV[a + 7]
    end
    redis.call('HSET', prefix .. 'task:' .. id, unpack(fields))
    redis.call('ZADD', queue, score, id)
    redis.call('ZADD', listing, seq, id)
    accepted = accepted + 1
    out[#out + 1] = 'OK'
  end
end
if accepted > 0 then
  redis.call('HINCRBY', account, 'q:' .. org, accepted)
  redis.call('HINCRBY', account, 'queued', accepted)
end
return out
