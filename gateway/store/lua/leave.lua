-- leave.lua: a sync request stops waiting for a slot (its deadline passed, its client hung
-- up, or it was told its turn came). If it is still in line it leaves it; if its turn was
-- decided meanwhile (dispatch.lua), the decision is handed back, so that a slot taken on its
-- behalf is used or released, never lost.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] org waiting    gw:{acct:<A>}:waiting:<O>   see dispatch.lua
-- KEYS[3] waiters        gw:{acct:<A>}:waiters       see dispatch.lua
-- ARGV[1] request id
-- ARGV[2] org id
--
-- Returns {"LEFT"} (it was still waiting) | {"DECIDED", "<admission>"} | {"NONE"}

if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'q:' .. ARGV[2], -1)
  return {'LEFT'}
end
local record = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if record and string.sub(record, 1, 2) == 'A|' then
  return {'DECIDED', string.sub(record, 3)}
end
return {'NONE'}
