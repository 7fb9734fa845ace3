-- apply.lua: apply one billing transition atomically, or not at all (compare-and-set).
-- The gateway computes a transition (renewal, plan change, cancel, contract ...) from a state it
-- read; this script applies it only if the account has not changed since, so however many
-- processes race on one account, exactly one transition of that state lands.
--
-- KEYS[1] account hash   gw:{acct:<A>}:account
-- KEYS[2] billing list   gw:{acct:<A>}:billing      append-only JSON entries, oldest first
-- ARGV[1] expected `version` of the account (integer as text)
-- ARGV[2] expected `used` credits, or "" when the transition does not depend on usage
-- ARGV[3] n, the number of field/value pairs that follow
-- ARGV[4 .. 3+2n] field, value, field, value ...
-- ARGV[4+2n ..]   billing entries (JSON text) to append
--
-- Returns 1 when applied (version incremented), 0 when the account changed meanwhile.

local account, billing = KEYS[1], KEYS[2]
local state = redis.call('HMGET', account, 'version', 'used')
if (state[1] or '0') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and (state[2] or '0') ~= ARGV[2] then return 0 end

local n = tonumber(ARGV[3])
for i = 4, 3 + 2 * n, 2 do
  redis.call('HSET', account, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', account, 'version', 1)
for i = 4 + 2 * n, #ARGV do
  redis.call('RPUSH', billing, ARGV[i])
end
return 1
