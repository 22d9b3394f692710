#!lua
-- Removes an id from both indexes if its user record is gone (checked in the same step).
-- KEYS: user:<id>, users:index, users:by_created
-- ARGV: id
-- Returns 1 if it removed an entry, else 0.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local removed = redis.call('SREM', KEYS[2], ARGV[1]) + redis.call('ZREM', KEYS[3], ARGV[1])
if removed > 0 then
  return 1
end
return 0
