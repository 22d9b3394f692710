#!lua flags=no-writes
-- Up to limit + 1 ids (with scores) of users:by_created after the cursor (score, id), oldest first.
-- Ties in score are ordered by id, as Redis orders them, so no id is skipped or repeated.
-- KEYS: users:by_created
-- ARGV: from score ('-inf' on the first page), after id ('' on the first page), limit
local from, after, want = ARGV[1], ARGV[2], tonumber(ARGV[3]) + 1
local out = {}
local offset = 0
while #out < 2 * want do
  local batch = redis.call('ZRANGE', KEYS[1], from, '+inf', 'BYSCORE', 'LIMIT', offset, want, 'WITHSCORES')
  if #batch == 0 then
    break
  end
  for i = 1, #batch, 2 do
    local id, score = batch[i], batch[i + 1]
    if after == '' or tonumber(score) > tonumber(from) or id > after then
      out[#out + 1] = id
      out[#out + 1] = score
      if #out >= 2 * want then
        break
      end
    end
  end
  offset = offset + #batch / 2
end
return out
