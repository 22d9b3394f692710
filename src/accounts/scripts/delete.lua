#!lua
-- Deletes a user if it still is what the caller read, with its index entries and its
-- credential (so it can no longer log in; refresh checks that user:<id> exists).
-- KEYS: user:<id>, users:email:<email>, users:index, users:by_created, credential:<id>,
--       users:by_created_lex
-- ARGV: id, JSON the caller read, its member in users:by_created_lex
local current = redis.call('GET', KEYS[1])
if not current then
  return 'missing'
end
if current ~= ARGV[2] then
  return 'changed'
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[3])
redis.call('DEL', KEYS[5])
return 'ok'
