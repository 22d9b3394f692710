#!lua
-- Drops email guards whose owner is gone or has another address now (the seeds' service deleted
-- or changed that user: it never touches our guards), each only if the guard and the owner's
-- record are still what the caller read; a guard whose owner changed address moves to the new
-- address if nobody holds it (if somebody does, that address is marked contested). A concurrent
-- create, update or delete is never undone. A key that is not a string is never "as read".
-- KEYS: users:contested_emails, then per guard: users:email:<address>, user:<owner>,
--       users:email:<owner's address now> (the first key again when the owner is gone)
-- ARGV: '1' to leave the guards of contested addresses alone (the caller knows of nobody else
--       who claims them), then per guard: owner id as read, the owner's JSON as read ('' when
--       it was gone)
-- Returns {guards dropped, guards added, positions (1-based) whose new address another user
--          holds, those holders' ids}
local function value(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' then
    return nil
  end
  return v or ''
end
local spare = ARGV[1] == '1'
local dropped, added, taken, by = 0, 0, {}, {}
for i = 2, #KEYS, 3 do
  local at = (i - 2) / 3
  local id, raw = ARGV[at * 2 + 2], ARGV[at * 2 + 3]
  if value(KEYS[i]) == id and value(KEYS[i + 1]) == raw
      and not (spare and redis.call('SISMEMBER', KEYS[1], KEYS[i]) == 1) then
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
    if raw ~= '' then
      local holder = value(KEYS[i + 2])
      if holder == '' then
        redis.call('SET', KEYS[i + 2], id)
        added = added + 1
      elseif holder ~= id then
        redis.call('SADD', KEYS[1], KEYS[i + 2])
        taken[#taken + 1] = at + 1
        by[#by + 1] = holder or ''
      end
    end
  end
end
return {dropped, added, taken, by}
