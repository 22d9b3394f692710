#!lua
-- Drops email guards whose owner is gone or has another email now (the seeds' service deleted
-- or changed that user: it never touches our guards), each only if the guard and its owner's
-- record are still what the caller read; a guard whose owner changed address moves to the new
-- address if nobody holds it. A concurrent create, update or delete is never undone.
-- KEYS: per guard: users:email:<address>, user:<owner>, users:email:<owner's address now>
--       (the first key again when the owner is gone)
-- ARGV: per guard: owner id as read, the owner's JSON as read ('' when it was gone)
-- Returns {guards dropped, guards added, positions (1-based) whose new address another user
--          holds, those owners' ids}
local dropped, added, taken, by = 0, 0, {}, {}
for i = 1, #KEYS, 3 do
  local at = (i - 1) / 3
  local id, raw = ARGV[at * 2 + 1], ARGV[at * 2 + 2]
  if redis.call('GET', KEYS[i]) == id and (redis.call('GET', KEYS[i + 1]) or '') == raw then
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
    if raw ~= '' then
      local owner = redis.call('GET', KEYS[i + 2])
      if not owner then
        redis.call('SET', KEYS[i + 2], id)
        added = added + 1
      elseif owner ~= id then
        taken[#taken + 1] = at + 1
        by[#by + 1] = owner
      end
    end
  end
end
return {dropped, added, taken, by}
