-- ABORT: end a task with an error if it is in one of the given states (ending.lua prepended).
-- Cancel: queued. Deadline: queued or running.
-- KEYS[1] task hash, KEYS[2] result stream, KEYS[3] tasks stream, KEYS[4] dead-letter stream,
-- KEYS[5] dead-letter index, KEYS[6] stats
-- ARGV[1] states (comma-separated), ARGV[2] code, ARGV[3] data (JSON), ARGV[4] ttl_ms,
-- ARGV[5] task_id, ARGV[6] stats_window_ms
-- Returns 1 if it ended the task, else 0.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not string.find(',' .. ARGV[1] .. ',', ',' .. state .. ',', 1, true) then
  return 0
end
finish(KEYS[1], ARGV[5], KEYS[2], KEYS[3], STATE_ERROR, ARGV[2], ARGV[3], ARGV[4])
return 1
