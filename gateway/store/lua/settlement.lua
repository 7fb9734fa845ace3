-- settlement.lua: finish one admitted request, once. Idempotent per request id: an unsettled
-- request is either held (its hold) or reclaimed (its lease expired first: admit.lua moved it
-- to the reclaimed set); settling removes it from there, so a second settle (a replay) finds
-- neither and changes nothing.
--   release the lease; charge the request on success or drop its hold; log the request; bump
--   the hourly and daily aggregates. A request admitted in an earlier cycle is charged to that
--   cycle and never touches the current cycle's counters (SPEC R7); when that closed cycle is
--   an enterprise cycle with overage, the charge bills its overage difference (SPEC R8).
--
-- K[1] account hash   gw:{acct:<A>}:account
-- K[2] org leases     gw:{acct:<A>}:leases:<O>
-- K[3] holds          gw:{acct:<A>}:holds
-- K[4] request log    gw:{acct:<A>}:requests      stream, newest last, trimmed to ARGV[8]
-- K[5] usage hours    gw:{acct:<A>}:usage:hd:<day start ms>  hash, the hours of one UTC day:
--                        "<hour start ms>|<route>|<org>|n" / "|c"
-- K[6] usage day      gw:{acct:<A>}:usage:d:<day start ms>   hash "<route>|<org>|n" / "|c"
-- K[7] idempotency    gw:{acct:<A>}:idem:<O>:<key hash>   see admit.lua; unused without a key
-- K[8] reclaimed      gw:{acct:<A>}:reclaimed    see admit.lua
-- K[9] billing list   gw:{acct:<A>}:billing      a late overage entry is appended here
-- A[1] request id
-- A[2] org id
-- A[3] now, epoch milliseconds
-- A[4] "1" to turn the hold into a charge, "0" to drop it
-- A[5] route name
-- A[6] HTTP status returned to the client
-- A[7] latency, milliseconds
-- A[8] request log length to keep (approximate)
-- A[9] usage retention, seconds, counted from a bucket's first request per route and org
-- A[10] for a request with an Idempotency-Key: the response to keep for retries (JSON),
--          or "-" to drop the record (the request failed: a retry may run); "" without a key
-- A[11] how long an idempotency record lives, seconds
-- A[12] the price the request was admitted with, credits: charged when it was reclaimed
-- A[13] the cycle start (ms) it was admitted in, for the same case
--
-- The account field `closed` (written by a renewal, see billing/changes.py) describes the cycle
-- that renewal closed, "<start>:<end>:<due>:<allocation>:<used>:<rate>" (ms, credits, cents per
-- 1000 credits), present only for a contract with overage.
--
-- settle_request(K, A) takes the KEYS and ARGV of settle.lua (K and A below); finish.lua
-- (an async task's end) calls it too.
--
-- Returns {applied, charged, credits_remaining, queued}
--   applied: 1 when this call settled the request, 0 when it was already settled (or never
--   admitted, or reclaimed so long ago that it was forgotten).
--   queued: the org's waiting sync requests and queued tasks (account field q:<org>), so the
--   caller knows, without another round trip, whether the slot it freed is wanted.

-- ISO 8601 UTC of epoch milliseconds, as gateway.clock.iso writes it (days to civil date:
-- Howard Hinnant's algorithm).
local function iso(ms)
  local seconds = math.floor(ms / 1000)
  local z = math.floor(seconds / 86400) + 719468
  local of_day = seconds % 86400
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day,
    math.floor(of_day / 3600), math.floor(of_day % 3600 / 60), of_day % 60, ms % 1000)
end

-- A closed cycle's overage in cents: credits x rate / 1000, rounded half up (SPEC R8).
local function cents(over, rate)
  return math.floor((2 * over * rate + 1000) / 2000)
end

local function settle_request(K, A)
  local account, leases, holds, log = K[1], K[2], K[3], K[4]
  local request_id = A[1]

  redis.call('ZREM', leases, request_id)
  local credits, cycle
  local hold = redis.call('HGET', holds, request_id)
  if hold then
    redis.call('HDEL', holds, request_id)
    credits, cycle = string.match(hold, '^(%d+):(%d+)$')
    credits = tonumber(credits)
  elseif redis.call('ZREM', K[8], request_id) == 1 then
    -- Its lease expired before it settled (an outage longer than the TTL): the reclaim released
    -- its credits, and what the order says is what the client was told.
    credits, cycle = tonumber(A[12]), A[13]
  else
    local f = redis.call('HMGET', account, 'allocation', 'used', 'held', 'q:' .. A[2])
    return {0, 0, (tonumber(f[1]) or 0) - (tonumber(f[2]) or 0) - (tonumber(f[3]) or 0),
      tonumber(f[4]) or 0}
  end
  local charged = 0
  if A[4] == '1' then charged = credits end

  -- R8: a late charge of the closed cycle adds its overage difference, so that the cycle's
  -- overage entries always sum to round(final overage x rate).
  local function bill_late_overage()
    local closed = redis.call('HGET', account, 'closed')
    if not closed then return end
    local start, finish, due, allocation, used, rate =
      string.match(closed, '^(%d+):(%d+):(%d+):(%d+):(%d+):(%d+)$')
    if start ~= cycle then return end  -- an older cycle: nothing left to bill it against
    allocation, used, rate = tonumber(allocation), tonumber(used), tonumber(rate)
    local before = math.max(0, used - allocation)
    local after = math.max(0, used + charged - allocation)
    redis.call('HSET', account, 'closed', string.format('%s:%s:%s:%d:%d:%d', start, finish, due,
      allocation, used + charged, rate))
    if after == before then return end
    local over = after - before
    -- The same fields, in the same order, as billing.subscription.Entry.dumps.
    redis.call('RPUSH', K[9], string.format(
      '{"id":"bill_%s","account_id":"%s","type":"overage","occurred_at":"%s",' ..
      '"cycle_start":"%s","cycle_end":"%s","amount_cents":%d,"currency":"usd","credits":%d,' ..
      '"description":"%d credits over the allocation at %d cents per 1000, settled after the ' ..
      'renewal","due_at":"%s"}',
      (string.gsub(request_id, '^req_', '')), redis.call('HGET', account, 'id'),
      iso(tonumber(A[3])), iso(tonumber(start)), iso(tonumber(finish)),
      cents(after, rate) - cents(before, rate), over, over, rate, iso(tonumber(due))))
  end

  local f = redis.call('HMGET', account, 'allocation', 'used', 'held', 'cycle_start',
    'q:' .. A[2])
  local allocation, used, held = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  if cycle == f[4] then
    -- One HSET for both counters (read above, in the same atomic script). A reclaimed request's
    -- credits left `held` when it was reclaimed.
    if hold then held = held - credits end
    used = used + charged
    redis.call('HSET', account, 'held', string.format('%d', held), 'used', string.format('%d', used))
  elseif charged > 0 then
    bill_late_overage()
  end

  if A[10] ~= '' and redis.call('HGET', K[7], 'request') == request_id then
    if A[10] == '-' then
      redis.call('DEL', K[7])
    else
      redis.call('HSET', K[7], 'state', 'done', 'response', A[10])
      redis.call('EXPIRE', K[7], A[11])
    end
  end

  redis.call('XADD', log, 'MAXLEN', '~', A[8], '*', 'id', request_id, 'time', A[3],
    'route', A[5], 'org', A[2], 'status', A[6], 'credits', charged, 'latency_ms', A[7])
  local field = A[5] .. '|' .. A[2]
  local now = tonumber(A[3])
  local hour = string.format('%d', now - now % 3600000)
  for _, bucket in ipairs({{K[5], hour .. '|' .. field}, {K[6], field}}) do
    local usage, name = bucket[1], bucket[2]
    -- Retention starts at the bucket's first request of each route and org, not at every
    -- request: at most a day's difference on 400 days, for one command less per request.
    if redis.call('HINCRBY', usage, name .. '|n', 1) == 1 then
      redis.call('EXPIRE', usage, A[9])
    end
    if charged > 0 then redis.call('HINCRBY', usage, name .. '|c', charged) end
  end
  return {1, charged, allocation - used - held, tonumber(f[5]) or 0}
end
