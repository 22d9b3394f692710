#!lua
-- Counts a failed login against each key (account, client IP); a key's window starts at
-- its first failure and ends after ARGV[1] ms, with nothing to unlock by hand.
-- KEYS: login_failures:email:<lowercased email>, login_failures:ip:<ip>
-- ARGV: window in ms
for _, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 or redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 'ok'
