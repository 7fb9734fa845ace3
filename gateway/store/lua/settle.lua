-- settle.lua: settle one admitted request (the body is settlement.lua's settle_request, which
-- scripts.py prepends; its header documents KEYS, ARGV and the reply).
--
-- KEYS[1..9], ARGV[1..13] as settlement.lua's K and A.
-- Returns {applied, charged, credits_remaining, queued}.

return settle_request(KEYS, ARGV)
