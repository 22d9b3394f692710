#!lua
-- Creates a user, its three index entries and, when given, its credential, or nothing.
-- KEYS: user:<id>, users:email:<lowercased email>, users:index, users:by_created, credential:<id>,
--       users:by_created_lex
-- ARGV: id, user JSON, created_at in ms, credential PHC hash ('' for none),
--       member in users:by_created_lex ('<ms, 15 digits>:<id>')
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'exists'
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  return 'taken'
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], 0, ARGV[5])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[5], ARGV[4])
end
return 'ok'
