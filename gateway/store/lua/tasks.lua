-- tasks.lua: an async task's terminal transition, the one definition every script that ends a
-- task uses (finish.lua, cancel.lua, dispatch.lua, sweep.lua; scripts.py prepends this chunk).
--
-- A task hash (gw:{acct:<A>}:task:<id>) moves QUEUED -> PROCESSING -> COMPLETED | FAILED; only
-- the last two are final. Ending a task also files it for deletion after retention (the
-- finished zset, scored by completion time, ms) and, when it has a webhook URL, puts it in the
-- account's outbox (score = now, ms: due at once) with webhook_state=pending and
-- webhook_attempts=0, in the same script: the webhooks side delivers from there.
-- Returns 1 when a webhook is due, else 0.
local function end_task(task, finished, outbox, id, status, now, charged, response, err)
  redis.call('HSET', task, 'status', status, 'completed_at', now, 'charged', charged)
  if response ~= '' then redis.call('HSET', task, 'response', response) end
  if err ~= '' then redis.call('HSET', task, 'error', err) end
  redis.call('ZADD', finished, now, id)
  local url = redis.call('HGET', task, 'webhook_url')
  if url and url ~= '' then
    redis.call('HSET', task, 'webhook_state', 'pending', 'webhook_attempts', 0)
    redis.call('ZADD', outbox, now, id)
    return 1
  end
  return 0
end

-- The error object of a FAILED task's response, as JSON (codes and messages are the
-- scripts' own constants: nothing to escape).
local function task_error(code, message)
  return '{"code":"' .. code .. '","message":"' .. message .. '"}'
end

