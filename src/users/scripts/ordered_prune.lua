#!lua
-- Removes members of users:by_created_lex that users:by_created does not hold (as the caller
-- saw it: the id's score then, '' for none), each if that is still so.
-- KEYS: users:by_created, users:by_created_lex
-- ARGV: member, id, score seen ('' for none); …
-- Returns how many members were removed.
local removed = 0
for i = 1, #ARGV, 3 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
  if (score or '') == ARGV[i + 2] then
    removed = removed + redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return removed
