-- settle.lua: finish one admitted request, once. Idempotent per request id: the hold is the
-- record of an unsettled request, so a second settle (a replay) finds none and changes nothing.
--   release the lease; charge the hold on success or drop it; log the request; bump the
--   hourly and daily aggregates. A hold admitted in an earlier cycle is charged to that cycle and never
--   touches the current cycle's counters (SPEC R7).
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] org leases     gw:{acct:<A>}:leases:<O>
-- KEYS[3] holds          gw:{acct:<A>}:holds
-- KEYS[4] request log    gw:{acct:<A>}:requests      stream, newest last, trimmed to ARGV[8]
-- KEYS[5] usage hours    gw:{acct:<A>}:usage:hd:<day start ms>  hash, the hours of one UTC day:
--                        "<hour start ms>|<route>|<org>|n" / "|c"
-- KEYS[6] usage day      gw:{acct:<A>}:usage:d:<day start ms>   hash "<route>|<org>|n" / "|c"
-- KEYS[7] idempotency    gw:{acct:<A>}:idem:<O>:<key hash>   see admit.lua; unused without a key
-- ARGV[1] request id
-- ARGV[2] org id
-- ARGV[3] now, epoch milliseconds
-- ARGV[4] "1" to turn the hold into a charge, "0" to drop it
-- ARGV[5] route name
-- ARGV[6] HTTP status returned to the client
-- ARGV[7] latency, milliseconds
-- ARGV[8] request log length to keep (approximate)
-- ARGV[9] usage retention, seconds, counted from a bucket's first request per route and org
-- ARGV[10] for a request with an Idempotency-Key: the response to keep for retries (JSON),
--          or "-" to drop the record (the request failed: a retry may run); "" without a key
-- ARGV[11] how long an idempotency record lives, seconds
--
-- Returns {applied, charged, credits_remaining}
--   applied: 1 when this call settled the request, 0 when it was already settled or reclaimed.

local account, leases, holds, log = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local request_id = ARGV[1]

redis.call('ZREM', leases, request_id)
local hold = redis.call('HGET', holds, request_id)
if not hold then
  local f = redis.call('HMGET', account, 'allocation', 'used', 'held')
  return {0, 0, (tonumber(f[1]) or 0) - (tonumber(f[2]) or 0) - (tonumber(f[3]) or 0)}
end
redis.call('HDEL', holds, request_id)

local credits, cycle = string.match(hold, '^(%d+):(%d+)$')
credits = tonumber(credits)
local charged = 0
if ARGV[4] == '1' then charged = credits end

local f = redis.call('HMGET', account, 'allocation', 'used', 'held', 'cycle_start')
local allocation, used, held = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
if cycle == f[4] then
  -- One HSET for both counters (read above, in the same atomic script).
  held = held - credits
  used = used + charged
  redis.call('HSET', account, 'held', string.format('%d', held), 'used', string.format('%d', used))
end

if ARGV[10] ~= '' and redis.call('HGET', KEYS[7], 'request') == request_id then
  if ARGV[10] == '-' then
    redis.call('DEL', KEYS[7])
  else
    redis.call('HSET', KEYS[7], 'state', 'done', 'response', ARGV[10])
    redis.call('EXPIRE', KEYS[7], ARGV[11])
  end
end

redis.call('XADD', log, 'MAXLEN', '~', ARGV[8], '*', 'id', request_id, 'time', ARGV[3],
  'route', ARGV[5], 'org', ARGV[2], 'status', ARGV[6], 'credits', charged, 'latency_ms', ARGV[7])
local field = ARGV[5] .. '|' .. ARGV[2]
local now = tonumber(ARGV[3])
local hour = string.format('%d', now - now % 3600000)
for _, bucket in ipairs({{KEYS[5], hour .. '|' .. field}, {KEYS[6], field}}) do
  local usage, name = bucket[1], bucket[2]
  -- Retention starts at the bucket's first request of each route and org, not at every
  -- request: at most a day's difference on 400 days, for one command less per request.
  if redis.call('HINCRBY', usage, name .. '|n', 1) == 1 then
    redis.call('EXPIRE', usage, ARGV[9])
  end
  if charged > 0 then redis.call('HINCRBY', usage, name .. '|c', charged) end
end
return {1, charged, allocation - used - held}
