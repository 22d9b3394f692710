#!lua
-- Adds users:by_created entries to users:by_created_lex, each if users:by_created still holds it.
-- KEYS: users:by_created, users:by_created_lex
-- ARGV: id, score as read, member; id, score, member; …
-- Returns how many members were added.
local added = 0
for i = 1, #ARGV, 3 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    added = added + redis.call('ZADD', KEYS[2], 0, ARGV[i + 2])
  end
end
return added
