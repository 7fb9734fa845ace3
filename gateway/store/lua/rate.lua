-- rate.lua: count one customer-API call (SPEC 6) in the account's per-second rate window, the
-- very window admit.lua keeps (fields rate_sec and rate_count of the account hash), so proxied
-- requests and customer-API calls share one budget. For a subscription change (plan change,
-- cancel, reactivation) also take one of the account's changes of the last hour.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] changes        gw:{acct:<A>}:changes   zset, member = request id, score = when (ms);
--                        unused unless ARGV[4] > 0
-- ARGV[1] key id (must still be active on the account: revocation is immediate)
-- ARGV[2] now, epoch milliseconds
-- ARGV[3] request id (the change's member; the caller removes it if the change fails)
-- ARGV[4] subscription changes allowed per rolling hour, or 0 for a call that changes nothing
--
-- Returns {code, rps_limit, rps_remaining, retry_after_s}
--   code: "OK" | "INVALID_API_KEY" | "RATE_LIMIT_EXCEEDED" | "CHANGE_LIMIT_EXCEEDED"
--   retry_after_s: whole seconds until the call could succeed (0 when admitted)
-- A call refused by the rate window changes nothing; one refused by the change cap still
-- counts in the rate window (it was a call).

local account, changes = KEYS[1], KEYS[2]
local now = tonumber(ARGV[2])
local cap = tonumber(ARGV[4])
local hour = 3600000

local f = redis.call('HMGET', account, 'rps', 'rate_sec', 'rate_count', 'key:' .. ARGV[1])
if not f[1] or not f[4] then
  return {'INVALID_API_KEY', 0, 0, 0}
end
local rps = tonumber(f[1])

-- The fixed one-second window of admit.lua, step 2: keep the two in step.
local second = math.floor(now / 1000)
local count = 0
if tonumber(f[2]) == second then count = tonumber(f[3]) end
if count >= rps then
  return {'RATE_LIMIT_EXCEEDED', rps, 0, 1}
end
count = count + 1
redis.call('HSET', account, 'rate_sec', second, 'rate_count', count)

if cap > 0 then
  -- A rolling hour: changes older than an hour leave the log.
  redis.call('ZREMRANGEBYSCORE', changes, '-inf', now - hour)
  if redis.call('ZCARD', changes) >= cap then
    local oldest = redis.call('ZRANGE', changes, 0, 0, 'WITHSCORES')
    local wait = math.ceil((tonumber(oldest[2]) + hour - now) / 1000)
    return {'CHANGE_LIMIT_EXCEEDED', rps, rps - count, math.max(wait, 1)}
  end
  redis.call('ZADD', changes, now, ARGV[3])
  redis.call('PEXPIRE', changes, hour)
end
return {'OK', rps, rps - count, 0}
