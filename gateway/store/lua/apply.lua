-- apply.lua: apply one billing transition atomically, or not at all (compare-and-set).
-- The gateway computes a transition (renewal, plan change, cancel, contract ...) from a state it
-- read; this script applies it only if the account has not changed since, so however many
-- processes race on one account, exactly one transition of that state lands.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] billing list   gw:{acct:<A>}:billing      append-only JSON entries, oldest first
-- ARGV[1] expected `version` of the account (integer as text)
-- ARGV[2] expected `used` credits, or "" when the transition does not depend on usage
-- ARGV[3] the allocation (credits) this transition sets, when it must still cover the
--         credits used and held at this moment unless the account may run into overage
--         (`overage` = "1"); "" for no such check. Charges change `used` and `held` without
--         bumping `version`, so only this script can check that atomically.
-- ARGV[4] n, the number of field/value pairs that follow
-- ARGV[5 .. 4+2n] field, value, field, value ...
-- ARGV[5+2n ..]   billing entries (JSON text) to append
--
-- Returns 1 when applied (version incremented), 0 when the account changed meanwhile,
--   -1 when the allocation of ARGV[3] would not cover used + held (nothing written).

local account, billing = KEYS[1], KEYS[2]
local state = redis.call('HMGET', account, 'version', 'used', 'held', 'overage')
if (state[1] or '0') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and (state[2] or '0') ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' and state[4] ~= '1' then
  if tonumber(ARGV[3]) < (tonumber(state[2]) or 0) + (tonumber(state[3]) or 0) then
    return -1
  end
end

local n = tonumber(ARGV[4])
for i = 5, 4 + 2 * n, 2 do
  redis.call('HSET', account, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', account, 'version', 1)
for i = 5 + 2 * n, #ARGV do
  redis.call('RPUSH', billing, ARGV[i])
end
return 1
