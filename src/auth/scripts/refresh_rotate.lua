#!lua
-- Check-and-rotate (RFC 9700 §4.14.2): a live, unused token of a live family whose user still
-- exists is marked used and succeeded by a new one in its family; presenting a used one
-- revokes the whole family. A used token keeps its own expiry, so reuse is detected as long
-- as it would have been valid.
-- KEYS: refresh:<sha256 of the presented token>, refresh:<sha256 of its successor>
-- ARGV: ttl in s
local record = redis.call('HMGET', KEYS[1], 'user', 'family', 'used')
local user, family, used = record[1], record[2], record[3]
if not user or not family then
  return {'invalid', ''}
end
local live = 'refresh_family:' .. family
if used == '1' then
  redis.call('DEL', live)
  return {'reused', user}
end
if redis.call('EXISTS', live) == 0 then
  return {'invalid', ''}
end
if redis.call('EXISTS', 'user:' .. user) == 0 then
  redis.call('DEL', live)
  return {'invalid', ''}
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'user', user, 'family', family, 'used', '0')
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', live, ARGV[1])
return {'ok', user}
