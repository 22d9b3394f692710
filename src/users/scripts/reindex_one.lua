#!lua
-- Adds one existing user to our indexes, if it still is what the caller read.
-- KEYS: user:<id>, users:email:<email>, users:index, users:by_created, users:by_created_lex
-- ARGV: id, JSON the caller read, created_at in ms, member in users:by_created_lex
-- (the ordered entry is added when users:by_created holds the id at that time; any other case
-- is left to the store's sync of users:by_created_lex, which mirrors users:by_created)
-- Returns {index added (0/1), ordered index added (0/1), email guard: 'added' | 'kept' | owner id}
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[2] then
  return 'changed'
end
local indexed = redis.call('SADD', KEYS[3], ARGV[1])
local ordered = redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[1])
if tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1])) == tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[5], 0, ARGV[4])
end
local owner = redis.call('GET', KEYS[2])
local email = 'kept'
if not owner then
  redis.call('SET', KEYS[2], ARGV[1])
  email = 'added'
elseif owner ~= ARGV[1] then
  email = owner
end
return {indexed, ordered, email}
