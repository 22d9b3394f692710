#!lua
-- Adds a batch of existing users to our indexes, each only if its record still is the JSON the
-- caller read (a user deleted or changed since is left alone: a delete is never undone, and an
-- email guard is never set for an address the user no longer has). One script per batch, and a
-- handful of variadic commands inside it instead of several per user: Redis is the bottleneck.
-- KEYS: users:index, users:by_created, users:by_created_lex, then user:<id> for each user, then
--       users:email:<email> for each user (in the same order)
-- ARGV: per user: id, JSON the caller read, created_at in ms, member in users:by_created_lex
--       (ordered by created_at: sorted inserts keep the skiplists' paths in cache)
-- users:by_created keeps an entry it already holds (ZADD NX); users:by_created_lex gets the
-- member of the entry users:by_created holds, so the two always agree. The email guard is set
-- when nobody holds the address (in this batch, the first user listed keeps it).
-- Returns {users added to users:index, to users:by_created, email guards added,
--          positions (1-based) of users that changed, positions of users whose address another
--          user holds, those owners' ids}
-- The member of (ms, id), as the store writes it (accounts::ordered_member): ms zero-padded
-- to 15 digits (before 1970: '-' and 10^15 + ms), ':', id; clamped to 15 digits.
local function member(score, id)
  local ms = tonumber(score)
  if ms >= 0 then
    return string.format('%015d:%s', math.min(ms, 999999999999999), id)
  end
  return '-' .. string.format('%015d:%s', math.max(1000000000000000 + ms, 0), id)
end

local n = (#KEYS - 3) / 2
local current = redis.call('MGET', unpack(KEYS, 4, 3 + n))
local ids, ordered, lex, changed, live = {}, {}, {}, {}, {}
for i = 1, n do
  local at = (i - 1) * 4
  if current[i] == ARGV[at + 2] then
    live[#live + 1] = i
    ids[#ids + 1] = ARGV[at + 1]
    ordered[#ordered + 1] = ARGV[at + 3]
    ordered[#ordered + 1] = ARGV[at + 1]
  else
    changed[#changed + 1] = i
  end
end
if #live == 0 then
  return {0, 0, 0, changed, {}, {}}
end
local indexed = redis.call('SADD', KEYS[1], unpack(ids))
local added = redis.call('ZADD', KEYS[2], 'NX', unpack(ordered))
-- When every id was new (a first reindex), users:by_created holds each at the time given.
local scores = {}
if added < #ids then
  scores = redis.call('ZMSCORE', KEYS[2], unpack(ids))
end
local emails = {}
for j, i in ipairs(live) do
  local at = (i - 1) * 4
  if added == #ids then
    lex[#lex + 1] = 0
    lex[#lex + 1] = ARGV[at + 4]
  elseif scores[j] then
    lex[#lex + 1] = 0
    if tonumber(scores[j]) == tonumber(ARGV[at + 3]) then
      lex[#lex + 1] = ARGV[at + 4]
    else
      lex[#lex + 1] = member(scores[j], ARGV[at + 1])
    end
  end
  emails[j] = KEYS[3 + n + i]
end
if #lex > 0 then
  redis.call('ZADD', KEYS[3], unpack(lex))
end
local owners = redis.call('MGET', unpack(emails))
local claimed, guards, taken, by = {}, {}, {}, {}
for j, i in ipairs(live) do
  local id = ARGV[(i - 1) * 4 + 1]
  local owner = owners[j] or claimed[emails[j]]
  if not owner then
    claimed[emails[j]] = id
    guards[#guards + 1] = emails[j]
    guards[#guards + 1] = id
  elseif owner ~= id then
    taken[#taken + 1] = i
    by[#by + 1] = owner
  end
end
if #guards > 0 then
  redis.call('MSET', unpack(guards))
end
return {indexed, added, #guards / 2, changed, taken, by}
