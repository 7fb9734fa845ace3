-- admit.lua: take one request into an organization in one atomic step.
--   1. reclaim the org's expired leases and release their holds,
--   2. count the request in the account's per-second rate window,
--   3. take a concurrency lease for the org,
--   4. hold the request's price against the account's credits.
-- A refused request changes nothing but the rate window and the reclaims.
-- Loaded after lease.lua (reclaim_expired, take_lease), which dispatch.lua shares.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] org leases     gw:{acct:<A>}:leases:<O>   zset, member = request id, score = expiry (ms)
-- KEYS[3] holds          gw:{acct:<A>}:holds        hash, request id -> "<credits>:<cycle start ms>"
-- KEYS[4] idempotency    gw:{acct:<A>}:idem:<O>:<sha256 of the client's Idempotency-Key>
--                        hash {state: inflight|done, hash, request, response}; unused without a key
-- KEYS[5] reclaimed      gw:{acct:<A>}:reclaimed    zset, member = request id, score = reclaim
--                        time (ms): admitted, reclaimed before it settled (see settle.lua)
-- ARGV[1] request id
-- ARGV[2] org id
-- ARGV[3] key id (must still be active on the account: revocation is immediate)
-- ARGV[4] now, epoch milliseconds
-- ARGV[5] lease time to live, milliseconds
-- ARGV[6] price in credits (integer >= 0), or -1 for an unmetered route: no lease, no hold
-- ARGV[7] "1" when the route is enterprise-only
-- ARGV[8] the account's pricing version the price was computed with
-- ARGV[9] hash of the request (method, path, body) when it carries an Idempotency-Key, else ""
-- ARGV[10] how long an in-flight idempotency record lives, seconds (the request's longest
--          possible life: if its process dies, the key frees itself after this)
-- ARGV[11] how long a reclaimed request is remembered, milliseconds (longer than a spooled
--          settlement waits to be replayed)
--
-- Returns {code, rps_limit, rps_remaining, conc_limit, conc_current, credits_remaining, reclaimed}
--   and, when admitted with a hold, an 8th value: the cycle start (ms) the hold belongs to.
--   code: "OK" | "INVALID_API_KEY" | "SUBSCRIPTION_INACTIVE" | "INSUFFICIENT_PERMISSIONS"
--         | "RATE_LIMIT_EXCEEDED" | "CONCURRENT_LIMIT_EXCEEDED" | "INSUFFICIENT_CREDITS"
--         | "RENEW"   the cycle has ended: renew the account, then admit again
--         | "REPRICE" the account's prices changed (contract): price again, then admit again
--         | "REPLAY"  the same Idempotency-Key and request succeeded before: serve its response
--         | "IDEMPOTENCY_IN_FLIGHT" | "IDEMPOTENCY_MISMATCH"  the key is busy / used for another
--           request
--   conc_current counts this request when admitted; credits_remaining is after the hold
--   (allocation - used - held, negative for an enterprise account in overage).

local account, leases, holds = KEYS[1], KEYS[2], KEYS[3]
local request_id, org, key = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local price = tonumber(ARGV[6])

local f = redis.call('HMGET', account, 'status', 'kind', 'allocation', 'used', 'held', 'rps',
  'rate_sec', 'rate_count', 'overage', 'cycle_start', 'org:' .. org .. ':limit', 'key:' .. key,
  'cycle_end', 'pv')
if not f[1] or not f[12] or not f[11] then
  return {'INVALID_API_KEY', 0, 0, 0, 0, 0, 0}
end
local allocation, used, held = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
local rps, cycle_start, limit = tonumber(f[6]), f[10], tonumber(f[11])
local remaining = allocation - used - held

if f[1] ~= 'active' and f[1] ~= 'canceling' then
  return {'SUBSCRIPTION_INACTIVE', rps, rps, limit, 0, remaining, 0}
end
if now >= tonumber(f[13]) then
  return {'RENEW', rps, rps, limit, 0, remaining, 0}
end
if (f[14] or '0') ~= ARGV[8] then
  return {'REPRICE', rps, rps, limit, 0, remaining, 0}
end
if ARGV[7] == '1' and f[2] ~= 'enterprise' then
  return {'INSUFFICIENT_PERMISSIONS', rps, rps, limit, 0, remaining, 0}
end

-- A retried request with an Idempotency-Key: decided before it costs rate, a slot or credits.
local idempotent = ARGV[9] ~= ''
if idempotent then
  local record = redis.call('HMGET', KEYS[4], 'state', 'hash')
  if record[1] then
    if record[2] ~= ARGV[9] then
      return {'IDEMPOTENCY_MISMATCH', rps, rps, limit, 0, remaining, 0}
    end
    if record[1] ~= 'done' then
      return {'IDEMPOTENCY_IN_FLIGHT', rps, rps, limit, 0, remaining, 0}
    end
    return {'REPLAY', rps, rps, limit, 0, remaining, 0}
  end
end

-- 1. Leases not renewed in time belong to dead processes (lease.lua).
local reclaimed, released = reclaim_expired(leases, holds, KEYS[5], now, cycle_start,
  tonumber(ARGV[11]))
if reclaimed > 0 then
  held = held - released
  remaining = allocation - used - held
end

-- The account's counters change in one HSET per outcome: every redis.call costs the script
-- about as much as the command itself. `held` is rewritten as read (or less what was
-- reclaimed); nothing else can touch it while the script runs.
local function save(...)
  redis.call('HSET', account, 'held', string.format('%d', held), ...)
end

-- 2. Fixed one-second window, shared by every org of the account.
local second = math.floor(now / 1000)
local count = 0
if tonumber(f[7]) == second then count = tonumber(f[8]) end
if count >= rps then
  if released > 0 then save() end
  return {'RATE_LIMIT_EXCEEDED', rps, 0, limit, 0, remaining, reclaimed}
end
count = count + 1
if price < 0 then
  save('rate_sec', second, 'rate_count', count)
  return {'OK', rps, rps - count, limit, 0, remaining, reclaimed}
end

-- 3. Concurrency lease.
local current = redis.call('ZCARD', leases)
if current >= limit then
  save('rate_sec', second, 'rate_count', count)
  return {'CONCURRENT_LIMIT_EXCEEDED', rps, rps - count, limit, current, remaining, reclaimed}
end

-- 4. Credit hold; enterprise contracts with overage are never refused for credits.
if price > remaining and f[9] ~= '1' then
  save('rate_sec', second, 'rate_count', count)
  return {'INSUFFICIENT_CREDITS', rps, rps - count, limit, current, remaining, reclaimed}
end
take_lease(leases, holds, request_id, now, ttl, price, cycle_start)
if idempotent then
  redis.call('HSET', KEYS[4], 'state', 'inflight', 'hash', ARGV[9], 'request', request_id)
  redis.call('EXPIRE', KEYS[4], ARGV[10])
end
held = held + price
save('rate_sec', second, 'rate_count', count)
return {'OK', rps, rps - count, limit, current + 1, allocation - used - held, reclaimed,
  cycle_start}
