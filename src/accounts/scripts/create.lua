#!lua
-- Creates a user, its four index entries and, when given, its credential, or nothing. With an
-- idempotency record (KEYS[7]): a request already recorded under its key is answered from the
-- record (or refused when its body differs), and a new user is recorded under it here, with
-- the user, so no crash can leave one without the other.
-- KEYS: user:<id>, users:email:<lowercased email>, users:index, users:by_created, credential:<id>,
--       users:by_created_lex[, idempotency:users:<key>]
-- ARGV: id, user JSON, created_at in ms, credential PHC hash ('' for none),
--       member in users:by_created_lex ('<ms, 15 digits>:<id>')[, request fingerprint,
--       record lifetime in ms]
-- Returns {'ok'} | {'taken'} | {'exists'} | {'reused'} (the key was used for another body) |
--         {'replay', status, id, body}
local record = KEYS[7]
if record then
  local seen = redis.call('HMGET', record, 'fingerprint', 'status', 'id', 'body')
  if seen[1] then
    if seen[1] ~= ARGV[6] then
      return {'reused'}
    end
    return {'replay', seen[2], seen[3], seen[4]}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  return {'taken'}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], 0, ARGV[5])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[5], ARGV[4])
end
if record then
  redis.call('HSET', record, 'fingerprint', ARGV[6], 'status', '201', 'id', ARGV[1], 'body', ARGV[2])
  redis.call('PEXPIRE', record, ARGV[7])
end
return {'ok'}
