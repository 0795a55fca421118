-- RENEW: keep holding the entries this consumer still holds, by resetting their idle time.
-- KEYS[1] tasks stream
-- ARGV[1] consumer, ARGV[2..] entry ids
-- Returns the ids it no longer holds (acknowledged, or taken over after its lease ran out).
local lost = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], WORKER_GROUP, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[1] then
    redis.call('XCLAIM', KEYS[1], WORKER_GROUP, ARGV[1], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
