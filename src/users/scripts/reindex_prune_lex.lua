#!lua
-- Removes members of users:by_created_lex that users:by_created does not hold (as the caller
-- saw it: the id's score then, '' for none), each only if that is still so: a create in
-- between (which writes both atomically) is never undone.
-- KEYS: users:by_created, users:by_created_lex
-- ARGV: per member: member, id ('' if the member is not one of ours), score seen ('' for none)
-- Returns how many members were removed.
local removed = 0
for i = 1, #ARGV, 3 do
  local score = ''
  if ARGV[i + 1] ~= '' then
    score = redis.call('ZSCORE', KEYS[1], ARGV[i + 1]) or ''
  end
  if score == ARGV[i + 2] then
    removed = removed + redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return removed
