-- Tokens spent while Redis could not be asked, taken from the shared buckets once it answers again
-- (gateway/ratelimit/recovery.py). Same buckets, clock and refill arithmetic as token_bucket.lua.
--
-- KEYS[i]  bucket i: a hash {tokens, ts} as in token_bucket.lua
-- ARGV     four per key, in key order: rate, burst, key TTL (seconds), debt (tokens spent elsewhere)
--
-- The bucket is refilled to now, then the debt taken, down to 0 at most: the refill ran without the
-- spending that happened meanwhile, so what is left is never more than one bucket would have held.
-- Returns the number of buckets written.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local rate = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local ttl = tonumber(ARGV[base + 3])
  local debt = tonumber(ARGV[base + 4])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local last = tonumber(state[2])
  if tokens == nil or last == nil then
    tokens, last = burst, now
  end
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000000)
  tokens = math.max(0, tokens - debt)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
