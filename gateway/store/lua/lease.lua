-- lease.lua: the concurrency lease and the credit hold, one definition for admit.lua and
-- dispatch.lua (scripts.py prepends this chunk to both when it loads them), so that a sync
-- request and a queued entry are admitted by the same rules.
--
-- A lease is a member of the org's lease zset scored by its expiry (ms); a hold is a field of
-- the account's holds hash, "<credits>:<cycle start ms>". Callers keep `held` themselves and
-- write it back once (every redis.call costs about as much as the command itself).

-- Leases not renewed in time belong to dead processes: free the slot and the credits. A live
-- process cut off from the store for longer than the TTL may still settle (from its spool):
-- remember the request as reclaimed, so that settle lands its charge exactly once.
-- Returns (leases reclaimed, credits released from the current cycle's `held`).
local function reclaim_expired(leases, holds, reclaimed, now, cycle_start, memory_ms)
  local count, released = 0, 0
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, id in ipairs(expired) do
    local hold = redis.call('HGET', holds, id)
    if hold then
      local credits, cycle = string.match(hold, '^(%d+):(%d+)$')
      if cycle == cycle_start then released = released + tonumber(credits) end
      redis.call('HDEL', holds, id)
      redis.call('ZADD', reclaimed, now, id)
    end
    count = count + 1
  end
  if count > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', reclaimed, '-inf', now - memory_ms)
    redis.call('PEXPIRE', reclaimed, memory_ms)
  end
  return count, released
end

-- Take one slot for `id` until now + ttl and hold `price` credits of the cycle `cycle_start`.
local function take_lease(leases, holds, id, now, ttl, price, cycle_start)
  redis.call('ZADD', leases, now + ttl, id)
  redis.call('HSET', holds, id, string.format('%d', price) .. ':' .. cycle_start)
end

