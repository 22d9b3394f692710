-- One GCRA decision on one key with Redis' own clock (every gateway shares it). No `#!lua`
-- shebang (unlike the users' scripts): a limiter's Redis may be a managed 6.x, which reads it
-- as a syntax error; since Redis 5 scripts replicate their effects, so TIME before SET is fine.
-- KEYS[1]: the key. ARGV[1]: interval (µs per request). ARGV[2]: tolerance (burst × interval, µs).
-- Returns {1, lead} when admitted (the key's TAT is now `lead` µs ahead), {0, lead} when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local next = tat + interval
if next - now > tolerance then
  return {0, tat - now}
end
-- %d: a double this large would print as 1.7e+15 with tostring.
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000))
return {1, next - now}
