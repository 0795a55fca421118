-- TAKE_OVER: take over the tasks of dead workers, and forget each one once it holds none
-- (beats.lua prepended).
-- KEYS[1] tasks stream, KEYS[2] heartbeats, KEYS[3] live workers, KEYS[4] idle workers
-- ARGV[1] taker (a consumer of the group), ARGV[2] most entries to take, ARGV[3] silence_ms,
-- ARGV[4] idle_ms the taken entries are left with (0: the taker runs them; above the lease: any
-- worker's next reclaim takes them), ARGV[5..] workers known to be dead (none: the workers whose
-- heartbeat is older than silence_ms)
-- Returns {{entry id, task id, ...}, {dead worker, ...}}.
local now = beats_now_ms()
local silence = tonumber(ARGV[3])
local dead = {}
if #ARGV > 4 then
  for i = 5, #ARGV do dead[#dead + 1] = ARGV[i] end
else
  if not may_judge(KEYS[2], ARGV[1], now, silence) then return {{}, {}} end
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local other = beat(all[i + 1])
    if all[i] ~= ARGV[1] and (not other or now - other > silence) then dead[#dead + 1] = all[i] end
  end
end

local count = tonumber(ARGV[2])
local taken, gone = {}, {}
for _, worker in ipairs(dead) do
  local room = count - #taken / 2
  if room <= 0 then break end
  local pending = redis.call('XPENDING', KEYS[1], WORKER_GROUP, '-', '+', room, worker)
  if #pending > 0 then
    local args = {'XCLAIM', KEYS[1], WORKER_GROUP, ARGV[1], 0}
    for _, p in ipairs(pending) do args[#args + 1] = p[1] end
    args[#args + 1] = 'IDLE'
    args[#args + 1] = ARGV[4]
    -- Entries deleted from the stream (their task ended) leave the pending list here unreturned.
    local claimed = redis.call(unpack(args))
    for _, entry in ipairs(claimed) do
      local fields = entry[2]
      if fields then
        for j = 1, #fields, 2 do
          if fields[j] == 'task_id' then
            taken[#taken + 1] = entry[1]
            taken[#taken + 1] = fields[j + 1]
          end
        end
      end
    end
  end
  if #redis.call('XPENDING', KEYS[1], WORKER_GROUP, '-', '+', 1, worker) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], WORKER_GROUP, worker)
    redis.call('HDEL', KEYS[2], worker)
    redis.call('ZREM', KEYS[3], worker)
    redis.call('ZREM', KEYS[4], worker)
  end
  gone[#gone + 1] = worker
end
return {taken, gone}
