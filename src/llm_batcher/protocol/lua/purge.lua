-- PURGE: delete dead letters: their task hash, result stream and index entry.
-- KEYS[1] dead-letter index, then each task's hash and result stream (KEYS[2i], KEYS[2i+1])
-- ARGV the task ids, in the order of their KEYS
-- Returns how many of them were dead letters Redis still knew (one requeued meanwhile is left).
local purged = 0
for i, task_id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], task_id) == 1 then
    purged = purged + redis.call('DEL', KEYS[2 * i])
    redis.call('DEL', KEYS[2 * i + 1])
  end
end
return purged
