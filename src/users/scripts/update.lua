#!lua
-- Replaces a user if it still is what the caller read (compare-and-set), moving its email guard.
-- KEYS: user:<id>, users:email:<old email>, users:email:<new email>, users:index, users:by_created,
--       users:by_created_lex
-- ARGV: id, JSON the caller read, new JSON, created_at in ms, member in users:by_created_lex
local current = redis.call('GET', KEYS[1])
if not current then
  return 'missing'
end
if current ~= ARGV[2] then
  return 'changed'
end
local owner = redis.call('GET', KEYS[3])
-- Another user's address; or a guard naming this user for an address it does not have now
-- (the seeds' service moved it away, never touching guards, and may have given the address to
-- someone else): refused, as any address a guard holds that another writer may have.
if owner and (owner ~= ARGV[1] or KEYS[2] ~= KEYS[3]) then
  return 'taken'
end
if KEYS[2] ~= KEYS[3] and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[6], 0, ARGV[5])
end
return 'ok'
