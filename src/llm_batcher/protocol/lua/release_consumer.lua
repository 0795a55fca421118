-- RELEASE_CONSUMER: hand every task a gone worker holds to the group, then forget the worker.
-- KEYS[1] tasks stream, KEYS[2] live workers, KEYS[3] idle workers, KEYS[4] read turn
-- ARGV[1] consumer (the gone worker), ARGV[2] consumer to move its entries to, ARGV[3] most
-- entries to move at a time
-- Returns the number of entries moved.
-- The entries move first, marked idle since the epoch (XCLAIM ... TIME 0), so that any worker's
-- next takeover (XAUTOCLAIM with a lease as min-idle) takes them at once; only then does the
-- consumer go: XGROUP DELCONSUMER drops the entries it still holds, which would never be
-- delivered again. Each round moves at least one entry out of its pending list, so the loop ends.
local moved = 0
while true do
  local pending = redis.pcall('XPENDING', KEYS[1], WORKER_GROUP, '-', '+', ARGV[3], ARGV[1])
  if type(pending) ~= 'table' or pending.err or #pending == 0 then break end
  local args = {KEYS[1], WORKER_GROUP, ARGV[2], 0}
  for _, entry in ipairs(pending) do table.insert(args, entry[1]) end
  table.insert(args, 'TIME')
  table.insert(args, 0)
  table.insert(args, 'JUSTID')  -- JUSTID: the delivery count stays (attempts are counted by START)
  redis.call('XCLAIM', unpack(args))
  moved = moved + #pending
end
redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], WORKER_GROUP, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return moved
