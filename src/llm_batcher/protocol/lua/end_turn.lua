-- END_TURN: end the read turn if this worker still holds it.
-- KEYS[1] read turn
-- ARGV[1] worker
-- Returns 1 if it ended the turn, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
