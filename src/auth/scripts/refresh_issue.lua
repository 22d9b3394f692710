#!lua
-- A login: a new refresh token starting a new family; the account's failure counter resets.
-- KEYS: refresh:<sha256 of the token>, refresh_family:<family>, login_failures:email:<email>
-- ARGV: user id, family, ttl in s
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'family', ARGV[2], 'used', '0')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
redis.call('DEL', KEYS[3])
return 'ok'
