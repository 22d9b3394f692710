#!lua
-- Removes index entries whose user record is gone (checked in the same step): the id from
-- users:index and users:by_created, and its member from users:by_created_lex when the caller
-- knows it ('' when not). Ids are never reused, so an entry without its user is never needed.
-- KEYS: users:index, users:by_created, users:by_created_lex, then user:<id> for each id
-- ARGV: per id: id, member in users:by_created_lex or ''
-- Returns how many ids had an entry removed.
local removed = 0
for i = 4, #KEYS do
  local at = (i - 4) * 2
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local id, member = ARGV[at + 1], ARGV[at + 2]
    local n = redis.call('SREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
    if member ~= '' then
      n = n + redis.call('ZREM', KEYS[3], member)
    end
    if n > 0 then
      removed = removed + 1
    end
  end
end
return removed
