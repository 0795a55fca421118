-- APPEND: write tokens of a running attempt and announce them (one message for all of them).
-- KEYS[1] task hash, KEYS[2] result stream
-- ARGV[1] attempt, ARGV[2] now_ms, ARGV[3] first_index, ARGV[4] ttl_ms, ARGV[5..] tokens
-- Writes the tokens from first_index on, skipping those an earlier attempt already wrote.
-- Returns {'ok', tokens now written}, or {why} with why 'fenced', 'not_running' or 'missing'.
local f = redis.call('HMGET', KEYS[1], 'attempt', 'state', 'tokens')
if not f[2] then return {WRITE_MISSING} end
if f[2] ~= STATE_RUNNING then return {WRITE_NOT_RUNNING} end
if f[1] ~= ARGV[1] then return {WRITE_FENCED} end
local written = tonumber(f[3])
local n = written
local index = tonumber(ARGV[3])
if index > n then
  return redis.error_reply('token gap: index ' .. index .. ' after ' .. n .. ' tokens')
end
local texts = {}
for i = 5, #ARGV do
  if index == n then
    redis.call('XADD', KEYS[2], TOKEN_ENTRY_PREFIX .. (n + 1), 'kind', 'token', 'text', ARGV[i])
    texts[#texts + 1] = ARGV[i]
    n = n + 1
  end
  index = index + 1
end
if n > written then
  -- one announcement for the tokens of this call: their first id, and their texts in order
  redis.call('PUBLISH', KEYS[2],
    cjson.encode({id = TOKEN_ENTRY_PREFIX .. (written + 1), kind = 'token', texts = texts}))
  redis.call('HSET', KEYS[1], 'tokens', n)
  redis.call('HSETNX', KEYS[1], 'first_token_ms', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {WRITE_OK, n}
