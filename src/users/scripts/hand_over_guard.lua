#!lua
-- Hands an email guard from a holder that no longer has the address (gone, or the seeds'
-- service gave it another one: it never touches our guards) to a user that has it, only if
-- the guard and both records are still what the caller read. The guard is never dropped, only
-- re-pointed at a user who has the address: an address a live user has stays guarded.
-- KEYS: per claim: users:email:<address>, user:<holder>, user:<claimant>
-- ARGV: per claim: holder id, holder's JSON as read ('' when it was gone), claimant id,
--       claimant's JSON as read
-- Returns how many guards were handed over. A key that is not a string is never "as read".
local function value(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' then
    return nil
  end
  return v or ''
end
local handed = 0
for i = 1, #KEYS, 3 do
  local at = (i - 1) / 3 * 4
  if value(KEYS[i]) == ARGV[at + 1] and value(KEYS[i + 1]) == ARGV[at + 2]
      and value(KEYS[i + 2]) == ARGV[at + 4] then
    redis.call('SET', KEYS[i], ARGV[at + 3])
    handed = handed + 1
  end
end
return handed
